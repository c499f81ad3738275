"""Pusher whose version folder appears whole: TFX's Pusher, copying into a staging folder first.

TFX's Pusher copies the model straight into ``BASE/<unix time>/`` (``saved_model.pb`` last). A run
stopped during that copy (killed, a full disk) left a numbered folder that was empty, or held no
``saved_model.pb``: the highest version, which TF Serving and similar servers load, was broken
until a later push (QA, session 24). This executor lets TFX copy into
``BASE/.incoming-<time>-<random>/<version>/`` and renames the finished folder to ``BASE/<version>``
(one rename on a local file system; servers ignore folders whose names are not numbers). A stopped
push leaves only the hidden staging folder: ``remove_stale_staging`` (``segbalance run`` calls it
while it holds the run folder's lock; every push removes those over a day old, where no lock guards
the folder: a Kubeflow run) removes those, and SegEvaluator blesses the model again, so
the re-run pushes it (``seg_evaluator.pushed_copy`` finds no version holding it).

Each version folder also holds ``push_record.json`` (``push_record``), written into the staged copy before the
rename: the version, when, the model artifact, the blessing's decision and SegEvaluator's whole evaluation
(mIoU, per-class IoU, confusion matrix, class names, the images and split it scored): a deployer looking
at a served version knows what it is without the run's metadata (QA 74).
"""
from __future__ import annotations

import datetime
import json
import os
import time
import uuid
from typing import Any, Dict, List, Optional

from tfx import types
from tfx.components.pusher import component as pusher_component
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

from segbalance.contract import EVALUATION_FILE, PUSH_RECORD_FILE
from segbalance.trainer.remote_files import is_remote

STAGING_PREFIX = ".incoming-"


STALE_AFTER_S = 24 * 3600  # a staging folder this old is a stopped push's wherever runs are not locked


def staging_started(name: str) -> Optional[int]:
    """The unix time in a staging folder's name (``.incoming-<time>-<random>``), or None for another name."""
    parts = name.rstrip("/")[len(STAGING_PREFIX):].split("-") if name.startswith(STAGING_PREFIX) else []
    return int(parts[0]) if len(parts) == 2 and parts[0].isdigit() else None


def remove_stale_staging(base_directory: str, older_than_s: Optional[float] = None) -> List[str]:
    """Remove the staging folders a stopped push left in ``base_directory`` (only ours, by name); the paths
    removed. Without ``older_than_s``, call it only while no push into that folder can run (``segbalance
    run`` holds its lock); with it, only folders started that long ago go (a Kubeflow run's Pusher, which
    no lock keeps from another run's push, removes those older than ``STALE_AFTER_S``)."""
    if not fileio.isdir(base_directory):
        return []
    now = time.time()
    started = {name.rstrip("/"): staging_started(name) for name in fileio.listdir(base_directory)}
    stale = [os.path.join(base_directory, name) for name, when in started.items()
             if when is not None and (older_than_s is None or now - when > older_than_s)]
    for path in stale:
        fileio.rmtree(path)
    return stale


def move_folder(source: str, target: str) -> None:
    """``source`` renamed to ``target``: one rename on a local file system. An object store (gs://, s3://) has
    no folder rename (TensorFlow's copies object by object in name order, ``saved_model.pb`` before
    ``variables/``; ram:// moved the folder's entry and left the version empty, QA 58): there the files are
    copied one by one, ``saved_model.pb`` last, so a server that loads a version holding one never loads a
    part; checked before the push is recorded (the staging copy is removed after)."""
    if not is_remote(source):
        fileio.rename(source, target)
        return
    base = source.rstrip("/")
    files = sorted((f"{root.rstrip('/')}/{name}" for root, _, names in fileio.walk(base) for name in names),
                   key=lambda path: os.path.basename(path) == "saved_model.pb")
    for path in files:
        destination = target.rstrip("/") + path[len(base):]
        fileio.makedirs(os.path.dirname(destination))
        fileio.copy(path, destination, overwrite=True)
    if not fileio.exists(f"{target.rstrip('/')}/saved_model.pb"):
        raise RuntimeError(f"Pusher: {target} holds no saved_model.pb after the copy from {source}")


def push_record(version: str, model: types.Artifact, blessing: Optional[types.Artifact]) -> Dict[str, Any]:
    """What ``push_record.json`` says about a pushed version (module docstring). The evaluation is read from
    the blessing's ``evaluation_uri`` (SegEvaluator sets it); a blessing of another evaluator has none: null."""
    record: Dict[str, Any] = {
        "version": version,
        "pushed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"uri": model.uri, "artifact_id": model.id},
        "miou": None, "blessing": None, "evaluation": None}
    if blessing is not None:
        # (not its "miou" property: ML Metadata's SQLite store keeps 6 significant digits of a float; QA 78)
        properties = {name: blessing.get_custom_property(name) for name in ("reason", "evaluation_uri",
                      "baseline_model_uri", "baseline_skipped") if blessing.has_custom_property(name)}
        record["blessing"] = {"uri": blessing.uri, "artifact_id": blessing.id, **properties}
        evaluation_file = os.path.join(properties.get("evaluation_uri", ""), EVALUATION_FILE)
        if "evaluation_uri" in properties and fileio.exists(evaluation_file):
            with fileio.open(evaluation_file, "r") as f:
                record["evaluation"] = json.loads(f.read())
            record["miou"] = record["evaluation"].get("miou")
        elif blessing.has_custom_property("miou"):  # no evaluation file: the blessing's (6 significant digits)
            record["miou"] = blessing.get_custom_property("miou")
    return record


class StagedPushExecutor(pusher_executor.Executor):
    """TFX's Pusher executor with the push staged (module docstring); filesystem destinations only."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        self._base = destination.filesystem.base_directory
        self._model = input_dict[standard_component_specs.MODEL_KEY][0]
        self._blessing = (input_dict.get(standard_component_specs.MODEL_BLESSING_KEY) or [None])[0]
        for stale in remove_stale_staging(self._base, older_than_s=STALE_AFTER_S):  # on a cluster nothing else does
            print(f"Pusher: removed {stale}, the unfinished copy of a push stopped over a day ago (never served)",
                  flush=True)
        self._staging = os.path.join(self._base, f"{STAGING_PREFIX}{int(time.time())}-{uuid.uuid4().hex[:8]}")
        destination.filesystem.base_directory = self._staging
        staged = {**exec_properties,
                  standard_component_specs.PUSH_DESTINATION_KEY: proto_utils.proto_to_json(destination)}
        try:
            super().Do(input_dict, output_dict, staged)
        finally:
            if fileio.exists(self._staging):  # empty after the rename; a failed copy's part is not served
                fileio.rmtree(self._staging)

    def _MarkPushed(self, model_push: types.Artifact, pushed_destination: str,
                    pushed_version: Optional[str] = None) -> None:
        version = int(os.path.basename(pushed_destination.rstrip("/")))
        final = os.path.join(self._base, str(version))
        while fileio.exists(final):  # a push in the same second: the next free version, never over one
            version += 1
            final = os.path.join(self._base, str(version))
        record = push_record(str(version), self._model, self._blessing)
        with fileio.open(os.path.join(pushed_destination, PUSH_RECORD_FILE), "w") as f:
            f.write(json.dumps(record, indent=1))
        move_folder(pushed_destination, final)
        super()._MarkPushed(model_push, final, str(version))


class Pusher(pusher_component.Pusher):
    """``tfx.components.Pusher`` with ``StagedPushExecutor`` (same id, spec and outputs)."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(StagedPushExecutor)
