"""EXIF orientation inside the TensorFlow graph: images turned the way viewers show them.

A phone stores a portrait photo as landscape pixels plus an EXIF tag (0x0112, values 1-8) that
tells viewers, annotation tools and ``segbalance ingest`` (PIL's ``ImageOps.exif_transpose``)
to turn it; ``tf.io.decode_image`` ignores the tag. The masks are drawn on the turned image, so
training records hold upright images, and the serving model must turn a raw phone JPEG the same
way, or it predicts on a sideways image and returns a mask of the wrong shape.

``orientation(data)`` reads the tag with string ops only (no Python at serving time, so it is part
of the SavedModel) where PIL finds it: a JPEG's first ``APP1`` segment that starts ``Exif\\0\\0``
(the marker segments before the scan are walked, so a large ICC profile before it is no obstacle
and ``Exif`` bytes in a comment are not taken for it) and a PNG's ``eXIf`` chunk before the pixel
data (where the PNG specification puts it; ``example_codec.exif_orientation`` reads the same for
ingest and the statistics). ``upright(image, k)`` applies it as PIL does; ``upright_size(size, k)``
is the size after turning.
"""
from __future__ import annotations

import tensorflow as tf

from segbalance.trainer.example_codec import EXIF_ORIENTATION as ORIENTATION_TAG

EXIF_HEADER = b"Exif\x00\x00"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_ENTRIES = 64  # IFD0 entries searched for the tag (cameras write a dozen or two)
# JPEG marker segments (or stray bytes) / PNG chunks walked before giving up (orientation 1): cameras
# write a few dozen before the scan (an ICC profile takes at most 255); a crafted file of tens of
# thousands of segments would otherwise cost seconds per image
MAX_SEGMENTS = 1024
JPEG_SOS, JPEG_EOI, JPEG_APP1 = 0xDA, 0xD9, 0xE1


def _uints(data, positions, length: int, little_endian):
    """Unsigned big- or little-endian integers (int64, the shape of ``positions``) of ``length`` (1, 2
    or 4) bytes at each position of ``data``; bytes past its end read as 0 (a cut or malformed block
    is not an error). The slices are cut from ``data`` (broadcast, not copied: it may be a whole
    image) and then padded."""
    positions = tf.minimum(tf.cast(positions, tf.int64), tf.cast(tf.strings.length(data), tf.int64))
    pieces = tf.strings.substr(data, positions, tf.fill(tf.shape(positions), tf.constant(length, tf.int64)))
    pieces = tf.strings.substr(pieces + b"\x00" * length, 0, length)  # every slice has ``length`` bytes
    raw = tf.cast(tf.io.decode_raw(pieces, tf.uint8), tf.int64)  # [..., length]
    raw = tf.cond(little_endian, lambda: tf.reverse(raw, [-1]), lambda: raw)
    return tf.reduce_sum(raw * tf.constant([256 ** (length - 1 - i) for i in range(length)], tf.int64), axis=-1)


def _big(data, position, length: int):
    return _uints(data, position, length, tf.constant(False))


def _walk(data, first, step):
    """(start, length) of the TIFF block found by walking segments from byte ``first``: ``step(pos)``
    gives (next pos, stop, found, block start, block length); (-1, 0) when none is found."""
    size = tf.cast(tf.strings.length(data), tf.int64)

    def more(pos, start, length, done):
        return tf.logical_and(tf.logical_not(done), pos + 8 <= size)

    def body(pos, start, length, done):
        following, stop, found, block_start, block_length = step(pos)
        return (following, tf.where(found, block_start, start), tf.where(found, block_length, length),
                tf.logical_or(stop, found))

    init = (tf.constant(first, tf.int64), tf.constant(-1, tf.int64), tf.constant(0, tf.int64), tf.constant(False))
    _, start, length, _ = tf.while_loop(more, body, init, maximum_iterations=MAX_SEGMENTS)
    return start, length


def _jpeg_step(data):
    """One step over a JPEG's markers as PIL's reader takes them: a byte that is not 0xFF and a fill
    0xFF are skipped, FF00 and the standalone markers (TEM, RST0-7, SOI) have no length, the scan
    (SOS) or the end (EOI) stops the walk, and every other marker has a segment of its own length."""
    def step(pos):
        marker = _big(data, pos + 1, 1)
        stray = tf.not_equal(_big(data, pos, 1), 0xFF)
        fill = tf.equal(marker, 0xFF)
        bare = tf.logical_or(tf.equal(marker, 0x00), tf.equal(marker, 0x01))
        bare = tf.logical_or(bare, tf.logical_and(marker >= 0xD0, marker <= 0xD8))
        stop = tf.logical_and(tf.logical_not(stray), tf.logical_or(tf.equal(marker, JPEG_SOS),
                                                                    tf.equal(marker, JPEG_EOI)))
        segment = _big(data, pos + 2, 2)  # counts its own two length bytes
        exif = tf.logical_and(tf.equal(marker, JPEG_APP1),
                              tf.equal(tf.strings.substr(data, pos + 4, len(EXIF_HEADER)), EXIF_HEADER))
        found = tf.logical_and(tf.logical_not(stray), exif)
        following = tf.where(tf.logical_or(stray, fill), pos + 1,
                             tf.where(bare, pos + 2, pos + 2 + tf.maximum(segment, 2)))
        return following, stop, found, pos + 4 + len(EXIF_HEADER), segment - 2 - len(EXIF_HEADER)
    return step


def _png_step(data):
    def step(pos):
        length = _big(data, pos, 4)
        kind = tf.strings.substr(data, pos + 4, 4)
        # eXIf sits before the pixel data (PNG specification): the walk ends at the first IDAT, so a large
        # PNG of many small IDAT chunks costs a few chunk headers, not thousands
        stop = tf.logical_or(tf.equal(kind, b"IDAT"), tf.equal(kind, b"IEND"))
        found = tf.equal(kind, b"eXIf")
        return pos + 12 + length, stop, found, pos + 8, length  # length, type, data, CRC
    return step


def _from_tiff(tiff) -> tf.Tensor:
    """The orientation tag (int32; 1 when absent or outside 1-8) of an EXIF TIFF block."""
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


@tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
def orientation(data) -> tf.Tensor:
    """The EXIF orientation (int32, 1-8) of encoded image bytes (a scalar string): from a JPEG's Exif
    APP1 segment or a PNG's eXIf chunk; 1 for other formats, without EXIF or the tag, and for a value
    outside 1-8.

    A ``tf.function`` traced once per process: Transform traces ``preprocessing_fn`` about ten times
    and the serving export once more, and building this graph cost about 0.8 s of Python each time
    (0.1 s as a call of the traced function); ingest's eager calls run the traced graph too."""
    def found_in(first, step):
        def read():
            start, length = _walk(data, first, step(data))
            return tf.cond(start >= 0, lambda: _from_tiff(tf.strings.substr(data, start, tf.maximum(length, 0))),
                           lambda: tf.constant(1, tf.int32))
        return read

    is_png = tf.equal(tf.strings.substr(data, 0, len(PNG_MAGIC)), PNG_MAGIC)
    return tf.cond(tf.image.is_jpeg(data), found_in(2, _jpeg_step),
                   lambda: tf.cond(is_png, found_in(len(PNG_MAGIC), _png_step), lambda: tf.constant(1, tf.int32)))


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
