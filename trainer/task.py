"""`run_fn`: the TFX Trainer entry point (``segbalance.trainer.task.run_fn``).

``fn_args.custom_config`` is the pipeline's ``TrainerConfig`` serialised,
``{"classes": {...}, "training": {...}}`` (``pipeline/dag.py`` fills it from the config
file; every field, its default and its meaning: ``trainer/training_config.py``), plus
``class_stats_uri``, which the SegTrainer executor adds. ``run_fn`` rebuilds the typed
``TrainerConfig`` from it: an unknown field, a wrong type or a bad value is a
``ConfigError`` (a ValueError) naming the field, so a typo does not silently train with a
default.

Keys starting with ``_`` are in-process hooks for tests and benchmarks (not JSON):
``_extra_callbacks`` (Keras callbacks appended after the standard ones) and ``_strategy``
(a ``tf.distribute.Strategy`` to use instead of choosing one).

Resuming: ``keras.callbacks.BackupAndRestore`` saves the model, optimizer and epoch at
every epoch end. A retried TFX execution gets a new ``model_run`` directory, so the backup
lives next to it in the ModelRun channel directory (``.../SegTrainer/model_run/``), under a
fingerprint of the config and the training files: a retry of the same training resumes at
the epoch it reached; a different training starts afresh. Keras deletes the backup when
training finishes.

The recipe (``training`` fields; ``trainer/optimization.py``, ``trainer/training_callbacks.py``):
optimizer and learning-rate schedule over ``epochs`` x steps per epoch; the exported model
is the epoch with the best validation mIoU (``restore_best``), optionally stopping early
(``early_stopping_patience``); a backbone encoder may stay frozen for the first
``freeze_encoder_epochs``; class weights may decay toward 1 over the first
``loss.class_weight_decay_epochs`` (``ClassWeightDecay``).

TensorBoard logs go to ``<model_run_dir>/logs``; a summary of the run (weights used, the
loss of the first batch before any update, history, ``best_epoch``, ``best_val_miou``,
``stopped_epoch`` (0-based epochs, null when it did not apply), ``restored_best``) to
``<model_run_dir>/training_summary.json``.

Checks before training (each a ValueError saying what to change): the config (above),
``num_classes`` of the config vs the ClassStats artifact vs the data (more than 10 % of
records quarantined for ids >= C), ``classes.ignore_index`` vs the artifact's, a weight
scheme the artifact lacks, and an empty training split; with ``training.warm_start``, a base
model of another architecture or recorded with other class names (``classes.json`` beside it,
written at export: ``trainer/model_classes.py``; another order means its ids are other classes).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from typing import List, Optional, Sequence

import keras
import tensorflow as tf

from segbalance.contract import (MAX_BAD_ID_FRACTION, TRAINING_SUMMARY_FILE, UserError, binary_masks_advice,
                                 message_excerpt)
from segbalance.trainer.class_stats_io import labeled_by_source_id, read_class_stats, read_quarantine
from segbalance.trainer import data, model as model_lib
from segbalance.trainer.loss_config import LossConfig
from segbalance.trainer.model_classes import class_mismatch, read_model_classes, write_model_classes
from segbalance.trainer.metrics import segmentation_metrics
from segbalance.trainer.optimization import make_optimizer, plateau_callback
from segbalance.trainer.segmentation_loss import SegmentationLoss
from segbalance.trainer.serving import KERAS_FILE, export_serving_model
from segbalance.trainer.training_callbacks import (BACKUP_METADATA, BestEpoch, ClassWeightDecay, EpochLog,
                                                   FreezeEncoder, SafeBackupAndRestore, StopOnDivergence,
                                                   TrainingDivergedError, set_aside_unreadable_backup)
from segbalance.trainer.remote_files import local_copy_of
from segbalance.trainer.training_config import TrainerConfig

SUMMARY_FILE = TRAINING_SUMMARY_FILE


def trainer_config(custom_config: Optional[dict]):
    """(TrainerConfig, runtime extras) from SegTrainer's ``custom_config``: what run_fn trains with."""
    return TrainerConfig.from_custom_config(custom_config)


