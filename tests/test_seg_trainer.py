"""SegTrainer in a LocalDagRunner pipeline, and its executor on a changed ClassStats artifact."""
import json
import os
import shutil

import numpy as np
import pytest

from segbalance.components.seg_trainer import SegTrainer
from segbalance.components.seg_trainer import SegTrainerSpec
from segbalance.trainer.class_stats_io import read_class_stats
from tests import trainer_inputs as ti

pytestmark = pytest.mark.slow


def test_spec_adds_class_stats_to_the_trainer_inputs():
    from tfx.types.standard_component_specs import TrainerSpec

    assert set(SegTrainerSpec.INPUTS) == set(TrainerSpec.INPUTS) | {"class_stats"}
    assert SegTrainerSpec.INPUTS["class_stats"].type.TYPE_NAME == "segbalance.ClassStats"
    assert set(SegTrainerSpec.OUTPUTS) == {"model", "model_run"}


def test_pipeline_trains_and_exports_with_the_artifact_weights():
    uris = ti.tiny_pipeline()
    serving = os.path.join(uris["model"], "Format-Serving")
    assert os.path.isfile(os.path.join(serving, "saved_model.pb"))
    assert os.path.isfile(os.path.join(serving, "model.keras"))
    assert os.listdir(os.path.join(uris["model_run"], "logs", "train"))  # TensorBoard events
    with open(os.path.join(uris["model_run"], "training_summary.json")) as f:
        summary = json.load(f)
    stats = read_class_stats(uris["class_stats"])
    assert summary["class_weights"] == stats["weights"]["inverse_frequency"]
    assert summary["num_train_records"] == stats["num_records"] > 0
    assert summary["epochs_run"] == [0] and np.isfinite(summary["history"]["loss"][0])
    assert not [d for d in os.listdir(os.path.dirname(uris["model_run"])) if d.startswith("backup-")]


def test_changing_the_artifact_weights_changes_the_loss(tmp_path):
    uris = ti.tiny_pipeline()
    config = {**ti.CONFIG, "steps_per_epoch": 1}
    losses = {}
    for name, weights in {"ones": [1.0, 1.0, 1.0], "twos": [2.0, 2.0, 2.0], "rare": [1.0, 1.0, 20.0]}.items():
        stats_dir = tmp_path / f"stats-{name}"
        shutil.copytree(uris["class_stats"], stats_dir)
        stats = read_class_stats(str(stats_dir))
        stats["weights"]["inverse_frequency"] = weights
        (stats_dir / "class_stats.json").write_text(json.dumps(stats))
        summary = ti.run_executor(uris, str(tmp_path / name), config, class_stats_uri=str(stats_dir))
        assert summary["class_weights"] == weights
        losses[name] = summary["initial_loss"]
    # same seed, same first batch, same initial model: only the weights differ
    np.testing.assert_allclose(losses["twos"], 2 * losses["ones"], rtol=1e-5)  # CE is linear in the weights
    assert abs(losses["rare"] - losses["ones"]) > 1e-3 * losses["ones"]


def test_component_needs_class_stats():
    with pytest.raises(TypeError):
        SegTrainer(examples=None, transform_graph=None)  # noqa  class_stats is required
