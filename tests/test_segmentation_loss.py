"""SegmentationLoss (config, serialisation) and SegmentationModel (dict targets in model.fit)."""
import contextlib

import numpy as np
import pytest
import tensorflow as tf
import keras

from segbalance.trainer import losses as L
from segbalance.trainer.class_weights import compute_class_weights
from segbalance.trainer.segmentation_loss import SegmentationLoss, validate_loss_config
from segbalance.trainer.segmentation_model import SegmentationModel

C = 3
CONFIG = {"terms": [{"type": "ce", "weight": 1.0}, {"type": "dice", "weight": 0.5},
                    {"type": "exclusion", "weight": 0.25}],
          "class_weights": "median_frequency", "missing_labels": "marginal"}


def batch(seed=0, b=2, size=8):
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, C, size=(b, size, size)).astype(np.int32)
    mask[:, 0, 0] = 255
    logits = rng.standard_normal((b, size, size, C)).astype(np.float32)
    labeled = np.array([[1, 1, 0], [1, 0, 1]], np.float32)[:b]
    pixel_weights = rng.uniform(0.5, 1.5, size=(b, size, size)).astype(np.float32)
    return mask, logits, labeled, pixel_weights


def test_value_is_the_weighted_sum_of_the_terms():
    mask, logits, labeled, pw = batch()
    counts = [900, 90, 10]
    loss = SegmentationLoss(CONFIG, pixel_counts=counts)
    w = compute_class_weights(counts, "median_frequency", clip=(0.5, 5.0))  # the stats section's default clip
    np.testing.assert_allclose(loss.class_weights, w)
    expected = (L.marginal_cross_entropy(mask, logits, labeled, w, pixel_weights=pw)
                + 0.5 * L.dice_loss(mask, logits, w, pixel_weights=pw)
                + 0.25 * L.exclusion_loss(mask, logits, labeled, pixel_weights=pw))
    got = loss({"mask": mask, "labeled": labeled, "pixel_weights": pw}, logits)
    np.testing.assert_allclose(float(got), float(expected), rtol=1e-5)
    # A plain mask: plain weighted CE (nothing known missing) + Dice; exclusion has no labeled set.
    plain = loss(mask, logits)
    np.testing.assert_allclose(float(plain), float(L.weighted_cross_entropy(mask, logits, w)
                                                   + 0.5 * L.dice_loss(mask, logits, w)), rtol=1e-5)
    # ClassStats' present_image_pixels reach the median-frequency weights
    present_pixels = [1000, 400, 100]
    per_image = SegmentationLoss(CONFIG, pixel_counts=counts, present_image_pixels=present_pixels)
    np.testing.assert_allclose(per_image.class_weights, compute_class_weights(
        counts, "median_frequency", present_image_pixels=present_pixels, clip=(0.5, 5.0)))
    assert not np.allclose(per_image.class_weights, w)


def test_weights_from_pixel_counts_are_the_pipeline_s_by_default():
    """QA 27: SegmentationLoss(pixel_counts=) computed unclipped weights, while the pipeline's (ClassStats,
    stats.clip default [0.5, 5.0]) are clipped: the same "default loss" weighed the rarest class 3.37 in
    Python and 2.66 in the pipeline. Hand-computed: median frequency of [9000, 1500, 1200, 100] with every
    class in every image is median(f) / f = 1350 / c = [0.15, 0.9, 1.125, 13.5]; clipped to [0.5, 5] that is
    [0.5, 0.9, 1.125, 5], normalised to mean 1 over the classes."""
    from segbalance.components.component_config import StatsConfig

    counts = [9000, 1500, 1200, 100]
    loss = SegmentationLoss({"terms": [{"type": "ce"}], "class_weights": "median_frequency"}, pixel_counts=counts)
    clipped = np.array([0.5, 0.9, 1.125, 5.0])
    np.testing.assert_allclose(loss.class_weights, clipped / clipped.mean())
    assert StatsConfig().clip == (0.5, 5.0)  # the one default, shared
    unclipped = SegmentationLoss({"terms": [{"type": "ce"}], "class_weights": "median_frequency"},
                                 pixel_counts=counts, weight_options={"clip": None})
    raw = np.array([0.15, 0.9, 1.125, 13.5])
    np.testing.assert_allclose(unclipped.class_weights, raw / raw.mean())
    with pytest.raises(ValueError, match="unknown weight options"):
        SegmentationLoss({"terms": [{"type": "ce"}], "class_weights": "median_frequency"}, pixel_counts=counts,
                         weight_options={"clipp": None})


