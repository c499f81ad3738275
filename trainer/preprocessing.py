"""`preprocessing_fn` for `tfx.components.Transform`: decode, resize, normalise.

Outputs (batch-major):

- ``image``: float32 [B, H, W, 3], resized (bilinear) to ``training.image_size`` of the
  ``custom_config`` (the pipeline's ``TrainerConfig``, as SegTrainer gets it) and
  normalised with the per-channel mean and standard deviation that tf.Transform analysers
  compute over the training split (the std is floored at 1 grey level, so a constant
  channel does not divide by ~0); with a ``training.backbone`` it stays in 0..255 and the
  model applies the backbone family's own ``preprocess_input`` (``trainer/model.py``);
- ``mask``: int64 [B, H, W], resized with nearest neighbour (ids stay ids);
- ``source_id``: string [B], used to join the per-image label sets of ClassStats.

Materialisation: the pipeline runs Transform with ``materialize=False`` and the trainer
applies the transform graph inside ``tf.data`` (``trainer/data.py``). Materialised float
images would be ~12 bytes per pixel against the ~1-3 bytes of the PNGs already in the
examples; applying the graph on the fly costs one decode per step, which the input
pipeline benchmark shows is cheaper than the training step. The same graph goes into the
serving model (``trainer/serving.py``), so serving takes encoded bytes and cannot drift
from training. Serving passes only ``image/encoded``: tf.Transform fills the other raw
features with defaults (empty bytes) and still computes every output, so the mask decoder
accepts empty bytes; the serving model reads only the ``image`` output.
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from segbalance.trainer import example_codec as codec
from segbalance.trainer import exif_orientation

IMAGE = "image"
MASK = "mask"
SOURCE_ID = "source_id"


def dense_column(x, default):
    """[B] dense tensor from a raw feature that is [B, 1] dense or [B, ?] sparse."""
    if isinstance(x, tf.SparseTensor):
        x = tf.sparse.to_dense(x, default_value=default)
    x = tf.reshape(x, [-1, tf.shape(x)[-1]]) if x.shape.rank and x.shape.rank > 1 else tf.reshape(x, [-1, 1])
    return x[:, 0]


def decode_resize_image(encoded, image_size):
    """[B] encoded PNG/JPEG -> float32 [B, H, W, 3] in [0, 255], bilinear resize; an EXIF (JPEG or PNG)
    orientation is applied first (as ingest, viewers and annotation tools apply it)."""
    def one(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image = exif_orientation.upright(image, exif_orientation.orientation(data))
        return tf.image.resize(tf.cast(image, tf.float32), image_size, method="bilinear")
    return tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec([*image_size, 3], tf.float32))


def decode_resize_mask(encoded, image_size, ignore_index: int = codec.DEFAULT_IGNORE_INDEX):
    """[B] single-channel PNG -> int64 [B, H, W], nearest-neighbour resize.

    Empty bytes give an all-``ignore_index`` mask: tf.Transform feeds ``b""`` for a feature
    the caller did not pass (serving passes only the image), and the graph still computes
    every output. A training record with an empty mask was quarantined and counted by
    ClassStatsGen, and contributes no labelled pixel here.
    """
    def one(data):
        def decode():
            mask = tf.io.decode_png(data, channels=1, dtype=tf.uint8)
            return tf.cast(tf.image.resize(mask, image_size, method="nearest")[..., 0], tf.int64)

        return tf.cond(tf.strings.length(data) > 0, decode,
                       lambda: tf.fill(image_size, tf.constant(ignore_index, tf.int64)))
    return tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec(image_size, tf.int64))


def channel_statistics(pixels):
    """Per-channel mean and (population) standard deviation of ``pixels`` [N, 3] over the dataset, float32, from
    float64 sums (``tft.sum``): the same to the bit whatever order Beam combines the records in. ``tft.mean`` /
    ``tft.var`` accumulate in float32, and two runs of one job on one machine differed in the 7th digit (session 31:
    normalised pixels 3e-5 apart), so their trainings, same seed and data, pushed models 0.026 mIoU apart."""
    pixels = tf.cast(pixels, tf.float64)
    count = tft.sum(tf.ones_like(pixels), reduce_instance_dims=False)
    mean = tft.sum(pixels, reduce_instance_dims=False) / tf.maximum(count, 1.0)
    variance = tft.sum(tf.square(pixels), reduce_instance_dims=False) / tf.maximum(count, 1.0) - tf.square(mean)
    return tf.cast(mean, tf.float32), tf.cast(tf.sqrt(tf.maximum(variance, 0.0)), tf.float32)


def preprocessing_fn(inputs, custom_config=None):
    """tf.Transform entry point (referenced as ``segbalance.trainer.preprocessing.preprocessing_fn``)."""
    from segbalance.trainer.training_config import TrainerConfig

    config, _ = TrainerConfig.from_custom_config(custom_config)  # the same typed config as run_fn's
    image_size = list(config.training.image_size)
    outputs = {}
    image = decode_resize_image(dense_column(inputs[codec.IMAGE_KEY], b""), image_size)
    if config.training.backbone:  # 0..255: the model applies the backbone family's own preprocess_input
        outputs[IMAGE] = image
    else:
        mean, std = channel_statistics(tf.reshape(image, [-1, 3]))
        outputs[IMAGE] = (image - mean) / tf.maximum(std, 1.0)
    if codec.MASK_KEY in inputs:
        outputs[MASK] = decode_resize_mask(dense_column(inputs[codec.MASK_KEY], b""), image_size,
                                           config.classes.ignore_index)
    if codec.SOURCE_ID_KEY in inputs:
        outputs[SOURCE_ID] = dense_column(inputs[codec.SOURCE_ID_KEY], b"")
    return outputs
