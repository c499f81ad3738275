"""Check the records of the spans a run is about to read, before ImportExampleGen reads them.

ImportExampleGen parses every record of ``Span-N/data-*`` as a ``tf.train.Example`` and hashes
its split feature (``image/source_id``, or ``image/group_id`` with ``data.split_by: group``) into
train / eval. A record that is not an Example, or has no split feature, stopped a run with a Beam
traceback; a data set whose records all hash into one split stopped Transform with
``KeyError: 'image/encoded'``. ``check_span_records`` reads the same files first and turns each of
these into one line naming the file, the record and what to do. A span `segbalance ingest` wrote
(its ``ingest_report.json`` lists the records and is newer than every file) is not read again:
ingest built those records, and the report's source ids give the split counts.
"""
from __future__ import annotations

import gzip
import json
import zlib
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

from segbalance.contract import UserError


class SpanRecordError(UserError):
    """Records ImportExampleGen cannot read or split (the message names the file and record)."""


def span_files(spans_dir: Path, spans: List[int]) -> List[Path]:
    """The ``data-*`` files of ``spans`` (ImportExampleGen's ``Span-{SPAN}/data-*`` pattern)."""
    return sorted(p for span in spans for p in (Path(spans_dir) / f"Span-{span}").glob("data-*") if p.is_file())


def counts_from_ingest_reports(spans_dir: Path, spans: List[int], config, files: List[Path]) -> Optional[Counter]:
    """The split counts without reading a record, for spans `segbalance ingest` wrote and nobody
    changed since (it built every record itself; its report lists their source ids and was
    written after them); None otherwise (then every record is read)."""
    from segbalance.pipeline.dag import split_of

    if config.data.split_by != "record" or not files or any(p.is_symlink() for p in files):  # a window: links
        return None
    counts: Counter = Counter()
    for span in spans:
        report = ingest_report(Path(spans_dir) / f"Span-{span}", files)
        if report is None:
            return None
        counts.update(split_of(str(source_id), config) for source_id in report["written"])
    return counts


def ingest_report(folder: Path, files: List[Path]) -> Optional[dict]:
    """The ``ingest_report.json`` of a span folder when `segbalance ingest` wrote it after every one of
    the folder's ``files`` (nobody changed the records since) and it lists them; else None."""
    from segbalance.pipeline.ingest import REPORT_NAME

    report_path = folder / REPORT_NAME
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        written = report["written"]
        newest = max(p.stat().st_mtime for p in files if p.parent == folder)
        fresh = report_path.stat().st_mtime >= newest
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not fresh or not isinstance(written, list) or len(written) != report.get("num_written"):
        return None
    return report


def check_class_ids(spans_dir: Path, spans: List[int], config, files: List[Path]) -> None:
    """SpanRecordError when a span's ingest report records class ids the config has no name for (a
    Span-N folder run with the default 4 classes trained for half a minute, then stopped with a
    traceback: QA, session 18). Spans without a current report are checked by the trainer."""
    for span in spans:
        folder = Path(spans_dir) / f"Span-{span}"
        report = ingest_report(folder, files)
        largest = report.get("max_class_id") if report is not None else None
        if isinstance(largest, int) and largest >= config.num_classes:
            raise SpanRecordError(
                f"{folder}: its masks hold class ids up to {largest} ({folder.name}/ingest_report.json), but "
                f"classes.names lists {config.num_classes} classes: name all {largest + 1} (or more) classes in the "
                f"config's classes.names, in id order")


def _check_unique(example, path: Path, index: int, seen: Dict[str, tuple]) -> None:
    """SpanRecordError when two records carry one ``image/source_id`` but different image or mask bytes
    (e.g. two sample data sets, both named shapes_000NN, as the spans of a ``data.num_spans`` window):
    the trainer joins labelled classes, and the evaluator reference masks and per-image results, by
    source_id. The same record twice (one image delivered in two spans) passes."""
    import hashlib

    from segbalance.contract import IMAGE_KEY, MASK_KEY, SOURCE_ID_KEY

    feature = example.features.feature
    ids = feature[SOURCE_ID_KEY].bytes_list.value if SOURCE_ID_KEY in feature else []
    if not ids:
        return
    source_id = ids[0].decode("utf-8", "replace")
    digest = hashlib.sha1()
    for key in (IMAGE_KEY, MASK_KEY):
        for value in (feature[key].bytes_list.value if key in feature else []):
            digest.update(value)
    first = seen.setdefault(source_id, (path, index, digest.digest()))
    if first[2] != digest.digest():
        raise SpanRecordError(
            f"image/source_id {source_id!r} names two different records ({first[0]} record {first[1]}, and {path} "
            f"record {index}): give the images unique file names (the source_id is the file stem), e.g. rename one "
            f"data set's files before ingesting it")


def check_span_records(spans_dir: Path, spans: List[int], config) -> Dict[str, int]:
    """{"train": n, "eval": m}: how the records of ``spans`` split; SpanRecordError for a record
    that is not a tf.train.Example or lacks the split feature, a file that is not TFRecord, or a
    split left empty."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.example import example_pb2

    from segbalance.components.tfrecord_file import TFRecordFileError, iter_tfrecords
    from segbalance.pipeline.dag import eval_buckets, split_feature, split_of_feature

    key = split_feature(config)
    files = span_files(spans_dir, spans)
    check_class_ids(spans_dir, spans, config, files)
    counts = counts_from_ingest_reports(spans_dir, spans, config, files)
    to_read = files if counts is None else []
    counts = counts if counts is not None else Counter()
    seen: Dict[str, tuple] = {}
    for path in to_read:
        opener = gzip.open if path.name.endswith(".gz") else open
        index = -1
        try:
            with opener(path, "rb") as handle:
                for index, serialized in enumerate(iter_tfrecords(handle)):
                    try:
                        example = example_pb2.Example.FromString(serialized)
                    except DecodeError:
                        raise SpanRecordError(
                            f"{path}: record {index} is not a tf.train.Example ({len(serialized)} bytes): remove it "
                            f"(rewrite the file without it), or write the span again with `segbalance ingest`") from None
                    values = example.features.feature[key].bytes_list.value if key in example.features.feature else []
                    if not values:
                        raise SpanRecordError(
                            f"{path}: record {index} has no {key} feature, which ImportExampleGen splits on "
                            f"(data.split_by: {config.data.split_by}): add it to every record, or write the span "
                            f"with `segbalance ingest`" + (" --groups" if config.data.split_by == "group" else ""))
                    counts[split_of_feature(example.features.feature[key], config)] += 1
                    _check_unique(example, path, index, seen)
        except (TFRecordFileError, OSError, EOFError, zlib.error) as exc:
            raise SpanRecordError(f"{path}: not a readable TFRecord file (after record {index}: {exc}): replace it "
                                  f"with a complete copy, or remove it") from None
    total = sum(counts.values())
    fraction = eval_buckets(config) / 10
    for split in ("train", "eval"):
        if total and not counts[split]:
            raise SpanRecordError(
                f"{spans_dir}: all {total} records of span(s) {spans} hash into the "
                f"{'eval' if split == 'train' else 'train'} split, none into {split} (data.eval_fraction "
                f"{fraction:g}, by {key}): add images (with fewer than about {round(3 / fraction)} images one split "
                f"is often empty), or change data.eval_fraction")
    return {"train": counts["train"], "eval": counts["eval"]}