def resolve_class_weights(loss: LossConfig, stats: dict) -> Optional[List[float]]:
    scheme = loss.class_weights
    if isinstance(scheme, str):
        if scheme not in stats["weights"]:
            raise ValueError(f"weight scheme {scheme!r} is not in the ClassStats artifact "
                             f"(has {sorted(stats['weights'])})")
        return [float(w) for w in stats["weights"][scheme]]
    return scheme


class DataMismatchError(UserError, ValueError):
    """The config and the data disagree (class count, ignore index, an empty split): the user's to fix,
    so `segbalance run` prints it as one line and exits 2."""


class WarmStartError(UserError, ValueError):
    """The base model of ``training.warm_start`` does not fit this run (architecture, class names, no
    model.keras): the user's to fix (warm_start: false for the run), one line and exit 2 from `run`."""


def check_inputs(config: TrainerConfig, stats: dict, quarantine: list, num_train: int) -> None:
    """Config vs ClassStats vs data; raises DataMismatchError (a ValueError) before anything is built."""
    num_classes = config.classes.num_classes
    if stats["num_classes"] != num_classes:
        raise DataMismatchError(f"config says num_classes={num_classes} but the ClassStats artifact was computed with "
                         f"{stats['num_classes']}: make classes.names and the statistics agree")
    ignore_index = config.classes.ignore_index
    if int(stats.get("ignore_index", ignore_index)) != ignore_index:
        raise DataMismatchError(f"config says classes.ignore_index={ignore_index} but the ClassStats artifact used "
                         f"{stats['ignore_index']}")
    counted = set(stats.get("splits") or [])  # the quarantine lists every checked split; the totals the counted ones
    bad_ids = [q for q in quarantine if "num_classes" in q.get("reason", "")
               and (not counted or q.get("split") in counted)]
    total = stats["num_records"] + stats["quarantined_records"]
    if total and len(bad_ids) / total > MAX_BAD_ID_FRACTION:
        raise DataMismatchError(f"{len(bad_ids)} of {total} records have class ids >= num_classes={num_classes} "
                         f"(e.g. {bad_ids[0]['source_id']}: {bad_ids[0]['reason']}): the data has more classes "
                         f"than the config; add them to classes.names")
    if num_train == 0:
        raise DataMismatchError("the training split is empty: ingest more data or lower data.eval_fraction")
    counts = stats.get("pixel_counts")
    if counts is not None and num_classes > 1 and stats["num_records"] and not any(counts[1:]):
        # (QA 76: Span-N data whose foreground was all 'no label' trained background only, and was blessed and
        # pushed; `run` of an images/ + masks/ folder refuses it before ingest, this holds for any data)
        raise DataMismatchError(
            f"the training split holds no pixel of any class but {config.classes.names[0]!r} (class 0) in "
            f"{stats['num_records']} records ({stats.get('ignored_pixels', 0)} pixels marked 'no label', "
            f"{ignore_index}): there is nothing to learn for the other classes; check the masks "
            f"({binary_masks_advice(ignore_index)})")


class DevicesError(ValueError, UserError):
    """``training.devices`` names a device this machine does not have; the message says what to do."""


def check_devices(devices: Optional[Sequence[str]]) -> None:
    """``training.devices`` names devices of this machine (type and index, e.g. ``/gpu:0``; a job or task
    part is not compared): DevicesError naming the first that is not, and those there are. QA 27: it
    failed at SegTrainer's first step with TensorFlow's traceback, after the Beam components had run."""
    if not devices:
        return
    there = [d.name for d in tf.config.list_logical_devices()]
    present = [tf.DeviceSpec.from_string(name) for name in there]
    for device in devices:
        try:
            spec = tf.DeviceSpec.from_string(device)
        except ValueError:
            spec = None
        if spec is None or spec.device_type is None or not any(
                p.device_type == spec.device_type and spec.device_index in (None, p.device_index) for p in present):
            raise DevicesError(f"training.devices: {device!r} is not a device of this machine (it has "
                               f"{', '.join(there)}); name some of those, or remove training.devices (all GPUs "
                               f"when more than one, else one device)")


