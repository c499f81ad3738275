"""Where the data report's inputs are: a ClassStats folder, or a run folder with ML Metadata."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional


@dataclass
class ReportSources:
    class_stats_dir: str
    statistics_dir: Optional[str] = None  # ExampleStatistics artifact (Split-*/FeatureStats.pb)
    anomalies_dir: Optional[str] = None  # ExampleAnomalies artifact (Split-*/SchemaDiff.pb)
    evaluation_dir: Optional[str] = None  # ModelEvaluation artifact of SegEvaluator (evaluation.json)
    drift_dir: Optional[str] = None  # DriftReport artifact (drift.json)


def find_sources(path: str) -> ReportSources:
    """STATS_DIR (has class_stats.json) or RUN_DIR (has metadata.sqlite): the newest artifacts."""
    if os.path.isfile(os.path.join(path, "class_stats.json")):
        return ReportSources(class_stats_dir=path)
    metadata = os.path.join(path, "metadata.sqlite")
    if not os.path.isfile(metadata):
        raise FileNotFoundError(f"{path} has neither class_stats.json (a statistics folder) nor metadata.sqlite "
                                f"(a `segbalance run` output folder): point the report at one of those")
    from pipeline.run_summary import latest_artifact, open_store

    store = open_store(metadata)

    def uri(type_name):
        artifact = latest_artifact(store, type_name)
        return artifact.uri if artifact is not None else None

    class_stats = uri("components.ClassStats")
    if class_stats is None:
        raise FileNotFoundError(f"the run in {path} has no ClassStats artifact yet: run the pipeline to "
                                f"ClassStatsGen first")
    return ReportSources(class_stats_dir=class_stats, statistics_dir=uri("ExampleStatistics"),
                         anomalies_dir=uri("ExampleAnomalies"), evaluation_dir=uri("ModelEvaluation"),
                         drift_dir=uri("components.DriftReport"))
