"""Per-class IoU / mIoU against a NumPy confusion-matrix reference."""
import keras
import numpy as np
import pytest

from segbalance.trainer.metrics import ClassIoU, MeanIoU, metric_name, segmentation_metrics

C, IGNORE = 4, 255


def numpy_iou(masks, logits, num_classes=C, ignore=IGNORE):
    """(per-class IoU with nan where undefined, nan-mean) from a confusion matrix."""
    truth = np.concatenate([m.ravel() for m in masks])
    pred = np.concatenate([lg.argmax(-1).ravel() for lg in logits])
    keep = truth != ignore
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (truth[keep], pred[keep]), 1)
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1) - tp
    iou = np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)
    return iou, np.nanmean(iou)


def batch(rng, b=2, h=6, w=5, classes=C, absent=None):
    mask = rng.integers(0, classes, (b, h, w))
    mask[rng.random((b, h, w)) < 0.2] = IGNORE
    logits = rng.normal(size=(b, h, w, C)).astype(np.float32)
    if absent is not None:  # class never in truth nor prediction
        mask[mask == absent] = 0
        logits[..., absent] = -100.0
    return mask, logits


def results(metrics):
    return {m.name: float(m.result()) for m in metrics}


def test_matches_numpy_over_several_batches_and_accepts_dict():
    rng = np.random.default_rng(0)
    names = ["bg", "a", "b", "c"]
    metrics = segmentation_metrics(names, IGNORE)
    masks, logits = [], []
    for i in range(3):
        mask, lg = batch(rng)
        y = {"mask": mask, "labeled": np.ones((2, C), np.float32)} if i % 2 else mask
        for m in metrics:
            m.update_state(y, lg)
        masks.append(mask)
        logits.append(lg)
    iou, miou = numpy_iou(masks, logits)
    got = results(metrics)
    np.testing.assert_allclose(got["miou"], miou, rtol=1e-6)
    for c, name in enumerate(names):
        np.testing.assert_allclose(got[metric_name(name)], iou[c], rtol=1e-6)


def test_absent_class_is_left_out_of_miou_batch_of_one_and_float16():
    rng = np.random.default_rng(1)
    mask, logits = batch(rng, b=1, absent=2)
    miou = MeanIoU(C)
    miou.update_state(mask, logits.astype(np.float16))
    iou, expected = numpy_iou([mask], [logits])
    assert np.isnan(iou[2])
    np.testing.assert_allclose(float(miou.result()), expected, rtol=1e-3)
    assert float(miou.result()) != pytest.approx(np.nan_to_num(iou).mean())  # not counted as 0


def test_all_ignored_batch_gives_zero_not_nan():
    metric = ClassIoU(C, [1])
    metric.update_state(np.full((1, 3, 3), IGNORE), np.zeros((1, 3, 3, C), np.float32))
    assert float(metric.result()) == 0.0


def test_metric_names_and_duplicates():
    from segbalance.trainer.metrics import metric_names

    assert metric_name("Traffic light!") == "iou_traffic_light"
    assert metric_name("Café") == "iou_cafe"
    # names with no ASCII letter (CJK) or that clash once made safe get their class id
    assert metric_names(["背景", "a b", "a-b", "猫", "road"]) == ["iou_0", "iou_1_a_b", "iou_2_a_b", "iou_3",
                                                                   "iou_road"]
    assert metric_names(["a", "a!", "1 a"]) == ["iou_0_a", "iou_1_a", "iou_2_1_a"]
    names = [m.name for m in segmentation_metrics(["背景", "猫", "犬"])]
    assert names == ["miou", "iou_0", "iou_1", "iou_2"]


def test_evaluate_with_dict_targets_matches_numpy_and_roundtrips_config():
    from segbalance.trainer.segmentation_loss import SegmentationLoss
    from segbalance.trainer.segmentation_model import SegmentationModel

    rng = np.random.default_rng(2)
    inputs = keras.Input((6, 5, 3))
    model = SegmentationModel(inputs=inputs, outputs=keras.layers.Conv2D(C, 1)(inputs))
    model.compile(loss=SegmentationLoss({"terms": [{"type": "ce"}]}), metrics=segmentation_metrics(list("wxyz")))
    images = rng.normal(size=(4, 6, 5, 3)).astype(np.float32)
    mask, _ = batch(rng, b=4)
    y = {"mask": mask, "labeled": np.ones((4, C), np.float32)}
    got = model.evaluate(images, y, batch_size=2, verbose=0, return_dict=True)
    iou, miou = numpy_iou([mask], [model.predict(images, verbose=0)])
    np.testing.assert_allclose(got["miou"], miou, rtol=1e-5)
    np.testing.assert_allclose(got["iou_x"], iou[1], rtol=1e-5)
    clone = ClassIoU.from_config(ClassIoU(C, [3], name="iou_z").get_config())
    assert clone.target_class_ids == [3] and clone.ignore_class == IGNORE


