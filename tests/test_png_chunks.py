"""png_damage against TensorFlow's own PNG decoder (libpng), the reference, over damaged copies of a PNG."""
import io
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, PngImagePlugin

from segbalance.trainer.png_chunks import png_damage


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def chunks(data: bytes):
    """[(type, start, length)] of a whole PNG, by hand."""
    found, position = [], 8
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        found.append((kind, position, length))
        position += 12 + length
    return found


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]


def tensorflow_decodes(data: bytes) -> bool:
    try:
        tf.io.decode_png(data, channels=3)
        return True
    except tf.errors.InvalidArgumentError:
        return False


@pytest.fixture(scope="module")
def png():
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "a text chunk")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 17, 3), np.uint8)).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def damaged_copies(png):
    """{what: bytes}: cut 1 to 40 bytes short, each chunk's CRC and first data byte flipped, chunks out of rule."""
    copies = {f"cut {n}": png[:-n] for n in range(1, 41)}
    for kind, start, length in chunks(png):
        copies[f"{kind.decode()} CRC"] = flip(png, start + 8 + length + 3)
        if length:
            copies[f"{kind.decode()} data"] = flip(png, start + 8)
    ihdr_end = 8 + 25
    copies["unknown critical chunk"] = png[:ihdr_end] + chunk(b"ABCD", b"xyz") + png[ihdr_end:]
    copies["second IHDR"] = png[:ihdr_end] + png[8:ihdr_end] + png[ihdr_end:]
    copies["IDAT first"] = png[:8] + png[png.find(b"IDAT") - 4:]
    copies["no IEND"] = png[:-12]
    return copies


def test_refuses_every_copy_libpng_refuses_and_no_other_but_an_ancillary_crc(png):
    """The QA 80 H1 files included (a PNG 1-4 bytes short, a wrong IEND CRC): Pillow's verify passed them."""
    assert tensorflow_decodes(png) and png_damage(png) is None
    refused_by_tensorflow_only = []
    for what, data in damaged_copies(png).items():
        damage = png_damage(data)
        if not tensorflow_decodes(data):
            assert damage, what  # never passed when TensorFlow cannot decode it
        elif damage:
            refused_by_tensorflow_only.append(what)
    # the one stricter rule: a text chunk's wrong CRC (libpng skips the chunk; Pillow cannot open the file)
    assert refused_by_tensorflow_only == ["tEXt CRC", "tEXt data"]


def test_what_it_says(png):
    ihdr_end = 8 + 25
    assert png_damage(png[:-1]) == "its 'IEND' chunk is cut short (the file is cut short)"
    assert png_damage(png[:-12]) == "it ends before its IEND chunk (the file is cut short)"
    assert png_damage(flip(png, len(png) - 1)) == "the checksum (CRC) of its 'IEND' chunk is wrong"
    assert png_damage(png[:ihdr_end] + chunk(b"ABCD", b"") + png[ihdr_end:]) == \
        "it has an unknown critical chunk 'ABCD'"
    assert png_damage(png[:ihdr_end] + chunk(b"abCD", b"") + png[ihdr_end:]) is None  # ancillary: skipped
    assert png_damage(png + b"anything after IEND") is None  # libpng stops reading at IEND
    assert tensorflow_decodes(png + b"anything after IEND")
    assert png_damage(b"\xff\xd8\xff\xe0 a JPEG") is None and png_damage(b"") is None  # not PNG: checked elsewhere
    assert png_damage(png[:8]) == "it ends before its IEND chunk (the file is cut short)"
    huge_length = png[:8] + struct.pack(">I", 2 ** 31) + png[12:]
    assert png_damage(huge_length) == "its 'IHDR' chunk is cut short (the file is cut short)"


def raw_rows(array: np.ndarray) -> bytes:
    """Filter type 0 before each row (8-bit samples)."""
    return b"".join(b"\x00" + row.tobytes() for row in array.reshape(array.shape[0], -1))


def adam7(array: np.ndarray) -> bytes:
    """The seven interlaced passes' rows, by hand."""
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
    return b"".join(raw_rows(array[y::dy, x::dx]) for x, y, dx, dy in passes if array[y::dy, x::dx].size)


def built(array, colour=2, depth=8, interlace=0, before=b"", idat=None, after=b"", plte=b""):
    """A PNG built chunk by chunk (every CRC right): IHDR, ``before``, ``plte``, IDAT(s), ``after``, IEND."""
    height, width = array.shape[:2]
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace))
    data = zlib.compress(adam7(array) if interlace else raw_rows(array))
    idat = chunk(b"IDAT", data) if idat is None else idat(data)
    return b"\x89PNG\r\n\x1a\n" + header + before + plte + idat + after + chunk(b"IEND", b"")


