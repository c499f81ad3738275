"""SegEvaluator: NumPy metrics vs hand-computed cases, and the executor on a real SavedModel."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tfx.types import standard_artifacts

from segbalance.components import evaluation_metrics as em
from segbalance.components.seg_evaluator import SegEvaluatorExecutor
from segbalance.trainer import example_codec as codec


def test_confusion_matrix_hand_case():
    truth = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    cm = em.confusion_matrix(truth, pred, num_classes=3, ignore_index=255)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    s = em.summarize(cm)
    # IoU: class 0: 1 / (2 + 2 - 1) ; class 1: 2 / (3 + 2 - 2) ; class 2: 0 / (1 + 0 - 0)
    np.testing.assert_allclose(s["per_class_iou"], [1 / 3, 2 / 3, 0.0])
    assert s["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert s["pixel_accuracy"] == pytest.approx(3 / 5)


def test_absent_class_is_undefined_not_zero():
    cm = em.confusion_matrix(np.array([0, 0, 1]), np.array([0, 0, 1]), num_classes=3, ignore_index=255)
    s = em.summarize(cm)
    assert s["per_class_iou"] == [1.0, 1.0, None] and s["miou"] == 1.0


def test_all_ignored_gives_zero_not_nan():
    cm = em.confusion_matrix(np.full((2, 2), 255), np.zeros((2, 2)), num_classes=2, ignore_index=255)
    s = em.summarize(cm)
    assert s["miou"] == 0.0 and s["pixel_accuracy"] == 0.0


def test_confusion_matrix_matches_numpy_loop():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, size=(5, 7))
    truth[rng.random((5, 7)) < 0.2] = 255
    pred = rng.integers(0, 4, size=(5, 7))
    cm = em.confusion_matrix(truth, pred, 4, 255)
    ref = np.zeros((4, 4), int)
    for t, p in zip(truth.ravel(), pred.ravel()):
        if t != 255:
            ref[t, p] += 1
    np.testing.assert_array_equal(cm, ref)


def test_bad_ids_raise():
    with pytest.raises(ValueError, match="outside"):
        em.confusion_matrix(np.array([5]), np.array([0]), 3, 255)


@pytest.mark.parametrize("miou, baseline, blessed", [(0.5, None, True), (0.2, None, False), (0.5, 0.51, True),
                                                     (0.5, 0.6, False)])
def test_blessing_rule(miou, baseline, blessed):
    ok, reason = em.decide_blessing(miou, threshold=0.3, baseline_miou=baseline, tolerance=0.02)
    assert ok is blessed and f"{miou:.4f}" in reason


def test_the_blessing_reason_says_how_the_model_compares():
    """QA 70: a model 0.08 better than the blessed one was "within 0.0200" of it."""
    assert em.decide_blessing(0.3019, 0.2, 0.2185, 0.02)[1] == (
        "mIoU 0.3019 >= threshold 0.2000 and +0.0834 against the latest blessed model's 0.2185")
    assert em.decide_blessing(0.5, 0.3, 0.51, 0.02)[1] == (
        "mIoU 0.5000 >= threshold 0.3000 and -0.0100, within the tolerance 0.0200 of the latest blessed model's "
        "0.5100")


class _RedIsClassOne(tf.Module):
    """A real serving model: class 1 where the red channel > threshold, else 0."""

    def __init__(self, threshold):
        super().__init__()
        self.threshold = tf.Variable(threshold, dtype=tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(self, images):
        decoded = tf.map_fn(lambda b: tf.io.decode_png(b, channels=3), images, fn_output_signature=tf.uint8)
        ids = tf.cast(tf.cast(decoded[..., 0], tf.float32) > self.threshold, tf.int64)
        return {"class_ids": ids}


def _save_model(path, threshold):
    module = _RedIsClassOne(threshold)
    tf.saved_model.save(module, os.path.join(path, "Format-Serving"), signatures={"serving_default": module.serve})
    model = standard_artifacts.Model()
    model.uri = str(path)
    return model


class _RedIsClass(tf.Module):
    """A serving model as the trainer exports it: class ``red_id`` where the red channel > 128, else 0,
    with the ``probabilities`` output ([B, H, W, num_classes]) that tells its class count."""

    def __init__(self, red_id, num_classes):
        super().__init__()
        self.red_id, self.num_classes = red_id, num_classes

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(self, images):
        decoded = tf.map_fn(lambda b: tf.io.decode_png(b, channels=3), images, fn_output_signature=tf.uint8)
        ids = tf.cast(decoded[..., 0] > 128, tf.int64) * self.red_id
        return {"class_ids": ids, "probabilities": tf.one_hot(ids, self.num_classes)}


def _save_classes_model(path, red_id, num_classes, class_names=None):
    """A model predicting red as ``red_id`` of ``num_classes``; ``class_names`` recorded beside it (as
    run_fn does) unless None (a model exported before classes.json)."""
    from segbalance.trainer.model_classes import write_model_classes

    module = _RedIsClass(red_id, num_classes)
    serving = os.path.join(path, "Format-Serving")
    tf.saved_model.save(module, serving, signatures={"serving_default": module.serve})
    if class_names is not None:
        write_model_classes(serving, class_names)
    model = standard_artifacts.Model()
    model.uri = str(path)
    return model


def _examples(tmp_path, masks, images, labeled=None):
    split = tmp_path / "examples" / "Split-eval"
    split.mkdir(parents=True)
    labeled = labeled or [None] * len(masks)
    with tf.io.TFRecordWriter(str(split / "data.gz"), options="GZIP") as writer:
        for i, (image, mask) in enumerate(zip(images, masks)):
            writer.write(codec.build_example(codec.encode_png(image), codec.encode_png(mask), f"img{i}",
                                             *mask.shape, labeled=labeled[i]).SerializeToString())
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    examples.split_names = '["eval"]'
    return examples


def _run(tmp_path, model, baseline=None, reference_dir=None, threshold=0.3, labeled=None, erase=(),
         push_destination=None, stats_policy=None, span=None, span_references_root=None):
    """``erase``: indexes of images whose annotator skipped the red class (its pixels marked 0)."""
    rng = np.random.default_rng(1)
    images, masks = [], []
    for size in ((6, 8), (6, 8), (5, 5)):
        red = rng.integers(0, 256, size=size)
        image = np.stack([red, np.zeros(size), np.zeros(size)], -1).astype(np.uint8)
        masks.append((red > 128).astype(np.uint8))
        images.append(image)
    masks[0][0, 0] = 255
    for i in erase:
        masks[i][masks[i] == 1] = 0
    examples = _examples(tmp_path, masks, images, labeled)
    if span is not None:  # as the Kubeflow ExampleGen driver records it
        examples.set_int_custom_property("span", span)
    evaluation, blessing = standard_artifacts.ModelEvaluation(), standard_artifacts.ModelBlessing()
    evaluation.uri, blessing.uri = str(tmp_path / "eval"), str(tmp_path / "blessing")
    os.makedirs(evaluation.uri), os.makedirs(blessing.uri)
    inputs = {"examples": [examples], "model": [model]}
    if baseline is not None:
        inputs["baseline_model"] = [baseline]
    if stats_policy is not None:  # a ClassStats artifact of these records, as ClassStatsGen writes it
        from segbalance.components import class_stats_beam as csb
        from segbalance.components.artifacts import ClassStats

        stats = ClassStats()
        stats.uri = str(tmp_path / "class_stats")
        csb.run_class_stats({"eval": str(tmp_path / "examples" / "Split-eval" / "data.gz")}, stats.uri,
                            csb.StatsOptions(num_classes=2, labeled_policy=stats_policy),
                            beam_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"])
        inputs["class_stats"] = [stats]
    SegEvaluatorExecutor().Do(inputs, {"evaluation": [evaluation], "blessing": [blessing]}, {
        "num_classes": 2, "class_names": '["bg", "red"]', "ignore_index": 255, "miou_threshold": threshold,
        "tolerance": 0.05, "split": "eval", "reference_masks_dir": reference_dir,
        **({"push_destination": push_destination} if push_destination else {}),
        **({"span_references_root": span_references_root} if span_references_root else {})})
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    return result, blessing, images, masks


def test_executor_perfect_model_is_blessed(tmp_path):
    model = _save_model(tmp_path / "model", 128.0)
    result, blessing, _, masks = _run(tmp_path, model)
    assert result["miou"] == 1.0 and result["num_images"] == 3 and result["blessed"]
    valid = sum(int((m != 255).sum()) for m in masks)
    assert np.sum(result["confusion_matrix"]) == valid
    assert blessing.get_int_custom_property("blessed") == 1
    assert os.path.exists(os.path.join(blessing.uri, "BLESSED"))


def test_executor_worse_than_baseline_is_not_blessed(tmp_path):
    model = _save_model(tmp_path / "model", 200.0)  # misses red pixels in (128, 200]
    model.id = 2
    baseline = _save_model(tmp_path / "baseline", 128.0)
    baseline.id = 1
    result, blessing, images, masks = _run(tmp_path, model, baseline=baseline)
    truth = np.concatenate([m.ravel() for m in masks])
    pred = np.concatenate([(im[..., 0] > 200).astype(int).ravel() for im in images])
    expected = em.summarize(em.confusion_matrix(truth, pred, 2, 255))["miou"]
    assert result["miou"] == pytest.approx(expected) and result["baseline_miou"] == 1.0
    assert not result["blessed"] and "latest blessed" in result["reason"]
    assert blessing.get_int_custom_property("blessed") == 0
    assert os.path.exists(os.path.join(blessing.uri, "NOT_BLESSED"))


def test_executor_scores_against_reference_masks(tmp_path):
    reference = tmp_path / "full"
    reference.mkdir()
    (reference / "img2.png").write_bytes(codec.encode_png(np.zeros((5, 5), np.uint8)))  # "complete" mask
    model = _save_model(tmp_path / "model", 128.0)
    result, _, _, _ = _run(tmp_path, model, reference_dir=str(reference))
    assert result["truth_sources"]["reference_masks"] == 1 and result["truth_sources"]["annotation_masks"] == 2
    assert result["miou"] < 1.0


@pytest.mark.parametrize("span, found", [(3, 1), (2, 0)])
def test_a_compiled_pipeline_scores_against_the_read_span_s_reference_masks(tmp_path, capsys, span, found):
    """Kubeflow learns the span at run time: without data.reference_masks_dir the evaluator takes the complete
    masks ingest kept with that span (Span-N/reference_masks), as a local run does; another span's are not used."""
    root = tmp_path / "data"
    for n in (1, 3):
        (root / f"Span-{n}" / "reference_masks").mkdir(parents=True)
        (root / f"Span-{n}" / "reference_masks" / "img2.png").write_bytes(codec.encode_png(np.zeros((5, 5), np.uint8)))
    (root / "Span-2").mkdir()
    model = _save_model(tmp_path / "model", 128.0)
    result, _, _, _ = _run(tmp_path, model, span=span, span_references_root=str(root))
    assert result["truth_sources"]["reference_masks"] == found
    assert result["truth_sources"]["annotation_masks"] == 3 - found
    said = f"SegEvaluator: scoring against the complete masks kept with the span, {root}/Span-{span}/reference_masks"
    assert (said in capsys.readouterr().out) == bool(found)


