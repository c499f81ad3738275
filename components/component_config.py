"""The ``stats``, ``evaluation`` and ``drift`` sections of the configuration: the options of
ClassStatsGen, SegEvaluator and ClassDistributionValidator, and the one place their defaults
live (the components' own keyword defaults are these; ``pipeline/config.py`` holds them in
``PipelineConfig``). No TensorFlow / TFX imports.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Literal, Optional, Tuple

from segbalance.contract import DRIFT_ACTIONS
from segbalance.trainer.class_weights import DEFAULT_CLIP, ENET_K
from segbalance.trainer.typed_config import is_number, require


@dataclass
class StatsConfig:
    """ClassStatsGen's options (components/class_stats_gen.py); the weight options apply to
    every scheme of ``trainer/class_weights.py``, whose docstring has the formulas."""

    labeled_policy: Literal["complete", "partial"] = "complete"  # records without `labeled`
    suspect_threshold: float = 0.9  # co-occurrence rate in (0, 1] for suspect_missing
    # [w_min, w_max] of the raw weights, before normalisation; null: none. [0.5, 5.0] is the range of the
    # default loss's median-frequency weights in the experiment (README "Results")
    clip: Optional[Tuple[float, float]] = DEFAULT_CLIP
    damping: Optional[Literal["sqrt"]] = None  # "sqrt": square root of the weights
    zero_count_weight: float = 0.0  # weight of a class with no pixel
    beta: Optional[float] = None  # effective_number beta; None: 1 - 1/N
    enet_k: float = ENET_K  # enet: 1 / ln(k + f)

    def weight_options(self) -> Dict[str, Any]:
        """Keyword arguments of ``compute_class_weights``."""
        return {"clip": self.clip, "damping": self.damping, "zero_count_weight": self.zero_count_weight,
                "beta": self.beta, "enet_k": self.enet_k}

    def validate(self, where: str) -> None:
        require(is_number(self.suspect_threshold) and 0.0 < self.suspect_threshold <= 1.0,
                f"{where}.suspect_threshold", "must be in (0, 1]")
        if self.clip is not None:
            lo, hi = self.clip
            require(is_number(lo, 0.0) and is_number(hi) and lo <= hi and hi > 0, f"{where}.clip",
                    f"{list(self.clip)}: give [w_min, w_max] with 0 <= w_min <= w_max and w_max > 0")
        require(is_number(self.zero_count_weight, 0.0), f"{where}.zero_count_weight", "must be a finite number >= 0")
        require(self.beta is None or (is_number(self.beta) and 0.0 <= self.beta < 1.0), f"{where}.beta",
                "must be in [0, 1) or null (1 - 1/N)")
        require(is_number(self.enet_k) and self.enet_k > 1.0, f"{where}.enet_k", "must be > 1 (ln(k + f) > 0)")


@dataclass
class EvaluationConfig:
    miou_threshold: float = 0.3  # absolute: a model below it is not blessed
    tolerance: float = 0.02  # may be this much worse than the latest blessed model

    def validate(self, where: str) -> None:
        require(0.0 <= self.miou_threshold <= 1.0, f"{where}.miou_threshold", "must be in [0, 1]")
        require(is_number(self.tolerance, 0.0), f"{where}.tolerance", "must be a finite number >= 0")


@dataclass
class DriftConfig:
    # the smallest change that blocks, of each measure (a change must also exceed what sampling alone gives, see
    # significance); until session 19 these alone decided, at 0.05 / 0.1 / 0.2: they blocked 85 % of normal
    # 10-image spans of labelme's photos and never caught nuclei's test part (docs/benchmarks.md)
    js_divergence: float = 0.01  # Jensen-Shannon divergence of class pixel frequencies (bits)
    max_abs_change: float = 0.03  # largest change of one class's pixel frequency
    missing_rate_change: float = 0.05  # change of the fraction of images with missing classes
    # a class the baseline had and the new data has no pixel of is an anomaly when the chance of that, had its
    # image frequency f not changed, (1 - f) ** new records, is below this (0: never)
    vanished_class_chance: float = 0.01
    # a class the baseline had no pixel of is an anomaly when the chance that every image (group, where the
    # images have group ids) holding it falls among the new ones, had nothing changed, is below this (0: never;
    # without per-image tables every new class is)
    new_class_chance: float = 0.01
    # a change blocks only where sampling alone (this many new images drawn from the accepted ones: bootstrap
    # draws of their per-image table) exceeds it with a chance below this; 0: the thresholds alone decide
    significance: float = 0.005
    # a run that passes (status ok) makes its ClassStats the baseline of the next only when they count at least
    # this share of the images the accepted ones counted; else the accepted ones stay (QA 92: a 6-image span
    # that passed became the whole baseline, and a shift the 66-image one blocked then passed); 0: every
    # passing run's ClassStats become the baseline, as before session 36. A run that warns always does.
    baseline_min_share: float = 0.5
    # "block": the model is trained but not blessed, so not pushed; "block_training": trainer,
    # evaluator and pusher do not run; "warn": recorded only
    action: str = "block"

    def validate(self, where: str) -> None:
        # each measure is in [0, 1] (JS divergence in bits): a threshold above 1 is a gate that never fires
        for name in ("js_divergence", "max_abs_change", "missing_rate_change"):
            require(is_number(getattr(self, name), 0.0) and getattr(self, name) <= 1.0, f"{where}.{name}",
                    "must be in [0, 1] (the measure's range; 1 or more never fires)")
        for name in ("vanished_class_chance", "new_class_chance"):
            require(is_number(getattr(self, name), 0.0) and getattr(self, name) <= 1.0, f"{where}.{name}",
                    "must be in [0, 1] (a chance; 0 never fires)")
        require(is_number(self.significance, 0.0) and self.significance <= 0.5, f"{where}.significance",
                "must be in [0, 0.5] (a chance; 0 turns the sampling limit off)")
        require(is_number(self.baseline_min_share, 0.0) and self.baseline_min_share <= 1.0,
                f"{where}.baseline_min_share", "must be in [0, 1] (a share of the accepted images; 0 turns it off)")
        require(self.action in DRIFT_ACTIONS, f"{where}.action", f"use one of {', '.join(DRIFT_ACTIONS)}")
