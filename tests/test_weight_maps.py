"""trainer.weight_maps against SciPy / brute-force NumPy references, XLA and the losses."""
import numpy as np
import pytest
import tensorflow as tf
import keras
from scipy import ndimage

from segbalance.trainer import losses as L
from segbalance.trainer import weight_maps as W


def images(seed=0, b=2, h=7, w=6, ch=3):
    return np.random.default_rng(seed).uniform(0, 255, size=(b, h, w, ch)).astype(np.float32)


def test_sobel_magnitude_matches_scipy():
    x = images(0)
    gray = x.mean(-1).astype(np.float64)
    # scipy's mode="reflect" repeats the edge pixel, like numpy/keras "symmetric" padding.
    ref = np.stack([np.hypot(ndimage.sobel(g, axis=1, mode="reflect"), ndimage.sobel(g, axis=0, mode="reflect"))
                    for g in gray])  # per image: scipy would also smooth across the batch axis
    np.testing.assert_allclose(np.asarray(W.sobel_magnitude(x)), ref, rtol=1e-4, atol=1e-2)


def brute_boundaries(mask, ignore=255):
    b, h, w = mask.shape
    out = np.zeros(mask.shape, np.float32)
    for i, y, x in np.ndindex(mask.shape):
        window = mask[i, max(0, y - 1):y + 2, max(0, x - 1):x + 2]
        out[i, y, x] = len(set(window[window != ignore].tolist())) > 1
    return out


def test_mask_boundaries_match_brute_force_and_ignore_makes_no_boundary():
    rng = np.random.default_rng(1)
    mask = rng.integers(0, 3, size=(2, 6, 5))
    mask[rng.random(mask.shape) < 0.2] = 255
    np.testing.assert_array_equal(np.asarray(W.mask_boundaries(mask, 3)), brute_boundaries(mask))
    one_class_and_ignore = np.zeros((1, 4, 4), int)
    one_class_and_ignore[0, :, 2:] = 255
    assert float(np.asarray(W.mask_boundaries(one_class_and_ignore, 3)).sum()) == 0.0


def test_edge_weights_combine_image_edges_and_mask_boundaries():
    x = images(2, b=1)
    mask = np.zeros((1, 7, 6), int)
    mask[0, 2:5, 2:4] = 1
    g = np.asarray(W.sobel_magnitude(x))
    expected = 1 + 0.5 * g / g.max() + 2.0 * brute_boundaries(mask)
    got = np.asarray(W.edge_weights(x, mask, num_classes=2, image_weight=0.5, boundary_weight=2.0))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got.shape == (1, 7, 6)
    flat = np.full((1, 5, 5, 3), 7.0, np.float32)
    np.testing.assert_allclose(np.asarray(W.edge_weights(flat)), 1.0)  # no edges: weight 1, not NaN
    np.testing.assert_allclose(np.asarray(W.edge_weights(mask=mask, num_classes=2)), 1 + brute_boundaries(mask))
    with pytest.raises(ValueError, match="num_classes"):
        W.edge_weights(mask=mask)
    with pytest.raises(ValueError, match="image, a mask"):
        W.edge_weights()


def test_intensity_range_weights_match_numpy():
    x = images(3)
    value = x[..., 1]
    expected = np.full(value.shape, 0.5, np.float32)
    expected[(value >= 0) & (value < 100)] = 2.0
    expected[(value >= 50) & (value < 80)] = 3.0  # later range wins on overlap
    got = W.intensity_range_weights(x, [(0, 100, 2.0), (50, 80, 3.0)], default=0.5, channel=1)
    np.testing.assert_allclose(np.asarray(got), expected)
    mean_based = W.intensity_range_weights(x, [(100, 200, 4.0)])
    np.testing.assert_allclose(np.asarray(mean_based), np.where((x.mean(-1) >= 100) & (x.mean(-1) < 200), 4.0, 1.0),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="lo=5.0 must be < hi=1.0"):
        W.intensity_range_weights(x, [(5, 1, 2.0)])
    with pytest.raises(ValueError, match="at least one"):
        W.intensity_range_weights(x, [])


