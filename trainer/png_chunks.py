"""Whether a PNG file is whole as libpng (TensorFlow's ``decode_png``) reads it.

Pillow's ``verify`` checks each chunk's CRC but stops at the IEND chunk's type, before its CRC, and skips
chunks it does not know; libpng refuses a file whose IEND is cut or has a wrong CRC, one with an unknown
critical chunk (a type whose first letter is upper case) and one with a second IHDR. Such a file passed
ingest and the statistics and then stopped the pipeline in Transform or the trainer with "Invalid PNG
data" and no file named (QA 80 H1: an image or mask copied 1 to 4 bytes short). ``png_damage`` walks the
chunks (lengths, CRCs, names, order: QA 82 M1 added a palette image's PLTE and consecutive IDATs) and, with
``pixels=True``, inflates the image data to check that it holds every row with a valid filter byte (without
keeping it: ``zlib`` in chunks). Pure Python: Beam's workers import no TensorFlow.
"""
from __future__ import annotations

import math
import struct
import zlib
from typing import Iterator, List, Optional, Tuple

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CRITICAL_CHUNKS = (b"IHDR", b"PLTE", b"IDAT", b"IEND")
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # samples per pixel by IHDR colour type
DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}  # bit depths each type allows
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
INFLATE_STEP = 1 << 20  # bytes of image data inflated at a time


def png_damage(data: bytes, pixels: bool = False) -> Optional[str]:
    """What makes ``data`` a PNG that libpng refuses (a short phrase), or None: a whole PNG, or not a PNG at all
    (other formats are checked elsewhere). Bytes after IEND are allowed (libpng stops reading there). A wrong CRC
    of an ancillary chunk (tEXt, ...) is refused too, though libpng skips that chunk: Pillow cannot open the file.
    ``pixels``: also inflate the image data (``image_data_damage``)."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    header, idat, seen = b"", [], []
    for kind, body, problem in _chunks(data):
        if problem:
            return problem
        name = kind.decode("latin-1")
        if not seen and kind != b"IHDR":
            return f"its first chunk is {name!r}, not IHDR"
        if not kind.isalpha():
            return f"it has a chunk named {name!r} (chunk names are four letters)"
        if seen and kind == b"IHDR":
            return "it has a second IHDR chunk"
        if not kind[0] & 0x20 and kind not in CRITICAL_CHUNKS:  # bit 5 of the first letter clear: critical
            return f"it has an unknown critical chunk {name!r}"
        if kind == b"PLTE" and (b"PLTE" in seen or b"IDAT" in seen):
            return "its PLTE chunk is " + ("the second one" if b"PLTE" in seen else "after the image data (IDAT)")
        if kind == b"IDAT":
            if b"IDAT" in seen and seen[-1] != b"IDAT":
                return "its image data (IDAT chunks) is split by another chunk"
            idat.append(body)
        if kind == b"IHDR":
            header = body
            if header_problem(header):
                return header_problem(header)
        if kind == b"IEND":
            if not idat:
                return "it has no image data (IDAT chunk)"
            if len(header) == 13 and header[9] == 3 and b"PLTE" not in seen:
                return "it is a palette image without its palette (PLTE chunk)"
            return image_data_damage(header, idat) if pixels else None
        seen.append(kind)
    return "it ends before its IEND chunk (the file is cut short)"


def _chunks(data: bytes) -> Iterator[Tuple[bytes, bytes, Optional[str]]]:
    """(type, body, None) of each chunk after the signature; (type, b"", problem) for a chunk cut short or with a
    wrong CRC, then stops. Stops without a problem where the data ends between chunks."""
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        name = kind.decode("latin-1")
        end = position + 12 + length
        if end > len(data):
            yield kind, b"", f"its {name!r} chunk is cut short (the file is cut short)"
            return
        if zlib.crc32(data[position + 4:end - 4]) != struct.unpack(">I", data[end - 4:end])[0]:
            yield kind, b"", f"the checksum (CRC) of its {name!r} chunk is wrong"
            return
        yield kind, data[position + 8:end - 4], None
        position = end


def header_problem(header: bytes) -> Optional[str]:
    """What libpng refuses in an IHDR chunk's body, or None."""
    if len(header) != 13:
        return f"its IHDR chunk holds {len(header)} bytes, not 13"
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", header)
    if not 0 < width < 2 ** 31 or not 0 < height < 2 ** 31:
        return f"its IHDR chunk gives the size {width}x{height}"
    if depth not in DEPTHS.get(colour, ()):
        return f"its IHDR chunk gives colour type {colour} with bit depth {depth}, which PNG does not have"
    if compression or filtering or interlace > 1:
        return "its IHDR chunk names a compression, filter or interlace method PNG does not have"
    return None


def _rows(header: bytes) -> List[Tuple[int, int]]:
    """[(rows, bytes a row with its filter byte)] of each pass (one, or Adam7's seven) of a valid IHDR."""
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    passes = ADAM7 if interlace == 1 else ((0, 0, 1, 1),)
    rows = []
    for x0, y0, dx, dy in passes:
        pass_width, pass_height = math.ceil((width - x0) / dx), math.ceil((height - y0) / dy)
        if pass_width > 0 and pass_height > 0:
            rows.append((pass_height, 1 + math.ceil(pass_width * CHANNELS[colour] * depth / 8)))
    return rows


def image_data_damage(header: bytes, idat: List[bytes]) -> Optional[str]:
    """What libpng refuses in the image data (the IDAT chunks' zlib stream): a broken stream, fewer bytes than the
    rows IHDR gives, or a row filter type other than 0-4; None when whole. Inflated ``INFLATE_STEP`` at a time."""
    if header_problem(header):
        return header_problem(header)
    rows = _rows(header)
    starts = iter(start for start, (count, stride) in
                  zip(_pass_offsets(rows), rows) for start in range(start, start + count * stride, stride))
    need = sum(count * stride for count, stride in rows)
    next_start = next(starts, None)
    inflater, seen, pending = zlib.decompressobj(), 0, b"".join(idat)
    try:
        while True:
            piece = inflater.decompress(pending, INFLATE_STEP)
            pending = inflater.unconsumed_tail
            if not piece:
                piece = inflater.flush()  # what the stream still holds
                if not piece:
                    break
            while next_start is not None and next_start < seen + len(piece):
                if piece[next_start - seen] > 4:
                    return f"a row of its image data has the filter type {piece[next_start - seen]} (0-4 exist)"
                next_start = next(starts, None)
            seen += len(piece)
            if seen >= need:
                return None
    except zlib.error as exc:
        return f"its image data is not a valid zlib stream ({exc})"
    return f"its image data holds {seen} of the {need} bytes its size needs (the rows are cut short)"


def _pass_offsets(rows: List[Tuple[int, int]]) -> List[int]:
    offsets, total = [], 0
    for count, stride in rows:
        offsets.append(total)
        total += count * stride
    return offsets
