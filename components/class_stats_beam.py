"""Class statistics with plain Apache Beam (no TFX): the core of ClassStatsGen and `segbalance stats`.

Per record: decode the mask, count pixels per class (int64, exact), and derive three class
sets: *present* (pixels in the mask), *labelled* (``image/segmentation/class/labeled``; when
absent the ``labeled_policy`` decides: ``complete`` = every class, ``partial`` = only the
present classes; background and present classes always count as labelled) and *missing*
(= not labelled: its absence from the mask proves nothing). Records that cannot be used
downstream are quarantined with a reason (``kind`` + text) and counted; the totals stay exact
for the rest. A record is usable when it parses as a ``tf.train.Example``; has a mask that
is a single-channel PNG (8-bit grey or palette, 16-bit grey) with ids ``0..C-1`` or the
ignore index; its ``labeled`` ids are in ``0..C-1``; and it has an image (PNG, JPEG, GIF or
BMP: what Transform's ``tf.io.decode_image`` reads) of the mask's size.

Every split given is checked; the class counts come from the *counted* splits only
(``count_splits``, ClassStatsGen: ``train``). With ``examples_dir`` the job also writes the
records that passed, unchanged, as gzip TFRecords ``examples_dir/Split-<split>/data_tfrecord-*.gz``
(the layout of ExampleGen): ClassStatsGen's ``examples`` output, which Transform, SegTrainer
and SegEvaluator read, so no quarantined record reaches them.

No TensorFlow in the job (workers import Beam, NumPy, Pillow, pyarrow and tfx_bsl only):
files are read by a small TFRecord reader (``iter_tfrecords``; a truncated or non-TFRecord
file is an error naming the file), records go in batches (``beam.BatchElements``) through
tfx_bsl's C++ ``tf.train.Example`` decoder, then PNG decode + ``np.bincount`` per mask. The
driver uses Beam's ``FileSystems`` (local, gs://, ...), so ``segbalance stats`` does not
import TensorFlow either.

Global counts go through one CombineFn (memory O(C^2) per worker, for the co-occurrence
matrix); per-image rows stream to Parquet shards, after a second step that adds
``suspect_missing``: classes absent from an image although, over the data, they appear in
at least ``suspect_threshold`` of the images that contain each of this image's present
foreground classes. That hints at annotation gaps even without a ``labeled`` field.

Output directory layout (the ClassStats artifact): ``class_stats.json``,
``per_image-*.parquet`` (counted splits), ``uncounted_per_image-*.parquet`` (the same rows for the
splits only checked, e.g. eval, when there are any: validation reads their labelled sets),
``quarantine.jsonl`` (see ``trainer/class_stats_io.py``).
"""
from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
import re
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from segbalance.contract import (DEFAULT_IGNORE_INDEX, GROUP_KEY, IMAGE_KEY, LABELED_KEY, MASK_KEY,  # noqa: F401
                                 MAX_CLASSES, PER_IMAGE_PREFIX, QUARANTINE_FILE, SOURCE_ID_KEY, STATS_FILE,
                                 UNCOUNTED_PER_IMAGE_PREFIX, UserError, class_names_problem, ignore_index_problem)
from segbalance.components.component_config import StatsConfig
from segbalance.components.tfrecord_file import TFRecordFileError, iter_tfrecords  # noqa: F401
from segbalance.trainer import class_weights
from segbalance.trainer.example_codec import TURNED_FORMATS, exif_orientation, shown_size
from segbalance.trainer.png_chunks import png_damage
from segbalance.trainer.remote_files import is_remote

SCHEMA_VERSION = 1
QUARANTINE = "quarantine"
KEPT = "kept"
BAD_FILE = "bad_file"
TOTALS_FILE = "_totals.json"
EXAMPLES_PREFIX = "data_tfrecord"  # ExampleGen's file prefix inside Split-<name>/
WEIGHT_OPTION_KEYS = class_weights.WEIGHT_OPTION_KEYS  # the options StatsOptions.weight_options accepts
# Image formats tf.io.decode_image (Transform's preprocessing_fn) decodes.
IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "GIF", "BMP")  # MPO: a phone's multi-picture JPEG (TF decodes the first)
# PIL modes of a single-channel class-id PNG ("P": palette indices are the ids, VOC style).
MASK_MODES = ("L",)  # what Transform's tf.io.decode_png(channels=1, uint8) reads as the ids themselves
# masks it reads as other values: palette indices become grey levels of the colours, 16-bit values are scaled
TF_MISREAD_MASK_MODES = {"P": "palette (indexed-colour)", "I": "16-bit", "I;16": "16-bit", "I;16B": "16-bit"}
MODE_NAMES = {"1": "1-bit", "LA": "grey + alpha", "PA": "palette + alpha", "RGB": "RGB", "RGBA": "RGBA",
              "CMYK": "CMYK", "F": "float"}
# Quarantine kinds (the ``kind`` of a quarantine row; counted per split in class_stats.json).
KINDS = ("not_an_example", "no_mask", "bad_mask", "mask_ids", "labeled_ids", "no_image", "bad_image",
         "size_mismatch")
MAX_BATCH = 64  # records per tfx_bsl decode call
LOG = logging.getLogger("segbalance.class_stats")  # per-record lines (quarantine, progress)


class ClassStatsError(UserError):
    """The input is unusable (no files, a corrupt file, no records, or every record quarantined)."""


