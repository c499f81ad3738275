"""`run_fn`: the TFX Trainer entry point (``segbalance.trainer.task.run_fn``).

``fn_args.custom_config`` keys (the pipeline fills them from ``pipeline/config.py``;
an unknown key is an error, so a typo does not silently train with a default):

=================== =====================================================================
num_classes         C, required (must match the ClassStats artifact and the data)
class_names         list of C names (metric names ``iou_<name>``); default: the artifact's
ignore_index        mask value with no label (255); must match the artifact's
image_size          [H, W] the model sees (Transform resizes to it); default [64, 64]
epochs              number of epochs (1)
batch_size          global batch over all replicas (16)
steps_per_epoch     optional cap on the steps of an epoch (the training set then repeats)
learning_rate       Adam learning rate (1e-3)
depth, base_filters U-Net size (``trainer/model.py``; defaults 3 and 16)
backbone            optional ``keras.applications`` class name (e.g. "MobileNetV2") used
                    as the encoder, randomly initialised (nothing downloads)
loss                SegmentationLoss config (``trainer/segmentation_loss.py``), required;
                    its ``class_weights`` may name a scheme of ``trainer/class_weights.py``,
                    whose vector is read from the ClassStats artifact's ``weights``
pixel_weights       optional weight map for the loss, e.g. {"type": "edge",
                    "image_weight": 1, "boundary_weight": 2} (``trainer/data.py``)
mixed_precision     true: ``mixed_float16`` policy (logits and loss stay float32)
jit_compile         true: XLA-compile the train step
devices             optional list of devices for MirroredStrategy; default: all GPUs when
                    more than one is visible, else the default (single-device) strategy
seed                random seed of weights, shuffling and augmentation (0)
shuffle_buffer      records in the shuffle buffer (512)
backup_dir          optional; default ``<ModelRun channel dir>/backup-<fingerprint>``
warm_start          true: start from the weights of ``fn_args.base_model`` (the pipeline
                    passes the latest blessed model) when there is one; the architectures
                    must match, else a ValueError says so (false: random initialisation)
class_stats_uri     set by the SegTrainer executor: the ClassStats artifact's URI
=================== =====================================================================

Keys starting with ``_`` are in-process hooks for tests and benchmarks (not JSON):
``_extra_callbacks`` (Keras callbacks appended after the standard ones) and ``_strategy``
(a ``tf.distribute.Strategy`` to use instead of choosing one).

Resuming: ``keras.callbacks.BackupAndRestore`` saves the model, optimizer and epoch at
every epoch end. A retried TFX execution gets a new ``model_run`` directory, so the backup
lives next to it in the ModelRun channel directory (``.../SegTrainer/model_run/``), under a
fingerprint of the config and the training files: a retry of the same training resumes at
the epoch it reached; a different training starts afresh. Keras deletes the backup when
training finishes.

TensorBoard logs go to ``<model_run_dir>/logs``; a summary of the run (weights used, the
loss of the first batch before any update, history) to ``<model_run_dir>/training_summary.json``.

Checks before training (each a ValueError saying what to change): unknown custom_config
key, loss config (unknown term, parameter or weight scheme), ``num_classes`` of the config
vs the ClassStats artifact vs the data (more than 10 % of records quarantined for ids >= C),
``ignore_index`` vs the artifact, and an empty training split.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, Optional

import keras
import tensorflow as tf

from segbalance.contract import TRAINING_SUMMARY_FILE
from segbalance.trainer.class_stats_io import labeled_by_source_id, read_class_stats, read_quarantine
from segbalance.trainer import data, model as model_lib
from segbalance.trainer.metrics import segmentation_metrics
from segbalance.trainer.segmentation_loss import SegmentationLoss, validate_loss_config
from segbalance.trainer.serving import KERAS_FILE, export_serving_model

SUMMARY_FILE = TRAINING_SUMMARY_FILE
MAX_BAD_ID_FRACTION = 0.1
CONFIG_KEYS = {
    "num_classes", "class_names", "ignore_index", "image_size", "epochs", "batch_size", "steps_per_epoch",
    "learning_rate", "depth", "base_filters", "backbone", "loss", "pixel_weights", "mixed_precision",
    "jit_compile", "devices", "seed", "shuffle_buffer", "backup_dir", "class_stats_uri", "warm_start",
}


def resolve_class_weights(loss_config: dict, stats: dict):
    scheme = loss_config.get("class_weights")
    if isinstance(scheme, str):
        if scheme not in stats["weights"]:
            raise ValueError(f"weight scheme {scheme!r} is not in the ClassStats artifact "
                             f"(has {sorted(stats['weights'])})")
        return [float(w) for w in stats["weights"][scheme]]
    return scheme


def check_config(cfg: Dict[str, Any]) -> None:
    """Errors in the custom_config alone (no artifact needed)."""
    unknown = sorted(k for k in cfg if k not in CONFIG_KEYS and not k.startswith("_"))
    if unknown:
        raise ValueError(f"unknown trainer custom_config key {unknown[0]!r}; known keys: {', '.join(sorted(CONFIG_KEYS))}")
    for key in ("num_classes", "loss"):
        if key not in cfg:
            raise ValueError(f"trainer custom_config needs {key!r}")
    validate_loss_config(cfg["loss"], int(cfg["num_classes"]))
    data.validate_pixel_weights(cfg.get("pixel_weights"))


def check_inputs(cfg: Dict[str, Any], stats: dict, quarantine: list, num_train: int) -> None:
    """Config vs ClassStats vs data; raises ValueError before anything is built."""
    check_config(cfg)
    num_classes = int(cfg["num_classes"])
    if stats["num_classes"] != num_classes:
        raise ValueError(f"config says num_classes={num_classes} but the ClassStats artifact was computed with "
                         f"{stats['num_classes']}: make classes.names and the statistics agree")
    if len(cfg.get("class_names", [])) not in (0, num_classes):
        raise ValueError(f"{len(cfg['class_names'])} class names for num_classes={num_classes}")
    ignore_index = int(cfg.get("ignore_index", 255))
    if int(stats.get("ignore_index", ignore_index)) != ignore_index:
        raise ValueError(f"config says ignore_index={ignore_index} but the ClassStats artifact used "
                         f"{stats['ignore_index']}")
    bad_ids = [q for q in quarantine if "num_classes" in q.get("reason", "")]
    total = stats["num_records"] + stats["quarantined_records"]
    if total and len(bad_ids) / total > MAX_BAD_ID_FRACTION:
        raise ValueError(f"{len(bad_ids)} of {total} records have class ids >= num_classes={num_classes} "
                         f"(e.g. {bad_ids[0]['source_id']}: {bad_ids[0]['reason']}): the data has more classes "
                         f"than the config; add them to classes.names")
    if num_train == 0:
        raise ValueError("the training split is empty: ingest more data or lower data.eval_fraction")


def choose_strategy(devices=None) -> tf.distribute.Strategy:
    """MirroredStrategy on ``devices`` or on all GPUs when more than one; else the default strategy."""
    if devices:
        return tf.distribute.MirroredStrategy(list(devices))
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def backup_dir_for(cfg: dict, train_files, model_run_dir: str) -> str:
    if cfg.get("backup_dir"):
        return cfg["backup_dir"]
    key = json.dumps({k: v for k, v in cfg.items() if k != "backup_dir" and not k.startswith("_")}, sort_keys=True) + json.dumps(
        sorted(train_files))
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
    parent = model_run_dir.rstrip("/").rsplit("/", 1)[0]  # not os.path.normpath: it breaks gs://
    return f"{parent}/backup-{fingerprint}"


def run_fn(fn_args) -> None:
    """Check, train, export: the TFX Trainer entry point (custom_config keys in the module docstring).

    Writes the serving SavedModel and ``model.keras`` to ``fn_args.serving_model_dir``
    (``trainer/serving.py``), TensorBoard logs and ``training_summary.json`` to
    ``fn_args.model_run_dir``.
    """
    import tensorflow_transform as tft

    cfg = dict(fn_args.custom_config or {})
    if "class_stats_uri" not in cfg:
        raise ValueError("custom_config has no class_stats_uri: run this run_fn through SegTrainer "
                         "(components/seg_trainer.py), which passes the ClassStats artifact")
    check_config(cfg)
    stats = read_class_stats(cfg["class_stats_uri"])
    num_train = data.count_records(fn_args.train_files)
    check_inputs(cfg, stats, read_quarantine(cfg["class_stats_uri"]), num_train)
    num_classes = int(cfg["num_classes"])
    class_names = cfg.get("class_names") or stats["class_names"]
    class_weights = resolve_class_weights(cfg["loss"], stats)
    seed = int(cfg.get("seed", 0))
    keras.utils.set_random_seed(seed)

    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    labeled = labeled_by_source_id(cfg["class_stats_uri"])
    batch_size = int(cfg.get("batch_size", 16))
    ignore_index = int(cfg.get("ignore_index", 255))
    steps = cfg.get("steps_per_epoch") or None
    pixel_weights = cfg.get("pixel_weights")
    strategy = cfg.get("_strategy") or choose_strategy(cfg.get("devices"))
    # Several replicas: a last partial batch can leave a replica with an empty batch, which Keras 3.6
    # under MirroredStrategy does not survive (AddN shape mismatch / broadcast errors, with any loss),
    # so partial batches are dropped.
    # Validation then skips < batch_size records; SegEvaluator scores the whole eval split.
    drop = strategy.num_replicas_in_sync > 1
    if drop and num_train < batch_size:
        raise ValueError(f"{num_train} training records fill no batch of {batch_size} on "
                         f"{strategy.num_replicas_in_sync} replicas: lower batch_size")
    train_ds = data.make_dataset(fn_args.train_files, tf_transform_output, batch_size, num_classes, labeled,
                                 training=True, seed=seed, ignore_index=ignore_index, pixel_weights=pixel_weights,
                                 repeat=steps is not None, shuffle_buffer=int(cfg.get("shuffle_buffer", 512)),
                                 drop_remainder=drop)
    eval_ds = None
    num_eval = data.count_records(fn_args.eval_files or [])
    if num_eval >= (batch_size if drop else 1):
        eval_ds = data.make_dataset(fn_args.eval_files, tf_transform_output, batch_size, num_classes, labeled,
                                    ignore_index=ignore_index, pixel_weights=pixel_weights, drop_remainder=drop)

    mixed = bool(cfg.get("mixed_precision", False))
    previous_policy = keras.mixed_precision.global_policy().name
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with strategy.scope():
            model = model_lib.build_model(cfg, num_classes)
            warm_from = warm_start(model, fn_args.base_model) if cfg.get("warm_start") else None
            loss = SegmentationLoss(cfg["loss"], class_weights=class_weights)
            model.compile(optimizer=keras.optimizers.Adam(float(cfg.get("learning_rate", 1e-3))), loss=loss,
                          metrics=segmentation_metrics(class_names, ignore_index),
                          jit_compile=bool(cfg.get("jit_compile", False)))
        first_loss = float(loss(*_first_batch_targets(train_ds, model)))
        backup = backup_dir_for(cfg, fn_args.train_files, fn_args.model_run_dir)
        callbacks = [keras.callbacks.BackupAndRestore(backup),
                     keras.callbacks.TensorBoard(log_dir=os.path.join(fn_args.model_run_dir, "logs"))]
        callbacks += list(cfg.get("_extra_callbacks", []))
        print(f"SegTrainer: {num_train} training records, {strategy.num_replicas_in_sync} replica(s), "
              f"class weights {class_weights}, backup {backup}", flush=True)
        history = model.fit(train_ds, validation_data=eval_ds, epochs=int(cfg.get("epochs", 1)),
                            steps_per_epoch=steps, callbacks=callbacks, verbose=2)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)

    export_serving_model(model, tf_transform_output, fn_args.serving_model_dir)
    summary = {
        "class_weights": class_weights,
        "loss_config": cfg["loss"],
        "initial_loss": first_loss,
        "epochs_run": list(history.epoch),
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        "replicas": strategy.num_replicas_in_sync,
        "mixed_precision": mixed,
        "num_train_records": num_train,
        "warm_started_from": warm_from,
    }
    tf.io.gfile.makedirs(fn_args.model_run_dir)
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, SUMMARY_FILE), "w") as f:
        f.write(json.dumps(summary, indent=1))


def warm_start(model, base_model: Optional[str]) -> Optional[str]:
    """Load ``base_model``'s ``model.keras`` weights into ``model``; the file used, or None without one."""
    if not base_model:
        print("SegTrainer: warm_start is on but there is no blessed model yet: random initialisation", flush=True)
        return None
    path = os.path.join(base_model, KERAS_FILE)
    if not tf.io.gfile.exists(path):
        raise ValueError(f"warm start: the base model {base_model} has no {KERAS_FILE}; it was not exported by "
                         f"this trainer. Set training.warm_start: false to train from scratch")
    try:
        model.load_weights(path)
    except ValueError as exc:
        raise ValueError(f"warm start: the weights in {path} do not fit this model ({exc}). The architecture "
                         f"changed (image_size, depth, base_filters, backbone, num_classes): set "
                         f"training.warm_start: false for this run") from exc
    print(f"SegTrainer: warm start from {path}", flush=True)
    return path


def _first_batch_targets(dataset, model):
    """(y, logits) of the first training batch before any update: records what the loss saw."""
    images, y = next(iter(dataset))
    return y, model(images, training=False)
