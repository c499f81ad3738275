"""Class weights: each scheme against a hand computation, zero counts, damping, clipping."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segbalance.trainer.class_weights import (SCHEMES, all_scheme_weights, compute_class_weights, default_beta,
                                   zero_count_classes)

COUNTS = [700, 200, 100]  # N = 1000, f = 0.7, 0.2, 0.1


def test_inverse_frequency_hand_case():
    w = compute_class_weights(COUNTS, "inverse_frequency", normalize=False)
    np.testing.assert_allclose(w, [1000 / (3 * 700), 1000 / (3 * 200), 1000 / (3 * 100)])


def test_median_frequency_hand_case():
    w = compute_class_weights(COUNTS, "median_frequency", normalize=False)
    np.testing.assert_allclose(w, [0.2 / 0.7, 1.0, 0.2 / 0.1])


def test_median_frequency_over_images_containing_the_class():
    # Eigen & Fergus: g_c = pixels of c / pixels of the images where c appears.
    # 3 images of 100 px: A = {bg 90, car 10}, B = {bg 60, car 40}, C = {bg 99, sign 1}.
    counts, present_pixels = [249, 50, 1], [300, 200, 100]
    g = np.array([249 / 300, 50 / 200, 1 / 100])
    w = compute_class_weights(counts, "median_frequency", present_image_pixels=present_pixels, normalize=False)
    np.testing.assert_allclose(w, np.median(g) / g)
    # not a rescaled inverse frequency (which the global-frequency fallback is)
    norm = compute_class_weights(counts, "median_frequency", present_image_pixels=present_pixels)
    inverse = compute_class_weights(counts, "inverse_frequency")
    assert not np.allclose(norm, inverse)
    np.testing.assert_allclose(compute_class_weights(counts, "median_frequency"), inverse)
    # absent classes keep zero_count_weight; P is ignored by the other schemes
    w0 = compute_class_weights([10, 0, 5], "median_frequency", present_image_pixels=[20, 0, 10])
    assert w0[1] == 0.0 and np.isfinite(w0).all()
    np.testing.assert_allclose(compute_class_weights(counts, "enet", present_image_pixels=present_pixels),
                               compute_class_weights(counts, "enet"))


def test_present_image_pixels_must_fit_the_counts():
    with pytest.raises(ValueError, match="shape"):
        compute_class_weights([5, 5], "median_frequency", present_image_pixels=[10])
    with pytest.raises(ValueError, match=">= pixel_counts"):
        compute_class_weights([5, 5], "median_frequency", present_image_pixels=[10, 4])


def test_enet_hand_case():
    w = compute_class_weights(COUNTS, "enet", normalize=False)
    np.testing.assert_allclose(w, [1 / math.log(1.02 + f) for f in (0.7, 0.2, 0.1)])


def _mean_one(values):
    values = np.asarray(values, float)
    return values / values.mean()


def test_effective_number_hand_case():
    """(1 - b) / (1 - b^n), scaled to mean 1 as Cui et al. do (before any clip)."""
    w = compute_class_weights(COUNTS, "effective_number", beta=0.99, normalize=False)
    np.testing.assert_allclose(w, _mean_one([(1 - 0.99) / (1 - 0.99 ** n) for n in COUNTS]))
    default = compute_class_weights(COUNTS, "effective_number", normalize=False)
    b = 1 - 1 / 1000
    np.testing.assert_allclose(default, _mean_one([(1 - b) / (1 - b ** n) for n in COUNTS]))
    assert default[2] > default[1] > default[0]  # not flat with the default beta


def test_effective_number_survives_the_default_clip():
    """Raw, the weights are ~1/n_c (1e-6 here): the default clip [0.5, 5] lifted every class to 0.5,
    so the scheme gave uniform weights on any real data set."""
    counts = [1_000_000, 1_000, 10]
    b = 1 - 1 / sum(counts)
    scaled = _mean_one([(1 - b) / (1 - b ** n) for n in counts])
    clipped = compute_class_weights(counts, "effective_number", clip=(0.5, 5.0))
    np.testing.assert_allclose(clipped, _mean_one(np.clip(scaled, 0.5, 5.0)))
    assert clipped[2] / clipped[0] == pytest.approx(scaled[2] / 0.5)  # not uniform: the rare class leads


def test_normalised_to_mean_one_over_present_classes():
    for scheme in SCHEMES:
        w = compute_class_weights([500, 0, 50, 5], scheme)
        present = [0, 2, 3]
        assert w[present].mean() == pytest.approx(1.0), scheme
        assert w[1] == 0.0


def test_zero_count_class_is_finite_and_listed():
    assert zero_count_classes([3, 0, 1, 0]) == [1, 3]
    for scheme in SCHEMES:
        w = compute_class_weights([10, 0, 5], scheme, zero_count_weight=2.5)
        assert np.isfinite(w).all() and w[1] == 2.5
    assert np.array_equal(compute_class_weights([0, 0], "median_frequency"), [0.0, 0.0])


def test_sqrt_damping_and_clipping():
    raw = compute_class_weights(COUNTS, "inverse_frequency", normalize=False)
    damped = compute_class_weights(COUNTS, "inverse_frequency", damping="sqrt", normalize=False)
    np.testing.assert_allclose(damped, np.sqrt(raw))
    clipped = compute_class_weights(COUNTS, "inverse_frequency", clip=(0.5, 2.0), normalize=False)
    np.testing.assert_allclose(clipped, np.clip(raw, 0.5, 2.0))


def test_rare_class_gets_the_largest_weight():
    for scheme in SCHEMES[1:]:
        w = compute_class_weights([9000, 900, 90], scheme)
        assert w[2] > w[1] > w[0], scheme


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown class-weight scheme 'inverse'"):
        compute_class_weights(COUNTS, "inverse")
    with pytest.raises(ValueError, match="damping"):
        compute_class_weights(COUNTS, "enet", damping="log")
    with pytest.raises(ValueError, match=">= 0"):
        compute_class_weights([1, -1], "enet")
    with pytest.raises(ValueError, match="give 0 <= w_min <= w_max"):
        compute_class_weights(COUNTS, "enet", clip=(3, 1))
    with pytest.raises(ValueError, match="give 0 <= w_min <= w_max"):  # QA 26: a negative w_min passed
        compute_class_weights(COUNTS, "enet", clip=(-1, 5))


def test_all_scheme_weights_lists_every_scheme():
    out = all_scheme_weights(COUNTS)
    assert set(out) == set(SCHEMES) and all(len(v) == 3 for v in out.values())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=12),
       st.sampled_from(SCHEMES), st.booleans())
def test_always_finite(counts, scheme, damp):
    w = compute_class_weights(counts, scheme, damping="sqrt" if damp else None)
    assert np.isfinite(w).all() and (w >= 0).all()


def test_clip_then_normalise_order():
    raw = np.array([1000 / (3 * n) for n in COUNTS])
    clipped = np.clip(raw, 0.5, 2.0)
    w = compute_class_weights(COUNTS, "inverse_frequency", clip=(0.5, 2.0))
    np.testing.assert_allclose(w, clipped / clipped.mean())
    assert w.max() / w.min() <= 2.0 / 0.5 + 1e-12


def test_default_beta_and_enet_k():
    assert default_beta(COUNTS) == pytest.approx(1 - 1 / 1000)
    w = compute_class_weights(COUNTS, "enet", enet_k=1.5, normalize=False)
    np.testing.assert_allclose(w, [1 / math.log(1.5 + f) for f in (0.7, 0.2, 0.1)])


def test_more_bad_options_are_rejected():
    with pytest.raises(ValueError, match="enet_k must be > 1"):
        compute_class_weights(COUNTS, "enet", enet_k=1.0)
    with pytest.raises(ValueError, match="beta must be in"):
        compute_class_weights(COUNTS, "effective_number", beta=1.0)
    with pytest.raises(ValueError, match=r"w_max > 0 \(all weights 0 cannot be normalised\)"):
        compute_class_weights(COUNTS, "median_frequency", clip=(0.0, 0.0))  # it gave NaN weights
    with pytest.raises(ValueError, match="finite"):
        compute_class_weights([1.0, float("nan")], "uniform")
    with pytest.raises(ValueError, match="zero_count_weight"):
        compute_class_weights(COUNTS, "uniform", zero_count_weight=float("inf"))