def test_missing_label_modes_and_pixel_options():
    mask, logits, labeled, _ = batch(1)
    cfg = {"terms": [{"type": "ce"}], "missing_labels": "ignore_predicted", "fn_weights": [1, 2, 3],
           "low_confidence": {"tau": 0.6, "alpha": 0.5}}
    got = SegmentationLoss(cfg)({"mask": mask, "labeled": labeled}, logits)
    expected = L.ignore_predicted_cross_entropy(mask, logits, labeled, fn_weights=[1, 2, 3],
                                                low_confidence=(0.6, 0.5))
    np.testing.assert_allclose(float(got), float(expected), rtol=1e-6)
    focal = SegmentationLoss({"terms": [{"type": "focal", "gamma": 1.0}, {"type": "tversky", "alpha": 0.3,
                                                                           "beta": 0.7},
                                        {"type": "generalized_dice"}], "class_weights": [1, 2, 3]})
    expected = (L.focal_loss(mask, logits, gamma=1.0, class_weights=[1, 2, 3])
                + L.tversky_loss(mask, logits, 0.3, 0.7, class_weights=[1, 2, 3])
                + L.generalized_dice_loss(mask, logits))
    np.testing.assert_allclose(float(focal(mask, logits)), float(expected), rtol=1e-5)


@pytest.mark.parametrize("config, message", [
    ({"terms": [{"type": "cross_entropy"}]}, r"loss.terms\[0\].type: unknown type 'cross_entropy'; choose one of ce,"),
    ({"terms": [{"type": "ce", "gamma": 2}]}, r"unknown field loss.terms\[0\].gamma"),
    ({"terms": []}, "loss.terms: list at least one term"),
    ({"class_weights": "median_frequency"}, "loss.terms: required field is missing"),
    ({"terms": [{"type": "ce"}], "class_weights": "inverse"}, "unknown class-weight scheme 'inverse'"),
    ({"terms": [{"type": "ce"}], "missing_labels": "drop"}, "loss.missing_labels: 'drop' is not allowed"),
    ({"terms": [{"type": "ce"}], "colour": 1}, "unknown field loss.colour"),
    ({"terms": [{"type": "exclusion", "form": "focal"}]}, r"loss.terms\[0\].form: 'focal' is not allowed"),
    # smooth is the Dice form's: with form ce (the default) a changed smooth changed nothing
    ({"terms": [{"type": "ce"}, {"type": "exclusion", "smooth": 0.0}]},
     r"loss.terms\[1\].smooth: only form: dice reads it \(got form: ce\)"),
    ({"terms": [{"type": "ce", "label_smoothing": 0.1}], "missing_labels": "marginal"}, "not supported"),
    ({"terms": [{"type": "ce", "top_k_percent_pixels": 0}]}, r"terms\[0\].top_k_percent_pixels: must be in"),
    ({"terms": [{"type": "dice", "weight": "half"}]}, r"loss.terms\[0\].weight: expected float"),
    ({"terms": [{"type": "ce", "weight": 0}, {"type": "dice", "weight": 0.0}]},
     "loss.terms: every term has weight 0, so the loss is 0 and nothing is learnt"),
    ({"terms": [{"type": "ce"}], "class_weights": "uniform", "class_weight_decay_epochs": 5},
     "loss.class_weight_decay_epochs: class_weights: uniform is 1 for every class already"),
    ({"terms": [{"type": "ce"}, {"type": "tversky", "beta": -1}]}, r"loss.terms\[1\].beta: must be a finite"),
    ({"terms": [{"type": "focal", "gamma": float("nan")}]}, r"terms\[0\].gamma: must be a finite number"),
    ({"terms": [{"type": "focal", "alpha": [1, -2]}]}, r"terms\[0\].alpha: must be null, a number"),
    ({"terms": [{"type": "ce"}], "class_weights": [1.0, float("inf")]}, "loss.class_weights: must be finite"),
    ({"terms": [{"type": "ce"}], "class_weights": 3}, "loss.class_weights: expected null or str or a list"),
    ({"terms": [{"type": "ce"}], "fn_weights": "high"}, "loss.fn_weights: expected a list"),
    ({"terms": [{"type": "ce"}], "low_confidence": {"tau": -0.5}}, r"loss.low_confidence.tau: -0.5: give the top-"),
    ({"terms": [{"type": "ce"}], "low_confidence": {"tau": 1.5}}, r"tau: 1.5: give the top-probability threshold, "
                                                                  r"in \(0, 1\]"),
    ({"terms": [{"type": "ce"}], "low_confidence": {"alpha": -1}}, "loss.low_confidence.alpha: must be"),
    ({"terms": [{"type": "ce"}], "low_confidence": {"tau": 0.5, "beta": 1}}, "unknown field loss.low_confidence"),
    # one ignore index (classes.ignore_index), class-weight options in the stats section
    ({"terms": [{"type": "ce"}], "ignore_index": 254}, "loss.ignore_index is not a setting any more"),
    ({"terms": [{"type": "ce"}], "weight_options": {}}, "stats section"),
])
def test_bad_configs_name_the_problem(config, message):
    with pytest.raises(ValueError, match=message):
        validate_loss_config(config)


