"""trainer/exif_orientation.py against PIL's ImageOps.exif_transpose (what ingest applies)."""
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from segbalance.trainer import exif_orientation as eo


def _pattern(height=24, width=40):
    """Asymmetric blocks: every one of the 8 orientations gives a different picture."""
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 3, : width // 4] = (250, 0, 0)
    image[height // 2:, width // 2:] = (0, 250, 0)
    image[:, -4:] = (0, 0, 250)
    return image


def _jpeg(image, orientation=None, byte_order="<", jfif_first=False, extra_tags=True):
    buffer = io.BytesIO()
    kwargs = {"quality": 95}
    if orientation is not None:
        exif = Image.Exif()
        if extra_tags:
            exif[0x010F] = "camera maker"  # Make, before the orientation tag
            exif[0x0110] = "model"
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes() if byte_order == "<" else _big_endian(exif.tobytes())
    Image.fromarray(image).save(buffer, "JPEG", **kwargs)
    data = buffer.getvalue()
    if jfif_first:
        assert data[2:4] in (b"\xff\xe0", b"\xff\xe1")
    return data


def _big_endian(exif_bytes: bytes) -> bytes:
    """The same EXIF block written Motorola-style (MM): PIL writes Intel (II) by default."""
    from PIL import TiffImagePlugin

    info = TiffImagePlugin.ImageFileDirectory_v2(prefix=b"MM")
    exif = Image.Exif()
    exif.load(exif_bytes)
    for tag, value in exif.items():
        info[tag] = value
    out = io.BytesIO()
    out.write(b"MM\x00\x2a\x00\x00\x00\x08")
    info.save(out)
    return b"Exif\x00\x00" + out.getvalue()


@pytest.mark.parametrize("byte_order", ["<", ">"])
@pytest.mark.parametrize("k", range(1, 9))
def test_turned_like_pil(k, byte_order):
    data = _jpeg(_pattern(), k, byte_order)
    pil = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")).astype(float)
    assert int(eo.orientation(tf.constant(data))) == k
    decoded = tf.io.decode_jpeg(data, channels=3)
    turned = eo.upright(decoded, eo.orientation(tf.constant(data))).numpy().astype(float)
    assert turned.shape == pil.shape  # 5-8: 40 high, 24 wide
    assert np.abs(turned - pil).mean() < 4  # TF's and PIL's JPEG decoders round differently
    size = eo.upright_size(tf.shape(decoded)[:2], eo.orientation(tf.constant(data)))
    assert tuple(size.numpy()) == pil.shape[:2]


def test_no_tag_png_and_junk_are_upright():
    plain = _jpeg(_pattern())
    only_make = _jpeg(_pattern(), 1, extra_tags=True)
    png = io.BytesIO()
    Image.fromarray(_pattern()).save(png, "PNG")
    for data in (plain, only_make, png.getvalue(), b"", b"not an image", b"\xff\xd8\xffExif\x00\x00II*\x00"):
        assert int(eo.orientation(tf.constant(data))) == 1, data[:16]


def test_works_inside_a_saved_graph(tmp_path):
    """No Python at serving time: the reading is part of a SavedModel."""
    module = tf.Module()
    module.f = tf.function(lambda data: eo.orientation(data), input_signature=[tf.TensorSpec([], tf.string)])
    tf.saved_model.save(module, str(tmp_path / "m"))
    loaded = tf.saved_model.load(str(tmp_path / "m"))
    assert int(loaded.f(tf.constant(_jpeg(_pattern(), 6)))) == 6
