"""ClassDistributionValidator: the drift gate of scheduled retraining.

Compares the new ClassStats with the **last accepted** ones: those of the latest run whose
gate did not block (``accepted`` in the previous run's DriftReport, ``previous_report``, from a
latest-artifact resolver that runs before this run's ClassStatsGen). A blocked span therefore
never becomes the baseline: a distribution cannot drift in through a chain of blocked runs
(each close to the blocked one before it), and a re-run on the same data (cached ClassStats)
stays blocked. The first run, and stores without a recorded decision, fall back to the latest
ClassStats (``baseline_class_stats``). To accept a new distribution that is expected, run once
with ``action="warn"``: a run that is not blocked is accepted, and the runs after it compare
with its ClassStats.

The measures (``components/drift_metrics.py``): Jensen-Shannon divergence and the largest
absolute change of the class pixel frequencies, classes that were absent before, and the
change in the fraction of images with missing annotations. Above a threshold it records an
anomaly; with ``action="block"`` the DriftReport is marked ``blocked`` and SegEvaluator then
does not bless the model, so Pusher does not push it; with ``action="block_training"`` it is
marked ``blocked`` too and the pipeline's ``tfx.dsl.Cond`` on that mark skips SegTrainer,
SegEvaluator and Pusher (``"warn"``: recorded, not blocking).
Output ``drift_report`` (DriftReport) holds ``drift.json``; the report shows it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.utils import io_utils

from segbalance.components.artifacts import ClassStats, DriftReport
from segbalance.components.component_config import DriftConfig
from segbalance.components.drift_metrics import ACTIONS, THRESHOLD_KEYS, compare, drift_fields

from segbalance.contract import DRIFT_FILE, STATS_FILE  # noqa: E402


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
        # the previous run's DriftReport (the same latest-artifact resolver): its "accepted" ClassStats
        # are the baseline
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
        base = accepted_baseline(current_artifact.uri, baselines[0].uri if baselines else None,
                                 input_dict.get("previous_report") or [])
        thresholds = {k: float(exec_properties[k]) for k in THRESHOLD_KEYS}
        result = compare(current, base.stats, thresholds, exec_properties["action"])
        if base.lost:  # the accepted counts are gone and the last decision blocked: nothing safe to pass against
            result["anomalies"].append(base.note)
            result["status"] = "warned" if result["action"] == "warn" else "blocked"
        result["current"] = current_artifact.uri
        result["baseline"] = base.uri
        # what the next run compares with, and a copy of its counts (the artifact may be deleted): a blocked
        # distribution is not accepted
        accepted = (base.uri, base.stats) if result["status"] == "blocked" else (current_artifact.uri, current)
        result["accepted"] = accepted[0]
        result["accepted_counts"] = drift_fields(accepted[1]) if accepted[1] is not None else None
        notes = [n for n in (result.get("note"), None if base.lost else base.note) if n]
        if notes:
            result["note"] = "; ".join(notes)
        if result["status"] == "blocked":
            result["advice"] = ACCEPT_ADVICE
        output = artifact_utils.get_single_instance(output_dict["drift_report"])
        io_utils.write_string_file(os.path.join(output.uri, DRIFT_FILE), json.dumps(result, indent=1))
        output.set_int_custom_property("blocked", int(result["status"] == "blocked"))
        output.set_string_custom_property("status", result["status"])
        output.set_string_custom_property("action", result["action"])
        detail = "; ".join(result["anomalies"]) or result.get("note", "within thresholds")
        print(f"ClassDistributionValidator: {result['status']} ({detail})"
              + (f"; {ACCEPT_ADVICE}" if result["status"] == "blocked" else ""), flush=True)


ACCEPT_ADVICE = ("if this class distribution is expected, accept it: run once with drift.action: warn (on Kubeflow: "
                 "a pipeline compiled with it); later runs compare with the ClassStats of the last run that was "
                 "not blocked")


@dataclass
class Baseline:
    """What the gate compares with: the ClassStats URI, their content (None: nothing to compare
    with), a note, and ``lost``: the accepted ones are gone while the last decision blocked."""

    uri: Optional[str]
    stats: Optional[dict]
    note: Optional[str] = None
    lost: bool = False


def accepted_by(judged: Dict[str, Any]) -> Optional[str]:
    """The ClassStats URI a gate decision (a ``drift.json``) accepted: its ``accepted`` field; for
    reports written before it existed, the baseline when it blocked, else the ClassStats it judged."""
    if "accepted" in judged:
        return judged["accepted"]
    return judged.get("baseline") if judged.get("status") == "blocked" else judged.get("current")


def accepted_baseline(current_uri: str, latest_uri: Optional[str], previous_reports: List[types.Artifact]) -> Baseline:
    """The ClassStats the latest gate decision accepted (their artifact, or the copy of their counts
    the decision kept when the artifact is gone); without a readable decision (a first run, or
    reports gone), the latest ClassStats ``latest_uri`` unless they are this run's own
    (ClassStatsGen cached), which would compare the data with itself."""
    from segbalance.trainer.class_stats_io import read_class_stats

    note = None
    for report in previous_reports:
        path = os.path.join(report.uri, DRIFT_FILE)
        if not fileio.exists(path):
            continue
        with fileio.open(path) as f:
            judged = json.loads(f.read())
        accepted = accepted_by(judged)
        if not accepted:
            return Baseline(None, None, f"the last gate ({report.uri}) accepted no ClassStats yet: nothing to "
                                        f"compare with")
        if not fileio.exists(os.path.join(accepted, STATS_FILE)):
            if judged.get("accepted_counts"):
                return Baseline(accepted, judged["accepted_counts"],
                                f"the ClassStats the last gate accepted ({accepted}) are gone: compared with the "
                                f"copy of their counts in {path}")
            note = f"the ClassStats the last gate accepted ({accepted}) are gone and {path} keeps no copy of them"
            if judged.get("status") == "blocked" or accepted != latest_uri:
                # the latest ClassStats are the blocked (or unjudged) ones: comparing with them would let them in
                return Baseline(None, None, f"{note}: nothing accepted to compare with", lost=True)
            break
        stats = read_class_stats(accepted)
        if accepted == current_uri:
            return Baseline(accepted, stats, f"these ClassStats were accepted by the last gate ({report.uri}): "
                                             f"the data is unchanged")
        if accepted != latest_uri:
            return Baseline(accepted, stats, f"compared with the ClassStats the last gate accepted ({report.uri}), "
                                             f"not the latest ones ({latest_uri}): those were blocked, or their run "
                                             f"stopped before the gate")
        return Baseline(accepted, stats)
    if latest_uri is None:
        return Baseline(None, None, note)  # a first run: compare() says so
    if latest_uri == current_uri:
        return Baseline(None, None, "; ".join(filter(None, [note, "no gate decision was recorded: nothing to compare "
                                                                   "with"])))
    return Baseline(latest_uri, read_class_stats(latest_uri), f"{note}: compared with the latest ClassStats" if note
                    else None)


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