def choose_strategy(devices: Optional[Sequence[str]] = None) -> tf.distribute.Strategy:
    """MirroredStrategy on ``devices`` or on all GPUs when more than one; else the default strategy."""
    if devices:
        check_devices(devices)
        return tf.distribute.MirroredStrategy(list(devices))
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def backup_dir_for(config: TrainerConfig, train_files, model_run_dir: str) -> str:
    """This training's BackupAndRestore folder, ``backup-<fingerprint of config and training files>``: in
    ``training.backup_dir`` when set, else beside the ModelRun folder (a retried TFX execution gets a new
    one). The folder is deleted once the model is exported, so it is never the one a user names (QA 27:
    ``backup_dir`` was the backup itself, and the user's folder was deleted with all it held), and a
    training never resumes from another configuration's backup."""
    key = config.fingerprint_json() + json.dumps(sorted(train_files))
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
    # not os.path.normpath: it breaks gs://
    parent = config.training.backup_dir or model_run_dir.rstrip("/").rsplit("/", 1)[0]
    return f"{parent.rstrip('/')}/backup-{fingerprint}"


def run_fn(fn_args) -> None:
    """Check, train, export: the TFX Trainer entry point (custom_config in the module docstring).

    Writes the serving SavedModel and ``model.keras`` to ``fn_args.serving_model_dir``
    (``trainer/serving.py``) with ``classes.json`` (the class names, ``trainer/model_classes.py``),
    TensorBoard logs and ``training_summary.json`` to ``fn_args.model_run_dir``.
    """
    import tensorflow_transform as tft

    config, extras = trainer_config(fn_args.custom_config)
    if "class_stats_uri" not in extras:
        raise ValueError("custom_config has no class_stats_uri: run this run_fn through SegTrainer "
                         "(components/seg_trainer.py), which passes the ClassStats artifact")
    t, classes = config.training, config.classes
    stats_uri = extras["class_stats_uri"]
    stats = read_class_stats(stats_uri)
    num_train = data.count_records(fn_args.train_files)
    check_inputs(config, stats, read_quarantine(stats_uri), num_train)
    num_classes, ignore_index = classes.num_classes, classes.ignore_index
    class_weights = resolve_class_weights(t.loss, stats)
    keras.utils.set_random_seed(t.seed)

    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    labeled = labeled_by_source_id(stats_uri)
    steps = t.steps_per_epoch
    strategy = extras.get("_strategy") or choose_strategy(t.devices)
    # Several replicas: a last partial batch can leave a replica with an empty batch, which Keras 3.6
    # under MirroredStrategy does not survive (AddN shape mismatch / broadcast errors, with any loss),
    # so partial batches are dropped.
    # Validation then skips < batch_size records; SegEvaluator scores the whole eval split.
    drop = strategy.num_replicas_in_sync > 1
    if drop and num_train < t.batch_size:
        raise ValueError(f"{num_train} training records fill no batch of {t.batch_size} on "
                         f"{strategy.num_replicas_in_sync} replicas: lower training.batch_size")
    steps_per_epoch = steps or (num_train // t.batch_size if drop else -(-num_train // t.batch_size))
    backup = backup_dir_for(config, fn_args.train_files, fn_args.model_run_dir)
    set_aside_unreadable_backup(backup)  # a backup a stopped run left half-written: start again, one line
    resumed_at = backed_up_epochs(backup)  # BackupAndRestore starts fit there: the data stream starts there too
    others = other_backups(backup)
    if others:  # kept (a training of that config and data resumes from them; a concurrent one may be writing)
        size = sum(file_size for folder in others for file_size in _file_sizes(folder)) / 2 ** 20
        # (QA 61: after an upgrade the same command's backup is another training's when a default changed)
        print(f"SegTrainer: note: {len(others)} backup(s) of other trainings that were stopped ({size:.1f} MiB): "
              f"{', '.join(others[:3])}; a training of the same settings and data resumes from one (the settings "
              f"with their defaults: a default an upgrade changed makes another training), and deleting them "
              f"frees the space", flush=True)
    # an endless stream, steps_per_epoch batches an epoch (one pass without training.steps_per_epoch): every
    # batch a function of the seed and its place, so a resumed training gets the uninterrupted one's batches
    train_ds = data.make_dataset(fn_args.train_files, tf_transform_output, t.batch_size, num_classes, labeled,
                                 training=True, seed=t.seed, ignore_index=ignore_index, pixel_weights=t.pixel_weights,
                                 repeat=True, shuffle_buffer=t.shuffle_buffer, drop_remainder=drop,
                                 augmentation=t.augmentation, start_batch=resumed_at * steps_per_epoch,
                                 num_records=num_train, batch_across_passes=steps is not None)
    eval_ds = None
    num_eval = data.count_records(fn_args.eval_files or [])
    if num_eval >= (t.batch_size if drop else 1):
        eval_ds = data.make_dataset(fn_args.eval_files, tf_transform_output, t.batch_size, num_classes, labeled,
                                    ignore_index=ignore_index, pixel_weights=t.pixel_weights, drop_remainder=drop)

    previous_policy = keras.mixed_precision.global_policy().name
    if t.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with strategy.scope():  # backbone weights are fetched (or refused) here, before any training
            model = model_lib.build_model(t, num_classes)
            warm_from = (warm_start(model, fn_args.base_model, t.backbone_weights, classes.names)
                         if t.warm_start else None)
            loss = SegmentationLoss(t.loss, class_weights=class_weights, num_classes=num_classes,
                                    ignore_index=ignore_index)
            model.compile(optimizer=make_optimizer(t, steps_per_epoch), loss=loss,
                          metrics=segmentation_metrics(classes.names, ignore_index), jit_compile=t.jit_compile)
            # built here, not inside the first train step: a tf.function that creates variables is traced
            # twice (once creating them, once using them), which cost about 5 s a training on 2 CPU cores
            # (docs/benchmarks.md, "Test suite", session 22)
            model.optimizer.build(model.trainable_variables)
        first_loss = float(loss(*_first_batch_targets(train_ds, model)))
        advice = divergence_advice(t)
        if not math.isfinite(first_loss):  # before any step: the starting weights (backbone, warm start) or data
            raise TrainingDivergedError(f"the loss of the first training batch is {first_loss} before any training "
                                        f"step: {advice}")
        best = BestEpoch(patience=t.early_stopping_patience, restore=t.restore_best, state_dir=backup,
                         min_epochs=t.min_epochs)
        # before BackupAndRestore: the encoder state and the optimizer are set before it restores, and
        # the best weights are put back before it deletes its folder (which holds BestEpoch's state)
        callbacks = [StopOnDivergence(advice)]  # first: a diverged epoch reaches no other callback
        if t.freeze_encoder_epochs:
            callbacks.append(FreezeEncoder(model_lib.ENCODER, t.freeze_encoder_epochs))
        if loss.class_weight_mix is not None:  # loss.class_weight_decay_epochs
            callbacks.append(ClassWeightDecay(loss))
        plateau = plateau_callback(t, state_dir=backup)
        if plateau is not None:
            callbacks.append(plateau)
        # the backup outlives fit: it is deleted once the model is exported, so a run stopped during the
        # export resumes with nothing left to train (BestEpoch's state there gives the best weights back)
        epoch_log = EpochLog(state_dir=backup)  # the history of every epoch, also those before a resume
        callbacks += [best, epoch_log, SafeBackupAndRestore(backup, delete_checkpoint=False),
                      keras.callbacks.TensorBoard(log_dir=os.path.join(fn_args.model_run_dir, "logs"))]
        callbacks += list(extras.get("_extra_callbacks", []))
        print(f"SegTrainer: {num_train} training records, {strategy.num_replicas_in_sync} replica(s), "
              f"class weights {class_weights}, backup {backup}", flush=True)
        for note in training_notes(t, labeled, num_classes, num_eval if eval_ds is not None else 0,
                                   stats.get("labeled_policy", "complete"),
                                   gpus=len(tf.config.list_logical_devices("GPU"))):
            print(f"SegTrainer: note: {note}", flush=True)
        with warnings.catch_warnings():
            # Keras 3.6 warns "Your input ran out of data" at the end of every finite pass: the validation
            # set (evaluated to its end). The training set is endless: the warning is never about it.
            warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)
            model.fit(train_ds, validation_data=eval_ds, epochs=t.epochs, steps_per_epoch=steps_per_epoch,
                      callbacks=callbacks, verbose=2)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)

    export_serving_model(model, tf_transform_output, fn_args.serving_model_dir)
    write_model_classes(fn_args.serving_model_dir, classes.names)  # warm start and SegEvaluator's baseline check
    summary = {
        "class_weights": class_weights,
        "loss_config": loss.loss_config,
        "ignore_index": ignore_index,
        "config": config.to_custom_config(),
        "initial_loss": first_loss,
        "epochs_run": epoch_log.epochs(),
        "history": epoch_log.history(),
        "replicas": strategy.num_replicas_in_sync,
        "mixed_precision": t.mixed_precision,
        "num_train_records": num_train,
        "warm_started_from": warm_from,
        "steps_per_epoch": steps_per_epoch,
        **best.summary(),  # best_epoch, best_val_miou, stopped_epoch (0-based, like epochs_run), restored_best
    }
    tf.io.gfile.makedirs(fn_args.model_run_dir)
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, SUMMARY_FILE), "w") as f:
        f.write(json.dumps(summary, indent=1))
    if tf.io.gfile.exists(backup):  # exported and summarised: the training's backup is done with
        tf.io.gfile.rmtree(backup)


