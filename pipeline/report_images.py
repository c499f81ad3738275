"""Pictures for the data report: thumbnails of images with their masks, inline as data URIs.

Every class has one colour for the whole page (``PALETTE``: imgviz's VOC colour map, class id
c -> ``PALETTE[c]``); masks are drawn over the image with ``imgviz.label2rgb`` (alpha 0.5),
pixels outside 0..C-1 (the ignore index) are left as the image. Thumbnails are downscaled so
the longest side is ``THUMBNAIL_SIZE`` (images bilinear, masks nearest so no class id is
invented), and embedded as JPEG (photos) or PNG (masks) ``data:`` URIs: the page needs no file
beside it. Class names are never drawn into a picture; the page prints them as escaped text.

Images come from the TFRecords the class statistics were computed from (``class_stats.json``
``inputs``): ``load_records`` reads them once and keeps only the records asked for.
"""
from __future__ import annotations

import base64
import contextlib
import glob
import gzip
import hashlib
import html
import io
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from segbalance.components.evaluation_metrics import THUMBNAIL_SIZE, downscale_nearest
from segbalance.components.tfrecord_file import TFRecordFileError
from segbalance.components.tfrecord_file import iter_tfrecords as read_tfrecords
from segbalance.trainer.remote_files import is_remote

JPEG_QUALITY = 80


def palette(num_classes: int) -> np.ndarray:
    """[C, 3] uint8 colours of classes 0..C-1 (the same on every page; past 256 classes they repeat)."""
    import imgviz

    return imgviz.label_colormap()[np.arange(num_classes) % 256]


def css_colour(rgb) -> str:
    return "#%02x%02x%02x" % tuple(int(v) for v in rgb)


def _pil(array: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(array))


def to_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] of a decoded image (grey, grey + alpha, RGBA, 16-bit grey)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = (image.astype(np.float64) * 255.0 / max(1.0, float(image.max()))).astype(np.uint8)
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=-1)
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    if image.shape[-1] == 2:
        return np.repeat(image[..., :1], 3, axis=-1)
    return image[..., :3]


