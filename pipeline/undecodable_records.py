"""Name the records whose image TensorFlow cannot decode, once a run has stopped on one.

ClassStatsGen checks a record's PNG chunks, not an image's pixel data (that would cost about four
times the record's statistics), so a record of a user's own whose image stream is damaged stops the
run inside Transform, where TensorFlow's error ("Invalid PNG data, size N") names no record. After
such a failure `segbalance run` reads the span's records again with the decoder Transform uses
(``tf.io.decode_image``, three channels) and names each record it refuses: a run whose images all
decode pays nothing. Masks are not read here: ClassStatsGen inflates every mask and quarantines the
ones TensorFlow would refuse, so none reaches Transform.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, NamedTuple

from segbalance.pipeline.span_records import read_records, record_identity, span_files


# TensorFlow's eager errors wrap the decoder's words: "{{function_node __wrapped__DecodeImage_...}} Invalid PNG data,
# size 852 [Op:DecodeImage]"
_TF_WRAPPING = re.compile(r"\{\{[^}]*\}\}\s*|\s*\[Op:\w+\]")


class Undecodable(NamedTuple):
    path: Path  # the user's own file (a window's link followed)
    index: int  # from 0
    source_id: str
    reason: str  # TensorFlow's words


def undecodable_images(spans_dir: Path, spans: List[int]) -> List[Undecodable]:
    """The records of ``spans`` whose image ``tf.io.decode_image`` refuses, in file and record order. A file that
    cannot be read, or a record that is no Example, is passed over (the record check before the run names
    those): the records found in the rest are still named (QA 87 L2)."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorflow.core.example import example_pb2

    found = []
    for path in span_files(spans_dir, spans):
        path = Path(os.path.realpath(path))
        try:
            for index, serialized in enumerate(read_records(path)):
                try:
                    source_id, image, _ = record_identity(example_pb2.Example.FromString(serialized))
                    tf.io.decode_image(image, channels=3, expand_animations=False)
                except DecodeError:
                    continue
                except tf.errors.OpError as exc:
                    reason = _TF_WRAPPING.sub("", exc.message).strip().splitlines()
                    found.append(Undecodable(path, index, source_id or "", reason[0] if reason else "refused"))
        except Exception:  # noqa: BLE001 (a file cut short, gone or changed since: its readable part was read)
            continue
    return found


def undecodable_message(found: List[Undecodable], shown: int = 3) -> str:
    """One line naming the first ``shown`` of ``found`` (not empty) and what to do."""
    named = "; ".join(f"{f.path} record {f.index + 1} (image/source_id {f.source_id!r}: {f.reason})"
                      for f in found[:shown])
    more = f"; and {len(found) - shown} more" if len(found) > shown else ""
    them = "it" if len(found) == 1 else "them"
    return (f"TensorFlow cannot decode the image of {len(found)} record{'s' if len(found) > 1 else ''}: {named}{more}: "
            f"remove {them} from the span (write the file again without {them}), or write the span again with "
            f"`segbalance ingest` from the source files (it checks every file's pixel data and names each damaged "
            f"one)")


def name_undecodable_records(exc: BaseException, examples_dir: Path) -> None:
    """When TensorFlow's decoder stopped the pipeline (``exc``): SpanRecordError naming the records of the latest
    span of ``examples_dir`` (the one ImportExampleGen read) whose image it refuses, raised from ``exc``. Returns
    otherwise, and when none is found (cli's line for ``exc`` then says what to do; a remote ``examples_dir`` has
    no local files to read)."""
    from segbalance.pipeline.cli import undecodable_data
    from segbalance.pipeline.span_records import SpanRecordError
    from segbalance.pipeline.spans import list_spans

    if undecodable_data(exc) is None:
        return
    spans = list_spans(examples_dir)[-1:]
    files = len(span_files(examples_dir, spans))
    if not files:  # (a remote examples folder: nothing here to read)
        return
    print(f"segbalance run: decoding the images of the span's {files} data file(s) again to name those TensorFlow "
          f"cannot decode", flush=True)
    try:
        found = undecodable_images(examples_dir, spans)
    except KeyboardInterrupt:  # (Ctrl-C, SIGTERM: the stop stands, and what stopped the run is still said; QA 87 L1)
        print(f"segbalance run: stopped while naming them; the run had failed on an image TensorFlow cannot decode "
              f"({undecodable_data(exc)}): run again to name the records, or write the span again with `segbalance "
              f"ingest` from the source files (it checks every file's pixel data)", flush=True)
        raise
    if found:
        raise SpanRecordError(undecodable_message(found)) from exc