def test_num_classes_checks_vectors_logits_and_dict_keys():
    with pytest.raises(ValueError, match="class_weights has 2 values for 3 classes"):
        SegmentationLoss({"terms": [{"type": "ce"}], "class_weights": "enet"}, class_weights=[1.0, 2.0], num_classes=3)
    mask, logits, labeled, _ = batch(4)
    loss = SegmentationLoss({"terms": [{"type": "ce"}]}, pixel_counts=[5, 0, 0, 5], **{})  # 4 classes implied
    assert loss.num_classes == 4 and loss.get_config()["num_classes"] == 4
    with pytest.raises(ValueError, match="built for 4 classes but the logits have 3 channels"):
        loss(mask, logits)
    with pytest.raises(ValueError, match="needs 'mask'"):
        SegmentationLoss({"terms": [{"type": "ce"}]})({"labels": mask}, logits)
    with pytest.raises(ValueError, match="got keys"):
        SegmentationLoss({"terms": [{"type": "ce"}]})({"mask": mask, "weights": mask}, logits)


def test_scheme_without_weights_is_an_error():
    with pytest.raises(ValueError, match="pass class_weights="):
        SegmentationLoss({"terms": [{"type": "ce"}], "class_weights": "enet"})
    with pytest.raises(ValueError, match="loss.fn_weights: has 2 values for 3 classes"):
        validate_loss_config({"terms": [{"type": "ce"}], "fn_weights": [1, 2]}, num_classes=3)


def test_serialisation_round_trip():
    loss = SegmentationLoss(CONFIG, class_weights=[0.5, 1.0, 2.0])
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, SegmentationLoss)
    assert restored.loss_config == loss.loss_config and restored.class_weights == [0.5, 1.0, 2.0]
    mask, logits, labeled, _ = batch(2)
    y = {"mask": mask, "labeled": labeled}
    assert float(restored(y, logits)) == pytest.approx(float(loss(y, logits)))


def tiny_model(size=8):
    inputs = keras.Input((size, size, 3))
    hidden = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    logits = keras.layers.Conv2D(C, 1, dtype="float32")(hidden)
    return SegmentationModel(inputs=inputs, outputs=logits)


def dict_dataset(n=8, size=8):
    rng = np.random.default_rng(3)
    images = rng.uniform(size=(n, size, size, 3)).astype(np.float32)
    masks = (images[..., 0] * C).astype(np.int32).clip(0, C - 1)
    labeled = np.ones((n, C), np.float32)
    labeled[::2, 2] = 0
    y = {"mask": masks, "labeled": labeled, "pixel_weights": np.ones((n, size, size), np.float32)}
    return tf.data.Dataset.from_tensor_slices((images, y)).batch(4), images, y


