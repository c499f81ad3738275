"""Training recipe (issue 15): schedules and optimizers, augmentation, best epoch + early stopping,
pretrained / local backbone weights with the family's preprocessing, encoder freeze."""
import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from segbalance.contract import UserError
from segbalance.trainer import data, model as model_lib
from segbalance.trainer.optimization import WarmupDecay, make_optimizer, make_schedule
from segbalance.trainer.training_callbacks import BestEpoch, StopOnDivergence, TrainingDivergedError
from segbalance.trainer.training_config import Augmentation, LearningRateSchedule, TrainingConfig
from segbalance.trainer.typed_config import ConfigError, from_dict


# --------------------------------------------------------------------------- schedules / optimizers
def reference_lr(step, peak, kind, warmup, decay, final=0.0, power=1.0):
    """The schedule written out in plain Python (trainer/optimization.py's docstring)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / decay)
    if kind == "constant":
        return peak
    if kind == "cosine":
        return peak * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * p)))
    return peak * (final + (1 - final) * (1 - p) ** power)


@pytest.mark.parametrize("kind,warmup_epochs,final,power", [
    ("constant", 0, 0.0, 1.0), ("constant", 2, 0.0, 1.0), ("cosine", 0, 0.0, 1.0), ("cosine", 1.5, 0.1, 1.0),
    ("polynomial", 0, 0.0, 1.0), ("polynomial", 1, 0.05, 2.0)])
def test_schedule_values_match_the_formula(kind, warmup_epochs, final, power):
    training = from_dict(TrainingConfig, {"epochs": 10, "learning_rate": 0.02, "lr_schedule": {
        "type": kind, "warmup_epochs": warmup_epochs, "final_fraction": final, "power": power}})
    steps_per_epoch = 4
    schedule = make_schedule(training, steps_per_epoch)
    warmup = round(warmup_epochs * steps_per_epoch)
    decay = 10 * steps_per_epoch - warmup
    for step in (0, 1, warmup - 1, warmup, warmup + 1, 17, 25, 39, 40, 55):
        if step < 0:
            continue
        expected = reference_lr(step, 0.02, kind, warmup, decay, final, power)
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-9), step
    # end points: the peak right after warm-up, final_fraction x peak at the end and after
    assert float(schedule(warmup)) == pytest.approx(0.02, rel=1e-5)
    if kind != "constant":
        assert float(schedule(40)) == pytest.approx(0.02 * final, abs=1e-9)
        assert float(schedule(1000)) == pytest.approx(0.02 * final, abs=1e-9)
    if warmup:
        assert float(schedule(0)) == pytest.approx(0.02 / warmup)  # the first update is not at lr 0


def test_keras_cosine_decay_agrees_without_warm_up():
    ours = WarmupDecay(0.1, "cosine", 0, 30, final_fraction=0.2)
    keras_cosine = keras.optimizers.schedules.CosineDecay(0.1, 30, alpha=0.2)
    for step in (0, 7, 15, 29, 30, 45):
        assert float(ours(step)) == pytest.approx(float(keras_cosine(step)), rel=1e-5)
    keras_poly = keras.optimizers.schedules.PolynomialDecay(0.1, 30, end_learning_rate=0.01, power=2.0)
    ours = WarmupDecay(0.1, "polynomial", 0, 30, final_fraction=0.1, power=2.0)
    for step in (0, 7, 15, 29, 30, 45):
        assert float(ours(step)) == pytest.approx(float(keras_poly(step)), rel=1e-5)


def test_schedule_serialises():
    schedule = WarmupDecay(0.1, "polynomial", 5, 20, 0.1, 2.0)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(again, WarmupDecay) and again.get_config() == schedule.get_config()
    with pytest.raises(TypeError, match="kind"):  # QA 67: a constant rate by default, where the config's is cosine
        WarmupDecay(0.1)


def test_optimizer_choice_momentum_nesterov_weight_decay():
    for name, cls in (("adam", keras.optimizers.Adam), ("adamw", keras.optimizers.AdamW),
                      ("sgd", keras.optimizers.SGD)):
        optimizer = make_optimizer(TrainingConfig(optimizer=name, learning_rate=0.25,
                                                  lr_schedule=LearningRateSchedule(warmup_epochs=0)), 10)
        assert type(optimizer) is cls and float(optimizer.learning_rate) == 0.25
    # the schema default, after its warm-up of one epoch (10 steps): 1/10 of it at the first step
    assert float(make_optimizer(TrainingConfig(), 10).learning_rate) == pytest.approx(3e-4)
    sgd = make_optimizer(TrainingConfig(optimizer="sgd", momentum=0.5, nesterov=True, weight_decay=0.01), 10)
    assert sgd.momentum == 0.5 and sgd.nesterov and sgd.weight_decay == 0.01
    assert make_optimizer(TrainingConfig(optimizer="adamw"), 10).weight_decay == pytest.approx(0.004)  # Keras' own
    assert make_optimizer(TrainingConfig(optimizer="adam"), 10).weight_decay is None
    assert make_optimizer(TrainingConfig(optimizer="adamw", weight_decay=0.1), 10).weight_decay == 0.1


@pytest.mark.parametrize("values,message", [
    ({"lr_schedule": {"type": "step"}}, "training.lr_schedule.type: 'step' is not allowed"),
    ({"epochs": 8, "lr_schedule": {"warmup_epochs": 9}}, "training.lr_schedule.warmup_epochs: 9.0 is longer"),
    ({"lr_schedule": {"final_fraction": 1.5}}, "training.lr_schedule.final_fraction"),
    ({"momentum": 1.0}, "training.momentum"),
    ({"lr_schedule": {"type": "plateau", "warmup_epochs": 2}},
     "training.lr_schedule.warmup_epochs: 2.0: plateau has no warm-up: remove warmup_epochs"),
    ({"lr_schedule": {"type": "plateau", "factor": 1.0}}, "training.lr_schedule.factor"),
    ({"lr_schedule": {"patience": 0}}, "training.lr_schedule.patience"),
    ({"weight_decay": -1}, "training.weight_decay"),
    ({"early_stopping_patience": 0}, "training.early_stopping_patience"),
    ({"epochs": 5, "min_epochs": 6}, "training.min_epochs: must be an integer from 0 to epochs"),
    ({"augmentation": {"scale": [2.0, 1.0]}}, "training.augmentation.scale"),
    ({"augmentation": {"contrast": 1.0}}, "training.augmentation.contrast"),
    ({"backbone_weights": "imagenet"}, "training.backbone_weights: needs a backbone"),
    ({"freeze_encoder_epochs": 2}, "training.freeze_encoder_epochs: needs a backbone"),
])
def test_recipe_options_are_checked(values, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        from_dict(TrainingConfig, values, "training")


def test_the_default_warm_up_is_one_epoch_and_plateau_takes_none():
    """Session 32: 1 warm-up epoch by default (make run's job, seeds 0-4: mean 0.752 against 0.746, higher on
    4 of 5); plateau reads no warm-up, so its default is ignored there and 0 is accepted, another value refused."""
    from segbalance.trainer.optimization import make_schedule

    default = TrainingConfig()
    assert default.lr_schedule.type == "cosine" and default.lr_schedule.warmup_epochs == 1.0
    schedule = make_schedule(default, steps_per_epoch=10)
    assert schedule.warmup_steps == 10 and float(schedule(0)) == pytest.approx(default.learning_rate / 10)
    assert float(schedule(9)) == pytest.approx(default.learning_rate)  # the peak at the warm-up's last step
    for plateau in ({"type": "plateau"}, {"type": "plateau", "warmup_epochs": 0}):
        config = from_dict(TrainingConfig, {"lr_schedule": plateau}, "training")
        assert make_schedule(config, steps_per_epoch=10) == config.learning_rate  # a plain rate: no warm-up
    one_epoch = from_dict(TrainingConfig, {"epochs": 1}, "training")  # the warm-up fits a 1-epoch training
    assert make_schedule(one_epoch, steps_per_epoch=4).warmup_steps == 4


# --------------------------------------------------------------------------- augmentation
def coordinate_batch(batch=4, size=8):
    """Image channels 0/1 = source row/column; mask = source pixel id row * size + column."""
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    image = np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.float32)
    mask = (rows * size + cols).astype(np.int32)
    return tf.constant(np.repeat(image[None], batch, 0)), tf.constant(np.repeat(mask[None], batch, 0))


def test_geometry_keeps_image_and_mask_aligned_and_pads_the_mask_with_ignore():
    size, ignore = 8, 255
    image, mask = coordinate_batch(16, size)
    config = Augmentation(scale=(0.6, 1.8), flip_horizontal=True, flip_vertical=True, rotate90=True)
    out_image, out_mask, out_weights = data.augment(image, mask, tf.ones_like(mask, tf.float32),
                                                    tf.constant([7, 0], tf.int64), config, ignore)
    out_image, out_mask, out_weights = out_image.numpy(), out_mask.numpy(), out_weights.numpy()
    labelled = out_mask != ignore
    # bilinear of a linear ramp gives the exact source coordinate; nearest picks the closest source pixel
    assert np.all(np.abs(out_mask[labelled] // size - out_image[..., 0][labelled]) <= 0.5 + 1e-4)
    assert np.all(np.abs(out_mask[labelled] % size - out_image[..., 1][labelled]) <= 0.5 + 1e-4)
    assert set(np.unique(out_mask)) <= set(range(size * size)) | {ignore}
    assert (~labelled).any() and labelled.mean() > 0.3  # some images shrunk: a border of ignore
    np.testing.assert_array_equal(out_weights, labelled.astype(np.float32))  # padded weights 0
    # padding is outside the source image: the image there is 0 in both channels
    assert np.all(out_image[..., :2][~labelled] == 0.0)
    # each transform happened to some image (a 90-degree turn swaps row and column directions)
    row_step = np.diff(out_image[..., 0], axis=1)
    assert (np.abs(row_step) > 0.1).any()


def test_flips_and_rotations_equal_numpy():
    image, mask = coordinate_batch(32, 8)
    config = Augmentation(scale=(1.0, 1.0), flip_horizontal=True, flip_vertical=True, rotate90=True)
    _, out_mask, _ = data.augment(image, mask, tf.ones_like(mask, tf.float32), tf.constant([3, 1], tf.int64), config)
    source = mask.numpy()[0]
    dihedral = [np.rot90(m, k) for m in (source, source[:, ::-1]) for k in range(4)]
    seen = set()
    for out in out_mask.numpy():
        matches = [i for i, d in enumerate(dihedral) if np.array_equal(out, d)]
        assert matches, "not a flip / 90-degree rotation of the input"
        seen.add(matches[0])
    assert len(seen) >= 6  # 32 draws cover most of the 8 symmetries
    # a non-square image is never turned by 90 degrees
    wide_image, wide_mask = tf.zeros([8, 8, 16, 3]), tf.reshape(tf.range(8 * 8 * 16), [8, 8, 16])
    out = data.augment(wide_image, wide_mask, tf.ones([8, 8, 16]), tf.constant([1, 1], tf.int64),
                       Augmentation(scale=(1.0, 1.0), rotate90=True))[1]
    assert out.shape == (8, 8, 16)


def test_mask_values_stay_ids_or_ignore_with_everything_on():
    rng = np.random.default_rng(0)
    mask = rng.choice([0, 1, 2, 254], size=(6, 16, 16)).astype(np.int32)
    image = tf.constant(rng.normal(size=(6, 16, 16, 3)).astype(np.float32))
    config = Augmentation(scale=(0.5, 2.0), rotate90=True, brightness=0.5, contrast=0.5)
    for seed in range(5):
        out_mask = data.augment(image, tf.constant(mask), tf.ones([6, 16, 16]), tf.constant([seed, 0], tf.int64),
                                config, ignore_index=254)[1].numpy()
        assert set(np.unique(out_mask)) <= {0, 1, 2, 254}


def test_photometric_jitter_changes_the_image_only_and_is_deterministic():
    rng = np.random.default_rng(1)
    image = tf.constant(rng.normal(2.0, 3.0, size=(8, 8, 8, 3)).astype(np.float32))
    mask = tf.constant(rng.integers(0, 3, (8, 8, 8)).astype(np.int32))
    config = Augmentation(scale=(1.0, 1.0), flip_horizontal=False, flip_vertical=False, brightness=0.4, contrast=0.3)
    seed = tf.constant([9, 2], tf.int64)
    out_image, out_mask, _ = data.augment(image, mask, tf.ones([8, 8, 8]), seed, config)
    np.testing.assert_array_equal(out_mask.numpy(), mask.numpy())
    x, y = image.numpy(), out_image.numpy()
    for i in range(8):  # y = (x - channel mean) * c + channel mean + b * std(y before b), 0.7 <= c <= 1.3
        fits = [np.polyfit(x[i, ..., ch].ravel(), y[i, ..., ch].ravel(), 1) for ch in range(3)]
        slope = fits[0][0]
        assert 0.7 - 1e-4 <= slope <= 1.3 + 1e-4
        for ch, (s, intercept) in enumerate(fits):
            assert s == pytest.approx(slope, abs=1e-4)
            np.testing.assert_allclose(y[i, ..., ch], slope * x[i, ..., ch] + intercept, atol=1e-3)
        shifts = y[i].mean(axis=(0, 1)) - x[i].mean(axis=(0, 1))  # the brightness shift, same for every channel
        np.testing.assert_allclose(shifts, shifts[0], atol=1e-4)
        assert abs(shifts[0]) <= 0.4 * np.std(x[i]) * 1.3 * 1.01
    again = data.augment(image, mask, tf.ones([8, 8, 8]), seed, config)[0].numpy()
    np.testing.assert_array_equal(again, y)
    other = data.augment(image, mask, tf.ones([8, 8, 8]), tf.constant([10, 2], tf.int64), config)[0].numpy()
    assert not np.allclose(other, y)


def test_everything_off_is_the_identity():
    image, mask = coordinate_batch(3, 8)
    off = Augmentation(scale=(1.0, 1.0), flip_horizontal=False, flip_vertical=False)
    out_image, out_mask, _ = data.augment(image, mask, tf.ones([3, 8, 8]), tf.constant([1, 2], tf.int64), off)
    np.testing.assert_array_equal(out_image.numpy(), image.numpy())
    np.testing.assert_array_equal(out_mask.numpy(), mask.numpy())


# --------------------------------------------------------------------------- best epoch / early stopping
class Scripted(keras.Model):
    """A one-weight model for driving BestEpoch by hand."""

    def __init__(self):
        super().__init__()
        self.w = self.add_weight(shape=(), initializer="zeros")

    def call(self, x):
        return x * self.w


def drive(callback, model, values, start=0):
    callback.set_model(model)
    callback.on_train_begin()
    for epoch, value in enumerate(values, start):
        model.w.assign(float(epoch))  # the weights "of" this epoch
        callback.on_epoch_end(epoch, {"val_miou": value})
        if getattr(model, "stop_training", False):
            break
    callback.on_train_end()


def test_best_epoch_restores_and_stops_after_patience(tmp_path):
    model = Scripted()
    best = BestEpoch(patience=2, state_dir=str(tmp_path / "state"))
    drive(best, model, [0.2, 0.5, 0.4, 0.45, 0.9, 0.1])
    assert best.best_epoch == 1 and best.stopped_epoch == 3 and float(model.w) == 1.0  # epoch 1's weights back
    assert best.summary() == {"best_epoch": 1, "best_val_miou": 0.5, "stopped_epoch": 3, "restored_best": True}
    last = BestEpoch(restore=False)
    model.stop_training = False
    drive(last, model, [0.2, 0.5, 0.4])
    assert float(model.w) == 2.0 and last.stopped_epoch is None  # restore_best false: the last epoch
    none = BestEpoch()
    drive(none, model, [])
    assert none.summary()["best_epoch"] is None


def test_first_reason_keeps_the_line_after_a_colon():
    keras_message = ("A total of 104 objects could not be loaded. Example error message for object <Conv2D name=Conv1, "
                     "built=True>:\n\nLayer 'Conv1' expected 1 variables, but received 0 variables during loading. "
                     "Expected: ['kernel']\n\nList of objects that could not be loaded:\n[<Conv2D ...>]")
    assert model_lib.first_reason(keras_message) == (
        "A total of 104 objects could not be loaded. Example error message for object <Conv2D name=Conv1, "
        "built=True>: Layer 'Conv1' expected 1 variables, but received 0 variables during loading. Expected: ['kernel']")
    assert model_lib.first_reason("Unable to open file\nmore") == "Unable to open file"
    assert model_lib.first_reason("") == ""
    assert model_lib.first_reason("word " * 200).endswith(" ...") and len(model_lib.first_reason("word " * 200)) < 410


def test_a_nan_is_no_improvement_and_no_crash(capsys):
    """QA 27: a NaN val_miou before any number stopped early stopping with a TypeError (best_epoch None)."""
    model = Scripted()
    best = BestEpoch(patience=2)
    drive(best, model, [math.nan, 0.1, 0.2])
    assert best.best_epoch == 2 and best.stopped_epoch is None and float(model.w) == 2.0
    model.stop_training = False
    stuck = BestEpoch(patience=2)
    drive(stuck, model, [math.nan, math.nan, math.nan])
    assert stuck.best_epoch is None and stuck.stopped_epoch == 1  # as with EarlyStopping: 2 epochs without a number
    assert "val_miou has not been a number for 2 epoch(s)" in capsys.readouterr().out
    model.stop_training = False
    after = BestEpoch(patience=2)
    drive(after, model, [0.3, math.nan, math.nan, 0.9])
    assert after.best_epoch == 0 and after.stopped_epoch == 2


def test_a_diverged_epoch_is_named_with_what_is_not_finite():
    """Session 30: Keras trained on after a NaN, BestEpoch 'restored' NaN weights and run_fn exported them."""
    model = Scripted()
    stop = StopOnDivergence("lower training.learning_rate (now 3)")
    stop.set_model(model)
    stop.on_epoch_end(0, {"loss": 0.5, "val_loss": 0.7})
    stop.on_epoch_end(1, {})  # no loss in the logs: nothing to judge
    with pytest.raises(TrainingDivergedError, match=r"^the training diverged in epoch 1: the training loss is nan; "
                       r"nothing of that epoch is kept \(no epoch finished before it\): lower training.learning_rate "
                       r"\(now 3\)$"):
        stop.on_epoch_end(0, {"loss": math.nan})
    with pytest.raises(TrainingDivergedError, match=r"in epoch 4: the validation loss is inf; .*\(the backup keeps "
                                                    r"epoch 3\)"):
        stop.on_epoch_end(3, {"loss": 0.5, "val_loss": math.inf})
    model.w.assign(math.nan)  # the last step of an epoch broke the weights; the epoch's mean loss is a number
    with pytest.raises(TrainingDivergedError, match=r"epoch 2: 1 weight variable\(s\) hold NaN or infinity "
                                                    rf"\({model.w.path}\)"):
        stop.on_epoch_end(1, {"loss": 0.5})
    assert issubclass(TrainingDivergedError, UserError)  # segbalance run: one line, exit 2


def test_divergence_advice_names_the_settings_to_change():
    from segbalance.trainer.task import divergence_advice

    assert divergence_advice(TrainingConfig(learning_rate=0.5)) == "lower training.learning_rate (now 0.5)"
    assert divergence_advice(TrainingConfig(learning_rate=0.5, mixed_precision=True, warm_start=True)) == (
        "lower training.learning_rate (now 0.5) or set training.mixed_precision: false, and check the starting "
        "weights (training.warm_start, training.backbone_weights)")


def test_no_early_stop_before_min_epochs_and_patience_counts_from_there():
    model = Scripted()
    flat = [0.2, 0.5] + [0.3] * 10  # best at epoch 1, then flat (a model stuck on background looks like this)
    best = BestEpoch(patience=2, min_epochs=6)
    drive(best, model, flat)
    assert best.stopped_epoch == 7  # without min_epochs: 3; with it: epochs 6 and 7 count, stop after 7
    model.stop_training = False
    late = BestEpoch(patience=2, min_epochs=6)
    drive(late, model, [0.2, 0.5, 0.3, 0.3, 0.3, 0.3, 0.3, 0.6, 0.3, 0.3, 0.3])
    assert late.best_epoch == 7 and late.stopped_epoch == 9  # a better epoch after the minimum resets the count


def _plateau_rates(values, min_epochs, patience, state_dir=None, resume_at=None):
    """The rate of each epoch under plateau_callback (a fresh callback from ``resume_at`` on when given:
    a resumed training, same optimizer, state read from ``state_dir``)."""
    from segbalance.trainer.optimization import plateau_callback

    training = from_dict(TrainingConfig, {"learning_rate": 0.01, "epochs": len(values), "min_epochs": min_epochs,
                                          "lr_schedule": {"type": "plateau", "patience": patience, "factor": 0.5}},
                         "training")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=make_optimizer(training, 5), loss="mse")
    seen, callback = [], None
    for epoch, value in enumerate(values):
        if callback is None or epoch == resume_at:
            callback = plateau_callback(training, state_dir=state_dir)
            callback.set_model(model)
            callback.on_train_begin()
        callback.on_epoch_begin(epoch)
        logs = {"val_miou": value}
        callback.on_epoch_end(epoch, logs)
        seen.append(logs["learning_rate"])
    return seen


@pytest.mark.parametrize("values, min_epochs, patience", [
    ([0.5, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4], 4, 1),
    ([0.5, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4], 3, 1),
    ([0.1, 0.3, 0.2, 0.25, 0.29, 0.28, 0.31, 0.1, 0.1, 0.1], 4, 2),
    ([0.1, 0.3, 0.2, 0.25, 0.29, 0.28, 0.31, 0.1, 0.1, 0.1], 0, 2),
])
def test_plateau_cuts_start_at_min_epochs_and_count_like_early_stopping(values, min_epochs, patience):
    """No cut before min_epochs; the patience counts from there against the best value so far, earlier
    epochs included (a first watched epoch worse than an earlier best is no improvement): the first
    cut comes where early stopping with the same patience stops (QA: it came an epoch later, and a
    partial recovery below the real best reset the count, losing the cut at epoch 5 of the third curve)."""
    seen = _plateau_rates(values, min_epochs, patience)
    np.testing.assert_allclose(seen, reference_plateau(values, 0.01, 0.5, patience, 0.0, start=min_epochs), rtol=1e-6)
    first_cut = next(epoch for epoch in range(len(seen) - 1) if seen[epoch + 1] < seen[epoch])
    stopper = BestEpoch(patience=patience, min_epochs=min_epochs)
    drive(stopper, Scripted(), values)
    assert first_cut == stopper.stopped_epoch >= min_epochs


@pytest.mark.parametrize("resume_at", [2, 5, 6, 8])
def test_plateau_state_survives_a_resume(tmp_path, resume_at):
    """A resumed training (a new callback at epoch ``resume_at``, state from the backup folder) cuts the
    rate in the epochs the uninterrupted one does; before, the best value restarted at -inf."""
    values = [0.1, 0.3, 0.2, 0.25, 0.29, 0.28, 0.31, 0.1, 0.1, 0.1]
    expected = _plateau_rates(values, 4, 2)
    assert _plateau_rates(values, 4, 2, str(tmp_path / "backup"), resume_at) == expected
    if resume_at == 5:  # without the state the resumed callback took 0.28 for a new best and lost the cut
        assert _plateau_rates(values, 4, 2, None, resume_at) != expected


def test_best_epoch_survives_a_resume(tmp_path):
    state = str(tmp_path / "state")
    model = Scripted()
    first = BestEpoch(patience=3, state_dir=state)
    first.set_model(model)
    first.on_train_begin()
    for epoch, value in enumerate([0.3, 0.7, 0.6]):
        model.w.assign(float(epoch))
        first.on_epoch_end(epoch, {"val_miou": value})
    # killed here; a new process resumes at epoch 3 with the state on disk
    resumed_model = Scripted()
    second = BestEpoch(patience=3, state_dir=state)
    drive(second, resumed_model, [0.65, 0.5, 0.9], start=3)
    assert second.best_epoch == 1 and second.stopped_epoch == 4  # patience counts epochs 2, 3, 4
    assert float(resumed_model.w) == 1.0  # epoch 1's weights, read back from the state folder


def test_a_backup_stopped_while_saving_keeps_the_previous_epoch_whole(tmp_path, monkeypatch):
    """Keras's BackupAndRestore wrote latest.weights.h5 in place: a process stopped during the write left a
    file no resume could read (QA, helper 35). SafeBackupAndRestore writes beside it and renames."""
    from segbalance.trainer.training_callbacks import SafeBackupAndRestore, unreadable_backup

    def model():
        built = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        built.compile(optimizer="adam", loss="mse")
        return built

    trained, backup = model(), tmp_path / "backup"
    trained.fit(np.ones((4, 3), "float32"), np.zeros((4, 2), "float32"), epochs=1, verbose=0,
                callbacks=[SafeBackupAndRestore(str(backup), delete_checkpoint=False)])
    epoch_1 = [np.array(w) for w in trained.get_weights()]
    trained.layers[0].kernel.assign(np.full((3, 2), 7.0, "float32"))  # epoch 2 changed the weights

    def stopped(filepath, overwrite=True):  # the process is stopped half-way through the write
        with open(filepath, "wb") as f:
            f.write(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(trained, "save_weights", stopped)
    callback = SafeBackupAndRestore(str(backup), delete_checkpoint=False)
    callback.set_model(trained)
    with pytest.raises(KeyboardInterrupt):
        callback.on_epoch_end(1)
    assert unreadable_backup(str(backup)) is None
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 1
    restored = model()
    restored.load_weights(str(backup / "latest.weights.h5"))
    assert all(np.array_equal(a, b) for a, b in zip(restored.get_weights(), epoch_1))
    (backup / "training_metadata.json").write_text('{"epoch": ')  # cut short too: found unreadable
    assert unreadable_backup(str(backup)).startswith("training_metadata.json: JSONDecodeError")


@pytest.mark.parametrize("name, content", [("best_epoch.json", b'{"best": 0.5, "be'),
                                           ("epoch_logs.json", b"[]"),
                                           ("best_epoch_weights.npz", b"PK\x03\x04" + b"\0" * 40)])
def test_a_damaged_state_file_beside_the_backup_makes_it_unreadable(tmp_path, name, content):
    """QA 91 L3: a cut-short best_epoch.json in the training backup was a traceback at every retry (BestEpoch
    read it after the backup was judged readable); now the backup is set aside and the training starts again.
    A training.backup_dir holding '[' (QA 97): its files were globbed, none matched, and the damage went unseen."""
    from segbalance.trainer.training_callbacks import BestEpoch, EpochLog, unreadable_backup

    backup = tmp_path / "backup[1]"
    best, log = BestEpoch(state_dir=str(backup)), EpochLog(state_dir=str(backup))
    for callback in (best, log):
        callback.set_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
        callback.on_train_begin()
        callback.on_epoch_end(0, {"val_miou": 0.5})
    assert sorted(os.listdir(backup)) == ["best_epoch.json", "best_epoch_weights.npz", "epoch_logs.json"]
    assert unreadable_backup(str(backup)) is None
    (backup / name).write_bytes(content)
    assert unreadable_backup(str(backup)).startswith(f"{name}: ")


# --------------------------------------------------------------------------- backbone weights
@pytest.mark.parametrize("where", ["local", "remote"])
def test_local_backbone_weights_file_is_loaded(tmp_path, where):
    """remote: a file on gs:// in a compiled pipeline (ram:// here) was refused as "not a file" (QA 58)."""
    encoder = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    recognisable = [np.full(w.shape, (i % 97) / 97.0 + 0.01, np.float32) for i, w in enumerate(encoder.get_weights())]
    encoder.set_weights(recognisable)
    path = str(tmp_path / "encoder.weights.h5")
    encoder.save_weights(path)
    if where == "remote":
        tf.io.gfile.copy(path, f"ram://{tmp_path.name}/encoder.weights.h5", overwrite=True)
        path = f"ram://{tmp_path.name}/encoder.weights.h5"
    training = from_dict(TrainingConfig, {"image_size": [64, 64], "backbone": "MobileNetV2", "depth": 3,
                                          "base_filters": 4, "backbone_weights": path})
    model = model_lib.build_model(training, 3)
    by_id = {id(w): value for w, value in zip(encoder.weights, recognisable)}
    compared = 0
    for layer in model.get_layer("encoder").layers:  # the encoder up to the deepest skip it feeds
        if not layer.weights:
            continue
        for w, source in zip(layer.weights, encoder.get_layer(layer.name).weights):
            np.testing.assert_array_equal(np.array(w), by_id[id(source)], err_msg=w.path)
            compared += 1
    assert compared > 50
    random = model_lib.build_model(from_dict(TrainingConfig, {**{"image_size": [64, 64], "backbone": "MobileNetV2",
                                                                  "depth": 3, "base_filters": 4}}), 3)
    assert not np.array_equal(np.array(random.get_layer("encoder").weights[0]), recognisable[0])


