"""trainer.losses against NumPy references, Keras built-ins, finite differences and edge cases."""
import math
import sys

import numpy as np
import pytest
import tensorflow as tf
import keras
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import losses_reference as ref
from segbalance.trainer import losses as L

C = 4


def data(seed=0, b=2, h=5, w=4, c=C, ignore_frac=0.15, scale=3.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, size=(b, h, w))
    y[rng.random((b, h, w)) < ignore_frac] = 255
    z = (rng.standard_normal((b, h, w, c)) * scale).astype(np.float32)
    labeled = (rng.random((b, c)) < 0.5).astype(np.float32)
    labeled[:, 0] = 1
    return y, z, labeled


CW = np.array([0.5, 1.0, 2.0, 4.0], np.float32)
FN = np.array([1.0, 0.0, 3.0, 2.0], np.float32)  # class 1's false negatives ignored, 2 and 3 penalised
FP = np.array([2.0, 1.0, 0.5, 1.0], np.float32)


def _pw(y):
    """Pixel weights in [0.5, 1.75], a deterministic function of the mask (works on tensors too)."""
    y = tf.cast(y, tf.int32)
    y = y[..., 0] if len(y.shape) == 4 else y
    return 0.5 + tf.cast(tf.math.floormod(y * 7 + 3, 6), tf.float32) / 4.0