def training_notes(training, labeled: dict, num_classes: int, validation_records: int,
                   labeled_policy: str = "complete", gpus: int = 0) -> List[str]:
    """Options of ``training`` that this data (or this machine: ``gpus`` visible) leaves without effect or makes
    costly, each said once before training; ``labeled_policy``: the ClassStats' (what a record without a
    labelled set meant)."""
    notes = []
    if training.optimizer == "sgd" and training.learning_rate == type(training).learning_rate:
        notes.append(f"optimizer sgd at learning_rate {training.learning_rate:g}, the default chosen for Adam: on "
                     f"the shapes sample SGD pushed 0.59-0.65 at this rate against Adam's 0.76-0.78, and 0.73 at "
                     f"0.05 (README, Trainer); set training.learning_rate for SGD")
    slow = [f"{name} ({cost})" for name, on, cost in (
        ("mixed_precision", training.mixed_precision, "a step took 20 to 60 times as long on a 2-core CPU: float16 "
                                                      "is emulated"),
        ("jit_compile", training.jit_compile, "a step took 1.2 to 2.8 times as long on a 2-core CPU")) if on]
    if slow and not gpus:
        one = len(slow) == 1
        notes.append(f"no GPU is visible, and {' and '.join(slow)} {'is' if one else 'are'} meant for GPUs (README, "
                     f"Trainer); set {'it' if one else 'them'} false to train on this CPU at full speed")
    options = training.loss.label_set_options()
    if options and all(set(range(num_classes)) <= {0, *map(int, row)} for row in labeled.values()):
        why, fix = ("no image/segmentation/class/labeled sets in the records, or complete ones",
                    " or set stats.labeled_policy: partial")
        if labeled_policy == "partial":  # the present classes counted as labelled, and every image holds them all
            why, fix = "complete labelled sets, or every class in every mask (stats.labeled_policy: partial)", ""
        notes.append(f"every image has every class labelled ({why}), so the loss's {', '.join(options)} act as "
                     f"the plain loss; if annotators skipped classes, record them (`segbalance ingest` reads "
                     f"labeled.json){fix}")
    if not validation_records:
        uses = [name for name, on in (("restore_best", training.restore_best),
                                      ("early_stopping_patience", training.early_stopping_patience),
                                      ("lr_schedule.type: plateau", training.lr_schedule.type == "plateau"))
                if on]
        if uses:
            notes.append(f"no validation batches (an empty eval split, or fewer records than a batch on several "
                         f"replicas), so {', '.join(uses)} have nothing to go by: the last epoch is exported and "
                         f"the rate is not cut; raise data.eval_fraction or add data")
    return notes


