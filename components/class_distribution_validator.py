"""ClassDistributionValidator: the drift gate of scheduled retraining.

Compares the new ClassStats with the previous run's (``baseline_class_stats``, from a
latest-artifact Resolver that runs before this run's ClassStatsGen) using
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
        baseline = read_class_stats(baselines[0].uri) if baselines else None
        thresholds = {k: float(exec_properties[k]) for k in THRESHOLD_KEYS}
        result = compare(current, baseline, thresholds, exec_properties["action"])
        result["current"] = current_artifact.uri
        result["baseline"] = baselines[0].uri if baselines else None
        if baselines and baselines[0].uri == current_artifact.uri:
            # ClassStatsGen was cached (same span, same config): the previous run's stats are these.
            result["note"] = "the previous run's ClassStats are this run's (cached: same data)"
        output = artifact_utils.get_single_instance(output_dict["drift_report"])
        io_utils.write_string_file(os.path.join(output.uri, DRIFT_FILE), json.dumps(result, indent=1))
        output.set_int_custom_property("blocked", int(result["status"] == "blocked"))
        output.set_string_custom_property("status", result["status"])
        output.set_string_custom_property("action", result["action"])
        detail = "; ".join(result["anomalies"]) or result.get("note", "within thresholds")
        print(f"ClassDistributionValidator: {result['status']} ({detail})", flush=True)


class ClassDistributionValidator(base_component.BaseComponent):
    SPEC_CLASS = ClassDistributionValidatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(ClassDistributionValidatorExecutor)

    def __init__(self, class_stats: types.BaseChannel, baseline_class_stats: Optional[types.BaseChannel] = None,
                 js_divergence: float = DriftConfig.js_divergence, max_abs_change: float = DriftConfig.max_abs_change,
                 missing_rate_change: float = DriftConfig.missing_rate_change, action: str = DriftConfig.action):
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
        super().__init__(spec=ClassDistributionValidatorSpec(
            class_stats=class_stats, baseline_class_stats=baseline_class_stats,
            js_divergence=float(js_divergence), max_abs_change=float(max_abs_change),
            missing_rate_change=float(missing_rate_change), action=action,
            drift_report=types.Channel(type=DriftReport)))
