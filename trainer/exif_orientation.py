"""EXIF orientation inside the TensorFlow graph: images turned the way viewers show them.

A phone stores a portrait photo as landscape pixels plus an EXIF tag (0x0112, values 1-8) that
tells viewers, annotation tools and ``segbalance ingest`` (PIL's ``ImageOps.exif_transpose``)
to turn it; ``tf.io.decode_image`` ignores the tag. The masks are drawn on the turned image, so
training records hold upright images, and the serving model must turn a raw phone JPEG the same
way, or it predicts on a sideways image and returns a mask of the wrong shape.

``orientation(data)`` reads the tag from a JPEG's ``Exif`` segment with string ops only (no
Python at serving time, so it is part of the SavedModel); ``upright(image, k)`` applies it as
PIL does; ``upright_size(size, k)`` is the size after turning.
"""
from __future__ import annotations

import tensorflow as tf

from segbalance.trainer.example_codec import EXIF_ORIENTATION as ORIENTATION_TAG

EXIF_HEADER = b"Exif\x00\x00"
HEAD_BYTES = 65536 + 4  # an APP1 segment is at most 64 KiB; EXIF must sit in the first one
MAX_ENTRIES = 64  # IFD0 entries searched for the tag (cameras write a dozen or two)


def _uints(data, positions, length: int, little_endian):
    """Unsigned big- or little-endian integers (int64, the shape of ``positions``) of ``length`` (2 or
    4) bytes at each position of ``data``; bytes past its end read as 0 (a cut or malformed block is
    not an error)."""
    positions = tf.minimum(tf.cast(positions, tf.int64), tf.cast(tf.strings.length(data), tf.int64))
    padded = data + b"\x00" * length  # every slice then has ``length`` bytes
    slices = tf.strings.substr(tf.fill(tf.shape(positions), padded), positions, tf.fill(tf.shape(positions),
                                                                                        tf.constant(length, tf.int64)))
    raw = tf.cast(tf.io.decode_raw(slices, tf.uint8), tf.int64)  # [..., length]
    raw = tf.cond(little_endian, lambda: tf.reverse(raw, [-1]), lambda: raw)
    return tf.reduce_sum(raw * tf.constant([256 ** (length - 1 - i) for i in range(length)], tf.int64), axis=-1)


def orientation(data) -> tf.Tensor:
    """The EXIF orientation (int32, 1-8) of encoded image bytes; 1 for a non-JPEG, a JPEG without
    EXIF or without the tag, and for a value outside 1-8."""
    def from_jpeg():
        head = tf.strings.substr(data, 0, HEAD_BYTES)
        parts = tf.strings.split(head, sep=EXIF_HEADER, maxsplit=1)

        def from_tiff():
            tiff = parts[1]  # the TIFF structure; its offsets count from here
            header = tf.strings.substr(tiff, 0, 4)
            little = tf.equal(header, b"II*\x00")  # byte order and the TIFF magic number 42
            valid = tf.logical_or(little, tf.equal(header, b"MM\x00*"))
            ifd = tf.minimum(_uints(tiff, 4, 4, little), tf.cast(tf.strings.length(tiff), tf.int64))
            block = tf.strings.substr(tiff, ifd, 2 + 12 * MAX_ENTRIES)  # IFD0 alone: small slices below
            count = tf.minimum(_uints(block, 0, 2, little), MAX_ENTRIES)
            starts = 2 + 12 * tf.range(MAX_ENTRIES, dtype=tf.int64)
            tags = _uints(block, starts, 2, little)
            values = _uints(block, starts + 8, 2, little)
            found = tf.logical_and(tf.equal(tags, ORIENTATION_TAG), tf.range(MAX_ENTRIES, dtype=tf.int64) < count)
            value = tf.reduce_max(tf.where(found, values, tf.zeros_like(values)))  # 0: not found
            ok = tf.logical_and(valid, tf.logical_and(value >= 1, value <= 8))
            return tf.cast(tf.where(ok, value, 1), tf.int32)

        return tf.cond(tf.size(parts) > 1, from_tiff, lambda: tf.constant(1, tf.int32))

    return tf.cond(tf.image.is_jpeg(data), from_jpeg, lambda: tf.constant(1, tf.int32))


def upright(image, k) -> tf.Tensor:
    """[H, W, C] turned as PIL's ``exif_transpose`` turns orientation ``k`` (1-8; 1: unchanged).

    Each orientation is an optional transpose (5-8) then flips: left-right for 2, 3, 6, 7 and
    up-down for 3, 4, 7, 8 (6 = turn clockwise, 8 = counter-clockwise, 3 and 7 = half turns).
    Built from ``tf.cond`` and a ``tf.reverse`` on computed axes: tf.Transform cannot trace a
    ``tf.switch_case``."""
    k = tf.clip_by_value(tf.cast(k, tf.int32), 1, 8)
    image = tf.cond(k >= 5, lambda: tf.transpose(image, [1, 0, 2]), lambda: image)
    left_right = tf.reduce_any(tf.equal(k, [2, 3, 6, 7]))
    up_down = tf.reduce_any(tf.equal(k, [3, 4, 7, 8]))
    return tf.reverse(image, tf.boolean_mask(tf.constant([1, 0]), tf.stack([left_right, up_down])))


def upright_size(size, k) -> tf.Tensor:
    """[height, width] after ``upright`` (orientations 5-8 swap them)."""
    return tf.cond(k >= 5, lambda: tf.reverse(size, [0]), lambda: size)
