"""ClassDistributionValidator: the drift gate of scheduled retraining.

Compares the new ClassStats with the **last accepted** ones (``components/drift_baseline.py``):
those of the latest run whose gate did not block, as the previous run's DriftReport
(``previous_report``, from a latest-artifact resolver that runs before this run's ClassStatsGen)
recorded them, with a copy of their counts. A blocked span therefore never becomes the baseline:
a distribution cannot drift in through a chain of blocked runs, nor through deleted artifacts,
and a re-run on the same data repeats the decision. For a ``data.num_spans`` window the images
the accepted ClassStats counted are left out: the new spans are judged alone, so a shift that
arrives span by span is not diluted by the overlap. To accept a new distribution that is
expected, run once with ``action="warn"``: a run that is not blocked is accepted.

A window that still holds images a gate blocked is blocked again (until a ``warn`` run accepts
them), and the new images beside them are judged without them.

The measures (``components/drift_metrics.py``): Jensen-Shannon divergence and the largest
absolute change of the class pixel frequencies, classes that were absent before, classes
that vanished where they would have shown (``vanished_class_chance``), and the change in
the fraction of images with missing annotations. Above a threshold, and (``significance``) above
what sampling alone gives for this many new images (bootstrap draws of the accepted images'
per-image table), it records an anomaly; with ``action="block"`` the DriftReport is marked
``blocked`` and SegEvaluator then does not bless the model, so Pusher does not push it; with
``action="block_training"`` it is marked ``blocked`` too and the pipeline's ``tfx.dsl.Cond`` on
that mark skips SegTrainer, SegEvaluator and Pusher (``"warn"``: recorded, not blocking).
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
from segbalance.components.drift_baseline import (accepted_baseline, accepted_images, blocked_lines, group_ids,
                                                  held_back, judged_presence, new_images, still_blocked)
from segbalance.components.drift_metrics import (ACTIONS, THRESHOLD_KEYS, aligned_counts, aligned_rows, compare,
                                                 drift_fields, sampling_limits, too_few_units)

from segbalance.contract import BLOCKED_IMAGES_FILE, DRIFT_FILE, counted  # noqa: E402


def ungrouped_note(accepted_groups, new_groups) -> Optional[str]:
    """A note when the accepted images carry group ids and none of the new ones do: the gate then counts
    each new image as a group of its own, so crops of a few scenes weigh as many (QA 63: the README's own
    retraining step ingested a span without --groups after a run of grouped sample data)."""
    if not accepted_groups or not any(g is not None for g in accepted_groups):
        return None
    if new_groups is None or all(g is None for g in new_groups):
        return ("the accepted images have group ids and the new ones none: each new image counts as a group of "
                "its own (ingest with --groups FILE.json, or give run --data a groups.json beside images/)")
    return None


class ClassDistributionValidatorSpec(ComponentSpec):
    PARAMETERS = {
        "js_divergence": ExecutionParameter(type=float),
        "max_abs_change": ExecutionParameter(type=float),
        "missing_rate_change": ExecutionParameter(type=float),
        # optional: a pipeline compiled before it existed runs with the config's default
        "vanished_class_chance": ExecutionParameter(type=float, optional=True),
        "new_class_chance": ExecutionParameter(type=float, optional=True),
        "significance": ExecutionParameter(type=float, optional=True),
        "baseline_min_share": ExecutionParameter(type=float, optional=True),
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
        previous = input_dict.get("previous_report") or []
        base = accepted_baseline(current_artifact.uri, baselines[0].uri if baselines else None, previous)
        blocked_before, blocked_by = held_back(previous)
        window = new_images(current_artifact.uri, current,
                            base if base.from_artifact and base.uri != current_artifact.uri else None, blocked_before)
        judged = window.judged
        option = lambda k: float(exec_properties[k] if exec_properties.get(k) is not None  # noqa: E731
                                 else getattr(DriftConfig, k))  # optional ones: absent from older compiled pipelines
        thresholds = {k: option(k) for k in THRESHOLD_KEYS}
        limits, unsampled, presence = None, None, None
        images = accepted_images(base) if base.stats is not None else None
        if images is not None:
            names = aligned_counts(judged, base.stats)[0]
            counts, missing, groups = images
            accepted_rows = aligned_rows(names, base.stats["class_names"], counts)
            presence = judged_presence(window, names, current["class_names"], accepted_rows, groups)
            if option("significance") > 0:
                limits = sampling_limits(accepted_rows, missing, judged["num_records"], option("significance"),
                                         groups=groups, new_groups=window.judged_groups)
        elif base.stats is not None and option("significance") > 0:
            unsampled = ("the accepted images' per-image table is not there (a copy of their counts): the "
                         "thresholds alone decided, without what sampling alone gives")
        result = compare(judged, base.stats, thresholds, exec_properties["action"], limits, presence)
        judged_drifted = bool(result["anomalies"])
        # a repeated first decision had nothing to compare with then: "(first run)" would be wrong now (QA 25)
        first_note = None if base.repeat and base.uri is None else result.get("note")
        grouping = ungrouped_note(images[2] if images is not None else None,
                                  None if window.judged_table is None else group_ids(window.judged_table))
        notes = [first_note, base.note, unsampled, too_few_units(limits), grouping]
        if window.judged_images is not None and base.stats is not None:
            result["new_images"] = len(window.judged_images)  # judged; 0: the same data as the baseline's
        if judged is current and window.judged_images == [] and window.shared and base.stats is not None:
            notes.append(f"all {counted(window.shared, 'image')} were counted by the ClassStats compared with (the same "
                         f"files again): the data is compared whole")
        if judged is not current:
            notes.append(f"{counted(window.shared, 'image')} were counted by the ClassStats compared with too (the same span "
                         f"again, or spans a data.num_spans window shares): the {judged['num_records']} new ones are "
                         f"judged alone"
                         + (f", without the {len(window.held)} blocked before" if window.held else ""))
        if window.held:  # a window still holding a span the gate blocked: not accepted by a normal span beside it
            result["held_back_images"] = len(window.held)
            result["anomalies"].append(f"{counted(len(window.held), 'image')} the last gate blocked ({blocked_by}) are still in "
                                       f"the data, and no run has accepted them")
        if base.lost:  # the accepted counts are gone: nothing accepted to pass the data against
            result["anomalies"].append(base.note)
            notes = [base.note]
        if result["anomalies"]:
            result["status"] = "warned" if result["action"] == "warn" else "blocked"
        if base.repeat in ("ok", "warned"):  # unchanged data, accepted before: the same decision
            result["status"] = base.repeat
        result["current"] = current_artifact.uri
        result["baseline"] = base.uri
        result["baseline_counts"] = drift_fields(base.stats) if base.stats is not None else None
        # what the next run compares with, and a copy of its counts (the artifact may be deleted): a blocked
        # distribution is not accepted
        accepted = (base.uri, base.stats) if result["status"] == "blocked" else (current_artifact.uri, current)
        kept = kept_baseline(result["status"], base, current_artifact.uri, current, option("baseline_min_share"))
        if kept:  # a small span within the thresholds does not replace a larger accepted one
            accepted = (base.uri, base.stats)
            notes.append(kept)
        if result.get("unsampled_classes") and not result["anomalies"]:  # said with an anomaly; else here (QA 92)
            notes.append(f"{', '.join(result['unsampled_classes'])} left out of the frequency measures: too rare in "
                         f"the accepted data to sample (judged by how many images hold them)")
        result["accepted"] = accepted[0]
        result["accepted_counts"] = drift_fields(accepted[1]) if accepted[1] is not None else None
        notes = [n for n in notes if n]
        if notes:
            result["note"] = "; ".join(dict.fromkeys(notes))
        if result["status"] == "blocked":  # held back only: the new images passed, the blocked ones are still in
            result["advice"] = HELD_ADVICE if window.held and not judged_drifted and not base.lost else ACCEPT_ADVICE
        output = artifact_utils.get_single_instance(output_dict["drift_report"])
        # what the next gates hold back while a window has them: the images blocked before and not accepted
        # since, and the ones judged now when they drifted (a blocked span, not its normal neighbour)
        judged_blocked = window.judged_images if (judged_drifted or base.lost) and window.judged_images else []
        remaining = still_blocked(blocked_before, window.held, judged_blocked, result["status"] == "blocked")
        if remaining:
            lines = blocked_lines(remaining)
            io_utils.write_string_file(os.path.join(output.uri, BLOCKED_IMAGES_FILE), lines)
            result["blocked_images"] = lines.count("\n")
        io_utils.write_string_file(os.path.join(output.uri, DRIFT_FILE), json.dumps(result, indent=1))
        output.set_int_custom_property("blocked", int(result["status"] == "blocked"))
        output.set_string_custom_property("status", result["status"])
        output.set_string_custom_property("action", result["action"])
        detail = "; ".join(result["anomalies"]) or result.get("note", "within thresholds")
        if result["anomalies"] and grouping:  # it bears on the decision: on the console too
            detail += f"; note: {grouping}"
        chances = result.get("new_class_chances") or {}
        listed = [n for n, c in chances.items() if not c < result["thresholds"]["new_class_chance"]]
        if listed:  # new classes that did not block (likely enough by chance, or new_class_chance 0): said too
            detail += "; new classes, not an anomaly: " + ", ".join(
                f"{n} (chance {chances[n]:.2g} if unchanged)" for n in listed)
        after = {"blocked": f"; {result.get('advice')}",
                 "warned": "; accepted: later runs compare with these ClassStats"}.get(result["status"], "")
        print(f"ClassDistributionValidator: {result['status']} ({detail}){after}", flush=True)


def kept_baseline(status: str, base, current_uri: str, current: dict, min_share: float) -> Optional[str]:
    """The note when a run that passed keeps the accepted ClassStats as the next baseline: its own count fewer
    images than ``min_share`` of theirs (``drift.baseline_min_share``); None when its own become the baseline.
    QA 92: a 6-image span that passed became the whole baseline; the next run's limits, widened for 5 accepted
    images, and its measures, without the classes fewer than 2 of them held, let a shift the 66-image baseline
    had blocked pass and be pushed. A run that warns (an accepted change) always replaces the baseline."""
    if status != "ok" or base.stats is None or base.uri in (None, current_uri):
        return None
    new, before = int(current.get("num_records") or 0), int(base.stats.get("num_records") or 0)
    if not new < min_share * before:
        return None
    return (f"the baseline stays the ClassStats the last gate accepted ({base.uri}): these count "
            f"{counted(new, 'image')}, fewer than {min_share:g} of the {before} those counted "
            f"(drift.baseline_min_share); to make these the baseline, run once with drift.action: warn")


ACCEPT_ADVICE = ("if this class distribution is expected, accept it: run once with drift.action: warn (on Kubeflow: "
                 "a pipeline compiled with it); later runs compare with the ClassStats of the last run that was "
                 "not blocked")


HELD_ADVICE = ("the new images are within the thresholds; the images blocked before are still in the data (the same "
               "files, delivered again or in a data.num_spans window that still holds their span): remove them from "
               "the data, or wait until their span leaves the window, and the runs pass again; to train on them as "
               "they are, run once with drift.action: warn")


class ClassDistributionValidator(base_component.BaseComponent):
    SPEC_CLASS = ClassDistributionValidatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(ClassDistributionValidatorExecutor)

    def __init__(self, class_stats: types.BaseChannel, baseline_class_stats: Optional[types.BaseChannel] = None,
                 js_divergence: float = DriftConfig.js_divergence, max_abs_change: float = DriftConfig.max_abs_change,
                 missing_rate_change: float = DriftConfig.missing_rate_change, action: str = DriftConfig.action,
                 previous_report: Optional[types.BaseChannel] = None,
                 vanished_class_chance: float = DriftConfig.vanished_class_chance,
                 significance: float = DriftConfig.significance,
                 new_class_chance: float = DriftConfig.new_class_chance,
                 baseline_min_share: float = DriftConfig.baseline_min_share):
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
        super().__init__(spec=ClassDistributionValidatorSpec(
            class_stats=class_stats, baseline_class_stats=baseline_class_stats, previous_report=previous_report,
            js_divergence=float(js_divergence), max_abs_change=float(max_abs_change),
            missing_rate_change=float(missing_rate_change), vanished_class_chance=float(vanished_class_chance),
            significance=float(significance), new_class_chance=float(new_class_chance),
            baseline_min_share=float(baseline_min_share), action=action,
            drift_report=types.Channel(type=DriftReport)))