def test_backbone_weights_errors_are_user_errors(tmp_path):
    base = {"image_size": [32, 32], "backbone": "MobileNetV2", "depth": 3, "base_filters": 4}
    with pytest.raises(UserError, match="training.backbone_weights: .*missing.weights.h5 is not a file"):
        model_lib.build_model(from_dict(TrainingConfig, {**base, "backbone_weights": str(tmp_path / "missing.weights.h5")}), 3)
    with pytest.raises(UserError, match="training.backbone_weights: ram://nowhere/missing.weights.h5 is not a file this "
                                       "machine can read"):
        model_lib.build_model(from_dict(TrainingConfig, {**base, "backbone_weights": "ram://nowhere/missing.weights.h5"}),
                              3)
    other = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    other.save_weights(str(tmp_path / "resnet.weights.h5"))
    with pytest.raises(UserError, match="does not load into MobileNetV2"):
        model_lib.build_model(from_dict(TrainingConfig, {**base, "backbone_weights": str(tmp_path / "resnet.weights.h5")}), 3)


def test_imagenet_offline_fails_before_any_download_naming_the_cache_file(tmp_path, monkeypatch):
    from keras.src.utils import file_utils

    monkeypatch.setattr(model_lib, "keras_cache_dir", lambda: str(tmp_path / "models"))
    monkeypatch.setattr(model_lib, "host_reachable", lambda url, timeout=3.0: False)
    downloads = []
    monkeypatch.setattr(file_utils, "get_file", lambda *a, **k: downloads.append(a) or "/nowhere")
    training = from_dict(TrainingConfig, {"image_size": [32, 32], "backbone": "MobileNetV2", "depth": 3,
                                          "base_filters": 4, "backbone_weights": "imagenet"})
    with pytest.raises(UserError) as caught:
        model_lib.build_model(training, 3)
    message = str(caught.value)
    assert "\n" not in message and not downloads
    expected = os.path.join(str(tmp_path / "models"), "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5")
    assert expected in message and "storage.googleapis.com" in message
    # a cached file is used without asking the network: get_file is reached (it reads the cache)
    (tmp_path / "models").mkdir()
    open(expected, "wb").close()
    with pytest.raises(Exception) as caught:
        model_lib.build_model(training, 3)
    assert downloads and downloads[0][0].endswith("_no_top.h5")


