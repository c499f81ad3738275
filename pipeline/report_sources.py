"""Where the data report's inputs are: a ClassStats folder, or a run folder with ML Metadata.

A run folder is read through its ML Metadata store (``metadata.sqlite``, opened read-only):
the newest live artifact of each type is used, and for drift the newest ``DriftReport`` or,
failing that, the newest artifact of any type whose folder holds ``drift.json``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

METADATA_FILE = "metadata.sqlite"
from segbalance.contract import CLASS_STATS_TYPE, DRIFT_FILE, DRIFT_REPORT_TYPE, EVALUATION_FILE, STATS_FILE  # noqa: E402,F401


@dataclass
class ReportSources:
    """Folders the report reads; only ``class_stats_dir`` is required, a missing optional one drops its section."""

    class_stats_dir: str  # ClassStats artifact / `segbalance stats --output`: class_stats.json, per_image-*.parquet
    statistics_dir: Optional[str] = None  # ExampleStatistics artifact: Split-<name>/FeatureStats.pb
    anomalies_dir: Optional[str] = None  # ExampleAnomalies artifact: Split-<name>/SchemaDiff.pb
    evaluation_dir: Optional[str] = None  # ModelEvaluation artifact of SegEvaluator: evaluation.json
    drift_dir: Optional[str] = None  # DriftReport artifact (or any folder): drift.json

    def check(self) -> None:
        """FileNotFoundError naming the folder and the file it lacks."""
        if not self.class_stats_dir or not os.path.isfile(os.path.join(self.class_stats_dir, STATS_FILE)):
            raise FileNotFoundError(f"class statistics folder {self.class_stats_dir!r} has no {STATS_FILE}: "
                                    f"give a ClassStats artifact folder or a `segbalance stats --output` folder")
        for name in ("statistics_dir", "anomalies_dir", "evaluation_dir", "drift_dir"):
            path = getattr(self, name)
            if path is not None and not os.path.isdir(path):
                raise FileNotFoundError(f"{name} {path!r} is not a folder")


def find_sources(path: str) -> ReportSources:
    """STATS_DIR (has class_stats.json) or RUN_DIR (has metadata.sqlite): the newest artifacts."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is not a folder: give a statistics folder (with {STATS_FILE}) "
                                f"or a `segbalance run` output folder (with {METADATA_FILE})")
    if os.path.isfile(os.path.join(path, STATS_FILE)):
        return ReportSources(class_stats_dir=path)
    metadata = os.path.join(path, METADATA_FILE)
    if not os.path.isfile(metadata):
        raise FileNotFoundError(f"{path} has neither {STATS_FILE} (a statistics folder) nor {METADATA_FILE} "
                                f"(a `segbalance run` output folder): point the report at one of those")
    return sources_from_metadata(metadata)


def sources_from_metadata(metadata: str) -> ReportSources:
    from segbalance.pipeline.run_summary import latest_artifact, open_store

    store = open_store(metadata)  # read-only SQLite connection

    def uri(type_name: str, required_file: Optional[str] = None) -> Optional[str]:
        artifact = latest_artifact(store, type_name)
        if artifact is None:
            return None
        if required_file and not os.path.isfile(os.path.join(artifact.uri, required_file)):
            raise FileNotFoundError(f"the newest {type_name} artifact in {metadata} (id {artifact.id}) points to "
                                    f"{artifact.uri}, which has no {required_file}: was the folder moved or deleted?")
        return artifact.uri

    class_stats = uri(CLASS_STATS_TYPE, STATS_FILE)
    if class_stats is None:
        raise FileNotFoundError(f"{metadata} records no components.ClassStats artifact: run the pipeline "
                                f"through ClassStatsGen first, or give a `segbalance stats` folder")
    return ReportSources(class_stats_dir=class_stats, statistics_dir=uri("ExampleStatistics"),
                         anomalies_dir=uri("ExampleAnomalies"), evaluation_dir=uri("ModelEvaluation"),
                         drift_dir=uri(DRIFT_REPORT_TYPE) or _any_with_file(store, DRIFT_FILE))


def _any_with_file(store, file_name: str) -> Optional[str]:
    """The newest live artifact, of any type, whose folder holds ``file_name``."""
    from ml_metadata.proto import metadata_store_pb2

    live = [a for a in store.get_artifacts() if a.state == metadata_store_pb2.Artifact.LIVE and a.uri]
    for artifact in sorted(live, key=lambda a: a.id, reverse=True):
        if os.path.isfile(os.path.join(artifact.uri, file_name)):
            return artifact.uri
    return None
