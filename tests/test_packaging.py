"""One installed namespace (`segbalance`), a light root and contract, imports that flow one way."""
import importlib.metadata
import json
import subprocess
import sys
import textwrap

import pytest

from segbalance.pipeline import import_layers


def _fresh(code: str, cwd) -> dict:
    """Run ``code`` in a new interpreter (outside the checkout) and return the JSON it prints."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_distribution_installs_only_the_segbalance_name(tmp_path):
    dist = importlib.metadata.distribution("segbalance")
    assert dist.read_text("top_level.txt").split() == ["segbalance"]
    # the old generic names are not importable from outside the checkout
    found = _fresh("""
        import importlib.util, json
        print(json.dumps({n: importlib.util.find_spec(n) is not None
                          for n in ["pipeline", "components", "trainer", "segbalance.pipeline",
                                    "segbalance.components", "segbalance.trainer", "segbalance.kubeflow",
                                    "segbalance.contract"]}))
    """, tmp_path)
    assert found == {"pipeline": False, "components": False, "trainer": False, "segbalance.pipeline": True,
                     "segbalance.components": True, "segbalance.trainer": True, "segbalance.kubeflow": True,
                     "segbalance.contract": True}
    assert dist.entry_points.select(group="console_scripts", name="segbalance")[0].value == \
        "segbalance.pipeline.cli:main"


def test_losses_and_contract_import_without_tfx(tmp_path):
    loaded = _fresh("""
        import json, sys
        import segbalance.contract
        contract_alone = sorted(m for m in ("tensorflow", "tfx", "keras") if m in sys.modules)
        import segbalance.trainer.losses
        print(json.dumps({"contract": contract_alone, "tfx": "tfx" in sys.modules,
                          "tft": "tensorflow_transform" in sys.modules}))
    """, tmp_path)
    assert loaded == {"contract": [], "tfx": False, "tft": False}


def test_root_package_exports_load_on_use(tmp_path):
    loaded = _fresh("""
        import json, sys
        import segbalance
        light = "tfx" not in sys.modules and "tensorflow" not in sys.modules
        from segbalance import ClassStats, SegmentationLoss, create_pipeline, PipelineConfig
        print(json.dumps({"light": light, "type": ClassStats.TYPE_NAME, "loss": SegmentationLoss.__module__,
                          "dag": create_pipeline.__module__, "config": PipelineConfig.__module__}))
    """, tmp_path)
    assert loaded == {"light": True, "type": "segbalance.ClassStats", "loss": "segbalance.trainer.segmentation_loss",
                      "dag": "segbalance.pipeline.dag", "config": "segbalance.pipeline.config"}
    import segbalance

    with pytest.raises(AttributeError):
        segbalance.NoSuchThing  # noqa: B018


def test_kfp_type_names_import_from_the_root_package():
    """KFP v2 imports a custom artifact class from its TYPE_NAME (`module.Class`, one dot)."""
    from tfx.utils import import_utils

    from segbalance.components import artifacts

    for cls in (artifacts.ClassStats, artifacts.DriftReport, artifacts.HtmlReport):
        assert cls.TYPE_NAME.count(".") == 1 and cls.TYPE_NAME.startswith("segbalance.")
        assert import_utils.import_class_by_path(cls.TYPE_NAME) is cls


def test_imports_flow_one_way():
    assert import_layers.check() == []


def _package(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return {name: str(root / name.split(".")[-1]) for name in
            ["segbalance.pipeline", "segbalance.components", "segbalance.trainer", "segbalance.kubeflow"]}


def test_import_check_finds_upward_imports_and_cycles(tmp_path):
    folders = _package(tmp_path, {
        "pipeline/__init__.py": "",
        "pipeline/run.py": "from segbalance.components import gen\n",
        "components/__init__.py": "",
        "components/gen.py": "def f():\n    from segbalance.pipeline import run\n",  # upward, deferred
        "trainer/__init__.py": "",
        "trainer/a.py": "from . import b\n",  # relative imports count
        "trainer/b.py": "from segbalance.trainer.a import x\n",
        "kubeflow/__init__.py": "",
    })
    problems = import_layers.check(folders)
    assert any("segbalance.components.gen imports segbalance.pipeline.run" in p for p in problems)
    assert "import cycle: segbalance.components.gen -> segbalance.pipeline.run" in problems
    assert "import cycle: segbalance.trainer.a -> segbalance.trainer.b" in problems
    assert len(problems) == 3


def test_import_check_command_exit_code():
    result = subprocess.run([sys.executable, "-m", "segbalance.pipeline.import_layers"], capture_output=True,
                            text=True)
    assert result.returncode == (1 if import_layers.check() else 0), result.stdout


def test_every_root_export_resolves():
    import segbalance

    for name in segbalance.__all__:
        assert getattr(segbalance, name).__name__ == name, name


def test_every_config_section_is_a_root_export():
    """Issue 14: the root exports the config classes. QA 96: DriftConfig and EvaluationConfig (sections of
    PipelineConfig), and SampleConfig, LearningRateSchedule and Augmentation (sections of those) were not."""
    import dataclasses

    import segbalance
    from segbalance.pipeline.config import PipelineConfig

    def sections(config) -> list:
        found = []
        for item in dataclasses.fields(config):
            value = getattr(config, item.name)
            if dataclasses.is_dataclass(value):
                found += [type(value), *sections(value)]
        return found

    from segbalance.trainer.loss_config import TERMS, LowConfidence
    from segbalance.trainer.training_config import PIXEL_WEIGHT_TYPES

    # and the classes of the sections a default config leaves empty (QA 98): pixel weights, loss terms, low_confidence
    classes = [*sections(PipelineConfig()), *PIXEL_WEIGHT_TYPES.values(), *TERMS.values(), LowConfidence]
    assert len(classes) >= 21 and PipelineConfig.__name__ in segbalance.__all__
    assert [c.__name__ for c in classes if getattr(segbalance, c.__name__, None) is not c] == []
