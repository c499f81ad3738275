"""`SegmentationLoss`: a serialisable Keras loss composed of the registered loss terms.

    loss = SegmentationLoss(
        {"terms": [{"type": "ce", "weight": 1.0}, {"type": "dice", "weight": 0.5}],
         "class_weights": "median_frequency", "missing_labels": "marginal"},
        class_weights=stats["weights"]["median_frequency"],   # resolved vector, e.g. from ClassStats
        ignore_index=255)                                     # classes.ignore_index

``config`` is a ``LossConfig`` or its mapping: the terms, their parameters and the
loss-wide settings are described once, in ``trainer/loss_config.py`` (the term registry).
A bad key, term type, parameter or scheme is a ``ConfigError`` (a ``ValueError``) naming it.

Arguments besides ``config``: ``class_weights`` (the vector for a scheme name; or give
``pixel_counts=`` (+ ClassStats' ``present_image_pixels=`` for ``median_frequency``) and
``weight_options=`` (the ``stats`` section's clip, damping, ...; its default clip [0.5, 5.0] unless
given, ``{"clip": None}`` for none) to compute it),
``ignore_index`` (the mask value with no label; default 255), ``num_classes`` (optional,
implied by ``pixel_counts``: checks vector lengths when the loss is built and the logits'
channel count when it is called).

``y_true`` is an integer mask, or a dict ``{"mask": [B,H,W], "labeled": [B,C] multi-hot,
"pixel_weights": [B,H,W]}`` (the extra keys optional). In ``model.fit`` use
``trainer.segmentation_model.SegmentationModel``, whose ``compute_loss`` hands the dict the
dataset yields to this loss.

With ``class_weight_decay_epochs: N`` in the config the weights used are
``(1 - mix) * class_weights + mix`` with ``mix`` a non-trainable variable (0 when built);
``set_class_weight_epoch(epoch)`` sets it to ``min(epoch / N, 1)``
(``trainer.training_callbacks.ClassWeightDecay`` calls it at each epoch's start). A variable,
not a constant: a compiled (XLA) train step reads its current value.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import keras
import numpy as np
from keras import ops

from segbalance.contract import DEFAULT_IGNORE_INDEX
from segbalance.trainer.class_weights import DEFAULT_CLIP, check_weight_options, compute_class_weights
from segbalance.trainer.loss_config import TERMS, LossConfig, TermInputs, loss_config, unread_fields
from segbalance.trainer.typed_config import ConfigError, to_dict


def validate_loss_config(config: Union[dict, LossConfig], num_classes: Optional[int] = None) -> LossConfig:
    """The checked ``LossConfig``; ConfigError (a ValueError) naming the bad key / term / scheme."""
    checked = loss_config(config)
    if num_classes is not None:
        checked.check_num_classes(num_classes)
    return checked


@keras.saving.register_keras_serializable(package="segbalance")
class SegmentationLoss(keras.losses.Loss):
    """Weighted sum of the registered loss terms of ``config`` (see module docstring)."""

    def __init__(self, config: Union[dict, LossConfig], class_weights: Optional[Sequence[float]] = None,
                 num_classes: Optional[int] = None, pixel_counts: Optional[Sequence[int]] = None,
                 present_image_pixels: Optional[Sequence[int]] = None, ignore_index: int = DEFAULT_IGNORE_INDEX,
                 weight_options: Optional[dict] = None, name: str = "segmentation_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if num_classes is None and pixel_counts is not None:
            num_classes = len(pixel_counts)
        if num_classes is not None and (isinstance(num_classes, bool) or not float(num_classes).is_integer()
                                        or int(num_classes) < 1):
            raise ConfigError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if isinstance(ignore_index, bool) or not float(ignore_index).is_integer():
            raise ConfigError(f"ignore_index must be an integer (the mask value with no label), got {ignore_index!r}")
        self.num_classes = None if num_classes is None else int(num_classes)
        self.config = validate_loss_config(config, self.num_classes)
        self.class_weights = self._resolve_class_weights(class_weights, pixel_counts, present_image_pixels,
                                                         weight_options)
        self.ignore_index = int(ignore_index)
        self.class_weight_mix = None
        if self.config.class_weight_decay_epochs is not None:
            if self.class_weights is None:
                raise ConfigError("class_weight_decay_epochs decays class weights toward 1: give class_weights")
            self.class_weight_mix = keras.Variable(0.0, dtype="float32", trainable=False, name="class_weight_mix")

    def _resolve_class_weights(self, class_weights, pixel_counts, present_image_pixels, weight_options):
        """The class-weight vector: ``class_weights=`` for the config's scheme (or its own vector), else
        computed from ``pixel_counts``; ConfigError when it contradicts the config or is not C finite
        numbers >= 0 (the config's own vector is held to the same rule by LossConfig)."""
        scheme = self.config.class_weights
        if class_weights is not None:
            if scheme is None:
                raise ConfigError("class_weights= was given but the loss config has class_weights: null (no class "
                                  "weighting): name the scheme the vector comes from in the config (e.g. "
                                  "class_weights: median_frequency), or leave class_weights= out")
            given = np.asarray(class_weights, dtype=np.float64).ravel()
            if isinstance(scheme, list) and not np.array_equal(given, np.asarray(scheme, dtype=np.float64)):
                raise ConfigError(f"class_weights= {given.tolist()} differs from the loss config's class_weights "
                                  f"{scheme}: give the vector once")
            if not (np.isfinite(given).all() and (given >= 0).all()):
                raise ConfigError(f"class_weights= must be finite numbers >= 0, got {given.tolist()}")
        elif isinstance(scheme, list):
            class_weights = scheme
        elif isinstance(scheme, str):
            if pixel_counts is None:
                raise ConfigError(f"loss config names the class-weight scheme {scheme!r}: pass class_weights= "
                                  f"(e.g. ClassStats weights['{scheme}']) or pixel_counts=")
            # the stats section's default clip, as ClassStats' weights have it (QA 27: unclipped here, so the
            # same "default loss" weighed a rare class 3.4 where the pipeline gives 2.7); given options win
            options = {"clip": DEFAULT_CLIP, **(weight_options or {})}
            check_weight_options(options)
            class_weights = compute_class_weights(pixel_counts, scheme, present_image_pixels=present_image_pixels,
                                                  **options).tolist()
        weights = None if class_weights is None else [float(w) for w in class_weights]
        if weights is not None and self.num_classes is not None and len(weights) != self.num_classes:
            raise ConfigError(f"class_weights has {len(weights)} values for {self.num_classes} classes")
        return weights

    def set_class_weight_epoch(self, epoch: int) -> float:
        """The decay's position at the start of ``epoch`` (0-based): ``min(epoch / N, 1)``, returned."""
        if self.class_weight_mix is None:
            raise ValueError("this SegmentationLoss has no class_weight_decay_epochs")
        mix = min(float(epoch) / self.config.class_weight_decay_epochs, 1.0)
        self.class_weight_mix.assign(mix)
        return mix

    def _class_weights(self):
        if self.class_weight_mix is None:
            return self.class_weights
        mix = ops.convert_to_tensor(self.class_weight_mix, "float32")
        return ops.convert_to_tensor(self.class_weights, "float32") * (1.0 - mix) + mix

    @property
    def loss_config(self) -> dict:
        """The loss config as a plain mapping (every field, defaults filled in)."""
        return to_dict(self.config)

    def _pixel_options(self) -> dict:
        low = self.config.low_confidence
        return {"fn_weights": self.config.fn_weights, "fp_weights": self.config.fp_weights,
                "low_confidence": (low.tau, low.alpha) if low else None}

    def __call__(self, y_true, y_pred, sample_weight=None):
        # call() returns the batch's loss, already reduced over pixels: Keras would scale that scalar by
        # the mean sample weight, so a per-image weight would reweight nothing. Refused, not ignored.
        if sample_weight is not None:
            raise ValueError("SegmentationLoss: per-sample weights (sample_weight=) are not supported; put a "
                             "per-pixel weight map in y_true['pixel_weights'] instead")
        return super().__call__(y_true, y_pred)

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
        inputs = TermInputs(mask=mask, logits=y_pred, labeled=labeled, pixel_weights=pixel_weights,
                            class_weights=self._class_weights(), ignore_index=self.ignore_index,
                            missing_labels=self.config.missing_labels, pixel_options=self._pixel_options())
        total = ops.zeros((), "float32")
        for term in self.config.terms:
            value = term.compute(inputs)
            if value is not None:
                total = total + float(term.weight) * value
        return total

    def get_config(self):
        base = super().get_config()
        base.update({"config": self.loss_config, "class_weights": self.class_weights,
                     "num_classes": self.num_classes, "ignore_index": self.ignore_index})
        if self.class_weight_mix is not None:  # where the decay stood: a reloaded model computes the same loss
            base["class_weight_mix"] = float(ops.convert_to_numpy(self.class_weight_mix))
        return base

    @classmethod
    def from_config(cls, config: Any):
        config = dict(config)
        config.pop("dtype", None)
        mix = config.pop("class_weight_mix", None)
        loss = dict(config["config"])
        # models saved before the ignore index moved out of the loss config kept it there
        if "ignore_index" in loss:
            config.setdefault("ignore_index", loss.pop("ignore_index"))
        loss.pop("weight_options", None)  # ditto: weights were resolved when the model was built
        # models saved when a class_weights= vector beside class_weights: null was used (refused now):
        # the config names that vector, which loads the loss that was computed
        # ... and beside a different vector in the config (the class_weights= vector was the one used)
        if config.get("class_weights") is not None and (loss.get("class_weights") is None or (
                isinstance(loss.get("class_weights"), list) and loss["class_weights"] != config["class_weights"])):
            loss["class_weights"] = list(config["class_weights"])
        # models saved before a loss-wide field needed a term that reads it: there it changed nothing, so
        # dropping it loads the loss that was computed
        for name in unread_fields(loss, [TERMS.get(t.get("type")) for t in loss.get("terms", [])]):
            loss[name] = None
            if name == "class_weights":
                config["class_weights"], loss["class_weight_decay_epochs"] = None, None
        # ... and a term's parameter that the term, so configured, does not read (Term.unread_params)
        loss["terms"] = [{k: v for k, v in t.items() if k not in TERMS[t["type"]].unread_params(t)}
                         if t.get("type") in TERMS else t for t in loss.get("terms", [])]
        config["config"] = loss
        restored = cls(**config)
        if mix is not None and restored.class_weight_mix is not None:
            restored.class_weight_mix.assign(float(mix))
        return restored


__all__ = ["SegmentationLoss", "validate_loss_config", "TERMS"]