def downscale_image(image: np.ndarray, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """RGB image with its longest side at most ``size`` (bilinear)."""
    from PIL import Image

    image = to_rgb(image)
    height, width = image.shape[:2]
    scale = size / max(height, width)
    if scale >= 1:
        return image
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(_pil(image).resize(shape, Image.BILINEAR))


def _labels(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """int32 ids with everything outside 0..C-1 as C (drawn with alpha 0: the image shows)."""
    mask = np.asarray(mask).astype(np.int64)
    if mask.ndim == 3:
        mask = mask[..., 0]
    return np.where((mask < 0) | (mask >= num_classes), num_classes, mask).astype(np.int32)


def overlay(image: np.ndarray, mask: np.ndarray, num_classes: int, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """Thumbnail: the image with its mask drawn over it in the class colours."""
    import imgviz

    labels = _labels(mask, num_classes)
    image = to_rgb(image)
    if image.shape[:2] != labels.shape:  # a mask of another size: draw it over the image resized to it
        from PIL import Image

        image = np.asarray(_pil(image).resize(labels.shape[::-1], Image.BILINEAR))
    labels = downscale_nearest(labels, size)
    image = downscale_image(image, size)
    if image.shape[:2] != labels.shape:  # rounding of the two downscales
        from PIL import Image

        image = np.asarray(_pil(image).resize(labels.shape[::-1], Image.BILINEAR))
    colours = np.concatenate([palette(num_classes), np.zeros((1, 3), np.uint8)])
    alpha = [0.5] * num_classes + [0.0]
    return imgviz.label2rgb(labels, image=image, alpha=alpha, colormap=colours)


def colour_mask(mask: np.ndarray, num_classes: int, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """The mask alone in the class colours; ignore pixels white."""
    labels = downscale_nearest(_labels(mask, num_classes), size)
    colours = np.concatenate([palette(num_classes), np.full((1, 3), 255, np.uint8)])
    return colours[labels]


def error_map(truth: np.ndarray, prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """Red where the prediction differs from the truth, grey where it agrees, white where ignored."""
    truth, prediction = _labels(truth, num_classes), _labels(prediction, num_classes)
    out = np.full(truth.shape + (3,), 200, np.uint8)
    out[truth != prediction] = (220, 20, 60)
    out[truth == num_classes] = 255
    return out


def data_uri(rgb: np.ndarray, kind: str = "png") -> str:
    buffer = io.BytesIO()
    if kind == "jpeg":
        _pil(rgb).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        _pil(rgb).save(buffer, format="PNG", optimize=True)
    return f"data:image/{kind};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def img(rgb: np.ndarray, alt: str, kind: str = "png") -> str:
    """An ``<img>`` tag holding the picture (alt text escaped)."""
    height, width = rgb.shape[:2]
    return (f'<img class="thumb" alt="{html.escape(alt, quote=True)}" width="{width}" height="{height}" '
            f'src="{data_uri(rgb, kind)}">')


def legend(class_names: Sequence[str]) -> str:
    """The palette as HTML: a colour swatch and the (escaped) name of every class."""
    colours = palette(len(class_names))
    return '<p class="legend">' + "".join(
        f'<span><i style="background:{css_colour(colours[c])}"></i>{html.escape(str(name))}</span>'
        for c, name in enumerate(class_names)) + "</p>"


def sample(ids: Sequence[str], k: int, seed: int) -> List[str]:
    """``k`` of ``ids`` (sorted first, so the input order does not matter), same ones every time."""
    ids = sorted(set(ids))
    if len(ids) <= k:
        return ids
    rng = np.random.default_rng(seed)
    return sorted(ids[i] for i in rng.choice(len(ids), size=k, replace=False))


# --------------------------------------------------------------------------- TFRecords
def _glob(pattern: str) -> List[str]:
    if is_remote(pattern):  # gs://, s3://: TensorFlow's file systems (imported only for them)
        import tensorflow as tf

        return tf.io.gfile.glob(pattern)
    return glob.glob(pattern)


def _open(path: str):
    if is_remote(path):  # the records of a Kubeflow run's Examples artifact
        import tensorflow as tf

        return tf.io.gfile.GFile(path, "rb")
    return open(path, "rb")


def iter_tfrecords(path: str) -> Iterator[bytes]:
    """Records of a TFRecord file, gzip or not (by its first bytes); ValueError naming a truncated
    or corrupt file (the framing and checksums: ``components/tfrecord_file.py``)."""
    with _open(path) as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    with _open(path) as raw, (gzip.GzipFile(fileobj=raw, mode="rb") if compressed
                              else contextlib.nullcontext(raw)) as f:
        try:
            yield from read_tfrecords(f)
        except TFRecordFileError as exc:
            if exc.kind == "truncated_header":
                raise ValueError(f"{path}: truncated after record {exc.index}") from None
            if exc.kind == "truncated":
                raise ValueError(f"{path}: truncated in record {exc.index + 1}") from None  # counted from 1
            raise ValueError(f"{path}: {exc}") from None


def load_records(patterns: Iterable[str], wanted: Iterable[str]) -> Tuple[Dict[str, tuple], List[str]]:
    """{name: (image bytes or None, mask bytes or None)} for the records named in ``wanted``, where
    a name is the source_id (``sha1:<16 hex>`` of the record for one without, as ClassStats names
    it), and the problems met (unreadable files), each a line naming the file."""
    from segbalance.trainer import example_codec as codec

    wanted = set(wanted)
    found: Dict[str, tuple] = {}
    problems: List[str] = []
    files = sorted({f for pattern in patterns for f in _glob(pattern)})
    if wanted and not files:
        problems.append(f"no file matches {', '.join(patterns) or '(no input recorded)'}: "
                        f"the records were moved or deleted, so no picture is shown")
    for path in files:
        if len(found) == len(wanted):
            break
        try:
            for serialized in iter_tfrecords(path):
                try:
                    record = codec.parse_record(serialized)
                except Exception:  # not an Example: only a quarantine entry can name it
                    continue
                name = record.source_id or f"sha1:{hashlib.sha1(serialized).hexdigest()[:16]}"
                if name in wanted and name not in found:
                    found[name] = (record.image_bytes, record.mask_bytes)
                    if len(found) == len(wanted):
                        break
        except (OSError, ValueError, EOFError) as exc:
            problems.append(str(exc) if str(exc).startswith(path) else f"{path}: {exc}")
    return found, problems


def decode(data: Optional[bytes], what: str) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """(array, None) or (None, why it does not decode)."""
    from segbalance.trainer import example_codec as codec

    if data is None:
        return None, f"the record has no {what}"
    try:
        return codec.decode_array(data, what=what), None
    except ValueError as exc:
        return None, str(exc)
