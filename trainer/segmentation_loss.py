"""`SegmentationLoss`: a serialisable Keras loss composed from a config dict.

    loss = SegmentationLoss(
        {"terms": [{"type": "ce", "weight": 1.0}, {"type": "dice", "weight": 0.5}],
         "class_weights": "median_frequency", "missing_labels": "marginal"},
        class_weights=stats["weights"]["median_frequency"])   # resolved vector, e.g. from ClassStats

Config keys (all optional except ``terms``):

- ``terms``: list of ``{"type": T, "weight": w, **params}`` with T one of
  ``ce`` (label_smoothing, top_k_percent_pixels), ``focal`` (gamma, alpha),
  ``dice`` (smooth), ``generalized_dice`` (smooth), ``tversky`` (alpha = FP weight,
  beta = FN weight, smooth), ``exclusion`` (form: "ce" | "dice"; needs ``labeled``).
- ``class_weights``: null, a list of C floats, or a scheme name of
  ``trainer/class_weights.py`` (then pass the resolved vector as ``class_weights=`` or
  the counts as ``pixel_counts=``, plus ClassStats' ``present_image_pixels=`` for
  ``median_frequency``). Applied to the ce/focal/dice/tversky terms.
- ``missing_labels``: null, ``"ignore_predicted"`` or ``"marginal"``: which CE the ``ce``
  term uses when the image's ``labeled`` set is known.
- ``weight_options``: options of ``compute_class_weights`` used with ``pixel_counts=``.
- ``ignore_index`` (255), ``fn_weights`` / ``fp_weights`` (lists of C floats),
  ``low_confidence`` (``{"tau": 0.5, "alpha": 0.5}``): see ``trainer/losses.py``.

``num_classes`` (optional, implied by ``pixel_counts``) checks vector lengths when the loss
is built and the logits' channel count when it is called.

``y_true`` is an integer mask, or a dict ``{"mask": [B,H,W], "labeled": [B,C] multi-hot,
"pixel_weights": [B,H,W]}`` (the extra keys optional). In ``model.fit`` use
``trainer.segmentation_model.SegmentationModel``, whose ``compute_loss`` hands the dict the
dataset yields to this loss.
"""
from __future__ import annotations

import copy
import math
from typing import Optional, Sequence

import keras
from keras import ops

from segbalance.trainer import losses as L
from segbalance.trainer.class_weights import SCHEMES, compute_class_weights

TERM_PARAMS = {
    "ce": {"label_smoothing", "top_k_percent_pixels"},
    "focal": {"gamma", "alpha"},
    "dice": {"smooth"},
    "generalized_dice": {"smooth"},
    "tversky": {"alpha", "beta", "smooth"},
    "exclusion": {"form", "smooth"},
}
CONFIG_KEYS = {"terms", "class_weights", "missing_labels", "ignore_index", "fn_weights", "fp_weights",
               "low_confidence", "weight_options"}
MISSING_LABELS = (None, "none", "ignore_predicted", "marginal")


