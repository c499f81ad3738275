"""trainer/exif_orientation.py against PIL's ImageOps.exif_transpose (what ingest applies)."""
import io
import struct

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


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _pil_orientation(data: bytes) -> int:
    return int(Image.open(io.BytesIO(data)).getexif().get(0x0112, 1))


@pytest.mark.parametrize("k", [3, 6, 8])
def test_png_exif_chunk_is_read_as_pil_reads_it(k):
    """A PNG's eXIf chunk: ingest (PIL) turns the picture, so the serving graph must too."""
    buffer = io.BytesIO()
    Image.fromarray(_pattern()).save(buffer, "PNG", exif=_exif(k))
    data = buffer.getvalue()
    assert b"eXIf" in data and _pil_orientation(data) == k
    assert int(eo.orientation(tf.constant(data))) == k
    pil = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    turned = eo.upright(tf.io.decode_png(data, channels=3), eo.orientation(tf.constant(data))).numpy()
    np.testing.assert_array_equal(turned, pil)  # lossless: exactly PIL's picture


def test_jpeg_segments_are_walked_not_searched():
    """The Exif APP1 segment behind a 64 KiB ICC profile (APP2) is found; 'Exif' bytes in a comment
    (COM) or after the start of scan are not an Exif segment; fill bytes before a marker are skipped.
    Each case agrees with PIL (what ingest applies)."""
    turned = _jpeg(_pattern(), 6)
    app1 = turned.index(b"\xff\xe1")
    length = struct.unpack(">H", turned[app1 + 2:app1 + 4])[0]
    exif_segment = turned[app1:app1 + 2 + length]
    rest = turned[:app1] + turned[app1 + 2 + length:]  # the same JPEG without its Exif segment
    icc = _segment(0xE2, b"ICC_PROFILE\x00" + bytes(65533 - 12))
    behind_icc = rest[:2] + icc + exif_segment + rest[2:]
    tiff = b"MM\x00*" + struct.pack(">IHHHII", 8, 1, 0x0112, 3, 1, 6 << 16) + bytes(4)
    plain = _jpeg(_pattern())
    in_comment = plain[:2] + _segment(0xFE, b"Exif\x00\x00" + tiff) + plain[2:]
    after_scan = plain[:-2] + b"\xff\xe1Exif\x00\x00" + tiff + plain[-2:]
    filled = rest[:2] + b"\xff\xff" + exif_segment[1:] + rest[2:]
    for data, expected in ((behind_icc, 6), (in_comment, 1), (after_scan, 1), (filled, 6), (rest, 1)):
        assert _pil_orientation(data) == expected
        assert int(eo.orientation(tf.constant(data))) == expected


def test_cut_and_malformed_walks_end():
    """A length field that points past the end, a zero-length segment and a cut PNG chunk: the walk
    stops (orientation 1) instead of failing or looping."""
    plain = _jpeg(_pattern())
    png = io.BytesIO()
    Image.fromarray(_pattern()).save(png, "PNG", exif=_exif(6))
    cases = (plain[:2] + b"\xff\xe1\xff\xff", plain[:2] + b"\xff\xe1\x00\x00" + plain[2:],
             png.getvalue()[:40], b"\x89PNG\r\n\x1a\n\xff\xff\xff\xffeXIf")
    for data in cases:
        assert int(eo.orientation(tf.constant(data))) == 1, data[:24]


