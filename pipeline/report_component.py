"""DataReport: the offline HTML report (pipeline/report.py) as a TFX component.

It lives in the pipeline layer (not components/) because it renders with pipeline/report.py:
imports flow one way, pipeline -> components (``python -m segbalance.pipeline.import_layers``).

Inputs: ``statistics`` (ExampleStatistics), ``anomalies`` (ExampleAnomalies),
``class_stats`` (ClassStats), optional ``evaluation`` (ModelEvaluation of SegEvaluator),
``drift`` (DriftReport) and ``model_run`` (SegTrainer's ModelRun: training curves). With the
``metadata_path`` parameter (a local run's SQLite ML Metadata store) the report also shows the
span history (per-class pixel frequency and the drift decision per span); a Kubeflow run has
no such file, and the report leaves that section out. Output: ``report`` (HtmlReport) holding
``report.html``.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional

import tensorflow as tf
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from segbalance.components.artifacts import ClassStats, DriftReport, HtmlReport

from segbalance.contract import REPORT_FILE, TRAINING_SUMMARY_FILE  # noqa: E402
from segbalance.trainer.remote_files import is_remote  # noqa: E402


class DataReportSpec(ComponentSpec):
    PARAMETERS = {"metadata_path": ExecutionParameter(type=str, optional=True)}
    INPUTS = {
        "statistics": ChannelParameter(type=standard_artifacts.ExampleStatistics),
        "anomalies": ChannelParameter(type=standard_artifacts.ExampleAnomalies),
        "class_stats": ChannelParameter(type=ClassStats),
        "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation, optional=True),
        "drift": ChannelParameter(type=DriftReport, optional=True),
        "model_run": ChannelParameter(type=standard_artifacts.ModelRun, optional=True),
    }
    OUTPUTS = {"report": ChannelParameter(type=HtmlReport)}


class DataReportExecutor(base_executor.BaseExecutor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        from segbalance.pipeline.report import render_report
        from segbalance.pipeline.report_sources import ReportSources, ingest_reports_read, span_history
        from segbalance.pipeline.run_summary import open_store

        def uri(key):
            artifacts = input_dict.get(key) or []
            return artifacts[0].uri if artifacts else None

        output = artifact_utils.get_single_instance(output_dict["report"])
        target = os.path.join(output.uri, REPORT_FILE)
        staging: List[str] = []  # a folder for local copies of remote artifacts, made only when one is read (a
        # killed local run left an empty one in /tmp each time: QA 77)
        shown: Dict[str, str] = {}

        def staged(name):
            if not staging:
                staging.append(tempfile.mkdtemp(prefix="segbalance-report-"))
            return os.path.join(staging[0], name)

        def local(key, only=None):
            remote = uri(key)
            if remote is None or not is_remote(remote):
                return remote
            folder = copy_artifact(remote, staged(key), only)
            shown[folder] = remote
            return folder

        try:  # a Kubeflow run's artifacts are on gs:// (s3://, ...): the report reads and writes local files
            sources = ReportSources(class_stats_dir=local("class_stats"), statistics_dir=local("statistics"),
                                    anomalies_dir=local("anomalies"), evaluation_dir=local("evaluation"),
                                    drift_dir=local("drift"), model_run_dir=local("model_run", [TRAINING_SUMMARY_FILE]),
                                    shown_as=shown)
            metadata_path = exec_properties.get("metadata_path")
            if metadata_path and os.path.isfile(metadata_path):
                store = open_store(metadata_path)  # read-only, once for both
                sources.spans = span_history(store)
                sources.ingest_reports = ingest_reports_read(store)
            given = [key for key in ("statistics", "anomalies", "evaluation", "drift", "model_run") if uri(key)]
            print(f"DataReport: rendering {uri('class_stats')} with {', '.join(given) or 'no other input'}",
                  flush=True)
            path = render_report(sources, staged(REPORT_FILE) if is_remote(target) else target)
            if path != target:
                tf.io.gfile.makedirs(output.uri)
                tf.io.gfile.copy(path, target, overwrite=True)
        finally:
            for folder in staging:
                shutil.rmtree(folder, ignore_errors=True)
        logging.info("DataReport: wrote %s", target)
        print(f"DataReport: wrote {target} ({tf.io.gfile.stat(target).length // 1024} KiB)", flush=True)


def copy_artifact(uri: str, folder: str, only: Optional[List[str]] = None) -> str:
    """``folder`` holding the files of the artifact at ``uri`` on a remote file system (gs://, s3://:
    TensorFlow's), all of them or the relative paths ``only``; the report reads local files."""
    base = uri.rstrip("/")
    names = list(only or [])
    if only is None:
        for root, _, files in tf.io.gfile.walk(base):
            below = root[len(base):].strip("/")
            names += [f"{below}/{name}" if below else name for name in files]
    for name in names:
        source = f"{base}/{name}"
        if not tf.io.gfile.exists(source):  # e.g. a ModelRun without training_summary.json: its section says so
            continue
        os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
        tf.io.gfile.copy(source, os.path.join(folder, name), overwrite=True)
    os.makedirs(folder, exist_ok=True)
    return folder


class DataReport(base_component.BaseComponent):
    SPEC_CLASS = DataReportSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(DataReportExecutor)

    def __init__(self, statistics: types.BaseChannel, anomalies: types.BaseChannel, class_stats: types.BaseChannel,
                 evaluation: Optional[types.BaseChannel] = None, drift: Optional[types.BaseChannel] = None,
                 model_run: Optional[types.BaseChannel] = None, metadata_path: Optional[str] = None):
        super().__init__(spec=DataReportSpec(statistics=statistics, anomalies=anomalies, class_stats=class_stats,
                                             evaluation=evaluation, drift=drift, model_run=model_run,
                                             metadata_path=metadata_path, report=types.Channel(type=HtmlReport)))