def validate_loss_config(config: dict, num_classes: Optional[int] = None) -> dict:
    """Raise ValueError naming the bad key / term / scheme; returns the config."""
    if not isinstance(config, dict):
        raise ValueError(f"loss config must be a mapping, got {type(config).__name__}")
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown loss config key {unknown[0]!r}; known keys: {', '.join(sorted(CONFIG_KEYS))}")
    terms = config.get("terms")
    if not terms or not isinstance(terms, list):
        raise ValueError("loss config needs 'terms': a non-empty list like [{'type': 'ce', 'weight': 1.0}]")
    for i, term in enumerate(terms):
        if not isinstance(term, dict) or "type" not in term:
            raise ValueError(f"terms[{i}] must be a mapping with a 'type'")
        kind = term["type"]
        if kind not in TERM_PARAMS:
            raise ValueError(f"terms[{i}]: unknown loss term type {kind!r}; choose one of {', '.join(TERM_PARAMS)}")
        extra = sorted(set(term) - TERM_PARAMS[kind] - {"type", "weight"})
        if extra:
            raise ValueError(f"terms[{i}] ({kind}): unknown parameter {extra[0]!r}; "
                             f"allowed: weight, {', '.join(sorted(TERM_PARAMS[kind]))}")
        if kind == "ce" and config.get("missing_labels") == "marginal" and set(term) - {"type", "weight"}:
            raise ValueError(f"terms[{i}] (ce): label_smoothing / top_k_percent_pixels are not supported with "
                             f"missing_labels='marginal'")
        if kind == "exclusion" and term.get("form", "ce") not in ("ce", "dice"):
            raise ValueError(f"terms[{i}] (exclusion): form must be 'ce' or 'dice'")
        for key in ("weight", "gamma", "smooth", "label_smoothing", "top_k_percent_pixels") + (
                ("alpha", "beta") if kind == "tversky" else ()):
            if key in term and not _is_number(term[key], minimum=0.0):
                raise ValueError(f"terms[{i}] ({kind}): {key} must be a finite number >= 0, got {term[key]!r}")
    cw = config.get("class_weights")
    if isinstance(cw, str) and cw not in SCHEMES:
        raise ValueError(f"unknown class-weight scheme {cw!r} in loss config; choose one of {', '.join(SCHEMES)}")
    if isinstance(cw, (list, tuple)) and not all(_is_number(w, minimum=0.0) for w in cw):
        raise ValueError(f"class_weights must be finite numbers >= 0, got {cw!r}")
    if cw is not None and not isinstance(cw, (str, list, tuple)):
        raise ValueError(f"class_weights must be null, a scheme name or a list of C floats, got {cw!r}")
    for key in ("fn_weights", "fp_weights"):
        values = config.get(key)
        if values is not None and (not isinstance(values, (list, tuple))
                                   or not all(_is_number(w, minimum=0.0) for w in values)):
            raise ValueError(f"{key} must be a list of C finite numbers >= 0, got {values!r}")
    low = config.get("low_confidence")
    if low is not None and (not isinstance(low, dict) or set(low) != {"tau", "alpha"}
                            or not all(_is_number(v, minimum=0.0) for v in low.values())):
        raise ValueError(f"low_confidence must be {{'tau': t, 'alpha': a}} with numbers >= 0, got {low!r}")
    if "weight_options" in config and not isinstance(config["weight_options"], dict):
        raise ValueError("weight_options must be a mapping of compute_class_weights options")
    if config.get("missing_labels") not in MISSING_LABELS:
        raise ValueError(f"missing_labels must be one of {MISSING_LABELS[1:]} or null, got {config['missing_labels']!r}")
    if num_classes is not None:
        for key in ("fn_weights", "fp_weights"):
            if config.get(key) is not None and len(config[key]) != num_classes:
                raise ValueError(f"{key} has {len(config[key])} values for {num_classes} classes")
        if isinstance(cw, (list, tuple)) and len(cw) != num_classes:
            raise ValueError(f"class_weights has {len(cw)} values for {num_classes} classes")
    return config


def _is_number(value, minimum=None) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return minimum is None or value >= minimum


