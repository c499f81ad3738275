"""Keras callbacks of the training recipe: best epoch + early stopping, and a frozen encoder.

``BestEpoch`` follows a validation metric (``val_miou``, larger is better): it keeps the
weights of the best epoch, stops the training after ``patience`` epochs without a better
value (``training.early_stopping_patience``; None: never), counted from epoch ``min_epochs`` on
when the best is older (``training.min_epochs``), and, with ``restore``
(``training.restore_best``), puts the best weights back when training ends, so the model
``run_fn`` exports is the best epoch. Its state (best value, epoch, weights) is written to
``state_dir`` at each improvement, inside the BackupAndRestore folder: a resumed training
keeps its best epoch and its patience count. Place it *before* BackupAndRestore in the
callback list (BackupAndRestore deletes its folder when training ends). Without the
metric in the logs (no eval split) it does nothing and the last epoch is exported.

``FreezeEncoder`` keeps a nested layer (the backbone ``encoder``) frozen for the first
``epochs`` epochs: ``trainable = False`` (Keras then also runs its BatchNorm layers in
inference mode) and the train function is rebuilt when that changes; the optimizer is
built on every variable first, so its state covers the encoder once unfrozen. It only
looks at the epoch number, so a resumed training freezes or not as a fresh one would.

``SafeBackupAndRestore`` is Keras's ``BackupAndRestore`` with each file replaced whole (written beside
it, then renamed over it): Keras writes ``latest.weights.h5`` in place, and a training killed while it
wrote left a file no resume could read (QA, session 19: every later run of that training stopped with
an h5py traceback). ``set_aside_unreadable_backup`` moves such a backup (from an earlier release or a
damaged disk) aside with one line, and the training starts again from its first epoch. The state files
of ``BestEpoch`` and the plateau schedule are replaced whole too (``replace_file``).

``StopOnDivergence`` ends a training whose loss or weights are no longer finite numbers with a
``TrainingDivergedError`` (one line, exit 2 from ``segbalance run``). Keras trains on after a NaN: the
weights stay NaN, the model then predicts the first class everywhere, and its validation mIoU is a number
(session 30: a learning rate of 1e6 exported a model of NaN weights that BestEpoch had "restored", val_miou
0.29). It raises at the end of an epoch whose training or validation loss or a weight is not finite,
first in the callback list, so BestEpoch, EpochLog and the backup never record that epoch: the backup
keeps the last finite one.

``ClassWeightDecay`` moves a ``SegmentationLoss``'s class weights toward 1 (the loss's
``class_weight_decay_epochs``): at each epoch's start it sets the loss's mix from the epoch
number (so a resumed training continues the decay where it was) and writes it to the
epoch's logs as ``class_weight_mix`` (History and training_summary.json keep the curve).
"""
from __future__ import annotations

import io
import json
import math
import os
import time
import zipfile
from typing import Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf

from segbalance.contract import UserError
from segbalance.trainer.remote_files import is_remote, local_copy_of

MONITOR = "val_miou"
BACKUP_WEIGHTS, BACKUP_METADATA = "latest.weights.h5", "training_metadata.json"  # BackupAndRestore's files


def replace_file(path: str, content) -> None:
    """Writes ``content`` (bytes or str) beside ``path`` and renames it over ``path``: a process stopped
    while writing leaves the previous file whole (on object stores the rename is a copy of a complete file)."""
    partial = f"{path}.partial"
    with tf.io.gfile.GFile(partial, "wb" if isinstance(content, bytes) else "w") as f:
        f.write(content)
    tf.io.gfile.rename(partial, path, overwrite=True)


class SafeBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose weights and metadata files are replaced whole (module docstring)."""

    def _save_model(self):
        tf.io.gfile.makedirs(self.backup_dir)
        incoming = f"{self.backup_dir.rstrip('/')}/incoming.weights.h5"  # Keras wants the .weights.h5 ending
        with local_copy_of(incoming, write=True) as local:  # h5py writes local files only (gs:// backup: QA 58)
            self.model.save_weights(filepath=local, overwrite=True)
        tf.io.gfile.rename(incoming, self._weights_path, overwrite=True)
        replace_file(self._training_metadata_path,
                     json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))

    def on_train_begin(self, logs=None):  # Keras resumes with model.load_weights(path): h5py, local files only
        if not is_remote(self._weights_path) or not tf.io.gfile.exists(self._weights_path):
            return super().on_train_begin(logs)
        remote = self._weights_path
        with local_copy_of(remote) as local:
            self._weights_path = local
            try:
                return super().on_train_begin(logs)
            finally:
                self._weights_path = remote


def unreadable_backup(backup_dir: str) -> Optional[str]:
    """Why the files in the training backup ``backup_dir`` cannot be read (None: readable, or no backup):
    BackupAndRestore's, and the state files of the callbacks kept beside them (``*.json``, ``*.npz``: a
    damaged ``best_epoch.json`` was a traceback at every retry, QA 91 L3)."""
    import h5py

    folder = backup_dir.rstrip("/")
    weights = f"{folder}/{BACKUP_WEIGHTS}"
    # listed, not globbed: a training.backup_dir holding '[' matched no file, and a damaged one went unseen (QA 97)
    names = sorted(tf.io.gfile.listdir(folder)) if tf.io.gfile.isdir(folder) else []
    path = backup_dir
    try:
        for path in [f"{folder}/{n}" for n in names if n.endswith(".json")]:  # BackupAndRestore's metadata too
            with tf.io.gfile.GFile(path) as f:
                state = json.loads(f.read())
            if not isinstance(state, dict):
                raise ValueError("not a JSON object")
            if os.path.basename(path) == BACKUP_METADATA:
                int(state["epoch"])
        if tf.io.gfile.exists(weights):
            path = weights
            with tf.io.gfile.GFile(weights, "rb") as f, h5py.File(io.BytesIO(f.read()), "r") as h5:
                h5.visititems(lambda _, item: item[()] if isinstance(item, h5py.Dataset) else None)
        for path in [f"{folder}/{n}" for n in names if n.endswith(".npz")]:
            with tf.io.gfile.GFile(path, "rb") as f, np.load(io.BytesIO(f.read())) as arrays:
                [arrays[name] for name in arrays.files]
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError, zipfile.BadZipFile) as exc:
        return f"{os.path.basename(path)}: {type(exc).__name__}: {' '.join(str(exc).split())}"
    return None


def set_aside_unreadable_backup(backup_dir: str) -> Optional[str]:
    """Renames a backup whose files cannot be read to ``BACKUP.unreadable-<time>`` (kept, not deleted) and
    says so in one line, so the training starts from its first epoch; returns the new name."""
    problem = unreadable_backup(backup_dir)
    if problem is None:
        return None
    aside = f"{backup_dir.rstrip('/')}.unreadable-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    tf.io.gfile.rename(backup_dir, aside)
    print(f"SegTrainer: the training backup in {backup_dir} cannot be read ({problem}; a run stopped while "
          f"writing it); moved to {aside}, training starts from the first epoch", flush=True)
    return aside


class BestEpoch(keras.callbacks.Callback):
    STATE, WEIGHTS = "best_epoch.json", "best_epoch_weights.npz"

    def __init__(self, monitor: str = MONITOR, patience: Optional[int] = None, restore: bool = True,
                 state_dir: Optional[str] = None, min_epochs: int = 0):
        super().__init__()
        self.monitor, self.patience, self.restore, self.state_dir = monitor, patience, restore, state_dir
        self.min_epochs = int(min_epochs)
        self.best, self.best_epoch, self.stopped_epoch, self._weights = -math.inf, None, None, None

    def _path(self, name: str) -> str:
        return f"{self.state_dir.rstrip('/')}/{name}"

    def on_train_begin(self, logs=None):
        self.best, self.best_epoch, self.stopped_epoch, self._weights = -math.inf, None, None, None
        if self.state_dir and tf.io.gfile.exists(self._path(self.STATE)):  # a resumed training
            with tf.io.gfile.GFile(self._path(self.STATE)) as f:
                state = json.load(f)
            self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        value = float(value)
        if value > self.best:
            self.best, self.best_epoch = value, epoch
            self._weights = [np.array(w) for w in self.model.get_weights()]
            self._save()
        elif self.patience is not None and epoch - max(-1 if self.best_epoch is None else self.best_epoch,
                                                       self.min_epochs - 1) >= self.patience:
            # (a NaN is no improvement; before any number, best_epoch is None: QA 27, a TypeError)
            self.stopped_epoch = epoch
            self.model.stop_training = True
            since = (f"not improved on {self.best:.4f} (epoch {self.best_epoch + 1})" if self.best_epoch is not None
                     else "not been a number")
            print(f"SegTrainer: early stopping after epoch {epoch + 1}: {self.monitor} has {since} for "
                  f"{self.patience} epoch(s)", flush=True)

    def _save(self):
        if not self.state_dir:
            return
        tf.io.gfile.makedirs(self.state_dir)
        buffer = io.BytesIO()
        np.savez(buffer, *self._weights)
        replace_file(self._path(self.WEIGHTS), buffer.getvalue())
        # written last: names complete weights
        replace_file(self._path(self.STATE), json.dumps({"best": self.best, "best_epoch": self.best_epoch}))

    def best_weights(self):
        if self._weights is None and self.best_epoch is not None and self.state_dir:
            with tf.io.gfile.GFile(self._path(self.WEIGHTS), "rb") as f:
                arrays = np.load(io.BytesIO(f.read()))
                self._weights = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
        return self._weights

    def on_train_end(self, logs=None):
        if self.restore and self.best_epoch is not None:
            self.model.set_weights(self.best_weights())
            print(f"SegTrainer: restored the weights of epoch {self.best_epoch + 1} "
                  f"({self.monitor} {self.best:.4f})", flush=True)

    def summary(self) -> dict:
        return {"best_epoch": self.best_epoch, f"best_{self.monitor}": None if self.best_epoch is None else self.best,
                "stopped_epoch": self.stopped_epoch, "restored_best": bool(self.restore and self.best_epoch is not None)}


class EpochLog(keras.callbacks.Callback):
    """Every epoch's logs, kept in ``state_dir`` (the training's backup folder) so a resumed training's
    history starts at its first epoch: Keras's ``History`` holds only the epochs of the ``fit`` call that
    ran them, and a training resumed at epoch 3 recorded epochs 3.. as its whole history (QA, session 25:
    the experiment's row counted 2 of 3 epochs and read the best epoch's score off the wrong one). Place it
    before BackupAndRestore, after the callbacks that write to the logs; an epoch run again after a stop
    replaces its earlier record."""
    FILE = "epoch_logs.json"

    def __init__(self, state_dir: Optional[str] = None):
        super().__init__()
        self.state_dir, self.rows = state_dir, {}

    def _path(self) -> str:
        return f"{self.state_dir.rstrip('/')}/{self.FILE}"

    def on_train_begin(self, logs=None):
        self.rows = {}
        if self.state_dir and tf.io.gfile.exists(self._path()):  # a resumed training
            with tf.io.gfile.GFile(self._path()) as f:
                self.rows = {int(epoch): values for epoch, values in json.load(f).items()}

    def on_epoch_end(self, epoch, logs=None):
        self.rows = {e: values for e, values in self.rows.items() if e < epoch}
        self.rows[epoch] = {key: float(value) for key, value in (logs or {}).items()}
        if self.state_dir:
            tf.io.gfile.makedirs(self.state_dir)
            replace_file(self._path(), json.dumps(self.rows))

    def epochs(self) -> List[int]:
        return sorted(self.rows)

    def history(self) -> Dict[str, List[float]]:
        """``History.history``'s form over every epoch (a metric an epoch lacks: NaN)."""
        keys = list(dict.fromkeys(key for epoch in self.epochs() for key in self.rows[epoch]))
        return {key: [self.rows[epoch].get(key, math.nan) for epoch in self.epochs()] for key in keys}


