"""`segbalance ingest IMAGES_DIR MASKS_DIR --output DIR`: image/mask folders -> TFRecords.

Pairs files by stem (``a.jpg`` + ``a.png``), checks every pair and writes
`tf.train.Example` records with the Model Garden keys (``trainer/example_codec.py``):

- images (PNG/JPEG kept byte-for-byte; other formats re-encoded to PNG);
- masks as single-channel PNG of class ids: greyscale masks as they are, palette
  ("P" mode) masks by palette index, RGB colour masks mapped to ids with ``--palette``
  (with ``--palette``, palette masks are mapped by their pixels' colours too);
- ``image/segmentation/class/labeled`` from ``--labeled FILE.json``
  (``{source_id: [class ids]}``) for the ids it lists; a stem there that matches no image
  file is a warning (counted in the report), an error with ``--strict``.
- ``image/group_id`` from ``--groups FILE.json`` (``{source_id: group}``: the scene, scan or
  tile each image was cut from; ``data.split_by: group`` then keeps a group's images in one
  split, so validation crops do not overlap training crops). With ``--groups`` every image
  needs a group (else exit 2, nothing written); a stem there without image is a warning, an
  error with ``--strict``.

Output (``TARGET`` = ``DIR/Span-N`` with ``--span N``, else ``DIR``)::

    TARGET/data-00000-of-0000K.tfrecord   K = --shards, written in parallel when K > 1
    TARGET/ingest_report.json            counts, written records, bad pairs with reasons

Masks must be lossless: PNG (or BMP/TIFF). JPEG data in a mask (a ``.jpg`` mask, or JPEG
bytes under a ``.png`` name) is a bad pair: JPEG changes class ids at region edges. 1-bit
masks are read as ids 0/1; masks with an alpha channel (LA, PA, RGBA) are bad pairs, named
for what they are.

Output safety: TARGET is never, contains no, and is not inside IMAGES_DIR or MASKS_DIR, and
``--overwrite`` only replaces a folder an earlier ingest wrote (its marker ``.segbalance.json``
or ``ingest_report.json``, and nothing but ``data-*`` shards and the report); any other
non-empty TARGET, or a file, is refused before anything is written. Everything is written to
a hidden temporary sibling folder (``.segbalance-ingest-tmp-PID``, shards named
``shard-*.partial`` until complete, so no ``Span-*`` or ``*/data-*`` glob matches it) and renamed into place at
the end, so a crash never leaves a half-written span; the next ingest into the same folder
removes what a killed one left. Bad pairs are reported (console + report) and skipped; the exit
code is 0 when at least one record was written. With ``--strict`` any bad pair (or
``--labeled`` stem without image) stops the command (exit 2) and nothing is written.

When nothing is written (every pair bad, or ``--strict`` and a problem) the report goes
beside TARGET instead, as ``ingest_report.<TARGET name>.failed.json`` (e.g.
``DIR/ingest_report.Span-3.failed.json``): TARGET is not created, so no empty span appears
and the next run needs no ``--overwrite``; the error message gives the path. A later
successful ingest into the same TARGET deletes it.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from segbalance.contract import UserError
from segbalance.pipeline import output_guard
from segbalance.trainer import example_codec as codec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Mask files are listed with every image suffix, so a .jpg mask is a bad pair that says why
# (masks must be lossless) instead of an image "without mask".
MASK_SUFFIXES = IMAGE_SUFFIXES
LOSSLESS_MASK_FORMATS = ("PNG", "BMP", "TIFF")  # PIL format names
REPORT_NAME = "ingest_report.json"
OWNED = ("data-*-of-*.tfrecord", REPORT_NAME)  # what ingest writes into TARGET (and the marker)
TMP_PREFIX = ".segbalance-ingest-tmp-"  # hidden, no "Span-" and no "data-": no data glob matches
OLD_PREFIX = ".segbalance-ingest-old-"
PARTIAL_SUFFIX = ".partial"  # shards in the temporary folder: shard-I-of-K.partial -> data-I-of-K.tfrecord
PROGRESS_MIN_FILES = 100
MAX_CLASSES = 256  # masks are 8-bit PNG


class IngestError(UserError):
    """A problem with the whole input (not one pair): the command stops with exit code 2."""


class LabeledRangeError(IngestError):
    """labeled.json lists class ids outside [0, num_classes) (too few class names, or a typo)."""


@dataclass
class IngestOptions:
    num_classes: Optional[int] = None
    ignore_index: int = codec.DEFAULT_IGNORE_INDEX
    palette: Optional[Dict[Tuple[int, int, int], int]] = None
    labeled: Optional[Dict[str, List[int]]] = None
    groups: Optional[Dict[str, str]] = None  # source_id -> group (image/group_id)


@dataclass
class IngestResult:
    target: Path
    written: List[str] = field(default_factory=list)
    bad: List[dict] = field(default_factory=list)
    num_pairs: int = 0
    labeled_unmatched: List[str] = field(default_factory=list)  # --labeled stems with no image file
    groups_unmatched: List[str] = field(default_factory=list)  # --groups stems with no image file
    num_groups: int = 0  # groups among the written records (0: no --groups)

    def report(self) -> dict:
        return {
            "output": str(self.target),
            "num_pairs_found": self.num_pairs,
            "num_written": len(self.written),
            "num_bad": len(self.bad),
            "num_labeled_unmatched": len(self.labeled_unmatched),
            "num_groups": self.num_groups,
            "num_groups_unmatched": len(self.groups_unmatched),
            "bad": self.bad,
            "written": self.written,
            "labeled_unmatched": self.labeled_unmatched,
            "groups_unmatched": self.groups_unmatched,
        }

    def failed_report(self, error: str) -> dict:
        """The report when nothing was written: the pairs that were good are listed as not written."""
        report = self.report()
        report.update(error=error, num_written=0, written=[], good_not_written=self.written)
        return report


def failed_report_path(target: Path) -> Path:
    """Where the report goes when nothing is written: beside TARGET (never inside it, so no empty
    span is created), under a name that does not start with ``Span-`` (not taken for a span)."""
    return target.parent / f"ingest_report.{target.name}.failed.json"


def _sample(names: Sequence[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


# --------------------------------------------------------------------------- inputs
def _files_by_stem(folder: Path, suffixes: Sequence[str], what: str) -> Dict[str, Path]:
    if not folder.is_dir():
        raise IngestError(f"{what} folder {folder} does not exist or is not a folder")
    found: Dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes:
            if path.stem in found:
                raise IngestError(f"two {what} files share the stem {path.stem!r}: {found[path.stem].name}, {path.name}")
            found[path.stem] = path
    return found


def _read_json(path: Path, what: str):
    """JSON from ``path``; IngestError naming the file and, for a syntax error, line and column."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IngestError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise IngestError(f"{what} {path} is a folder, not a JSON file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise IngestError(f"{what} {path} cannot be read: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise IngestError(f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno}, "
                          f"column {exc.colno}") from exc


