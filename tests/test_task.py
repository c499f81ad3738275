"""run_fn: checks before training, resume after an interruption, mixed precision + MirroredStrategy, XLA."""
import json
import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import trainer_inputs as ti
from segbalance.trainer import task

STATS = {"num_classes": 3, "num_records": 10, "quarantined_records": 0, "ignore_index": 255,
         "weights": {"uniform": [1.0, 1.0, 1.0]}, "class_names": ti.NAMES}


def check(cfg_changes=None, stats_changes=None, quarantine=(), num_train=10):
    config, _ = task.trainer_config(ti.custom_config(cfg_changes or {}))
    task.check_inputs(config, {**STATS, **(stats_changes or {})}, list(quarantine), num_train)


def test_checks_before_training():
    check()
    cases = [
        (dict(cfg_changes={"epoch": 3}), "unknown field training.epoch"),
        (dict(cfg_changes={"loss": {"terms": [{"type": "lovasz"}]}}), "unknown type 'lovasz'"),
        (dict(cfg_changes={"loss": {"terms": [{"type": "ce"}], "class_weights": "inverse_sqrt"}}),
         "unknown class-weight scheme 'inverse_sqrt'"),
        (dict(cfg_changes={"loss": {"terms": [{"type": "ce"}], "ignore_index": 254}}),
         "training.loss.ignore_index is not a setting any more: the ignore index is set once, classes.ignore_index"),
        (dict(stats_changes={"num_classes": 4}), "num_classes=3 but the ClassStats artifact was computed with 4"),
        (dict(cfg_changes={"class_names": ["a"]}), "classes.names: list at least 2 classes"),
        (dict(stats_changes={"ignore_index": 0}), "classes.ignore_index=255 but the ClassStats artifact used 0"),
        (dict(stats_changes={"num_records": 8, "quarantined_records": 2},
              quarantine=[{"source_id": f"x{i}", "reason": "class id 7 >= num_classes 3"} for i in range(2)]),
         "2 of 10 records have class ids >= num_classes=3"),
        # the quarantine lists every checked split; the fraction is over the counted (train) split only
        (dict(stats_changes={"num_records": 8, "quarantined_records": 2, "splits": ["train"]},
              quarantine=[{"source_id": f"x{i}", "split": "train" if i < 2 else "eval",
                           "reason": "class id 7 >= num_classes 3"} for i in range(7)]),
         "2 of 10 records have class ids >= num_classes=3"),
        (dict(num_train=0), "the training split is empty"),
        # QA 76: a training split with no foreground pixel (binary masks saved as 0/255) trained background only
        (dict(stats_changes={"pixel_counts": [500, 0, 0], "ignored_pixels": 120}),
         "the training split holds no pixel of any class but 'background' \\(class 0\\) in 10 records \\(120 "
         "pixels marked 'no label', 255\\)"),
        (dict(cfg_changes={"pixel_weights": {"type": "blur"}}), "training.pixel_weights.type: unknown type 'blur'"),
        (dict(cfg_changes={"image_size": [18, 18]}), r"training.image_size: \[18, 18\] must be divisible by 4"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            check(**kwargs)


def test_one_foreground_pixel_is_enough_to_train():
    check(stats_changes={"pixel_counts": [500, 0, 1]})
    check(stats_changes={"pixel_counts": [0, 7, 0]})  # no background at all is not refused


def test_resolve_class_weights_from_the_artifact():
    from segbalance.trainer.loss_config import loss_config

    loss = {"terms": [{"type": "ce"}], "class_weights": "uniform"}
    assert task.resolve_class_weights(loss_config(loss), STATS) == [1.0, 1.0, 1.0]
    assert task.resolve_class_weights(loss_config({**loss, "class_weights": [1, 2, 3]}), STATS) == [1, 2, 3]
    with pytest.raises(ValueError, match="'enet' is not in the ClassStats artifact"):
        task.resolve_class_weights(loss_config({**loss, "class_weights": "enet"}), STATS)


def test_run_fn_errors_before_touching_the_transform_graph(tmp_path):
    stats_dir = tmp_path / "stats"
    stats_dir.mkdir()
    (stats_dir / "class_stats.json").write_text(json.dumps(STATS))
    empty = ti.write_tfrecord(str(tmp_path / "train" / "empty.tfrecord"), [])
    uris = {"examples": str(tmp_path), "transform_graph": str(tmp_path / "no-such-graph")}
    args = ti.fn_args_for(uris, str(tmp_path / "out"), ti.CONFIG, str(stats_dir), train_files=[empty])
    with pytest.raises(ValueError, match="training split is empty"):
        task.run_fn(args)
    args.custom_config = {k: v for k, v in args.custom_config.items() if k != "class_stats_uri"}
    with pytest.raises(ValueError, match="run this run_fn through SegTrainer"):
        task.run_fn(args)
    args.custom_config = {**ti.custom_config(epochs=0), "class_stats_uri": str(stats_dir)}
    with pytest.raises(ValueError, match="training.epochs: must be >= 1"):
        task.run_fn(args)


def test_backup_dir_is_beside_the_model_run_and_keyed_by_the_training():
    def config(**changes):
        return task.trainer_config(ti.custom_config(changes))[0]

    a = task.backup_dir_for(config(), ["gs://b/ex/Split-train/*"], "gs://b/root/SegTrainer/model_run/7/")
    assert a.startswith("gs://b/root/SegTrainer/model_run/backup-")
    assert task.backup_dir_for(config(), ["gs://b/ex/Split-train/*"], "gs://b/root/SegTrainer/model_run/8") == a
    assert task.backup_dir_for(config(epochs=9), ["gs://b/ex/Split-train/*"], "gs://b/x/7") != \
        task.backup_dir_for(config(), ["gs://b/ex/Split-train/*"], "gs://b/x/7")
    # training.backup_dir: the folder the backup is kept in, keyed the same way (it was the backup itself)
    mine = task.backup_dir_for(config(backup_dir="/tmp/b/"), ["gs://b/ex/Split-train/*"], "/x/7")
    assert mine == "/tmp/b/" + a.rsplit("/", 1)[1]
    assert task.backup_dir_for(config(backup_dir="gs://c", epochs=9), [], "/x/7").startswith("gs://c/backup-")


def test_a_backup_dir_the_user_names_keeps_what_it_held(tmp_path):
    """QA 27: with training.backup_dir set, the named folder was the backup, deleted after the export with
    every file the user kept there. The backup is now a backup-<key> folder inside it, and only that goes."""
    uris = ti.tiny_pipeline()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "precious.txt").write_text("kept")
    config = {**ti.CONFIG, "epochs": 3, "backup_dir": str(mine)}
    with pytest.raises(KeyboardInterrupt):
        task.run_fn(ti.fn_args_for(uris, str(tmp_path / "out"), {**config, "_extra_callbacks": [Interrupt()]}))
    [backup] = [p for p in mine.iterdir() if p.name.startswith("backup-")]
    assert task.backed_up_epochs(str(backup)) == 2
    task.run_fn(ti.fn_args_for(uris, str(tmp_path / "out"), config))  # resumes from it, then removes it
    assert sorted(p.name for p in mine.iterdir()) == ["precious.txt"]
    assert (mine / "precious.txt").read_text() == "kept"


def test_default_strategy_without_gpus():
    assert not isinstance(task.choose_strategy(), tf.distribute.MirroredStrategy)


def test_devices_this_machine_lacks_are_named_before_training():
    """QA 27: training.devices ['/gpu:0', '/gpu:1'] on a CPU machine failed at SegTrainer's first step with
    TensorFlow's traceback; a spelling TensorFlow cannot read too."""
    cpu = tf.config.list_logical_devices("CPU")[0].name  # e.g. /device:CPU:0
    for fine in (["/cpu:0"], ["CPU:0"], ["cpu"], [cpu], ["/job:localhost/replica:0/task:0/device:CPU:0"]):
        task.check_devices(fine)
    task.check_devices(None)
    task.check_devices([])
    for wrong, named in ((["/gpu:0", "/gpu:1"], "/gpu:0"), (["/cpu:0", "/cpu:99"], "/cpu:99"), (["foo"], "foo"),
                         (["/gpu:x"], "/gpu:x")):
        with pytest.raises(task.DevicesError, match=rf"training.devices: '{named}' is not a device of this "
                                                    rf"machine \(it has {cpu}"):
            task.check_devices(wrong)
    with pytest.raises(task.DevicesError):
        task.choose_strategy(["/gpu:3"])


class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated preemption after epoch 1")


class Record(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs, self.iterations_at_start = [], None

    def on_train_begin(self, logs=None):
        self.iterations_at_start = int(self.model.optimizer.iterations.numpy())

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def summary_of(args):
    with open(os.path.join(args.model_run_dir, task.SUMMARY_FILE)) as f:
        return json.load(f)


@pytest.mark.slow
def test_a_backup_left_half_written_is_set_aside_and_the_training_starts_again(tmp_path, capsys):
    """QA (helper 35): a run killed while Keras wrote latest.weights.h5 left a cut file, and every later run
    of that training (the backup folder is keyed by config and data) stopped with an h5py traceback. The
    backup is moved aside, kept, with one line, and the training starts from its first epoch."""
    uris = ti.tiny_pipeline()
    config = {**ti.CONFIG, "epochs": 3, "steps_per_epoch": 1}
    first = ti.fn_args_for(uris, str(tmp_path / "run"), {**config, "_extra_callbacks": [Interrupt()]})
    first.model_run_dir = str(tmp_path / "model_run" / "1")
    with pytest.raises(KeyboardInterrupt):
        task.run_fn(first)
    [backup] = [d for d in os.listdir(tmp_path / "model_run") if d.startswith("backup-")]
    weights = tmp_path / "model_run" / backup / "latest.weights.h5"
    weights.write_bytes(weights.read_bytes()[:1000])  # what a kill in the middle of Keras's write left
    record = Record()
    second = ti.fn_args_for(uris, str(tmp_path / "run"), {**config, "_extra_callbacks": [record]})
    second.model_run_dir = str(tmp_path / "model_run" / "2")
    capsys.readouterr()
    task.run_fn(second)
    assert record.epochs == [0, 1, 2] and record.iterations_at_start == 0
    printed = capsys.readouterr().out
    assert f"the training backup in {tmp_path / 'model_run' / backup} cannot be read" in printed
    assert "training starts from the first epoch" in printed
    [aside] = [d for d in os.listdir(tmp_path / "model_run") if d.startswith(f"{backup}.unreadable-")]
    assert (tmp_path / "model_run" / aside / "latest.weights.h5").stat().st_size == 1000  # kept as it was


@pytest.mark.slow
def test_mixed_precision_on_two_mirrored_devices(tmp_path, mirrored_strategy):
    uris = ti.tiny_pipeline()
    config = {**ti.CONFIG, "mixed_precision": True, "_strategy": mirrored_strategy}
    args = ti.fn_args_for(uris, str(tmp_path), config)
    task.run_fn(args)
    summary = summary_of(args)
    assert summary["replicas"] == 2 and summary["mixed_precision"]
    assert np.isfinite(summary["history"]["loss"]).all() and np.isfinite(summary["initial_loss"])
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    serve = tf.saved_model.load(args.serving_model_dir).signatures["serving_default"]
    image = ti.make_image_and_mask(np.random.default_rng(0), 24, 24)[0]
    from segbalance.trainer.example_codec import encode_png
    out = serve(images=tf.constant([encode_png(image)]))
    assert out["class_ids"].shape == (1, 24, 24)
    # the weights of a model trained under a strategy reach TF Serving's loader too (QA 74)
    served = ti.serve_like_tf_serving(args.serving_model_dir, [encode_png(image)])
    np.testing.assert_array_equal(served["class_ids"], out["class_ids"].numpy())


@pytest.mark.slow
def test_jit_compile_with_a_pixel_weight_map(tmp_path):
    uris = ti.tiny_pipeline()
    config = {**ti.CONFIG, "jit_compile": True, "pixel_weights": {"type": "edge", "boundary_weight": 2.0},
              "steps_per_epoch": None, "epochs": 2}
    args = ti.fn_args_for(uris, str(tmp_path), config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task.run_fn(args)
    assert np.isfinite(summary_of(args)["history"]["loss"]).all()
    # one pass over the data per epoch is what was asked: no "ran out of data" warning at each epoch end
    assert not [w for w in caught if "ran out of data" in str(w.message)]


class CountBatches(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1


class CountTrainStepTraces(keras.callbacks.Callback):
    """How often fit's train function runs the Python ``train_step`` (once per trace: fit calls the
    tf.function after ``on_train_begin``, and the trace looks ``train_step`` up on the model then)."""

    def __init__(self):
        super().__init__()
        self.traces = 0

    def on_train_begin(self, logs=None):
        step = self.model.train_step

        def counted(data):
            self.traces += 1
            return step(data)

        self.model.train_step = counted


@pytest.mark.slow
def test_steps_per_epoch_beyond_one_pass_repeats_the_training_set(tmp_path):
    """More steps than one pass holds: the training set repeats, every step runs, nothing runs out.
    The train step is traced once: the optimizer is built before fit (built inside the first step, its
    variables made TensorFlow trace the step twice, about 5 s of every training on 2 CPU cores)."""
    from segbalance.trainer import data

    uris = ti.tiny_pipeline()
    steps, counter, traces = 7, CountBatches(), CountTrainStepTraces()
    args = ti.fn_args_for(uris, str(tmp_path), {**ti.CONFIG, "epochs": 2, "steps_per_epoch": steps,
                                                 "_extra_callbacks": [counter, traces]})
    assert data.count_records(args.train_files) < steps * ti.CONFIG["batch_size"]  # one pass is shorter
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task.run_fn(args)
    assert counter.batches == 2 * steps and len(summary_of(args)["history"]["loss"]) == 2
    assert not [w for w in caught if "ran out of data" in str(w.message)]
    assert traces.traces == 1


class WeightsAtStart(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.weights = [np.array(w) for w in self.model.get_weights()]


@pytest.mark.slow
def test_warm_start_begins_from_the_base_model_weights(tmp_path, capsys):
    uris = ti.tiny_pipeline()
    config = {**ti.CONFIG, "epochs": 1, "steps_per_epoch": 1}
    base = ti.fn_args_for(uris, str(tmp_path / "base"), {**config, "seed": 1})
    task.run_fn(base)
    base_weights = keras.saving.load_model(os.path.join(base.serving_model_dir, "model.keras"),
                                           compile=False).get_weights()

    start = WeightsAtStart()
    warm = ti.fn_args_for(uris, str(tmp_path / "warm"), {**config, "warm_start": True, "_extra_callbacks": [start]})
    warm.base_model = base.serving_model_dir
    task.run_fn(warm)
    assert summary_of(warm)["warm_started_from"] == os.path.join(base.serving_model_dir, "model.keras")
    assert len(start.weights) == len(base_weights)
    for got, want in zip(start.weights, base_weights):
        np.testing.assert_array_equal(got, want)

    # no blessed model yet: random initialisation, one line says so (run_fn records what it returns)
    fresh = keras.saving.load_model(os.path.join(base.serving_model_dir, "model.keras"), compile=False)
    fresh.set_weights([np.zeros_like(w) for w in base_weights])
    capsys.readouterr()
    assert task.warm_start(fresh, None, None, ti.NAMES) is None
    assert "warm_start is on but there is no blessed model yet: random initialisation" in capsys.readouterr().out
    assert not np.any(fresh.get_weights()[0])  # nothing loaded

    other = ti.fn_args_for(uris, str(tmp_path / "other"), {**config, "warm_start": True, "base_filters": 8})
    other.base_model = base.serving_model_dir
    with pytest.raises(task.WarmStartError, match="warm_start: false"):  # a UserError: one line, exit 2
        task.run_fn(other)
    empty = ti.fn_args_for(uris, str(tmp_path / "empty"), {**config, "warm_start": True})
    empty.base_model = str(tmp_path)
    with pytest.raises(task.WarmStartError, match="has no model.keras"):
        task.run_fn(empty)
    # the export records the class names; a run naming them in another order has other ids: refused
    with open(os.path.join(base.serving_model_dir, "classes.json")) as f:
        assert json.load(f) == {"class_names": ti.NAMES, "num_classes": ti.NUM_CLASSES}
    swapped = ["background", "bar", "square"]
    reordered = ti.fn_args_for(uris, str(tmp_path / "reordered"), {**config, "warm_start": True,
                                                                    "class_names": swapped})
    reordered.base_model = base.serving_model_dir
    with pytest.raises(ValueError, match=r"trained for classes \['background', 'square', 'bar'\], this run has "
                                         r"\['background', 'bar', 'square'\].*warm_start: false"):
        task.run_fn(reordered)


class KeepModel(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.trained = self.model


@pytest.mark.slow
def test_ignore_index_254_reaches_data_loss_and_metrics(tmp_path):
    """classes.ignore_index 254, set once: run_fn's loss and metrics ignore 254-pixels, whose logits
    then do not move the loss; class names without ASCII letters train (safe metric names)."""
    import shutil

    from segbalance.trainer import data
    from segbalance.trainer.class_stats_io import read_class_stats
    from segbalance.trainer.segmentation_loss import SegmentationLoss

    uris = ti.tiny_pipeline()
    stats_dir = tmp_path / "stats"
    shutil.copytree(uris["class_stats"], stats_dir)
    stats = read_class_stats(str(stats_dir))
    (stats_dir / "class_stats.json").write_text(json.dumps({**stats, "ignore_index": 254}))
    from segbalance.trainer import example_codec as codec

    records = []
    rng = np.random.default_rng(3)
    for i in range(8):
        image, mask = ti.make_image_and_mask(rng, ti.SIZE, ti.SIZE)
        mask[: ti.SIZE // 2, : ti.SIZE // 3] = 254  # a no-label block in every image
        records.append(codec.build_example(codec.encode_png(image), codec.encode_png(mask), f"ig{i}",
                                           ti.SIZE, ti.SIZE).SerializeToString())
    train = ti.write_tfrecord(str(tmp_path / "train" / "ignore.tfrecord"), records)
    keep = KeepModel()
    config = ti.custom_config(ignore_index=254, class_names=["背景", "正方形", "棒"], epochs=1, steps_per_epoch=2,
                              loss={"terms": [{"type": "ce"}, {"type": "dice"}], "missing_labels": "marginal"},
                              _extra_callbacks=[keep])
    args = ti.fn_args_for(uris, str(tmp_path / "out"), config, str(stats_dir), train_files=[train])
    task.run_fn(args)
    summary = summary_of(args)
    assert summary["ignore_index"] == 254 and np.isfinite(summary["history"]["loss"]).all()
    assert {"iou_0", "iou_1", "iou_2", "val_iou_0"} <= set(summary["history"])
    model = keep.trained
    loss = model.loss
    assert isinstance(loss, SegmentationLoss) and loss.ignore_index == 254

    def flat(metrics):
        for m in metrics:
            yield m
            yield from flat(getattr(m, "metrics", []))

    ious = [m for m in flat(model.metrics) if hasattr(m, "ignore_class")]
    assert len(ious) == 4 and all(m.ignore_class == 254 for m in ious)  # miou + one per class
    # the batches run_fn trains on keep 254 (not remapped), and 254-pixels do not move run_fn's loss
    import tensorflow_transform as tft

    dataset = data.make_dataset([train], tft.TFTransformOutput(uris["transform_graph"]), 8, 3, ignore_index=254)
    images, y = next(iter(dataset))
    ignored = y["mask"].numpy() == 254
    assert ignored.mean() > 0.05
    logits = model(images, training=False).numpy()
    moved = logits.copy()
    moved[ignored] += rng.normal(0, 10, size=moved[ignored].shape).astype(np.float32)
    np.testing.assert_allclose(float(loss(y, moved)), float(loss(y, logits)), rtol=1e-6)
    changed = logits.copy()
    changed[~ignored] += rng.normal(0, 10, size=changed[~ignored].shape).astype(np.float32)
    assert abs(float(loss(y, changed)) - float(loss(y, logits))) > 1e-3  # the check can fail


def test_training_notes_name_the_options_this_data_leaves_without_effect():
    from segbalance.trainer.training_config import TrainingConfig
    from segbalance.trainer.typed_config import from_dict

    def training(**changes):
        return from_dict(TrainingConfig, changes, "training")

    default = training()  # marginal CE + marginal Dice, restore_best
    complete = {"a": [0, 1, 2], "b": [1, 2]}  # class 0 always counts as labelled
    partial = {"a": [0, 1, 2], "b": [0, 2]}
    note, = task.training_notes(default, complete, 3, validation_records=5)
    assert note.startswith("every image has every class labelled") and "missing_labels: marginal, terms[1] " \
        "(dice, marginal) act as the plain loss" in note and "stats.labeled_policy: partial" in note
    assert task.training_notes(default, {}, 3, 5) == [note]  # no labelled sets recorded at all
    assert note.endswith("or set stats.labeled_policy: partial")
    partial_policy, = task.training_notes(default, complete, 3, 5, labeled_policy="partial")  # already set: not advised
    assert "every class in every mask (stats.labeled_policy: partial)" in partial_policy
    assert partial_policy.endswith("(`segbalance ingest` reads labeled.json)")
    assert task.training_notes(default, partial, 3, 5) == []
    exclusion = training(loss={"terms": [{"type": "ce"}, {"type": "exclusion"}]})
    assert "the loss's terms[1] (exclusion) act" in task.training_notes(exclusion, complete, 3, 5)[0]
    plain = training(loss={"terms": [{"type": "ce"}]})
    assert task.training_notes(plain, complete, 3, 5) == []
    # no validation batches: what the best epoch, early stopping and the plateau schedule go by
    none, = task.training_notes(training(early_stopping_patience=3, lr_schedule={"type": "plateau"}, min_epochs=1),
                                partial, 3, 0)
    assert none.startswith("no validation batches") and \
        "so restore_best, early_stopping_patience, lr_schedule.type: plateau have nothing to go by" in none
    assert task.training_notes(training(restore_best=False, loss={"terms": [{"type": "ce"}]}), complete, 3, 0) == []
    # QA 81: SGD at the default rate chosen for Adam learned far worse; mixed precision and XLA on a CPU crawl
    sgd, = task.training_notes(training(optimizer="sgd"), partial, 3, 5)
    assert sgd.startswith("optimizer sgd at learning_rate 0.003, the default chosen for Adam") and \
        sgd.endswith("set training.learning_rate for SGD")
    assert task.training_notes(training(optimizer="sgd", learning_rate=0.05), partial, 3, 5) == []
    cpu, = task.training_notes(training(mixed_precision=True, jit_compile=True), partial, 3, 5)
    assert cpu.startswith("no GPU is visible, and mixed_precision (a step took 20 to 60 times as long") and \
        "and jit_compile (" in cpu and cpu.endswith("set them false to train on this CPU at full speed")
    xla, = task.training_notes(training(jit_compile=True), partial, 3, 5)
    assert "jit_compile (a step took 1.2 to 2.8 times as long on a 2-core CPU) is meant for GPUs" in xla and \
        xla.endswith("set it false to train on this CPU at full speed")
    assert task.training_notes(training(mixed_precision=True), partial, 3, 5, gpus=1) == []


def test_run_fn_says_when_the_missing_label_handling_acts_as_the_plain_loss(tmp_path, capsys, monkeypatch):
    """The tiny pipeline marks every 4th record partial: no note. The same run where ClassStats held
    no partial set (a complete data set): CONFIG's marginal CE is plain CE, and run_fn says so."""
    uris = ti.tiny_pipeline()
    task.run_fn(ti.fn_args_for(uris, str(tmp_path / "partial"), ti.CONFIG))
    assert "SegTrainer: note:" not in capsys.readouterr().out
    monkeypatch.setattr(task, "labeled_by_source_id", lambda uri: {})
    stopped = tmp_path / "complete" / "backup-0123456789abcdef"  # another training's, stopped (QA: never said)
    stopped.mkdir(parents=True)
    (stopped / "latest.weights.h5").write_bytes(b"w" * 2 ** 19)
    task.run_fn(ti.fn_args_for(uris, str(tmp_path / "complete"), ti.CONFIG))
    out = capsys.readouterr().out
    assert "SegTrainer: note: every image has every class labelled" in out
    assert "the loss's missing_labels: marginal act as the plain loss" in out
    assert f"SegTrainer: note: 1 backup(s) of other trainings that were stopped (0.5 MiB): {stopped};" in out
    assert stopped.is_dir() and [p.name for p in (tmp_path / "complete").glob("backup-*")] == [stopped.name]


def test_warm_start_from_another_architecture_is_one_short_line(tmp_path):
    """Another base_filters: Keras names every layer that did not load (a 4,000-character line); the error
    is the user's (one line, exit 2 from `run`) and keeps the first mismatch and what to do."""
    from segbalance.contract import UserError

    def layers(width):
        return keras.Sequential([keras.Input((3,))] + [keras.layers.Dense(width, name=f"layer_with_a_long_name_{i}")
                                                       for i in range(12)])

    layers(8).save(str(tmp_path / "model.keras"))
    with pytest.raises(UserError) as caught:
        task.warm_start(layers(16), str(tmp_path))
    message = str(caught.value)
    assert "\n" not in message and len(message) < 600, message
    assert "shape" in message and message.endswith("set training.warm_start: false for this run")


def test_warm_start_says_its_weights_replace_the_backbone_weights(tmp_path, capsys):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.save(str(tmp_path / "model.keras"))
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert task.warm_start(other, str(tmp_path), "imagenet") == str(tmp_path / "model.keras")
    np.testing.assert_array_equal(other.get_weights()[0], model.get_weights()[0])
    assert capsys.readouterr().out.strip() == (f"SegTrainer: warm start from {tmp_path / 'model.keras'} (its weights "
                                               f"replace training.backbone_weights: imagenet)")
    task.warm_start(other, str(tmp_path))
    assert capsys.readouterr().out.strip() == f"SegTrainer: warm start from {tmp_path / 'model.keras'}"


def test_warm_start_refuses_a_base_model_of_other_class_names(tmp_path, capsys):
    """Ids swapped between runs ([background, ellipse, rectangle, circle] -> [background, circle,
    rectangle, ellipse]): the weights fit, but each output channel means another class. Warm start
    fine-tuned from them without a word; now it refuses, naming both lists."""
    from segbalance.trainer.model_classes import write_model_classes

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    model.save(str(tmp_path / "model.keras"))
    old, new = ["background", "ellipse", "rectangle", "circle"], ["background", "circle", "rectangle", "ellipse"]
    write_model_classes(str(tmp_path), old)
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    with pytest.raises(task.WarmStartError) as caught:
        task.warm_start(other, str(tmp_path), None, new)
    assert str(old) in str(caught.value) and str(new) in str(caught.value)
    assert "Set training.warm_start: false" in str(caught.value)
    assert not np.array_equal(other.get_weights()[0], model.get_weights()[0])  # nothing loaded
    assert task.warm_start(other, str(tmp_path), None, old) == str(tmp_path / "model.keras")  # same names: loads
    np.testing.assert_array_equal(other.get_weights()[0], model.get_weights()[0])
    (tmp_path / "classes.json").unlink()  # a model exported before classes.json: nothing to compare names with
    assert task.warm_start(other, str(tmp_path), None, new) == str(tmp_path / "model.keras")


class StopBeforeExport(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        raise KeyboardInterrupt("simulated stop after the last epoch, before the export")


def test_a_retry_after_a_stop_before_the_export_trains_no_epoch(tmp_path):
    """README: a retry after a stop during the export trains no epoch; its summary still lists every epoch of the
    training (QA 95 L1: the README said `epochs_run` was [] then), and the best epoch's weights are exported."""
    uris = ti.tiny_pipeline()
    config = {**ti.CONFIG, "epochs": 2}
    first = ti.fn_args_for(uris, str(tmp_path), {**config, "_extra_callbacks": [StopBeforeExport()]})
    first.model_run_dir = str(tmp_path / "model_run_1")
    with pytest.raises(KeyboardInterrupt):
        task.run_fn(first)
    assert not os.path.exists(os.path.join(first.serving_model_dir, "saved_model.pb"))
    record = Record()
    second = ti.fn_args_for(uris, str(tmp_path), {**config, "_extra_callbacks": [record]})
    second.model_run_dir = str(tmp_path / "model_run_2")
    task.run_fn(second)
    summary = summary_of(second)
    assert record.epochs == [] and summary["epochs_run"] == [0, 1] and len(summary["history"]["val_miou"]) == 2
    assert summary["best_epoch"] == int(np.argmax(summary["history"]["val_miou"]))
    assert os.path.exists(os.path.join(second.serving_model_dir, "saved_model.pb"))
    assert not [d for d in os.listdir(tmp_path) if d.startswith("backup-")]  # removed once exported


@pytest.mark.slow
@pytest.mark.parametrize("steps_per_epoch", [None, 3])  # one pass an epoch; or 3 batches of an endless stream
def test_a_resumed_training_ends_where_an_uninterrupted_one_does(tmp_path, steps_per_epoch):
    """Resuming restored the weights and the epoch but restarted the data: the shuffle order and the
    augmentation seeds of epoch 0 again (validation mIoU 0.62 against 0.73 in the outside check). Every
    batch is now a function of the seed and its place in the stream, which a resumed fit starts at."""
    uris = ti.tiny_pipeline()
    # class weights decaying over the 4 epochs: the resumed epochs continue the decay (mix 2/4, 3/4)
    config = {**ti.CONFIG, "epochs": 4, "steps_per_epoch": steps_per_epoch,
              "augmentation": {"flip_horizontal": True, "flip_vertical": True, "scale": [0.8, 1.25],
                               "brightness": 0.1},
              "loss": {**ti.CONFIG["loss"], "class_weight_decay_epochs": 4}}
    whole = ti.fn_args_for(uris, str(tmp_path / "whole"), config)
    task.run_fn(whole)
    first = ti.fn_args_for(uris, str(tmp_path / "run"), {**config, "_extra_callbacks": [Interrupt()]})
    first.model_run_dir = str(tmp_path / "run" / "model_run_1")  # a retried TFX execution gets a new directory
    with pytest.raises(KeyboardInterrupt):
        task.run_fn(first)
    assert len([d for d in os.listdir(tmp_path / "run") if d.startswith("backup-")]) == 1
    record = Record()
    second = ti.fn_args_for(uris, str(tmp_path / "run"), {**config, "_extra_callbacks": [record]})
    second.model_run_dir = str(tmp_path / "run" / "model_run_2")
    task.run_fn(second)
    steps = summary_of(second)["steps_per_epoch"]
    assert record.epochs == [2, 3] and record.iterations_at_start == 2 * steps  # epochs 0 and 1 are not redone
    # the summary covers the whole training, not only the resumed fit's epochs (QA 25: [2, 3], and a best epoch
    # of 2 read off history[2] = epoch 4's value)
    assert summary_of(second)["epochs_run"] == summary_of(whole)["epochs_run"] == [0, 1, 2, 3]
    assert summary_of(second)["history"]["class_weight_mix"] == [0.0, 0.25, 0.5, 0.75]
    assert set(summary_of(second)["history"]) == set(summary_of(whole)["history"])
    assert summary_of(second)["best_epoch"] == summary_of(whole)["best_epoch"]
    assert not [d for d in os.listdir(tmp_path / "run") if d.startswith("backup-")]  # removed when done
    for key in ("loss", "val_loss", "val_miou"):
        np.testing.assert_allclose(summary_of(second)["history"][key], summary_of(whole)["history"][key],
                                   rtol=1e-5, err_msg=key)
    resumed = keras.saving.load_model(os.path.join(second.serving_model_dir, task.KERAS_FILE), safe_mode=True)
    uninterrupted = keras.saving.load_model(os.path.join(whole.serving_model_dir, task.KERAS_FILE), safe_mode=True)
    for a, b in zip(resumed.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
