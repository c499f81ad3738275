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
import os
import zlib
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

from segbalance.contract import CLASS_NAMES_FILE, UserError, binary_masks_advice, counted
from segbalance.pipeline.ingest_reports import ingest_report
from segbalance.trainer.remote_files import is_remote


class SpanRecordError(UserError):
    """Records ImportExampleGen cannot read or split (the message names the file and record)."""


def span_files(spans_dir: Path, spans: List[int]) -> List[Path]:
    """The ``data-*`` files of ``spans`` (ImportExampleGen's ``Span-{SPAN}/data-*`` pattern)."""
    return sorted(p for span in spans for p in (Path(spans_dir) / f"Span-{span}").glob("data-*") if p.is_file())


def span_reports(files: List[Path]) -> Dict[Path, Optional[dict]]:
    """{folder of ``files`` (a window's links followed to the spans' own folders): its current
    ``ingest_report`` or None}, each report read once."""
    folders: Dict[Path, List[Path]] = {}
    for path in files:
        real = Path(os.path.realpath(path))
        folders.setdefault(real.parent, []).append(real)
    return {folder: ingest_report(folder, its_files) for folder, its_files in sorted(folders.items())}


def counts_from_ingest_reports(reports: Dict[Path, Optional[dict]], config, files: List[Path]) -> Optional[Counter]:
    """The split counts without reading a record, for spans `segbalance ingest` wrote and nobody
    changed since (it built every record itself; its report lists their source ids and was
    written after them); None otherwise (then every record is read). ``reports``: ``span_reports``."""
    from segbalance.pipeline.dag import split_of

    if config.data.split_by != "record" or not files or any(p.is_symlink() for p in files):  # a window: links
        return None
    if any(report is None for report in reports.values()):
        return None
    counts: Counter = Counter()
    for report in reports.values():
        counts.update(split_of(str(source_id), config) for source_id in report["written"])
    return counts


def check_class_ids(reports: Dict[Path, Optional[dict]], config) -> None:
    """SpanRecordError when an ingest report of the spans read records class ids the config has no name
    for, a latest span ingested for another class count than the config's default names (nothing named its
    classes), or another ignore index than the config's on masks that hold it (a Span-N folder run with the
    default 4 classes trained for half a minute, then stopped with a traceback: QA, session 18). A
    ``data.num_spans`` window's links are followed to the spans' own folders. Spans without a current
    report are checked by the trainer. ``reports``: ``span_reports``."""
    from segbalance.pipeline.config import ClassesConfig
    from segbalance.pipeline.ingest import too_many_unnamed_ids, unnamed_ids, unnamed_ids_problem
    from segbalance.pipeline.spans import SPAN_DIR

    numbered = {folder: int(match.group(1)) for folder in reports if (match := SPAN_DIR.match(folder.name))}
    latest = max(numbered, key=numbered.get) if numbered else None
    largest_ids = [r.get("max_class_id") for r in reports.values() if r is not None]
    if (config.num_classes > 1 and reports and len(largest_ids) == len(reports)
            and all(isinstance(i, int) and i <= 0 for i in largest_ids)):
        # (QA 76: such spans trained background only, and the model was blessed and pushed)
        ignored = sum(int(r.get("masks_with_ignore") or 0) for r in reports.values())
        ii = config.classes.ignore_index
        binary = f"; {ignored} masks hold {ii}, the ignore index: {binary_masks_advice(ii)}" if ignored else ""
        raise SpanRecordError(f"{', '.join(str(f) for f in reports)}: no mask holds a class id other than 0 "
                              f"(background; ingest_report.json max_class_id): there is nothing to learn for the "
                              f"other classes{binary}")
    for folder, report in reports.items():
        if report is None:
            continue
        where = f"{folder} ({folder.name}/ingest_report.json)"
        largest, ignore, declared = report.get("max_class_id"), report.get("ignore_index"), report.get("num_classes")
        if (folder == latest and isinstance(declared, int) and declared != config.num_classes
                and config.classes.names == ClassesConfig().names):  # (QA 84 H1: a 3-class span was trained as
            # the four default classes when nothing named its classes; an earlier span of a window may have had
            # fewer classes, QA 87 H1, and a user's own names are theirs to give)
            own = (f", or in {Path(config.data.dir) / CLASS_NAMES_FILE} ({{\"class_names\": [...]}})"
                   if config.data.dir and not is_remote(config.data.dir) else "")
            raise SpanRecordError(
                f"{where}: ingested for {declared} classes (its ingest_report.json num_classes), but no "
                f"classes.json names them "
                f"and the config's classes.names are the {config.num_classes} default names "
                f"({', '.join(config.classes.names)}): name the span's {declared} classes in id order in the "
                f"config's classes.names{own}")
        if isinstance(largest, int) and largest >= config.num_classes:
            # (QA 88: an earlier span of a window, whose latest span's classes.json names fewer classes: naming
            # them in the config conflicts with that file)
            earlier = (f", or in the latest span's classes.json, which names the classes of every span read; or "
                       f"lower data.num_spans ({config.data.num_spans}) to leave {folder.name} out of the window"
                       if latest is not None and folder != latest else "")
            raise SpanRecordError(
                f"{where}: its masks hold class ids up to {largest}, but classes.names lists {config.num_classes} "
                f"classes: name all {largest + 1} (or more) classes in the config's classes.names, in id "
                f"order{earlier}")
        skipped, readable = unnamed_ids(report.get("bad") or [], report.get("written") or [])
        if too_many_unnamed_ids(skipped, readable):  # (QA 92 M4: a span ingested with a classes.json a class
            # short kept 39 of 80 pairs and was trained on; `run --data` refuses such a folder)
            raise SpanRecordError(
                f"{where}: {unnamed_ids_problem(skipped, readable, declared)}: ingest skipped them, so the span "
                f"holds {len(report.get('written') or [])} of its images; if the data has more classes, name them all "
                f"in the classes.json beside the images and ingest the span again with --overwrite, else fix those "
                f"masks")
        if isinstance(ignore, int) and ignore != config.classes.ignore_index and report.get("masks_with_ignore", 1):
            raise SpanRecordError(
                f"{where}: its masks mark 'no label' with {ignore} (ingest --ignore-index), the config with "
                f"classes.ignore_index {config.classes.ignore_index}: set classes.ignore_index: {ignore}, or ingest "
                f"the span again with --ignore-index {config.classes.ignore_index}")