def test_a_compiled_pipeline_passes_its_data_folder_to_the_evaluator(tmp_path):
    from segbalance.pipeline.config import PipelineConfig
    from segbalance.pipeline.dag import create_pipeline

    config = PipelineConfig()
    for kubeflow, reference, expected in ((True, None, str(tmp_path)), (True, "/full", None), (False, None, None)):
        pipeline = create_pipeline(config, examples_dir=str(tmp_path), pipeline_root=str(tmp_path / "root"),
                                   serving_model_dir=str(tmp_path / "serving"), reference_masks_dir=reference,
                                   for_kubeflow=kubeflow)
        (evaluator,) = [c for c in pipeline.components if c.id == "SegEvaluator"]
        assert evaluator.exec_properties.get("span_references_root") == expected, (kubeflow, reference)


def test_a_reference_mask_it_cannot_score_against_skips_its_image_and_says_why(tmp_path):
    """An RGB reference mask failed after training with "model returned a (5, 5) mask for a (5, 5, 3)
    image" (a traceback that blamed the model); another size or ids outside the classes likewise."""
    model = _save_model(tmp_path / "model", 128.0)
    for case, mask in [("rgb", np.zeros((5, 5, 3), np.uint8)), ("size", np.zeros((4, 5), np.uint8)),
                       ("ids", np.full((5, 5), 7, np.uint8))]:
        reference = tmp_path / case / "full"
        reference.mkdir(parents=True)
        (reference / "img2.png").write_bytes(codec.encode_png(mask))
        result, _, _, _ = _run(tmp_path / case, model, reference_dir=str(reference))
        sources = result["truth_sources"]
        assert sources["reference_masks"] == 0 and sources["annotation_masks"] == 2 and sources["skipped"] == 1
        (skipped,) = sources["skipped_records"]
        assert skipped["reason"].startswith(f"reference mask {reference / 'img2.png'} ")
        assert {"rgb": "has 3 channels (colour)", "size": "is 5x4 pixels, its image 5x5",
                "ids": "has class ids [7] outside [0, 2)"}[case] in skipped["reason"]
        assert result["num_images"] == 2