def load_palette(path: os.PathLike) -> Dict[Tuple[int, int, int], int]:
    """A palette file: JSON list of [r, g, b] indexed by class id, or {"id": [r, g, b]}."""
    raw = _read_json(Path(path), "--palette")
    try:
        items = enumerate(raw) if isinstance(raw, list) else ((int(k), v) for k, v in raw.items())
        palette = {tuple(int(x) for x in rgb): int(class_id) for class_id, rgb in items}
    except Exception as exc:
        raise IngestError(f"--palette {path}: cannot read it as a JSON list of [r, g, b] per class ({exc})") from exc
    if any(len(rgb) != 3 for rgb in palette):
        raise IngestError(f"--palette {path}: every colour must have 3 components")
    return palette


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_object(path: Path, what: str, expected: str) -> dict:
    """The JSON object in ``path``; IngestError naming the file when it is not an object."""
    raw = _read_json(path, what)
    if not isinstance(raw, dict):
        raise IngestError(f"{what} {path}: the top level must be an object, got a JSON {_json_type(raw)}; {expected}")
    return raw


def load_labeled(path: os.PathLike, num_classes: Optional[int]) -> Dict[str, List[int]]:
    """``{source_id: [class ids]}``: every value a JSON list of integers (no strings, floats or
    booleans: ``"13"`` is not ``[1, 3]``), ids in ``[0, num_classes)``. IngestError names the file,
    the key and what is wrong; ids out of range raise LabeledRangeError."""
    path = Path(path)
    expected = 'expected {"source_id": [class ids], ...}, e.g. {"img1": [0, 2]}'
    raw = _json_object(path, "labeled file", expected)
    for key, value in raw.items():
        if not isinstance(value, list):
            raise IngestError(f"labeled file {path}: key {key!r} is a JSON {_json_type(value)} ({value!r}), "
                              f"not a list of class ids; {expected}")
        wrong = [v for v in value if not _is_int(v)]
        if wrong:
            raise IngestError(f"labeled file {path}: key {key!r} lists {wrong[0]!r} ({_json_type(wrong[0])}); "
                              f"class ids must be integers; {expected}")
        if any(v < 0 for v in value):
            raise IngestError(f"labeled file {path}: key {key!r} lists negative class ids {[v for v in value if v < 0]}")
    labeled = {str(k): list(v) for k, v in raw.items()}
    if num_classes is not None:
        bad = {k: [c for c in v if not 0 <= c < num_classes] for k, v in labeled.items()}
        bad = {k: v for k, v in bad.items() if v}
        if bad:
            sample = ", ".join(f"{k}: {v}" for k, v in list(bad.items())[:5])
            raise LabeledRangeError(f"labeled file {path}: class ids outside [0, {num_classes}) for {len(bad)} "
                                    f"entries ({sample})")
    return labeled


