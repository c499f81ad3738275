"""DataReport: the offline HTML report (pipeline/report.py) as a TFX component.

Inputs: ``statistics`` (ExampleStatistics), ``anomalies`` (ExampleAnomalies),
``class_stats`` (ClassStats), optional ``evaluation`` (ModelEvaluation of SegEvaluator) and
``drift`` (DriftReport). Output: ``report`` (HtmlReport) holding ``report.html``.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec

from segbalance.components.artifacts import ClassStats, DriftReport, HtmlReport

from segbalance.contract import REPORT_FILE  # noqa: E402


class DataReportSpec(ComponentSpec):
    PARAMETERS = {}
    INPUTS = {
        "statistics": ChannelParameter(type=standard_artifacts.ExampleStatistics),
        "anomalies": ChannelParameter(type=standard_artifacts.ExampleAnomalies),
        "class_stats": ChannelParameter(type=ClassStats),
        "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation, optional=True),
        "drift": ChannelParameter(type=DriftReport, optional=True),
    }
    OUTPUTS = {"report": ChannelParameter(type=HtmlReport)}


class DataReportExecutor(base_executor.BaseExecutor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        from segbalance.pipeline.report import render_report
        from segbalance.pipeline.report_sources import ReportSources

        def uri(key):
            artifacts = input_dict.get(key) or []
            return artifacts[0].uri if artifacts else None

        output = artifact_utils.get_single_instance(output_dict["report"])
        sources = ReportSources(class_stats_dir=uri("class_stats"), statistics_dir=uri("statistics"),
                                anomalies_dir=uri("anomalies"), evaluation_dir=uri("evaluation"),
                                drift_dir=uri("drift"))
        given = [key for key in ("statistics", "anomalies", "evaluation", "drift") if uri(key)]
        print(f"DataReport: rendering {sources.class_stats_dir} with {', '.join(given) or 'no other input'}",
              flush=True)
        path = render_report(sources, os.path.join(output.uri, REPORT_FILE))
        logging.info("DataReport: wrote %s", path)
        print(f"DataReport: wrote {path} ({os.path.getsize(path) // 1024} KiB)", flush=True)


class DataReport(base_component.BaseComponent):
    SPEC_CLASS = DataReportSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(DataReportExecutor)

    def __init__(self, statistics: types.BaseChannel, anomalies: types.BaseChannel, class_stats: types.BaseChannel,
                 evaluation: Optional[types.BaseChannel] = None, drift: Optional[types.BaseChannel] = None):
        super().__init__(spec=DataReportSpec(statistics=statistics, anomalies=anomalies, class_stats=class_stats,
                                             evaluation=evaluation, drift=drift,
                                             report=types.Channel(type=HtmlReport)))