def check_declared_classes(spans_dir: Path, config, span: Optional[int] = None) -> None:
    """``check_class_ids`` over the spans a run of ``config`` would read in a local ``spans_dir`` (the latest,
    or ``span``, and the ``data.num_spans`` window before it), from their ingest reports only (no record is
    read): `config validate` and `compile-kfp` refuse what `run` would (QA 88: they said valid, and compiled
    a 3-class span under the four default names)."""
    from segbalance.pipeline.spans import list_spans

    spans = [s for s in list_spans(spans_dir) if span is None or s <= span][-config.data.num_spans:]
    if spans:
        check_class_ids(span_reports(span_files(spans_dir, spans)), config)


class _SourceIds:
    """Refuses two records under one ``image/source_id`` with different image or mask bytes (e.g. two
    sample data sets, both named shapes_000NN, as the spans of a ``data.num_spans`` window): the trainer
    joins labelled classes, and the evaluator reference masks and per-image results, by source_id. The
    same record twice (one image delivered in two spans) passes, counted in ``repeated`` (the run says
    so: such an image is counted and trained twice). Cheap per record (the lengths and a
    CRC of the small mask); the bytes are hashed only for an id that repeats with the same fingerprint."""

    def __init__(self):
        self.first: Dict[str, tuple] = {}
        self.digests: Dict[Path, list] = {}  # files read whole before: each hashed at most once
        self.current: Optional[Path] = None
        self.repeated: Counter = Counter()  # source_id -> further identical records

    def add(self, example, path: Path, index: int) -> None:
        self.current = path
        source_id, image, mask = record_identity(example)
        if source_id is None:
            return
        cheap = (len(image), len(mask), zlib.crc32(mask))
        first = self.first.setdefault(source_id, (path, index, cheap))
        if first[:2] == (path, index):
            return
        if first[2] == cheap and self._digest(first[0], first[1]) == _digest(image, mask):
            self.repeated[source_id] += 1
            return
        raise SpanRecordError(
            f"image/source_id {source_id!r} names two different records ({first[0]} record {first[1] + 1}, and {path} "
            f"record {index + 1}): give the images unique file names (the source_id is the file stem), e.g. rename one "
            f"data set's files before ingesting it")

    def _digest(self, path: Path, index: int) -> bytes:
        """The digest of record ``index`` of ``path``, read again: ``path`` is an earlier file (read and
        checked whole: hashed once, every record) or the file being read (a repeat within it: read up to
        ``index`` only, since the records after the one being checked are not checked yet)."""
        from tensorflow.core.example import example_pb2

        if path in self.digests:
            return self.digests[path][index]
        current = path == self.current
        digests = []
        for n, record in enumerate(read_records(path)):
            digests.append(_digest(*record_identity(example_pb2.Example.FromString(record))[1:]))
            if current and n == index:
                return digests[index]
        self.digests[path] = digests
        return digests[index]