def divergence_advice(training) -> str:
    """What to change when the loss or the weights stop being finite (TrainingDivergedError)."""
    advice = f"lower training.learning_rate (now {training.learning_rate:g})"
    if training.mixed_precision:
        advice += " or set training.mixed_precision: false"
    if training.warm_start or training.backbone_weights:
        advice += ", and check the starting weights (training.warm_start, training.backbone_weights)"
    return advice


def warm_start(model, base_model: Optional[str], backbone_weights: Optional[str] = None,
               class_names: Optional[Sequence[str]] = None) -> Optional[str]:
    """Load ``base_model``'s ``model.keras`` weights into ``model``; the file used, or None without one.
    Its weights replace the encoder's ``backbone_weights`` too, and the line printed says so. With
    ``class_names``, a base model recorded with other class names (``classes.json``: another count or
    order, so its output channels mean other classes) is refused."""
    if not base_model:
        print("SegTrainer: warm_start is on but there is no blessed model yet: random initialisation", flush=True)
        return None
    path = os.path.join(base_model, KERAS_FILE)
    if not tf.io.gfile.exists(path):
        raise WarmStartError(f"warm start: the base model {base_model} has no {KERAS_FILE}; it was not exported "
                             f"by this trainer. Set training.warm_start: false to train from scratch")
    mismatch = class_mismatch(class_names, read_model_classes(base_model)) if class_names is not None else None
    if mismatch:
        raise WarmStartError(f"warm start: the base model {base_model} does not fit this run's classes: "
                             f"{mismatch}; its output channels mean other classes. Set training.warm_start: false "
                             f"for this run")
    try:
        with local_copy_of(path) as local:  # Keras opens model.keras with zipfile: local files only (QA 58)
            model.load_weights(local)
    except ValueError as exc:  # Keras lists every layer that did not load: the first mismatch says enough
        detail = message_excerpt(exc, 240)
        raise WarmStartError(f"warm start: the weights in {path} do not fit this model ({detail}). The "
                             f"architecture changed (image_size, depth, base_filters, backbone, num_classes): set "
                             f"training.warm_start: false for this run") from exc
    replaced = f" (its weights replace training.backbone_weights: {backbone_weights})" if backbone_weights else ""
    print(f"SegTrainer: warm start from {path}{replaced}", flush=True)
    return path


