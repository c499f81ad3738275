"""Check a folder of reference (complete) masks before a run scores against them.

SegEvaluator scores an eval image against ``REFERENCE_DIR/<source_id>.png`` when that file
exists (``data.reference_masks_dir``, or ``DATA/masks_full`` beside ``images/``). A file it cannot
use (colour, another size than its image, ids outside the classes) used to stop the run after
training with a traceback that blamed the model; ``check_reference_masks`` names every such file,
with what is wrong, before anything runs.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Tuple

import numpy as np

from segbalance.contract import IMAGE_SUFFIXES, REFERENCE_MASKS_FOLDER, UserError, source_id_of
from segbalance.pipeline.stem_pairing import strip_stem_suffix


class ReferenceMaskError(UserError):
    """Reference masks that cannot be scored against (the message names them)."""


def image_sizes(images_dir: Path, stem_suffix: str = "") -> Dict[str, Tuple[int, int]]:
    """{source_id of the file stem (``stem_suffix`` dropped, as ingest pairs them): (height, width) as ingest
    stores the image (EXIF orientation applied)}; headers only."""
    from PIL import Image

    from segbalance.trainer.example_codec import shown_size

    sizes = {}
    for path in sorted(images_dir.iterdir()):
        if not (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES):
            continue
        try:
            with Image.open(path) as image:
                # ingest turns any format by its EXIF tag
                sizes[strip_stem_suffix(source_id_of(path.stem), stem_suffix)] = shown_size(image)
        except Exception:  # ingest names an unreadable image itself
            continue
    return sizes


def _paths(folder: Path, stem_suffix: str) -> Dict[str, str]:
    """``reference_paths`` of ``folder`` keyed by stem with ``stem_suffix`` dropped (ingest's mask ending)."""
    from segbalance.components.seg_evaluator import reference_paths

    return {strip_stem_suffix(stem, stem_suffix): path for stem, path in reference_paths(str(folder)).items()}


def check_reference_masks(folder: Path, num_classes: int, ignore_index: int,
                          images_dir: Optional[Path] = None, image_stem_suffix: str = "",
                          mask_stem_suffix: str = "", to_ids: Optional[Callable[[bytes, str], np.ndarray]] = None
                          ) -> int:
    """The number of reference masks in ``folder`` (for the images of ``images_dir`` when given; the stem
    endings as ingest drops them); ReferenceMaskError naming the unusable ones (the first five, and how many
    in all). ``to_ids(bytes, name)``: the class ids of a mask file, mapped as ingest maps the masks (its
    ``--palette`` / ``--value-map``; QA 78: Cityscapes' labelIds reference masks were all refused)."""
    from segbalance.components.seg_evaluator import reference_mask_problem
    from segbalance.trainer import example_codec as codec

    to_ids = to_ids or (lambda data, name: codec.decode_array(data, what="mask"))
    sizes = image_sizes(images_dir, image_stem_suffix) if images_dir is not None and images_dir.is_dir() else None
    problems, checked = [], 0
    paths = _paths(folder, mask_stem_suffix)
    unused = [f"{p.name}{'/' if p.is_dir() else ''}" for p in sorted(folder.iterdir())
              if not p.name.startswith(".") and str(p) not in paths.values()]  # not a .png (hidden files aside)
    for stem, name in sorted(paths.items()):
        path, source_id = Path(name), source_id_of(stem)
        if sizes is not None and source_id not in sizes:
            unused.append(f"{path.name} (no image {source_id})")  # the evaluator never reads it
            continue
        checked += 1
        try:
            problem = reference_mask_problem(to_ids(path.read_bytes(), path.name),
                                             sizes[source_id] if sizes else None, num_classes, ignore_index)
        except ValueError as exc:  # DecodeError
            problem = str(exc)
        if problem:
            problems.append(f"{path.name} {problem}")
    if problems:
        raise ReferenceMaskError(
            f"reference masks in {folder}: {len(problems)} of {checked} cannot be scored against "
            f"({'; '.join(problems[:5])}{'; ...' if len(problems) > 5 else ''}): save each as an 8-bit greyscale PNG "
            f"of class ids 0..{num_classes - 1} (ignore: {ignore_index}) the size of its image, or remove it "
            f"(that image is then scored against its own annotation)")
    if unused:  # (QA 94 M2: a typo in a name, a .PNG, a mask without its image were passed over, unsaid)
        print(f"reference masks: warning: {len(unused)} file(s) in {folder} are not used ({', '.join(unused[:5])}"
              f"{', ...' if len(unused) > 5 else ''}): an eval image is scored against FOLDER/<its stem>.png where "
              f"that is there, else against its own annotation", file=sys.stderr, flush=True)
    return checked


def copy_reference_masks(folder: Path, source_ids: Iterable[str], target: Path, stem_suffix: str = "",
                         to_ids: Optional[Callable[[bytes, str], np.ndarray]] = None) -> int:
    """Copy the reference masks of ``source_ids`` found in ``folder`` (``<source_id>.png``, or with the mask
    ending ``stem_suffix``) to ``target/<source_id>.png`` (made when one is found); the number copied. A span
    keeps them beside its records, so a later run over the span folder (``run --data OUTPUT/data``, the
    scheduled run) scores its eval images against the same truth as the run that ingested them. With
    ``to_ids`` (``check_reference_masks``) the copy is the mapped ids, as an 8-bit PNG."""
    from segbalance.components.seg_evaluator import reference_lookup
    from segbalance.trainer import example_codec as codec

    find = reference_lookup(_paths(folder, stem_suffix))
    copied = 0
    for source_id in source_ids:
        path = find(source_id)
        if path is not None:
            target.mkdir(parents=True, exist_ok=True)
            if to_ids is None:
                shutil.copyfile(path, target / f"{source_id}.png")
            else:
                ids = to_ids(Path(path).read_bytes(), Path(path).name)
                (target / f"{source_id}.png").write_bytes(codec.encode_png(ids.astype(np.uint8)))
            copied += 1
    return copied


def sync_span_references(span_dir: Path, folder: Path) -> int:
    """Make ``span_dir/reference_masks`` hold ``folder``'s masks of the span's records (its ingest
    report's ``written``), replacing what it held in one rename; the number it holds. A span reused
    when only the complete masks changed (they are not part of what makes a span new) gets them."""
    from segbalance.pipeline.ingest_reports import REPORT_NAME
    from segbalance.pipeline.output_guard import left_by_dead_process

    for left in span_dir.glob(f".{REFERENCE_MASKS_FOLDER}.*-*"):  # a killed sync's (QA 65: nothing removed them)
        if any(left_by_dead_process(left.name, f".{REFERENCE_MASKS_FOLDER}.{kind}-") for kind in ("tmp", "old")):
            shutil.rmtree(left, ignore_errors=True)
    report = span_dir / REPORT_NAME
    written = json.loads(report.read_text()).get("written", []) if report.is_file() else []
    staging = span_dir / f".{REFERENCE_MASKS_FOLDER}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    count = copy_reference_masks(folder, written, staging)
    target = span_dir / REFERENCE_MASKS_FOLDER
    if count and target.is_dir() and _same_files(staging, target):
        shutil.rmtree(staging)
    else:
        old = span_dir / f".{REFERENCE_MASKS_FOLDER}.old-{os.getpid()}"
        if target.is_dir():
            target.rename(old)
        if count:
            staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    _record_count(report, count)
    return count


def _record_count(report: Path, count: int) -> None:
    """The span's ingest report counts the copies it holds (QA 70: `run` copies them after ingest, whose
    report said 0 for a span holding 100)."""
    from segbalance.pipeline.ingest_reports import current_ingest_report
    from segbalance.pipeline.output_guard import write_text_atomic

    if current_ingest_report(report.parent) is None:  # none, or stale: rewriting it would make it look current
        return
    content = json.loads(report.read_text())
    if content.get("num_reference_masks") != count:
        write_text_atomic(report, json.dumps({**content, "num_reference_masks": count}, indent=1))


def _same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)

