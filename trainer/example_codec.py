"""The data contract: `tf.train.Example` records with TF Model Garden segmentation keys.

One record per image:

- ``image/encoded``: PNG or JPEG bytes of the image (RGB or grey)
- ``image/format``: ``b"png"`` or ``b"jpeg"``
- ``image/height``, ``image/width``: int64
- ``image/source_id``: bytes, unique id of the image (the file stem at ingest)
- ``image/segmentation/class/encoded``: single-channel PNG of class ids ``0..C-1``,
  ``ignore_index`` (default 255) for "no label"
- ``image/segmentation/class/format``: ``b"png"``
- ``image/segmentation/class/labeled`` (optional): int64 list of the classes the
  annotator labelled in this image. Absent means "not recorded"; the pipeline's
  ``labeled_policy`` decides what that means (see ``components/class_stats_beam.py``).
- ``image/group_id`` (optional): bytes, the scene, scan or tile the image was cut from
  (``segbalance ingest --groups``); ``data.split_by: group`` keeps each group in one split.

This module is pure NumPy + Pillow + the Example proto; it is shared by ingest, the Beam
statistics and the tests.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from segbalance.contract import (  # noqa: F401  (re-exported: the codec speaks the contract)
    DEFAULT_IGNORE_INDEX, GROUP_KEY, HEIGHT_KEY, IMAGE_FORMAT_KEY, IMAGE_KEY, LABELED_KEY, MASK_FORMAT_KEY, MASK_KEY,
    SOURCE_ID_KEY, WIDTH_KEY,
)


class DecodeError(ValueError):
    """Raised when image or mask bytes cannot be decoded."""


EXIF_ORIENTATION = 0x0112  # 1 = upright; 2..8 = mirrored / turned (viewers apply it, TF's decoders do not)


TURNED_FORMATS = ("JPEG", "MPO", "PNG")  # PIL's names of the formats the trainer's graph turns


def exif_orientation(image: Image.Image) -> int:
    """A PIL image's EXIF orientation tag, 1 when it has none, read from the header as the trainer's
    graph reads it (``trainer/exif_orientation.py``): for a JPEG (or MPO) its Exif segment, for a PNG
    its eXIf chunk before the pixel data, where the PNG specification puts it (PIL's ``getexif``
    would also take an XMP ``tiff:Orientation``, which viewers and the graph ignore, and decode a
    whole PNG to look for a later chunk); other formats by ``getexif``. Call it before ``load()``. As in the
    graph, 1 also for a tag outside 1-8 and for an EXIF block that cannot be read (QA 82: a mask with tag 0 was
    quarantined, and one with a malformed block refused, though the trainer reads both as they are)."""
    try:
        if image.format not in TURNED_FORMATS:
            value = image.getexif().get(EXIF_ORIENTATION, 1)
        elif not image.info.get("exif"):
            return 1
        else:
            exif = Image.Exif()
            exif.load(image.info["exif"])
            value = exif.get(EXIF_ORIENTATION, 1)
        return int(value) if int(value) in range(1, 9) else 1
    except Exception:  # noqa: BLE001 (Pillow raises several types for a malformed block)
        return 1


def shown_size(image: Image.Image, turn: bool = True) -> tuple:
    """(height, width) of a PIL image as shown: an EXIF orientation of 5-8 turns it by 90 degrees
    (``turn=False``: as stored, for a format the trainer does not turn)."""
    width, height = image.size
    return (width, height) if turn and exif_orientation(image) in (5, 6, 7, 8) else (height, width)


def record_image_size(data: bytes) -> tuple:
    """(height, width) of a record's encoded image as the trainer and the serving model see it: a JPEG
    or PNG turned by its EXIF orientation (``trainer/exif_orientation.py``), other formats as stored.
    Reads the header only. Raises PIL's errors for bytes it cannot open."""
    with Image.open(io.BytesIO(data)) as image:
        return shown_size(image, turn=image.format in TURNED_FORMATS)


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 array [H, W] or [H, W, 3]."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"encode_png expects uint8, got {array.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode_array(data: bytes, what: str = "image") -> np.ndarray:
    """Decode PNG/JPEG bytes to a uint8 array; raises DecodeError with a reason."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            # "P" keeps palette indices (VOC-style masks store class ids that way).
            if img.mode not in ("P", "L", "RGB", "I", "I;16", "I;16B"):
                img = img.convert("RGB")
            array = np.asarray(img)
    except Exception as exc:  # PIL raises many types for corrupt data
        # UnidentifiedImageError's text names the BytesIO object ("<_io.BytesIO object at 0x..>")
        reason = "not an image format PIL reads" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise DecodeError(f"cannot decode {what}: {reason}") from exc
    return array


def image_format(data: bytes) -> bytes:
    """b'png' or b'jpeg' from the magic number (b'unknown' otherwise)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"png"
    if data[:3] == b"\xff\xd8\xff":
        return b"jpeg"
    return b"unknown"


def build_example(
    image_bytes: bytes,
    mask_bytes: bytes,
    source_id: str,
    height: int,
    width: int,
    labeled: Optional[Sequence[int]] = None,
    group: Optional[str] = None,
):
    """A `tf.train.Example` following the data contract."""
    from tensorflow.core.example import example_pb2, feature_pb2

    def _bytes(value: bytes):
        return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[value]))

    def _ints(values):
        return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=list(values)))

    feature = {
        IMAGE_KEY: _bytes(image_bytes),
        IMAGE_FORMAT_KEY: _bytes(image_format(image_bytes)),
        HEIGHT_KEY: _ints([int(height)]),
        WIDTH_KEY: _ints([int(width)]),
        SOURCE_ID_KEY: _bytes(source_id.encode("utf-8")),
        MASK_KEY: _bytes(mask_bytes),
        MASK_FORMAT_KEY: _bytes(b"png"),
    }
    if labeled is not None:
        feature[LABELED_KEY] = _ints(sorted(int(c) for c in labeled))
    if group is not None:
        feature[GROUP_KEY] = _bytes(group.encode("utf-8"))
    return example_pb2.Example(features=feature_pb2.Features(feature=feature))


@dataclass
class ParsedRecord:
    """The raw fields of one record (bytes not yet decoded)."""

    source_id: str
    image_bytes: Optional[bytes]
    mask_bytes: Optional[bytes]
    height: Optional[int]
    width: Optional[int]
    labeled: Optional[list]  # None when the key is absent
    group: Optional[str] = None  # image/group_id; None when absent


def parse_record(serialized: bytes) -> ParsedRecord:
    """Parse a serialized Example into its raw fields; missing keys become None."""
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example.FromString(serialized)
    feats = example.features.feature

    def _first_bytes(key):
        if key in feats and feats[key].bytes_list.value:
            return feats[key].bytes_list.value[0]
        return None

    def _first_int(key):
        if key in feats and feats[key].int64_list.value:
            return int(feats[key].int64_list.value[0])
        return None

    source = _first_bytes(SOURCE_ID_KEY)
    group = _first_bytes(GROUP_KEY)
    labeled = list(feats[LABELED_KEY].int64_list.value) if LABELED_KEY in feats else None
    return ParsedRecord(
        source_id=source.decode("utf-8", "replace") if source is not None else "",
        image_bytes=_first_bytes(IMAGE_KEY),
        mask_bytes=_first_bytes(MASK_KEY),
        height=_first_int(HEIGHT_KEY),
        width=_first_int(WIDTH_KEY),
        labeled=labeled,
        group=group.decode("utf-8", "replace") if group is not None else None,
    )
