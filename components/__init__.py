"""TFX components and artifact types of segbalance (importable from the installed package;
KFP v2 imports artifact classes by their TYPE_NAME, e.g. ``components.ClassStats``)."""
from components.artifacts import ClassStats, DriftReport, HtmlReport  # noqa: F401
from components.class_stats_gen import ClassStatsGen  # noqa: F401
from components.seg_trainer import SegTrainer  # noqa: F401
from components.data_report import DataReport  # noqa: F401
from components.class_distribution_validator import ClassDistributionValidator  # noqa: F401
from components.seg_evaluator import SegEvaluator  # noqa: F401