def other_backups(backup: str) -> List[str]:
    """The other ``backup-*`` folders beside ``backup`` (trainings of another config or data that were
    stopped: each is deleted when its training finishes), sorted."""
    parent, name = backup.rstrip("/").rsplit("/", 1)
    if not name.startswith("backup-") or not tf.io.gfile.isdir(parent):
        return []
    return sorted(f"{parent}/{entry.rstrip('/')}" for entry in tf.io.gfile.listdir(parent)
                  if entry.startswith("backup-") and entry.rstrip("/") != name)


def _file_sizes(folder: str):
    for root, _, files in tf.io.gfile.walk(folder):
        for file in files:
            yield tf.io.gfile.stat(f"{root.rstrip('/')}/{file}").length


def backed_up_epochs(backup_dir: str) -> int:
    """The epochs BackupAndRestore's ``training_metadata.json`` in ``backup_dir`` records as done (0
    without one): where a resumed fit starts."""
    path = os.path.join(backup_dir, BACKUP_METADATA)
    if not tf.io.gfile.exists(path):
        return 0
    with tf.io.gfile.GFile(path) as f:
        return int(json.loads(f.read()).get("epoch", 0))


def _first_batch_targets(dataset, model):
    """(y, logits) of the first training batch before any update: records what the loss saw."""
    images, y = next(iter(dataset))
    return y, model(images, training=False)