def reference_partial_truth(masks, logits, labeled, ignore=IGNORE):
    """Pixel by pixel: background truth predicted as a class missing from the image's labelled set
    (background always labelled) becomes ignore."""
    out = masks.copy()
    pred = logits.argmax(-1)
    for b, h, w in np.ndindex(*masks.shape):
        p = pred[b, h, w]
        if masks[b, h, w] == 0 and p != 0 and labeled[b, p] == 0:
            out[b, h, w] = ignore
    return out


def test_partial_annotation_hand_case():
    # 1 image, 2x2, class 2 not labelled: the pixel predicted 2 on background is not scored
    mask = np.array([[[0, 0], [1, 0]]])
    logits = np.eye(C, dtype=np.float32)[np.array([[[2, 0], [1, 1]]])] * 5.0
    labeled = np.array([[1, 1, 0, 1]], np.float32)
    miou = MeanIoU(C)
    miou.update_state({"mask": mask, "labeled": labeled}, logits)
    assert float(miou.result()) == pytest.approx(0.5)  # background 1/2, class 1 1/2, class 2 and 3 undefined
    plain = MeanIoU(C)
    plain.update_state(mask, logits)
    assert float(plain.result()) == pytest.approx((1 / 3 + 1 / 2 + 0) / 3)  # class 2 scored as a miss


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_partial_annotation_matches_numpy_and_keeps_complete_ones_unchanged(dtype):
    from segbalance.components.evaluation_metrics import partial_truth
    from segbalance.trainer.metrics import metric_truth

    rng = np.random.default_rng(3)
    mask, logits = batch(rng, b=3, h=5, w=4)
    labeled = (rng.random((3, C)) < 0.5).astype(np.float32)
    labeled[0] = 1.0  # one complete annotation
    labeled[1, 0] = 0.0  # background counts as labelled even when the row says otherwise
    expected = reference_partial_truth(mask, logits, np.maximum(labeled, np.eye(C)[0]))
    got = np.asarray(metric_truth({"mask": mask, "labeled": labeled}, logits.astype(dtype)))
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got[0], mask[0])
    assert (got != mask).any()  # the case exercises the rule
    for b in range(3):  # the NumPy rule SegEvaluator applies agrees
        ids = np.flatnonzero(np.maximum(labeled[b], np.eye(C)[0]))
        np.testing.assert_array_equal(partial_truth(mask[b], logits[b].argmax(-1), ids, C, IGNORE), expected[b])
    names = list("wxyz")
    metrics = segmentation_metrics(names, IGNORE)
    for m in metrics:
        m.update_state({"mask": mask, "labeled": labeled}, logits.astype(dtype))
    iou, miou = numpy_iou([expected], [logits])
    got = results(metrics)
    np.testing.assert_allclose(got["miou"], miou, rtol=1e-6)
    for c, name in enumerate(names):
        np.testing.assert_allclose(got[metric_name(name)], iou[c], rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_validation_metrics_of_the_model_skip_unlabelled_predictions(jit_compile):
    """model.evaluate (test_step -> compute_metrics) with the dataset's dict, batch size 1, XLA."""
    from segbalance.trainer.segmentation_loss import SegmentationLoss
    from segbalance.trainer.segmentation_model import SegmentationModel

    rng = np.random.default_rng(4)
    inputs = keras.Input((6, 5, 3))
    model = SegmentationModel(inputs=inputs, outputs=keras.layers.Conv2D(C, 1)(inputs))
    model.compile(loss=SegmentationLoss({"terms": [{"type": "ce"}], "missing_labels": "marginal"}, ignore_index=IGNORE),
                  metrics=segmentation_metrics(list("wxyz"), IGNORE), jit_compile=jit_compile)
    images = rng.normal(size=(3, 6, 5, 3)).astype(np.float32)
    mask, _ = batch(rng, b=3)
    labeled = np.array([[1, 0, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]], np.float32)
    got = model.evaluate(images, {"mask": mask, "labeled": labeled}, batch_size=1, verbose=0, return_dict=True)
    logits = model.predict(images, verbose=0)
    expected = reference_partial_truth(mask, logits, labeled)
    assert (expected != mask).any()
    iou, miou = numpy_iou([expected], [logits])
    np.testing.assert_allclose(got["miou"], miou, rtol=1e-5)
    np.testing.assert_allclose(got["iou_x"], iou[1], rtol=1e-5)


def test_partial_annotation_rule_with_class_id_predictions():
    """sparse_y_pred=True: the prediction is already class ids; the rule reads them as they are."""
    mask = np.array([[[0, 0], [1, 0]]])
    ids = np.array([[[2, 0], [1, 1]]])
    labeled = np.array([[1, 1, 0, 1]], np.float32)
    sparse, dense = MeanIoU(C, sparse_y_pred=True), MeanIoU(C)
    sparse.update_state({"mask": mask, "labeled": labeled}, ids)
    dense.update_state({"mask": mask, "labeled": labeled}, np.eye(C, dtype=np.float32)[ids])
    assert float(sparse.result()) == pytest.approx(float(dense.result())) == pytest.approx(0.5)


def keras_class_iou(masks, logits, class_id, num_classes):
    """Keras' own IoU of one class (independent of the shared matrix) over the batches."""
    metric = keras.metrics.IoU(num_classes, [class_id], ignore_class=IGNORE, sparse_y_pred=False)
    for mask, lg in zip(masks, logits):
        metric.update_state(mask, lg)
    return float(metric.result())


def test_per_class_metrics_share_the_miou_matrix_and_match_keras_iou():
    """segmentation_metrics keeps one confusion matrix (miou's); each class's metric equals Keras' IoU of that
    class, an absent class included (0), and resetting miou resets them all (QA 76 M4)."""
    from segbalance.trainer.metrics import SharedClassIoU

    rng = np.random.default_rng(5)
    metrics = segmentation_metrics(list("wxyz"), IGNORE)
    miou, per_class = metrics[0], metrics[1:]
    assert all(isinstance(m, SharedClassIoU) and not m.variables for m in per_class)
    assert len([v for m in metrics for v in m.variables]) == 1  # one C x C matrix in all
    masks, logits = zip(*(batch(rng, absent=3) for _ in range(3)))
    for mask, lg in zip(masks, logits):
        miou.update_state(mask, lg)  # the per-class metrics need no update of their own
    got = results(metrics)
    for c, m in enumerate(per_class):
        assert got[m.name] == pytest.approx(keras_class_iou(masks, logits, c, C), rel=1e-7, abs=1e-12)
    assert got["iou_z"] == 0.0 and got["iou_w"] > 0.0
    for m in per_class:  # what compile / reset_metrics do: no-ops that keep the shared counts
        m.update_state(masks[0], logits[0])
        m.reset_state()
    assert results(metrics) == got
    miou.reset_state()
    assert all(v == 0.0 for v in results(metrics).values())


def test_shared_class_iou_config_reloads_as_a_class_iou():
    rng = np.random.default_rng(6)
    view = segmentation_metrics(list("wxyz"), IGNORE)[2]
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(view))
    assert type(clone) is ClassIoU and clone.name == "iou_x"
    assert clone.get_config() == view.get_config() == ClassIoU(C, [1], name="iou_x", ignore_class=IGNORE).get_config()
    mask, lg = batch(rng)
    clone.update_state(mask, lg)
    assert float(clone.result()) == pytest.approx(keras_class_iou([mask], [lg], 1, C), rel=1e-7)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_saved_compiled_model_reloads_with_its_metrics(tmp_path, jit_compile):
    """model.keras keeps the compile config: loaded with compile=True, evaluate gives the same per-class IoU
    (the shared views come back as standalone ClassIoU metrics)."""
    from segbalance.trainer.segmentation_loss import SegmentationLoss
    from segbalance.trainer.segmentation_model import SegmentationModel

    rng = np.random.default_rng(7)
    inputs = keras.Input((6, 5, 3))
    model = SegmentationModel(inputs=inputs, outputs=keras.layers.Conv2D(C, 1)(inputs))
    model.compile(loss=SegmentationLoss({"terms": [{"type": "ce"}]}, ignore_index=IGNORE),
                  metrics=segmentation_metrics(list("wxyz"), IGNORE), jit_compile=jit_compile)
    images = rng.normal(size=(3, 6, 5, 3)).astype(np.float32)
    mask, _ = batch(rng, b=3)
    got = model.evaluate(images, mask, batch_size=1, verbose=0, return_dict=True)
    iou, miou = numpy_iou([mask], [model.predict(images, verbose=0)])
    np.testing.assert_allclose([got[f"iou_{n}"] for n in "wxyz"], np.nan_to_num(iou), rtol=1e-5)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    again = loaded.evaluate(images, mask, batch_size=1, verbose=0, return_dict=True)
    assert again == pytest.approx(got, rel=1e-6)
