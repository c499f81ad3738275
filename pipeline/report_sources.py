"""Where the data report's inputs are: a ClassStats folder, or a run folder with ML Metadata.

A run folder is read through its ML Metadata store (``metadata.sqlite``, opened read-only):
the artifacts of the latest run that wrote a report, by lineage (its ``pipeline_run`` context:
what its nodes made or took from the cache, so a skipped node gives nothing, never an earlier
run's artifact); its ``ModelRun`` gives the training curves (``training_summary.json``); and every
span the store has ClassStats for gives one point of the spans section (``span_history``). A store
without run contexts falls back to the newest live artifact of each type (for drift, of any type
whose folder holds ``drift.json``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional

METADATA_FILE = "metadata.sqlite"
from segbalance.contract import CLASS_STATS_TYPE, DRIFT_FILE, DRIFT_REPORT_TYPE, EVALUATION_FILE, STATS_FILE  # noqa: E402,F401
from segbalance.contract import TRAINING_SUMMARY_FILE  # noqa: E402


@dataclass
class SpanStats:
    """One span of a run's history: its newest ClassStats and the drift gate's decision on it."""

    span: int
    class_stats_dir: str
    drift_status: Optional[str] = None  # ok / warn / blocked; None: no drift gate ran on these stats
    drift_action: Optional[str] = None
    window: Optional[List[int]] = None  # the spans these ClassStats counted, for a data.num_spans window


@dataclass
class ReportSources:
    """Folders the report reads; only ``class_stats_dir`` is required, a missing optional one drops its section."""

    class_stats_dir: str  # ClassStats artifact / `segbalance stats --output`: class_stats.json, per_image-*.parquet
    statistics_dir: Optional[str] = None  # ExampleStatistics artifact: Split-<name>/FeatureStats.pb
    anomalies_dir: Optional[str] = None  # ExampleAnomalies artifact: Split-<name>/SchemaDiff.pb
    evaluation_dir: Optional[str] = None  # ModelEvaluation artifact of SegEvaluator: evaluation.json
    drift_dir: Optional[str] = None  # DriftReport artifact (or any folder): drift.json
    model_run_dir: Optional[str] = None  # ModelRun artifact of SegTrainer: training_summary.json (history)
    spans: Optional[List[SpanStats]] = None  # span history (from ML Metadata); the section needs > 1 span
    # ingest_report.json of each span the run read (``segbalance ingest`` / `run` wrote it beside the
    # records): the image pairs that were not ingested, and why
    ingest_reports: Optional[List[str]] = None
    # artifact folders ML Metadata names (a run directory): one that was moved or deleted is flagged in its
    # section, not a refusal of the whole report; folders given directly must exist
    recorded: bool = False
    # a line for the top of the page: the run folder's latest run did not finish (its run_summary.json)
    note: Optional[str] = None
    # {local folder: the address the page names}: artifacts on a remote file system, read from local copies
    shown_as: Optional[Dict[str, str]] = None

    def check(self) -> None:
        """FileNotFoundError naming the folder and the file it lacks."""
        if not self.class_stats_dir or not os.path.isfile(os.path.join(self.class_stats_dir, STATS_FILE)):
            raise FileNotFoundError(f"class statistics folder {self.class_stats_dir!r} has no {STATS_FILE}: "
                                    f"give a ClassStats artifact folder or a `segbalance stats --output` folder")
        for name in ("statistics_dir", "anomalies_dir", "evaluation_dir", "drift_dir", "model_run_dir"):
            path = getattr(self, name)
            if path is not None and not os.path.isdir(path) and not self.recorded:
                raise FileNotFoundError(f"{name} {path!r} is not a folder")


def find_sources(path: str) -> ReportSources:
    """STATS_DIR (has class_stats.json) or RUN_DIR (has metadata.sqlite): the latest run's artifacts."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is not a folder: give a statistics folder (with {STATS_FILE}) "
                                f"or a `segbalance run` output folder (with {METADATA_FILE})")
    if os.path.isfile(os.path.join(path, STATS_FILE)):
        return ReportSources(class_stats_dir=path)
    metadata = os.path.join(path, METADATA_FILE)
    if not os.path.isfile(metadata):
        raise FileNotFoundError(f"{path} has neither {STATS_FILE} (a statistics folder) nor {METADATA_FILE} "
                                f"(a `segbalance run` output folder): point the report at one of those")
    sources = sources_from_metadata(metadata)
    sources.note = unfinished_run_note(path)
    return sources


