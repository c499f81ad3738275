"""Serving exports: a SavedModel on encoded image bytes, and a Keras-native `.keras` file.

SavedModel signature ``serving_default``:

- input ``images``: string [B], PNG or JPEG bytes (RGB or grey); an EXIF orientation (a JPEG's
  Exif segment, a PNG's eXIf chunk) is applied (a phone's portrait photo is scored upright, as
  ingest trains on it). All images of one request
  must have the same size (the outputs are dense tensors); a request mixing sizes fails
  with "all images of one request must have the same size". Send differently sized
  images in separate requests.
- outputs ``class_ids``: int64 [B, H, W] at the input's original size H x W, and
  ``probabilities``: float32 [B, H, W, C] (softmax; ``class_ids`` is its arg-max). The tf.Transform graph (decode, resize,
  normalise) runs inside the model, then the logits are resized bilinearly back to the
  original size before softmax / arg-max.

``model.keras`` (same folder) holds the Keras model on normalised [B, h, w, 3] inputs, with
the ``SegmentationLoss`` registered, and loads with ``keras.saving.load_model(path,
safe_mode=True)``.
"""
from __future__ import annotations

import os

import tensorflow as tf

from segbalance.trainer import example_codec as codec
from segbalance.trainer import exif_orientation
from segbalance.trainer.exif_orientation import PNG_MAGIC
from segbalance.trainer.preprocessing import IMAGE

from segbalance.contract import KERAS_FILE  # noqa: E402,F401




def image_size_of(data):
    """[height, width] int32 of PNG/JPEG bytes from the header (no full decode for PNG/JPEG), as the
    image is shown: an EXIF orientation 5-8 (a JPEG's Exif segment, a PNG's eXIf chunk) swaps them
    (the Transform graph turns it upright)."""
    return exif_orientation.upright_size(header_size(data), exif_orientation.orientation(data))


def header_size(data):
    """[height, width] int32 of the stored pixels, from the header (no full decode for PNG/JPEG)."""
    def png():
        width_height = tf.io.decode_raw(tf.strings.substr(data, 16, 8), tf.int32, little_endian=False)
        return tf.reverse(width_height, [0])

    def other():
        return tf.cond(tf.image.is_jpeg(data), lambda: tf.image.extract_jpeg_shape(data)[:2],
                       lambda: tf.shape(tf.io.decode_image(data, channels=3, expand_animations=False))[:2])

    # a PNG's size sits in its IHDR chunk (bytes 16-24); shorter bytes go to the decoder, which says
    # what is wrong with them (slicing them failed with errors about tensor lists, or UnicodeDecodeError)
    header = tf.logical_and(tf.equal(tf.strings.substr(data, 0, 8), PNG_MAGIC), tf.strings.length(data) >= 24)
    return tf.cond(header, png, other)


class SegmentationServer(tf.Module):
    """The Keras model behind the Transform graph, with the ``serving_default`` signature ``serve``."""

    def __init__(self, model, tf_transform_output, image_feature_dense: bool):
        super().__init__()
        # the model's call, not the model: a tracked Keras model saved its weights a second time (beside the
        # variables the signature reads, tracked in export_serving_model) and its optimizer's slots with them
        self._model = model.__call__
        layer = tf_transform_output.transform_features_layer()
        # What the tf.Transform layer itself tracks (its loaded Transform graph and the resources it
        # holds), so the export saves them; the serving function calls the graph directly. Tracking the
        # tf_keras layer instead makes every export trace tf_keras's own save signatures of it (about
        # 9 s of Python per export on a 2-core CPU) that nothing serving this model uses.
        self.transform_graph = layer._saved_model_loader_tracked_dict  # noqa: SLF001 (tensorflow_transform 1.16)
        self._transform = layer._saved_model_loader.apply_transform_model  # noqa: SLF001
        self._dense = image_feature_dense

    # traced as written (its one `if` tests a Python bool): AutoGraph would rewrite the Transform
    # layer's tf_keras internals and the model call on every export, seconds of Python each time
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")], autograph=False)
    def serve(self, images):
        empty = tf.debugging.assert_positive(tf.size(images), message=(
            "the request holds no image; send at least one encoded PNG or JPEG image"))
        with tf.control_dependencies([empty]):
            images = tf.identity(images)
        sizes = tf.map_fn(image_size_of, images, fn_output_signature=tf.TensorSpec([2], tf.int32))
        original_size = sizes[0]
        check = tf.debugging.assert_equal(sizes, tf.broadcast_to(original_size, tf.shape(sizes)), message=(
            "all images of one request must have the same size; send differently sized images in separate requests"))
        with tf.control_dependencies([check]):
            images = tf.identity(images)
        if self._dense:
            raw = {codec.IMAGE_KEY: tf.reshape(images, [-1, 1])}
        else:
            count = tf.shape(images, out_type=tf.int64)[0]
            indices = tf.stack([tf.range(count), tf.zeros([count], tf.int64)], axis=1)
            raw = {codec.IMAGE_KEY: tf.SparseTensor(indices, images, tf.stack([count, 1]))}
        features = self._transform(raw)
        logits = tf.cast(self._model(features[IMAGE], training=False), tf.float32)
        logits = tf.image.resize(logits, original_size, method="bilinear")
        probabilities = tf.nn.softmax(logits, axis=-1)
        return {"class_ids": tf.argmax(logits, axis=-1), "probabilities": probabilities}


def export_serving_model(model, tf_transform_output, export_dir: str) -> str:
    """Write the SavedModel (signature above) and ``model.keras`` into ``export_dir``."""
    spec = tf_transform_output.raw_feature_spec()[codec.IMAGE_KEY]
    server = SegmentationServer(model, tf_transform_output, isinstance(spec, tf.io.FixedLenFeature))
    # The variables the traced signature reads, tracked as themselves (QA 74): a Keras 3 model held by a tf.Module
    # saves its weights under other handles than the ones the graph reads; TF2's loader rebinds them through the
    # object graph, but TF Serving's (C++ LoadSavedModel, a v1 Session) failed every request with "Could not find
    # variable down0_bn1/moving_mean" (keras-team/keras#19274, tensorflow/serving#2250)
    server.captured_variables = list(server.serve.get_concrete_function().variables)
    tf.saved_model.save(server, export_dir, signatures={"serving_default": server.serve})
    model.save(os.path.join(export_dir, KERAS_FILE))
    return export_dir