def test_partial_truth_hand_case():
    # class 2 unlabelled: background predicted as 2 is not scored; background predicted as the
    # labelled class 1 is a miss; labelled pixels score as usual
    truth = np.array([[0, 0], [1, 0]])
    pred = np.array([[2, 0], [1, 1]])
    scored = em.partial_truth(truth, pred, [0, 1], 3, 255)
    assert scored.tolist() == [[255, 0], [1, 0]]
    result = em.summarize(em.confusion_matrix(scored, pred, 3, 255))
    assert result["per_class_iou"] == [0.5, 0.5, None] and result["miou"] == 0.5
    # scored as the annotation says, class 2 would count as a wrong prediction
    assert em.summarize(em.confusion_matrix(truth, pred, 3, 255))["per_class_iou"][2] == 0.0
    # every class labelled, or no labelled list: unchanged; background is always labelled
    assert em.partial_truth(truth, pred, [0, 1, 2], 3, 255).tolist() == truth.tolist()
    assert em.partial_truth(truth, pred, None, 3, 255) is truth
    assert em.partial_truth(truth, np.zeros_like(pred), [1], 3, 255).tolist() == truth.tolist()


def test_executor_does_not_score_unlabelled_classes_on_partial_annotations(tmp_path):
    model = _save_model(tmp_path / "model", 128.0)  # perfect against the complete masks
    result, _, images, masks = _run(tmp_path, model, labeled=[[0], [0, 1], [0, 1]], erase=[0])
    # image 0's red pixels are marked background, but red was not labelled there: not scored
    red0 = (images[0][..., 0] > 128) & (masks[0] != 255)
    assert result["truth_sources"]["unscored_pixels"] == int(red0.sum()) > 0
    assert result["miou"] == 1.0 and result["blessed"]
    assert np.sum(result["confusion_matrix"]) == sum(int((m != 255).sum()) for m in masks) - int(red0.sum())
    per_image = json.loads((tmp_path / "eval" / em.PER_IMAGE_FILE).read_text())
    assert per_image["images"][0]["missing"] == [1] and per_image["images"][0]["miou"] == 1.0


