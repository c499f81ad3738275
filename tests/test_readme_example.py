"""The runnable example of README.md's "## Losses" section runs and does what it says."""
import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def losses_example() -> str:
    text = README.read_text()
    start = text.index("\n## Losses\n")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end != -1 else len(text)]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "README's ## Losses section has no ```python example"
    return blocks[0]


def test_readme_losses_example_runs(capsys):
    namespace = {"__name__": "readme_example"}
    exec(compile(losses_example(), "README.md#losses", "exec"), namespace)
    losses = namespace["history"].history["loss"]
    assert len(losses) == 2 and np.isfinite(losses).all()
    # The dict reached the loss: the model's loss equals SegmentationLoss on the dict.
    model, loss, dataset = namespace["model"], namespace["loss"], namespace["dataset"]
    images, y = next(iter(dataset.unbatch().batch(8)))
    np.testing.assert_allclose(model.evaluate(images, y, verbose=0, batch_size=8)[0],
                               float(loss(y, model.predict(images, verbose=0))), rtol=1e-4)
    assert namespace["restored"].get_config()["config"] == loss.get_config()["config"]
    assert "median_frequency" in capsys.readouterr().out
