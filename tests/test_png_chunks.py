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