def load_groups(path: os.PathLike) -> Dict[str, str]:
    """``{source_id: group}``: each group a non-empty string or an integer (kept as its text).
    IngestError names the file, the key and what is wrong."""
    path = Path(path)
    expected = 'expected {"source_id": "group", ...}, e.g. {"tile3_crop07": "tile3"}'
    raw = _json_object(path, "groups file", expected)
    for key, value in raw.items():
        if not ((isinstance(value, str) and value.strip()) or _is_int(value)):
            raise IngestError(f"groups file {path}: key {key!r} is a JSON {_json_type(value)} ({value!r}), not a "
                              f"group name; {expected}")
    return {str(k): str(v) for k, v in raw.items()}


def _json_type(value) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)


def infer_num_classes(images_dir: Path) -> Optional[int]:
    """C from a ``classes.json`` beside the image folder (as ``sample-data`` writes); None without one."""
    classes = Path(images_dir).parent / "classes.json"
    if not classes.exists():
        return None
    raw = _read_json(classes, "classes file")
    names = raw.get("class_names") if isinstance(raw, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise IngestError(f"classes file {classes}: expected {{\"class_names\": [\"background\", ...]}} with at "
                          f"least one name (strings); fix it, or pass --num-classes")
    if len(names) > MAX_CLASSES:
        raise IngestError(f"classes file {classes}: {len(names)} class names; masks are 8-bit, at most {MAX_CLASSES}")
    return len(names)


# --------------------------------------------------------------------------- one pair
# PIL modes of masks that cannot hold class ids, and what they are (for the message).
_MASK_MODE_NAMES = {
    "LA": "greyscale with an alpha channel (LA)",
    "PA": "palette with an alpha channel (PA)",
    "La": "greyscale with premultiplied alpha (La)",
    "RGBa": "RGB with premultiplied alpha (RGBa)",
    "CMYK": "CMYK colour",
    "YCbCr": "YCbCr colour",
    "LAB": "L*a*b* colour",
    "HSV": "HSV colour",
    "F": "32-bit floating point",
}


def read_mask(data: bytes, name: str, colours: bool = False) -> np.ndarray:
    """Decode mask bytes to ids [H, W] (or colours [H, W, 3] for --palette); ValueError says what the
    file is when it cannot be a mask: lossy (JPEG) data, an alpha channel, an unreadable file.
    ``colours`` (a --palette was given): a palette ("P") PNG gives its pixels' colours, which --palette
    maps, not its palette indices (whose order need not be the --palette's)."""
    if codec.image_format(data) == b"jpeg":
        under = f" under a {Path(name).suffix} name" if Path(name).suffix.lower() not in (".jpg", ".jpeg") else ""
        raise ValueError(f"mask {name} is JPEG data{under}: JPEG is lossy and changes class ids at region edges; "
                         f"masks must be lossless PNG")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            fmt, mode = img.format, img.mode
            if fmt not in LOSSLESS_MASK_FORMATS:
                raise ValueError(f"mask {name} is {fmt} data; masks must be lossless PNG")
            if fmt == "TIFF" and "jpeg" in str(img.info.get("compression", "")).lower():
                raise ValueError(f"mask {name} is a JPEG-compressed TIFF (lossy); masks must be lossless PNG")
            if mode in _MASK_MODE_NAMES:
                raise ValueError(f"mask {name} is {_MASK_MODE_NAMES[mode]}; class-id masks must be single-channel "
                                 f"(greyscale, palette or 1-bit PNG), or RGB colours with --palette")
            if mode == "1":  # 1-bit: ids 0 and 1
                return np.asarray(img).astype(np.uint8)
            if mode == "P" and colours:
                return np.asarray(img.convert("RGB"))
            if mode == "RGBA":
                alpha = np.asarray(img.getchannel("A"))
                if (alpha != 255).any():
                    raise ValueError(f"mask {name} is RGBA with {int((alpha != 255).sum())} (partly) transparent "
                                     f"pixels; class-id masks must be single-channel or opaque RGB with --palette")
                img = img.convert("RGB")
            return np.asarray(img)
    except UnidentifiedImageError:
        raise ValueError(f"mask {name} is not an image PIL can read (expected PNG data)") from None
    except ValueError:
        raise
    except Exception as exc:  # PIL raises many types for truncated or corrupt data
        raise ValueError(f"cannot decode mask {name}: {exc}") from exc


def _mask_ids(mask: np.ndarray, options: IngestOptions, name: str = "") -> np.ndarray:
    if mask.ndim == 3:
        if options.palette is None:
            raise ValueError(f"mask {name} is RGB colour (3 channels) and no --palette was given to map colours "
                             f"to class ids")
        rgb = mask[..., :3].reshape(-1, 3)
        colours, inverse = np.unique(rgb, axis=0, return_inverse=True)
        lookup = np.empty(len(colours), dtype=np.int64)
        for i, colour in enumerate(colours):
            key = tuple(int(x) for x in colour)
            if key not in options.palette:
                raise ValueError(f"mask {name} colour {key} is not in --palette")
            lookup[i] = options.palette[key]
        mask = lookup[inverse.reshape(-1)].reshape(mask.shape[:2])
    if mask.ndim != 2:
        raise ValueError(f"mask {name} has shape {mask.shape}; expected [H, W] or [H, W, 3]")
    bad = (mask != options.ignore_index)
    if options.num_classes is not None:
        bad &= (mask >= options.num_classes)
    else:
        bad &= (mask > 254)
    if bad.any() or (mask < 0).any():
        ids = sorted(set(np.unique(mask[bad]).tolist()))
        limit = f"num_classes={options.num_classes}" if options.num_classes else "255 values"
        raise ValueError(f"mask {name} has class ids {ids[:10]} outside [0, {limit}) that are not "
                         f"ignore_index={options.ignore_index}")
    return mask.astype(np.uint8)


def encode_pair(stem: str, image_path: Path, mask_path: Path, options: IngestOptions) -> bytes:
    """Check one pair and return its serialized Example; ValueError says what is wrong."""
    image_bytes = image_path.read_bytes()
    image = codec.decode_array(image_bytes, what=f"image {image_path.name}")
    if image.dtype != np.uint8:
        raise ValueError(f"image {image_path.name} is {image.dtype}; expected 8-bit")
    if codec.image_format(image_bytes) == b"unknown":  # BMP/TIFF: store as PNG
        image_bytes = codec.encode_png(image)
    mask_bytes = mask_path.read_bytes()
    mask = read_mask(mask_bytes, mask_path.name, colours=options.palette is not None)
    if image.shape[:2] != mask.shape[:2]:
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]} but mask is {mask.shape[1]}x{mask.shape[0]} (WxH)")
    ids = _mask_ids(mask, options, mask_path.name)
    if not (mask.ndim == 2 and mask.dtype == np.uint8 and codec.image_format(mask_bytes) == b"png"
            and _is_grey_png(mask_bytes)):
        mask_bytes = codec.encode_png(ids)
    labeled = options.labeled.get(stem) if options.labeled is not None else None
    group = options.groups[stem] if options.groups is not None else None
    example = codec.build_example(image_bytes, mask_bytes, stem, image.shape[0], image.shape[1], labeled, group)
    return example.SerializeToString()


