"""What a local run produced, read back from its ML Metadata store (SQLite)."""
from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import signal
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Set, Tuple

from segbalance import contract
from segbalance.contract import BLOCKED_REPORT_ID, message_excerpt
from segbalance.pipeline.output_guard import PREVIOUS_SUMMARY_FILE, SUMMARY_FILE


class MetadataStoreError(contract.UserError, RuntimeError):
    """A ``metadata.sqlite`` that ML Metadata cannot open (empty, not SQLite, damaged): one line, exit 2."""


def open_store(metadata_path: str, writable: bool = False):
    """The run's ML Metadata store, read-only unless ``writable``; FileNotFoundError without one,
    MetadataStoreError when the file is no store ML Metadata can open."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    if not os.path.isfile(metadata_path):
        raise FileNotFoundError(f"no ML Metadata store at {metadata_path}: run `segbalance run` first")
    modes = metadata_store_pb2.SqliteMetadataSourceConfig
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = modes.READWRITE if writable else modes.READONLY
    try:
        return metadata_store.MetadataStore(config)
    except RuntimeError as exc:  # MLMD's "file is not a database", or an empty file opened read-only
        found = re.search(r"executing query: (.*?) query:", " ".join(str(exc).split()))
        reason = ("an empty file" if os.path.getsize(metadata_path) == 0
                  else found.group(1) if found else message_excerpt(exc, 200))
        if not writable and os.path.exists(metadata_path + "-journal"):  # QA 91 M1: not damaged, and moving it
            # away from its journal would damage it
            journal = os.path.basename(metadata_path) + "-journal"
            raise MetadataStoreError(f"{metadata_path} cannot be read ({reason}): a run was stopped while it wrote "
                                     f"the store ({journal} is beside it); run `segbalance run` in this folder "
                                     f"once, which rolls the unfinished write back, and keep the two files "
                                     f"together") from exc
        raise MetadataStoreError(f"{metadata_path} cannot be opened as an ML Metadata store ({reason}): it is empty "
                                 f"or damaged; move it aside with the pipeline_root/ folder beside it (the "
                                 f"artifacts it records: a new store would write into their folders), or give a new "
                                 f"--output-dir, and run `segbalance run` again (nothing is taken from the cache)"
                                 ) from exc


def latest_artifact(store, type_name: str, live_only: bool = True):
    """The newest artifact of a type (highest id), or None."""
    from ml_metadata.proto import metadata_store_pb2

    try:
        artifacts = store.get_artifacts_by_type(type_name)
    except Exception:  # type not registered yet
        return None
    if live_only:
        artifacts = [a for a in artifacts if a.state == metadata_store_pb2.Artifact.LIVE]
    return max(artifacts, key=lambda a: a.id) if artifacts else None


def executions_by_component(store) -> Dict[str, List[str]]:
    """{component id: [execution states, oldest first]} from the TFX node contexts."""
    from ml_metadata.proto import metadata_store_pb2

    out: Dict[str, List[str]] = {}
    for context in store.get_contexts_by_type("node"):
        node = context.name.split(".", 1)[-1]  # "<pipeline>.<node id>"
        executions = sorted(store.get_executions_by_context(context.id), key=lambda e: e.id)
        out[node] = [metadata_store_pb2.Execution.State.Name(e.last_known_state) for e in executions]
    return out


def _has_type(store, type_name: str) -> bool:
    try:
        store.get_artifact_type(type_name)
        return True
    except Exception:
        return False


@dataclass
class RunOutputs:
    """What the nodes of one pipeline run made, or took from the cache (``last_run_outputs``)."""

    artifacts: Dict[str, Dict[str, Any]]  # node id -> output key -> MLMD artifact
    cached: Set[str]  # the nodes whose execution was a cache hit

    def get(self, node: str, key: str):
        return self.artifacts.get(node, {}).get(key)


def last_run_outputs(store, with_report: bool = False) -> Optional[RunOutputs]:
    """The outputs of the latest pipeline run (its ``pipeline_run`` context): what each node of that
    run produced, or reused from the cache (a cached execution links the earlier artifacts). A node
    the run skipped (drift gate) or did not reach has none. ``with_report``: the latest run that
    wrote its report (a run stopped before the end is passed over), else the latest. None when the
    store records no run. The newest artifact of a type is not this: a cached node's outputs are
    older than another run's, and a skipped node leaves the previous run's newest."""
    from ml_metadata.proto import metadata_store_pb2

    runs = sorted(store.get_contexts_by_type("pipeline_run"), key=lambda c: c.id, reverse=True)
    if not runs:
        return None
    finished = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)
    node_of = {}
    for context in store.get_contexts_by_type("node"):
        for execution in store.get_executions_by_context(context.id):
            node_of[execution.id] = context.name.split(".", 1)[-1]

    def finished_in(run):
        return [e for e in store.get_executions_by_context(run.id) if e.last_known_state in finished]

    def reported(executions) -> bool:
        return bool({node_of.get(e.id) for e in executions} & {"DataReport", BLOCKED_REPORT_ID})

    executions = finished_in(runs[0])
    if with_report and not reported(executions):  # stopped before its report: the newest run that wrote one
        executions = next((ex for ex in map(finished_in, runs[1:]) if reported(ex)), executions)
    events = [ev for ev in store.get_events_by_execution_ids([e.id for e in executions])
              if ev.type == metadata_store_pb2.Event.OUTPUT]
    by_id = {a.id: a for a in store.get_artifacts_by_id(list({ev.artifact_id for ev in events}))}
    artifacts: Dict[str, Dict[str, Any]] = {node_of.get(e.id, "?"): {} for e in executions}
    for ev in events:
        key = ev.path.steps[0].key if ev.path.steps else ""
        artifacts[node_of.get(ev.execution_id, "?")][key] = by_id[ev.artifact_id]
    cached = {node_of.get(e.id, "?") for e in executions if e.last_known_state == metadata_store_pb2.Execution.CACHED}
    return RunOutputs(artifacts, cached)


def _custom(artifact, key: str):
    value = artifact.custom_properties.get(key)
    if value is None:
        return None
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def examples_spans(store, examples) -> Tuple[int, str, dict, Dict[int, str]]:
    """(span, input_base, the first split of the input config, {span: its folder}) of an Examples
    artifact, from the ImportExampleGen execution that produced it: its ``span`` property, or for a
    ``data.num_spans`` window the spans its links name (``data-span<M>-*``, see spans.py); when the
    files are gone, the span alone."""
    from ml_metadata.proto import metadata_store_pb2

    from segbalance.pipeline.spans import WINDOW_LINK

    producer_id = min(ev.execution_id for ev in store.get_events_by_artifact_ids([examples.id])
                      if ev.type == metadata_store_pb2.Event.OUTPUT)
    producer = store.get_executions_by_id([producer_id])[0]
    span, input_base = _custom(examples, "span"), _custom(producer, "input_base")
    split = json.loads(_custom(producer, "input_config"))["splits"][0]
    span_dirs: Dict[int, str] = {}
    for f in sorted(glob.glob(os.path.join(input_base, split["pattern"]))):
        match = WINDOW_LINK.match(os.path.basename(f))
        number = int(match.group(1)) if match else span
        span_dirs.setdefault(number, os.path.dirname(os.path.realpath(f)))
    if not span_dirs:  # the files are gone: the span is all ML Metadata still says
        span_dirs[span] = os.path.join(input_base, f"Span-{span}")
    return span, input_base, split, span_dirs


def data_used(store) -> Optional[dict]:
    """What this run's ImportExampleGen read, from ML Metadata (not from what `run` meant to read).

    The Examples artifact is the output of ImportExampleGen's latest finished execution (a
    cache hit links the earlier artifact to the new execution). Its ``span`` property and the
    producing execution's ``input_base`` and resolved pattern give the files; the spans are
    that span, or for a ``data.num_spans`` window the spans its links name
    (``data-span<M>-*``, see spans.py). ``files_unchanged``: the files matched now still have
    the ``input_fingerprint`` ExampleGen recorded (count, bytes, modification times).
    """
    from ml_metadata.proto import metadata_store_pb2

    nodes = [c for c in store.get_contexts_by_type("node") if c.name.split(".", 1)[-1] == "ImportExampleGen"]
    finished = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)
    executions = [e for c in nodes for e in store.get_executions_by_context(c.id) if e.last_known_state in finished]
    if not executions:
        return None
    execution = max(executions, key=lambda e: e.id)
    output = [ev.artifact_id for ev in store.get_events_by_execution_ids([execution.id])
              if ev.type == metadata_store_pb2.Event.OUTPUT]
    if not output:
        return None
    examples = store.get_artifacts_by_id(output[:1])[0]
    span, input_base, split, span_dirs = examples_spans(store, examples)
    pattern = os.path.join(input_base, split["pattern"])

    from tfx.utils import io_utils

    used = {"examples": examples.uri, "span": span, "input_base": input_base, "pattern": pattern,
            "files_unchanged": io_utils.generate_fingerprint(split["name"], pattern)
            == _custom(examples, "input_fingerprint")}
    used["spans"] = sorted(span_dirs)
    used["span_folders"] = {str(k): v for k, v in sorted(span_dirs.items())}
    used.update(records={}, not_ingested={}, files_not_read={}, unmatched_keys={})
    for number, folder in span_dirs.items():
        for key, value in span_ingest_facts(folder).items():
            used[key][str(number)] = value
    return used


def span_ingest_facts(folder: str) -> dict:
    """What a span's ``ingest_report.json`` says: ``records`` (its count, only while the report is current:
    a file added after ingest is not counted, QA 25), ``not_ingested`` (image pairs skipped, each with its
    reason in the report), ``files_not_read`` (files of the data folders ingest does not read: no image or mask
    suffix, a sub-folder, no stem ending; listed in the report's ``skipped_files``, QA 89 L1) and
    ``unmatched_keys`` (labelled-set and group keys of no image: not used; QA 68: said once on the console, then
    never again); a key is left out when there is nothing to say."""
    from segbalance.pipeline.ingest_reports import REPORT_NAME, current_ingest_report, unmatched_key_counts

    path = os.path.join(folder, REPORT_NAME)
    current = current_ingest_report(folder)
    report = current or _read_json(path) or {}  # (read once when it is current)
    facts = {}
    if current and isinstance(current.get("num_written"), int):
        facts["records"] = current["num_written"]
    if report.get("num_bad"):
        facts["not_ingested"] = {"pairs": int(report["num_bad"]), "report": path}
    if report.get("num_skipped_files"):
        facts["files_not_read"] = {"files": int(report["num_skipped_files"]), "report": path}
    keys = unmatched_key_counts(report)
    if any(keys.values()):
        facts["unmatched_keys"] = {**keys, "report": path}
    return facts


def summarize(paths: dict) -> dict:
    """What the latest run used and made (``last_run_outputs``), and the model being served."""
    store = open_store(paths["metadata"])
    summary: dict = {"output_dir": paths["output_dir"], "metadata": paths["metadata"]}
    data = data_used(store)
    if data is not None:
        summary["data"] = data
    run = last_run_outputs(store) or RunOutputs({}, set())
    made = run.get

    stats = made("ClassStatsGen", "class_stats")
    if stats is not None:
        summary["class_stats"] = stats.uri
        counts = (_read_json(os.path.join(stats.uri, "class_stats.json")) or {}).get("split_counts")
        if counts:  # records ClassStatsGen kept out of Transform, training and evaluation, every split
            summary["quarantined"] = {
                "records": sum(c["quarantined"] for c in counts.values()),
                "by_split": {split: c["quarantined"] for split, c in sorted(counts.items())},
                "read": sum(c["read"] for c in counts.values()),
                "list": os.path.join(stats.uri, "quarantine.jsonl")}
    evaluation = made("SegEvaluator", "evaluation")
    drift = made("ClassDistributionValidator", "drift_report")
    if drift is not None:  # the gate's decision, for a scheduler that reads the summary, not the console
        summary["drift"] = {"status": _custom(drift, "status"), "action": _custom(drift, "action"),
                            "report": os.path.join(drift.uri, "drift.json")}
    if drift is not None and _custom(drift, "blocked") == 1 and _custom(drift, "action") == "block_training":
        # SegTrainer, SegEvaluator and Pusher were skipped: an older evaluation is not this run's
        detail = _read_json(os.path.join(drift.uri, "drift.json")) or {}
        summary["training_blocked"] = True
        summary["blessing_reason"] = ("class-distribution drift blocked training: "
                                      + ("; ".join(detail.get("anomalies", [])) or "see drift.json")
                                      + f" ({drift.uri}/drift.json)")
        evaluation = None
    if evaluation is not None:
        result = _read_json(os.path.join(evaluation.uri, "evaluation.json"))
        if result:
            summary.update(miou=result["miou"], num_eval_images=result["num_images"],
                           blessed=result["blessed"], blessing_reason=result["reason"],
                           per_class_iou=result["per_class_iou"], evaluation=evaluation.uri)
            sources = result.get("truth_sources", {})
            if sources.get("reference_masks"):
                summary["truth"] = f"complete masks for {sources['reference_masks']} of {result['num_images']} images"
    pushes = [a for a in store.get_artifacts_by_type("PushedModel") if _custom(a, "pushed") == 1] \
        if _has_type(store, "PushedModel") else []
    if pushes:  # the model being served: the newest push of any run
        latest_push = max(pushes, key=lambda a: a.id)
        summary["pushed_model"] = _custom(latest_push, "pushed_destination")
        pushed = made("Pusher", "pushed_model")
        summary["pushed_this_run"] = bool(pushed is not None and "Pusher" not in run.cached
                                          and pushed.id == latest_push.id)
    served = served_version(paths.get("serving_model_dir"))
    if served is not None and (not summary.get("pushed_model")
                               or os.path.realpath(summary["pushed_model"]) != os.path.realpath(served)):
        # a push that reached its place but not ML Metadata (the run stopped between the two; QA 27: every later
        # run said "pushed model: none" while that version was served)
        summary.update(pushed_model=served, pushed_this_run=False, push_unrecorded=True)
    model = made("SegTrainer", "model")
    if model is not None:
        summary["model"] = model.uri
    report = made("DataReport", "report") or made(BLOCKED_REPORT_ID, "report")
    if report is not None and os.path.isfile(os.path.join(report.uri, "report.html")):
        summary["report_artifact"] = os.path.join(report.uri, "report.html")
    return summary


def served_version(destination: Optional[str]) -> Optional[str]:
    """The newest version folder (digits only, Pusher's names) in the local push destination: the model a
    model server loads; None without one."""
    if not destination or not os.path.isdir(destination):
        return None
    versions = [name for name in os.listdir(destination)
                if contract.is_version_folder(name) and os.path.isdir(os.path.join(destination, name))]
    return os.path.normpath(os.path.join(destination, max(versions, key=int))) if versions else None


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# The run directory's summary of the latest `segbalance run` (run.py), and the one before it (their
# names: output_guard, beside the other names a run writes): a run sets the previous summary aside
# when it takes the folder, so run_summary.json never describes an earlier run while a later one
# failed, was refused or is under way.


def set_aside_summary(output_dir: str) -> Optional[str]:
    """Renames OUTPUT/run_summary.json to run_summary.previous.json (replacing an older one); its new
    path, or None when there was none."""
    current, previous = (os.path.join(output_dir, name) for name in (SUMMARY_FILE, PREVIOUS_SUMMARY_FILE))
    if not os.path.isfile(current):
        return None
    os.replace(current, previous)
    return previous


def take_killed_run(output_dir: str) -> Optional[dict]:
    """The ``running`` summary a run that holds the folder's lock finds is a killed run's (SIGKILL, power
    loss): removed, so that run_summary.previous.json keeps the last summary before it (QA 71: the stub
    replaced it), and returned as ``{"pid", "started"}``; None when there is none."""
    path = os.path.join(output_dir, SUMMARY_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("status") != "running":
        return None
    os.remove(path)
    return {"pid": summary.get("pid"), "started": summary.get("started")}


def kept_previous_summary(output_dir: str) -> Optional[str]:
    """OUTPUT/run_summary.previous.json when there is one."""
    path = os.path.join(output_dir, PREVIOUS_SUMMARY_FILE)
    return path if os.path.isfile(path) else None


def running_summary(previous: Optional[str]) -> dict:
    """What run_summary.json says while a run is under way, and after a run that was killed (SIGKILL, power
    loss): ``running`` with a process id that no longer runs (QA 70: a killed run left no summary at all)."""
    import datetime

    return {"status": "running", "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "previous_summary": previous}


def write_summary(output_dir: str, summary: dict) -> str:
    """OUTPUT/run_summary.json, written beside and renamed over (never half-written). On a full disk
    (ENOSPC), which has no block for the new file, it is written over the summary already there when it fits
    the blocks that file holds (``_over_its_own_blocks``), so a run that fails on a full disk does not leave
    its ``running`` summary behind (QA 77); otherwise the OSError stands and the earlier file stays whole."""
    path = os.path.join(output_dir, SUMMARY_FILE)
    text = json.dumps(summary, indent=1)
    try:
        with open(f"{path}.partial", "w") as f:
            f.write(text)
        os.replace(f"{path}.partial", path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(f"{path}.partial")
        if exc.errno != errno.ENOSPC or not _over_its_own_blocks(path, text.encode()):
            raise
    return path


def _over_its_own_blocks(path: str, data: bytes) -> bool:
    """``data`` written over ``path`` in place when it fits the blocks the file has on disk: on a file system
    that overwrites in place (ext4, XFS, tmpfs: checked on a full tmpfs and ext4, QA 87) no block is allocated,
    so the write does not fail for space part-way. A copy-on-write one (btrfs, ZFS) allocates anyway and may
    refuse it, and a reader during the write may see a mix: the fallback of a full disk only, where the
    alternative is a summary that says ``running`` for a run that ended. False when it does not fit, or
    ``path`` is missing or cannot be written."""
    try:
        if len(data) > os.stat(path).st_blocks * 512:
            return False
        with open(path, "r+b") as f:
            f.write(data)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
        return True
    except OSError:
        return False


def unfinished_summary(exc: BaseException, log: Optional[str], previous: Optional[str]) -> dict:
    """The summary of a run that did not finish: ``status`` refused (a mistake in the config or data,
    exit 2), interrupted (Ctrl-C) or failed, the one-line error, the log and the previous summary."""
    from segbalance.pipeline.stop_signals import stopped

    signum = stopped(exc)  # also a stop raised inside TensorFlow's callbacks as another type (a RuntimeError)
    status = ("interrupted" if signum is not None else "refused" if isinstance(exc, contract.UserError)
              else "failed")
    message, kind = " ".join(str(exc).split()), type(exc).__name__
    if signum is not None and not isinstance(exc, KeyboardInterrupt):
        kind, message = ("Terminated" if signum == signal.SIGTERM else "KeyboardInterrupt",
                         f"(raised as {kind}: {message[:160]})")
    # a refusal's message is the one line the user reads; otherwise the kind of error leads, once (a bare
    # Ctrl-C has no message: "KeyboardInterrupt")
    error = (message or kind) if status == "refused" else f"{kind}: {message}" if message else kind
    return {"status": status, "error": error, "log": log, "previous_summary": previous}
