"""Per-class IoU and mIoU as Keras metrics on logits, skipping ignore pixels.

Keras' own ``IoU`` / ``MeanIoU`` do the work (``sparse_y_pred=False`` takes the arg-max of
the logits, ``ignore_class`` drops ignore pixels); ``SegmentationModel.compute_metrics``
hands them the mask when ``y`` is a dict.
"""
from __future__ import annotations

import re
from typing import List, Sequence

import keras


def metric_name(class_name: str) -> str:
    return "iou_" + re.sub(r"[^0-9a-zA-Z_]+", "_", class_name).strip("_").lower()


def segmentation_metrics(class_names: Sequence[str], ignore_index: int = 255) -> List[keras.metrics.Metric]:
    num_classes = len(class_names)
    metrics = [keras.metrics.MeanIoU(num_classes, name="miou", sparse_y_pred=False, ignore_class=ignore_index)]
    for c, name in enumerate(class_names):
        metrics.append(keras.metrics.IoU(num_classes, target_class_ids=[c], name=metric_name(name),
                                         sparse_y_pred=False, ignore_class=ignore_index))
    return metrics