def _is_grey_png(data: bytes) -> bool:
    # PNG IHDR colour type (byte 25): 0 = greyscale. Bit depth (byte 24) must be 8.
    return len(data) > 26 and data[24] == 8 and data[25] == 0


# --------------------------------------------------------------------------- shards
def _write_shard(args) -> Tuple[List[str], List[dict]]:
    import tensorflow as tf

    shard_path, name, pairs, options, progress_every = args  # name: the shard's final name
    written, bad = [], []
    with tf.io.TFRecordWriter(str(shard_path)) as writer:
        for n, (stem, image_path, mask_path) in enumerate(pairs, start=1):
            try:
                writer.write(encode_pair(stem, image_path, mask_path, options))
                written.append(stem)
            except (ValueError, OSError) as exc:
                bad.append({"source_id": stem, "image": str(image_path), "mask": str(mask_path), "reason": str(exc)})
                print(f"ingest: skipped {stem}: {exc}", file=sys.stderr, flush=True)
            if progress_every and n % progress_every == 0:
                # one write per line: shard worker processes share stdout, and print() writes
                # the text and the newline separately, so lines of two workers could merge
                sys.stdout.write(f"ingest: {name}: {n}/{len(pairs)} pairs\n")
                sys.stdout.flush()
    return written, bad


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clean_stale(parent: Path) -> List[Path]:
    """Remove what a killed ingest left in ``parent``: its temporary folders, and restore a previous
    TARGET moved aside by a replacement that was killed before it finished. Only folders of a
    process that is no longer running, named by ingest, holding nothing but ingest's files."""
    removed = []
    if not parent.is_dir():
        return removed
    for path in sorted(parent.iterdir()):
        for prefix in (TMP_PREFIX, OLD_PREFIX):
            pid = path.name[len(prefix):]
            if path.name.startswith(prefix) and pid.isdigit() and int(pid) != os.getpid() and path.is_dir():
                break
        else:
            continue
        if _pid_alive(int(pid)) or output_guard.foreign_entries(path, (*OWNED, "*" + PARTIAL_SUFFIX)):
            continue
        if prefix == OLD_PREFIX:
            marker = output_guard.read_marker(path) or {}
            name = marker.get("target")
            if isinstance(name, str) and name and "/" not in name and not (parent / name).exists():
                path.rename(parent / name)  # the replacement was killed between the two renames
                print(f"ingest: restored {parent / name} (a killed ingest had moved it aside)", file=sys.stderr)
                continue
        shutil.rmtree(path)
        removed.append(path)
    return removed


