"""Custom artifact types. TYPE_NAMEs follow the `<module>.<Class>` form that KFP v2 accepts
(one dot), and the `segbalance` root package exports each class under that name, so the KFP
entrypoint can import it from the type name."""
from tfx.types.artifact import Artifact


class ClassStats(Artifact):
    """Class frequencies, weights and per-image label sets (layout: components/class_stats_beam.py)."""

    TYPE_NAME = "segbalance.ClassStats"


class HtmlReport(Artifact):
    """A self-contained HTML report (`report.html`)."""

    TYPE_NAME = "segbalance.HtmlReport"


class DriftReport(Artifact):
    """Class-distribution drift between two ClassStats (`drift.json`, custom property `blocked`)."""

    TYPE_NAME = "segbalance.DriftReport"
