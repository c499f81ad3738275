"""Per-class IoU and mIoU as Keras metrics on logits, skipping ignore pixels.

``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` accumulated over every pixel seen (not a mean of
per-batch values), with the prediction the arg-max of the logits. Pixels whose truth is
``ignore_index`` count nowhere. ``mIoU`` averages over the classes whose denominator is
non-zero (a class absent from both truth and prediction is undefined, not 0 or 1).

Keras' ``IoU`` / ``MeanIoU`` do the counting (a confusion matrix variable, so the metrics
are correct under ``MirroredStrategy``; ``segmentation_metrics`` keeps one, in ``miou``, which the
per-class metrics read); the subclasses here also accept ``y_true`` as the
dict the trainer's dataset yields (``{"mask", "labeled", ...}``), so they work with or without
``SegmentationModel.compute_metrics`` unpacking it.

Partial annotations: with the dict's ``labeled`` [B,C] (the classes each image's annotator
labelled; background always counts as labelled), a background pixel *predicted* as a class that
image left unlabelled is not scored (``metric_truth``): it may be that class, so it is neither a
hit nor a miss. Without this rule validation mIoU (which picks the exported epoch, stops early
and cuts the learning rate) rewards a model for not predicting the classes annotators skipped.
Everything else scores as usual; with every class labelled nothing changes. The same rule as
``ignore_predicted_cross_entropy`` and SegEvaluator (``evaluation_metrics.partial_truth``).
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import List, Sequence

import keras
from keras import ops

from segbalance.contract import DEFAULT_IGNORE_INDEX
from segbalance.trainer.losses import unlabelled_prediction_on_background


def metric_truth(y_true, y_pred, ignore_index: int = DEFAULT_IGNORE_INDEX, sparse_y_pred: bool = False,
                 num_classes=None):
    """The mask the IoU metrics score: ``y_true`` itself, or for the dataset's dict its ``mask``
    with background pixels predicted (arg-max of ``y_pred``; ``y_pred`` itself when
    ``sparse_y_pred``, then with ``num_classes``) as an unlabelled class set to ``ignore_index``
    (see the module docstring). [B,H,W] int32."""
    if not isinstance(y_true, dict):
        return y_true
    mask = y_true["mask"]
    labeled = y_true.get("labeled")
    if labeled is None or ignore_index is None:  # no ignore value to mark them with: scored as they are
        return mask
    if sparse_y_pred:
        pred = ops.cast(y_pred, "int32")
    else:
        num_classes = y_pred.shape[-1]
        pred = ops.argmax(y_pred, axis=-1)
    mask = ops.reshape(ops.cast(mask, "int32"), ops.shape(pred))
    unscored = unlabelled_prediction_on_background(mask, pred, labeled, num_classes) > 0.5
    return ops.where(unscored, int(ignore_index), mask)


@keras.saving.register_keras_serializable(package="segbalance")
class ClassIoU(keras.metrics.IoU):
    """IoU of the classes in ``target_class_ids`` (one class: that class's IoU) on logits.

    A class absent from both truth and prediction reads 0 here (Keras' IoU convention: the per-class
    curves in the history and the report show 0 for it), while ``mIoU`` leaves it out and
    SegEvaluator's ``per_class_iou`` says None: read a 0 beside a class with no pixels as undefined."""

    def __init__(self, num_classes: int, target_class_ids: Sequence[int], name=None,
                 ignore_class=DEFAULT_IGNORE_INDEX,
                 sparse_y_pred=False, **kwargs):
        super().__init__(num_classes, list(target_class_ids), name=name, ignore_class=ignore_class,
                         sparse_y_pred=sparse_y_pred, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth = metric_truth(y_true, y_pred, self.ignore_class, self.sparse_y_pred, self.num_classes)
        return super().update_state(truth, y_pred, sample_weight)


@keras.saving.register_keras_serializable(package="segbalance")
class MeanIoU(keras.metrics.MeanIoU):
    """mIoU on logits over the classes with a defined IoU."""

    def __init__(self, num_classes: int, name=None, ignore_class=DEFAULT_IGNORE_INDEX, sparse_y_pred=False, **kwargs):
        super().__init__(num_classes, name=name, ignore_class=ignore_class, sparse_y_pred=sparse_y_pred, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth = metric_truth(y_true, y_pred, self.ignore_class, self.sparse_y_pred, self.num_classes)
        return super().update_state(truth, y_pred, sample_weight)


@keras.saving.register_keras_serializable(package="segbalance")
class SharedClassIoU(keras.metrics.Metric):
    """IoU of one class read from another IoU metric's confusion matrix (``source``, the ``miou`` of
    ``segmentation_metrics``): it counts nothing itself, so its ``update_state`` and ``reset_state`` do
    nothing and only ``source`` must see the data. The value is ``ClassIoU(num_classes, [class_id])``'s
    on the same data (same formula, same epsilon), and its config is that ``ClassIoU``'s: a saved model
    reloads it as a ``ClassIoU`` of its own.

    Why (QA 76 M4): one ``ClassIoU`` per class kept C confusion matrices and updated each every step;
    with one matrix the metrics cost 1.8x / 3.0x less CPU at 21 / 255 classes (``benchmarks/metrics_shared_cm.py``,
    docs/benchmarks.md)."""

    def __init__(self, source: keras.metrics.IoU, class_id: int, name=None, **kwargs):
        super().__init__(name=name, dtype=source.dtype, **kwargs)
        object.__setattr__(self, "_source", source)  # not tracked: its variables stay the source's own
        self.class_id = int(class_id)

    @property
    def num_classes(self) -> int:
        return self._source.num_classes

    @property
    def ignore_class(self):
        return self._source.ignore_class

    @property
    def target_class_ids(self) -> List[int]:
        return [self.class_id]

    def update_state(self, y_true, y_pred, sample_weight=None):
        pass

    def reset_state(self):
        pass

    def result(self):
        cm = self._source.total_cm
        true_positive = ops.cast(cm[self.class_id, self.class_id], self.dtype)
        denominator = (ops.cast(ops.sum(cm[:, self.class_id]), self.dtype)
                       + ops.cast(ops.sum(cm[self.class_id, :]), self.dtype) - true_positive)
        valid = ops.cast(ops.greater(denominator, 1e-9), self.dtype)
        iou = ops.divide(true_positive, denominator + keras.backend.epsilon())
        return ops.divide(iou, valid + keras.backend.epsilon())

    def get_config(self):
        source = self._source
        return dict(super().get_config(), num_classes=self.num_classes, target_class_ids=self.target_class_ids,
                    ignore_class=self.ignore_class, sparse_y_true=source.sparse_y_true,
                    sparse_y_pred=source.sparse_y_pred, axis=source.axis)

    @classmethod
    def from_config(cls, config):
        return ClassIoU(**config)


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
    """``[miou, iou_<name> for each class]``; logged by ``fit`` as ``miou``, ``val_iou_<name>``, ...

    ``miou`` keeps the one confusion matrix; the per-class metrics read it (``SharedClassIoU``): pass
    them all to ``compile`` together, or update ``miou`` yourself."""
    num_classes = len(class_names)
    miou = MeanIoU(num_classes, name="miou", ignore_class=ignore_index)
    return [miou] + [SharedClassIoU(miou, c, name=name) for c, name in enumerate(metric_names(class_names))]