def ingest(
    images_dir: os.PathLike,
    masks_dir: os.PathLike,
    output: os.PathLike,
    span: Optional[int] = None,
    options: Optional[IngestOptions] = None,
    shards: int = 1,
    overwrite: bool = False,
    strict: bool = False,
) -> IngestResult:
    """Ingest a folder pair (see module docstring). Raises IngestError for whole-input problems,
    output_guard.OutputError for an output that must not be written (both UserErrors)."""
    options = options or IngestOptions()
    images_dir, masks_dir, output = Path(images_dir), Path(masks_dir), Path(output)
    if shards < 1:
        raise IngestError(f"--shards must be >= 1, got {shards}")
    if span is not None and span < 0:
        raise IngestError(f"--span must be >= 0, got {span}")
    if options.num_classes is not None and not 1 <= options.num_classes <= MAX_CLASSES:
        raise IngestError(f"--num-classes must be between 1 and {MAX_CLASSES} (masks are 8-bit), "
                          f"got {options.num_classes}")
    if not 0 <= options.ignore_index <= 255:
        raise IngestError(f"--ignore-index must be between 0 and 255 (masks are 8-bit), got {options.ignore_index}")
    target = output / f"Span-{span}" if span is not None else output
    if span is not None:  # OUTPUT itself must be a folder (or not exist yet) and not an input
        output_guard.check_not_inputs(output, "--output", (images_dir, masks_dir))
    elif target.is_dir() and any(p.name.startswith("Span-") and p.is_dir() for p in target.iterdir()):
        spans = sorted(p.name for p in target.iterdir() if p.name.startswith("Span-"))
        raise IngestError(f"--output {target} holds spans ({', '.join(spans[:5])}): add --span N to write another "
                          f"span there, or choose another --output")
    holds_data = output_guard.check_output_folder(
        target, command="ingest", option="--output",
        owned=OWNED, key_file=REPORT_NAME, inputs=(images_dir, masks_dir))
    if holds_data and not overwrite:
        raise IngestError(f"{target} already holds data; pass --overwrite to replace it, or choose another --span/--output")

    images = _files_by_stem(images_dir, IMAGE_SUFFIXES, "image")
    masks = _files_by_stem(masks_dir, MASK_SUFFIXES, "mask")
    if images_dir.resolve() == masks_dir.resolve():
        raise IngestError(f"IMAGES_DIR and MASKS_DIR are the same folder ({images_dir}): keep masks in their own folder")
    if not images and not masks:
        raise IngestError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {images_dir} and no masks in {masks_dir}")
    result = IngestResult(target=target)
    for stem in sorted(set(images) - set(masks)):
        result.bad.append({"source_id": stem, "image": str(images[stem]), "reason": f"image has no mask {stem}.* in {masks_dir}"})
    for stem in sorted(set(masks) - set(images)):
        result.bad.append({"source_id": stem, "mask": str(masks[stem]), "reason": f"mask has no image {stem}.* in {images_dir}"})
    for item in result.bad:
        print(f"ingest: skipped {item['source_id']}: {item['reason']}", file=sys.stderr)
    if options.labeled is not None:
        result.labeled_unmatched = sorted(set(options.labeled) - set(images))
        if result.labeled_unmatched:
            print(f"ingest: warning: {len(result.labeled_unmatched)} --labeled stems match no image file in "
                  f"{images_dir}: {_sample(result.labeled_unmatched)}", file=sys.stderr)
    pairs = [(stem, images[stem], masks[stem]) for stem in sorted(set(images) & set(masks))]
    result.num_pairs = len(pairs)
    if options.groups is not None:
        ungrouped = [stem for stem, _, _ in pairs if stem not in options.groups]
        if ungrouped:
            raise IngestError(f"--groups: {len(ungrouped)} of {len(pairs)} images have no group "
                              f"({_sample(ungrouped)}); give every image one (its scene, scan or tile); nothing "
                              f"was written")
        result.groups_unmatched = sorted(set(options.groups) - set(images))
        if result.groups_unmatched:
            print(f"ingest: warning: {len(result.groups_unmatched)} --groups stems match no image file in "
                  f"{images_dir}: {_sample(result.groups_unmatched)}", file=sys.stderr)

    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target.parent)
    tmp = target.parent / f"{TMP_PREFIX}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        chunks = [pairs[i::shards] for i in range(shards)]
        progress = max(1, len(pairs) // shards // 10) if len(pairs) > PROGRESS_MIN_FILES else 0
        jobs = [(tmp / f"shard-{i:05d}-of-{shards:05d}{PARTIAL_SUFFIX}", f"data-{i:05d}-of-{shards:05d}.tfrecord",
                 chunk, options, progress) for i, chunk in enumerate(chunks)]
        if shards > 1:
            with ProcessPoolExecutor(max_workers=min(shards, os.cpu_count() or 1)) as pool:
                outcomes = list(pool.map(_write_shard, jobs))
        else:
            outcomes = [_write_shard(jobs[0])]
        for written, bad in outcomes:
            result.written.extend(written)
            result.bad.extend(bad)
        result.written.sort()
        if options.groups is not None:
            result.num_groups = len({options.groups[stem] for stem in result.written})
        problem = _nothing_written_reason(result, images_dir, masks_dir, strict)
        if problem:
            report_path = failed_report_path(target)
            report_path.write_text(json.dumps(result.failed_report(problem), indent=1))
            raise IngestError(f"{problem}; report: {report_path}")
        (tmp / REPORT_NAME).write_text(json.dumps(result.report(), indent=1))
        output_guard.write_marker(tmp, "ingest", target=target.name)
        for job in jobs:  # complete: give the shards their data-* names (still inside the hidden folder)
            job[0].rename(tmp / job[1])
        if target.exists():
            old = target.parent / f"{OLD_PREFIX}{os.getpid()}"
            output_guard.write_marker(target, "ingest", target=target.name)  # lets clean_stale restore it
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old)
        else:
            tmp.rename(target)
        failed_report_path(target).unlink(missing_ok=True)  # an earlier failure's report is out of date
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _nothing_written_reason(result: IngestResult, images_dir: Path, masks_dir: Path, strict: bool) -> Optional[str]:
    """Why nothing may be written (None: write the span)."""
    first_bad = f"first: {result.bad[0]['source_id']}: {result.bad[0]['reason']}" if result.bad else ""
    if not result.written:
        if result.bad:
            return (f"no record was written from {images_dir} and {masks_dir}: "
                    f"all {len(result.bad)} pairs were bad ({first_bad})")
        return f"no image/mask pairs in {images_dir} and {masks_dir}"
    if strict and (result.bad or result.labeled_unmatched or result.groups_unmatched):
        problems = []
        if result.bad:
            problems.append(f"{len(result.bad)} of {len(result.bad) + len(result.written)} pairs are bad ({first_bad})")
        if result.labeled_unmatched:
            problems.append(f"{len(result.labeled_unmatched)} --labeled stems match no image file in {images_dir} "
                            f"({_sample(result.labeled_unmatched)})")
        if result.groups_unmatched:
            problems.append(f"{len(result.groups_unmatched)} --groups stems match no image file in {images_dir} "
                            f"({_sample(result.groups_unmatched)})")
        return "--strict: " + "; ".join(problems) + "; nothing was written"
    return None