@keras.saving.register_keras_serializable(package="segbalance")
class SegmentationLoss(keras.losses.Loss):
    """Weighted sum of loss terms from ``config`` (see module docstring)."""

    def __init__(self, config: dict, class_weights: Optional[Sequence[float]] = None,
                 num_classes: Optional[int] = None, pixel_counts: Optional[Sequence[int]] = None,
                 present_image_pixels: Optional[Sequence[int]] = None,
                 name: str = "segmentation_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if num_classes is None and pixel_counts is not None:
            num_classes = len(pixel_counts)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.loss_config = copy.deepcopy(validate_loss_config(config, self.num_classes))
        scheme = self.loss_config.get("class_weights")
        if class_weights is None and isinstance(scheme, (list, tuple)):
            class_weights = scheme
        if class_weights is None and isinstance(scheme, str):
            if pixel_counts is None:
                raise ValueError(f"loss config names the class-weight scheme {scheme!r}: pass class_weights= "
                                 f"(e.g. ClassStats weights['{scheme}']) or pixel_counts=")
            class_weights = compute_class_weights(pixel_counts, scheme, present_image_pixels=present_image_pixels,
                                                  **self.loss_config.get("weight_options", {})).tolist()
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        if self.class_weights is not None and self.num_classes is not None \
                and len(self.class_weights) != self.num_classes:
            raise ValueError(f"class_weights has {len(self.class_weights)} values for {self.num_classes} classes")
        self.ignore_index = int(self.loss_config.get("ignore_index", L.DEFAULT_IGNORE_INDEX))

    def _pixel_options(self):
        cfg = self.loss_config
        low = cfg.get("low_confidence")
        return {"fn_weights": cfg.get("fn_weights"), "fp_weights": cfg.get("fp_weights"),
                "low_confidence": (low["tau"], low["alpha"]) if low else None}

    def call(self, y_true, y_pred):
        if isinstance(y_true, dict):
            unknown = sorted(set(y_true) - {"mask", "labeled", "pixel_weights"})
            if "mask" not in y_true or unknown:
                raise ValueError(f"SegmentationLoss: a dict y_true needs 'mask' and may hold 'labeled' and "
                                 f"'pixel_weights'; got keys {sorted(y_true)}")
            mask, labeled, pixel_weights = y_true["mask"], y_true.get("labeled"), y_true.get("pixel_weights")
        else:
            mask, labeled, pixel_weights = y_true, None, None
        c = y_pred.shape[-1]
        if self.num_classes is not None and c is not None and int(c) != self.num_classes:
            raise ValueError(f"SegmentationLoss was built for {self.num_classes} classes but the logits have "
                             f"{int(c)} channels (shape {tuple(y_pred.shape)})")
        missing = self.loss_config.get("missing_labels")
        cw, ii = self.class_weights, self.ignore_index
        total = ops.zeros((), "float32")
        for term in self.loss_config["terms"]:
            kind, weight = term["type"], float(term.get("weight", 1.0))
            params = {k: v for k, v in term.items() if k not in ("type", "weight")}
            if kind == "ce":
                if missing in ("marginal", "ignore_predicted") and labeled is not None:
                    fn = L.marginal_cross_entropy if missing == "marginal" else L.ignore_predicted_cross_entropy
                    extra = self._pixel_options() if missing == "marginal" else {**self._pixel_options(), **params}
                    value = fn(mask, y_pred, labeled, cw, ii, pixel_weights, **extra)
                else:
                    value = L.weighted_cross_entropy(mask, y_pred, cw, ii, pixel_weights, **params,
                                                     **self._pixel_options())
            elif kind == "focal":
                value = L.focal_loss(mask, y_pred, class_weights=cw, ignore_index=ii, pixel_weights=pixel_weights,
                                     **params, **self._pixel_options())
            elif kind == "dice":
                value = L.dice_loss(mask, y_pred, cw, ii, pixel_weights=pixel_weights, **params)
            elif kind == "generalized_dice":
                value = L.generalized_dice_loss(mask, y_pred, ignore_index=ii, pixel_weights=pixel_weights, **params)
            elif kind == "tversky":
                value = L.tversky_loss(mask, y_pred, class_weights=cw, ignore_index=ii, pixel_weights=pixel_weights,
                                       **params)
            else:  # exclusion
                if labeled is None:
                    continue  # nothing is known to be missing: the term is 0
                value = L.exclusion_loss(mask, y_pred, labeled, ignore_index=ii, pixel_weights=pixel_weights,
                                         **params)
            total = total + weight * value
        return total

    def get_config(self):
        base = super().get_config()
        base.update({"config": copy.deepcopy(self.loss_config), "class_weights": self.class_weights,
                     "num_classes": self.num_classes})
        return base

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("reduction", None)
        config.pop("dtype", None)
        return cls(**config)
