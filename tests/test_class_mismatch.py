"""A model trained with other classes than this run's: recorded at export (classes.json), refused by
warm start (tests/test_task.py) and skipped as SegEvaluator's baseline (here, and
tests/test_seg_evaluator.py), never compared id for id."""
import json
import os
import shutil

import pytest
from tfx.types import standard_artifacts

from segbalance.trainer.model_classes import CLASSES_FILE, class_mismatch, read_model_classes, write_model_classes
from tests import trainer_inputs as ti
from tests.test_seg_evaluator import _run, _save_model


def test_class_names_round_trip_beside_the_model(tmp_path):
    assert read_model_classes(str(tmp_path)) is None  # a model exported before classes.json
    write_model_classes(str(tmp_path), ["background", "circle"])
    assert json.loads((tmp_path / CLASSES_FILE).read_text()) == {"class_names": ["background", "circle"],
                                                                 "num_classes": 2}
    assert read_model_classes(str(tmp_path)) == ["background", "circle"]
    (tmp_path / CLASSES_FILE).write_text('{"class_names": "background"}')
    with pytest.raises(ValueError, match="must be a list of strings"):
        read_model_classes(str(tmp_path))


def test_class_mismatch_by_names_then_by_count():
    names = ["background", "ellipse", "rectangle", "circle"]
    assert class_mismatch(names, names) is None
    assert class_mismatch(names, None, 4) is None  # no names recorded, same count: nothing tells
    assert class_mismatch(names, None, None) is None
    assert class_mismatch(names, ["background", "circle", "rectangle", "ellipse"]) == (
        "it was trained for classes ['background', 'circle', 'rectangle', 'ellipse'], this run has "
        "['background', 'ellipse', 'rectangle', 'circle']")
    assert "trained for classes ['background', 'ellipse', 'rectangle', 'circle', 'square']" in class_mismatch(
        names, names + ["square"])
    assert class_mismatch(names, None, 5) == (
        "it predicts 5 classes, this run has 4 (['background', 'ellipse', 'rectangle', 'circle'])")


@pytest.mark.slow
def test_a_trained_baseline_of_other_classes_is_skipped(tmp_path):
    """The bug's run: the latest blessed model was trained with 3 classes, this run has 2. The
    evaluator read the baseline's ids as this run's (crashing on ids >= 2). Now it is skipped, by the
    names run_fn recorded, or, for a model exported before classes.json, by its output channels."""
    uris = ti.tiny_pipeline()  # SegTrainer's run_fn exported a 3-class model
    serving = os.path.join(uris["model"], "Format-Serving")
    assert read_model_classes(serving) == ti.NAMES
    model = _save_model(tmp_path / "model", 128.0)
    model.id = 2
    for name, keep_names in (("recorded", True), ("channels", False)):
        baseline = standard_artifacts.Model()
        baseline.uri, baseline.id = str(tmp_path / name / "baseline"), 1
        shutil.copytree(serving, os.path.join(baseline.uri, "Format-Serving"))
        if not keep_names:
            os.remove(os.path.join(baseline.uri, "Format-Serving", CLASSES_FILE))
        result, blessing, _, _ = _run(tmp_path / name, model, baseline=baseline)
        why = (f"trained for classes {ti.NAMES}, this run has ['bg', 'red']" if keep_names
               else "it predicts 3 classes, this run has 2")
        assert why in result["baseline_skipped"], result["baseline_skipped"]
        assert result["blessed"] and result["baseline_miou"] is None and why in result["reason"]
        assert blessing.get_int_custom_property("blessed") == 1
