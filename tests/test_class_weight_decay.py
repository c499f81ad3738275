"""Class weights that decay toward 1 (``loss.class_weight_decay_epochs``): config checks, the
loss at each epoch against the NumPy reference, the decay inside a compiled ``fit``, and run_fn."""
import json
import os

import keras
import numpy as np
import pytest

from segbalance.trainer.segmentation_loss import SegmentationLoss
from segbalance.trainer.training_callbacks import ClassWeightDecay
from segbalance.trainer.typed_config import ConfigError
from tests import losses_reference as ref
from tests import trainer_inputs as ti

WEIGHTS = [0.2, 1.0, 3.0, 6.0]
CE_LOSS = {"terms": [{"type": "ce"}], "class_weights": WEIGHTS, "class_weight_decay_epochs": 4}


def batch(seed=0, shape=(2, 6, 5), c=4):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, size=shape)
    y[0, 0, :3] = 255  # some ignored pixels
    z = rng.normal(size=shape + (c,)).astype("float32") * 2
    return y, z


def mixed(mix):
    return [(1 - mix) * w + mix for w in WEIGHTS]


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "3"])
def test_bad_decay_epochs_are_named(value):
    with pytest.raises(ConfigError, match="class_weight_decay_epochs"):
        SegmentationLoss({**CE_LOSS, "class_weight_decay_epochs": value})


def test_decay_needs_class_weights():
    with pytest.raises(ConfigError, match="class_weight_decay_epochs.*class_weights"):
        SegmentationLoss({"terms": [{"type": "ce"}], "class_weight_decay_epochs": 3})


def test_loss_at_each_epoch_equals_the_reference_with_the_mixed_weights():
    y, z = batch()
    loss = SegmentationLoss(CE_LOSS, num_classes=4)
    assert float(loss(y, z)) == pytest.approx(ref.cross_entropy(y, z, cw=WEIGHTS), rel=1e-5)  # built: epoch 0
    for epoch in range(7):
        mix = loss.set_class_weight_epoch(epoch)
        assert mix == min(epoch / 4, 1.0)
        assert float(loss(y, z)) == pytest.approx(ref.cross_entropy(y, z, cw=mixed(mix)), rel=1e-5), epoch
    assert float(loss(y, z)) == pytest.approx(ref.cross_entropy(y, z), rel=1e-5)  # after N epochs: unweighted


def test_float16_logits_use_the_same_decayed_weights():
    y, z = batch(4)
    z16 = z.astype("float16")
    loss = SegmentationLoss(CE_LOSS, num_classes=4)
    mix = loss.set_class_weight_epoch(2)
    assert float(loss(y, z16)) == pytest.approx(ref.cross_entropy(y, z16.astype("float64"), cw=mixed(mix)), rel=1e-3)


def test_decay_reaches_dice_and_focal_terms():
    y, z = batch(1)
    config = {"terms": [{"type": "focal", "gamma": 2.0}, {"type": "dice", "weight": 0.5}],
              "class_weights": WEIGHTS, "class_weight_decay_epochs": 2}
    decayed = SegmentationLoss(config)
    decayed.set_class_weight_epoch(1)
    fixed = SegmentationLoss({**config, "class_weights": mixed(0.5), "class_weight_decay_epochs": None})
    assert float(decayed(y, z)) == pytest.approx(float(fixed(y, z)), rel=1e-6)
    assert float(decayed(y, z)) != pytest.approx(float(SegmentationLoss({**config, "class_weight_decay_epochs": None})(y, z)),
                                                 rel=1e-3)


def test_no_decay_without_the_option():
    loss = SegmentationLoss({"terms": [{"type": "ce"}], "class_weights": WEIGHTS})
    assert loss.class_weight_mix is None
    with pytest.raises(ValueError, match="no class_weight_decay_epochs"):
        loss.set_class_weight_epoch(1)


def test_config_round_trip_keeps_the_decay():
    loss = SegmentationLoss(CE_LOSS, num_classes=4)
    loss.set_class_weight_epoch(3)
    again = SegmentationLoss.from_config(loss.get_config())
    assert again.loss_config["class_weight_decay_epochs"] == 4 and again.class_weights == WEIGHTS
    # where the decay stood is part of the loss's state (a model saved mid-decay reloads with the same loss);
    # a training's ClassWeightDecay callback sets it again at each epoch's start
    assert float(again.class_weight_mix.numpy()) == 0.75
    fresh = SegmentationLoss.from_config({k: v for k, v in loss.get_config().items() if k != "class_weight_mix"})
    assert float(fresh.class_weight_mix.numpy()) == 0.0  # a config without it (saved before) starts at epoch 0


@pytest.mark.parametrize("jit_compile", [False, True])
def test_compiled_fit_reads_the_decayed_weights_each_epoch(jit_compile):
    """Learning rate 0: the logits stay fixed, so each epoch's loss is the reference at that epoch's mix."""
    y, _ = batch(2, shape=(1, 6, 5))  # batch size 1
    x = np.random.default_rng(3).normal(size=(1, 6, 5, 3)).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 5, 3)), keras.layers.Conv2D(4, 1)])
    loss = SegmentationLoss({**CE_LOSS, "class_weight_decay_epochs": 2}, num_classes=4)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss, jit_compile=jit_compile)
    z = model.predict(x, verbose=0)
    history = model.fit(x, y, epochs=4, batch_size=1, verbose=0, callbacks=[ClassWeightDecay(loss)]).history
    assert history[ClassWeightDecay.LOG_KEY] == [0.0, 0.5, 1.0, 1.0]
    expected = [ref.cross_entropy(y, z, cw=mixed(m)) for m in (0.0, 0.5, 1.0, 1.0)]
    np.testing.assert_allclose(history["loss"], expected, rtol=1e-4)


@pytest.mark.slow
def test_run_fn_decays_the_class_weights(tmp_path):
    uris = ti.tiny_pipeline()
    loss = {**ti.CONFIG["loss"], "class_weight_decay_epochs": 2}
    args = ti.fn_args_for(uris, str(tmp_path), {**ti.CONFIG, "epochs": 3, "steps_per_epoch": 1, "loss": loss,
                                                 "jit_compile": True})
    from segbalance.trainer import task

    task.run_fn(args)
    with open(os.path.join(args.model_run_dir, task.SUMMARY_FILE)) as f:
        summary = json.load(f)
    assert summary["history"][ClassWeightDecay.LOG_KEY] == [0.0, 0.5, 1.0]
    assert summary["loss_config"]["class_weight_decay_epochs"] == 2
    assert len(summary["class_weights"]) == len(ti.CONFIG["class_names"])  # the scheme's vector, before decay