@pytest.mark.parametrize("jit", [False, True])
def test_model_fit_receives_the_dict(jit):
    keras.utils.set_random_seed(0)
    model = tiny_model()
    loss = SegmentationLoss(CONFIG, class_weights=[0.5, 1.0, 2.0])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=loss,
                  metrics=[keras.metrics.SparseCategoricalAccuracy()], jit_compile=jit)
    ds, images, y = dict_dataset()
    history = model.fit(ds, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert "sparse_categorical_accuracy" in history.history
    # evaluate() reports exactly SegmentationLoss on the dict (marginal CE and exclusion need `labeled`).
    result = model.evaluate(tf.data.Dataset.from_tensor_slices((images, y)).batch(8), verbose=0, return_dict=True)
    np.testing.assert_allclose(result["loss"], float(loss(y, model.predict(images, verbose=0))), rtol=1e-4)


def test_keras_file_with_custom_loss_loads_in_safe_mode(tmp_path):
    model = tiny_model()
    model.compile(optimizer="adam", loss=SegmentationLoss(CONFIG, class_weights=[1.0, 1.0, 1.0]))
    model.fit(dict_dataset()[0], epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(restored, SegmentationModel) and isinstance(restored.loss, SegmentationLoss)
    x = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


def _fit_one_epoch(strategy=None, policy=None):
    """Two SGD steps on a fixed dict dataset; returns (weights, history loss, evaluate loss)."""
    rng = np.random.default_rng(5)
    images = rng.uniform(size=(8, 8, 8, 3)).astype(np.float32)
    masks = (images[..., 0] * C).astype(np.int32).clip(0, C - 1)
    masks[:4, :6] = 255  # the first replica's half of each batch is mostly ignored
    labeled = np.ones((8, C), np.float32)
    labeled[::2, 2] = 0
    y = {"mask": masks, "labeled": labeled, "pixel_weights": rng.uniform(0.5, 1.5, (8, 8, 8)).astype(np.float32)}
    ds = tf.data.Dataset.from_tensor_slices((images, y)).batch(4)
    previous = keras.config.dtype_policy()
    try:
        if policy:
            keras.config.set_dtype_policy(policy)
        keras.utils.set_random_seed(0)
        scope = strategy.scope() if strategy else contextlib.nullcontext()
        with scope:
            inputs = keras.Input((8, 8, 3))
            hidden = keras.layers.Conv2D(4, 3, padding="same", activation="relu",
                                         kernel_regularizer=keras.regularizers.L2(0.01))(inputs)
            logits = keras.layers.Conv2D(C, 1)(hidden)  # float16 under mixed_float16
            model = SegmentationModel(inputs=inputs, outputs=logits)
            model.compile(optimizer=keras.optimizers.SGD(0.5), loss=SegmentationLoss(CONFIG, class_weights=[1, 2, 3]))
        history = model.fit(ds, epochs=1, verbose=0, shuffle=False)
        evaluated = model.evaluate(ds.take(1), verbose=0)
    finally:
        keras.config.set_dtype_policy(previous)
    return model.get_weights(), history.history["loss"][0], evaluated


def test_mirrored_fit_matches_single_device(mirrored_strategy):
    """Same global batches on 1 device and on 2 replicas: same updates, same reported loss."""
    single_w, single_loss, single_eval = _fit_one_epoch()
    dist_w, dist_loss, dist_eval = _fit_one_epoch(mirrored_strategy)
    for a, b in zip(single_w, dist_w):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dist_loss, single_loss, rtol=1e-4)
    np.testing.assert_allclose(dist_eval, single_eval, rtol=1e-4)


def test_mixed_float16_fit_keeps_the_loss_in_float32():
    weights, loss, evaluated = _fit_one_epoch(policy="mixed_float16")
    assert np.isfinite(loss) and np.isfinite(evaluated)
    assert all(np.isfinite(w).all() for w in weights)
    # float16 logits of magnitude 40 through the composed loss: float32 value, finite gradients.
    rng = np.random.default_rng(6)
    z = tf.Variable(tf.cast(rng.choice([-40.0, 40.0], size=(1, 4, 4, C)), tf.float16))
    y = {"mask": rng.integers(0, 2, size=(1, 4, 4)), "labeled": np.array([[1, 1, 0]], np.float32)}
    with tf.GradientTape() as tape:
        value = SegmentationLoss(CONFIG, class_weights=[1, 2, 3])(y, tf.identity(z))
    assert value.dtype == tf.float32 and np.isfinite(float(value))
    assert np.isfinite(tape.gradient(value, z).numpy().astype(np.float32)).all()


def test_sample_weight_is_refused_with_a_pointer_to_pixel_weights():
    model = tiny_model()
    model.compile(optimizer="sgd", loss=SegmentationLoss({"terms": [{"type": "ce"}]}))
    ds, images, y = dict_dataset()
    with pytest.raises(ValueError, match="pixel_weights"):
        model.fit(images, y["mask"], sample_weight=np.ones(len(images), np.float32), verbose=0)
    # outside SegmentationModel too: Keras scaled the already-reduced loss by the mean weight, so
    # weights (1, 0) halved the batch's loss instead of leaving the second image out
    loss = SegmentationLoss({"terms": [{"type": "ce"}]})
    with pytest.raises(ValueError, match="pixel_weights"):
        loss(y["mask"][:2], np.zeros((2,) + y["mask"].shape[1:] + (C,), np.float32),
             sample_weight=np.array([1.0, 0.0], np.float32))
    plain = keras.Model(model.inputs, model.outputs)
    plain.compile(optimizer="sgd", loss=loss)
    with pytest.raises(ValueError, match="pixel_weights"):
        plain.fit(images, y["mask"], sample_weight=np.ones(len(images), np.float32), verbose=0)
    plain.fit(images, y["mask"], epochs=1, verbose=0)  # without weights it trains


def test_config_round_trip_keeps_the_reduction():
    loss = SegmentationLoss({"terms": [{"type": "ce"}]}, num_classes=C, reduction="sum")
    loaded = SegmentationLoss.from_config(loss.get_config())
    assert loaded.reduction == "sum" and loaded.get_config() == loss.get_config()


# --------------------------------------------------------------------------- registry, ignore index
def every_term_config():
    from segbalance.trainer.loss_config import TERMS

    return [{"type": name} for name in TERMS]


def test_every_registered_term_has_typed_defaults_and_round_trips():
    from segbalance.trainer.loss_config import TERMS, LossConfig
    from segbalance.trainer.typed_config import from_dict, to_dict

    assert set(TERMS) >= {"ce", "focal", "dice", "generalized_dice", "tversky", "exclusion"}
    config = from_dict(LossConfig, {"terms": every_term_config()}, "loss")
    for term, name in zip(config.terms, TERMS):
        assert type(term) is TERMS[name] and term.weight == 1.0
    assert from_dict(LossConfig, to_dict(config), "loss") == config
    # defaults are the functions' defaults (trainer/losses.py): same value with and without them
    mask, logits, labeled, pw = batch(3)
    y = {"mask": mask, "labeled": labeled, "pixel_weights": pw}
    expected = (L.weighted_cross_entropy(mask, logits, pixel_weights=pw) + L.focal_loss(mask, logits, pixel_weights=pw)
                + L.dice_loss(mask, logits, pixel_weights=pw) + L.generalized_dice_loss(mask, logits, pixel_weights=pw)
                + L.tversky_loss(mask, logits, pixel_weights=pw) + L.exclusion_loss(mask, logits, labeled, pixel_weights=pw))
    np.testing.assert_allclose(float(SegmentationLoss(config)(y, logits)), float(expected), rtol=1e-5)


def test_a_term_registered_in_one_place_is_composed_and_serialised():
    from dataclasses import dataclass
    from typing import ClassVar

    from segbalance.trainer.loss_config import TERMS, Term, register

    @register
    @dataclass
    class SquaredDice(Term):  # a new term: one class, nothing else to touch
        TYPE: ClassVar[str] = "squared_dice"
        smooth: float = 1.0

        def compute(self, x):
            return L.dice_loss(x.mask, x.logits, ignore_index=x.ignore_index, smooth=self.smooth) ** 2

    try:
        mask, logits, _, _ = batch(5)
        loss = SegmentationLoss({"terms": [{"type": "squared_dice", "weight": 0.5, "smooth": 2.0},
                                           {"type": "ce"}]})
        expected = 0.5 * L.dice_loss(mask, logits, smooth=2.0) ** 2 + L.weighted_cross_entropy(mask, logits)
        np.testing.assert_allclose(float(loss(mask, logits)), float(expected), rtol=1e-6)
        restored = keras.losses.deserialize(keras.losses.serialize(loss))
        assert restored.loss_config["terms"][0] == {"type": "squared_dice", "weight": 0.5, "smooth": 2.0}
        with pytest.raises(ValueError, match=r"unknown field loss.terms\[0\].gamma"):
            validate_loss_config({"terms": [{"type": "squared_dice", "gamma": 1}]})
        # loss-wide fields: refused unless a term declares it reads them (USES)
        weighted = {"terms": [{"type": "squared_dice"}], "class_weights": [1.0, 2.0, 3.0]}
        with pytest.raises(ValueError, match=r"loss.class_weights: no term of this loss uses it \(only ce, focal, "
                                             r"dice, tversky terms do\)"):
            validate_loss_config(weighted)
        SquaredDice.USES = ("class_weights",)
        assert validate_loss_config(weighted).class_weights == [1.0, 2.0, 3.0]
        with pytest.raises(ValueError, match=r"only ce, focal, dice, tversky, squared_dice terms do"):
            validate_loss_config({"terms": [{"type": "exclusion"}], "class_weights": [1.0, 2.0, 3.0]})
    finally:
        TERMS.pop("squared_dice")
    with pytest.raises(ValueError, match="unknown type 'squared_dice'"):
        validate_loss_config({"terms": [{"type": "squared_dice"}]})


@pytest.mark.parametrize("missing_labels", [None, "marginal", "ignore_predicted"])
def test_pixels_at_the_ignore_index_do_not_move_any_term(missing_labels):
    """classes.ignore_index 254: those pixels count nowhere, for every registered term."""
    mask, logits, labeled, pw = batch(6, size=12)
    mask[:, 3:7, 2:9] = 254
    mask[:, 0, 0] = 1  # batch() puts 255 there: with ignore_index 254 it is a (bad) label
    ignored = mask == 254
    config = {"terms": [dict(t, weight=w) for t, w in zip(every_term_config(), (1.0, 0.5, 0.7, 0.3, 0.9, 0.4))],
              "class_weights": [0.5, 1.0, 2.0], "missing_labels": missing_labels, "fn_weights": [1, 2, 1]}
    loss = SegmentationLoss(config, ignore_index=254, num_classes=C)
    y = {"mask": mask, "labeled": labeled, "pixel_weights": pw}
    value = float(loss(y, logits))
    moved = logits.copy()
    moved[ignored] = np.random.default_rng(1).normal(0, 20, size=moved[ignored].shape)
    assert float(loss(y, moved)) == pytest.approx(value, rel=1e-6)
    # the same as marking those pixels with weight 0 under the default ignore index 255
    reference = SegmentationLoss(config, num_classes=C)
    masked = np.where(ignored, 255, mask).astype(np.int32)
    assert float(reference({**y, "mask": masked}, logits)) == pytest.approx(value, rel=1e-6)
    assert float(loss(y, moved)) != pytest.approx(float(SegmentationLoss(config, num_classes=C)(
        {**y, "mask": np.where(ignored, 0, mask).astype(np.int32)}, moved)), rel=1e-3)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert restored.ignore_index == 254 and float(restored(y, moved)) == pytest.approx(value, rel=1e-6)


def test_models_saved_with_missing_labels_and_no_ce_term_still_load_as_the_loss_they_computed():
    saved = {"config": {"terms": [{"type": "focal", "weight": 1.0}, {"type": "dice", "weight": 0.5}],
                        "missing_labels": "marginal"},
             "class_weights": [0.5, 1.0, 2.0], "num_classes": 3, "name": "segmentation_loss"}
    mask, logits, labeled, pw = batch(4)
    loss = SegmentationLoss.from_config(saved)
    assert loss.config.missing_labels is None
    expected = L.focal_loss(mask, logits, class_weights=[0.5, 1.0, 2.0], pixel_weights=pw) \
        + 0.5 * L.dice_loss(mask, logits, [0.5, 1.0, 2.0], pixel_weights=pw)
    got = loss({"mask": mask, "labeled": labeled, "pixel_weights": pw}, logits)
    np.testing.assert_allclose(float(got), float(expected), rtol=1e-5)
    with pytest.raises(ValueError, match="missing_labels: no term of this loss uses it"):  # a new loss says so
        SegmentationLoss(saved["config"])
    # the same for fn / fp weights and low_confidence without a ce or focal term
    dice_only = {**saved, "config": {"terms": [{"type": "dice", "weight": 1.0}], "fn_weights": [1.0, 3.0, 1.0],
                                     "low_confidence": {"tau": 0.5, "alpha": 0.5}}}
    loaded = SegmentationLoss.from_config(dice_only)
    assert loaded.config.fn_weights is None and loaded.config.low_confidence is None
    np.testing.assert_allclose(float(loaded({"mask": mask, "pixel_weights": pw}, logits)),
                               float(L.dice_loss(mask, logits, [0.5, 1.0, 2.0], pixel_weights=pw)), rtol=1e-5)
    # class weights (and their decay) with terms that have no class weights (generalized Dice, exclusion)
    gdice = SegmentationLoss.from_config({**saved, "config": {"terms": [{"type": "generalized_dice"}],
                                                              "class_weights": "median_frequency",
                                                              "class_weight_decay_epochs": 3}})
    assert gdice.class_weights is None and gdice.config.class_weights is None and gdice.class_weight_mix is None
    np.testing.assert_allclose(float(gdice({"mask": mask, "pixel_weights": pw}, logits)),
                               float(L.generalized_dice_loss(mask, logits, pixel_weights=pw)), rtol=1e-5)
    # where they do act (a focal term) they are kept
    focal = SegmentationLoss.from_config({**dice_only, "config": {**dice_only["config"], "terms": [{"type": "focal"}]}})
    assert focal.config.fn_weights == [1.0, 3.0, 1.0] and focal.config.low_confidence is not None
    # an exclusion term's smooth with form ce (only the Dice form reads it): dropped; with form dice: kept
    exclusion = {**saved, "config": {"terms": [{"type": "exclusion", "smooth": 0.0}]}}
    loaded = SegmentationLoss.from_config(exclusion)
    assert loaded.config.terms[0].smooth == 1.0
    np.testing.assert_allclose(float(loaded({"mask": mask, "labeled": labeled, "pixel_weights": pw}, logits)),
                               float(L.exclusion_loss(mask, logits, labeled, pixel_weights=pw)), rtol=1e-5)
    dice_form = SegmentationLoss.from_config(
        {**saved, "config": {"terms": [{"type": "exclusion", "form": "dice", "smooth": 0.0}]}})
    assert dice_form.config.terms[0].smooth == 0.0
    with pytest.raises(ValueError, match="smooth: only form: dice reads it"):  # a new loss says so
        SegmentationLoss(exclusion["config"])


def test_models_saved_with_the_ignore_index_in_the_loss_config_still_load():
    old = {"config": {"terms": [{"type": "ce", "weight": 1.0}], "ignore_index": 254,
                      "weight_options": {"clip": [0.5, 2.0]}},
           "class_weights": None, "num_classes": 3, "name": "segmentation_loss", "reduction": "sum_over_batch_size"}
    loss = SegmentationLoss.from_config(old)
    assert loss.ignore_index == 254 and loss.loss_config["terms"] == [{"type": "ce", "weight": 1.0,
                                                                        "label_smoothing": 0.0,
                                                                        "top_k_percent_pixels": 1.0}]


def test_the_decay_position_is_saved_with_the_model(tmp_path):
    """A model saved after the class weights decayed reloads with the same loss (was: mix back to 0, the
    undecayed weights: 1.76 became 3.91 on this case)."""
    mask, logits, _, _ = batch(3, b=2, size=8)
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, keras.layers.Conv2D(C, 1)(inp))
    loss = SegmentationLoss({"terms": [{"type": "ce"}], "class_weights": [0.2, 1.0, 5.0], "class_weight_decay_epochs": 4},
                            num_classes=C)
    model.compile(optimizer="sgd", loss=loss)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    for epoch in (0, 2, 4):
        assert loss.set_class_weight_epoch(epoch) == min(epoch / 4, 1.0)
        before = float(loss(mask, model(x)))
        path = tmp_path / f"m{epoch}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
        assert float(loaded.loss.class_weight_mix.numpy()) == min(epoch / 4, 1.0)
        np.testing.assert_allclose(float(loaded.loss(mask, loaded(x))), before, rtol=1e-6)
    # the reference at the end: fully decayed = unweighted CE
    np.testing.assert_allclose(before, float(L.weighted_cross_entropy(mask, model(x))), rtol=1e-6)