def test_backbone_preprocessing_is_the_family_s(tmp_path):
    model = model_lib.build_model(from_dict(TrainingConfig, {"image_size": [32, 32], "backbone": "MobileNetV2",
                                                             "depth": 3, "base_filters": 4}), 3)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    layer = model.get_layer("preprocess")
    np.testing.assert_allclose(np.asarray(layer(pixels)), pixels / 127.5 - 1.0, rtol=1e-6)  # mobilenet_v2: [-1, 1]
    resnet = model_lib.BackbonePreprocess(model_lib.backbone_family("ResNet50"))
    np.testing.assert_allclose(np.asarray(resnet(pixels)),
                               np.asarray(keras.applications.resnet50.preprocess_input(pixels.copy())), rtol=1e-6)
    path = str(tmp_path / "m.keras")
    model.save(path)
    again = keras.saving.load_model(path, compile=False, safe_mode=True)
    np.testing.assert_allclose(np.asarray(again(pixels)), np.asarray(model(pixels)), rtol=1e-5, atol=1e-5)


def test_with_a_backbone_transform_passes_0_to_255_pixels():
    from segbalance.trainer import example_codec as codec
    from segbalance.trainer.preprocessing import IMAGE, preprocessing_fn
    from tests import trainer_inputs as ti

    image, _ = ti.make_image_and_mask(np.random.default_rng(0), 40, 40)
    config = ti.custom_config(image_size=[32, 32], backbone="MobileNetV2", depth=3)
    out = preprocessing_fn({codec.IMAGE_KEY: tf.constant([[codec.encode_png(image)]])}, config)
    expected = tf.image.resize(image[None].astype(np.float32), [32, 32], method="bilinear").numpy()
    np.testing.assert_allclose(out[IMAGE].numpy(), expected, rtol=1e-5, atol=1e-3)


