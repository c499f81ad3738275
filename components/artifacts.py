"""Custom artifact types. TYPE_NAMEs follow the `<module>.<Class>` form that KFP v2 accepts,
and each class is exported from `components/__init__.py` so the KFP entrypoint can import it
from that name."""
from tfx.types.artifact import Artifact


class ClassStats(Artifact):
    """Class frequencies, weights and per-image label sets (layout: components/class_stats_beam.py)."""

    TYPE_NAME = "components.ClassStats"


class HtmlReport(Artifact):
    """A self-contained HTML report (`report.html`)."""

    TYPE_NAME = "components.HtmlReport"


class DriftReport(Artifact):
    """Class-distribution drift between two ClassStats (`drift.json`, custom property `blocked`)."""

    TYPE_NAME = "components.DriftReport"