def unfinished_run_note(run_dir: str) -> Optional[str]:
    """What the page should say first when the folder's latest run did not finish (QA 25: a report of a
    run stopped in training just lacked its training and evaluation sections, without a word)."""
    import json

    from segbalance.pipeline.output_guard import SUMMARY_FILE

    try:
        with open(os.path.join(run_dir, SUMMARY_FILE), encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None
    status = summary.get("status") if isinstance(summary, dict) else None
    if status not in ("interrupted", "failed", "refused", "running"):  # running: under way, or killed (QA 71)
        return None
    error = (f" ({summary['error']})" if summary.get("error") else
             f" (process {summary.get('pid')}, started {summary.get('started')}: under way, or killed)"
             if status == "running" else "")
    return (f"The latest run in this folder did not finish: {SUMMARY_FILE} says {status}{error}. This page shows "
            f"what the ML Metadata store records (the last run that wrote a report, else this one): the sections of "
            f"the steps it did not reach are missing. "
            + ("Do what the error says, then run the `segbalance run` command again (the same command alone is "
               "refused again)." if status == "refused" else
               "Run the same `segbalance run` command again to finish it."))


def sources_from_metadata(metadata: str) -> ReportSources:
    """The artifacts of the latest run (``run_summary.last_run_outputs``: what it made or reused
    from the cache; nothing of a node it skipped). The newest artifact of each type, taken one by
    one, mixed runs: a cached ClassStatsGen's statistics with another run's training."""
    from segbalance.pipeline.run_summary import last_run_outputs, latest_artifact, open_store

    store = open_store(metadata)  # read-only SQLite connection
    run = last_run_outputs(store, with_report=True)
    made = {}  # type -> the artifact the run's own node made (resolvers' outputs are earlier runs')
    if run is not None:
        for type_name, node, key in ((CLASS_STATS_TYPE, "ClassStatsGen", "class_stats"),
                                     ("ExampleStatistics", "StatisticsGen", "statistics"),
                                     ("ExampleAnomalies", "ExampleValidator", "anomalies"),
                                     ("ModelEvaluation", "SegEvaluator", "evaluation"),
                                     (DRIFT_REPORT_TYPE, "ClassDistributionValidator", "drift_report"),
                                     ("ModelRun", "SegTrainer", "model_run")):
            if run.get(node, key) is not None:
                made[type_name] = run.get(node, key)

    def uri(type_name: str, required_file: Optional[str] = None) -> Optional[str]:
        artifact = made.get(type_name) if run is not None else latest_artifact(store, type_name)
        if artifact is None:
            return None
        if required_file and not os.path.isfile(os.path.join(artifact.uri, required_file)):
            raise FileNotFoundError(f"the {type_name} artifact of the latest run in {metadata} (id {artifact.id}) "
                                    f"points to {artifact.uri}, which has no {required_file}: was the folder moved "
                                    f"or deleted?")
        return artifact.uri

    class_stats = uri(CLASS_STATS_TYPE, STATS_FILE)
    if class_stats is None:
        raise FileNotFoundError(f"{metadata} records no segbalance.ClassStats artifact: run the pipeline "
                                f"through ClassStatsGen first, or give a `segbalance stats` folder")
    return ReportSources(class_stats_dir=class_stats, statistics_dir=uri("ExampleStatistics"),
                         anomalies_dir=uri("ExampleAnomalies"), evaluation_dir=uri("ModelEvaluation"),
                         drift_dir=uri(DRIFT_REPORT_TYPE) if run is not None else _any_with_file(store, DRIFT_FILE),
                         model_run_dir=uri("ModelRun"), spans=span_history(store),
                         ingest_reports=ingest_reports_read(store), recorded=True)


def ingest_reports_read(store) -> List[str]:
    """The ``ingest_report.json`` files of the spans the latest ImportExampleGen read (those that have one)."""
    from segbalance.pipeline.ingest import REPORT_NAME
    from segbalance.pipeline.run_summary import data_used

    data = data_used(store) or {}
    reports = [os.path.join(folder, REPORT_NAME) for _, folder in sorted(data.get("span_folders", {}).items(),
                                                                          key=lambda item: int(item[0]))]
    return [r for r in reports if os.path.isfile(r)]


def span_history_from_metadata(metadata: str) -> List[SpanStats]:
    """``span_history`` of a SQLite ML Metadata store (opened read-only)."""
    from segbalance.pipeline.run_summary import open_store

    return span_history(open_store(metadata))


def span_history(store) -> List[SpanStats]:
    """One SpanStats per span, ascending: the newest live ClassStats computed from Examples of
    that span (lineage: ClassStats <- ClassStatsGen execution <- Examples ``span``), with the
    decision of the newest DriftReport whose ``drift.json`` names those ClassStats as current."""
    import json

    from ml_metadata.proto import metadata_store_pb2

    live = metadata_store_pb2.Artifact.LIVE
    try:
        stats = [a for a in store.get_artifacts_by_type(CLASS_STATS_TYPE) if a.state == live and a.uri]
    except Exception:  # type not registered: no ClassStats yet
        return []
    if not stats:
        return []
    events = store.get_events_by_artifact_ids([a.id for a in stats])
    producer = {e.artifact_id: e.execution_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT}
    inputs = store.get_events_by_execution_ids(sorted(set(producer.values())))
    input_ids = {e.artifact_id for e in inputs if e.type == metadata_store_pb2.Event.INPUT}
    span_of_artifact, window_of_artifact = {}, {}
    for artifact in store.get_artifacts_by_id(sorted(input_ids)):
        for props in (artifact.properties, artifact.custom_properties):
            if "span" in props:
                span_of_artifact[artifact.id] = int(props["span"].int_value)
                window_of_artifact[artifact.id] = _window(store, artifact)
                break
    span_of_execution, window_of_execution = {}, {}
    for event in inputs:
        if event.type == metadata_store_pb2.Event.INPUT and event.artifact_id in span_of_artifact:
            span_of_execution[event.execution_id] = span_of_artifact[event.artifact_id]
            window_of_execution[event.execution_id] = window_of_artifact[event.artifact_id]
    decisions = {}
    try:
        reports = [a for a in store.get_artifacts_by_type(DRIFT_REPORT_TYPE) if a.state == live and a.uri]
    except Exception:
        reports = []
    for report in sorted(reports, key=lambda a: a.id):  # newer reports overwrite older ones
        path = os.path.join(report.uri, DRIFT_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                drift = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(drift, dict) and drift.get("current"):
            decisions[os.path.normpath(drift["current"])] = (drift.get("status"), drift.get("action"))
    newest = {}
    for artifact in sorted(stats, key=lambda a: a.id):
        span = span_of_execution.get(producer.get(artifact.id))
        if span is not None and os.path.isfile(os.path.join(artifact.uri, STATS_FILE)):
            newest[span] = artifact
    return [SpanStats(span, a.uri, *decisions.get(os.path.normpath(a.uri), (None, None)),
                      window=window_of_execution.get(producer.get(a.id)))
            for span, a in sorted(newest.items())]


def _window(store, examples) -> Optional[List[int]]:
    """The spans of a ``data.num_spans`` window an Examples artifact holds (None for one span, or
    when its ImportExampleGen execution is not recorded)."""
    from segbalance.pipeline.run_summary import examples_spans

    try:
        spans = sorted(examples_spans(store, examples)[3])
    except (ValueError, KeyError, TypeError):  # no producing execution with an input config
        return None
    return spans if len(spans) > 1 else None


def _any_with_file(store, file_name: str) -> Optional[str]:
    """The newest live artifact, of any type, whose folder holds ``file_name``."""
    from ml_metadata.proto import metadata_store_pb2

    live = [a for a in store.get_artifacts() if a.state == metadata_store_pb2.Artifact.LIVE and a.uri]
    for artifact in sorted(live, key=lambda a: a.id, reverse=True):
        if os.path.isfile(os.path.join(artifact.uri, file_name)):
            return artifact.uri
    return None
