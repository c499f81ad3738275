"""Whether a PNG file is whole as libpng (TensorFlow's ``decode_png``) reads it.

Pillow's ``verify`` checks each chunk's CRC but stops at the IEND chunk's type, before its CRC, and skips
chunks it does not know; libpng refuses a file whose IEND is cut or has a wrong CRC, one with an unknown
critical chunk (a type whose first letter is upper case) and one with a second IHDR. Such a file passed
ingest and the statistics and then stopped the pipeline in Transform or the trainer with "Invalid PNG
data" and no file named (QA 80 H1: an image or mask copied 1 to 4 bytes short). ``png_damage`` walks the
chunks (lengths, CRCs, names, order: QA 82 M1 added a palette image's PLTE) and, with ``pixels=True``,
inflates the image data to check that its zlib stream ends within the first run of IDAT chunks and holds every
row with a valid filter byte (without keeping it: ``zlib`` in steps). Pure Python: Beam's workers import no TensorFlow.
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
INFLATE_STEP = 1 << 20  # bytes of pixel data taken from zlib at a time
INPUT_STEP = 1 << 16  # bytes of compressed data given to zlib at a time (the rest is not copied again each step)
MAX_SIDE = 1_000_000  # libpng's default limit on width and height (PNG_USER_WIDTH_MAX / PNG_USER_HEIGHT_MAX)


def png_damage(data: bytes, pixels: bool = False) -> Optional[str]:
    """What makes ``data`` a PNG that libpng refuses (a short phrase), or None: a whole PNG, or not a PNG at all
    (other formats are checked elsewhere). Bytes after IEND are allowed (libpng stops reading there). A wrong CRC
    of an ancillary chunk (tEXt, ...) is refused too, though libpng skips that chunk: Pillow cannot open the file.
    ``pixels``: also inflate the image data (``image_data_damage``)."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    header, runs, seen, previous = b"", [], set(), b""  # runs: the bodies of each run of consecutive IDATs
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
        if kind == b"IHDR" and header_problem(body):
            return header_problem(body)
        if kind == b"IHDR":
            header = body
        if kind == b"PLTE" and header[9] == 3:  # a palette image's (libpng ignores a misplaced one of RGB)
            if b"PLTE" in seen or b"IDAT" in seen:
                return "its PLTE chunk is " + ("the second one" if b"PLTE" in seen else "after the image data (IDAT)")
            if not body or len(body) % 3 or len(body) > 3 * 256:
                return f"its PLTE chunk holds {len(body)} bytes (1 to 256 colours of 3 bytes)"
        if kind == b"IDAT":
            if previous != b"IDAT":
                runs.append([])
            runs[-1].append(body)
        if kind == b"IEND":
            if not runs:
                return "it has no image data (IDAT chunk)"
            if header[9] == 3 and b"PLTE" not in seen:
                return "it is a palette image without its palette (PLTE chunk)"
            return image_data_damage(header, runs) if pixels else None
        seen.add(kind)
        previous = kind
    return "it ends before its IEND chunk (the file is cut short)"


def _chunks(data: bytes) -> Iterator[Tuple[bytes, memoryview, Optional[str]]]:
    """(type, body, None) of each chunk after the signature; (type, b"", problem) for a chunk cut short or with a
    wrong CRC, then stops. Stops without a problem where the data ends between chunks."""
    position, view = len(PNG_SIGNATURE), memoryview(data)  # bodies as views: a large image's data is not copied
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        name = kind.decode("latin-1")
        end = position + 12 + length
        if end > len(data):
            yield kind, b"", f"its {name!r} chunk is cut short (the file is cut short)"
            return
        if zlib.crc32(view[position + 4:end - 4]) != struct.unpack(">I", data[end - 4:end])[0]:
            yield kind, b"", f"the checksum (CRC) of its {name!r} chunk is wrong"
            return
        yield kind, view[position + 8:end - 4], None
        position = end


def header_problem(header: bytes) -> Optional[str]:
    """What libpng refuses in an IHDR chunk's body, or None."""
    if len(header) != 13:
        return f"its IHDR chunk holds {len(header)} bytes, not 13"
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", header)
    if not 0 < width <= MAX_SIDE or not 0 < height <= MAX_SIDE:
        return f"its IHDR chunk gives the size {width}x{height} (libpng reads 1 to {MAX_SIDE:,} pixels a side)"
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


def image_data_damage(header: bytes, runs: List[List[memoryview]]) -> Optional[str]:
    """What libpng refuses in the image data: a zlib stream that is broken, ends after the first run of consecutive
    IDAT chunks (another chunk splits it) or not at all, fewer bytes than the rows IHDR gives, or a row filter type
    other than 0-4; None when whole. Input is fed ``INPUT_STEP`` bytes at a time and output taken ``INFLATE_STEP``
    at a time (QA 83: taking the rest of the whole input back after each step was quadratic, 8.8 s for an
    8000x8000 image)."""
    rows = _rows(header)
    starts = iter(start for start, (count, stride) in
                  zip(_pass_offsets(rows), rows) for start in range(start, start + count * stride, stride))
    need = sum(count * stride for count, stride in rows)
    next_start = next(starts, None)
    inflater, seen = zlib.decompressobj(), 0

    def rows_problem(piece: bytes) -> Optional[str]:
        nonlocal next_start, seen
        while next_start is not None and next_start < seen + len(piece):
            if piece[next_start - seen] > 4:
                return f"a row of its image data has the filter type {piece[next_start - seen]} (0-4 exist)"
            next_start = next(starts, None)
        seen += len(piece)
        return None

    try:
        for body in runs[0]:
            for offset in range(0, len(body), INPUT_STEP):
                pending = body[offset:offset + INPUT_STEP]
                while pending and not inflater.eof:
                    piece = inflater.decompress(pending, INFLATE_STEP)
                    pending = inflater.unconsumed_tail  # at most INPUT_STEP bytes
                    problem = rows_problem(piece)
                    if problem:
                        return problem
                    if not piece and pending:  # no progress: the stream has ended
                        break
        while not inflater.eof:  # what zlib still holds of the last input
            piece = inflater.decompress(b"", INFLATE_STEP)
            if not piece:
                break
            problem = rows_problem(piece)
            if problem:
                return problem
    except zlib.error as exc:
        return f"its image data is not a valid zlib stream ({exc})"
    if seen < need:
        return f"its image data holds {seen} of the {need} bytes its size needs (the rows are cut short)"
    if not inflater.eof:
        return ("its image data (IDAT chunks) is split by another chunk before its end" if len(runs) > 1 else
                "its image data ends before the end of its zlib stream (the stream is cut short)")
    return None


def _pass_offsets(rows: List[Tuple[int, int]]) -> List[int]:
    offsets, total = [], 0
    for count, stride in rows:
        offsets.append(total)
        total += count * stride
    return offsets
