"""`segbalance ingest IMAGES_DIR MASKS_DIR --output DIR`: image/mask folders -> TFRecords.

Pairs files by stem (``a.jpg`` + ``a.png``), checks every pair and writes
`tf.train.Example` records with the Model Garden keys (``trainer/example_codec.py``):

- images (PNG/JPEG kept byte-for-byte; other formats re-encoded to PNG);
- masks as single-channel PNG of class ids: greyscale masks as they are, palette
  ("P" mode) masks by palette index, RGB colour masks mapped to ids with ``--palette``;
- ``image/segmentation/class/labeled`` from ``--labeled FILE.json``
  (``{source_id: [class ids]}``) for the ids it lists; a stem there that matches no image
  file is a warning (counted in the report), an error with ``--strict``.

Output (``TARGET`` = ``DIR/Span-N`` with ``--span N``, else ``DIR``)::

    TARGET/data-00000-of-0000K.tfrecord   K = --shards, written in parallel when K > 1
    TARGET/ingest_report.json            counts, written records, bad pairs with reasons

Everything is written to a temporary sibling folder and renamed into place at the end, so
a crash never leaves a half-written span; an existing non-empty TARGET is replaced only
with ``--overwrite``. Bad pairs are reported (console + report) and skipped; the exit
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

from segbalance.trainer import example_codec as codec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")
REPORT_NAME = "ingest_report.json"
PROGRESS_MIN_FILES = 100


class IngestError(Exception):
    """A problem with the whole input (not one pair): the command stops with exit code 2."""


@dataclass
class IngestOptions:
    num_classes: Optional[int] = None
    ignore_index: int = codec.DEFAULT_IGNORE_INDEX
    palette: Optional[Dict[Tuple[int, int, int], int]] = None
    labeled: Optional[Dict[str, List[int]]] = None


@dataclass
class IngestResult:
    target: Path
    written: List[str] = field(default_factory=list)
    bad: List[dict] = field(default_factory=list)
    num_pairs: int = 0
    labeled_unmatched: List[str] = field(default_factory=list)  # --labeled stems with no image file

    def report(self) -> dict:
        return {
            "output": str(self.target),
            "num_pairs_found": self.num_pairs,
            "num_written": len(self.written),
            "num_bad": len(self.bad),
            "num_labeled_unmatched": len(self.labeled_unmatched),
            "bad": self.bad,
            "written": self.written,
            "labeled_unmatched": self.labeled_unmatched,
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


def load_palette(path: os.PathLike) -> Dict[Tuple[int, int, int], int]:
    """A palette file: JSON list of [r, g, b] indexed by class id, or {"id": [r, g, b]}."""
    try:
        raw = json.loads(Path(path).read_text())
        items = enumerate(raw) if isinstance(raw, list) else ((int(k), v) for k, v in raw.items())
        palette = {tuple(int(x) for x in rgb): int(class_id) for class_id, rgb in items}
    except Exception as exc:
        raise IngestError(f"--palette {path}: cannot read it as a JSON list of [r, g, b] per class ({exc})") from exc
    if any(len(rgb) != 3 for rgb in palette):
        raise IngestError(f"--palette {path}: every colour must have 3 components")
    return palette


def load_labeled(path: os.PathLike, num_classes: Optional[int]) -> Dict[str, List[int]]:
    """``{source_id: [class ids]}``; ids must be in ``[0, num_classes)``."""
    try:
        raw = json.loads(Path(path).read_text())
        if not isinstance(raw, dict):
            raise ValueError("top level must be an object {source_id: [class ids]}")
        labeled = {str(k): [int(c) for c in v] for k, v in raw.items()}
    except Exception as exc:
        raise IngestError(f"--labeled {path}: cannot read it ({exc}); expected JSON {{source_id: [class ids]}}") from exc
    if num_classes is not None:
        bad = {k: [c for c in v if not 0 <= c < num_classes] for k, v in labeled.items()}
        bad = {k: v for k, v in bad.items() if v}
        if bad:
            sample = ", ".join(f"{k}: {v}" for k, v in list(bad.items())[:5])
            raise IngestError(f"--labeled {path}: class ids outside [0, {num_classes}) for {len(bad)} entries ({sample})")
    return labeled


def infer_num_classes(images_dir: Path) -> Optional[int]:
    """C from a ``classes.json`` beside the image folder (as ``sample-data`` writes)."""
    classes = images_dir.parent / "classes.json"
    if classes.is_file():
        return len(json.loads(classes.read_text())["class_names"])
    return None


# --------------------------------------------------------------------------- one pair
def _mask_ids(mask: np.ndarray, options: IngestOptions) -> np.ndarray:
    if mask.ndim == 3:
        if options.palette is None:
            raise ValueError(f"mask has {mask.shape[2]} channels and no --palette was given to map colours to class ids")
        rgb = mask[..., :3].reshape(-1, 3)
        colours, inverse = np.unique(rgb, axis=0, return_inverse=True)
        lookup = np.empty(len(colours), dtype=np.int64)
        for i, colour in enumerate(colours):
            key = tuple(int(x) for x in colour)
            if key not in options.palette:
                raise ValueError(f"mask colour {key} is not in --palette")
            lookup[i] = options.palette[key]
        mask = lookup[inverse.reshape(-1)].reshape(mask.shape[:2])
    if mask.ndim != 2:
        raise ValueError(f"mask has shape {mask.shape}; expected [H, W] or [H, W, 3]")
    bad = (mask != options.ignore_index)
    if options.num_classes is not None:
        bad &= (mask >= options.num_classes)
    else:
        bad &= (mask > 254)
    if bad.any() or (mask < 0).any():
        ids = sorted(set(np.unique(mask[bad]).tolist()))
        limit = f"num_classes={options.num_classes}" if options.num_classes else "255 values"
        raise ValueError(f"mask has class ids {ids[:10]} outside [0, {limit}) that are not ignore_index={options.ignore_index}")
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
    mask = codec.decode_array(mask_bytes, what=f"mask {mask_path.name}")
    if image.shape[:2] != mask.shape[:2]:
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]} but mask is {mask.shape[1]}x{mask.shape[0]} (WxH)")
    ids = _mask_ids(mask, options)
    if not (mask.ndim == 2 and mask.dtype == np.uint8 and codec.image_format(mask_bytes) == b"png"
            and _is_grey_png(mask_bytes)):
        mask_bytes = codec.encode_png(ids)
    labeled = options.labeled.get(stem) if options.labeled is not None else None
    example = codec.build_example(image_bytes, mask_bytes, stem, image.shape[0], image.shape[1], labeled)
    return example.SerializeToString()


def _is_grey_png(data: bytes) -> bool:
    # PNG IHDR colour type (byte 25): 0 = greyscale. Bit depth (byte 24) must be 8.
    return len(data) > 26 and data[24] == 8 and data[25] == 0


# --------------------------------------------------------------------------- shards
def _write_shard(args) -> Tuple[List[str], List[dict]]:
    import tensorflow as tf

    shard_path, pairs, options, progress_every = args
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
                sys.stdout.write(f"ingest: {shard_path.name}: {n}/{len(pairs)} pairs\n")
                sys.stdout.flush()
    return written, bad


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
    """Ingest a folder pair (see module docstring). Raises IngestError for whole-input problems."""
    options = options or IngestOptions()
    images_dir, masks_dir, output = Path(images_dir), Path(masks_dir), Path(output)
    if shards < 1:
        raise IngestError(f"--shards must be >= 1, got {shards}")
    if span is not None and span < 0:
        raise IngestError(f"--span must be >= 0, got {span}")
    target = output / f"Span-{span}" if span is not None else output
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise IngestError(f"{target} already holds data; pass --overwrite to replace it, or choose another --span/--output")

    images = _files_by_stem(images_dir, IMAGE_SUFFIXES, "image")
    masks = _files_by_stem(masks_dir, MASK_SUFFIXES, "mask")
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

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        chunks = [pairs[i::shards] for i in range(shards)]
        progress = max(1, len(pairs) // shards // 10) if len(pairs) > PROGRESS_MIN_FILES else 0
        jobs = [(tmp / f"data-{i:05d}-of-{shards:05d}.tfrecord", chunk, options, progress) for i, chunk in enumerate(chunks)]
        if shards > 1:
            with ProcessPoolExecutor(max_workers=min(shards, os.cpu_count() or 1)) as pool:
                outcomes = list(pool.map(_write_shard, jobs))
        else:
            outcomes = [_write_shard(jobs[0])]
        for written, bad in outcomes:
            result.written.extend(written)
            result.bad.extend(bad)
        result.written.sort()
        problem = _nothing_written_reason(result, images_dir, masks_dir, strict)
        if problem:
            report_path = failed_report_path(target)
            report_path.write_text(json.dumps(result.failed_report(problem), indent=1))
            raise IngestError(f"{problem}; report: {report_path}")
        (tmp / REPORT_NAME).write_text(json.dumps(result.report(), indent=1))
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
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
    if strict and (result.bad or result.labeled_unmatched):
        problems = []
        if result.bad:
            problems.append(f"{len(result.bad)} of {len(result.bad) + len(result.written)} pairs are bad ({first_bad})")
        if result.labeled_unmatched:
            problems.append(f"{len(result.labeled_unmatched)} --labeled stems match no image file in {images_dir} "
                            f"({_sample(result.labeled_unmatched)})")
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
    parser.add_argument("--num-classes", type=int,
                        help="C: ids must be < C or ignore_index (default: from classes.json beside IMAGES_DIR)")
    parser.add_argument("--ignore-index", type=int, default=codec.DEFAULT_IGNORE_INDEX, help="'no label' id (default 255)")
    parser.add_argument("--palette", metavar="FILE", help="JSON [[r,g,b], ...] per class id, for RGB colour masks")
    parser.add_argument("--shards", type=int, default=1, help="output files, written in parallel (default 1)")
    parser.add_argument("--strict", action="store_true",
                        help="any bad pair, or a --labeled stem with no image, stops the command (exit 2) and "
                             "nothing is written")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output/span")
    parser.set_defaults(func=_main)


def _main(args) -> int:
    started = time.time()
    try:
        num_classes = args.num_classes or infer_num_classes(Path(args.images_dir))
        options = IngestOptions(
            num_classes=num_classes,
            ignore_index=args.ignore_index,
            palette=load_palette(args.palette) if args.palette else None,
            labeled=load_labeled(args.labeled, num_classes) if args.labeled else None,
        )
        result = ingest(args.images_dir, args.masks_dir, args.output, args.span, options, args.shards,
                        args.overwrite, args.strict)
    except IngestError as exc:
        print(f"segbalance ingest: error: {exc}", file=sys.stderr)
        return 2
    unmatched = f", {len(result.labeled_unmatched)} --labeled stems without image" if result.labeled_unmatched else ""
    print(f"ingest: wrote {len(result.written)} records to {result.target} "
          f"({len(result.bad)} bad{unmatched}, report {result.target / REPORT_NAME}, {time.time() - started:.1f}s)")
    return 0
