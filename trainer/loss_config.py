"""The loss configuration, typed: the registry of loss terms and ``LossConfig``.

Each loss term is ONE registered dataclass below: its ``TYPE`` (the ``type`` in a config),
its parameters with their defaults and checks, and ``compute``, which calls the function
of ``trainer/losses.py``. Adding a term means adding one class here; ``SegmentationLoss``
(``trainer/segmentation_loss.py``) composes whatever the registry holds, and the
configuration (``training.loss.terms``) accepts it by its ``TYPE``.

=================== ============================================= ===============================
type                parameters (defaults)                         function (trainer/losses.py)
=================== ============================================= ===============================
``ce``              label_smoothing (0), top_k_percent_pixels (1) ``weighted_cross_entropy``;
                                                                  with ``missing_labels``:
                                                                  ``marginal_cross_entropy`` /
                                                                  ``ignore_predicted_cross_entropy``
``focal``           gamma (2), alpha (null, a number or C numbers) ``focal_loss``
``dice``            smooth (1)                                    ``dice_loss``
``generalized_dice`` smooth (1e-6)                                ``generalized_dice_loss``
``tversky``         alpha = FP weight (0.5), beta = FN weight     ``tversky_loss``
                    (0.5), smooth (1)
``exclusion``       form ("ce" or "dice"), smooth (1; form dice   ``exclusion_loss`` (0 without
                    only)                                         the images' ``labeled`` sets)
=================== ============================================= ===============================

Every term also has ``weight`` (1): the loss is ``sum(weight * term)``.

``LossConfig`` fields: ``terms`` (required), ``class_weights`` (null, C numbers, or a scheme
of ``trainer/class_weights.py``: the pipeline takes that vector from the ClassStats
artifact), ``missing_labels`` (null, ``ignore_predicted`` or ``marginal``: which CE the
``ce`` term uses when the image's labelled set is known), ``fn_weights`` / ``fp_weights``
(C numbers), ``low_confidence`` (``{tau, alpha}``; these three weigh the pixels of the
``ce`` and ``focal`` terms); see ``trainer/losses.py`` for their meaning. Each term lists the
loss-wide fields its ``compute`` reads in ``USES``; a field that is set but that no term of
the loss reads is refused (it would change nothing), e.g. ``missing_labels`` without a
``ce`` term or ``class_weights`` with ``generalized_dice`` alone.
``class_weight_decay_epochs`` (null, or N >= 1; needs ``class_weights``): the
class weights move linearly from their vector ``w`` to 1 for every class over the first N
epochs, ``(1 - e/N) * w + e/N`` in epoch ``e`` (0-based), and stay at 1 from epoch N on
(rare classes are learnt early with the weights; the model then converges on the
unweighted loss). The ignore index is not a loss setting: it is ``classes.ignore_index``, handed to
``SegmentationLoss(ignore_index=...)``; class-weight options (clip, damping, ...) are the
``stats`` section's (``pipeline/config.py``).

No TensorFlow / Keras at import: ``compute`` imports ``trainer/losses.py`` when called.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Dict, List, Literal, Optional, Tuple, Union

from segbalance.trainer.class_weights import SCHEMES
from segbalance.trainer.typed_config import ConfigError, from_dict, is_number, require, to_dict

TERMS: Dict[str, type] = {}


def register(cls):
    """Add a term class (a dataclass with ``TYPE``) to the registry."""
    if cls.TYPE in TERMS:
        raise ValueError(f"loss term {cls.TYPE!r} is registered twice")
    TERMS[cls.TYPE] = cls
    return cls


@dataclass
class TermInputs:
    """What every term may use (tensors, and the loss-wide settings)."""

    mask: Any
    logits: Any
    labeled: Any  # [B,C] multi-hot or None
    pixel_weights: Any  # [B,H,W] or None
    class_weights: Optional[List[float]]
    ignore_index: int
    missing_labels: Optional[str]
    pixel_options: Dict[str, Any]  # fn_weights, fp_weights, low_confidence of the CE family


@dataclass
class Term:
    TYPE: ClassVar[str] = ""
    # the loss-wide LossConfig fields this term's compute reads; a field no term reads is refused
    USES: ClassVar[Tuple[str, ...]] = ()
    weight: float = 1.0

    def non_negative(self) -> tuple:
        """Parameters that must be finite numbers >= 0 (``weight`` always is)."""
        return ()

    @classmethod
    def unread_params(cls, values: Dict[str, Any]) -> Dict[str, str]:
        """{parameter: why and what to do} for the parameters set in ``values`` (a term's mapping)
        that this term, so configured, does not read: ``validate`` refuses them,
        ``SegmentationLoss.from_config`` drops them from models saved before the rule (where they
        changed nothing)."""
        return {}

    def validate(self, where: str) -> None:
        for name in ("weight",) + self.non_negative():
            value = getattr(self, name)
            require(is_number(value, 0.0), f"{where}.{name}", f"must be a finite number >= 0, got {value!r}")
        for name, message in self.unread_params(to_dict(self)).items():
            raise ConfigError(f"{where}.{name}: {message}")

    def compute(self, x: TermInputs):  # pragma: no cover - every term overrides it
        raise NotImplementedError


@register
@dataclass
class CE(Term):
    TYPE: ClassVar[str] = "ce"
    USES: ClassVar[Tuple[str, ...]] = ("class_weights", "missing_labels", "fn_weights", "fp_weights", "low_confidence")
    label_smoothing: float = 0.0
    top_k_percent_pixels: float = 1.0

    def validate(self, where: str) -> None:
        super().validate(where)
        require(is_number(self.label_smoothing, 0.0) and self.label_smoothing < 1.0, f"{where}.label_smoothing",
                f"must be in [0, 1), got {self.label_smoothing!r}")
        require(is_number(self.top_k_percent_pixels, 0.0) and 0.0 < self.top_k_percent_pixels <= 1.0,
                f"{where}.top_k_percent_pixels", f"must be in (0, 1], got {self.top_k_percent_pixels!r}")

    def is_plain(self) -> bool:
        return self.label_smoothing == 0.0 and self.top_k_percent_pixels == 1.0

    def compute(self, x: TermInputs):
        from segbalance.trainer import losses as L

        options = {"label_smoothing": self.label_smoothing, "top_k_percent_pixels": self.top_k_percent_pixels}
        if x.labeled is not None and x.missing_labels == "marginal":
            return L.marginal_cross_entropy(x.mask, x.logits, x.labeled, x.class_weights, x.ignore_index,
                                            x.pixel_weights, **x.pixel_options)
        if x.labeled is not None and x.missing_labels == "ignore_predicted":
            return L.ignore_predicted_cross_entropy(x.mask, x.logits, x.labeled, x.class_weights, x.ignore_index,
                                                    x.pixel_weights, **x.pixel_options, **options)
        return L.weighted_cross_entropy(x.mask, x.logits, x.class_weights, x.ignore_index, x.pixel_weights,
                                        **options, **x.pixel_options)


@register
@dataclass
class Focal(Term):
    TYPE: ClassVar[str] = "focal"
    USES: ClassVar[Tuple[str, ...]] = ("class_weights", "fn_weights", "fp_weights", "low_confidence")
    gamma: float = 2.0
    alpha: Union[None, float, List[float]] = None  # scalar or one per class

    def non_negative(self) -> tuple:
        return ("gamma",)

    def validate(self, where: str) -> None:
        super().validate(where)
        values = self.alpha if isinstance(self.alpha, list) else [] if self.alpha is None else [self.alpha]
        require(all(is_number(a, 0.0) for a in values), f"{where}.alpha",
                f"must be null, a number >= 0 or C numbers >= 0, got {self.alpha!r}")

    def compute(self, x: TermInputs):
        from segbalance.trainer import losses as L

        return L.focal_loss(x.mask, x.logits, gamma=self.gamma, alpha=self.alpha, class_weights=x.class_weights,
                            ignore_index=x.ignore_index, pixel_weights=x.pixel_weights, **x.pixel_options)


@register
@dataclass
class Dice(Term):
    TYPE: ClassVar[str] = "dice"
    USES: ClassVar[Tuple[str, ...]] = ("class_weights",)
    smooth: float = 1.0
    # marginal Dice: with the images' labelled sets, each image's unlabelled classes count as background
    # (losses.dice_loss); without them (no `labeled` in the data) the plain form
    marginal: bool = False

    def non_negative(self) -> tuple:
        return ("smooth",)

    def compute(self, x: TermInputs):
        from segbalance.trainer import losses as L

        return L.dice_loss(x.mask, x.logits, class_weights=x.class_weights, ignore_index=x.ignore_index,
                           smooth=self.smooth, pixel_weights=x.pixel_weights,
                           labeled=x.labeled if self.marginal else None)


@register
@dataclass
class GeneralizedDice(Term):
    TYPE: ClassVar[str] = "generalized_dice"
    smooth: float = 1e-6

    def non_negative(self) -> tuple:
        return ("smooth",)

    def compute(self, x: TermInputs):
        from segbalance.trainer import losses as L

        return L.generalized_dice_loss(x.mask, x.logits, ignore_index=x.ignore_index, smooth=self.smooth,
                                       pixel_weights=x.pixel_weights)


@register
@dataclass
class Tversky(Term):
    TYPE: ClassVar[str] = "tversky"
    USES: ClassVar[Tuple[str, ...]] = ("class_weights",)
    alpha: float = 0.5  # weight of the false positives
    beta: float = 0.5  # weight of the false negatives
    smooth: float = 1.0

    def non_negative(self) -> tuple:
        return ("alpha", "beta", "smooth")

    def compute(self, x: TermInputs):
        from segbalance.trainer import losses as L

        return L.tversky_loss(x.mask, x.logits, alpha=self.alpha, beta=self.beta, class_weights=x.class_weights,
                              ignore_index=x.ignore_index, smooth=self.smooth, pixel_weights=x.pixel_weights)


@register
@dataclass
class Exclusion(Term):
    TYPE: ClassVar[str] = "exclusion"
    form: Literal["ce", "dice"] = "ce"
    smooth: float = 1.0

    def non_negative(self) -> tuple:
        return ("smooth",)

    @classmethod
    def unread_params(cls, values: Dict[str, Any]) -> Dict[str, str]:
        # only the Dice form has a denominator to smooth: with ce a changed smooth would change nothing
        form = values.get("form", cls.form)
        if form == "ce" and values.get("smooth", cls.smooth) != cls.smooth:
            return {"smooth": f"only form: dice reads it (got form: {form}): remove smooth, or set form: dice"}
        return {}

    def compute(self, x: TermInputs):
        from segbalance.trainer import losses as L

        if x.labeled is None:
            return None  # nothing is known to be missing: the term is 0
        return L.exclusion_loss(x.mask, x.logits, x.labeled, form=self.form, ignore_index=x.ignore_index,
                                pixel_weights=x.pixel_weights, smooth=self.smooth)


# A registered term; the config's ``terms`` entries are picked from TERMS by their ``type``.
LossTerm = Annotated[Term, TERMS]


@dataclass
class LowConfidence:
    tau: float = 0.5  # pixels whose top probability is below tau ...
    alpha: float = 0.5  # ... weigh alpha

    def validate(self, where: str) -> None:
        # a top probability is at most 1: tau > 1 would down-weight every pixel, tau 0 none
        require(is_number(self.tau) and 0.0 < self.tau <= 1.0, f"{where}.tau",
                f"{self.tau!r}: give the top-probability threshold, in (0, 1]")
        require(is_number(self.alpha, 0.0), f"{where}.alpha", "must be a finite number >= 0")


# The loss-wide fields a term reads (``Term.USES``); class_weight_decay_epochs needs class_weights.
LOSS_WIDE = ("class_weights", "missing_labels", "fn_weights", "fp_weights", "low_confidence")


def unread_fields(values: Dict[str, Any], term_types: List[Optional[type]]) -> List[str]:
    """Of the loss-wide fields set (not None) in ``values``, those no term type reads (``Term.USES``);
    for a checked ``LossConfig`` and for a raw saved config alike (unknown types read nothing)."""
    uses = {name for cls in term_types for name in getattr(cls, "USES", ())}
    return [name for name in LOSS_WIDE if values.get(name) is not None and name not in uses]


@dataclass
class LossConfig:
    """A ``SegmentationLoss``: weighted terms plus loss-wide settings (module docstring)."""

    MOVED: ClassVar[Dict[str, str]] = {
        "ignore_index": "the ignore index is set once, classes.ignore_index (SegmentationLoss(ignore_index=...))",
        "weight_options": "class-weight options (clip, damping, zero_count_weight, beta, enet_k) are the stats "
                          "section's (stats.clip, ...)",
    }

    terms: List[LossTerm]
    class_weights: Union[None, str, List[float]] = None
    missing_labels: Optional[Literal["ignore_predicted", "marginal"]] = None
    fn_weights: Optional[List[float]] = None
    fp_weights: Optional[List[float]] = None
    low_confidence: Optional[LowConfidence] = None
    class_weight_decay_epochs: Optional[int] = None

    def validate(self, where: str) -> None:
        require(len(self.terms) > 0, f"{where}.terms", "list at least one term, e.g. [{type: ce, weight: 1}]")
        weights = [term.weight for term in self.terms]
        require(not all(is_number(w, 0.0) for w in weights) or any(w > 0 for w in weights), f"{where}.terms",
                "every term has weight 0, so the loss is 0 and nothing is learnt: give a term a weight > 0")
        for name in self.unread_fields():  # it would change nothing, silently
            readers = ", ".join(t.TYPE for t in TERMS.values() if name in t.USES)
            hint = " (a dice term takes marginal: true)" if name == "missing_labels" else ""
            raise ConfigError(f"{where}.{name}: no term of this loss uses it (only {readers} terms do): add one to "
                              f"the terms, or remove {name}{hint}")
        for i, term in enumerate(self.terms):
            if isinstance(term, CE) and self.missing_labels == "marginal" and not term.is_plain():
                raise ConfigError(f"{where}.terms[{i}]: label_smoothing / top_k_percent_pixels are not supported "
                                  f"with missing_labels: marginal")
        cw = self.class_weights
        if isinstance(cw, str):
            require(cw in SCHEMES, f"{where}.class_weights",
                    f"unknown class-weight scheme {cw!r}; choose one of {', '.join(SCHEMES)}")
        elif cw is not None:
            require(all(is_number(w, 0.0) for w in cw), f"{where}.class_weights",
                    f"must be finite numbers >= 0, got {cw!r}")
        decay = self.class_weight_decay_epochs
        if decay is not None:
            require(isinstance(decay, int) and not isinstance(decay, bool) and decay >= 1,
                    f"{where}.class_weight_decay_epochs", f"must be an integer >= 1 or null, got {decay!r}")
            require(cw is not None, f"{where}.class_weight_decay_epochs",
                    "decays class weights toward 1: set class_weights too (a scheme or C numbers)")
            require(cw != "uniform", f"{where}.class_weight_decay_epochs",
                    "class_weights: uniform is 1 for every class already, so there is nothing to decay: remove "
                    "class_weight_decay_epochs, or choose another scheme")
        for name in ("fn_weights", "fp_weights"):
            values = getattr(self, name)
            require(values is None or all(is_number(w, 0.0) for w in values), f"{where}.{name}",
                    f"must be C finite numbers >= 0, got {values!r}")

    def label_set_options(self) -> List[str]:
        """The options of this loss that read the images' labelled sets (all plain forms without them)."""
        options = [f"missing_labels: {self.missing_labels}"] if self.missing_labels else []
        options += [f"terms[{i}] ({t.TYPE}, marginal)" for i, t in enumerate(self.terms)
                    if getattr(t, "marginal", False)]
        return options + [f"terms[{i}] (exclusion)" for i, t in enumerate(self.terms) if isinstance(t, Exclusion)]

    def unread_fields(self) -> List[str]:
        """The loss-wide fields that are set but that no term of ``terms`` reads (``Term.USES``)."""
        return unread_fields({name: getattr(self, name) for name in LOSS_WIDE}, [type(t) for t in self.terms])

    def check_num_classes(self, num_classes: int, where: str = "loss") -> None:
        """ConfigError when a per-class vector does not have ``num_classes`` values."""
        vectors = {"fn_weights": self.fn_weights, "fp_weights": self.fp_weights,
                   "class_weights": self.class_weights if isinstance(self.class_weights, list) else None}
        vectors.update({f"terms[{i}].alpha": t.alpha for i, t in enumerate(self.terms)
                        if isinstance(t, Focal) and isinstance(t.alpha, list)})
        for name, values in vectors.items():
            if values is not None and len(values) != num_classes:
                raise ConfigError(f"{where}.{name}: has {len(values)} values for {num_classes} classes")

    def to_dict(self) -> dict:
        return to_dict(self)


def loss_config(value: Any, where: str = "loss") -> LossConfig:
    """A ``LossConfig`` from a mapping (checked) or an existing ``LossConfig`` (checked again)."""
    if isinstance(value, LossConfig):
        value = to_dict(value)
    return from_dict(LossConfig, value, where)


def default_training_loss() -> LossConfig:
    """Marginal CE + marginal Dice with median-frequency class weights (clipped by ``stats.clip``) that
    decay to 1 over 20 epochs: first by mean rank at convergence over 4 data sets x 2 drop rates x 3
    seeds and at 10 / 20 epochs (docs/results/validation_rule, README "Results")."""
    return LossConfig(terms=[CE(), Dice(marginal=True)], class_weights="median_frequency",
                      class_weight_decay_epochs=20, missing_labels="marginal")


__all__ = ["TERMS", "register", "LossTerm", "LossConfig", "LowConfidence", "loss_config", "TermInputs", "unread_fields",
           "default_training_loss"] + [c.__name__ for c in TERMS.values()]
