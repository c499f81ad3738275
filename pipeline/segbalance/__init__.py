"""segbalance: semantic segmentation on imbalanced and partially annotated data, as a TFX pipeline.

The installed import namespace. The repository keeps one folder per layer, each installed
under this package (see ``pyproject.toml``):

- ``segbalance.pipeline``   (``pipeline/``)   command line, configuration, the DAG, reports
- ``segbalance.components`` (``components/``) TFX components and their Beam / NumPy cores
- ``segbalance.trainer``    (``trainer/``)    Keras losses, model, input pipeline, ``run_fn``
- ``segbalance.kubeflow``   (``kubeflow/``)   Kubeflow Pipelines v2 compile, schedule, local launcher

This module (``pipeline/segbalance/__init__.py``) is the public API. Its names load on first
use (PEP 562), so ``import segbalance.trainer.losses`` does not pull in TFX, and the KFP
entrypoint can import the artifact types by their ``TYPE_NAME`` (``segbalance.ClassStats``).
"""
from __future__ import annotations

import importlib
from typing import Any, Dict

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: Dict[str, str] = {
    # artifact types (MLMD / KFP type names "segbalance.<Class>")
    "ClassStats": "segbalance.components.artifacts",
    "DriftReport": "segbalance.components.artifacts",
    "HtmlReport": "segbalance.components.artifacts",
    # TFX components
    "ClassStatsGen": "segbalance.components.class_stats_gen",
    "ClassDistributionValidator": "segbalance.components.class_distribution_validator",
    "SegTrainer": "segbalance.components.seg_trainer",
    "SegEvaluator": "segbalance.components.seg_evaluator",
    "DataReport": "segbalance.pipeline.report_component",
    # losses
    "SegmentationLoss": "segbalance.trainer.segmentation_loss",
    "weighted_cross_entropy": "segbalance.trainer.losses",
    "focal_loss": "segbalance.trainer.losses",
    "ignore_predicted_cross_entropy": "segbalance.trainer.losses",
    "marginal_cross_entropy": "segbalance.trainer.losses",
    "exclusion_loss": "segbalance.trainer.losses",
    "dice_loss": "segbalance.trainer.losses",
    "generalized_dice_loss": "segbalance.trainer.losses",
    "tversky_loss": "segbalance.trainer.losses",
    "compute_class_weights": "segbalance.trainer.class_weights",
    # pipeline and configuration
    "create_pipeline": "segbalance.pipeline.dag",
    "PipelineConfig": "segbalance.pipeline.config",
    "ConfigError": "segbalance.pipeline.config",
    "load_config": "segbalance.pipeline.config",
    "DataConfig": "segbalance.pipeline.config",
    "SampleConfig": "segbalance.pipeline.config",
    "StatsConfig": "segbalance.pipeline.config",
    "EvaluationConfig": "segbalance.components.component_config",
    "DriftConfig": "segbalance.components.component_config",
    "ClassesConfig": "segbalance.trainer.training_config",
    "TrainingConfig": "segbalance.trainer.training_config",
    "LearningRateSchedule": "segbalance.trainer.training_config",
    "Augmentation": "segbalance.trainer.training_config",
    # training.pixel_weights: one of these (its `type`)
    "EdgeWeights": "segbalance.trainer.training_config",
    "UnetBorderWeights": "segbalance.trainer.training_config",
    "IntensityRangeWeights": "segbalance.trainer.training_config",
    "FeatureExtractorWeights": "segbalance.trainer.training_config",
    # training.loss.terms entries (their `type`) and training.loss.low_confidence
    "CE": "segbalance.trainer.loss_config",
    "Focal": "segbalance.trainer.loss_config",
    "Dice": "segbalance.trainer.loss_config",
    "GeneralizedDice": "segbalance.trainer.loss_config",
    "Tversky": "segbalance.trainer.loss_config",
    "Exclusion": "segbalance.trainer.loss_config",
    "LowConfidence": "segbalance.trainer.loss_config",
    "TrainerConfig": "segbalance.trainer.training_config",
    "LossConfig": "segbalance.trainer.loss_config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'segbalance' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