@dataclass
class StatsOptions:
    num_classes: int
    class_names: Optional[List[str]] = None
    ignore_index: int = DEFAULT_IGNORE_INDEX
    labeled_policy: str = StatsConfig.labeled_policy
    suspect_threshold: float = StatsConfig.suspect_threshold
    weight_options: Dict = field(default_factory=dict)  # passed to compute_class_weights

    def __post_init__(self):
        if not 1 <= self.num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must be between 1 and {MAX_CLASSES} (masks are 8-bit), got {self.num_classes}")
        problem = ignore_index_problem(self.num_classes, self.ignore_index)
        if problem:
            raise ValueError(f"ignore_index {problem}")
        if self.labeled_policy not in ("complete", "partial"):
            raise ValueError(f"labeled_policy must be 'complete' or 'partial', got {self.labeled_policy!r}")
        if self.class_names is None:
            self.class_names = [f"class_{i}" for i in range(self.num_classes)]
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for num_classes={self.num_classes}")
        problem = class_names_problem(self.class_names)  # the pipeline's classes.names refuses these too
        if problem:
            raise ValueError(problem)
        if not 0.0 < self.suspect_threshold <= 1.0:
            raise ValueError(f"suspect_threshold must be in (0, 1], got {self.suspect_threshold}")
        class_weights.check_weight_options(self.weight_options)


# --------------------------------------------------------------------------- reading files
class ReadTFRecordFileFn(beam.DoFn):
    """File path -> its serialized records (``.gz`` files are gunzipped); an unreadable or
    corrupt file goes to the ``bad_file`` output as ``{"path", "reason"}`` (the driver
    turns it into one error naming the file) instead of failing the job with a hex dump."""

    def process(self, path: str):
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as handle:
                for record in iter_tfrecords(handle):
                    yield record
        except TFRecordFileError as exc:
            fix = ("gzip-compressed TFRecords must end in .gz" if not path.endswith(".gz") else
                   "replace it with a complete copy") if "not a TFRecord" in str(exc) else \
                "replace it with a complete copy (or remove it)"
            yield beam.pvalue.TaggedOutput(BAD_FILE, {"path": path, "reason": str(exc), "fix": fix})
        except (OSError, EOFError, zlib.error) as exc:  # gzip: not gzip data, or cut short
            if path.endswith(".gz") and isinstance(exc, EOFError):
                reason, fix = f"gzip data cut short ({exc})", "replace it with a complete copy (or remove it)"
            elif path.endswith(".gz"):
                reason, fix = (f"not gzip data ({exc})", "a .gz name means gzip-compressed TFRecords: rename the "
                                                         "file if it is not compressed, or remove it")
            else:
                reason, fix = f"cannot be read ({exc})", "check the file"
            yield beam.pvalue.TaggedOutput(BAD_FILE, {"path": path, "reason": reason, "fix": fix})


def match_files(pattern: str) -> List[str]:
    """Sorted files matching ``pattern`` (local or any Beam filesystem); [] when none."""
    try:
        result = FileSystems.match([pattern])[0]
    except Exception:  # BeamIOError: nothing matched / the folder does not exist
        return []
    return sorted(m.path for m in result.metadata_list if not _is_dir(m.path))


def match_input_files(pattern: str) -> List[str]:
    """The input files of a job: a local pattern (no ``://``) is expanded with Python's glob
    (sorted; wildcards may be in folder parts, e.g. ``out*/data-*``, which Beam's local match
    does not expand; hidden names such as the ``.segbalance.json`` marker are not matched by a
    wildcard); a remote pattern goes to Beam's filesystems (:func:`match_files`)."""
    if is_remote(pattern):
        return match_files(pattern)
    return sorted(p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p))


def escaped_folder_hint(pattern: str) -> str:
    """When nothing matches a local ``pattern`` whose folder part is an existing folder named with a pattern
    character ('o[1]/data-*': '[1]' matches the letter 1, not the name), the pattern that reads its files; else ""
    (QA 97: "check the path" named no cause)."""
    folder, name = os.path.split(pattern)
    if is_remote(pattern) or not glob.has_magic(folder) or not os.path.isdir(folder):
        return ""
    escaped = os.path.join(glob.escape(folder), name)
    if not match_input_files(escaped):
        return ""
    return f"; the folder {folder} exists and its name holds a pattern character: give {escaped} ('[' as '[[]')"


def _is_dir(path: str) -> bool:
    return not is_remote(path) and os.path.isdir(path)


# --------------------------------------------------------------------------- per record
@dataclass
class RecordFields:
    """The fields of one record the checks need (bytes not yet decoded; None when absent)."""

    source_id: str
    image_bytes: Optional[bytes]
    mask_bytes: Optional[bytes]
    labeled: Optional[List[int]]
    group: Optional[str] = None  # image/group_id: the scene / scan / tile the image was cut from


def _decoder_schema(keys=None) -> bytes:
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = schema_pb2.Schema()
    kinds = {IMAGE_KEY: schema_pb2.BYTES, SOURCE_ID_KEY: schema_pb2.BYTES, MASK_KEY: schema_pb2.BYTES,
             LABELED_KEY: schema_pb2.INT, GROUP_KEY: schema_pb2.BYTES}
    for name in keys or (IMAGE_KEY, SOURCE_ID_KEY, MASK_KEY, LABELED_KEY):
        feature = schema.feature.add()
        feature.name, feature.type = name, kinds[name]
    return schema.SerializeToString()


@dataclass
class Undecodable:
    """A record the Example decoder refused: its error text (``str``) and its source id when readable."""

    error: str
    source_id: Optional[str] = None

    def __str__(self) -> str:
        return self.error


