"""training.pixel_weights: each of the four weight maps, configured by its typed section, is what
trainer/weight_maps.py computes, in the tf.data map the trainer uses (trainer/data.py)."""
import numpy as np
import pytest
import tensorflow as tf
import keras

from segbalance.trainer import data, weight_maps

C = 3


def batch(seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 1, size=(2, 16, 16, 3)).astype(np.float32)  # the transformed (standardised) image
    mask = np.zeros((2, 16, 16), np.int32)
    mask[:, 2:6, 2:6] = 1
    mask[:, 9:14, 8:12] = 1
    mask[0, 10:15, 1:4] = 2
    mask[1, 0, :] = 254
    return image, mask


def in_dataset(config, image, mask, ignore_index=254):
    """The map as trainer/data.py computes it inside tf.data (graph mode)."""
    ds = tf.data.Dataset.from_tensors((image, mask)).map(
        lambda i, m: data.pixel_weight_map(i, m, config, C, ignore_index))
    return next(iter(ds)).numpy()


def test_edge_and_intensity_range_maps():
    image, mask = batch()
    got = in_dataset({"type": "edge", "image_weight": 0.5, "boundary_weight": 3.0}, image, mask)
    want = weight_maps.edge_weights(image, mask, num_classes=C, image_weight=0.5, boundary_weight=3.0,
                                    ignore_index=254)
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-6)
    config = {"type": "intensity_range", "ranges": [[-0.5, 0.5, 3.0], [1.0, 9.0, 0.0]], "default": 0.5, "channel": 1}
    got = in_dataset(config, image, mask)
    channel = image[..., 1]  # NumPy reference: later ranges win, default elsewhere
    want = np.full(channel.shape, 0.5, np.float32)
    want[(channel >= -0.5) & (channel < 0.5)] = 3.0
    want[(channel >= 1.0) & (channel < 9.0)] = 0.0
    np.testing.assert_array_equal(got, want)


def test_unet_border_map_runs_numpy_inside_tf_data():
    image, mask = batch(1)
    got = in_dataset({"type": "unet_border", "w0": 4.0, "sigma": 2.0, "connectivity": 2}, image, mask)
    want = weight_maps.unet_border_weights(mask, w0=4.0, sigma=2.0, ignore_index=254, connectivity=2)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[1, 0].max() == pytest.approx(want[1, 0].max()) and (want[1, 0] < 1.0).all()  # ignored row: no base


def test_feature_extractor_map_loads_a_saved_model_and_cuts_it_at_a_layer(tmp_path):
    inputs = keras.Input((None, None, 3))
    hidden = keras.layers.Conv2D(4, 3, padding="same", name="first")(inputs)
    outputs = keras.layers.Conv2D(2, 3, strides=2, padding="same", name="second")(hidden)
    extractor = keras.Model(inputs, outputs)
    path = str(tmp_path / "extractor.keras")
    extractor.save(path)
    image, mask = batch(2)
    for layer, reference in ((None, extractor), ("first", keras.Model(inputs, hidden))):
        config = {"type": "feature_extractor", "model": path, "layer": layer, "strength": 2.0, "reduce": "mean_abs"}
        got = in_dataset(config, image, mask)
        want = weight_maps.feature_extractor_weights(image, reference, strength=2.0, reduce="mean_abs")
        np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="'third' is not a layer of"):
        data.feature_extractor(path, "third")
    with pytest.raises(ValueError, match="does not exist"):
        data.feature_extractor(str(tmp_path / "none.keras"))


def test_run_refuses_a_feature_extractor_it_cannot_load_before_any_component(tmp_path, capsys):
    """A missing pixel_weights model passed `config validate` without a word and stopped SegTrainer with a
    traceback (exit 1) after the data was ingested and counted; `run` now loads it first (exit 2, one
    line, nothing written) and `config validate` notes a file that is not on this machine (QA)."""
    import yaml

    from segbalance.pipeline import cli

    config, output = tmp_path / "c.yaml", tmp_path / "out"
    missing = tmp_path / "nope.keras"
    config.write_text(yaml.safe_dump({"training": {"pixel_weights": {"type": "feature_extractor",
                                                                     "model": str(missing)}}}))
    assert cli.main(["config", "validate", str(config)]) == 0
    captured = capsys.readouterr()
    assert f"note: training.pixel_weights.model: {missing} is not a file" in captured.err and "valid" in captured.out
    assert cli.main(["run", "--config", str(config), "--output-dir", str(output)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and f"training.pixel_weights.model: {missing} does not exist" in captured.err
    assert captured.out == "" and not output.exists()
    missing.write_bytes(b"not a zip")  # there, but no Keras model
    assert cli.main(["run", "--config", str(config), "--output-dir", str(output)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "does not load as a Keras model" in captured.err
    assert captured.out == "" and not output.exists()
    assert cli.main(["config", "validate", str(config)]) == 0 and "note" not in capsys.readouterr().err