def hand_built_cases():
    """{what: bytes} of PNGs with every CRC right that libpng reads or refuses for other reasons (QA 82 M1)."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (13, 11, 3), np.uint8)
    ids = rng.integers(0, 4, (13, 11), np.uint8)
    palette = chunk(b"PLTE", bytes(range(12)))
    data = zlib.compress(raw_rows(rgb))
    return {
        "whole": built(rgb),
        "interlaced": built(rgb, interlace=1),
        "palette": built(ids, colour=3, plte=palette),
        "palette with tRNS": built(ids, colour=3, plte=palette + chunk(b"tRNS", bytes([0, 255]))),
        "zero-length IDATs around the data": built(rgb, idat=lambda d: chunk(b"IDAT", b"") * 2 + chunk(b"IDAT", d)
                                                   + chunk(b"IDAT", b"")),
        "one-byte IDATs": built(rgb, idat=lambda d: b"".join(chunk(b"IDAT", d[i:i + 1]) for i in range(len(d)))),
        "text after the data": built(rgb, after=chunk(b"tEXt", b"k\x00v")),
        "palette without PLTE": built(ids, colour=3),
        "two PLTE": built(ids, colour=3, plte=palette + palette),
        "PLTE after the data": built(ids, colour=3, after=palette),
        "a digit in a chunk name": built(rgb, before=chunk(b"tES1", b"x")),
        "IDAT split by tEXt": built(rgb, idat=lambda d: chunk(b"IDAT", d[:9]) + chunk(b"tEXt", b"k\x00v")
                                    + chunk(b"IDAT", d[9:])),
        "no IDAT": built(rgb, idat=lambda d: b""),
        "bit depth 3": built(ids, colour=0, depth=3),
        "broken zlib stream": built(rgb, idat=lambda d: chunk(b"IDAT", d[:10] + bytes([d[10] ^ 0xFF]) + d[11:])),
        "rows cut short": built(rgb, idat=lambda d: chunk(b"IDAT", zlib.compress(raw_rows(rgb[:9])))),
        "only an empty IDAT": built(rgb, idat=lambda d: chunk(b"IDAT", b"")),
        "a bad filter type": built(rgb, idat=lambda d: chunk(b"IDAT", zlib.compress(b"\x07" + raw_rows(rgb)[1:]))),
        # QA 83: TensorFlow decodes these two (libpng ignores an RGB image's misplaced palette, and IDATs after the
        # stream's end), and refuses the three after them
        "an RGB image's PLTE after the data": built(rgb, after=palette),
        "IDAT split by tEXt after the stream's end": built(rgb, idat=lambda d: chunk(b"IDAT", d) + chunk(
            b"tEXt", b"k\x00v") + chunk(b"IDAT", b"")),
        "the stream cut after the last row": built(rgb, idat=lambda d: chunk(b"IDAT", d[:-4])),
        "a palette of 4 bytes": built(ids, colour=3, plte=chunk(b"PLTE", bytes(4))),
        "a width over libpng's limit": built(np.zeros((1, 10 ** 6 + 1), np.uint8), colour=0),
    }


def test_hand_built_pngs_are_judged_as_libpng_judges_them():
    """QA 82 M1: PNGs with every CRC right that libpng refuses (no palette, two palettes, a palette after the
    data, a digit in a chunk name, missing image data, a bit depth PNG lacks) passed; with ``pixels=True`` the
    pixel stream too (broken, split before its end, cut, rows cut short, a filter type over 4). QA 83: two
    that libpng reads were refused. Reference: TensorFlow."""
    stream_only = {"broken zlib stream", "rows cut short", "only an empty IDAT", "a bad filter type",
                   "IDAT split by tEXt", "the stream cut after the last row"}
    for what, data in hand_built_cases().items():
        decodes = tensorflow_decodes(data)
        assert (png_damage(data, pixels=True) is None) == decodes, what
        assert (png_damage(data) is None) == (decodes or what in stream_only), what
    assert sum(not tensorflow_decodes(d) for d in hand_built_cases().values()) == 14


def test_pixels_of_real_pngs_pass(png):
    """Pillow's writers: palette with transparency, grey, 16-bit, an animated PNG, a large image of many IDATs."""
    rng = np.random.default_rng(2)
    images = [Image.fromarray(rng.integers(0, 4, (9, 7), np.uint8), "P"), Image.fromarray(np.eye(9, dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 65535, (9, 7)).astype(np.uint16)),
              Image.fromarray(rng.integers(0, 256, (700, 600, 3), np.uint8))]
    buffers = []
    for image in images:
        buffers.append(io.BytesIO())
        image.save(buffers[-1], format="PNG", **({"transparency": 0} if image.mode == "P" else {}))
    frames = [Image.fromarray(rng.integers(0, 256, (9, 7, 3), np.uint8)) for _ in range(3)]
    buffers.append(io.BytesIO())
    frames[0].save(buffers[-1], format="PNG", save_all=True, append_images=frames[1:])
    for data in [png] + [b.getvalue() for b in buffers]:
        assert tensorflow_decodes(data) and png_damage(data, pixels=True) is None
