"""Optimizer and learning-rate schedule of ``training`` (``trainer/training_config.py``).

``WarmupDecay`` is the one schedule: a linear warm-up to the peak ``learning_rate``
over ``warmup_steps``, then ``constant``, ``cosine`` (to ``final_fraction`` x the peak) or
``polynomial`` (power ``power``, to ``final_fraction`` x the peak) over ``decay_steps``;
after ``warmup_steps + decay_steps`` it stays at the final value. At step ``s`` (the
optimizer's iteration count, 0 for the first update) with ``w`` warm-up and ``d`` decay
steps, ``p = min(1, (s - w) / d)`` and the peak ``lr``:

- warm-up (``s < w``): ``lr * (s + 1) / w`` (the first update is not wasted at 0)
- constant: ``lr``
- cosine: ``lr * (f + (1 - f) * 0.5 * (1 + cos(pi * p)))``
- polynomial: ``lr * (f + (1 - f) * (1 - p) ** power)``

It is a registered, serialisable ``keras.optimizers.schedules.LearningRateSchedule``, so
``model.keras`` and BackupAndRestore save and load it.

``plateau`` is not a function of the step: the optimizer gets the peak rate as a variable
and ``plateau_callback`` (Keras' ``ReduceLROnPlateau`` on ``val_miou``) lowers it; the
variable is part of the optimizer's state, so BackupAndRestore keeps the rate reached.
"""
from __future__ import annotations

import json
import math
from typing import Optional

import keras
import tensorflow as tf
from keras import ops

from segbalance.trainer.training_callbacks import replace_file


@keras.saving.register_keras_serializable(package="segbalance")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    KINDS = ("constant", "cosine", "polynomial")

    def __init__(self, learning_rate: float, kind: str, warmup_steps: int = 0, decay_steps: int = 1,
                 final_fraction: float = 0.0, power: float = 1.0):
        if kind not in self.KINDS:
            raise ValueError(f"unknown schedule {kind!r}; use one of {', '.join(self.KINDS)}")
        self.learning_rate = float(learning_rate)
        self.kind = kind
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = max(1, int(decay_steps))
        self.final_fraction = float(final_fraction)
        self.power = float(power)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak = self.learning_rate
        if self.kind == "constant":
            decayed = ops.convert_to_tensor(peak, "float32")
        else:
            progress = ops.clip((step - self.warmup_steps) / float(self.decay_steps), 0.0, 1.0)
            if self.kind == "cosine":
                shape = 0.5 * (1.0 + ops.cos(math.pi * progress))
            else:
                shape = ops.power(1.0 - progress, self.power)
            f = self.final_fraction
            decayed = peak * (f + (1.0 - f) * shape)
        if self.warmup_steps <= 0:
            return decayed
        warm = peak * (step + 1.0) / float(self.warmup_steps)
        return ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "kind": self.kind, "warmup_steps": self.warmup_steps,
                "decay_steps": self.decay_steps, "final_fraction": self.final_fraction, "power": self.power}


def make_schedule(training, steps_per_epoch: int):
    """``training.lr_schedule`` over ``training.epochs`` epochs of ``steps_per_epoch`` steps (a
    ``WarmupDecay``; for ``plateau`` the peak rate, which ``plateau_callback`` lowers)."""
    schedule = training.lr_schedule
    if schedule.type == "plateau":
        return float(training.learning_rate)
    total = max(1, int(training.epochs) * int(steps_per_epoch))
    warmup = min(total, int(round(schedule.warmup_epochs * steps_per_epoch)))
    return WarmupDecay(training.learning_rate, schedule.type, warmup, max(1, total - warmup),
                       schedule.final_fraction, schedule.power)


def make_optimizer(training, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """``training.optimizer`` with its schedule, momentum / nesterov (sgd) and weight decay."""
    learning_rate = make_schedule(training, steps_per_epoch)
    decay = {} if training.weight_decay is None else {"weight_decay": training.weight_decay}
    if training.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=training.momentum, nesterov=training.nesterov, **decay)
    if training.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate, **decay)
    return keras.optimizers.Adam(learning_rate, **decay)


class ReduceLROnPlateauAfter(keras.callbacks.ReduceLROnPlateau):
    """Keras' ``ReduceLROnPlateau`` that cuts no rate before epoch ``start_epoch`` (0-based) and counts
    its patience from there as ``BestEpoch`` counts early stopping's: the epochs before it still set
    the best value (a first watched epoch worse than an earlier best is no improvement), but none of
    them counts toward the patience. With ``state_dir`` (the BackupAndRestore folder) its best value,
    wait and cooldown are written after every epoch and read back by a resumed training, so a
    resume cuts the rate where the uninterrupted training does."""

    STATE = "plateau.json"

    def __init__(self, start_epoch: int = 0, state_dir: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        self.start_epoch, self.state_dir = int(start_epoch), state_dir
        self._resume: Optional[dict] = None
        self._written: dict = {}  # what plateau.json holds: {epoch: state}, the last two epochs

    def _path(self) -> str:
        return f"{self.state_dir.rstrip('/')}/{self.STATE}"

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._resume, self._written = None, {}
        if self.state_dir and tf.io.gfile.exists(self._path()):
            with tf.io.gfile.GFile(self._path()) as f:
                self._resume = self._written = json.load(f)

    def on_epoch_begin(self, epoch, logs=None):
        # a resumed fit starts at the epoch after the last backup: take the state that epoch ended with
        # (the file may be one epoch ahead of the backup when a run stopped between the two writes)
        if self._resume is not None:
            state = self._resume.get(str(epoch - 1))
            if state is not None:
                self.best, self.wait, self.cooldown_counter = float(state["best"]), int(state["wait"]), \
                    int(state["cooldown_counter"])
            self._resume = None

    def on_epoch_end(self, epoch, logs=None):
        if epoch < self.start_epoch:
            current = (logs or {}).get(self.monitor)
            if current is not None and self.monitor_op(current, self.best):
                self.best = float(current)
            self.wait = 0
            if logs is not None:
                logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        else:
            super().on_epoch_end(epoch, logs)
        self._save(epoch)

    def _save(self, epoch: int) -> None:
        if not self.state_dir:
            return
        tf.io.gfile.makedirs(self.state_dir)
        state = {"best": float(self.best), "wait": int(self.wait), "cooldown_counter": int(self.cooldown_counter)}
        kept = {key: value for key, value in self._written.items() if key == str(epoch - 1)}
        self._written = {**kept, str(epoch): state}
        replace_file(self._path(), json.dumps(self._written))


def plateau_callback(training, monitor: str = "val_miou", state_dir: Optional[str] = None):
    """The rate cut for ``lr_schedule.type: plateau`` (None for the other types), watching from
    epoch ``training.min_epochs`` on; its state kept in ``state_dir`` for a resumed training."""
    schedule = training.lr_schedule
    if schedule.type != "plateau":
        return None
    return ReduceLROnPlateauAfter(start_epoch=training.min_epochs, state_dir=state_dir, monitor=monitor, mode="max",
                                  factor=schedule.factor, patience=schedule.patience, min_delta=0.0,
                                  min_lr=schedule.final_fraction * training.learning_rate, verbose=1)