def read_records(path: Path):
    """The serialized records of a TFRecord file (``.gz``: gunzipped)."""
    from segbalance.components.tfrecord_file import iter_tfrecords

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        yield from iter_tfrecords(handle)


def record_identity(example):
    """(source_id or None, image bytes, mask bytes) of a tf.train.Example."""
    from segbalance.contract import IMAGE_KEY, MASK_KEY, SOURCE_ID_KEY

    feature = example.features.feature

    def first(key):
        values = feature[key].bytes_list.value if key in feature else []
        return values[0] if values else b""

    source_id = first(SOURCE_ID_KEY)
    return (source_id.decode("utf-8", "replace") if source_id else None), first(IMAGE_KEY), first(MASK_KEY)


def _digest(image: bytes, mask: bytes) -> bytes:
    import hashlib

    return hashlib.sha1(len(image).to_bytes(8, "little") + image + mask).digest()


def check_span_records(spans_dir: Path, spans: List[int], config) -> Dict[str, object]:
    """{"train": n, "eval": m, "repeated": {source_id: k}}: how the records of ``spans`` split, and the
    images whose identical record comes k more times (read records only: a window's); SpanRecordError
    for a record that is not a tf.train.Example or lacks the split feature, a file that is not TFRecord,
    or a split left empty."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.example import example_pb2

    from segbalance.components.tfrecord_file import TFRecordFileError
    from segbalance.pipeline.dag import eval_buckets, split_feature, split_of_feature

    key = split_feature(config)
    files = span_files(spans_dir, spans)
    reports = span_reports(files)
    check_class_ids(reports, config)
    counts = counts_from_ingest_reports(reports, config, files)
    to_read = files if counts is None else []
    counts = counts if counts is not None else Counter()
    seen = _SourceIds()
    for path in to_read:
        path = Path(os.path.realpath(path))  # a window's link: name (and read) the user's own file
        index = -1
        try:
            for index, serialized in enumerate(read_records(path)):
                try:
                    example = example_pb2.Example.FromString(serialized)
                except DecodeError:
                    raise SpanRecordError(
                        f"{path}: record {index + 1} is not a tf.train.Example ({len(serialized)} bytes): remove it "
                        f"(rewrite the file without it), or write the span again with `segbalance ingest`") from None
                values = example.features.feature[key].bytes_list.value if key in example.features.feature else []
                if not values:
                    raise SpanRecordError(
                        f"{path}: record {index + 1} has no {key} feature, which ImportExampleGen splits on "
                        f"(data.split_by: {config.data.split_by}): add it to every record, or write the span "
                        f"with `segbalance ingest`" + (" --groups" if config.data.split_by == "group" else ""))
                counts[split_of_feature(example.features.feature[key], config)] += 1
                seen.add(example, path, index)
        except (TFRecordFileError, OSError, EOFError, zlib.error) as exc:
            # records counted from 1, as the reader's own message counts them (QA 65: "after record 1: truncated: record 3")
            raise SpanRecordError(f"{path}: not a readable TFRecord file (after {counted(index + 1, 'good record')}: "
                                  f"{exc}): replace it "
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
    return {"train": counts["train"], "eval": counts["eval"], "repeated": dict(seen.repeated)}