# --------------------------------------------------------------------------- encoder freeze
class EncoderWeightsPerEpoch(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.start = self.snapshot()
        self.after = []

    def snapshot(self):
        return ({w.path: np.array(w) for w in self.model.get_layer("encoder").weights},
                {w.path: np.array(w) for w in self.model.get_layer("logits").weights})

    def on_epoch_end(self, epoch, logs=None):
        self.after.append(self.snapshot())


@pytest.mark.parametrize("optimizer,mirrored", [("adam", False), ("sgd", False),
                                               pytest.param("adam", True, marks=pytest.mark.slow)])
def test_encoder_frozen_for_the_first_epochs_then_trained(optimizer, mirrored, request):
    from segbalance.trainer.training_callbacks import FreezeEncoder

    keras.utils.set_random_seed(0)
    training = from_dict(TrainingConfig, {"image_size": [32, 32], "backbone": "MobileNetV2", "depth": 3,
                                          "base_filters": 4, "optimizer": optimizer, "learning_rate": 0.05,
                                          "freeze_encoder_epochs": 1, "epochs": 2})
    strategy = request.getfixturevalue("mirrored_strategy") if mirrored else tf.distribute.get_strategy()
    with strategy.scope():
        model = model_lib.build_model(training, 3)
        model.compile(optimizer=make_optimizer(training, 2),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 3, (8, 32, 32)).astype(np.int32)
    record = EncoderWeightsPerEpoch()
    model.fit(x, y, batch_size=4, epochs=2, callbacks=[FreezeEncoder("encoder", 1), record], verbose=0)
    (encoder_0, logits_0), (encoder_1, _) = record.after
    start_encoder, start_logits = record.start
    for path, value in start_encoder.items():  # kernels and BatchNorm moving statistics alike
        np.testing.assert_array_equal(encoder_0[path], value, err_msg=path)
    assert any(not np.array_equal(logits_0[p], v) for p, v in start_logits.items())  # the decoder trained
    trainable = [w.path for w in model.get_layer("encoder").trainable_weights]
    changed = [p for p in trainable if not np.array_equal(encoder_1[p], encoder_0[p])]
    assert len(changed) > len(trainable) // 2  # epoch 2: the encoder trains
    assert model.get_layer("encoder").trainable


# --------------------------------------------------------------------------- run_fn: best epoch, early stopping
class CorruptAfterTraining(keras.callbacks.Callback):
    """From epoch ``start`` on, after the epoch's last training step (before validation), set the
    model to one that predicts class 2 everywhere: a known-bad epoch."""

    def __init__(self, start: int, steps: int):
        super().__init__()
        self.start, self.steps, self.epoch = start, steps, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch >= self.start and batch == self.steps - 1:
            weights = [np.zeros_like(w) for w in self.model.get_weights()]
            bias = self.model.get_layer("logits").bias
            self.model.set_weights(weights)
            bias.assign(np.array([0.0, 0.0, 10.0], np.float32))


class BreakWeights(keras.callbacks.Callback):
    """After the last training step of epoch ``epoch``, every weight NaN (what a diverged step leaves)."""

    def __init__(self, epoch: int, steps: int):
        super().__init__()
        self.epoch, self.steps, self.current = epoch, steps, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == self.steps - 1:
            self.model.set_weights([np.full_like(w, np.nan) for w in self.model.get_weights()])


@pytest.mark.slow
def test_a_diverged_training_exports_nothing_and_its_backup_keeps_the_last_finite_epoch(tmp_path, monkeypatch):
    """Session 30: a learning rate of 1e6 exported a model of NaN weights (BestEpoch 'restored' them; its
    val_miou, 0.29, came from predicting the first class everywhere). Now the training stops at that
    epoch's end before BestEpoch, EpochLog or the backup record it; a rerun resumes after the last finite
    epoch. A NaN first loss (the starting weights) stops it before any step."""
    from segbalance.trainer import task
    from tests import trainer_inputs as ti

    uris = ti.tiny_pipeline()
    config = {**ti.CONFIG, "epochs": 3, "steps_per_epoch": 2}
    args = ti.fn_args_for(uris, str(tmp_path), {**config, "_extra_callbacks": [BreakWeights(1, 2)]})
    with pytest.raises(TrainingDivergedError, match=r"diverged in epoch 2: .*weight variable\(s\) hold NaN .*"
                                                    r"\(the backup keeps epoch 1\): lower training.learning_rate"):
        task.run_fn(args)
    assert not os.path.exists(args.serving_model_dir)
    [backup] = [d for d in tmp_path.glob("**/backup-*") if d.is_dir()]
    assert json.loads((backup / "epoch_logs.json").read_text()).keys() == {"0"}
    assert json.loads((backup / BestEpoch.STATE).read_text())["best_epoch"] == 0
    begun = []
    watch = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs=None: begun.append(epoch))
    again = ti.fn_args_for(uris, str(tmp_path), {**config, "_extra_callbacks": [watch]})  # the same backup
    task.run_fn(again)
    assert begun == [1, 2]  # resumed after epoch 1, the last finite one
    with open(os.path.join(again.model_run_dir, task.SUMMARY_FILE)) as f:
        summary = json.load(f)
    assert summary["epochs_run"] == [0, 1, 2] and np.isfinite(summary["history"]["val_loss"]).all()
    served = keras.saving.load_model(os.path.join(again.serving_model_dir, "model.keras"), compile=False)
    assert all(np.isfinite(w).all() for w in served.get_weights())

    built = model_lib.build_model

    def broken(*a, **k):
        model = built(*a, **k)
        model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])
        return model

    monkeypatch.setattr(model_lib, "build_model", broken)
    with pytest.raises(TrainingDivergedError, match=r"^the loss of the first training batch is nan before any "
                                                    r"training step: lower training.learning_rate"):
        task.run_fn(ti.fn_args_for(uris, str(tmp_path / "nan_start"), config))