class RecordDecoder:
    """tfx_bsl's batch decoder of serialized ``tf.train.Example`` into Arrow, limited to our 4 keys.

    One C++ call per batch; when it fails (a record of the batch is not an Example, or has a key
    of the wrong type), each record again alone. tfx_bsl's decoder is unusable after an error
    (every later call fails with "FinishFeature() must be called before DecodeFeature()"), so a
    fresh one replaces it after each failure.
    """

    def __init__(self):
        self._decoder = self._new()
        self._group_decoder = self._new((GROUP_KEY,))
        self._id_decoder = self._new((SOURCE_ID_KEY,))

    @staticmethod
    def _new(keys=None):
        from tfx_bsl.coders import example_coder

        return example_coder.ExamplesToRecordBatchDecoder(_decoder_schema(keys))

    def _decode_batch(self, serialized: List[bytes]):
        try:
            return self._decoder.DecodeBatch(serialized)
        except Exception:
            self._decoder = self._new()
            raise

    def _groups(self, serialized: List[bytes]) -> List[Optional[str]]:
        """``image/group_id`` of each record, None where it is absent or not bytes: a decoder of its own, so
        a group id of another type (an int64 in a user's records) costs the record its group, not the record
        (a group is optional; with ``data.split_by: group`` the span check refuses such records first)."""
        try:
            batch = self._group_decoder.DecodeBatch(serialized)
        except Exception:  # noqa: BLE001
            self._group_decoder = self._new((GROUP_KEY,))
            return [None] * len(serialized) if len(serialized) == 1 else \
                [self._groups([s])[0] for s in serialized]
        values = [_first(v) for v in batch.column(0).to_pylist()]
        return [v.decode("utf-8", "replace") if v is not None else None for v in values]

    def _source_id(self, record: bytes) -> Optional[str]:
        """``image/source_id`` of a record the full decoder refused (another key of the wrong type), read by
        a decoder of its own; None when it is not readable either (QA 64: such a record was named by the
        hash of its bytes although its id was there)."""
        try:
            value = _first(self._id_decoder.DecodeBatch([record]).column(0).to_pylist()[0])
        except Exception:  # noqa: BLE001
            self._id_decoder = self._new((SOURCE_ID_KEY,))
            return None
        return value.decode("utf-8", "replace") if value is not None else None

    def decode(self, serialized: Sequence[bytes]) -> List[object]:
        """One ``RecordFields`` per record, or an ``Undecodable`` (the decoder's error text) for a record it
        cannot decode."""
        try:
            batch = self._decode_batch(list(serialized))
        except Exception as exc:  # noqa: BLE001 (tfx_bsl raises RuntimeError with the status text)
            if len(serialized) == 1:
                return [Undecodable(str(exc), self._source_id(serialized[0]))]
            return [self.decode([s])[0] for s in serialized]
        columns = {name: batch.column(i).to_pylist() for i, name in enumerate(batch.schema.names)}
        out = []
        for image, sid, mask, labeled, group in zip(columns[IMAGE_KEY], columns[SOURCE_ID_KEY], columns[MASK_KEY],
                                                    columns[LABELED_KEY], self._groups(list(serialized))):
            sid = _first(sid)
            out.append(RecordFields(source_id=sid.decode("utf-8", "replace") if sid is not None else "",
                                    image_bytes=_first(image), mask_bytes=_first(mask), labeled=labeled,
                                    group=group))
        return out


def make_decoder() -> RecordDecoder:
    return RecordDecoder()


def _first(values):
    return values[0] if values else None


def decode_records(decoder: RecordDecoder, serialized: Sequence[bytes]) -> List[object]:
    """``decoder.decode(serialized)``."""
    return decoder.decode(serialized)


