"""Reading TFRecord framing without TensorFlow: ``uint64 length, uint32 masked CRC32C of the
length, data, uint32 masked CRC32C of the data`` per record, both checksums verified.

Used by the ClassStats Beam job (its workers import no TensorFlow) and by the data report's
thumbnails. Imports nothing heavy.
"""
from __future__ import annotations

import struct
from typing import Iterator


class TFRecordFileError(ValueError):
    """A file that is not a (complete) TFRecord file; the message says what is wrong and where.

    ``kind`` is ``truncated_header``, ``truncated`` (in the data), ``not_tfrecord`` or ``corrupt``;
    ``index`` is the record it happened in, from 0 (the message counts from 1: "record 2" is the second)."""

    def __init__(self, message: str, kind: str, index: int):
        super().__init__(message)
        self.kind = kind
        self.index = index


def _masked_crc(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def iter_tfrecords(handle) -> Iterator[bytes]:
    """The records of an open TFRecord file (already decompressed); TFRecordFileError when the
    framing or a checksum is wrong (a truncated file, or not a TFRecord file at all)."""
    index, offset = 0, 0
    while True:
        head = handle.read(12)
        if not head:
            return
        if len(head) < 12:
            raise TFRecordFileError(f"truncated: record {index + 1} (at byte {offset}) stops after {len(head)} bytes "
                                    f"of its 12-byte header", "truncated_header", index)
        length, length_crc = struct.unpack("<QI", head)
        if _masked_crc(head[:8]) != length_crc:
            raise TFRecordFileError(f"not a TFRecord file (bad length checksum of record {index + 1} at byte {offset})",
                                    "not_tfrecord", index)
        body = handle.read(length + 4)
        if len(body) < length + 4:  # (QA 64: the count took 4 bytes off a payload cut short, as if its CRC was there)
            held = (f"all {length} of its bytes but not its 4-byte checksum" if len(body) >= length
                    else f"{len(body)} of its {length} bytes")
            raise TFRecordFileError(f"truncated: record {index + 1} (at byte {offset}) has {held}", "truncated",
                                    index)
        data = body[:length]
        if _masked_crc(data) != struct.unpack("<I", body[length:])[0]:
            raise TFRecordFileError(f"corrupt: data checksum of record {index + 1} (at byte {offset}) does not match",
                                    "corrupt", index)
        yield data
        index += 1
        offset += 12 + length + 4