def exported_val_miou(uris, args, partial_rule=True):
    import tensorflow_transform as tft

    from segbalance.trainer.metrics import segmentation_metrics
    from tests import trainer_inputs as ti

    from segbalance.trainer.class_stats_io import labeled_by_source_id

    model = keras.saving.load_model(os.path.join(args.serving_model_dir, "model.keras"), compile=False)
    # the eval images' labelled sets, as validation during training reads them (partial annotations)
    eval_ds = data.make_dataset(args.eval_files, tft.TFTransformOutput(uris["transform_graph"]), ti.CONFIG["batch_size"],
                                ti.NUM_CLASSES, labeled_by_source_id(uris["class_stats"]), ignore_index=255)
    miou = segmentation_metrics(ti.NAMES, 255)[0]
    for image, y in eval_ds:
        miou.update_state(y if partial_rule else y["mask"], model(image, training=False))
    return float(miou.result())


@pytest.mark.slow
def test_the_exported_model_is_the_best_epoch(tmp_path):
    import json

    from segbalance.trainer import task
    from tests import trainer_inputs as ti

    uris = ti.tiny_pipeline()
    config = {**ti.CONFIG, "epochs": 3, "steps_per_epoch": 3, "_extra_callbacks": [CorruptAfterTraining(2, 3)]}
    args = ti.fn_args_for(uris, str(tmp_path), config)
    task.run_fn(args)
    with open(os.path.join(args.model_run_dir, task.SUMMARY_FILE)) as f:
        summary = json.load(f)
    history = summary["history"]["val_miou"]
    assert history[2] < max(history[:2])  # the last epoch is the bad one
    assert summary["best_epoch"] == int(np.argmax(history)) and summary["best_val_miou"] == pytest.approx(max(history))
    assert summary["stopped_epoch"] is None and summary["restored_best"] and summary["epochs_run"] == [0, 1, 2]
    assert exported_val_miou(uris, args) == pytest.approx(max(history), abs=1e-6)
    # the eval images' labelled sets reached validation: scored as complete masks, the value differs
    assert exported_val_miou(uris, args, partial_rule=False) != pytest.approx(max(history), abs=1e-6)