def test_a_png_exif_chunk_after_the_pixel_data_is_not_read_anywhere():
    """The PNG specification puts eXIf before IDAT and the graph's walk ends at IDAT (a large PNG of
    many small IDAT chunks would otherwise cost a walk over all of them): ingest, the statistics and
    the evaluator read the header the same way, so such a file is upright everywhere."""
    import zlib

    from segbalance.trainer import example_codec as codec

    buffer = io.BytesIO()
    Image.fromarray(_pattern()).save(buffer, "PNG")
    plain = buffer.getvalue()
    tiff = _exif(6)
    chunk = struct.pack(">I", len(tiff)) + b"eXIf" + tiff + struct.pack(">I", zlib.crc32(b"eXIf" + tiff))
    late = plain[:-12] + chunk + plain[-12:]  # before IEND, after IDAT
    assert int(eo.orientation(tf.constant(late))) == 1
    assert codec.exif_orientation(Image.open(io.BytesIO(late))) == 1
    assert codec.record_image_size(late) == (24, 40)
    early = io.BytesIO()
    Image.fromarray(_pattern()).save(early, "PNG", exif=tiff)
    assert codec.exif_orientation(Image.open(io.BytesIO(early.getvalue()))) == 6
    assert codec.record_image_size(early.getvalue()) == (40, 24)


def _codec_orientation(data: bytes) -> int:
    from segbalance.trainer import example_codec as codec

    with Image.open(io.BytesIO(data)) as image:
        return codec.exif_orientation(image)


def test_graph_and_codec_agree_on_mutated_jpegs():
    """The graph's walk and example_codec (ingest, ClassStatsGen, SegEvaluator) read one orientation
    for files PIL's reader accepts: stray bytes and standalone markers before the Exif segment (the
    graph stopped there, PIL walked on) and an orientation only in XMP (PIL's getexif takes it, viewers
    and the graph do not: neither does the codec now)."""
    turned = _jpeg(_pattern(), 6)
    app1 = turned.index(b"\xff\xe1")
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    plain = _jpeg(_pattern())
    cases = {
        "zero bytes before Exif": (turned[:app1] + b"\x00\x00" + turned[app1:], 6),
        "RST marker before Exif": (turned[:app1] + b"\xff\xd0" + turned[app1:], 6),
        "second SOI before Exif": (turned[:app1] + b"\xff\xd8" + turned[app1:], 6),
        "fill bytes before Exif": (turned[:app1] + b"\xff\xff\xff" + turned[app1 + 1:], 6),
        "orientation in XMP only": (plain[:2] + _segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + xmp)
                                    + plain[2:], 1),
    }
    for name, (data, expected) in cases.items():
        assert int(eo.orientation(tf.constant(data))) == expected, name
        assert _codec_orientation(data) == expected, name


def test_an_mpo_is_turned_and_counted_as_a_jpeg():
    """A phone's multi-picture JPEG (PIL's format "MPO"): the graph decodes and turns its first picture;
    the codec's size turned only "JPEG" and ClassStatsGen quarantined the format."""
    from segbalance.components.class_stats_beam import IMAGE_FORMATS
    from segbalance.trainer import example_codec as codec

    buffer = io.BytesIO()
    first, second = Image.fromarray(_pattern()), Image.fromarray(_pattern()[::-1].copy())
    first.save(buffer, "MPO", save_all=True, append_images=[second], exif=_exif(6))
    data = buffer.getvalue()
    assert Image.open(io.BytesIO(data)).format == "MPO" and "MPO" in IMAGE_FORMATS
    assert int(eo.orientation(tf.constant(data))) == 6 == _codec_orientation(data)
    assert codec.record_image_size(data) == (40, 24)
    assert tuple(eo.upright_size(tf.shape(tf.io.decode_jpeg(data))[:2], eo.orientation(tf.constant(data))).numpy()) \
        == (40, 24)


def test_a_crafted_file_of_many_segments_costs_a_bounded_walk():
    """Thousands of comment segments before the Exif one: the walk gives up after MAX_SEGMENTS
    (orientation 1) instead of walking them all."""
    turned = _jpeg(_pattern(), 6)
    comments = _segment(0xFE, b"x") * (eo.MAX_SEGMENTS + 10)
    assert int(eo.orientation(tf.constant(turned[:2] + comments + turned[2:]))) == 1
    assert int(eo.orientation(tf.constant(turned[:2] + _segment(0xFE, b"x") * 100 + turned[2:]))) == 6
