"""Check a folder of reference (complete) masks before a run scores against them.

SegEvaluator scores an eval image against ``REFERENCE_DIR/<source_id>.png`` when that file
exists (``data.reference_masks_dir``, or ``DATA/masks_full`` beside ``images/``). A file it cannot
use (colour, another size than its image, ids outside the classes) used to stop the run after
training with a traceback that blamed the model; ``check_reference_masks`` names every such file,
with what is wrong, before anything runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple

from segbalance.contract import UserError, source_id_of


class ReferenceMaskError(UserError):
    """Reference masks that cannot be scored against (the message names them)."""


def image_sizes(images_dir: Path) -> Dict[str, Tuple[int, int]]:
    """{source_id of the file stem: (height, width) as ingest stores the image (EXIF orientation applied)}; headers only."""
    from PIL import Image

    from segbalance.pipeline.ingest import IMAGE_SUFFIXES
    from segbalance.trainer.example_codec import shown_size

    sizes = {}
    for path in sorted(images_dir.iterdir()):
        if not (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES):
            continue
        try:
            with Image.open(path) as image:
                sizes[source_id_of(path.stem)] = shown_size(image)  # ingest turns any format by its EXIF tag
        except Exception:  # ingest names an unreadable image itself
            continue
    return sizes


def check_reference_masks(folder: Path, num_classes: int, ignore_index: int,
                          images_dir: Optional[Path] = None) -> int:
    """The number of reference masks in ``folder`` (for the images of ``images_dir`` when given);
    ReferenceMaskError naming the unusable ones (the first five, and how many in all)."""
    from segbalance.components.seg_evaluator import reference_mask_problem, reference_paths
    from segbalance.trainer import example_codec as codec

    sizes = image_sizes(images_dir) if images_dir is not None and images_dir.is_dir() else None
    problems, checked = [], 0
    for stem, name in sorted(reference_paths(str(folder)).items()):
        path, source_id = Path(name), source_id_of(stem)
        if sizes is not None and source_id not in sizes:
            continue  # no image of that name: the evaluator never reads it
        checked += 1
        try:
            problem = reference_mask_problem(codec.decode_array(path.read_bytes(), what="mask"),
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
    return checked