# --------------------------------------------------------------------------- CLI
def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "ingest",
        help="pair images and masks by file stem and write TFRecords",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images_dir", metavar="IMAGES_DIR")
    parser.add_argument("masks_dir", metavar="MASKS_DIR")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--span", type=int, help="write under DIR/Span-N (for ImportExampleGen spans)")
    parser.add_argument("--labeled", metavar="FILE.json", help="{source_id: [labelled class ids]}")
    parser.add_argument("--groups", metavar="FILE.json",
                        help="{source_id: group}: the scene / scan / tile of each image (data.split_by: group)")
    parser.add_argument("--num-classes", type=int,
                        help="C: ids must be < C or ignore_index (default: from classes.json beside IMAGES_DIR)")
    parser.add_argument("--ignore-index", type=int, default=codec.DEFAULT_IGNORE_INDEX, help="'no label' id (default 255)")
    parser.add_argument("--palette", metavar="FILE", help="JSON [[r,g,b], ...] per class id, for RGB colour masks")
    parser.add_argument("--shards", type=int, default=1, help="output files, written in parallel (default 1)")
    parser.add_argument("--strict", action="store_true",
                        help="any bad pair, or a --labeled / --groups stem with no image, stops the command "
                             "(exit 2) and nothing is written")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output/span that an earlier ingest wrote (never anything else)")
    parser.set_defaults(func=_main)


def _main(args) -> int:
    started = time.time()
    if args.num_classes is not None and not 1 <= args.num_classes <= MAX_CLASSES:
        raise IngestError(f"--num-classes must be between 1 and {MAX_CLASSES} (masks are 8-bit), got "
                          f"{args.num_classes}; leave it out to read the class count from classes.json")
    num_classes = args.num_classes if args.num_classes is not None else infer_num_classes(Path(args.images_dir))
    options = IngestOptions(
        num_classes=num_classes,
        ignore_index=args.ignore_index,
        palette=load_palette(args.palette) if args.palette else None,
        labeled=load_labeled(args.labeled, num_classes) if args.labeled else None,
        groups=load_groups(args.groups) if args.groups else None,
    )
    result = ingest(args.images_dir, args.masks_dir, args.output, args.span, options, args.shards,
                    args.overwrite, args.strict)
    unmatched = f", {len(result.labeled_unmatched)} --labeled stems without image" if result.labeled_unmatched else ""
    print(f"ingest: wrote {len(result.written)} records to {result.target} "
          f"({len(result.bad)} bad{unmatched}, report {result.target / REPORT_NAME}, {time.time() - started:.1f}s)")
    return 0