@pytest.mark.slow
def test_early_stopping_after_patience_keeps_the_best_epoch(tmp_path):
    import json

    from segbalance.trainer import task
    from tests import trainer_inputs as ti

    uris = ti.tiny_pipeline()
    config = {**ti.CONFIG, "epochs": 6, "steps_per_epoch": 3, "early_stopping_patience": 2,
              "lr_schedule": {"type": "cosine", "warmup_epochs": 1}, "optimizer": "adamw",
              "_extra_callbacks": [CorruptAfterTraining(1, 3)]}
    args = ti.fn_args_for(uris, str(tmp_path), config)
    task.run_fn(args)
    with open(os.path.join(args.model_run_dir, task.SUMMARY_FILE)) as f:
        summary = json.load(f)
    history = summary["history"]["val_miou"]
    assert history[0] > max(history[1:])  # precondition: every corrupted epoch is worse
    assert summary["epochs_run"] == [0, 1, 2] and summary["stopped_epoch"] == 2 and summary["best_epoch"] == 0
    assert exported_val_miou(uris, args) == pytest.approx(history[0], abs=1e-6)
    assert not [d for d in os.listdir(os.path.dirname(args.model_run_dir)) if d.startswith("backup-")]


@pytest.mark.slow
def test_a_training_stopped_during_the_export_resumes_without_training_again(tmp_path, monkeypatch):
    """BackupAndRestore deleted its backup when fit ended, before the export: a run stopped while
    exporting trained every epoch again. Now the backup goes once the model is exported."""
    from segbalance.trainer import task
    from tests import trainer_inputs as ti

    uris = ti.tiny_pipeline()
    args = ti.fn_args_for(uris, str(tmp_path), {**ti.CONFIG, "epochs": 3, "steps_per_epoch": 2})
    export = task.export_serving_model

    def stopped(*a, **k):
        raise KeyboardInterrupt  # the process is stopped while writing the serving model

    monkeypatch.setattr(task, "export_serving_model", stopped)
    with pytest.raises(KeyboardInterrupt):
        task.run_fn(args)
    parent = os.path.dirname(args.model_run_dir)
    assert [d for d in os.listdir(parent) if d.startswith("backup-")]  # kept for the next attempt
    monkeypatch.setattr(task, "export_serving_model", export)

    class Epochs(keras.callbacks.Callback):
        ran = []

        def on_epoch_begin(self, epoch, logs=None):
            self.ran.append(epoch)

    args = ti.fn_args_for(uris, str(tmp_path), {**ti.CONFIG, "epochs": 3, "steps_per_epoch": 2,
                                                "_extra_callbacks": [Epochs()]})
    task.run_fn(args)
    with open(os.path.join(args.model_run_dir, task.SUMMARY_FILE)) as f:
        summary = json.load(f)
    assert Epochs.ran == []  # nothing trained again
    assert summary["epochs_run"] == [0, 1, 2] and len(summary["history"]["loss"]) == 3  # the training's epochs
    assert summary["best_epoch"] is not None and summary["restored_best"]
    assert exported_val_miou(uris, args) == pytest.approx(summary["best_val_miou"], abs=1e-6)
    assert not [d for d in os.listdir(parent) if d.startswith("backup-")]


