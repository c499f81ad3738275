"""Per-class IoU and mIoU as Keras metrics on logits, skipping ignore pixels.

``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` accumulated over every pixel seen (not a mean of
per-batch values), with the prediction the arg-max of the logits. Pixels whose truth is
``ignore_index`` count nowhere. ``mIoU`` averages over the classes whose denominator is
non-zero (a class absent from both truth and prediction is undefined, not 0 or 1).

Keras' ``IoU`` / ``MeanIoU`` do the counting (a confusion matrix variable, so the metrics
are correct under ``MirroredStrategy``); the subclasses here also accept ``y_true`` as the
dict the trainer's dataset yields (``{"mask", "labeled", ...}``) and use its mask, so
they work with or without ``SegmentationModel.compute_metrics`` unpacking it.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import List, Sequence

import keras

from segbalance.contract import DEFAULT_IGNORE_INDEX


def _mask_of(y_true):
    return y_true["mask"] if isinstance(y_true, dict) else y_true


@keras.saving.register_keras_serializable(package="segbalance")
class ClassIoU(keras.metrics.IoU):
    """IoU of the classes in ``target_class_ids`` (one class: that class's IoU) on logits."""

    def __init__(self, num_classes: int, target_class_ids: Sequence[int], name=None, ignore_class=255,
                 sparse_y_pred=False, **kwargs):
        super().__init__(num_classes, list(target_class_ids), name=name, ignore_class=ignore_class,
                         sparse_y_pred=sparse_y_pred, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(_mask_of(y_true), y_pred, sample_weight)


@keras.saving.register_keras_serializable(package="segbalance")
class MeanIoU(keras.metrics.MeanIoU):
    """mIoU on logits over the classes with a defined IoU."""

    def __init__(self, num_classes: int, name=None, ignore_class=255, sparse_y_pred=False, **kwargs):
        super().__init__(num_classes, name=name, ignore_class=ignore_class, sparse_y_pred=sparse_y_pred, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(_mask_of(y_true), y_pred, sample_weight)


def metric_name(class_name: str) -> str:
    """``iou_<class name>`` with accents dropped and anything but letters, digits and _ replaced
    (may be ``iou_`` alone for a name with no such character: ``metric_names`` makes them unique)."""
    return "iou_" + _slug(class_name)


def _slug(class_name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", class_name).encode("ascii", "ignore").decode()
    return re.sub(r"[^0-9a-zA-Z_]+", "_", ascii_name).strip("_").lower()


def metric_names(class_names: Sequence[str]) -> List[str]:
    """Safe, unique metric names, one per class: ``iou_<name>``; where that is empty (e.g. a CJK
    name) or shared (``"a b"`` and ``"a-b"``), ``iou_<class id>`` / ``iou_<class id>_<name>``.
    Keras and TensorBoard need ASCII identifiers; the user's names stay everywhere else."""
    slugs = [_slug(n) for n in class_names]
    counts = Counter(slugs)
    names = [f"iou_{s}" if s and counts[s] == 1 else f"iou_{c}" + (f"_{s}" if s else "")
             for c, s in enumerate(slugs)]
    if len(set(names)) != len(names):  # e.g. "1 a" beside two "a": every name gets its id
        names = [f"iou_{c}" + (f"_{s}" if s else "") for c, s in enumerate(slugs)]
    return names


def segmentation_metrics(class_names: Sequence[str], ignore_index: int = DEFAULT_IGNORE_INDEX
                         ) -> List[keras.metrics.Metric]:
    """``[miou, iou_<name> for each class]``; logged by ``fit`` as ``miou``, ``val_iou_<name>``, ..."""
    num_classes = len(class_names)
    metrics = [MeanIoU(num_classes, name="miou", ignore_class=ignore_index)]
    for c, name in enumerate(metric_names(class_names)):
        metrics.append(ClassIoU(num_classes, [c], name=name, ignore_class=ignore_index))
    return metrics
