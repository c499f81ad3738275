"""Segmentation evaluation in NumPy: confusion matrix, per-class IoU, mIoU, blessing rule.

Kept free of TensorFlow and TFX so it is tested directly and reused by the experiments.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np


# what one request of the serving model may hold in its float32 outputs at the input size (logits resized,
# probabilities): 2 x H x W x C x 4 bytes an image (QA 76: 16 images of 1024x2048 at 150 classes were ~42 GB)
PREDICT_BUDGET_BYTES = 1 << 30


def request_bytes(size: Tuple[int, int], num_classes: int) -> int:
    """Bytes of the serving model's float32 outputs for one image of ``size`` (H, W): 2 x H x W x C x 4."""
    return 2 * int(size[0]) * int(size[1]) * int(num_classes) * 4


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    """[C, C] int64 counts, rows = true class, columns = predicted; ignore pixels skipped.

    Truth ids that are neither < C nor ``ignore_index`` raise ValueError (a data error, not
    something to count silently).
    """
    truth = np.asarray(truth).astype(np.int64).ravel()
    pred = np.asarray(pred).astype(np.int64).ravel()
    if truth.shape != pred.shape:
        raise ValueError(f"truth has {truth.size} pixels but the prediction has {pred.size}")
    valid = truth != ignore_index
    bad = valid & ((truth < 0) | (truth >= num_classes))
    if bad.any():
        raise ValueError(f"mask has class ids {sorted(set(truth[bad].tolist()))[:10]} outside [0, {num_classes})")
    if ((pred < 0) | (pred >= num_classes)).any():
        raise ValueError(f"prediction has class ids outside [0, {num_classes})")
    return np.bincount(truth[valid] * num_classes + pred[valid], minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def partial_truth(truth: np.ndarray, pred: np.ndarray, labeled, num_classes: int, ignore_index: int) -> np.ndarray:
    """The truth a partial annotation can score: background pixels predicted as a class the image's
    annotator did not label become ``ignore_index``.

    ``labeled``: the image's labelled class ids (background always counts as labelled), or None
    (a complete annotation: ``truth`` unchanged). Where a class was left unlabelled, a pixel marked
    background may be that class, so predicting it there is neither a hit nor a miss; everything
    else scores as usual (background predicted as background, a labelled class predicted on
    background, every labelled foreground pixel). The same rule as ``ignore_predicted_cross_entropy``
    and the trainer's validation metrics (``segbalance.trainer.metrics.metric_truth``).
    """
    if labeled is None:
        return truth
    unlabeled = np.ones(num_classes, bool)
    unlabeled[[int(c) for c in labeled if 0 <= int(c) < num_classes]] = False
    unlabeled[0] = False
    if not unlabeled.any():
        return truth
    pred = np.asarray(pred).astype(np.int64)
    hit = (np.asarray(truth) == 0) & unlabeled[np.clip(pred, 0, num_classes - 1)]
    return np.where(hit, ignore_index, np.asarray(truth).astype(np.int64))


def per_class_iou(cm: np.ndarray) -> np.ndarray:
    """IoU per class; NaN where the class is neither in the truth nor predicted (undefined)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def summarize(cm: np.ndarray) -> dict:
    """per_class_iou (None where undefined), miou over defined classes, pixel_accuracy."""
    iou = per_class_iou(cm)
    total = float(np.asarray(cm).sum())
    return {
        "per_class_iou": [None if np.isnan(v) else float(v) for v in iou],
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
        "pixel_accuracy": float(np.trace(cm) / total) if total else 0.0,
        "confusion_matrix": np.asarray(cm).astype(int).tolist(),
    }


def decide_blessing(miou: float, threshold: float, baseline_miou: Optional[float], tolerance: float) -> Tuple[bool, str]:
    """Bless when mIoU >= threshold and, with a baseline, mIoU >= baseline - tolerance."""
    if miou < threshold:
        return False, f"mIoU {miou:.4f} is below the threshold {threshold:.4f}"
    if baseline_miou is not None and miou < baseline_miou - tolerance:
        return False, (f"mIoU {miou:.4f} is worse than the latest blessed model's {baseline_miou:.4f} "
                       f"by more than the tolerance {tolerance:.4f}")
    if baseline_miou is None:
        return True, f"mIoU {miou:.4f} >= threshold {threshold:.4f} (no blessed model yet)"
    # (QA 70: "within 0.0200 of the latest blessed model's 0.2185" was said of 0.3019)
    relation = (f"{miou - baseline_miou:+.4f} against" if miou >= baseline_miou
                else f"{miou - baseline_miou:+.4f}, within the tolerance {tolerance:.4f} of")
    return True, (f"mIoU {miou:.4f} >= threshold {threshold:.4f} and {relation} the latest blessed model's "
                  f"{baseline_miou:.4f}")


# --------------------------------------------------------------------------- per image (the report's worst images)
PER_IMAGE_FILE = "per_image.json"  # in SegEvaluator's evaluation artifact, beside evaluation.json
PER_IMAGE_DIR = "per_image"  # downscaled PNGs named in PER_IMAGE_FILE
THUMBNAIL_SIZE = 128  # longest side of the downscaled PNGs (pixels)


def image_scores(cm: np.ndarray) -> dict:
    """One image's scores from its own confusion matrix: ``miou`` over the classes defined in
    the image (in its truth or its prediction), ``pixel_accuracy``, ``per_class_iou`` (None
    where undefined). An image with no valid pixel has ``miou`` None."""
    iou = per_class_iou(cm)
    total = float(np.asarray(cm).sum())
    return {
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() and total else None,
        "pixel_accuracy": float(np.trace(cm) / total) if total else None,
        "per_class_iou": [None if np.isnan(v) else round(float(v), 6) for v in iou],
    }


def downscale_nearest(array: np.ndarray, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """Nearest-neighbour downscale so that the longest side is at most ``size`` (label maps keep
    their ids: no value is invented between two classes). Smaller arrays are returned unchanged."""
    array = np.asarray(array)
    height, width = array.shape[:2]
    scale = size / max(height, width)
    if scale >= 1:
        return array
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    rows = np.minimum(((np.arange(new_h) + 0.5) * height / new_h).astype(int), height - 1)
    cols = np.minimum(((np.arange(new_w) + 0.5) * width / new_w).astype(int), width - 1)
    return array[rows][:, cols]