def test_executor_scores_partial_annotations_as_they_are_where_the_class_was_labelled(tmp_path):
    # the same masks with red recorded as labelled (or no record of it): the red pixels count as misses
    model = _save_model(tmp_path / "model", 128.0)
    for labeled in ([[0, 1], [0, 1], [0, 1]], None):
        folder = tmp_path / str(labeled is None)
        folder.mkdir()
        result, _, images, masks = _run(folder, model, labeled=labeled, erase=[0])
        assert result["truth_sources"]["unscored_pixels"] == 0 and result["miou"] < 1.0


def test_executor_reference_mask_wins_over_the_partial_rule(tmp_path):
    reference = tmp_path / "full"
    reference.mkdir()
    (reference / "img0.png").write_bytes(codec.encode_png(np.zeros((6, 8), np.uint8)))  # red truly absent
    model = _save_model(tmp_path / "model", 128.0)
    result, _, _, _ = _run(tmp_path, model, reference_dir=str(reference), labeled=[[0], [0, 1], [0, 1]], erase=[0])
    assert result["truth_sources"]["unscored_pixels"] == 0 and result["miou"] < 1.0


def _reference_image_iou(truth, pred, num_classes, ignore):
    """Per-class IoU of one image from pixel sets (None where the class is in neither)."""
    valid = truth != ignore
    out = []
    for c in range(num_classes):
        inter = np.sum(valid & (truth == c) & (pred == c))
        union = np.sum(valid & ((truth == c) | (pred == c)))
        out.append(inter / union if union else None)
    return out