@pytest.mark.parametrize("config, kwargs, message", [
    ({"class_weights": "median_frequency"}, {"class_weights": [-1.0, 1.0, 1.0]}, "class_weights= must be finite"),
    ({"class_weights": "median_frequency"}, {"class_weights": [float("nan"), 1.0, 1.0]}, "finite numbers >= 0"),
    ({}, {"class_weights": [1.0, 2.0, 3.0]}, "the loss config has class_weights: null"),
    ({"class_weights": [1.0, 1.0, 1.0]}, {"class_weights": [9.0, 9.0, 9.0]}, "differs from the loss config's"),
    ({"class_weights": "inverse_frequency"}, {"pixel_counts": [10, 5, 2], "weight_options": {"clpi": [0.5, 5]}},
     r"unknown weight options \['clpi'\]"),
    ({}, {"num_classes": 0}, "num_classes must be an integer >= 1, got 0"),
    ({}, {"ignore_index": 2.5}, "ignore_index must be an integer"),
])
def test_constructor_arguments_are_checked_like_the_config(config, kwargs, message):
    """The vector and options given beside the config get the config's rules (a NaN vector gave a NaN
    loss; a vector beside class_weights: null was used; a typo in weight_options was a TypeError)."""
    with pytest.raises(ValueError, match=message):
        SegmentationLoss({"terms": [{"type": "ce"}], **config}, **kwargs)