class TrainingDivergedError(UserError, ValueError):
    """The training loss or the model's weights stopped being finite numbers: the settings are the user's
    to change (a lower learning rate, say), so `segbalance run` prints it as one line and exits 2."""


def non_finite_weights(model) -> List[str]:
    """Paths of the model's variables that hold a NaN or an infinity."""
    return [variable.path for variable in model.weights
            if not bool(keras.ops.all(keras.ops.isfinite(variable)))]


class StopOnDivergence(keras.callbacks.Callback):
    """Raises TrainingDivergedError at the end of an epoch whose mean training or validation loss is not
    finite or after which a weight is not (module docstring); ``advice`` says what to change. Place it first."""

    def __init__(self, advice: str):
        super().__init__()
        self.advice = advice

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        found = [f"the {name} loss is {float(logs[key])}"
                 for key, name in (("loss", "training"), ("val_loss", "validation"))
                 if logs.get(key) is not None and not math.isfinite(float(logs[key]))]
        broken = non_finite_weights(self.model)
        if broken:
            found.append(f"{len(broken)} weight variable(s) hold NaN or infinity ({', '.join(broken[:2])}"
                         f"{', ...' if len(broken) > 2 else ''})")
        if found:
            kept = f"the backup keeps epoch {epoch}" if epoch else "no epoch finished before it"
            raise TrainingDivergedError(f"the training diverged in epoch {epoch + 1}: {' and '.join(found)}; "
                                        f"nothing of that epoch is kept ({kept}): {self.advice}")


class FreezeEncoder(keras.callbacks.Callback):
    def __init__(self, layer_name: str, epochs: int):
        super().__init__()
        self.layer_name, self.epochs = layer_name, int(epochs)

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        if not optimizer.built:
            with self.model.distribute_strategy.scope():
                optimizer.build(self.model.trainable_variables)

    def on_epoch_begin(self, epoch, logs=None):
        layer = self.model.get_layer(self.layer_name)
        frozen = epoch < self.epochs
        if layer.trainable == frozen:
            layer.trainable = not frozen
            self.model.make_train_function(force=True)
            print(f"SegTrainer: epoch {epoch + 1}: encoder {'frozen' if frozen else 'trainable'}", flush=True)


class ClassWeightDecay(keras.callbacks.Callback):
    LOG_KEY = "class_weight_mix"

    def __init__(self, loss):
        super().__init__()
        self.loss, self.mix = loss, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.mix = self.loss.set_class_weight_epoch(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs[self.LOG_KEY] = self.mix