def test_per_image_results_for_the_report(tmp_path):
    from PIL import Image

    model = _save_model(tmp_path / "model", 200.0)  # misses red pixels in (128, 200]
    result, _, images, masks = _run(tmp_path, model, labeled=[None, [0], [0, 1]])
    per_image = json.loads((tmp_path / "eval" / em.PER_IMAGE_FILE).read_text())
    assert [r["source_id"] for r in per_image["images"]] == ["img0", "img1", "img2"]
    mious = {}
    for i, row in enumerate(per_image["images"]):
        pred = (images[i][..., 0] > 200).astype(int)
        expected = _reference_image_iou(masks[i], pred, 2, 255)
        assert row["per_class_iou"] == pytest.approx(expected, abs=1e-6)  # stored rounded to 6 digits
        defined = [v for v in expected if v is not None]
        assert row["miou"] == pytest.approx(sum(defined) / len(defined))
        valid = masks[i] != 255
        assert row["pixel_accuracy"] == pytest.approx(np.mean(pred[valid] == masks[i][valid]))
        mious[row["source_id"]] = row["miou"]
    assert [r["missing"] for r in per_image["images"]] == [[], [1], []]  # img1 labels only class 0
    # worst images: all three (fewer than WORST_IMAGES), lowest mIoU first, PNGs hold the ids
    assert [w["source_id"] for w in per_image["worst"]] == sorted(mious, key=lambda s: (mious[s], s))
    for w in per_image["worst"]:
        i = int(w["source_id"][3:])
        truth = np.asarray(Image.open(tmp_path / "eval" / w["truth"]))
        np.testing.assert_array_equal(truth, masks[i])  # 5x5 / 6x8 images: not downscaled; ignore stays 255
        pred = np.asarray(Image.open(tmp_path / "eval" / w["prediction"]))
        np.testing.assert_array_equal(pred, (images[i][..., 0] > 200).astype(np.uint8))
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "eval" / w["image"])), images[i])
    (gap,) = per_image["gap_predictions"]
    assert gap["source_id"] == "img1" and gap["missing"] == [1]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "eval" / gap["prediction"])),
                                  (images[1][..., 0] > 200).astype(np.uint8))
    assert result["miou"] < 1.0


