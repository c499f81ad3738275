"""The classes a trained model predicts, recorded beside it.

``run_fn`` writes ``classes.json`` (``{"class_names": [...], "num_classes": C}``) into the
serving model folder (``Format-Serving/``, beside ``model.keras``), so whatever uses the model
later -- warm start (``trainer/task.py``) and the baseline comparison of SegEvaluator -- can tell
whether its output channel ``i`` means this run's class ``i``. Models exported before the file
existed have none: their class count is the number of output channels (the caller reads it), their
names are unknown.
"""
from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence

CLASSES_FILE = "classes.json"  # in the serving model folder, beside model.keras


def write_model_classes(serving_model_dir: str, class_names: Sequence[str]) -> str:
    """Record ``class_names`` (in class-id order) beside the exported model; returns the file."""
    import tensorflow as tf

    path = os.path.join(serving_model_dir, CLASSES_FILE)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps({"class_names": list(class_names), "num_classes": len(class_names)}, indent=1))
    return path


def read_model_classes(serving_model_dir: str) -> Optional[List[str]]:
    """The class names recorded with the model in ``serving_model_dir``, or None (none recorded)."""
    import tensorflow as tf

    path = os.path.join(serving_model_dir, CLASSES_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        names = json.loads(f.read()).get("class_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: 'class_names' must be a list of strings, got {names!r}")
    return names


def class_mismatch(class_names: Sequence[str], model_names: Optional[Sequence[str]],
                   model_num_classes: Optional[int] = None) -> Optional[str]:
    """Why a model with ``model_names`` (or, unrecorded, ``model_num_classes`` output channels) does
    not predict this run's ``class_names`` id for id; None when it does or nothing tells."""
    if model_names is not None:
        if list(model_names) != list(class_names):
            return f"it was trained for classes {list(model_names)}, this run has {list(class_names)}"
    elif model_num_classes is not None and model_num_classes != len(class_names):
        return f"it predicts {model_num_classes} classes, this run has {len(class_names)} ({list(class_names)})"
    return None


def shared_prefix(class_names: Sequence[str], model_names: Optional[Sequence[str]]) -> int:
    """How many classes a model of fewer classes predicts id for id with this run: its recorded names are this
    run's first ones (classes added at the end, as a new class is); 0 otherwise (other names, another order, or
    none recorded)."""
    if model_names is None or not len(model_names) < len(class_names):
        return 0
    return len(model_names) if list(class_names[:len(model_names)]) == list(model_names) else 0