CASES = {
    "ce": (lambda y, z, l: L.weighted_cross_entropy(y, z), lambda y, z, l: ref.cross_entropy(y, z)),
    "ce_weighted": (lambda y, z, l: L.weighted_cross_entropy(y, z, CW, pixel_weights=_pw(y)),
                    lambda y, z, l: ref.cross_entropy(y, z, CW, _pw(y).numpy())),
    "ce_smoothing": (lambda y, z, l: L.weighted_cross_entropy(y, z, label_smoothing=0.1),
                     lambda y, z, l: ref.cross_entropy(y, z, ls=0.1)),
    "ce_error_weights": (lambda y, z, l: L.weighted_cross_entropy(y, z, CW, fn_weights=FN[:len(CW)],
                                                                  fp_weights=FP[:len(CW)], low_confidence=(0.5, 0.3)),
                         lambda y, z, l: ref.cross_entropy(y, z, CW, ref.error_weights(y, z, FN, FP, (0.5, 0.3)))),
    "ce_top_k": (lambda y, z, l: L.weighted_cross_entropy(y, z, CW, top_k_percent_pixels=0.3),
                 lambda y, z, l: ref.cross_entropy_top_k(y, z, 0.3, CW)),
    "focal": (lambda y, z, l: L.focal_loss(y, z, gamma=2.0, alpha=CW),
              lambda y, z, l: ref.focal(y, z, 2.0, CW)),
    "focal_gamma_half": (lambda y, z, l: L.focal_loss(y, z, gamma=0.5),
                         lambda y, z, l: ref.focal(y, z, 0.5)),
    "dice": (lambda y, z, l: L.dice_loss(y, z, CW), lambda y, z, l: ref.dice(y, z, CW)),
    "generalized_dice": (lambda y, z, l: L.generalized_dice_loss(y, z), lambda y, z, l: ref.generalized_dice(y, z)),
    "tversky": (lambda y, z, l: L.tversky_loss(y, z, alpha=0.3, beta=0.7),
                lambda y, z, l: ref.tversky(y, z, 0.3, 0.7)),
    "ignore_predicted": (lambda y, z, l: L.ignore_predicted_cross_entropy(y, z, l),
                         lambda y, z, l: ref.ignore_predicted(y, z, l)),
    "marginal": (lambda y, z, l: L.marginal_cross_entropy(y, z, l, CW), lambda y, z, l: ref.marginal(y, z, l, CW)),
    "marginal_dice": (lambda y, z, l: L.dice_loss(y, z, CW, labeled=l), lambda y, z, l: ref.marginal_dice(y, z, l, CW)),
    "marginal_dice_pixel_weights": (lambda y, z, l: L.dice_loss(y, z, pixel_weights=_pw(y), labeled=l),
                                    lambda y, z, l: ref.marginal_dice(y, z, l, pw=_pw(y).numpy())),
    "exclusion_ce": (lambda y, z, l: L.exclusion_loss(y, z, l), lambda y, z, l: ref.exclusion_ce(y, z, l)),
    "exclusion_dice": (lambda y, z, l: L.exclusion_loss(y, z, l, form="dice"),
                       lambda y, z, l: ref.exclusion_dice(y, z, l)),
    # class weights > 1 (CW) and pixel weights (_pw, in [0.5, 1.75]) of every function that takes them
    "focal_weighted": (lambda y, z, l: L.focal_loss(y, z, gamma=2.0, alpha=0.25, class_weights=CW,
                                                    pixel_weights=_pw(y)),
                       lambda y, z, l: ref.focal(y, z, 2.0, 0.25, cw=CW, pw=_pw(y).numpy())),
    "dice_pixel_weights": (lambda y, z, l: L.dice_loss(y, z, CW, pixel_weights=_pw(y)),
                           lambda y, z, l: ref.dice(y, z, CW, pw=_pw(y).numpy())),
    "generalized_dice_class_weights": (lambda y, z, l: L.generalized_dice_loss(y, z, class_weights=CW),
                                       lambda y, z, l: ref.generalized_dice(y, z, cw=CW)),
    "generalized_dice_pixel_weights": (lambda y, z, l: L.generalized_dice_loss(y, z, pixel_weights=_pw(y)),
                                       lambda y, z, l: ref.generalized_dice(y, z, pw=_pw(y).numpy())),
    "tversky_class_weights": (lambda y, z, l: L.tversky_loss(y, z, alpha=0.3, beta=0.7, class_weights=CW),
                              lambda y, z, l: ref.tversky(y, z, 0.3, 0.7, cw=CW)),
    "tversky_pixel_weights": (lambda y, z, l: L.tversky_loss(y, z, alpha=0.3, beta=0.7, pixel_weights=_pw(y)),
                              lambda y, z, l: ref.tversky(y, z, 0.3, 0.7, pw=_pw(y).numpy())),
    "exclusion_ce_pixel_weights": (lambda y, z, l: L.exclusion_loss(y, z, l, pixel_weights=_pw(y)),
                                   lambda y, z, l: ref.exclusion_ce(y, z, l, pw=_pw(y).numpy())),
    "exclusion_dice_pixel_weights": (lambda y, z, l: L.exclusion_loss(y, z, l, form="dice", pixel_weights=_pw(y)),
                                     lambda y, z, l: ref.exclusion_dice(y, z, l, pw=_pw(y).numpy())),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_numpy_reference(name, seed):
    y, z, labeled = data(seed)
    ours, theirs = CASES[name]
    np.testing.assert_allclose(float(ours(y, z, labeled)), theirs(y, z, labeled), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_mask_with_channel_axis_gives_same_value(name):
    y, z, labeled = data(2)
    ours, _ = CASES[name]
    np.testing.assert_allclose(float(ours(y[..., None], z, labeled)), float(ours(y, z, labeled)), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_matches_finite_differences(name):
    y, z, labeled = data(3, b=1, h=2, w=2, c=3, ignore_frac=0.2, scale=1.0)
    labeled = np.array([[1, 0, 1]], np.float32)
    y = np.array([[[0, 2], [1, 255]]])
    ours, _ = CASES[name]
    global CW  # the cases read CW at call time: use a 3-class version here
    saved = CW
    CW = np.array([0.5, 1.0, 2.0], np.float32)
    try:
        zt = tf.Variable(z.astype(np.float64))
        with tf.GradientTape() as tape:
            value = ours(y, tf.cast(zt, tf.float32), labeled)
        grad = tape.gradient(value, zt).numpy()
        eps = 1e-2
        numeric = np.zeros_like(z, dtype=np.float64)
        for idx in np.ndindex(z.shape):
            plus, minus = z.astype(np.float64).copy(), z.astype(np.float64).copy()
            plus[idx] += eps
            minus[idx] -= eps
            numeric[idx] = (float(ours(y, plus.astype(np.float32), labeled))
                            - float(ours(y, minus.astype(np.float32), labeled))) / (2 * eps)
    finally:
        CW = saved
    np.testing.assert_allclose(grad, numeric, atol=2e-3, rtol=2e-2)


def test_ce_agrees_with_keras_sparse_ce_ignore_class():
    y, z, _ = data(4, b=3, h=6, w=6)
    builtin = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    np.testing.assert_allclose(float(L.weighted_cross_entropy(y, z)), float(builtin(y, z)), rtol=1e-5)


def test_focal_agrees_with_keras_categorical_focal_per_class_alpha():
    y, z, _ = data(5, ignore_frac=0.0)
    builtin = keras.losses.CategoricalFocalCrossentropy(alpha=CW.tolist(), gamma=2.0, from_logits=True)
    np.testing.assert_allclose(float(L.focal_loss(y, z, gamma=2.0, alpha=CW)),
                               float(builtin(np.eye(C)[y], z)), rtol=1e-5)


def test_dice_agrees_with_keras_dice_on_one_class():
    y, z, _ = data(6, c=2, ignore_frac=0.0)
    probs = tf.nn.softmax(z)[..., 1]
    builtin = keras.losses.Dice(reduction="sum")(tf.cast(y == 1, tf.float32)[None], probs[None])
    ours = L.dice_loss(y, z, class_weights=[0.0, 1.0], smooth=0.0)
    np.testing.assert_allclose(float(ours), float(builtin), rtol=1e-5)


def test_tversky_alpha_is_false_positive_weight_and_keras_swaps_them():
    y, z, _ = data(7, c=2, ignore_frac=0.0)
    probs = tf.nn.softmax(z)[..., 1]
    truth = tf.cast(y == 1, tf.float32)
    ours = L.tversky_loss(y, z, alpha=0.2, beta=0.8, class_weights=[0.0, 1.0], smooth=0.0)
    keras_swapped = keras.losses.Tversky(alpha=0.8, beta=0.2, reduction="sum")(truth[None], probs[None])
    np.testing.assert_allclose(float(ours), float(keras_swapped), rtol=1e-5)
    # A prediction with only false positives costs more when alpha (FP weight) is larger.
    yy = np.zeros((1, 2, 2), int)
    yy[0, 0, 0] = 1
    zz = np.zeros((1, 2, 2, 2), np.float32)
    zz[..., 1] = 5.0  # everything predicted as class 1: 1 TP, 3 FP, 0 FN
    fp_heavy = float(L.tversky_loss(yy, zz, alpha=0.9, beta=0.1, class_weights=[0, 1], smooth=0))
    fn_heavy = float(L.tversky_loss(yy, zz, alpha=0.1, beta=0.9, class_weights=[0, 1], smooth=0))
    assert fp_heavy > fn_heavy


def test_region_losses_uniform_pixel_weight_hand_case():
    """A confident, correct prediction: with smooth=0 every region score is 1 (loss 0) whatever the
    (uniform) pixel weight, and scaling the weights does not change the loss."""
    y = np.array([[[0, 1], [2, 2]]])
    z = (np.eye(3)[y] * 40.0).astype(np.float32)  # p = 1 on the true class (to float32 precision)
    for weight in (1.0, 2.0, 0.5):
        pw = np.full(y.shape, weight, np.float32)
        assert float(L.dice_loss(y, z, smooth=0.0, pixel_weights=pw)) == pytest.approx(0.0, abs=1e-6)
        assert float(L.generalized_dice_loss(y, z, smooth=0.0, pixel_weights=pw)) == pytest.approx(0.0, abs=1e-6)
        assert float(L.tversky_loss(y, z, smooth=0.0, pixel_weights=pw)) == pytest.approx(0.0, abs=1e-6)
    # An imperfect prediction: hand values of I, P, G for one class, then weights x3.
    y1 = np.array([[[1, 0]]])
    z1 = np.zeros((1, 1, 2, 2), np.float32)  # p = 0.5 everywhere
    # class 1 with pixel weights (2, 1): I = 2*0.5 = 1, P = 2*0.5 + 1*0.5 = 1.5, G = 2 -> D = 2 / 3.5
    pw1 = np.array([[[2.0, 1.0]]], np.float32)
    expected = 1 - 2 * 1.0 / 3.5
    got = float(L.dice_loss(y1, z1, class_weights=[0.0, 1.0], smooth=0.0, pixel_weights=pw1))
    assert got == pytest.approx(expected, rel=1e-6)
    assert float(L.dice_loss(y1, z1, class_weights=[0.0, 1.0], smooth=0.0, pixel_weights=3 * pw1)) == \
        pytest.approx(expected, rel=1e-6)
    # Tversky alpha=0.25, beta=0.75: TP = 1, FP = P - TP = 0.5, FN = G - TP = 1 -> 1 / (1 + 0.125 + 0.75)
    got = float(L.tversky_loss(y1, z1, alpha=0.25, beta=0.75, class_weights=[0.0, 1.0], smooth=0.0,
                               pixel_weights=pw1))
    assert got == pytest.approx(1 - 1 / 1.875, rel=1e-6)


PIXEL_WEIGHTED = [name for name in CASES if "pixel_weights" in name or name in ("ce_weighted", "focal_weighted")]


@pytest.mark.parametrize("name", PIXEL_WEIGHTED)
def test_pixels_of_weight_zero_do_not_change_the_loss(name, monkeypatch):
    """_pw is 0 on class 1 here: changing the logits of those pixels leaves every loss as it was."""
    y, z, labeled = data(19)
    monkeypatch.setattr(sys.modules[__name__], "_pw", lambda t: tf.cast(tf.not_equal(
        (t[..., 0] if len(t.shape) == 4 else t), 1), tf.float32))
    zero = y == 1
    assert zero.any() and (y[~zero] != 255).any()
    fn = CASES[name][0]
    before = float(fn(y, z, labeled))
    z2 = z.copy()
    z2[zero] = np.random.default_rng(20).standard_normal((zero.sum(), C)).astype(np.float32) * 5
    np.testing.assert_allclose(float(fn(y, z2, labeled)), before, rtol=1e-6, atol=1e-7)


def test_marginal_with_everything_labelled_equals_weighted_ce():
    y, z, _ = data(8)
    all_labeled = np.ones((2, C), np.float32)
    np.testing.assert_allclose(float(L.marginal_cross_entropy(y, z, all_labeled, CW)),
                               float(L.weighted_cross_entropy(y, z, CW)), rtol=1e-6)
    np.testing.assert_allclose(float(L.ignore_predicted_cross_entropy(y, z, all_labeled)),
                               float(L.weighted_cross_entropy(y, z)), rtol=1e-6)
    assert float(L.exclusion_loss(y, z, all_labeled)) == 0.0


def test_seed_004_situation_missing_object_costs_less():
    """An object the model finds but the annotator left out is punished by plain CE only."""
    y = np.zeros((1, 8, 8), int)
    y[0, 1:4, 1:4] = 1  # annotated object of class 1
    # The model is right everywhere, and also finds an object of class 2 that the
    # annotation lacks (those pixels are labelled background).
    z = np.full((1, 8, 8, 3), -4.0, np.float32)
    z[..., 0] = 4.0
    z[0, 1:4, 1:4, 1], z[0, 1:4, 1:4, 0] = 4.0, -4.0
    z[0, 5:8, 5:8, 2], z[0, 5:8, 5:8, 0] = 4.0, -4.0
    labeled = np.array([[1, 1, 0]], np.float32)  # class 2 was not annotated in this image
    plain = float(L.weighted_cross_entropy(y, z))
    for aware in (L.ignore_predicted_cross_entropy(y, z, labeled), L.marginal_cross_entropy(y, z, labeled)):
        assert float(aware) < plain / 5
    # With class 2 labelled (the annotator says it is absent), the losses agree with CE.
    labeled_all = np.ones((1, 3), np.float32)
    np.testing.assert_allclose(float(L.marginal_cross_entropy(y, z, labeled_all)), plain, rtol=1e-6)


def test_fn_and_fp_weights_and_low_confidence_hand_case():
    y = np.array([[[1, 0]]])  # pixel 0: class 1, pixel 1: class 0
    z = np.array([[[[2.0, 0.0], [2.0, 0.0]]]], np.float32)  # both predicted class 0
    ce = -np.log(ref.softmax(z[0, 0].astype(np.float64)))
    base = (ce[0, 1] + ce[1, 0]) / 2
    assert float(L.weighted_cross_entropy(y, z)) == pytest.approx(base, rel=1e-5)
    # pixel 0 is a false negative of class 1 and a false positive of class 0
    got = float(L.weighted_cross_entropy(y, z, fn_weights=[1.0, 3.0], fp_weights=[0.5, 1.0]))
    assert got == pytest.approx((3.0 * 0.5 * ce[0, 1] + ce[1, 0]) / 2, rel=1e-5)
    assert float(L.weighted_cross_entropy(y, z, fn_weights=[1.0, 0.0])) == pytest.approx(ce[1, 0] / 2, rel=1e-5)
    # max prob = softmax(2, 0)[0] = 0.88 < tau = 0.9: both pixels down-weighted by alpha
    assert float(L.weighted_cross_entropy(y, z, low_confidence=(0.9, 0.25))) == pytest.approx(0.25 * base, rel=1e-5)
    assert float(L.weighted_cross_entropy(y, z, low_confidence=(0.5, 0.25))) == pytest.approx(base, rel=1e-5)
    # the config's form (loss.low_confidence: {tau, alpha}) is taken too (QA 27: a bare KeyError: 0)
    assert float(L.weighted_cross_entropy(y, z, low_confidence={"tau": 0.9, "alpha": 0.25})) == \
        pytest.approx(0.25 * base, rel=1e-5)
    for bad in ({"tau": 0.9}, [0.9], "ab", {"tau": 0.9, "alpha": 0.2, "beta": 1}):
        with pytest.raises(ValueError, match=r"low_confidence must be \(tau, alpha\) or \{'tau'"):
            L.weighted_cross_entropy(y, z, low_confidence=bad)


def test_low_confidence_weight_has_no_gradient_path():
    y, z, _ = data(10)
    zt = tf.Variable(z)
    with tf.GradientTape(persistent=True) as tape:
        a = L.weighted_cross_entropy(y, tf.identity(zt), low_confidence=(0.6, 0.5))
    weight = L.pixel_weight_map(*L.prepare(y, z)[:3], low_confidence=(0.6, 0.5))
    with tf.GradientTape() as tape2:
        labels, valid, logits, c = L.prepare(y, zt)
        per_pixel = -tf.reduce_sum(tf.one_hot(labels, c) * tf.nn.log_softmax(logits), -1)
        b = tf.reduce_sum(per_pixel * weight) / tf.reduce_sum(valid)
    np.testing.assert_allclose(tape.gradient(a, zt).numpy(), tape2.gradient(b, zt).numpy(), atol=1e-6)


def test_top_k_percent_pixels_keeps_the_hardest():
    y, z, _ = data(11, ignore_frac=0.0, b=1)
    labels, valid, logits, c = L.prepare(y, z)
    per_pixel = -np.take_along_axis(ref.log_softmax(z.astype(np.float64)), y[..., None], -1)[..., 0].ravel()
    k = int(np.ceil(0.25 * per_pixel.size))
    expected = np.sort(per_pixel)[-k:].mean()
    np.testing.assert_allclose(float(L.weighted_cross_entropy(y, z, top_k_percent_pixels=0.25)), expected, rtol=1e-5)


@pytest.mark.parametrize("p, pixels", [(0.3, 100), (0.15, 100), (0.6, 400), (0.3, 400), (0.5, 64), (0.07, 100)])
def test_top_k_keeps_ceil_p_hw_pixels_without_float_rounding(p, pixels):
    """QA 62: k was ceil(float32(p) * HW), and float32(0.3) * 100 = 30.000002 kept 31 pixels. Distinct
    per-pixel losses, so the value tells k: the mean of the k largest (k = ceil(p HW) of the exact
    decimal, computed with fractions). Eager and under XLA."""
    from fractions import Fraction

    k = math.ceil(Fraction(str(p)) * pixels)
    y = np.zeros((1, 1, pixels), np.int32)
    z = np.zeros((1, 1, pixels, 2), np.float32)
    z[0, 0, :, 1] = np.linspace(5.0, -5.0, pixels)  # CE of class 0: softplus(z1), all different
    per_pixel = np.sort(np.logaddexp(0.0, z[0, 0, :, 1].astype(np.float64)))[::-1]
    top = lambda y, z: L.weighted_cross_entropy(y, z, top_k_percent_pixels=p)  # noqa: E731
    np.testing.assert_allclose(float(top(y, z)), per_pixel[:k].mean(), rtol=1e-6)
    np.testing.assert_allclose(float(tf.function(top, jit_compile=True)(y, z)), per_pixel[:k].mean(), rtol=1e-6)


def test_top_k_count_is_exact_for_large_images():
    """QA 65: a float32 product with a relative tolerance of 1e-6 kept one pixel too few once p H W reached
    a million (1024 x 2048 at 0.5: 1048575). The count against exact decimal arithmetic, for image sizes up
    to 8K and fractions of a few decimals, as a number and as a tensor under XLA."""
    from fractions import Fraction

    cases = [(p, h * w) for p in (0.01, 0.07, 0.15, 0.25, 0.3, 0.5, 0.6, 0.99) for h, w in
             ((10, 10), (512, 512), (1024, 2048), (2160, 3840), (4320, 7680), (1, 7))]
    counted = tf.function(lambda n, p: L.top_k_count(n, p), jit_compile=True)
    for p, n in cases:
        exact = max(1, math.ceil(Fraction(str(p)) * n))
        assert int(L.top_k_count(n, p)) == exact, (p, n)
        assert int(counted(tf.constant(n), p)) == exact, (p, n)


def test_top_k_keeps_exactly_k_pixels_when_weighted_losses_tie_at_zero():
    """QA 26: with fewer than k pixels of non-zero weighted loss (class weight 0 here) the k-th value was 0
    and every pixel tied with it was kept and counted: top_k 0.25 gave the top_k 1.0 value. Hand case: 4x4,
    2 pixels of class 1 (weight 1), 14 of class 0 (weight 0), uniform logits (loss ln 2 each): k = 4
    pixels are kept, 2 of loss ln 2 and 2 of 0: 2 ln 2 / 4. Eager and under XLA."""
    y = np.zeros((1, 4, 4), np.int32)
    y[0, 0, :2] = 1
    z = np.zeros((1, 4, 4, 2), np.float32)
    expected = 2 * np.log(2) / 4
    top = lambda y, z: L.weighted_cross_entropy(y, z, class_weights=[0.0, 1.0], top_k_percent_pixels=0.25)  # noqa
    np.testing.assert_allclose(float(top(y, z)), expected, rtol=1e-6)
    np.testing.assert_allclose(float(tf.function(top, jit_compile=True)(y, z)), expected, rtol=1e-6)
    assert float(L.weighted_cross_entropy(y, z, class_weights=[0.0, 1.0])) == pytest.approx(2 * np.log(2) / 16)
    # ignored pixels are never among the k while labelled ones are left: 13 ignored, 3 labelled (k = 4)
    few = np.full((1, 4, 4), 255, np.int32)
    few[0, 0, :3] = [1, 1, 0]
    np.testing.assert_allclose(float(top(few, z)), 2 * np.log(2) / 3, rtol=1e-6)
    np.testing.assert_allclose(float(top(few, z)), ref.cross_entropy_top_k(few, z, 0.25, [0.0, 1.0]), rtol=1e-6)
    np.testing.assert_allclose(float(top(y, z)), ref.cross_entropy_top_k(y, z, 0.25, [0.0, 1.0]), rtol=1e-6)
    # more than k pixels of infinite loss: inf, as without top-k (review 26: a left-out one gave inf * 0 = NaN)
    hopeless = np.zeros((1, 4, 4, 2), np.float32)
    hopeless[..., 1] = -np.inf
    ones = np.ones((1, 4, 4), np.int32)
    assert np.isinf(float(L.weighted_cross_entropy(ones, hopeless, top_k_percent_pixels=0.25)))
    assert np.isinf(float(L.weighted_cross_entropy(ones, hopeless)))


ALL = sorted(CASES)


@pytest.mark.parametrize("name", ALL)
def test_all_pixels_ignored_gives_zero_and_finite_gradients(name):
    y, z, labeled = data(12)
    y = np.full_like(y, 255)
    zt = tf.Variable(z)
    with tf.GradientTape() as tape:
        value = CASES[name][0](y, tf.identity(zt), labeled)
    grad = tape.gradient(value, zt)
    assert np.isfinite(float(value))
    assert grad is None or np.isfinite(grad.numpy()).all()
    if name.startswith(("ce", "focal", "marginal", "ignore", "exclusion")):
        assert float(value) == 0.0


@pytest.mark.parametrize("name", ALL)
def test_float16_logits_of_magnitude_40_batch_of_one(name):
    rng = np.random.default_rng(13)
    y = rng.integers(0, 2, size=(1, 4, 4))  # classes 2 and 3 absent from the batch
    z = tf.Variable(tf.cast(rng.choice([-40.0, 40.0], size=(1, 4, 4, C)), tf.float16))
    labeled = np.array([[1, 1, 0, 0]], np.float32)
    with tf.GradientTape() as tape:
        value = CASES[name][0](y, tf.identity(z), labeled)
    grad = tape.gradient(value, z)
    assert value.dtype == tf.float32 and np.isfinite(float(value))
    assert np.isfinite(grad.numpy().astype(np.float32)).all()


@pytest.mark.parametrize("name", ALL)
def test_xla_jit_compile_gives_the_same_value(name):
    y, z, labeled = data(14)
    fn = CASES[name][0]
    compiled = tf.function(lambda a, b, c: fn(a, b, c), jit_compile=True)
    np.testing.assert_allclose(float(compiled(tf.constant(y), tf.constant(z), tf.constant(labeled))),
                               float(fn(y, z, labeled)), rtol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_unknown_image_size_in_a_traced_step_gives_the_same_value(name):
    """A training step traces the loss with [B, None, None] masks (model.fit over a dataset of unknown
    image size): every loss must build and, compiled with XLA, equal the eager value. top-k pixels read
    the image size from the static shape and failed there (int(None)) in every SegTrainer run."""
    y, z, labeled = data(16, b=2, h=6, w=5)
    spec = (tf.TensorSpec([None, None, None], tf.int64), tf.TensorSpec([None, None, None, C], tf.float32),
            tf.TensorSpec([None, C], tf.float32))
    fn = CASES[name][0]
    traced = tf.function(lambda a, b, c: fn(a, b, c), input_signature=spec, jit_compile=True)
    np.testing.assert_allclose(float(traced(y, z, labeled)), float(fn(y, z, labeled)), rtol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_mirrored_strategy_matches_single_device(name, mirrored_strategy):
    strategy = mirrored_strategy
    y, z, labeled = data(15, b=4)
    y[:2] = 255  # replica 0 gets far fewer valid pixels than replica 1
    y[0, 0, 0] = 1
    fn = CASES[name][0]
    single = float(fn(y, z, labeled))

    def shard(ctx):
        i = ctx.replica_id_in_sync_group
        return (tf.constant(y[2 * i:2 * i + 2]), tf.constant(z[2 * i:2 * i + 2]), tf.constant(labeled[2 * i:2 * i + 2]))

    inputs = strategy.experimental_distribute_values_from_function(shard)
    per_replica = strategy.run(tf.function(lambda a, b, c: fn(a, b, c)), args=inputs)
    total = float(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None))
    np.testing.assert_allclose(total, single, rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 60.0), st.integers(1, 3))
def test_finite_for_any_input(seed, scale, batch):
    y, z, labeled = data(seed, b=batch, h=3, w=3, ignore_frac=0.5, scale=scale)
    for name, (fn, _) in CASES.items():
        zt = tf.Variable(z)
        with tf.GradientTape() as tape:
            value = fn(y, tf.identity(zt), labeled)
        grad = tape.gradient(value, zt)
        assert np.isfinite(float(value)), name
        assert grad is None or np.isfinite(grad.numpy()).all(), name


def test_bad_arguments():
    y, z, labeled = data(16)
    with pytest.raises(ValueError, match="form"):
        L.exclusion_loss(y, z, labeled, form="focal")
    with pytest.raises(ValueError, match="top_k_percent_pixels"):
        L.weighted_cross_entropy(y, z, top_k_percent_pixels=1.5)


def test_class_weighted_ce_agrees_with_keras_sparse_ce_with_sample_weights():
    """Keras: sum of cw[y] * CE over non-ignored pixels ("sum" reduction) / number of valid pixels."""
    y, z, _ = data(17, b=3, h=6, w=5)
    valid = y != 255
    sample_weight = np.where(valid, CW[np.where(valid, y, 0)], 0.0).astype(np.float32)
    builtin = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255, reduction="sum")
    expected = float(builtin(y, z, sample_weight=sample_weight)) / valid.sum()
    np.testing.assert_allclose(float(L.weighted_cross_entropy(y, z, CW)), expected, rtol=1e-5)


def test_vectors_of_the_wrong_length_name_the_argument():
    y, z, labeled = data(18)  # C = 4
    with pytest.raises(ValueError, match=r"class_weights must have one value per class \(4\)"):
        L.weighted_cross_entropy(y, z, class_weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="fn_weights"):
        L.marginal_cross_entropy(y, z, labeled, fn_weights=[1.0] * 5)
    with pytest.raises(ValueError, match="alpha"):
        L.focal_loss(y, z, alpha=[0.25, 0.75])
    with pytest.raises(ValueError, match="class_weights"):
        L.dice_loss(y, z, class_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match=r"labeled must be \[B, 4\]"):
        L.exclusion_loss(y, z, labeled[:, :3])


# --------------------------------------------------------------------------- edge numerics (issue 13, item 10)
def _value_and_grad(fn, z):
    zt = tf.Variable(np.asarray(z, np.float32))
    with tf.GradientTape() as tape:
        value = fn(tf.identity(zt))
    return float(value), tape.gradient(value, zt).numpy()


def test_focal_reference_gradient_matches_finite_differences():
    """The closed-form reference gradient agrees with central differences of the float64 reference."""
    rng = np.random.default_rng(21)
    for gamma in (0.25, 0.5, 2.0):
        for margin in (0.0, 3.0, 9.0):
            z = np.array([margin, 0.0, -1.0]) + rng.standard_normal(3) * 0.3
            for label in (0, 2):
                eps = 1e-5
                numeric = [(ref.focal(np.array([[[label]]]), (z + eps * e)[None, None, None], gamma)
                            - ref.focal(np.array([[[label]]]), (z - eps * e)[None, None, None], gamma)) / (2 * eps)
                           for e in np.eye(3)]
                np.testing.assert_allclose(ref.focal_pixel_gradient(z, label, gamma), numeric, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.25, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("margin", [0.0, 5.0, 17.0, 20.0, 40.0, 80.0])
def test_focal_gradient_finite_and_exact_at_large_logit_margins(gamma, margin):
    """log_softmax rounds log p_y to 0 from a margin of ~17 on; (1 - p)^gamma then had an infinite
    derivative for gamma < 1 and the gradient was NaN. Value and gradient must match the float64
    closed form (relative 1e-4; values below float32's range may flush to 0)."""
    z = np.array([margin, 0.0, -1.0])
    for label in (0, 2):  # the confident class and a very unlikely one
        value, grad = _value_and_grad(lambda t: L.focal_loss(np.array([[[label]]]), t, gamma=gamma),
                                      z[None, None, None])
        assert np.isfinite(value) and np.isfinite(grad).all()
        np.testing.assert_allclose(value, ref.focal(np.array([[[label]]]), z[None, None, None], gamma),
                                   rtol=1e-4, atol=1e-37)
        np.testing.assert_allclose(grad[0, 0, 0], ref.focal_pixel_gradient(z, label, gamma), rtol=1e-4, atol=1e-37)


@pytest.mark.parametrize("margin", [0.0, 5.0, 10.0, 17.0, 20.0, 40.0, 100.0])
def test_exclusion_ce_confident_in_a_missing_class_value_and_gradient(margin):
    """A pixel of labelled class 1 predicted as the image's missing class 2 with logit margin m:
    ``-log(1 - p_2) = log(1 + e^m / 2)``, gradient ``p - (1/2, 1/2, 0)``. From log_softmax the
    value stopped at -log(1e-7) = 16.1 from a margin of ~17 on and the gradient was 0: the pixels
    the loss exists for were the ones it no longer pushed."""
    z = np.array([0.0, 0.0, margin])
    labeled = np.array([[1.0, 1.0, 0.0]], np.float32)
    value, grad = _value_and_grad(lambda t: L.exclusion_loss(np.array([[[1]]]), t, labeled), z[None, None, None])
    assert value == pytest.approx(np.logaddexp(0.0, margin - np.log(2.0)), rel=1e-5)
    p = np.exp(z - np.logaddexp.reduce(z))
    np.testing.assert_allclose(grad[0, 0, 0], p - [0.5, 0.5, 0.0], rtol=1e-4, atol=1e-7)
    # confident in the labelled class instead: -log(1 - p_2) = log1p(-1 / (e^m + 2)), tiny but exact
    z = np.array([0.0, margin, 0.0])
    value, grad = _value_and_grad(lambda t: L.exclusion_loss(np.array([[[1]]]), t, labeled), z[None, None, None])
    assert value == pytest.approx(-np.log1p(-1.0 / (np.exp(margin) + 2.0)), rel=1e-5, abs=1e-37)
    assert np.isfinite(grad).all()


def test_exclusion_only_counts_pixels_of_a_labelled_class():
    """Contradictory data (class 2 in the mask, not in the image's labelled set): its pixels are not
    'annotated as a labelled foreground class', so neither form pushes p_2 down on them."""
    y = np.array([[[2, 2], [0, 1]]])
    labeled = np.array([[1.0, 1.0, 0.0]], np.float32)
    z = np.tile(np.array([0.0, 0.0, 3.0], np.float32), (1, 2, 2, 1))
    by_hand = np.log((np.exp(3.0) + 2.0) / 2.0) / 4.0  # the one class-1 pixel, over 4 valid pixels
    assert float(L.exclusion_loss(y, z, labeled)) == pytest.approx(by_hand, rel=1e-6)
    assert float(L.exclusion_loss(y, z, labeled)) == pytest.approx(ref.exclusion_ce(y, z, labeled), rel=1e-6)
    assert float(L.exclusion_loss(y, z, labeled, form="dice")) == pytest.approx(
        ref.exclusion_dice(y, z, labeled), rel=1e-6)
    p2 = np.exp(3.0) / (np.exp(3.0) + 2.0)  # region R = the class-1 pixel only
    assert float(L.exclusion_loss(y, z, labeled, form="dice")) == pytest.approx(
        2 * p2 / (4 * p2 + 1 + 1.0), rel=1e-6)


def test_focal_issue_case_gamma_half_margin_20():
    value, grad = _value_and_grad(lambda t: L.focal_loss(np.zeros((1, 1, 1), int), t, gamma=0.5),
                                  [[[[20.0, 0.0, 0.0]]]])
    q = 2 * np.exp(-20.0) / (1 + 2 * np.exp(-20.0))  # 1 - p_y by hand
    assert value == pytest.approx(q ** 1.5, rel=1e-5)  # -(q)^0.5 log(1 - q) = q^1.5 (1 + O(q))
    np.testing.assert_allclose(grad[0, 0, 0], ref.focal_pixel_gradient(np.array([20.0, 0.0, 0.0]), 0, 0.5),
                               rtol=1e-5)


def test_focal_gamma_zero_is_cross_entropy_value_and_gradient():
    """gamma = 0 equals CE exactly (same kernel), including margin-20 pixels, class and pixel weights."""
    y, z, _ = data(22)
    z[0, 0, 0] = [20.0, 0.0, 0.0, 0.0]
    y[0, 0, 0] = 0
    z[1, 1, 1] = [0.0, 0.0, -30.0, 0.0]
    for kwargs in ({}, {"class_weights": CW, "pixel_weights": _pw(y)}):
        focal = _value_and_grad(lambda t: L.focal_loss(y, t, gamma=0.0, **kwargs), z)
        ce = _value_and_grad(lambda t: L.weighted_cross_entropy(y, t, **kwargs), z)
        assert np.isfinite(focal[1]).all()
        assert focal[0] == ce[0]
        np.testing.assert_array_equal(focal[1], ce[1])
    assert float(L.focal_loss(y, z, gamma=0)) == pytest.approx(ref.focal(y, z, 0.0), rel=1e-5)


def _with_minus_inf_logits(seed=23):
    """Every class gets a -inf logit on some valid pixel of another class; an ignored pixel (mapped to
    class 0) has a -inf class-0 logit."""
    y, z, labeled = data(seed, ignore_frac=0.1)
    valid = np.argwhere(y != 255)
    for k in range(C):
        b, i, j = next(tuple(p) for p in valid if y[tuple(p)] != k and np.isfinite(z[tuple(p)]).all())
        z[b, i, j, k] = -np.inf
    y[1, 4, 3] = 255
    z[1, 4, 3, 0] = -np.inf
    return y, z, labeled


@pytest.mark.parametrize("name", sorted(set(CASES) - {"ce_smoothing"}))
def test_minus_inf_logit_gives_reference_value_and_finite_gradient(name):
    """A -inf logit (a class masked out by the model) made focal and marginal CE NaN: the one-hot
    pick computed -inf * 0. Every loss must stay finite, equal the reference, with a finite gradient."""
    y, z, labeled = _with_minus_inf_logits()
    ours, theirs = CASES[name]
    value, grad = _value_and_grad(lambda t: ours(y, t, labeled), z)
    assert np.isfinite(value) and np.isfinite(grad).all()
    np.testing.assert_allclose(value, theirs(y, z, labeled), rtol=2e-5, atol=1e-6)
    assert (grad[np.isneginf(z)] == 0).all()  # a class of probability 0 stays there
    compiled = tf.function(lambda a, b, c: ours(a, b, c), jit_compile=True)
    np.testing.assert_allclose(float(compiled(tf.constant(y), tf.constant(z), tf.constant(labeled))), value, rtol=1e-5)


def test_minus_inf_logit_with_label_smoothing_is_infinite():
    """Label smoothing puts target mass eps / C on every class: on a class of probability 0 the cross
    entropy is +inf, by definition (not NaN)."""
    y, z, labeled = _with_minus_inf_logits()
    assert float(L.weighted_cross_entropy(y, z, label_smoothing=0.1)) == np.inf == ref.cross_entropy(y, z, ls=0.1)


DICE_TYPE = {
    "dice": lambda y, z, l, pw: L.dice_loss(y, z, pixel_weights=pw),
    "dice_class_weights": lambda y, z, l, pw: L.dice_loss(y, z, CW, smooth=0.5, pixel_weights=pw),
    "generalized_dice": lambda y, z, l, pw: L.generalized_dice_loss(y, z, pixel_weights=pw),
    "tversky": lambda y, z, l, pw: L.tversky_loss(y, z, alpha=0.3, beta=0.7, pixel_weights=pw),
    "exclusion_dice": lambda y, z, l, pw: L.exclusion_loss(y, z, l, form="dice", pixel_weights=pw),
}


@pytest.mark.parametrize("name", sorted(DICE_TYPE))
def test_dice_type_losses_do_not_depend_on_a_uniform_weight_scale(name):
    """A uniform pixel weight (0.01, 1, 2, 100) gives the unweighted value: the weights' unit must not
    matter (exclusion Dice had the weight squared in the overlap: weight 2 doubled it, above 1)."""
    y, z, labeled = data(24, b=3, h=6, w=5)
    fn = DICE_TYPE[name]
    unweighted = float(fn(y, z, labeled, None))
    for scale in (0.01, 1.0, 2.0, 100.0):
        value = float(fn(y, z, labeled, np.full(y.shape, scale, np.float32)))
        assert 0.0 <= value <= 1.0
        np.testing.assert_allclose(value, unweighted, rtol=2e-6, err_msg=f"uniform weight {scale}")
    # non-uniform weights: multiplying all of them by a constant changes nothing either
    pw = _pw(y).numpy()
    np.testing.assert_allclose(float(fn(y, z, labeled, 100 * pw)), float(fn(y, z, labeled, pw)), rtol=2e-6)


def test_exclusion_dice_weighted_hand_case():
    """One image, C = 3, class 2 missing; pixel 0 annotated as class 1, pixel 1 background.
    p_2 = (0.5, 0.25). R = (1, 0), smooth 1."""
    y = np.array([[[1, 0]]])
    z = np.log(np.array([[[[1.0, 1.0, 2.0], [1.5, 1.5, 1.0]]]], np.float32))
    labeled = np.array([[1, 1, 0]], np.float32)
    # unweighted (and any uniform weight): 2 * 0.5 / ((0.5 + 0.25) + 1 + 1)
    for weight in (1.0, 2.0):
        got = float(L.exclusion_loss(y, z, labeled, form="dice", pixel_weights=np.full((1, 1, 2), weight)))
        assert got == pytest.approx(1.0 / 2.75, rel=1e-6)
    # weights (3, 1) -> mean 1: (1.5, 0.5); overlap 1.5 * 0.5, P = 1.5 * 0.5 + 0.5 * 0.25, R = 1.5
    got = float(L.exclusion_loss(y, z, labeled, form="dice", pixel_weights=np.array([[[3.0, 1.0]]])))
    assert got == pytest.approx(2 * 0.75 / (0.875 + 1.5 + 1.0), rel=1e-6)


def test_generalized_dice_sudre_weights_without_clamp_hand_case():
    """Sudre et al.'s w_c = 1 / G_c^2 with a weighted volume below 1 (the old 1 / max(G_c, 1)^2 clamped
    it), an absent but predicted class weighted like the rarest present one (MONAI), smooth 0."""
    y = np.array([[[0, 0, 0, 1]]])
    z = np.zeros((1, 1, 4, 3), np.float32)  # p = 1/3 everywhere
    pw = np.array([[[1.0, 1.0, 1.0, 0.2]]], np.float32)
    p = 1.0 / 3.0
    G = np.array([3.0, 0.2, 0.0])
    I = G * p
    P = np.full(3, pw.sum() * p)
    w = np.array([1 / 9.0, 25.0, 25.0])  # 1 / G^2; class 2 absent: the largest present weight
    expected = 1 - 2 * (w * I).sum() / (w * (P + G)).sum()
    for scale in (1.0, 0.01, 100.0):  # the ratio does not depend on the weights' unit
        got = float(L.generalized_dice_loss(y, z, smooth=0.0, pixel_weights=scale * pw))
        assert got == pytest.approx(expected, rel=1e-6)
    # a weight ratio of 1e25: 1 / G^2 would overflow float32; the normalised weights do not
    pw[0, 0, 3] = 1e-25
    G[1] = 1e-25
    I, P, w = G * p, np.full(3, pw.sum() * p), 1 / np.array([9.0, 1e-50, 1e-50])
    extreme = float(L.generalized_dice_loss(y, z, smooth=0.0, pixel_weights=pw))
    assert extreme == pytest.approx(1 - 2 * (w * I).sum() / (w * (P + G)).sum(), rel=1e-6)
    # the normalised weights w / max(w) of the implementation give the literal 1 / G^2 value
    y2, z2, _ = data(25, b=2, h=6, w=6)
    inter, pred, truth = ref.class_sums(y2, z2, pw=_pw(y2).numpy())
    literal = 1 / truth ** 2
    sudre = 1 - 2 * (literal * inter).sum() / (literal * (pred + truth)).sum()
    assert float(L.generalized_dice_loss(y2, z2, smooth=0.0, pixel_weights=_pw(y2))) == pytest.approx(sudre, rel=1e-6)


SMOOTH_ZERO = {
    "dice": lambda y, z, l, pw=None: L.dice_loss(y, z, smooth=0.0, pixel_weights=pw),
    "dice_class_weights": lambda y, z, l, pw=None: L.dice_loss(y, z, CW, smooth=0.0, pixel_weights=pw),
    "generalized_dice": lambda y, z, l, pw=None: L.generalized_dice_loss(y, z, smooth=0.0, pixel_weights=pw),
    "tversky": lambda y, z, l, pw=None: L.tversky_loss(y, z, alpha=0.3, beta=0.7, smooth=0.0, pixel_weights=pw),
    "exclusion_dice": lambda y, z, l, pw=None: L.exclusion_loss(y, z, l, form="dice", smooth=0.0, pixel_weights=pw),
    "marginal_dice": lambda y, z, l, pw=None: L.dice_loss(y, z, smooth=0.0, pixel_weights=pw, labeled=l),
}
SMOOTH_ZERO_REF = {
    "dice": lambda y, z, l: ref.dice(y, z, smooth=0.0),
    "dice_class_weights": lambda y, z, l: ref.dice(y, z, CW, smooth=0.0),
    "generalized_dice": lambda y, z, l: ref.generalized_dice(y, z, smooth=0.0),
    "tversky": lambda y, z, l: ref.tversky(y, z, 0.3, 0.7, smooth=0.0),
    "exclusion_dice": lambda y, z, l: ref.exclusion_dice(y, z, l, smooth=0.0),
    "marginal_dice": lambda y, z, l: ref.marginal_dice(y, z, l, smooth=0.0),
}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("name", sorted(SMOOTH_ZERO))
def test_smooth_zero_batch_without_valid_pixel_gives_zero(name, dtype):
    """smooth = 0 passes config validation; Dice / Tversky / generalized Dice then returned NaN on a
    batch with no valid pixel (0 / 0). They return 0 (as with smooth > 0) with a zero gradient,
    eagerly and under XLA, for float32 and float16 logits; all pixel weights 0 likewise."""
    y, z, labeled = data(26)
    fn = SMOOTH_ZERO[name]
    ignored = np.full_like(y, 255)
    compiled = tf.function(lambda a, b, c: fn(a, b, c), jit_compile=True)
    for yy, pw in ((ignored, None), (y, np.zeros(y.shape, np.float32))):
        zt = tf.Variable(tf.cast(z, dtype))
        with tf.GradientTape() as tape:
            value = fn(yy, tf.identity(zt), labeled, pw)
        grad = tape.gradient(value, zt)
        assert float(value) == 0.0
        assert grad is None or (grad.numpy() == 0).all()
    # XLA may re-associate the class-weighted mean of ones: 0 up to float32 rounding
    assert float(compiled(tf.constant(ignored), tf.cast(z, dtype), tf.constant(labeled))) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", sorted(SMOOTH_ZERO))
def test_smooth_zero_matches_reference_and_stays_finite_when_probabilities_underflow(name):
    """Ordinary batch: the reference value. Logits +-60 in float16 (probabilities exp(-120) = 0 in
    float32) with absent classes: P_c + G_c = 0 for an absent class, which scores 1 (no cost)."""
    y, z, labeled = data(27)
    fn = SMOOTH_ZERO[name]
    np.testing.assert_allclose(float(fn(y, z, labeled)), SMOOTH_ZERO_REF[name](y, z, labeled), rtol=2e-5, atol=1e-6)
    y = np.where(y == 3, 0, y)  # class 3 absent
    z = np.where(np.eye(C, dtype=bool)[np.minimum(y, C - 1)], 60.0, -60.0)
    zt = tf.Variable(tf.cast(z, tf.float16))
    with tf.GradientTape() as tape:
        value = fn(y, tf.identity(zt), labeled)
    grad = tape.gradient(value, zt)
    assert np.isfinite(float(value)) and np.isfinite(grad.numpy().astype(np.float32)).all()
    # a perfect, saturated prediction: every class scores 1 (marginal Dice: the random masks hold classes
    # their `labeled` rows leave out, which it counts as background, so it is not 0 there)
    if name not in ("exclusion_dice", "marginal_dice"):
        assert float(value) == pytest.approx(0.0, abs=1e-6)


EDGE = dict(CASES)
EDGE.update({
    "focal_gamma_zero": (lambda y, z, l: L.focal_loss(y, z, gamma=0.0, alpha=0.25), None),
    **{f"{name}_smooth0": (lambda y, z, l, f=fn: f(y, z, l, _pw(y)), None) for name, fn in SMOOTH_ZERO.items()},
})


def _edge_batch(kind):
    """Batch of one, 3x3, C = 4: all ignored / one class only / one valid pixel / background only."""
    y = {"all_ignored": np.full((1, 3, 3), 255),
         "one_class": np.full((1, 3, 3), 2),
         "one_valid_pixel": np.where(np.arange(9).reshape(1, 3, 3) == 4, 1, 255),
         "background_only": np.zeros((1, 3, 3), int)}[kind]
    rng = np.random.default_rng(28)
    z = rng.standard_normal((1, 3, 3, C)) * 30.0
    z[0, 0, 0] = [60.0, -60.0, 0.0, -60.0]  # saturated: probabilities exp(-120) = 0 in float32
    return y, tf.cast(z, tf.float16), np.array([[1, 0, 1, 0]], np.float32)


@pytest.mark.parametrize("kind", ["all_ignored", "one_class", "one_valid_pixel", "background_only"])
@pytest.mark.parametrize("name", sorted(EDGE))
def test_every_loss_finite_at_the_edges(name, kind):
    """Regression (issue 13, item 10): batch of one, float16 logits (some saturated), absent classes,
    all-ignored batch, a single valid pixel: a float32, finite value and a finite gradient; an
    all-ignored batch costs exactly 0."""
    y, z, labeled = _edge_batch(kind)
    zt = tf.Variable(z)
    with tf.GradientTape() as tape:
        value = EDGE[name][0](y, tf.identity(zt), labeled)
    grad = tape.gradient(value, zt)
    assert value.dtype == tf.float32 and np.isfinite(float(value))
    assert grad is None or np.isfinite(grad.numpy().astype(np.float32)).all()
    if kind == "all_ignored":
        assert float(value) == 0.0
        assert grad is None or (grad.numpy() == 0).all()


def test_marginal_dice_equals_dice_when_every_class_is_labelled_and_forgives_unlabelled_classes():
    y, z, _ = data(6)
    everything = np.ones((y.shape[0], C), np.float32)
    np.testing.assert_allclose(float(L.dice_loss(y, z, CW, labeled=everything)), float(L.dice_loss(y, z, CW)),
                               rtol=1e-6)
    # hand case: one image, 2 background pixels and one of class 1; class 2 not labelled. The model puts
    # class 2 on both background pixels (they may be class 2 the annotator left out).
    y1 = np.array([[[0, 0, 1]]])
    z1 = np.log(np.array([[[[0.1, 0.1, 0.8], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1]]]], np.float32))
    labeled = np.array([[1, 1, 0]], np.float32)
    # merged probabilities: background 0.9, 0.9, 0.2; class 1 0.1, 0.1, 0.8; class 2 none
    dice_bg = (2 * 1.8 + 1) / (2.0 + 2 + 1)
    dice_1 = (2 * 0.8 + 1) / (1.0 + 1 + 1)
    dice_2 = (0 + 1) / (0 + 0 + 1)
    expected = 1 - (dice_bg + dice_1 + dice_2) / 3
    np.testing.assert_allclose(float(L.dice_loss(y1, z1, labeled=labeled)), expected, rtol=1e-5)
    assert float(L.dice_loss(y1, z1, labeled=labeled)) < float(L.dice_loss(y1, z1))  # plain: class 2 is an FP


def test_dice_term_is_marginal_only_when_asked():
    from segbalance.trainer.segmentation_loss import SegmentationLoss

    y, z, labeled = data(7)
    target = {"mask": y, "labeled": labeled}
    plain = SegmentationLoss({"terms": [{"type": "dice"}]})(target, z)
    marginal = SegmentationLoss({"terms": [{"type": "dice", "marginal": True}]})(target, z)
    np.testing.assert_allclose(float(plain), float(L.dice_loss(y, z)), rtol=1e-6)
    np.testing.assert_allclose(float(marginal), float(L.dice_loss(y, z, labeled=labeled)), rtol=1e-6)
    assert abs(float(marginal) - float(plain)) > 1e-4  # the data leave classes unlabelled
    # no `labeled` in the data: the marginal term is the plain one
    np.testing.assert_allclose(float(SegmentationLoss({"terms": [{"type": "dice", "marginal": True}]})(y, z)),
                               float(plain), rtol=1e-6)


@pytest.mark.parametrize("call, message", [
    (lambda y, z, l: L.focal_loss(y, z, gamma=-1.0), "gamma must be finite and >= 0, got -1.0"),
    (lambda y, z, l: L.focal_loss(y, z, alpha=[1.0, -0.5, 1.0, 1.0]), "alpha must be finite and >= 0"),
    (lambda y, z, l: L.tversky_loss(y, z, alpha=-1.0), "alpha must be finite and >= 0"),
    (lambda y, z, l: L.tversky_loss(y, z, beta=float("nan")), "beta must be finite and >= 0"),
    (lambda y, z, l: L.dice_loss(y, z, smooth=-1.0), "smooth must be finite and >= 0"),
    (lambda y, z, l: L.generalized_dice_loss(y, z, smooth=-1e-6), "smooth must be finite and >= 0"),
    (lambda y, z, l: L.exclusion_loss(y, z, l, form="dice", smooth=-1.0), "smooth must be finite and >= 0"),
    (lambda y, z, l: L.weighted_cross_entropy(y, z, label_smoothing=1.5), r"label_smoothing must be in \[0, 1\)"),
    (lambda y, z, l: L.weighted_cross_entropy(y, z, low_confidence=(2.0, 0.5)), r"low_confidence tau must be in \(0"),
    (lambda y, z, l: L.weighted_cross_entropy(y, z, low_confidence=(0.5, -1.0)), "low_confidence alpha must be"),
    (lambda y, z, l: L.weighted_cross_entropy(y, z, class_weights=[-1.0, 1, 1, 1]), "class_weights must be finite"),
    (lambda y, z, l: L.marginal_cross_entropy(y, z, l, class_weights=[np.nan, 1, 1, 1]), "class_weights must be"),
    (lambda y, z, l: L.weighted_cross_entropy(y, z, fn_weights=[1.0, -2.0, 1, 1]), "fn_weights must be finite"),
    (lambda y, z, l: L.dice_loss(y, z, class_weights=tf.constant([1.0, 1, -1, 1])), "class_weights must be finite"),
    (lambda y, z, l: L.weighted_cross_entropy(y, z, top_k_percent_pixels=0.0), r"top_k_percent_pixels must be in \(0"),
    # QA 62: a list where one number is expected failed in TensorFlow's broadcasting, naming nothing
    (lambda y, z, l: L.focal_loss(y, z, gamma=[1.0, 2.0]), r"gamma must be one number, got shape \(2,\)"),
    (lambda y, z, l: L.dice_loss(y, z, smooth=[1.0, 2.0]), r"smooth must be one number"),
    (lambda y, z, l: L.tversky_loss(y, z, alpha=[0.3, 0.4]), r"alpha must be one number"),
    (lambda y, z, l: L.weighted_cross_entropy(y, z, label_smoothing=[0.1, 0.2]), r"label_smoothing must be one number"),
    (lambda y, z, l: L.weighted_cross_entropy(y, z, top_k_percent_pixels=[0.5]), r"top_k_percent_pixels must be one"),
    (lambda y, z, l: L.weighted_cross_entropy(y, z, low_confidence=([0.5, 0.6], 0.5)), r"low_confidence tau must be one"),
    (lambda y, z, l: L.weighted_cross_entropy(y, z, low_confidence=(0.5, [1.0, 2.0])),
     r"low_confidence alpha must be one"),
    # a scheme name belongs to the loss config: a bare TypeError before
    (lambda y, z, l: L.weighted_cross_entropy(y, z, class_weights="median_frequency"),
     r"class_weights must be 4 numbers, got 'median_frequency': a scheme name is resolved by SegmentationLoss"),
    # logits without the class axis were blamed on y_true, asking for an impossible shape
    (lambda y, z, l: L.weighted_cross_entropy(y, z[..., 0]), r"logits has shape \(\d+, \d+, \d+\); expected \[B,H,W,C\]"),
])
def test_out_of_range_arguments_are_refused_by_name(call, message):
    """What the config layer refuses, the functions refuse too (a negative Tversky alpha gave a negative loss)."""
    y, z, labeled = data()
    with pytest.raises(ValueError, match=message):
        call(y, z, labeled)


@pytest.mark.parametrize("name", ["ce", "focal", "dice", "generalized_dice", "tversky", "marginal_ce", "exclusion_ce"])
def test_mask_shape_pixel_weights_labeled_and_ids_are_checked(name):
    """A mask, weight map or label set of the wrong shape, and ids outside the classes, are a ValueError
    naming the input (were a TensorFlow broadcast / kernel error, or a silent value for Dice)."""
    fn = {"ce": lambda y, z, l, pw: L.weighted_cross_entropy(y, z, pixel_weights=pw),
          "focal": lambda y, z, l, pw: L.focal_loss(y, z, pixel_weights=pw),
          "dice": lambda y, z, l, pw: L.dice_loss(y, z, pixel_weights=pw, labeled=l),
          "generalized_dice": lambda y, z, l, pw: L.generalized_dice_loss(y, z, pixel_weights=pw),
          "tversky": lambda y, z, l, pw: L.tversky_loss(y, z, pixel_weights=pw),
          "marginal_ce": lambda y, z, l, pw: L.marginal_cross_entropy(y, z, l, pixel_weights=pw),
          "exclusion_ce": lambda y, z, l, pw: L.exclusion_loss(y, z, l, pixel_weights=pw)}[name]
    y, z, labeled = data(b=2, h=6, w=4)
    pw = np.ones((2, 6, 4), np.float32)
    assert np.isfinite(float(fn(y, z, labeled, pw)))  # well-formed
    assert np.isfinite(float(fn(y[..., None], z, labeled, pw[..., None])))  # [B,H,W,1] forms
    with pytest.raises(ValueError, match=r"y_true has shape \(2, 3, 4\); expected \(2, 6, 4\)"):
        fn(y[:, :3], z, labeled, pw)
    with pytest.raises(ValueError, match=r"y_true has shape \(2, 6, 4, 3\)"):  # an RGB mask
        fn(np.repeat(y[..., None], 3, axis=-1), z, labeled, pw)
    with pytest.raises(ValueError, match=r"pixel_weights has shape \(2, 3, 4\); expected \(2, 6, 4\)"):
        fn(y, z, labeled, pw[:, :3])
    bad = y.copy()
    bad[0, 0, 0], bad[1, 0, 0] = 7, -2
    with pytest.raises(ValueError, match=r"class ids \[-2, 7\] outside \[0, 4\) that are not the ignore_index \(255\)"):
        fn(bad, z, labeled, pw)
    # QA 26: weight values were never checked: -1 everywhere made CE negative and Dice exactly 0, NaN made
    # Dice 0; a float mask of 1.7 was class 1 without a word (a mask resized with interpolation)
    for value, shown in ((-1.0, "48 values, min -1$"), (np.nan, "48 values, min nan$")):
        odd = pw.copy()
        odd[1, 2, 3] = value
        with pytest.raises(ValueError, match="pixel_weights must be finite and >= 0, got .*" + shown):
            fn(y, z, labeled, odd)
    assert np.isfinite(float(fn(y.astype(np.float32), z, labeled, pw)))  # whole numbers as floats: fine
    fractional = y.astype(np.float32)
    fractional[0, 1, 1] = 1.7
    with pytest.raises(ValueError, match=r"y_true holds values \[1.7\d*\] that are not whole class ids"):
        fn(fractional, z, labeled, pw)
    if name in ("dice", "marginal_ce", "exclusion_ce"):
        with pytest.raises(ValueError, match=r"labeled must be \[B, 4\] multi-hot \(one row per image of the batch, B = 2"):
            fn(y, z, np.ones((3, 4), np.float32), pw)


def test_shape_checks_let_unknown_dimensions_through_under_xla():
    """Inside a traced step with a dynamic batch nothing is inspected but the static dims: the values are
    symbolic (the pipeline's data is checked upstream) and the loss compiles with jit_compile."""
    y, z, labeled = data(b=3, h=4, w=4)
    spec = (tf.TensorSpec([None, 4, 4], tf.int32), tf.TensorSpec([None, 4, 4, C], tf.float32),
            tf.TensorSpec([None, C], tf.float32))

    @tf.function(jit_compile=True, input_signature=spec)
    def step(y, z, lab):
        return L.marginal_cross_entropy(y, z, lab, class_weights=tf.constant(CW), pixel_weights=tf.ones_like(z[..., 0]))

    np.testing.assert_allclose(float(step(y.astype(np.int32), z, labeled)),
                               float(L.marginal_cross_entropy(y, z, labeled, class_weights=CW,
                                                              pixel_weights=np.ones(y.shape, np.float32))), rtol=1e-6)


def test_weight_maps_and_label_sets_that_broadcast_are_accepted():
    """A shared [H,W] map, per-image [B,1,1] weights and one [1,C] label set broadcast as before the
    shape checks; they equal the same values spelled out in full."""
    y, z, labeled = data(b=2, h=6, w=4)
    shared = np.linspace(0.5, 1.5, 24, dtype=np.float32).reshape(6, 4)
    np.testing.assert_allclose(float(L.weighted_cross_entropy(y, z, pixel_weights=shared)),
                               float(L.weighted_cross_entropy(y, z, pixel_weights=np.broadcast_to(shared, (2, 6, 4)))),
                               rtol=1e-6)
    per_image = np.array([0.5, 2.0], np.float32).reshape(2, 1, 1)
    np.testing.assert_allclose(float(L.dice_loss(y, z, pixel_weights=per_image)),
                               float(L.dice_loss(y, z, pixel_weights=np.broadcast_to(per_image, (2, 6, 4)))),
                               rtol=1e-6)
    one = labeled[:1]
    np.testing.assert_allclose(float(L.marginal_cross_entropy(y, z, one)),
                               float(L.marginal_cross_entropy(y, z, np.repeat(one, 2, axis=0))), rtol=1e-6)
    with pytest.raises(ValueError, match=r"pixel_weights has shape \(3, 6, 4\)"):
        L.weighted_cross_entropy(y, z, pixel_weights=np.ones((3, 6, 4), np.float32))
