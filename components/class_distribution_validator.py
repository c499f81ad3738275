"""ClassDistributionValidator: the drift gate of scheduled retraining.

Compares the new ClassStats with the previous run's (``baseline_class_stats``, from a
latest-artifact Resolver that runs before this run's ClassStatsGen; when ClassStatsGen was
cached those are this run's own, and the baseline is the one the previous run's DriftReport,
``previous_report``, judged them against) using
``components/drift_metrics.py``: Jensen-Shannon divergence and the largest absolute change
of the class pixel frequencies, classes that were absent before, and the change in the
fraction of images with missing annotations. Above a threshold it records an anomaly;
with ``action="block"`` the DriftReport is marked ``blocked`` and SegEvaluator then does
not bless the model, so Pusher does not push it; with ``action="block_training"`` it is
marked ``blocked`` too and the pipeline's ``tfx.dsl.Cond`` on that mark skips SegTrainer,
SegEvaluator and Pusher (``"warn"``: recorded, not blocking).
Output ``drift_report`` (DriftReport) holds ``drift.json``; the report shows it.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.utils import io_utils

from segbalance.components.artifacts import ClassStats, DriftReport
from segbalance.components.component_config import DriftConfig
from segbalance.components.drift_metrics import ACTIONS, THRESHOLD_KEYS, compare

from segbalance.contract import DRIFT_FILE  # noqa: E402


class ClassDistributionValidatorSpec(ComponentSpec):
    PARAMETERS = {
        "js_divergence": ExecutionParameter(type=float),
        "max_abs_change": ExecutionParameter(type=float),
        "missing_rate_change": ExecutionParameter(type=float),
        "action": ExecutionParameter(type=str),
    }
    INPUTS = {
        "class_stats": ChannelParameter(type=ClassStats),
        "baseline_class_stats": ChannelParameter(type=ClassStats, optional=True),
        # the previous run's DriftReport (the same latest-artifact resolver): a re-run on the same data
        # keeps the baseline that run judged against
        "previous_report": ChannelParameter(type=DriftReport, optional=True),
    }
    OUTPUTS = {"drift_report": ChannelParameter(type=DriftReport)}


class ClassDistributionValidatorExecutor(base_executor.BaseExecutor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        from segbalance.trainer.class_stats_io import read_class_stats

        current_artifact = artifact_utils.get_single_instance(input_dict["class_stats"])
        baselines = list(input_dict.get("baseline_class_stats") or [])
        if len(baselines) > 1:
            raise ValueError(f"baseline_class_stats: expected at most one artifact (a latest-artifact resolver), "
                             f"got {len(baselines)}: {[a.uri for a in baselines]}")
        current = read_class_stats(current_artifact.uri)
        baseline_uri = baselines[0].uri if baselines else None
        note = None
        if baseline_uri == current_artifact.uri:
            # ClassStatsGen was cached (same span, same config): the latest ClassStats are this run's own.
            # Compared with themselves they would always pass, and a re-run (or the resume of a stopped
            # run) pushed what the gate had blocked: judge against the baseline of the run that made them.
            baseline_uri, note = judged_baseline(current_artifact.uri, input_dict.get("previous_report") or [])
        baseline = read_class_stats(baseline_uri) if baseline_uri else None
        thresholds = {k: float(exec_properties[k]) for k in THRESHOLD_KEYS}
        result = compare(current, baseline, thresholds, exec_properties["action"])
        result["current"] = current_artifact.uri
        result["baseline"] = baseline_uri
        if note:
            result["note"] = note
        output = artifact_utils.get_single_instance(output_dict["drift_report"])
        io_utils.write_string_file(os.path.join(output.uri, DRIFT_FILE), json.dumps(result, indent=1))
        output.set_int_custom_property("blocked", int(result["status"] == "blocked"))
        output.set_string_custom_property("status", result["status"])
        output.set_string_custom_property("action", result["action"])
        detail = "; ".join(result["anomalies"]) or result.get("note", "within thresholds")
        print(f"ClassDistributionValidator: {result['status']} ({detail})", flush=True)


def judged_baseline(current_uri: str, previous_reports: List[types.Artifact]):
    """(baseline URI, note) for a run whose ClassStats are the previous run's: the baseline the
    latest DriftReport compared them with (None: that was a first run); when that report judged
    other ClassStats (the run that made these stopped before the gate), those; without a report,
    None and a note saying nothing could be compared."""
    for report in previous_reports:
        path = os.path.join(report.uri, DRIFT_FILE)
        if not fileio.exists(path):
            continue
        with fileio.open(path) as f:
            judged = json.loads(f.read())
        if judged.get("current") == current_uri and judged.get("baseline") != current_uri:
            return judged.get("baseline"), (f"this run's ClassStats are the previous run's (cached: same data): "
                                            f"compared with that run's baseline, as it was ({report.uri})")
        if judged.get("current") and judged.get("current") != current_uri:
            return judged["current"], (f"this run's ClassStats were made by a run that stopped before the gate: "
                                       f"compared with the ClassStats the last gate judged ({report.uri})")
    return None, ("this run's ClassStats are the previous run's (cached: same data) and no gate decision was "
                  "recorded: nothing to compare with")


class ClassDistributionValidator(base_component.BaseComponent):
    SPEC_CLASS = ClassDistributionValidatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(ClassDistributionValidatorExecutor)

    def __init__(self, class_stats: types.BaseChannel, baseline_class_stats: Optional[types.BaseChannel] = None,
                 js_divergence: float = DriftConfig.js_divergence, max_abs_change: float = DriftConfig.max_abs_change,
                 missing_rate_change: float = DriftConfig.missing_rate_change, action: str = DriftConfig.action,
                 previous_report: Optional[types.BaseChannel] = None):
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
        super().__init__(spec=ClassDistributionValidatorSpec(
            class_stats=class_stats, baseline_class_stats=baseline_class_stats, previous_report=previous_report,
            js_divergence=float(js_divergence), max_abs_change=float(max_abs_change),
            missing_rate_change=float(missing_rate_change), action=action,
            drift_report=types.Channel(type=DriftReport)))