def test_backbone_weights_are_checked_before_the_pipeline_starts(tmp_path, monkeypatch, capsys):
    """`segbalance run` with ImageNet weights neither cached nor downloadable: exit 2 and one line
    naming the cache file before any component runs; cached: the check passes without downloading."""
    from keras.src.utils import file_utils

    from segbalance.pipeline import cli

    monkeypatch.setattr(model_lib, "keras_cache_dir", lambda: str(tmp_path / "models"))
    monkeypatch.setattr(model_lib, "host_reachable", lambda url, timeout=3.0: False)
    downloads = []
    monkeypatch.setattr(file_utils, "get_file", lambda *a, **k: downloads.append(a) or "/nowhere")
    config = tmp_path / "config.yaml"
    config.write_text("training:\n  image_size: [32, 32]\n  backbone: MobileNetV2\n  backbone_weights: imagenet\n"
                      "  depth: 3\n")
    out = tmp_path / "out"
    assert cli.main(["run", "--config", str(config), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = os.path.join(str(tmp_path / "models"), "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5")
    assert len(err) == 1 and expected in err[0] and "backbone_weights" in err[0]
    assert not out.exists() and not downloads  # refused before the run folder or any download

    training = from_dict(TrainingConfig, {"image_size": [32, 32], "backbone": "MobileNetV2", "depth": 3,
                                          "backbone_weights": "imagenet"})
    (tmp_path / "models").mkdir()
    open(expected, "wb").close()
    model_lib.check_backbone_weights(training)  # cached: passes
    assert not downloads  # and stops before keras.applications reads (or fetches) the file
    with pytest.raises(UserError, match="is not a file"):
        model_lib.check_backbone_weights(from_dict(TrainingConfig, {"backbone": "MobileNetV2", "depth": 3,
                                                                    "backbone_weights": str(tmp_path / "no.h5")}))
    model_lib.check_backbone_weights(TrainingConfig())  # no backbone: nothing to check


def test_a_weights_file_that_does_not_load_stops_the_run_before_the_pipeline(tmp_path, capsys):
    """A damaged file, or another backbone's: exit 2 and one line before any component runs (it
    failed at SegTrainer, after statistics and Transform); a good file passes the check."""
    from segbalance.pipeline import cli

    damaged = tmp_path / "damaged.weights.h5"
    damaged.write_bytes(b"junk")
    other = tmp_path / "other.weights.h5"
    keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(other)
    for path in (damaged, other):
        config = tmp_path / "config.yaml"
        config.write_text(f"training:\n  image_size: [32, 32]\n  backbone: MobileNetV2\n  depth: 3\n"
                          f"  backbone_weights: {path}\n")
        out = tmp_path / "out"
        assert cli.main(["run", "--config", str(config), "--output-dir", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"training.backbone_weights: {path} does not load into MobileNetV2" in err[0]
        assert not err[0].endswith(":"), err[0]  # QA 27: Keras' reason is on its next line; it was dropped
        assert not out.exists()
    good = tmp_path / "good.weights.h5"
    keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(good)
    model_lib.check_backbone_weights(from_dict(TrainingConfig, {"image_size": [32, 32], "backbone": "MobileNetV2",
                                                                "depth": 3, "backbone_weights": str(good)}))


def reference_plateau(values, lr, factor, patience, min_lr, start=0):
    """The learning rate used in each epoch under the plateau rule (a plain re-statement): after
    ``patience`` epochs without a strictly better value the next epoch uses lr * factor (not below
    min_lr), and the count restarts; epochs before ``start`` (min_epochs) set the best value but do
    not count."""
    best, wait, out = -math.inf, 0, []
    for epoch, value in enumerate(values):
        out.append(lr)
        if value > best:
            best, wait = value, 0
        elif epoch >= start:
            wait += 1
            if wait >= patience:
                if lr > min_lr:
                    lr = max(lr * factor, min_lr)
                wait = 0
    return out


@pytest.mark.slow
def test_plateau_schedule_cuts_the_rate_when_val_miou_stalls(tmp_path):
    from tests import trainer_inputs as ti
    from segbalance.trainer import task

    uris = ti.tiny_pipeline()
    schedule = {"type": "plateau", "factor": 0.5, "patience": 1, "final_fraction": 0.3}
    args = ti.fn_args_for(uris, str(tmp_path), {**ti.CONFIG, "epochs": 6, "steps_per_epoch": 1,
                                                 "lr_schedule": schedule, "learning_rate": 0.05})
    task.run_fn(args)
    with open(os.path.join(args.model_run_dir, task.SUMMARY_FILE)) as f:
        history = json.load(f)["history"]
    expected = reference_plateau(history["val_miou"], 0.05, 0.5, 1, 0.3 * 0.05)
    np.testing.assert_allclose(history["learning_rate"], expected, rtol=1e-6)
    assert len(set(expected)) > 1 or len(set(history["val_miou"])) == len(history["val_miou"])  # exercised


def test_plateau_optimizer_rate_is_a_variable_the_callback_lowers():
    training = from_dict(TrainingConfig, {"learning_rate": 0.01, "lr_schedule": {"type": "plateau", "patience": 2,
                                                                                  "factor": 0.1}}, "training")
    optimizer = make_optimizer(training, steps_per_epoch=5)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse")
    from segbalance.trainer.optimization import plateau_callback

    callback = plateau_callback(training)
    callback.set_model(model)
    callback.on_train_begin()
    seen = []
    for epoch, value in enumerate([0.3, 0.2, 0.25, 0.4, 0.4, 0.4]):
        logs = {"val_miou": value}
        callback.on_epoch_end(epoch, logs)
        seen.append(logs["learning_rate"])
    np.testing.assert_allclose(seen, reference_plateau([0.3, 0.2, 0.25, 0.4, 0.4, 0.4], 0.01, 0.1, 2, 0.0), rtol=1e-6)
    assert plateau_callback(from_dict(TrainingConfig, {}, "training")) is None


def test_the_imagenet_check_shows_no_keras_input_shape_note(tmp_path, monkeypatch):
    """QA (session 18, helper 29): offline, `run` printed Keras's two-line "input_shape is undefined or
    non-square" UserWarning before its one-line error; the check builds the backbone only to find the file."""
    import warnings

    monkeypatch.setattr(model_lib, "keras_cache_dir", lambda: str(tmp_path))
    monkeypatch.setattr(model_lib, "host_reachable", lambda url, timeout=3.0: False)
    training = from_dict(TrainingConfig, {"image_size": [32, 48], "backbone": "MobileNetV2", "depth": 3,
                                          "backbone_weights": "imagenet"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UserError, match="is not in the Keras cache"):
            model_lib.check_backbone_weights(training)
    assert not [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_the_epoch_log_keeps_the_epochs_before_a_resume_and_replaces_a_replayed_one(tmp_path):
    from segbalance.trainer.training_callbacks import EpochLog

    first = EpochLog(state_dir=str(tmp_path / "backup"))
    first.on_train_begin()
    for epoch, loss in enumerate([0.9, 0.7, 0.6]):  # stopped during epoch 3, after its log was written
        first.on_epoch_end(epoch, {"loss": loss, "val_miou": 0.1 * epoch})
    resumed = EpochLog(state_dir=str(tmp_path / "backup"))  # the backup had epochs 0-1: epoch 2 runs again
    resumed.on_train_begin()
    resumed.on_epoch_end(2, {"loss": 0.5, "val_miou": 0.25, "learning_rate": 0.001})
    resumed.on_epoch_end(3, {"loss": 0.4, "val_miou": 0.3, "learning_rate": 0.001})
    assert resumed.epochs() == [0, 1, 2, 3]
    history = resumed.history()
    assert history["loss"] == [0.9, 0.7, 0.5, 0.4] and history["val_miou"] == [0.0, 0.1, 0.25, 0.3]
    assert np.isnan(history["learning_rate"][:2]).all() and history["learning_rate"][2:] == [0.001, 0.001]
    fresh = EpochLog(state_dir=str(tmp_path / "other"))
    fresh.on_train_begin()
    assert fresh.epochs() == [] and fresh.history() == {}
