"""Whether a PNG file is whole as libpng (TensorFlow's ``decode_png``) reads it, without decoding it.

Pillow's ``verify`` checks each chunk's CRC but stops at the IEND chunk's type, before its CRC, and skips
chunks it does not know; libpng refuses a file whose IEND is cut or has a wrong CRC, one with an unknown
critical chunk (a type whose first letter is upper case) and one with a second IHDR. Such a file passed
ingest and the statistics and then stopped the pipeline in Transform or the trainer with "Invalid PNG
data" and no file named (QA 80 H1: an image or mask copied 1 to 4 bytes short). ``png_damage`` walks the
chunks (lengths, CRCs, order) in pure Python: Beam's workers import no TensorFlow.
"""
from __future__ import annotations

import struct
import zlib
from typing import Optional

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CRITICAL_CHUNKS = (b"IHDR", b"PLTE", b"IDAT", b"IEND")


def png_damage(data: bytes) -> Optional[str]:
    """What makes ``data`` a PNG that libpng refuses (a short phrase), or None: a whole PNG, or not a PNG at all
    (other formats are checked elsewhere). Bytes after IEND are allowed (libpng stops reading there). A wrong CRC
    of an ancillary chunk (tEXt, ...) is refused too, though libpng skips that chunk: Pillow cannot open the file."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    position, index = len(PNG_SIGNATURE), 0
    while True:
        if position + 8 > len(data):
            return "it ends before its IEND chunk (the file is cut short)"
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        name = kind.decode("latin-1")
        end = position + 12 + length
        if end > len(data):
            return f"its {name!r} chunk is cut short (the file is cut short)"
        if index == 0 and kind != b"IHDR":
            return f"its first chunk is {name!r}, not IHDR"
        if index > 0 and kind == b"IHDR":
            return "it has a second IHDR chunk"
        if zlib.crc32(data[position + 4:end - 4]) != struct.unpack(">I", data[end - 4:end])[0]:
            return f"the checksum (CRC) of its {name!r} chunk is wrong"
        if not kind[0] & 0x20 and kind not in CRITICAL_CHUNKS:  # bit 5 of the first letter clear: critical
            return f"it has an unknown critical chunk {name!r}"
        if kind == b"IEND":
            return None
        position, index = end, index + 1