def test_feature_extractor_weights_match_numpy_and_accept_a_keras_model():
    x = images(4, h=8, w=8)
    same_size = lambda t: t[..., :2] * 2.0  # noqa: E731  features at full resolution: resize is exact
    act = np.sqrt(((x[..., :2] * 2.0) ** 2).sum(-1))
    lo, hi = act.min((1, 2), keepdims=True), act.max((1, 2), keepdims=True)
    expected = 1 + 3.0 * (act - lo) / (hi - lo)
    np.testing.assert_allclose(np.asarray(W.feature_extractor_weights(x, same_size, strength=3.0)), expected,
                               rtol=1e-5)
    mean_abs = np.abs(x[..., :2] * 2.0).mean(-1)
    lo, hi = mean_abs.min((1, 2), keepdims=True), mean_abs.max((1, 2), keepdims=True)
    np.testing.assert_allclose(np.asarray(W.feature_extractor_weights(x, same_size, reduce="mean_abs")),
                               1 + (mean_abs - lo) / (hi - lo), rtol=1e-5)
    inputs = keras.Input((None, None, 3))
    features = keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)  # [B,4,4,4]: resized to 8x8
    extractor = keras.Model(inputs, features)
    got = np.asarray(W.feature_extractor_weights(x, extractor, strength=2.0))
    assert got.shape == (2, 8, 8) and np.isfinite(got).all()
    np.testing.assert_allclose(got.min((1, 2)), 1.0, atol=1e-5)
    np.testing.assert_allclose(got.max((1, 2)), 3.0, atol=1e-5)
    unknown_size = tf.function(lambda t: W.feature_extractor_weights(t, extractor, strength=2.0),
                               input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    np.testing.assert_allclose(unknown_size(x).numpy(), got, rtol=1e-5)  # image size from the tensor, not static
    constant = W.feature_extractor_weights(x, lambda t: tf.ones_like(t))
    np.testing.assert_allclose(np.asarray(constant), 1.0)
    with pytest.raises(ValueError, match="reduce"):
        W.feature_extractor_weights(x, same_size, reduce="max")


def components(binary):
    """4-connected components by flood fill (independent of scipy.ndimage.label)."""
    seen, comps = np.zeros(binary.shape, bool), []
    for start in zip(*np.nonzero(binary)):
        if seen[start]:
            continue
        stack, comp = [start], []
        seen[start] = True
        while stack:
            y, x = stack.pop()
            comp.append((y, x))
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                q = (y + dy, x + dx)
                if 0 <= q[0] < binary.shape[0] and 0 <= q[1] < binary.shape[1] and binary[q] and not seen[q]:
                    seen[q] = True
                    stack.append(q)
        comps.append(np.array(comp))
    return comps


def brute_unet(mask, w0, sigma, cw):
    out = np.zeros(mask.shape)
    for b in range(mask.shape[0]):
        objects = [c for cls in range(1, 10) for c in components(mask[b] == cls)]
        for y, x in np.ndindex(mask.shape[1:]):
            base = cw[mask[b, y, x]] if mask[b, y, x] != 255 else 0.0
            d = sorted(np.sqrt(((obj - [y, x]) ** 2).sum(1)).min() for obj in objects)
            border = w0 * np.exp(-(d[0] + d[1]) ** 2 / (2 * sigma ** 2)) if len(d) >= 2 else 0.0
            out[b, y, x] = base + border
    return out


def test_unet_border_weights_match_brute_force():
    mask = np.zeros((2, 9, 10), int)
    mask[0, 1:4, 1:4] = 1
    mask[0, 1:4, 5:8] = 1  # two objects of class 1 with a 1-pixel gap
    mask[0, 6:8, 2:9] = 2  # and one of class 2
    mask[0, 8, 0] = 255
    mask[1, 2:5, 2:5] = 2  # a single object: no border term
    cw = np.array([0.5, 1.0, 2.0])
    got = W.unet_border_weights(mask, w0=10.0, sigma=2.0, class_weights=cw)
    np.testing.assert_allclose(got, brute_unet(mask, 10.0, 2.0, cw), rtol=1e-5, atol=1e-6)
    assert got[0, 2, 4] > got[0, 5, 0] > 0.5  # the gap between close objects weighs the most
    np.testing.assert_allclose(got[1], np.where(mask[1] == 2, 2.0, 0.5))
    assert got.dtype == np.float32 and W.unet_border_weights(mask[..., None]).shape == mask.shape
    with pytest.raises(ValueError, match="class id 2"):
        W.unet_border_weights(mask, class_weights=[1.0, 1.0])


def test_maps_run_under_xla_and_in_tf_data_and_feed_the_losses():
    x, mask = images(5, b=2, h=8, w=8), np.random.default_rng(5).integers(0, 3, size=(2, 8, 8))

    def maps(image, m):
        return (W.edge_weights(image, m, num_classes=3),
                W.intensity_range_weights(image, [(0.0, 128.0, 2.0)]))

    eager = maps(x, mask)
    compiled = tf.function(maps, jit_compile=True)(tf.constant(x), tf.constant(mask))
    for a, b in zip(eager, compiled):
        np.testing.assert_allclose(np.asarray(a), b.numpy(), rtol=1e-5)
    ds = tf.data.Dataset.from_tensor_slices((x, mask)).batch(2).map(
        lambda image, m: (image, {"mask": m, "pixel_weights": W.edge_weights(image, m, num_classes=3)}))
    _, y = next(iter(ds))
    np.testing.assert_allclose(y["pixel_weights"].numpy(), np.asarray(eager[0]), rtol=1e-5)
    logits = np.random.default_rng(6).standard_normal((2, 8, 8, 3)).astype(np.float32)
    weights = np.asarray(eager[0])
    per_pixel = -np.take_along_axis(logits - np.log(np.exp(logits).sum(-1, keepdims=True)), mask[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(L.weighted_cross_entropy(mask, logits, pixel_weights=weights)),
                               (weights * per_pixel).sum() / mask.size, rtol=1e-5)


NAN = float("nan")


@pytest.mark.parametrize("build, message", [
    (lambda x, m: W.edge_weights(x, m, num_classes=3, image_weight=-3.0), "image_weight must be finite and >= 0"),
    (lambda x, m: W.edge_weights(x, m, num_classes=3, boundary_weight=NAN), "boundary_weight must be finite"),
    (lambda x, m: W.intensity_range_weights(x, [(0.0, 100.0, -2.0)]), "intensity range 0 weight must be finite"),
    (lambda x, m: W.intensity_range_weights(x, [(0.0, 100.0, 2.0)], default=NAN), "default must be finite"),
    (lambda x, m: W.feature_extractor_weights(x, lambda a: 2 * a - 3, strength=-5.0), "strength must be finite"),
    (lambda x, m: W.unet_border_weights(m, w0=-10.0), "w0 must be finite and >= 0"),
    (lambda x, m: W.unet_border_weights(m, w0=NAN), "w0 must be finite and >= 0"),
    (lambda x, m: W.unet_border_weights(m, sigma=NAN), "sigma must be finite and > 0"),
    (lambda x, m: W.unet_border_weights(m, sigma=[1.0, 2.0]), "sigma must be one number"),
    (lambda x, m: W.unet_border_weights(m, class_weights=[1.0, -1.0, 1.0]), "class_weights must be finite and >= 0"),
])
def test_weight_parameters_that_would_make_a_negative_or_nan_map_are_refused(build, message):
    """QA 62: each of these returned a map with negative or NaN weights, which a traced training step
    (model.fit) uses without a check (a negative weight turns descent into ascent on its pixels)."""
    x = images(3, b=1, h=8, w=8)
    mask = np.zeros((1, 8, 8), int)
    mask[0, 1:3, 1:3], mask[0, 5:7, 5:7] = 1, 2
    with pytest.raises(ValueError, match=message):
        build(x, mask)
