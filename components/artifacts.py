"""Custom artifact types. TYPE_NAMEs follow the `<module>.<Class>` form that KFP v2 accepts
(one dot), and the `segbalance` root package exports each class under that name, so the KFP
entrypoint can import it from the type name."""
from tfx.types.artifact import Artifact

from segbalance import contract


class ClassStats(Artifact):
    """Class frequencies, weights and per-image label sets (layout: components/class_stats_beam.py)."""

    TYPE_NAME = contract.CLASS_STATS_TYPE


class HtmlReport(Artifact):
    """A self-contained HTML report (`report.html`)."""

    TYPE_NAME = contract.HTML_REPORT_TYPE


class DriftReport(Artifact):
    """Class-distribution drift between two ClassStats (`drift.json`, custom property `blocked`)."""

    TYPE_NAME = contract.DRIFT_REPORT_TYPE
