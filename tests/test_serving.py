"""Serving signature on encoded bytes (original sizes), and the .keras export (safe_mode=True)."""
import io
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests import trainer_inputs as ti
from segbalance.trainer import example_codec as codec
from segbalance.trainer.segmentation_loss import SegmentationLoss
from segbalance.trainer.serving import KERAS_FILE, PNG_MAGIC, image_size_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported():
    import tensorflow_transform as tft

    uris = ti.tiny_pipeline()
    path = os.path.join(uris["model"], "Format-Serving")
    return (tf.saved_model.load(path).signatures["serving_default"], path,
            tft.TFTransformOutput(uris["transform_graph"]))


def pngs(height, width, n=2, seed=0):
    rng = np.random.default_rng(seed)
    return [codec.encode_png(ti.make_image_and_mask(rng, height, width)[0]) for _ in range(n)]


def test_signature_returns_masks_at_each_request_size(exported):
    serve, _, _ = exported
    assert set(serve.structured_input_signature[1]) == {"images"}
    for height, width in [(20, 28), (48, 40)]:
        out = serve(images=tf.constant(pngs(height, width)))
        assert out["class_ids"].shape == (2, height, width) and out["class_ids"].dtype == tf.int64
        probs = out["probabilities"].numpy()
        assert probs.shape == (2, height, width, ti.NUM_CLASSES)
        np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(probs.argmax(-1), out["class_ids"].numpy())


def test_keras_file_reloads_safely_and_predicts_like_the_signature(exported):
    serve, path, transform_output = exported
    model = keras.saving.load_model(os.path.join(path, KERAS_FILE), safe_mode=True)
    assert isinstance(model.loss, SegmentationLoss) and model.loss.class_weights is not None
    images = pngs(16, 16, n=3, seed=1)  # the model's own size: no resize on either side
    served = serve(images=tf.constant(images))["probabilities"].numpy()
    normalised = transform_output.transform_features_layer()({codec.IMAGE_KEY: tf.constant(images)[:, None]})["image"]
    probs = tf.nn.softmax(model.predict(normalised, verbose=0), axis=-1).numpy()
    np.testing.assert_allclose(probs, served, atol=1e-5)


def test_tf_serving_s_loader_serves_it_like_the_tf2_signature(exported):
    """TF Serving loads a SavedModel as a v1 Session on the 'serve' MetaGraph (C++ LoadSavedModel) and feeds the
    SignatureDef's tensor names; QA 74: every request failed there ("Could not find variable ..."), while TF2's
    loader, which every other test uses, rebinds the weights through the object graph."""
    serve, path, _ = exported
    images = pngs(20, 28, n=2, seed=3)
    served = ti.serve_like_tf_serving(path, images)
    out = serve(images=tf.constant(images))
    np.testing.assert_array_equal(served["class_ids"], out["class_ids"].numpy())
    np.testing.assert_allclose(served["probabilities"], out["probabilities"].numpy(), atol=1e-6)
    # each weight saved once, and no optimizer slot (QA 75: the fix first saved some weights twice, and the
    # tracked model had always brought its Adam moments: 162 KB of variables where 40 KB are the model's)
    model = keras.saving.load_model(os.path.join(path, KERAS_FILE), safe_mode=True)
    saved = [name for name, _ in tf.train.list_variables(os.path.join(path, "variables", "variables"))]
    assert len(saved) == len(model.weights) + 1 and "_CHECKPOINTABLE_OBJECT_GRAPH" in saved
    assert not [name for name in saved if "optimizer" in name]


BLOCK_SEGBALANCE = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "segbalance":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
"""


def test_keras_file_loads_without_segbalance_as_readme_says(exported, tmp_path):
    """QA 74: model.keras names segbalance's model, loss, metric and schedule classes, so a deployer without
    segbalance could not load it; README gives the call that does (compile=False, the model class as keras.Model)
    and this runs it in a process where `import segbalance` fails."""
    import subprocess
    import sys

    _, path, _ = exported
    inputs = np.random.default_rng(4).normal(size=(2, 16, 16, 3)).astype(np.float32)
    np.save(tmp_path / "inputs.npy", inputs)
    script = BLOCK_SEGBALANCE + f"""
import keras, numpy as np
model = keras.saving.load_model({os.path.join(path, KERAS_FILE)!r}, compile=False,
                                custom_objects={{"segbalance>SegmentationModel": keras.Model}})
