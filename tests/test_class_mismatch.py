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


def test_a_baseline_of_fewer_classes_is_compared_on_the_classes_both_predict(tmp_path):
    """QA 92 M3: after a class was added at the end, the latest blessed model (its classes this run's first ones)
    was skipped and the threshold alone decided: a model half as good on the old classes was pushed. It is now
    compared on the classes both predict (here 'bg'; the IoU computed by hand from the masks)."""
    import numpy as np

    from tests.test_seg_evaluator import _save_classes_model

    baseline = _save_classes_model(tmp_path / "baseline", 0, 1, ["bg"])  # every pixel background
    baseline.id = 1
    good = _save_model(tmp_path / "good", 128.0)  # red where the red channel > 128: every pixel right
    good.id = 2
    result, blessing, _, masks = _run(tmp_path / "a", good, baseline=baseline)
    valid = np.concatenate([m[m != 255] for m in masks])
    baseline_bg = float((valid == 0).sum() / valid.size)  # all predicted bg: TP = bg pixels, FP = red ones
    assert 0 < baseline_bg < 0.95
    assert result["shared_classes"] == {"classes": ["bg"], "miou": 1.0, "baseline_miou": pytest.approx(baseline_bg)}
    assert result["blessed"] and "trained for classes ['bg']" in result["baseline_skipped"]
    assert result["reason"].endswith(f"on the classes both models predict (bg) its mIoU is 1.0000, the latest "
                                     f"blessed model's {baseline_bg:.4f}")
    assert json.loads(blessing.get_string_custom_property("shared_classes"))["classes"] == ["bg"]
    worse = _save_model(tmp_path / "worse", -1.0)  # every pixel red: bg IoU 0, far below the baseline's
    worse.id = 3
    result, blessing, _, _ = _run(tmp_path / "b", worse, baseline=baseline, threshold=0.0)
    assert result["shared_classes"]["miou"] == 0.0 and not result["blessed"]
    assert result["reason"].startswith(f"on the classes both models predict (bg) its mIoU is 0.0000, the latest "
                                       f"blessed model's {baseline_bg:.4f}: worse by more than the tolerance 0.0500")
    assert "raise evaluation.tolerance for one run" in result["reason"]
    assert blessing.get_int_custom_property("blessed") == 0
    # names in another order, or other names: not compared at all, as before
    other = _save_classes_model(tmp_path / "other", 0, 1, ["red"])
    other.id = 4
    result, _, _, _ = _run(tmp_path / "c", good, baseline=other)
    assert result["shared_classes"] is None and result["blessed"]


def test_a_deleted_blessed_model_is_skipped_not_a_crash(tmp_path):
    """QA 91 H2: pipeline_root/SegTrainer/model/N of the latest blessed model deleted (a clean-up): every later
    run trained, then stopped in SegEvaluator ("SavedModel file does not exist"), run after run. The baseline is
    skipped with the reason, and the threshold decides."""
    model = _save_model(tmp_path / "model", 128.0)
    model.id = 2
    baseline = _save_model(tmp_path / "baseline", 128.0)
    baseline.id = 1
    shutil.rmtree(tmp_path / "baseline")
    result, blessing, _, _ = _run(tmp_path / "a", model, baseline=baseline)
    serving = os.path.join(str(tmp_path / "baseline"), "Format-Serving")
    assert result["baseline_skipped"] == (f"the latest blessed model {tmp_path / 'baseline'} was not compared: its "
                                          f"{serving} is gone (deleted after it was blessed)")
    assert result["blessed"] and result["baseline_miou"] is None and result["shared_classes"] is None
    assert result["reason"] == f"mIoU 1.0000 >= threshold 0.3000; {result['baseline_skipped']}"
