"""The one pipeline configuration: a dataclass tree, loadable from YAML or JSON.

Every field has a default that runs the bundled shapes sample (``segbalance run`` with no
flags). A config file only lists what it changes, e.g.::

    data:
      dir: /data/my-set           # folder with images/ and masks/ (or Span-N/ sub-folders)
    classes:
      names: [background, road, car, person]
    training:
      epochs: 20
      loss: {terms: [{type: ce, weight: 1}], class_weights: median_frequency}

``load_config`` rejects unknown fields and wrong types with a ``ConfigError`` that names
the field (``training.epochs``) and says what to do.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from segbalance.contract import DEFAULT_IGNORE_INDEX, DRIFT_ACTIONS

PIPELINE_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,127}$"
# components.drift_metrics.ACTIONS (tests/test_config.py checks they agree); not imported from
# there because importing `components` imports TFX, which a config check must not wait for


class ConfigError(ValueError):
    """An invalid configuration; the message names the field and what to do."""


@dataclass
class SampleConfig:
    """Sample data generated when ``data.dir`` is not set (``segbalance sample-data``)."""

    kind: str = "shapes"
    num_images: int = 240
    size: int = 64
    seed: int = 0
    drop_fraction: float = 0.3


@dataclass
class DataConfig:
    dir: Optional[str] = None  # images/ + masks/ (+ labeled.json, masks_full/); None: sample data
    labeled_policy: str = "complete"  # records without `labeled`: "complete" or "partial"
    eval_fraction: float = 0.2  # hash split of each span into train/eval
    num_spans: int = 1  # local runs on Span-N/ data: train on the last K spans (pipeline/spans.py)
    reference_masks_dir: Optional[str] = None  # complete masks for evaluation (default: masks_full/)
    sample: SampleConfig = field(default_factory=SampleConfig)


@dataclass
class ClassesConfig:
    names: List[str] = field(default_factory=lambda: ["background", "ellipse", "rectangle", "circle"])
    ignore_index: int = DEFAULT_IGNORE_INDEX


@dataclass
class TrainingConfig:
    image_size: List[int] = field(default_factory=lambda: [64, 64])
    epochs: int = 8
    batch_size: int = 16
    learning_rate: float = 3e-3
    depth: int = 3
    base_filters: int = 16
    # Marginal CE + Dice, unweighted: what docs/results supports for partly annotated,
    # imbalanced data (README "Results"); class weighting cost mIoU on the shapes data.
    loss: Dict[str, Any] = field(default_factory=lambda: {
        "terms": [{"type": "ce", "weight": 1.0}, {"type": "dice", "weight": 1.0}],
        "missing_labels": "marginal",
    })
    mixed_precision: bool = False
    jit_compile: bool = False
    seed: int = 0
    warm_start: bool = False  # start from the latest blessed model's weights (same architecture)


@dataclass
class EvaluationConfig:
    miou_threshold: float = 0.3  # absolute: a model below it is not blessed
    tolerance: float = 0.02  # may be this much worse than the latest blessed model


@dataclass
class DriftConfig:
    js_divergence: float = 0.05  # Jensen-Shannon divergence of class pixel frequencies
    max_abs_change: float = 0.1  # largest change of one class's pixel frequency
    missing_rate_change: float = 0.2  # change of the fraction of images with missing classes
    # "block": the model is trained but not blessed, so not pushed; "block_training": trainer,
    # evaluator and pusher do not run; "warn": recorded only
    action: str = "block"


@dataclass
class PipelineConfig:
    name: str = "segbalance"
    output_dir: str = "segbalance_output"
    data: DataConfig = field(default_factory=DataConfig)
    classes: ClassesConfig = field(default_factory=ClassesConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    beam_args: List[str] = field(default_factory=lambda: ["--direct_running_mode=in_memory",
                                                          "--direct_num_workers=1"])

    @property
    def num_classes(self) -> int:
        return len(self.classes.names)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- loading
def _convert(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of fields, got {type(value).__name__} {value!r}")
        return _build(annotation, value, where)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _convert(value, [a for a in args if a is not type(None)][0], where)
    if origin in (list, List):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool):
        if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {type(value).__name__} {value!r}")
        return value
    return value


def _build(cls, values: dict, where: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown field {prefix}{unknown[0]}; known fields{' of ' + where if where else ''}: "
                          f"{', '.join(sorted(names))}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()}
    return cls(**kwargs)


def validate(config: PipelineConfig) -> PipelineConfig:
    """Check values (not only types); raises ConfigError naming the field."""
    import re

    def check(ok: bool, where: str, message: str):
        if not ok:
            raise ConfigError(f"{where}: {message}")

    check(bool(re.match(PIPELINE_NAME_PATTERN, config.name)), "name",
          f"{config.name!r} is not a valid pipeline name: use lower-case letters, digits and '-' (KFP rule)")
    check(len(config.classes.names) >= 2, "classes.names", "list at least 2 classes (background first)")
    check(len(set(config.classes.names)) == len(config.classes.names), "classes.names", "class names must be unique")
    check(config.classes.ignore_index >= config.num_classes, "classes.ignore_index",
          f"{config.classes.ignore_index} collides with a class id (< {config.num_classes}); use e.g. 255")
    check(config.data.labeled_policy in ("complete", "partial"), "data.labeled_policy",
          f"{config.data.labeled_policy!r}: use 'complete' or 'partial'")
    check(0.0 < config.data.eval_fraction < 1.0, "data.eval_fraction", "must be between 0 and 1")
    check(isinstance(config.data.num_spans, int) and config.data.num_spans >= 1, "data.num_spans",
          "give the number of latest spans to train on, >= 1")
    check(config.data.sample.kind in ("shapes", "voc", "arc2017", "nuclei"), "data.sample.kind",
          "use shapes, voc, arc2017 or nuclei")
    check(len(config.training.image_size) == 2 and all(s >= 8 for s in config.training.image_size),
          "training.image_size", "give [height, width], each >= 8")
    for key in ("epochs", "batch_size", "depth", "base_filters"):
        check(getattr(config.training, key) >= 1, f"training.{key}", "must be >= 1")
    check(config.training.learning_rate > 0, "training.learning_rate", "must be > 0")
    check(0.0 <= config.evaluation.miou_threshold <= 1.0, "evaluation.miou_threshold", "must be in [0, 1]")
    check(config.drift.action in DRIFT_ACTIONS, "drift.action", f"use one of {', '.join(DRIFT_ACTIONS)}")
    if config.data.dir is not None:
        path = Path(config.data.dir)
        check(path.is_dir(), "data.dir", f"{path} is not a folder; point it at a folder with images/ and masks/")
        has_pairs = (path / "images").is_dir() or any(path.glob("Span-*"))
        check(has_pairs, "data.dir", f"{path} has no images/ folder and no Span-N/ folders: nothing to train on")
    try:
        from segbalance.trainer.segmentation_loss import validate_loss_config
    except ImportError:  # loss library not installed yet: the trainer checks again
        validate_loss_config = None
    if validate_loss_config is not None:
        try:
            validate_loss_config(config.training.loss)
        except ValueError as exc:
            raise ConfigError(f"training.loss: {exc}") from exc
    return config


def config_from_dict(values: dict) -> PipelineConfig:
    return validate(_build(PipelineConfig, values or {}))


def load_config(path: Optional[str] = None, **overrides: Any) -> PipelineConfig:
    """Defaults, updated from a YAML/JSON file, then from top-level ``overrides``."""
    values: dict = {}
    if path is not None:
        text = Path(path).read_text() if Path(path).is_file() else None
        if text is None:
            raise ConfigError(f"config file {path} does not exist")
        try:
            if str(path).endswith(".json"):
                values = json.loads(text)
            else:
                import yaml

                values = yaml.safe_load(text) or {}
        except Exception as exc:
            raise ConfigError(f"config file {path} is not valid YAML/JSON: {exc}") from exc
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path}: the top level must be a mapping of fields")
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = values
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return config_from_dict(values)
