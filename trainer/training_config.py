"""The trainer's part of the configuration, typed: ``classes``, ``training`` and what SegTrainer gets.

The pipeline (``pipeline/config.py``) composes these sections with the others into the one
``PipelineConfig``; the DAG hands Transform and SegTrainer ``TrainerConfig(classes,
training)`` serialised as their ``custom_config`` (``{"classes": {...}, "training":
{...}}``), and ``preprocessing_fn`` / ``run_fn`` rebuild the same typed object with
``TrainerConfig.from_custom_config``. Every default is here; the README links to this
module instead of repeating the table.

``classes``
  ``names``: C class names, background first (any text, unique ignoring case; metric
  names are made safe from them, ``trainer/metrics.py``). ``ignore_index`` (255): the mask
  value that means "no label", the ONE setting used by ingest, class statistics, the
  input pipeline, the loss and the metrics; it must not be a class id (>= C).

``training``
  ============================ ==========================================================
  ``image_size`` [64, 64]      [H, W] the model sees (Transform resizes), each 8..8192 and
                               divisible by ``2**depth`` (U-Net) or ``2**(depth+1)``
                               (with a ``backbone``), the factor the encoder halves by
  ``epochs`` 24                passes over the training split (or ``steps_per_epoch``);
                               24 with the cosine schedule keeps ``make run`` within 5
                               minutes on the slower 2-core machine (README "The
                               pipeline": measured against 20 and 40 epochs, constant)
  ``batch_size`` 16            global batch over all replicas
  ``steps_per_epoch`` null     cap on the steps of an epoch (the training set repeats)
  ``shuffle_buffer`` 512       records in the shuffle buffer
  ``optimizer`` adam           ``adam``, ``adamw`` or ``sgd``
  ``learning_rate`` 3e-3       the peak learning rate (after any warm-up)
  ``lr_schedule``              ``type``: ``constant``, ``cosine`` (default; to
                               ``final_fraction`` x the peak, 0) or ``polynomial``
                               (``power`` 1 = linear, to ``final_fraction``), each after a
                               linear warm-up from 0 over ``warmup_epochs`` (1; 0:
                               none; README "The pipeline": 5 seeds of ``make run``'s
                               job); the decay spans the remaining steps of ``epochs``
                               (``trainer/optimization.py``); or ``plateau``: the rate
                               is multiplied by ``factor`` (0.5) when validation mIoU
                               has not improved for ``patience`` (3) epochs, down to
                               ``final_fraction`` x the peak (Keras'
                               ``ReduceLROnPlateau``; no warm-up: it does not read
                               ``warmup_epochs``; the rate reached is
                               kept by a resumed training, the epochs counted toward
                               the next cut start again); a field the type does not
                               read, set away from its default, is refused
  ``momentum`` 0.9             SGD momentum (``sgd`` only)
  ``nesterov`` false           Nesterov momentum (``sgd`` only)
  ``weight_decay`` null        decoupled weight decay; null: Keras' default (``adamw``
                               0.004, none for ``adam`` / ``sgd``)
  ``restore_best`` true        export the epoch with the best validation mIoU (its
                               weights restored before export); false: the last epoch.
                               Without an eval split: the last epoch
  ``early_stopping_patience``  stop after this many epochs without a better validation
  null                         mIoU (null: run all ``epochs``); resumes keep the count
  ``min_epochs`` 0             neither early stopping nor a ``plateau`` rate cut before
                               this many epochs; their patience counts from there (a
                               model still predicting background only, flat on its curve,
                               is not stopped before it could start to learn); > 0 needs
                               early stopping or the plateau schedule
  ``augmentation``             training batches only (``trainer/data.py``), each part off
                               by its neutral value: ``scale`` [1.0, 1.4] (zoom range:
                               > 1 crops, < 1 shrinks and pads: image 0, mask
                               ``ignore_index``), ``flip_horizontal`` true,
                               ``flip_vertical`` true, ``rotate90`` false (square images),
                               ``brightness`` 0 (shift of up to this many image standard
                               deviations), ``contrast`` 0 (factor 1 +- this around the
                               image mean); masks move with nearest-neighbour sampling
  ``depth`` 3                  U-Net levels (encoder levels with a backbone)
  ``base_filters`` 16          channels at full resolution, doubling per level
  ``backbone`` null            a ``keras.applications`` class name (e.g. MobileNetV2) as
                               the encoder; its own ``preprocess_input`` runs in the model
                               (Transform then passes 0..255 pixels)
  ``backbone_weights`` null    null: random initialisation; ``imagenet``: keras.applications'
                               weights from the Keras cache (``~/.keras/models``), downloaded
                               there when the host is reachable, else the run stops before
                               training naming the file to place there; or the path of a
                               weights file of that backbone (``model.save_weights``)
  ``freeze_encoder_epochs`` 0  keep the encoder (backbone) frozen, BatchNorm statistics
                               included, for the first N epochs
  ``loss``                     ``trainer/loss_config.py``; default marginal CE + marginal Dice with
                               median-frequency weights (``stats.clip``) decaying to 1
                               over 20 epochs (README "Results")
  ``pixel_weights`` null       a weight map for the loss, ``type`` one of (parameters,
                               defaults; ``trainer/weight_maps.py`` has the formulas):
                               ``edge`` (image_weight 1, boundary_weight 1),
                               ``unet_border`` (w0 10, sigma 5, connectivity 1),
                               ``intensity_range`` (ranges: [[lo, hi, w], ...] required,
                               default 1, channel null = mean; intensities of the
                               *transformed* image, i.e. per-channel standardised;
                               0..255 with a ``backbone``),
                               ``feature_extractor`` (model: path of a ``.keras`` model,
                               required; layer null = its output, strength 1, reduce l2)
  ``devices`` null             devices for MirroredStrategy, e.g. ["/gpu:0", "/gpu:1"];
                               null: all GPUs when more than one, else one device
  ``mixed_precision`` false    ``mixed_float16`` (logits and loss stay float32)
  ``jit_compile`` false        XLA-compile the train step
  ``seed`` 0                   weights, shuffling and augmentation
  ``warm_start`` false         start from the latest blessed model (same architecture)
  ``backup_dir`` null          folder the BackupAndRestore backup (``backup-<key of config and
                               data>``, deleted after export) is kept in; null: beside the ModelRun
  ============================ ==========================================================

No TensorFlow / Keras / TFX imports: ``segbalance config validate`` stays fast.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Literal, Optional, Tuple, Union

from segbalance.contract import DEFAULT_IGNORE_INDEX, ignore_index_problem, same_class_names
from segbalance.trainer.loss_config import LossConfig, default_training_loss
from segbalance.trainer.remote_files import is_remote
from segbalance.trainer.typed_config import ConfigError, from_dict, is_number, require, to_dict

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 8192  # each side of training.image_size, in pixels

OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass
class ClassesConfig:
    names: List[str] = field(default_factory=lambda: ["background", "ellipse", "rectangle", "circle"])
    ignore_index: int = DEFAULT_IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def validate(self, where: str) -> None:
        names = self.names
        require(len(names) >= 2, f"{where}.names", "list at least 2 classes (background first)")
        for i, name in enumerate(names):
            require(bool(name.strip()), f"{where}.names[{i}]", "a class name must not be empty")
        same = same_class_names(names)
        if same:
            raise ConfigError(f"{where}.names: {same[0][0]!r} and {same[0][1]!r} name the same class (names must be "
                              f"unique, ignoring case)")
        problem = ignore_index_problem(self.num_classes, self.ignore_index)
        require(problem is None, f"{where}.ignore_index", problem)


# --------------------------------------------------------------------------- pixel weight maps
@dataclass
class EdgeWeights:
    TYPE: ClassVar[str] = "edge"
    image_weight: float = 1.0
    boundary_weight: float = 1.0

    def validate(self, where: str) -> None:
        for name in ("image_weight", "boundary_weight"):
            require(is_number(getattr(self, name), 0.0), f"{where}.{name}", "must be a finite number >= 0")


@dataclass
class UnetBorderWeights:
    TYPE: ClassVar[str] = "unet_border"
    w0: float = 10.0
    sigma: float = 5.0
    connectivity: Literal[1, 2] = 1  # 4- or 8-connected objects

    def validate(self, where: str) -> None:
        require(is_number(self.w0, 0.0), f"{where}.w0", "must be a finite number >= 0")
        require(is_number(self.sigma) and self.sigma > 0, f"{where}.sigma", "must be a finite number > 0")


@dataclass
class IntensityRangeWeights:
    TYPE: ClassVar[str] = "intensity_range"
    ranges: List[Tuple[float, float, float]]  # (lo, hi, weight) of the transformed image's intensity
    default: float = 1.0
    channel: Optional[int] = None  # None: mean over the channels

    def validate(self, where: str) -> None:
        require(len(self.ranges) > 0, f"{where}.ranges", "give at least one [lo, hi, weight]")
        for i, (lo, hi, w) in enumerate(self.ranges):
            require(lo < hi, f"{where}.ranges[{i}]", f"lo={lo} must be < hi={hi}")
            require(is_number(w, 0.0), f"{where}.ranges[{i}]", f"weight {w} must be a finite number >= 0")
        require(is_number(self.default, 0.0), f"{where}.default", "must be a finite number >= 0")
        require(self.channel is None or 0 <= self.channel < 3, f"{where}.channel", "use 0, 1, 2 or null (mean)")


@dataclass
class FeatureExtractorWeights:
    TYPE: ClassVar[str] = "feature_extractor"
    model: str  # path (or URI) of a saved Keras model (.keras) taking the transformed image
    layer: Optional[str] = None  # use this layer's output instead of the model's
    strength: float = 1.0
    reduce: Literal["l2", "mean_abs"] = "l2"

    def validate(self, where: str) -> None:
        require(self.model.endswith(".keras"), f"{where}.model",
                f"{self.model!r}: give the path of a saved Keras model file (.keras)")
        require(is_number(self.strength, 0.0), f"{where}.strength", "must be a finite number >= 0")


PixelWeights = Union[EdgeWeights, UnetBorderWeights, IntensityRangeWeights, FeatureExtractorWeights]
PIXEL_WEIGHT_TYPES = {c.TYPE: c for c in (EdgeWeights, UnetBorderWeights, IntensityRangeWeights,
                                           FeatureExtractorWeights)}


# --------------------------------------------------------------------------- recipe
@dataclass
class LearningRateSchedule:
    """``training.lr_schedule`` (module docstring); values: ``trainer/optimization.py``."""

    type: Literal["constant", "cosine", "polynomial", "plateau"] = "cosine"
    warmup_epochs: float = 1.0  # (plateau reads none: its default is ignored there, as other types' fields)
    final_fraction: float = 0.0
    power: float = 1.0
    factor: float = 0.5
    patience: int = 3

    # the fields each type reads (trainer/optimization.py); another type's field, set away from its
    # default, would be ignored: refused
    READS: ClassVar[Dict[str, Tuple[str, ...]]] = {
        "constant": ("warmup_epochs",), "cosine": ("warmup_epochs", "final_fraction"),
        "polynomial": ("warmup_epochs", "final_fraction", "power"),
        "plateau": ("final_fraction", "factor", "patience")}

    def validate(self, where: str) -> None:
        for name in ("final_fraction", "power", "factor", "patience"):
            if name not in self.READS.get(self.type, ()) and getattr(self, name) != getattr(type(self), name):
                users = " / ".join(t for t, reads in self.READS.items() if name in reads)
                raise ConfigError(f"{where}.{name}: {getattr(self, name)} is read by the {users} schedule only; "
                                  f"type {self.type} would ignore it: remove it or change type")
        require(is_number(self.warmup_epochs, 0.0), f"{where}.warmup_epochs", "must be a number >= 0")
        default_warmup = type(self).warmup_epochs
        require(self.type != "plateau" or self.warmup_epochs in (0, default_warmup), f"{where}.warmup_epochs",
                f"{self.warmup_epochs}: plateau has no warm-up: remove warmup_epochs (or use cosine / polynomial / "
                f"constant with warm-up)")
        require(is_number(self.factor) and 0 < self.factor < 1, f"{where}.factor", "must be between 0 and 1")
        require(isinstance(self.patience, int) and not isinstance(self.patience, bool) and self.patience >= 1,
                f"{where}.patience", "must be an integer >= 1 (epochs without a better val mIoU)")
        require(is_number(self.final_fraction, 0.0) and self.final_fraction <= 1.0, f"{where}.final_fraction",
                "must be between 0 and 1 (a fraction of learning_rate)")
        require(is_number(self.power) and self.power > 0, f"{where}.power", "must be a finite number > 0")


@dataclass
class Augmentation:
    """``training.augmentation`` (module docstring); ``trainer/data.py`` applies it."""

    scale: Tuple[float, float] = (1.0, 1.4)
    flip_horizontal: bool = True
    flip_vertical: bool = True
    rotate90: bool = False
    brightness: float = 0.0
    contrast: float = 0.0

    def validate(self, where: str) -> None:
        lo, hi = self.scale
        require(is_number(lo) and is_number(hi) and 0 < lo <= hi <= 4, f"{where}.scale",
                f"{list(self.scale)}: give [min, max] zoom with 0 < min <= max <= 4 ([1, 1] = off)")
        require(is_number(self.brightness, 0.0), f"{where}.brightness", "must be a number >= 0 (0 = off)")
        require(is_number(self.contrast, 0.0) and self.contrast < 1, f"{where}.contrast",
                "must be >= 0 and < 1 (0 = off)")


# --------------------------------------------------------------------------- training
# keras.applications' model classes in the pinned Keras (3.6), so a config check needs no Keras import;
# tests/test_config.py compares it with dir(keras.applications)
KERAS_APPLICATIONS = (
    "ConvNeXtBase", "ConvNeXtLarge", "ConvNeXtSmall", "ConvNeXtTiny", "ConvNeXtXLarge", "DenseNet121", "DenseNet169",
    "DenseNet201", "EfficientNetB0", "EfficientNetB1", "EfficientNetB2", "EfficientNetB3", "EfficientNetB4",
    "EfficientNetB5", "EfficientNetB6", "EfficientNetB7", "EfficientNetV2B0", "EfficientNetV2B1", "EfficientNetV2B2",
    "EfficientNetV2B3", "EfficientNetV2L", "EfficientNetV2M", "EfficientNetV2S", "InceptionResNetV2", "InceptionV3",
    "MobileNet", "MobileNetV2", "MobileNetV3Large", "MobileNetV3Small", "NASNetLarge", "NASNetMobile", "ResNet101",
    "ResNet101V2", "ResNet152", "ResNet152V2", "ResNet50", "ResNet50V2", "VGG16", "VGG19", "Xception")
SEED_RANGE = (0, 2 ** 32 - 1)  # keras.utils.set_random_seed's


def size_factor(depth: int, backbone: Optional[str]) -> int:
    """What image height and width must be divisible by (``trainer/model.py``)."""
    return 2 ** (depth + 1) if backbone else 2 ** depth


INT32_MAX = 2 ** 31 - 1  # the largest epoch count, batch size, ... a training takes


@dataclass
class TrainingConfig:
    image_size: List[int] = field(default_factory=lambda: [64, 64])
    epochs: int = 24
    batch_size: int = 16
    steps_per_epoch: Optional[int] = None
    shuffle_buffer: int = 512
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: float = 3e-3
    lr_schedule: LearningRateSchedule = field(default_factory=LearningRateSchedule)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: Optional[float] = None
    restore_best: bool = True
    early_stopping_patience: Optional[int] = None
    min_epochs: int = 0
    augmentation: Augmentation = field(default_factory=Augmentation)
    depth: int = 3
    base_filters: int = 16
    backbone: Optional[str] = None
    backbone_weights: Optional[str] = None
    freeze_encoder_epochs: int = 0
    loss: LossConfig = field(default_factory=default_training_loss)
    pixel_weights: Optional[PixelWeights] = None
    devices: Optional[List[str]] = None
    mixed_precision: bool = False
    jit_compile: bool = False
    seed: int = 0
    warm_start: bool = False
    backup_dir: Optional[str] = None

    def validate(self, where: str) -> None:
        for name in ("epochs", "batch_size", "depth", "base_filters", "shuffle_buffer"):
            require(getattr(self, name) >= 1, f"{where}.{name}", "must be >= 1")
            # (TensorFlow takes them as 32/64-bit integers: a larger value stopped SegTrainer, not the config check)
            require(getattr(self, name) <= INT32_MAX, f"{where}.{name}", f"must be <= {INT32_MAX}")
        require(self.steps_per_epoch is None or 1 <= self.steps_per_epoch <= INT32_MAX, f"{where}.steps_per_epoch",
                f"must be between 1 and {INT32_MAX} (or null: the whole training split)")
        require(is_number(self.learning_rate) and self.learning_rate > 0, f"{where}.learning_rate",
                "must be a finite number > 0")
        require(is_number(self.momentum, 0.0) and self.momentum < 1, f"{where}.momentum", "must be >= 0 and < 1")
        require(not self.nesterov or self.optimizer == "sgd", f"{where}.nesterov",
                f"Nesterov momentum is sgd's; {self.optimizer} would ignore it: set optimizer: sgd or nesterov: false")
        require(self.momentum == type(self).momentum or self.optimizer == "sgd", f"{where}.momentum",
                f"{self.momentum} is sgd's momentum; {self.optimizer} would ignore it (its betas are Keras' "
                f"defaults): set optimizer: sgd or remove momentum")
        require(self.weight_decay is None or is_number(self.weight_decay, 0.0), f"{where}.weight_decay",
                "must be a number >= 0 (or null: the optimizer's default)")
        require(self.early_stopping_patience is None or self.early_stopping_patience >= 1,
                f"{where}.early_stopping_patience", "must be >= 1 (or null: no early stopping)")
        require(isinstance(self.min_epochs, int) and not isinstance(self.min_epochs, bool)
                and 0 <= self.min_epochs <= self.epochs, f"{where}.min_epochs",
                f"must be an integer from 0 to epochs ({self.epochs})")
        require(self.min_epochs == 0 or self.early_stopping_patience is not None or self.lr_schedule.type == "plateau",
                f"{where}.min_epochs", "holds off early stopping and plateau rate cuts, and this training has "
                "neither: set early_stopping_patience or lr_schedule.type: plateau, or min_epochs: 0")
        require(self.lr_schedule.warmup_epochs <= self.epochs, f"{where}.lr_schedule.warmup_epochs",
                f"{self.lr_schedule.warmup_epochs} is longer than the training ({self.epochs} epochs)")
        require(self.backbone_weights is None or bool(self.backbone), f"{where}.backbone_weights",
                "needs a backbone (set training.backbone, e.g. MobileNetV2) or set it to null")
        require(self.backbone_weights is None or bool(self.backbone_weights.strip()), f"{where}.backbone_weights",
                "give imagenet, the path of a weights file, or null")
        require(self.freeze_encoder_epochs >= 0, f"{where}.freeze_encoder_epochs", "must be >= 0")
        require(self.freeze_encoder_epochs <= self.epochs, f"{where}.freeze_encoder_epochs",
                f"{self.freeze_encoder_epochs} is longer than the training ({self.epochs} epochs): the encoder "
                f"would never train; give at most {self.epochs} (that many keeps it frozen throughout)")
        require(self.freeze_encoder_epochs == 0 or bool(self.backbone), f"{where}.freeze_encoder_epochs",
                "needs a backbone (the U-Net without one has no separate encoder); set it to 0")
        require(self.backbone is None or self.backbone in KERAS_APPLICATIONS, f"{where}.backbone",
                f"{self.backbone!r} is not a keras.applications model: use one of {', '.join(KERAS_APPLICATIONS)}")
        require(SEED_RANGE[0] <= self.seed <= SEED_RANGE[1], f"{where}.seed",
                f"{self.seed} is outside {SEED_RANGE[0]}..2**32 - 1 (Keras' seed range)")
        require(self.devices is None or (len(self.devices) > 0 and all(d.strip() for d in self.devices)),
                f"{where}.devices", "list device names (e.g. ['/gpu:0', '/gpu:1']) or null")
        size = self.image_size
        require(len(size) == 2 and all(MIN_IMAGE_SIZE <= s <= MAX_IMAGE_SIZE for s in size), f"{where}.image_size",
                f"give [height, width], each from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} pixels (train on crops of "
                f"bigger images)")  # (QA 69: a larger size ran out of memory in the first batch)
        factor = size_factor(self.depth, self.backbone)
        if any(s % factor for s in size):
            fix = [max(factor, round(s / factor) * factor) for s in size]
            model = (f"the {self.backbone} encoder halves it depth + 1 = {self.depth + 1} times" if self.backbone
                     else f"the U-Net halves it depth = {self.depth} times")
            raise ConfigError(f"{where}.image_size: {list(size)} must be divisible by {factor} ({model}); "
                              f"use e.g. {fix} or change {where}.depth")


def weights_file_problem(backbone: Optional[str], weights: Optional[str]) -> Optional[str]:
    """The one-line error for ``training.backbone_weights`` naming a file that is not there (None when
    it is, or for null and imagenet); no TensorFlow import: ``config validate`` checks it too."""
    import os

    if not backbone or weights in (None, "imagenet") or os.path.isfile(weights):
        return None
    if is_remote(weights):  # checked where the pipeline trains (remote_weights_problem), not by `config validate`
        return None
    return (f"training.backbone_weights: {weights} is not a file; give the path of a {backbone} weights file "
            f"(model.save_weights), imagenet or null")


def pixel_weights_file_problem(pixel_weights) -> Optional[str]:
    """The one-line problem of a ``feature_extractor`` weight map whose local ``model`` file is not there
    (None otherwise, and for a URI, which only the machine that trains can see); no TensorFlow import."""
    import os

    model = getattr(pixel_weights, "model", None)
    if not isinstance(model, str) or is_remote(model) or os.path.isfile(model):
        return None
    return f"training.pixel_weights.model: {model} is not a file; give the path of a saved Keras model (.keras)"


@dataclass
class TrainerConfig:
    """What Transform and SegTrainer receive (``custom_config``): classes + training."""

    classes: ClassesConfig = field(default_factory=ClassesConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    # custom_config keys that are not configuration: the SegTrainer executor adds the ClassStats
    # URI; keys starting with "_" are in-process hooks of tests and benchmarks (not JSON).
    RUNTIME_KEYS: ClassVar[Tuple[str, ...]] = ("class_stats_uri",)

    def validate(self, where: str) -> None:
        self.training.loss.check_num_classes(self.classes.num_classes, f"{where + '.' if where else ''}training.loss")

    def to_custom_config(self) -> dict:
        """JSON-safe mapping for a component's ``custom_config``."""
        return to_dict(self)

    @classmethod
    def from_custom_config(cls, custom_config: Optional[dict]) -> Tuple["TrainerConfig", Dict[str, Any]]:
        """(typed config, runtime extras: ``class_stats_uri`` and ``_`` hooks) from a custom_config."""
        values = dict(custom_config or {})
        extras = {k: values.pop(k) for k in list(values) if k in cls.RUNTIME_KEYS or k.startswith("_")}
        return from_dict(cls, values), extras

    def fingerprint_json(self) -> str:
        """Canonical JSON of what defines the training (``backup_dir`` left out)."""
        values = to_dict(self)
        values["training"].pop("backup_dir")
        return json.dumps(values, sort_keys=True)


__all__ = ["ClassesConfig", "TrainingConfig", "LearningRateSchedule", "Augmentation", "TrainerConfig", "PixelWeights", "PIXEL_WEIGHT_TYPES", "EdgeWeights",
           "UnetBorderWeights", "IntensityRangeWeights", "FeatureExtractorWeights", "OPTIMIZERS", "size_factor",
           "ConfigError"]