def test_per_image_results_keep_only_the_worst(tmp_path):
    from segbalance.components.seg_evaluator import PerImageResults

    recorder = PerImageResults(num_classes=3, ignore_index=255, labeled={"e": [0, 1], "f": [0]}, worst=2, max_gaps=1,
                               references={"d"})
    truth = np.array([[0, 1], [2, 255]])
    for sid, pred in [("a", truth % 255), ("b", np.zeros((2, 2))), ("c", np.array([[0, 1], [0, 0]])),
                      ("d", np.zeros((2, 2))), ("e", np.zeros((2, 2))), ("f", np.zeros((2, 2)))]:
        recorder(sid, b"", truth, pred, em.confusion_matrix(truth, pred, 3, 255))
    content = recorder.write(str(tmp_path))
    # mIoU: a 1, c (1 + 1 + 0) / 3, b / d / e / f (1/3 + 0 + 0) / 3: the two worst are b and d (by id)
    assert [w["source_id"] for w in content["worst"]] == ["b", "d"]
    assert content["worst"][0]["miou"] == pytest.approx(1 / 9)
    assert [w["truth_from"] for w in content["worst"]] == ["annotation", "reference"]  # the report's caption
    assert "image_error" in content["worst"][0]  # b"" does not decode: said, not a crash
    # missing: e lacks 2, f lacks 1 and 2: f kept (more missing)
    assert [(g["source_id"], g["missing"]) for g in content["gap_predictions"]] == [("f", [1, 2])]


def test_downscale_nearest_keeps_label_ids():
    small = np.arange(12, dtype=np.uint8).reshape(3, 4)
    big = np.kron(small, np.ones((50, 50), np.uint8))  # 150 x 200: each id a 50 x 50 block
    down = em.downscale_nearest(big, 100)
    assert down.shape == (75, 100)
    np.testing.assert_array_equal(em.downscale_nearest(big, 4), small)  # block centres
    assert set(np.unique(down)) == set(range(12))
    assert em.downscale_nearest(small, 128) is small  # already small: unchanged


def test_a_blessed_model_that_never_reached_the_pusher_is_blessed_again(tmp_path):
    """A run stopped between SegEvaluator and Pusher: on the re-run the model is its own baseline
    (the latest blessed model). It was refused as "pushed before" although nothing was pushed, so
    no run ever pushed it. Now: blessed again when the push destination lacks it, refused when a
    version folder there holds it (no second push)."""
    import shutil

    from segbalance.components.seg_evaluator import pushed_copy

    model = _save_model(tmp_path / "model", 128.0)
    model.id = 7
    destination = tmp_path / "serving_model"
    destination.mkdir()
    result, blessing, _, _ = _run(tmp_path / "a", model, baseline=model, push_destination=str(destination))
    assert result["blessed"] and "blessed again so it is pushed" in result["reason"]
    assert "no blessed model yet" not in result["reason"]  # it is one (QA: the reason said both)
    assert blessing.get_int_custom_property("blessed") == 1
    _save_model(tmp_path / "other", 200.0)  # another model's push does not count, nor one that differs
    shutil.copytree(tmp_path / "other" / "Format-Serving", destination / "1700000000")  # in its weights only:
    shutil.copytree(tmp_path / "model" / "Format-Serving", destination / "1699999999")
    variables = sorted((destination / "1699999999" / "variables").glob("variables.data-*"))
    changed = bytearray(variables[0].read_bytes())
    changed[-1] ^= 1  # same graph, other weights
    variables[0].write_bytes(bytes(changed))
    assert pushed_copy(str(tmp_path / "model" / "Format-Serving"), str(destination)) is None
    shutil.copytree(tmp_path / "model" / "Format-Serving", destination / "1700000001")
    assert pushed_copy(str(tmp_path / "model" / "Format-Serving"), str(destination)) == str(destination / "1700000001")
    result, blessing, _, _ = _run(tmp_path / "b", model, baseline=model, push_destination=str(destination))
    assert not result["blessed"] and "pushed before" in result["reason"]
    assert blessing.get_int_custom_property("blessed") == 0