np.save({str(tmp_path / "outputs.npy")!r}, model.predict(np.load({str(tmp_path / "inputs.npy")!r}), verbose=0))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ours = keras.saving.load_model(os.path.join(path, KERAS_FILE), safe_mode=True).predict(inputs, verbose=0)
    np.testing.assert_allclose(np.load(tmp_path / "outputs.npy"), ours, atol=1e-5)


def test_jpeg_and_grey_inputs_and_mixed_sizes_error(exported):
    serve, _, _ = exported
    rgb = ti.make_image_and_mask(np.random.default_rng(2), 24, 20)[0]
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG")
    out = serve(images=tf.constant([buffer.getvalue(), codec.encode_png(rgb[..., 0])]))
    assert out["class_ids"].shape == (2, 24, 20)
    with pytest.raises(tf.errors.InvalidArgumentError, match="same size"):
        serve(images=tf.constant(pngs(16, 16, 1) + pngs(20, 16, 1)))
    # an empty request: a message, not "slice index 0 of dimension 0 out of bounds"
    with pytest.raises(tf.errors.InvalidArgumentError, match="the request holds no image"):
        serve(images=tf.constant([], tf.string))
    # bytes that start as a PNG but end before its size (IHDR): the decoder's error, not a UnicodeDecodeError
    # or "incompatible shape at a list index" from slicing the missing header
    for length in (8, 12, 16, 17, 20, 23):
        with pytest.raises(tf.errors.InvalidArgumentError, match="DecodeImage"):
            serve(images=tf.constant([PNG_MAGIC + b"\x01" * (length - 8)]))


def test_image_size_of_reads_headers():
    rgb = np.zeros((7, 5, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG")
    for data in (codec.encode_png(rgb), buffer.getvalue()):
        assert image_size_of(tf.constant(data)).numpy().tolist() == [7, 5]


@pytest.mark.parametrize("orientation", [6, 3, 8])
def test_a_phone_jpeg_is_scored_upright_as_ingest_trains_on_it(exported, orientation):
    """A JPEG with an EXIF orientation tag (a phone's portrait photo): ingest turns it upright, the served
    model predicted on the sideways pixels and returned a mask of the stored (landscape) shape."""
    from PIL import ImageOps

    serve, _, transform_output = exported
    stored = ti.make_image_and_mask(np.random.default_rng(5), 24, 40)[0]  # stored 40 wide x 24 high
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    phone = buffer.getvalue()
    shown = ImageOps.exif_transpose(Image.open(io.BytesIO(phone)))  # what ingest writes, and a viewer shows
    upright = codec.encode_png(np.asarray(shown.convert("RGB")))
    assert tuple(image_size_of(tf.constant(phone)).numpy()) == (shown.height, shown.width)
    out = serve(images=tf.constant([phone]))
    assert out["class_ids"].shape == (1, shown.height, shown.width)
    reference = serve(images=tf.constant([upright]))["probabilities"].numpy()
    # the same pixels up to JPEG decoding (TensorFlow's and PIL's decoders round differently)
    assert np.abs(out["probabilities"].numpy() - reference).mean() < 0.02
    layer = transform_output.transform_features_layer()
    model_input = {name: layer({codec.IMAGE_KEY: tf.constant([[data]])})["image"].numpy()
                   for name, data in (("phone", phone), ("upright", upright), ("stored", codec.encode_png(stored)))}
    assert np.abs(model_input["phone"] - model_input["upright"]).mean() < \
        np.abs(model_input["stored"] - model_input["upright"]).mean() / 10


def test_a_png_with_an_exif_chunk_is_scored_upright_like_its_upright_copy(exported):
    """A PNG's eXIf orientation (ingest turns it, as PIL does): the served model scored the stored pixels
    and returned a mask of their shape. PNG is lossless: the turned copy gives the same prediction."""
    from PIL import ImageOps

    serve, _, _ = exported
    stored = ti.make_image_and_mask(np.random.default_rng(6), 24, 40)[0]
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, "PNG", exif=exif.tobytes())
    shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue()))).convert("RGB"))
    assert shown.shape[:2] == (40, 24)
    out = serve(images=tf.constant([buffer.getvalue()]))
    assert out["class_ids"].shape == (1, 40, 24)
    reference = serve(images=tf.constant([codec.encode_png(shown)]))
    np.testing.assert_allclose(out["probabilities"].numpy(), reference["probabilities"].numpy(), atol=1e-5)