def plain_reason(exc: Exception) -> str:
    """``exc``'s text without the object reprs PIL puts in (``<_io.BytesIO object at 0x7f...>``: the address
    differs from run to run, so two runs over the same data wrote different quarantine files, QA 64)."""
    return re.sub(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>", "", str(exc)) or type(exc).__name__


def _sha1_name(serialized: bytes) -> str:
    return f"sha1:{hashlib.sha1(serialized).hexdigest()[:16]}"


class Quarantined(ValueError):
    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


def decode_mask_counts(data: bytes):
    """(int64 count of every id value, (H, W)) of a greyscale PNG mask, counted by Pillow's C
    histogram (exact: one bin per value, no [H, W] int64 copy); Quarantined (kind ``bad_mask``)
    otherwise. Palette and 16-bit PNGs are quarantined too: Transform decodes masks with
    ``tf.io.decode_png(channels=1, dtype=uint8)``, which turns a palette into grey levels of its
    colours and scales 16-bit values to 8 bits, so the ids counted here would not be the ids the
    model is trained on (`segbalance ingest` writes 8-bit grey from either)."""
    from PIL import Image

    if data[:8] != b"\x89PNG\r\n\x1a\n":
        what = "JPEG" if data[:3] == b"\xff\xd8\xff" else "not PNG"
        raise Quarantined("bad_mask", f"mask is {what}: masks must be lossless single-channel PNG")
    try:
        with Image.open(io.BytesIO(data)) as img:
            mode = img.mode
            if mode in TF_MISREAD_MASK_MODES:
                raise Quarantined("bad_mask", f"mask is a {TF_MISREAD_MASK_MODES[mode]} PNG: TensorFlow decodes it to "
                                              f"other values than its class ids; write the ids as an 8-bit greyscale "
                                              f"PNG (segbalance ingest converts such masks)")
            if mode not in MASK_MODES:
                raise Quarantined("bad_mask", f"mask is a {MODE_NAMES.get(mode, mode)} PNG (mode {mode}); expected "
                                              f"a single-channel [H, W] PNG of class ids (8-bit grey)")
            bits = data[24] if len(data) > 25 and data[12:16] == b"IHDR" else 8  # IHDR's bit depth
            if bits != 8:  # Pillow and TensorFlow both stretch 2- and 4-bit grey to 0..255 (id 3 of 2 bits: 255)
                raise Quarantined("bad_mask", f"mask is a {bits}-bit greyscale PNG: TensorFlow scales its values to "
                                              f"8 bits (id 1 of a {bits}-bit mask reads as {255 // (2 ** bits - 1)}); "
                                              f"write the ids as an 8-bit greyscale PNG")
            # as libpng reads it: Pillow's verify misses a cut IEND (QA 80 H1), its decode a short pixel stream (QA 82)
            damage = png_damage(data, pixels=True)
            if damage:
                raise Quarantined("bad_mask", f"mask is a damaged PNG ({damage}): TensorFlow cannot decode it")
            orientation = exif_orientation(img)
            if orientation != 1:  # the trainer turns the image by its tag, never the mask (QA 80 M2)
                raise Quarantined("bad_mask", f"mask has an EXIF orientation tag ({orientation}), which the trainer "
                                              f"does not apply to masks: store it as shown, without the tag "
                                              f"(segbalance ingest turns such masks)")
            img.verify()  # every chunk's CRC and the end chunk: TensorFlow refuses a damaged PNG that Pillow reads
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return np.asarray(img.histogram(), np.int64), (img.size[1], img.size[0])
    except Quarantined:
        raise
    except Exception as exc:  # PIL raises many types for corrupt data
        raise Quarantined("bad_mask", f"cannot decode mask: {plain_reason(exc)}") from exc


def check_bmp(data: bytes, mode: str) -> None:
    """Quarantined unless TensorFlow's BMP decoder reads ``data`` as Pillow does. It takes the bits per
    pixel as the channel count and ignores palette and compression: 1- and 4-bit BMPs fail in the
    trainer ("Number of channels ... was 0") and an 8-bit palette BMP decodes to its indices as grey
    levels (measured, session 26). Kept: 24- and 32-bit, and 8-bit with a grey palette (Pillow: mode L)."""
    header = int.from_bytes(data[14:18], "little") if len(data) >= 18 else 0
    if header < 40:  # an OS/2 1.x header (12 bytes): bit depth and compression lie elsewhere
        raise Quarantined("bad_image", f"image is a BMP with a {header}-byte (OS/2) header, which TensorFlow "
                                       f"does not read; convert it to PNG (segbalance ingest does)")
    bits = int.from_bytes(data[28:30], "little") if len(data) >= 34 else 0
    compression = int.from_bytes(data[30:34], "little") if len(data) >= 34 else 0
    if (bits in (24, 32) and compression in (0, 3)) or (bits == 8 and mode == "L" and compression == 0):
        return
    what = "a palette" if bits == 8 and mode != "L" else \
        f"{bits} bit{'s' * (bits != 1)} per pixel" if compression in (0, 3) else "run-length compression"
    raise Quarantined("bad_image", f"image is a BMP with {what}: TensorFlow decodes only uncompressed 24- and "
                                   f"32-bit and 8-bit grey BMPs as they are; convert it to PNG "
                                   f"(segbalance ingest does)")


def check_image(data: Optional[bytes], mask_shape) -> None:
    """Quarantined unless ``data`` is an image Transform decodes, of the mask's height and width.

    PNG: the header, every chunk's CRC and their order (``png_damage``, ``verify``; no decompression); other
    formats: a full decode.
    """
    from PIL import Image

    if not data:
        raise Quarantined("no_image", f"no image: the record lacks {IMAGE_KEY}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, mode = img.format, img.mode
            # the trainer turns a JPEG or PNG as shown (trainer/exif_orientation.py): the mask must fit that;
            # read from the header, before verify / load
            height, width = shown_size(img, turn=fmt in TURNED_FORMATS)
            turned = (height, width) != img.size[::-1]
            if fmt == "PNG":
                # the chunks as libpng reads them (QA 80 H1), not the pixel stream: inflating a 512x512 RGB image
                # took 3.6 ms, about four times a record's statistics (ingest checks it: QA 82 M1)
                damage = png_damage(data)
                if damage:
                    raise Quarantined("bad_image", f"image is a damaged PNG ({damage}): TensorFlow cannot decode it")
                img.verify()
            else:
                img.load()
    except Quarantined:
        raise
    except Exception as exc:  # noqa: BLE001
        reason = "not an image format PIL reads" if type(exc).__name__ == "UnidentifiedImageError" else str(exc)
        raise Quarantined("bad_image", f"cannot decode image: {reason}") from exc
    if fmt not in IMAGE_FORMATS:
        raise Quarantined("bad_image", f"image is {fmt}; the trainer decodes only {', '.join(IMAGE_FORMATS)}")
    if fmt == "BMP":
        check_bmp(data, mode)
    if (height, width) != tuple(mask_shape):
        shown = " as shown (its EXIF orientation turns it by 90 degrees)" if turned else ""
        raise Quarantined("size_mismatch", f"image is {height}x{width}{shown} but its mask is "
                                           f"{mask_shape[0]}x{mask_shape[1]}")


def check_record(fields, serialized: bytes, split: str, options: "StatsOptions"):
    """The per-image row (dict), or a tagged quarantine dict for an unusable record.

    ``fields``: a ``RecordFields``, or the decoder's error text for a record that is not an Example.
    """
    if not isinstance(fields, RecordFields):
        return beam.pvalue.TaggedOutput(QUARANTINE, {
            "source_id": getattr(fields, "source_id", None) or _sha1_name(serialized), "split": split,
            "kind": "not_an_example",
            "reason": f"not a tf.train.Example: {fields}"})
    name = fields.source_id or _sha1_name(serialized)
    try:
        if fields.mask_bytes is None:
            raise Quarantined("no_mask", f"no mask: the record lacks {MASK_KEY}")
        value_counts, mask_shape = decode_mask_counts(fields.mask_bytes)
        try:
            counts, ignored = class_counts(value_counts, options.num_classes, options.ignore_index)
        except ValueError as exc:
            raise Quarantined("mask_ids", str(exc)) from exc
        present = [int(c) for c in np.flatnonzero(counts)]
        if fields.labeled is not None:
            out_of_range = [c for c in fields.labeled if not 0 <= c < options.num_classes]
            if out_of_range:
                raise Quarantined("labeled_ids", f"labeled lists class ids {out_of_range} outside "
                                                 f"[0, {options.num_classes})")
            labeled = set(fields.labeled)
        elif options.labeled_policy == "complete":
            labeled = set(range(options.num_classes))
        else:
            labeled = set(present)
        labeled |= set(present) | {0}
        check_image(fields.image_bytes, mask_shape)
    except Quarantined as exc:
        return beam.pvalue.TaggedOutput(QUARANTINE, {"source_id": name, "split": split, "kind": exc.kind,
                                                     "reason": str(exc)})
    return {
        "source_id": name,
        "split": split,
        "present": present,
        "labeled": sorted(labeled),
        "missing": sorted(set(range(options.num_classes)) - labeled),
        "pixel_counts": counts.astype(np.int64).tolist(),
        "ignored_pixels": ignored,
        "group_id": fields.group,
        "content_crc32": content_crc32(fields),
    }


def content_crc32(fields: "RecordFields") -> int:
    """CRC-32 of a record's image and mask bytes and, where it lists them, its labelled class ids: the drift
    gate tells a file delivered again from another file under the same name with the same counts (two
    all-background crops numbered alike), and a delivery ingested again with its labeled.json from the one it
    blocked without (QA 92 M1: it stayed blocked as the same images). A record without the field keeps the
    CRC of its bytes alone (as before session 36)."""
    crc = zlib.crc32(fields.mask_bytes, zlib.crc32(fields.image_bytes or b""))
    if fields.labeled is None:
        return crc
    return zlib.crc32(json.dumps(sorted(set(int(c) for c in fields.labeled))).encode(), crc)


def image_row(serialized: bytes, split: str, options: StatsOptions, decoder=None):
    """``check_record`` of one serialized record (tests, tools; the job decodes in batches)."""
    return check_record(decode_records(decoder or make_decoder(), [serialized])[0], serialized, split, options)


def count_mask(mask: np.ndarray, num_classes: int, ignore_index: int):
    """(int64 counts [C], ignored pixel count) of a class-id mask; ValueError on ids outside
    ``0..C-1`` that are not ``ignore_index``.

    One ``np.bincount`` over the raw ids (256 bins for a uint8 mask) instead of masking out
    the ignore pixels first: a single pass, no boolean copy of the image.
    """
    flat = mask.ravel()
    if flat.size and np.issubdtype(flat.dtype, np.signedinteger) and flat.min() < 0:
        raise ValueError(f"mask has negative class ids (min {int(flat.min())})")
    return class_counts(np.bincount(flat).astype(np.int64), num_classes, ignore_index)


def class_counts(value_counts: np.ndarray, num_classes: int, ignore_index: int):
    """``count_mask`` from the count of every id value (index = id): (int64 counts [C], ignored)."""
    size = max(num_classes, ignore_index + 1, len(value_counts))
    all_counts = np.zeros(size, np.int64)
    all_counts[:len(value_counts)] = value_counts
    ignored = int(all_counts[ignore_index]) if ignore_index >= 0 else 0
    extra = all_counts[num_classes:].copy()
    if ignore_index >= num_classes:
        extra[ignore_index - num_classes] = 0
    if extra.any():
        bad = (np.flatnonzero(extra) + num_classes).tolist()
        raise ValueError(f"mask has class ids {bad[:10]} >= num_classes={num_classes} that are not "
                         f"ignore_index={ignore_index}")
    counts = all_counts[:num_classes].copy()
    if 0 <= ignore_index < num_classes:  # an in-range ignore id is not a class here
        counts[ignore_index] = 0
    return counts, ignored


class BatchStatsFn(beam.DoFn):
    """A batch of serialized records -> per-image rows (main output), quarantine rows and, with
    ``keep``, the serialized records that passed (``kept``). Beam counters; a progress line
    every ``log_every`` records."""

    def __init__(self, split: str, options: StatsOptions, keep: bool = False, log_every: int = 1000):
        self.split = split
        self.options = options
        self.keep = keep
        self.log_every = log_every
        self.records = beam.metrics.Metrics.counter("class_stats", "records")
        self.quarantined = beam.metrics.Metrics.counter("class_stats", "quarantined")
        self._seen = 0
        self._decoder = None

    def setup(self):
        self._decoder = make_decoder()

    def process(self, batch: List[bytes]):
        if self._decoder is None:
            self.setup()
        for serialized, fields in zip(batch, decode_records(self._decoder, batch)):
            out = check_record(fields, serialized, self.split, self.options)
            self.records.inc()
            if isinstance(out, beam.pvalue.TaggedOutput):
                self.quarantined.inc()
                LOG.warning("ClassStats: quarantined %s (split %s): %s", out.value["source_id"], self.split,
                            out.value["reason"])
            elif self.keep:
                yield beam.pvalue.TaggedOutput(KEPT, serialized)
            self._seen += 1
            if self._seen % self.log_every == 0:
                LOG.info("ClassStats: %d records of split %s read by this worker", self._seen, self.split)
            yield out


# --------------------------------------------------------------------------- global counts
class ClassCountsCombineFn(beam.CombineFn):
    """Exact int64 sums over image rows; the accumulator is a dict of NumPy arrays."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def create_accumulator(self):
        c = self.num_classes
        return {"pixel_counts": np.zeros(c, np.int64), "image_counts": np.zeros(c, np.int64),
                "present_image_pixels": np.zeros(c, np.int64),
                "missing_image_counts": np.zeros(c, np.int64), "cooccurrence": np.zeros((c, c), np.int64),
                "ignored_pixels": 0, "num_records": 0, "images_with_missing": 0}

    def add_input(self, acc, row):
        acc["pixel_counts"] += np.asarray(row["pixel_counts"], np.int64)
        present = np.asarray(row["present"], np.int64)
        acc["image_counts"][present] += 1
        acc["present_image_pixels"][present] += int(sum(row["pixel_counts"]))
        acc["cooccurrence"][np.ix_(present, present)] += 1
        acc["missing_image_counts"][np.asarray(row["missing"], np.int64)] += 1
        acc["images_with_missing"] += int(bool(row["missing"]))
        acc["ignored_pixels"] += row["ignored_pixels"]
        acc["num_records"] += 1
        return acc

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for acc in accumulators:
            for key in merged:
                merged[key] = merged[key] + acc[key]
        return merged

    def extract_output(self, acc):
        return {k: (v.tolist() if isinstance(v, np.ndarray) else int(v)) for k, v in acc.items()}


class SplitCountsCombineFn(beam.CombineFn):
    """``(split, kind)`` events (kind None = kept) -> {split: {read, kept, quarantined, quarantined_by_kind}}."""

    def __init__(self, splits: Sequence[str]):
        self.splits = list(splits)

    def create_accumulator(self):
        return {}

    def add_input(self, acc, event):
        acc[tuple(event)] = acc.get(tuple(event), 0) + 1
        return acc

    def merge_accumulators(self, accumulators):
        merged = {}
        for acc in accumulators:
            for key, n in acc.items():
                merged[key] = merged.get(key, 0) + n
        return merged

    def extract_output(self, acc):
        out = {}
        for split in self.splits:
            kinds = {kind: n for (s, kind), n in sorted(acc.items(), key=lambda kv: str(kv[0]))
                     if s == split and kind is not None}
            kept = acc.get((split, None), 0)
            out[split] = {"read": kept + sum(kinds.values()), "kept": kept, "quarantined": sum(kinds.values()),
                          "quarantined_by_kind": kinds}
        return out


def suspect_missing(row: dict, totals: dict, threshold: float) -> dict:
    """Adds ``suspect_missing``: absent classes that co-occur with every present foreground class."""
    foreground = [c for c in row["present"] if c != 0]
    suspects = []
    if foreground:
        cooc = totals["cooccurrence"]
        image_counts = totals["image_counts"]
        for c in range(len(image_counts)):
            if c == 0 or c in row["present"]:
                continue
            rates = [cooc[p][c] / image_counts[p] for p in foreground if image_counts[p]]
            if rates and min(rates) >= threshold:
                suspects.append(c)
    return {**row, "suspect_missing": suspects}


def _parquet_schema():
    import pyarrow as pa

    ints = pa.list_(pa.int32())
    return pa.schema([("source_id", pa.string()), ("split", pa.string()), ("present", ints), ("labeled", ints),
                      ("missing", ints), ("suspect_missing", ints), ("pixel_counts", pa.list_(pa.int64())),
                      ("ignored_pixels", pa.int64()), ("group_id", pa.string()), ("content_crc32", pa.int64())])


# --------------------------------------------------------------------------- pipeline
def build(p: beam.Pipeline, file_patterns: Dict[str, str], options: StatsOptions, output_dir: str,
          count_splits: Optional[Sequence[str]] = None, examples_dir: Optional[str] = None,
          files: Optional[Dict[str, List[str]]] = None):
    """Adds the statistics transforms to ``p``; results land in ``output_dir`` when it runs.

    ``count_splits``: the splits whose records the class counts cover (default: all).
    ``examples_dir``: also write each split's records that passed to ``Split-<split>/``.
    ``files``: {split: matched files} (default: matched here from ``file_patterns``).
    """
    splits = sorted(file_patterns)
    count_splits = set(splits if count_splits is None else count_splits)
    rows, uncounted, quarantined, bad_files, events = [], [], [], [], []
    for split in splits:
        paths = files[split] if files is not None else match_input_files(file_patterns[split])
        read = (
            p
            | f"Files[{split}]" >> beam.Create(paths)
            | f"SpreadFiles[{split}]" >> beam.Reshuffle()
            | f"Read[{split}]" >> beam.ParDo(ReadTFRecordFileFn()).with_outputs(BAD_FILE, main="records")
        )
        bad_files.append(read[BAD_FILE])
        outputs = (
            read.records
            | f"Batch[{split}]" >> beam.BatchElements(min_batch_size=1, max_batch_size=MAX_BATCH)
            | f"Rows[{split}]" >> beam.ParDo(BatchStatsFn(split, options, keep=examples_dir is not None))
            .with_outputs(QUARANTINE, KEPT, main="rows")
        )
        quarantined.append(outputs[QUARANTINE])
        events.append(outputs.rows | f"KeptEvents[{split}]" >> beam.Map(lambda row: (row["split"], None)))
        (rows if split in count_splits else uncounted).append(outputs.rows)
        if examples_dir is not None:
            _ = outputs[KEPT] | f"WriteExamples[{split}]" >> beam.io.WriteToTFRecord(
                os.path.join(examples_dir, f"Split-{split}", EXAMPLES_PREFIX), file_name_suffix=".gz",
                compression_type=CompressionTypes.GZIP)
    rows = rows | "FlattenRows" >> beam.Flatten()
    quarantined = quarantined | "FlattenQuarantine" >> beam.Flatten()
    events.append(quarantined | "QuarantineEvents" >> beam.Map(lambda q: (q["split"], q["kind"])))
    split_counts = (events | "FlattenEvents" >> beam.Flatten()
                    | "SplitCounts" >> beam.CombineGlobally(SplitCountsCombineFn(splits)))
    bad_files = (bad_files | "FlattenBadFiles" >> beam.Flatten()
                 | "BadFiles" >> beam.combiners.ToList())
    totals = rows | "Totals" >> beam.CombineGlobally(ClassCountsCombineFn(options.num_classes))
    per_image = (
        (rows if not uncounted else (rows, *uncounted) | "FlattenAllRows" >> beam.Flatten())
        | "SuspectMissing" >> beam.Map(suspect_missing, beam.pvalue.AsSingleton(totals), options.suspect_threshold)
    )
    if uncounted:  # rows of the checked-only splits: their labelled sets, in no count
        per_image, per_image_uncounted = per_image | "CountedOrNot" >> beam.Partition(
            lambda row, _, counted: 0 if row["split"] in counted else 1, 2, count_splits)
        _ = per_image_uncounted | "WriteUncountedPerImage" >> beam.io.WriteToParquet(
            os.path.join(output_dir, UNCOUNTED_PER_IMAGE_PREFIX), _parquet_schema(), file_name_suffix=".parquet")
    _ = per_image | "WritePerImage" >> beam.io.WriteToParquet(os.path.join(output_dir, PER_IMAGE_PREFIX),
                                                              _parquet_schema(), file_name_suffix=".parquet")
    (
        quarantined
        | "QuarantineJson" >> beam.Map(json.dumps, sort_keys=True)
        | "WriteQuarantine" >> beam.io.WriteToText(os.path.join(output_dir, QUARANTINE_FILE), shard_name_template="")
    )
    (
        totals
        | "AddSplitCounts" >> beam.Map(
            lambda t, counts, bad: {**t, "split_counts": counts, "bad_files": sorted(bad, key=lambda b: b["path"])},
            beam.pvalue.AsSingleton(split_counts), beam.pvalue.AsSingleton(bad_files))
        | "TotalsJson" >> beam.Map(json.dumps)
        | "WriteTotals" >> beam.io.WriteToText(os.path.join(output_dir, TOTALS_FILE[:-len(".json")]),
                                               file_name_suffix=".json", shard_name_template="")
    )


def _effective_number_beta(beta, pixel_counts):
    """The beta the effective-number weights used (the given one, else 1 - 1/N)."""
    if beta is not None:
        return float(beta)
    return class_weights.default_beta(pixel_counts) if sum(pixel_counts) else None


def _read_text(path: str) -> str:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read().decode("utf-8")


def _write_text(path: str, text: str) -> None:
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(text.encode("utf-8"))


def _delete(paths: Iterable[str]) -> None:
    paths = [p for p in paths if FileSystems.exists(p)]
    if paths:
        FileSystems.delete(paths)


def finalize(output_dir: str, options: StatsOptions, inputs: Iterable[str], splits: List[str],
             checked_splits: Optional[List[str]] = None, checked_inputs: Optional[List[str]] = None) -> dict:
    """Turns the Beam totals into ``class_stats.json`` (adds weights); returns its content.

    ``splits``/``inputs``: the counted splits and their file patterns; ``checked_splits``/
    ``checked_inputs``: every split checked and its pattern (default: the counted ones).
    """
    totals_path = FileSystems.join(output_dir, TOTALS_FILE)
    totals = json.loads(_read_text(totals_path))
    _delete([totals_path])
    inputs = list(inputs)
    where = ", ".join(inputs)
    if totals["bad_files"]:
        bad = totals["bad_files"]
        remove_previous_output(output_dir)  # nothing half-written stays behind
        more = f" (and {len(bad) - 1} more files)" if len(bad) > 1 else ""
        raise ClassStatsError(f"{bad[0]['path']}: {bad[0]['reason']}{more}: {bad[0]['fix']}")
    split_counts = totals["split_counts"]
    quarantined = sum(split_counts[s]["quarantined"] for s in splits)
    if totals["num_records"] == 0:
        if quarantined:
            # the reasons in the message itself: a failed pipeline component's output folder is removed
            kinds: Dict[str, int] = {}
            for s in splits:
                for kind, n in split_counts[s]["quarantined_by_kind"].items():
                    kinds[kind] = kinds.get(kind, 0) + n
            first = _first_quarantine_row(output_dir)
            example = f"; first: {first['source_id']}: {first['reason']}" if first else ""
            raise ClassStatsError(
                f"all {quarantined} records in {where} were quarantined "
                f"({', '.join(f'{k}: {n}' for k, n in sorted(kinds.items()))}){example}; the list is in "
                f"{FileSystems.join(output_dir, QUARANTINE_FILE)}")
        raise ClassStatsError(f"no records in {where}: check the path / file pattern")
    pixel_counts = totals["pixel_counts"]
    zero = class_weights.zero_count_classes(pixel_counts)
    stats = {
        "schema_version": SCHEMA_VERSION,
        "class_names": list(options.class_names),
        "num_classes": options.num_classes,
        "ignore_index": options.ignore_index,
        "labeled_policy": options.labeled_policy,
        "splits": splits,
        "inputs": list(inputs),
        "pixel_counts": pixel_counts,
        "image_counts": totals["image_counts"],
        # labelled pixels of the images that contain each class (median-frequency weights)
        "present_image_pixels": totals["present_image_pixels"],
        "ignored_pixels": totals["ignored_pixels"],
        "total_pixels": int(sum(pixel_counts)) + totals["ignored_pixels"],
        "num_records": totals["num_records"],  # records counted (kept records of the counted splits)
        "quarantined_records": quarantined,  # quarantined records of the counted splits
        # every checked split: records read, kept (passed on downstream), quarantined (per kind)
        "checked_splits": list(checked_splits or splits),
        "checked_inputs": list(checked_inputs or inputs),
        "split_counts": split_counts,
        "zero_count_classes": zero,
        "zero_count_note": (f"classes {zero} have no pixels: their weights are set to "
                            f"{options.weight_options.get('zero_count_weight', 0.0)} (see trainer/class_weights.py)"
                            if zero else ""),
        "weights": class_weights.all_scheme_weights(pixel_counts, **options.weight_options,
                                                    present_image_pixels=totals["present_image_pixels"]),
        "weight_options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.weight_options.items()},
        "effective_number_beta": _effective_number_beta(options.weight_options.get("beta"), pixel_counts),
        "cooccurrence": totals["cooccurrence"],
        "missing_image_counts": totals["missing_image_counts"],
        "images_with_missing": totals["images_with_missing"],
        "suspect_threshold": options.suspect_threshold,
        "options": asdict(options),
    }
    _write_text(FileSystems.join(output_dir, STATS_FILE), json.dumps(stats, indent=1))
    return stats


def _own_files(output_dir: str) -> List[str]:
    """This layout's files in ``output_dir`` (what the job writes there)."""
    found = [f for prefix in (PER_IMAGE_PREFIX, UNCOUNTED_PER_IMAGE_PREFIX)
             for f in match_files(FileSystems.join(output_dir, f"{prefix}-*.parquet"))]
    found += [p for p in (FileSystems.join(output_dir, f) for f in (STATS_FILE, QUARANTINE_FILE, TOTALS_FILE))
              if FileSystems.exists(p)]
    return found


def _first_quarantine_row(output_dir: str) -> Optional[dict]:
    """The first row of the quarantine list written into ``output_dir``, or None."""
    path = FileSystems.join(output_dir, QUARANTINE_FILE)
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        line = f.readline().decode("utf-8", errors="replace").strip()
    try:
        return json.loads(line) if line else None
    except ValueError:
        return None


def remove_previous_output(output_dir: str) -> None:
    """Deletes the files of an earlier run in ``output_dir`` (only this layout's files), so a
    rerun with a different number of Parquet shards cannot leave stale rows behind."""
    stale = _own_files(output_dir)
    _delete(stale)
    if stale:
        logging.info("ClassStats: removed %d files of an earlier run in %s", len(stale), output_dir)


def _beam_temp_dirs(folders: Iterable[str]) -> set:
    """Beam file sinks' temporary folders (``beam-temp-*``) in ``folders``."""
    found = set()
    for folder in folders:
        found.update(match_files(FileSystems.join(folder, "beam-temp-*")))
        if not is_remote(folder) and os.path.isdir(folder):
            found.update(os.path.join(folder, n) for n in os.listdir(folder) if n.startswith("beam-temp-"))
    return found


def _remove_tree(path: str) -> None:
    if not is_remote(path) and os.path.isdir(path):
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    else:
        _delete(match_files(path.rstrip("/") + "/*"))


def run_class_stats(file_patterns: Dict[str, str], output_dir: str, options: StatsOptions,
                    pipeline: Optional[beam.Pipeline] = None, beam_args: Optional[List[str]] = None,
                    count_splits: Optional[Sequence[str]] = None, examples_dir: Optional[str] = None) -> dict:
    """Run the Beam job over ``{split: file pattern}`` and write the artifact into ``output_dir``.

    Every split is checked; ``count_splits`` (default: all) are counted; with ``examples_dir``
    the records that passed are written there per split (see the module docstring).
    """
    files = {}
    for split, pattern in sorted(file_patterns.items()):
        files[split] = match_input_files(pattern)
        if not files[split]:
            raise ClassStatsError(f"no files match {pattern} (split {split!r}): check the path"
                                  f"{escaped_folder_hint(pattern)}")
    count_splits = sorted(file_patterns) if count_splits is None else sorted(count_splits)
    unknown = [s for s in count_splits if s not in file_patterns]
    if unknown:
        raise ValueError(f"count_splits {unknown} not among the splits {sorted(file_patterns)}")
    created = not FileSystems.exists(output_dir)
    if created:
        FileSystems.mkdirs(output_dir)
    remove_previous_output(output_dir)
    if pipeline is None:
        from segbalance.components.local_runner import make_pipeline

        pipeline = make_pipeline(beam_args)
    logging.info("ClassStats: checking %s, counting %s -> %s", file_patterns, count_splits, output_dir)
    write_dirs = [output_dir] + ([FileSystems.join(examples_dir, f"Split-{s}") for s in file_patterns]
                                 if examples_dir else [])
    temp_before = _beam_temp_dirs(write_dirs)
    start = time.monotonic()
    build(pipeline, file_patterns, options, output_dir, count_splits, examples_dir, files)
    try:
        result = pipeline.run()
        result.wait_until_finish()
        counters = _counters(result)
        logging.info("ClassStats: Beam job done in %.1f s (%s)", time.monotonic() - start,
                     ", ".join(f"{k} {v}" for k, v in counters.items()) or "no counters from this runner")
        inputs = [file_patterns[s] for s in sorted(file_patterns) if s in count_splits]
        return finalize(output_dir, options, inputs, count_splits, sorted(file_patterns),
                        [file_patterns[s] for s in sorted(file_patterns)])
    except BaseException:
        for temp in sorted(_beam_temp_dirs(write_dirs) - temp_before):  # the sinks' leftovers of this run
            _remove_tree(temp)
        if created and not is_remote(output_dir) and os.path.isdir(output_dir) and not os.listdir(output_dir):
            os.rmdir(output_dir)  # a folder this call made and left empty
        raise


def _counters(result) -> Dict[str, int]:
    """The ``class_stats`` Beam counters (records, quarantined), where the runner reports them."""
    try:
        from apache_beam.metrics.metric import MetricsFilter

        query = result.metrics().query(MetricsFilter().with_namespace("class_stats"))
        return {c.key.metric.name: int(c.committed or c.attempted or 0) for c in query["counters"]}
    except Exception:  # some runners do not support metrics queries
        return {}