def test_the_labeled_policy_reaches_the_evaluator_through_class_stats(tmp_path):
    """Records without a labelled set under stats.labeled_policy: partial are labelled for their
    present classes only; validation scored them so, SegEvaluator as complete annotations (it read
    the record's own field): the blessed mIoU penalised what validation left out. Here every image's
    annotator skipped the red class, which the model finds."""
    model = _save_model(tmp_path / "model", 128.0)
    complete, _, images, masks = _run(tmp_path / "c", model, erase=(0, 1, 2), stats_policy="complete")
    partial, _, _, _ = _run(tmp_path / "p", model, erase=(0, 1, 2), stats_policy="partial")
    alone, _, _, _ = _run(tmp_path / "n", model, erase=(0, 1, 2))  # no ClassStats: the records' own fields
    red = sum(int(((im[..., 0] > 128) & (m != 255)).sum()) for im, m in zip(images, masks))  # valid pixels
    assert red > 0
    # partial: the red predictions on background are not scored -> every scored pixel is right
    assert partial["miou"] == 1.0 and partial["truth_sources"]["unscored_pixels"] == red
    assert complete["miou"] < 1.0 and complete["truth_sources"]["unscored_pixels"] == 0
    assert alone["miou"] == complete["miou"]


@pytest.mark.parametrize("red_id, num_classes, class_names, why", [
    (3, 4, ["bg", "circle", "square", "red"], "trained for classes ['bg', 'circle', 'square', 'red']"),
    (3, 4, None, "it predicts 4 classes, this run has 2"),  # exported before classes.json: its channels
    (0, 2, ["red", "bg"], "trained for classes ['red', 'bg'], this run has ['bg', 'red']"),  # ids swapped
])
def test_a_baseline_of_other_classes_is_skipped_not_compared(tmp_path, red_id, num_classes, class_names, why):
    """The latest blessed model was trained with other classes (another count: its ids reach past
    this run's, which crashed the evaluator with "prediction has class ids outside [0, 2)" on every
    later run; or the same names in another order: its ids mean other classes). It is not compared:
    evaluation.json and the reason say why, and the threshold alone decides."""
    model = _save_model(tmp_path / "model", 128.0)
    model.id = 2
    baseline = _save_classes_model(tmp_path / "baseline", red_id, num_classes, class_names)
    baseline.id = 1
    result, blessing, _, _ = _run(tmp_path, model, baseline=baseline)
    assert result["miou"] == 1.0 and result["blessed"] and result["baseline_miou"] is None
    assert why in result["baseline_skipped"] and str(tmp_path / "baseline") in result["baseline_skipped"]
    assert result["reason"] == f"mIoU 1.0000 >= threshold 0.3000; {result['baseline_skipped']}"
    assert blessing.get_string_custom_property("baseline_skipped") == result["baseline_skipped"]
    assert blessing.get_int_custom_property("blessed") == 1
    # below the threshold: not blessed, and still said why the baseline was left out
    result, _, _, _ = _run(tmp_path / "low", model, baseline=baseline, threshold=1.1)
    assert not result["blessed"] and result["reason"].startswith("mIoU 1.0000 is below the threshold 1.1000; ")
    assert why in result["reason"]


def test_a_baseline_of_the_same_classes_is_compared(tmp_path, monkeypatch):
    import tensorflow as tf

    model = _save_model(tmp_path / "model", 200.0)  # misses red pixels in (128, 200]
    model.id = 2
    loads = []
    real_load = tf.saved_model.load
    monkeypatch.setattr(tf.saved_model, "load", lambda path, *a, **k: loads.append(str(path)) or real_load(path, *a, **k))
    for name, class_names in (("recorded", ["bg", "red"]), ("channels", None)):  # names, or 2 output channels
        baseline = _save_classes_model(tmp_path / name / "baseline", 1, 2, class_names)
        baseline.id = 1
        loads.clear()
        result, _, _, _ = _run(tmp_path / name, model, baseline=baseline)
        assert result["baseline_miou"] == 1.0 and result["baseline_skipped"] is None
        assert not result["blessed"] and "latest blessed" in result["reason"]
        # each model is loaded once, also the one without classes.json (read for its channel count)
        assert sorted(loads) == sorted({*loads}) and len(loads) == 2, loads