def test_a_vector_equal_to_the_config_s_own_is_accepted_and_old_saved_pairs_still_load():
    mask, logits, _, _ = batch()
    same = SegmentationLoss({"terms": [{"type": "ce"}], "class_weights": [0.5, 1.0, 2.0]}, class_weights=[0.5, 1, 2])
    # saved before the rule: class_weights: null in the config and the vector beside it (the vector was used)
    old = SegmentationLoss.from_config({"config": {"terms": [{"type": "ce"}]}, "class_weights": [0.5, 1.0, 2.0],
                                        "num_classes": 3, "name": "segmentation_loss"})
    expected = float(L.weighted_cross_entropy(mask, logits, class_weights=[0.5, 1.0, 2.0]))
    np.testing.assert_allclose([float(same(mask, logits)), float(old(mask, logits))], [expected] * 2, rtol=1e-6)
    assert old.config.class_weights == [0.5, 1.0, 2.0]
    # ... and beside a different vector in the config: the class_weights= vector was the one used
    both = SegmentationLoss.from_config({"config": {"terms": [{"type": "ce"}], "class_weights": [1.0, 1.0, 1.0]},
                                         "class_weights": [0.5, 1.0, 2.0], "num_classes": 3})
    np.testing.assert_allclose(float(both(mask, logits)), expected, rtol=1e-6)
