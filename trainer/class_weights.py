"""Class weights from pixel counts (pure NumPy; shared by ClassStatsGen and the trainer).

With ``n_c`` the pixel count of class c, ``N = sum(n)``, ``f_c = n_c / N`` and C classes:

==================== ==========================================================
``uniform``          1 for every class
``inverse_frequency`` ``N / (C * n_c)``  (1 for every class when balanced)
``median_frequency``  ``median(g) / g_c`` with ``g_c = n_c / P_c`` (Eigen & Fergus 2015), P_c the
                      pixels of the images in which class c appears; median over present
                      classes. Without ``present_image_pixels`` (P) it falls back to
                      ``g = f``, which after normalisation equals ``inverse_frequency``
``enet``              ``1 / ln(k + f_c)``, k = 1.02 (Paszke et al. 2016)
``effective_number``  ``(1 - b) / (1 - b ** n_c)`` (Cui et al. 2019), scaled to mean 1 over the
                      present classes as in the paper (raw, they are ~1/n_c: any clip such as
                      the default [0.5, 5] flattened them to uniform); b defaults to
                      ``1 - 1 / N`` so the weights are not flat for pixel counts
==================== ==========================================================

Then, in this order: optional ``damping="sqrt"`` (square root of the weights), clipping to
``clip=(w_min, w_max)``, normalisation to mean 1 over the *present* classes. This function is the
formulas: its own ``clip`` default is none. The pipeline, ``segbalance stats`` and SegmentationLoss pass
the ``stats.clip`` option, whose default is ``DEFAULT_CLIP`` ([0.5, 5.0]): for ClassStats' weights call it
with ``clip=DEFAULT_CLIP`` (QA 67: a direct call gave [0.016, 0.311, 0.327, 3.346] where the pipeline gave
[0.267, 0.52, 0.547, 2.666]).

Clipping comes before normalisation, so after normalisation the ratio between weights is
bounded by ``w_max / w_min`` but the values themselves are rescaled (mean 1).

A class with zero pixels (absent from the data) gets ``zero_count_weight`` (default 0.0:
it has no pixels to weight, and a finite value keeps losses finite) in every scheme,
outside clipping and normalisation, and is never inf/NaN; ``zero_count_classes`` lists
them so the statistics artifact can say so. If no class has any pixel, every class gets
``zero_count_weight`` (``uniform``: 1). ``ValueError`` for an unknown scheme or damping,
negative/non-finite counts, ``beta`` outside [0, 1), ``enet_k <= 1``, ``w_min > w_max`` or
``w_max <= 0``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

SCHEMES = ("uniform", "inverse_frequency", "median_frequency", "enet", "effective_number")
ENET_K = 1.02
# [w_min, w_max] of the raw weights before normalisation, the ``stats.clip`` default (StatsConfig) and
# SegmentationLoss's when it computes weights from pixel_counts= itself: the range of the default loss's
# median-frequency weights in the experiment (README "Results")
DEFAULT_CLIP = (0.5, 5.0)
# The keyword options of compute_class_weights a configuration passes (the ``stats`` section's
# clip, damping, ...; StatsOptions.weight_options, SegmentationLoss(weight_options=)).
WEIGHT_OPTION_KEYS = frozenset({"beta", "enet_k", "damping", "clip", "normalize", "zero_count_weight"})


def check_weight_options(weight_options: dict) -> None:
    """ValueError naming the bad key/value, at configuration time rather than after the Beam job."""
    unknown = sorted(set(weight_options) - WEIGHT_OPTION_KEYS)
    if unknown:
        raise ValueError(f"unknown weight options {unknown}; expected some of {sorted(WEIGHT_OPTION_KEYS)}")
    for scheme in SCHEMES:  # same checks as the real call, on dummy counts
        compute_class_weights([2, 1], scheme, **weight_options)


def zero_count_classes(pixel_counts: Sequence[int]) -> list:
    return [int(c) for c in np.flatnonzero(np.asarray(pixel_counts) == 0)]


def compute_class_weights(
    pixel_counts: Sequence[int],
    scheme: str,
    *,
    beta: Optional[float] = None,
    enet_k: float = ENET_K,
    damping: Optional[str] = None,
    clip: Optional[Tuple[float, float]] = None,
    normalize: bool = True,
    zero_count_weight: float = 0.0,
    present_image_pixels: Optional[Sequence[int]] = None,
) -> np.ndarray:
    """Weights [C] (float64) for ``scheme`` (see module docstring).

    ``present_image_pixels[c]``: labelled pixels of the images that contain class c (used by
    ``median_frequency`` only; ClassStats records it).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown class-weight scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if damping not in (None, "sqrt"):
        raise ValueError(f"unknown damping {damping!r}; use None or 'sqrt'")
    counts = np.asarray(pixel_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size < 1:
        raise ValueError(f"pixel_counts must be a 1-D list of per-class counts, got shape {counts.shape}")
    if not np.isfinite(counts).all():
        raise ValueError("pixel_counts must be finite (got NaN or inf)")
    if (counts < 0).any():
        raise ValueError("pixel_counts must be >= 0")
    if not np.isfinite(zero_count_weight) or zero_count_weight < 0:
        raise ValueError(f"zero_count_weight must be finite and >= 0, got {zero_count_weight}")
    if scheme == "enet" and not enet_k > 1.0:
        raise ValueError(f"enet: enet_k must be > 1 so that ln(k + f) > 0, got {enet_k}")
    present = counts > 0
    weights = np.full(counts.shape, float(zero_count_weight))
    if not present.any():
        return weights if scheme != "uniform" else np.ones_like(counts)
    total = counts.sum()
    freq = counts / total
    num_classes = counts.size
    if scheme == "uniform":
        weights[present] = 1.0
    elif scheme == "inverse_frequency":
        weights[present] = total / (num_classes * counts[present])
    elif scheme == "median_frequency":
        image_freq = freq if present_image_pixels is None else _image_frequency(counts, present_image_pixels)
        weights[present] = np.median(image_freq[present]) / image_freq[present]
    elif scheme == "enet":
        weights[present] = 1.0 / np.log(enet_k + freq[present])
    elif scheme == "effective_number":
        b = 1.0 - 1.0 / total if beta is None else float(beta)
        if not 0.0 <= b < 1.0:
            raise ValueError(f"effective_number beta must be in [0, 1), got {b}")
        # 1 - b**n computed as -expm1(n * log(b)) for accuracy when b is close to 1.
        effective = -np.expm1(counts[present] * np.log(b)) if b > 0 else np.ones(present.sum())
        raw = (1.0 - b) / effective
        weights[present] = raw / raw.mean()
    if damping == "sqrt":
        weights[present] = np.sqrt(weights[present])
    if clip is not None:
        w_min, w_max = clip
        if not (np.isfinite(w_min) and np.isfinite(w_max)) or w_min < 0 or w_min > w_max or w_max <= 0:
            raise ValueError(f"clip=({w_min}, {w_max}): give 0 <= w_min <= w_max with w_max > 0 (all weights 0 "
                             f"cannot be normalised)")
        weights[present] = np.clip(weights[present], w_min, w_max)
    if normalize:
        weights[present] = weights[present] / weights[present].mean()
    return weights


def _image_frequency(counts: np.ndarray, present_image_pixels: Sequence[int]) -> np.ndarray:
    """``n_c / P_c``; ValueError when P does not fit the counts (wrong length, P_c < n_c)."""
    totals = np.asarray(present_image_pixels, dtype=np.float64)
    if totals.shape != counts.shape:
        raise ValueError(f"present_image_pixels has shape {totals.shape}, pixel_counts {counts.shape}")
    if not np.isfinite(totals).all() or (totals < counts).any():
        raise ValueError("present_image_pixels[c] must be finite and >= pixel_counts[c] (the images that "
                         "contain class c hold at least its pixels)")
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def all_scheme_weights(pixel_counts: Sequence[int], **options) -> dict:
    """{scheme: [C floats]} for every scheme with the same options."""
    return {s: compute_class_weights(pixel_counts, s, **options).tolist() for s in SCHEMES}


def default_beta(pixel_counts: Sequence[int]) -> float:
    """The effective-number beta used when ``beta=None``: ``1 - 1/N`` (N = total pixels)."""
    total = float(np.sum(np.asarray(pixel_counts, dtype=np.float64)))
    if total <= 0:
        raise ValueError("default_beta: pixel_counts sum to zero")
    return 1.0 - 1.0 / total