def test_requests_to_the_serving_model_stay_within_a_memory_budget():
    """QA 76: the evaluator sent 16 images of one size per request, whatever the size and class count; the
    serving model's float32 outputs at the input size then needed ~42 GB for 1024x2048 images of 150 classes."""
    from segbalance.components.seg_evaluator import PREDICT_BUDGET_BYTES, batch_size_for, confusion_over

    assert batch_size_for((64, 64), 4) == 16  # small images: as before
    assert batch_size_for((1024, 2048), 19) == 3 and 3 * 2 * 1024 * 2048 * 19 * 4 <= PREDICT_BUDGET_BYTES
    assert batch_size_for((1024, 2048), 150) == 1 and batch_size_for((4096, 4096), 255) == 1  # never 0
    requests = []

    def predict(images):
        requests.append(len(images))
        return [np.zeros(i.shape[:2], np.int64) for i in images]

    big = [(f"b{i}", np.zeros((1024, 2048, 3), np.uint8), np.zeros((1024, 2048), np.uint8)) for i in range(7)]
    small = [(f"s{i}", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)) for i in range(20)]
    cm = confusion_over(predict, big + small, 19, 255)
    assert requests == [3, 3, 1, 16, 4] and cm[0, 0] == 7 * 1024 * 2048 + 20 * 64


def test_the_eval_set_keeps_masks_encoded_and_scores_them_as_decoded(tmp_path):
    """QA 80 M1: the evaluation set held every decoded truth mask (4 MB a 2000 x 2000 image) for the whole
    evaluation; it now keeps each mask's PNG bytes and decodes it when its batch is scored. The scores are the
    ones the decoded arrays give (a NumPy confusion matrix of the same masks and predictions)."""
    from segbalance.components.seg_evaluator import EncodedMask, confusion_over, load_eval_set

    rng = np.random.default_rng(3)
    masks = [rng.integers(0, 3, (40, 60)).astype(np.uint8) for _ in range(5)]
    masks[2][:5] = 255
    full = tmp_path / "full"
    full.mkdir()
    reference = np.full((40, 60), 2, np.uint8)
    (full / "r3.png").write_bytes(codec.encode_png(reference))  # record 3 is scored against a reference mask
    image = codec.encode_png(np.zeros((40, 60, 3), np.uint8))
    records = [codec.build_example(image, codec.encode_png(m), source_id=f"r{i}", height=40, width=60)
               .SerializeToString() for i, m in enumerate(masks)]
    items, counts = load_eval_set(records, str(full), num_classes=3)
    assert counts["reference_masks"] == 1 and counts["annotation_masks"] == 4
    truths = [reference if i == 3 else m for i, m in enumerate(masks)]
    for (source_id, _, truth), expected in zip(items, truths):
        assert isinstance(truth, EncodedMask) and truth.shape == expected.shape
        assert len(truth.data) < expected.nbytes  # bytes, not the array
        np.testing.assert_array_equal(np.asarray(truth), expected)
    predictions = {f"r{i}": rng.integers(0, 3, (40, 60)) for i in range(5)}
    calls = iter(predictions.values())
    seen = []
    cm = confusion_over(lambda images: [next(calls) for _ in images], items, 3, 255,
                        on_image=lambda sid, img, truth, p, image_cm: seen.append(type(truth)))
    expected_cm = np.zeros((3, 3), np.int64)
    for truth, p in zip(truths, predictions.values()):
        valid = truth != 255
        np.add.at(expected_cm, (truth[valid].astype(int), p[valid]), 1)
    np.testing.assert_array_equal(cm, expected_cm)
    assert seen == [np.ndarray] * 5  # per-image results get arrays
