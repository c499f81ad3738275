"""Class statistics with plain Apache Beam (no TFX): the core of ClassStatsGen and `segbalance stats`.

Per record: decode the mask, count pixels per class (int64, exact), and derive three class
sets: *present* (pixels in the mask), *labelled* (``image/segmentation/class/labeled``; when
absent the ``labeled_policy`` decides: ``complete`` = every class, ``partial`` = only the
present classes; background and present classes always count as labelled) and *missing*
(= not labelled: its absence from the mask proves nothing). Records that cannot be used
(corrupt PNG, no mask, ids >= C that are not the ignore index, labelled ids out of range)
are quarantined with a reason and counted; the totals stay exact for the rest.

Global counts go through one CombineFn (memory O(C^2) per worker, for the co-occurrence
matrix); per-image rows stream to Parquet shards, after a second step that adds
``suspect_missing``: classes absent from an image although, over the data, they appear in
at least ``suspect_threshold`` of the images that contain each of this image's present
foreground classes. That hints at annotation gaps even without a ``labeled`` field.

Output directory layout (the ClassStats artifact): ``class_stats.json``,
``per_image-*.parquet``, ``quarantine.jsonl`` (see ``components/class_stats_io.py``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Optional

import apache_beam as beam
import numpy as np

from segbalance.trainer import class_weights
from segbalance.trainer import example_codec as codec

SCHEMA_VERSION = 1
QUARANTINE = "quarantine"
from segbalance.contract import PER_IMAGE_PREFIX, QUARANTINE_FILE, STATS_FILE  # noqa: E402,F401
# Keyword arguments of segbalance.trainer.class_weights.compute_class_weights that StatsOptions accepts.
WEIGHT_OPTION_KEYS = {"beta", "enet_k", "damping", "clip", "normalize", "zero_count_weight"}


class ClassStatsError(RuntimeError):
    """The whole input is unusable (no records, or every record quarantined)."""


@dataclass
class StatsOptions:
    num_classes: int
    class_names: Optional[List[str]] = None
    ignore_index: int = codec.DEFAULT_IGNORE_INDEX
    labeled_policy: str = "complete"
    suspect_threshold: float = 0.9
    weight_options: Dict = field(default_factory=dict)  # passed to compute_class_weights

    def __post_init__(self):
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.labeled_policy not in ("complete", "partial"):
            raise ValueError(f"labeled_policy must be 'complete' or 'partial', got {self.labeled_policy!r}")
        if self.class_names is None:
            self.class_names = [f"class_{i}" for i in range(self.num_classes)]
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for num_classes={self.num_classes}")
        if not 0.0 < self.suspect_threshold <= 1.0:
            raise ValueError(f"suspect_threshold must be in (0, 1], got {self.suspect_threshold}")
        check_weight_options(self.weight_options)


def check_weight_options(weight_options: Dict) -> None:
    """ValueError naming the bad key/value, at configuration time rather than after the Beam job."""
    unknown = sorted(set(weight_options) - WEIGHT_OPTION_KEYS)
    if unknown:
        raise ValueError(f"unknown weight options {unknown}; expected some of {sorted(WEIGHT_OPTION_KEYS)}")
    for scheme in class_weights.SCHEMES:  # same checks as the real call, on dummy counts
        class_weights.compute_class_weights([2, 1], scheme, **weight_options)


# --------------------------------------------------------------------------- per record
def _record_name(record: codec.ParsedRecord, serialized: bytes) -> str:
    return record.source_id or f"sha1:{hashlib.sha1(serialized).hexdigest()[:16]}"


def image_row(serialized: bytes, split: str, options: StatsOptions):
    """The per-image row (dict), or a tagged quarantine dict for an unusable record."""
    try:
        record = codec.parse_record(serialized)
    except Exception as exc:  # not an Example at all
        return beam.pvalue.TaggedOutput(QUARANTINE, {
            "source_id": f"sha1:{hashlib.sha1(serialized).hexdigest()[:16]}", "split": split,
            "reason": f"not a tf.train.Example: {exc}"})
    name = _record_name(record, serialized)
    try:
        if record.mask_bytes is None:
            raise ValueError(f"no mask: the record lacks {codec.MASK_KEY}")
        mask = codec.decode_array(record.mask_bytes, what="mask")
        if mask.ndim != 2:
            raise ValueError(f"mask has shape {mask.shape}; expected a single-channel [H, W] PNG")
        counts, ignored = count_mask(mask, options.num_classes, options.ignore_index)
        present = [int(c) for c in np.flatnonzero(counts)]
        if record.labeled is not None:
            out_of_range = [c for c in record.labeled if not 0 <= c < options.num_classes]
            if out_of_range:
                raise ValueError(f"labeled lists class ids {out_of_range} outside [0, {options.num_classes})")
            labeled = set(record.labeled)
        elif options.labeled_policy == "complete":
            labeled = set(range(options.num_classes))
        else:
            labeled = set(present)
        labeled |= set(present) | {0}
    except ValueError as exc:
        return beam.pvalue.TaggedOutput(QUARANTINE, {"source_id": name, "split": split, "reason": str(exc)})
    return {
        "source_id": name,
        "split": split,
        "present": present,
        "labeled": sorted(labeled),
        "missing": sorted(set(range(options.num_classes)) - labeled),
        "pixel_counts": counts.astype(np.int64).tolist(),
        "ignored_pixels": ignored,
    }


def count_mask(mask: np.ndarray, num_classes: int, ignore_index: int):
    """(int64 counts [C], ignored pixel count) of a class-id mask; ValueError on ids outside
    ``0..C-1`` that are not ``ignore_index``.

    One ``np.bincount`` over the raw ids (256 bins for a uint8 mask) instead of masking out
    the ignore pixels first: a single pass, no boolean copy of the image.
    """
    flat = mask.ravel()
    if flat.size and np.issubdtype(flat.dtype, np.signedinteger) and flat.min() < 0:
        raise ValueError(f"mask has negative class ids (min {int(flat.min())})")
    all_counts = np.bincount(flat, minlength=max(num_classes, ignore_index + 1)).astype(np.int64)
    ignored = int(all_counts[ignore_index]) if ignore_index >= 0 else 0
    extra = all_counts[num_classes:].copy()
    if ignore_index >= num_classes:
        extra[ignore_index - num_classes] = 0
    if extra.any():
        bad = (np.flatnonzero(extra) + num_classes).tolist()
        raise ValueError(f"mask has class ids {bad[:10]} >= num_classes={num_classes} that are not "
                         f"ignore_index={ignore_index}")
    counts = all_counts[:num_classes].copy()
    if 0 <= ignore_index < num_classes:  # an in-range ignore id is not a class here
        counts[ignore_index] = 0
    return counts, ignored


class RecordStatsFn(beam.DoFn):
    """``image_row`` as a DoFn with Beam counters and a progress line every ``log_every`` records."""

    def __init__(self, split: str, options: StatsOptions, log_every: int = 1000):
        self.split = split
        self.options = options
        self.log_every = log_every
        self.records = beam.metrics.Metrics.counter("class_stats", "records")
        self.quarantined = beam.metrics.Metrics.counter("class_stats", "quarantined")
        self._seen = 0

    def process(self, serialized: bytes):
        out = image_row(serialized, self.split, self.options)
        self.records.inc()
        if isinstance(out, beam.pvalue.TaggedOutput):
            self.quarantined.inc()
            logging.warning("ClassStats: quarantined %s (split %s): %s", out.value["source_id"], self.split,
                            out.value["reason"])
        self._seen += 1
        if self._seen % self.log_every == 0:
            logging.info("ClassStats: %d records of split %s read by this worker", self._seen, self.split)
        yield out


# --------------------------------------------------------------------------- global counts
class ClassCountsCombineFn(beam.CombineFn):
    """Exact int64 sums over image rows; the accumulator is a dict of NumPy arrays."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def create_accumulator(self):
        c = self.num_classes
        return {"pixel_counts": np.zeros(c, np.int64), "image_counts": np.zeros(c, np.int64),
                "present_image_pixels": np.zeros(c, np.int64),
                "missing_image_counts": np.zeros(c, np.int64), "cooccurrence": np.zeros((c, c), np.int64),
                "ignored_pixels": 0, "num_records": 0, "images_with_missing": 0}

    def add_input(self, acc, row):
        acc["pixel_counts"] += np.asarray(row["pixel_counts"], np.int64)
        present = np.asarray(row["present"], np.int64)
        acc["image_counts"][present] += 1
        acc["present_image_pixels"][present] += int(sum(row["pixel_counts"]))
        acc["cooccurrence"][np.ix_(present, present)] += 1
        acc["missing_image_counts"][np.asarray(row["missing"], np.int64)] += 1
        acc["images_with_missing"] += int(bool(row["missing"]))
        acc["ignored_pixels"] += row["ignored_pixels"]
        acc["num_records"] += 1
        return acc

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for acc in accumulators:
            for key in merged:
                merged[key] = merged[key] + acc[key]
        return merged

    def extract_output(self, acc):
        return {k: (v.tolist() if isinstance(v, np.ndarray) else int(v)) for k, v in acc.items()}


def suspect_missing(row: dict, totals: dict, threshold: float) -> dict:
    """Adds ``suspect_missing``: absent classes that co-occur with every present foreground class."""
    foreground = [c for c in row["present"] if c != 0]
    suspects = []
    if foreground:
        cooc = totals["cooccurrence"]
        image_counts = totals["image_counts"]
        for c in range(len(image_counts)):
            if c == 0 or c in row["present"]:
                continue
            rates = [cooc[p][c] / image_counts[p] for p in foreground if image_counts[p]]
            if rates and min(rates) >= threshold:
                suspects.append(c)
    return {**row, "suspect_missing": suspects}


def _parquet_schema():
    import pyarrow as pa

    ints = pa.list_(pa.int32())
    return pa.schema([("source_id", pa.string()), ("split", pa.string()), ("present", ints), ("labeled", ints),
                      ("missing", ints), ("suspect_missing", ints), ("pixel_counts", pa.list_(pa.int64())),
                      ("ignored_pixels", pa.int64())])


# --------------------------------------------------------------------------- pipeline
def build(p: beam.Pipeline, file_patterns: Dict[str, str], options: StatsOptions, output_dir: str):
    """Adds the statistics transforms to ``p``; results land in ``output_dir`` when it runs."""
    rows, quarantined = [], []
    for split, pattern in sorted(file_patterns.items()):
        outputs = (
            p
            | f"Read[{split}]" >> beam.io.ReadFromTFRecord(pattern)
            | f"Rows[{split}]" >> beam.ParDo(RecordStatsFn(split, options)).with_outputs(QUARANTINE, main="rows")
        )
        rows.append(outputs.rows)
        quarantined.append(outputs[QUARANTINE])
    rows = rows | "FlattenRows" >> beam.Flatten()
    quarantined = quarantined | "FlattenQuarantine" >> beam.Flatten()
    totals = rows | "Totals" >> beam.CombineGlobally(ClassCountsCombineFn(options.num_classes))
    quarantine_count = quarantined | "CountQuarantine" >> beam.combiners.Count.Globally()
    (
        rows
        | "SuspectMissing" >> beam.Map(suspect_missing, beam.pvalue.AsSingleton(totals), options.suspect_threshold)
        | "WritePerImage" >> beam.io.WriteToParquet(os.path.join(output_dir, PER_IMAGE_PREFIX), _parquet_schema(),
                                                    file_name_suffix=".parquet")
    )
    (
        quarantined
        | "QuarantineJson" >> beam.Map(json.dumps, sort_keys=True)
        | "WriteQuarantine" >> beam.io.WriteToText(os.path.join(output_dir, QUARANTINE_FILE), shard_name_template="")
    )
    (
        totals
        | "AddQuarantined" >> beam.Map(lambda t, q: {**t, "quarantined_records": q},
                                       beam.pvalue.AsSingleton(quarantine_count))
        | "TotalsJson" >> beam.Map(json.dumps)
        | "WriteTotals" >> beam.io.WriteToText(os.path.join(output_dir, "_totals"), file_name_suffix=".json",
                                               shard_name_template="")
    )


def _effective_number_beta(beta, pixel_counts):
    """The beta the effective-number weights used (the given one, else 1 - 1/N)."""
    if beta is not None:
        return float(beta)
    return class_weights.default_beta(pixel_counts) if sum(pixel_counts) else None


def finalize(output_dir: str, options: StatsOptions, inputs: Iterable[str], splits: List[str]) -> dict:
    """Turns the Beam totals into ``class_stats.json`` (adds weights); returns its content."""
    import tensorflow as tf

    totals_path = os.path.join(output_dir, "_totals.json")
    with tf.io.gfile.GFile(totals_path) as f:
        totals = json.loads(f.read())
    tf.io.gfile.remove(totals_path)
    where = ", ".join(inputs)
    if totals["num_records"] == 0:
        if totals["quarantined_records"]:
            raise ClassStatsError(
                f"all {totals['quarantined_records']} records in {where} were quarantined; see "
                f"{os.path.join(output_dir, QUARANTINE_FILE)} for the reasons")
        raise ClassStatsError(f"no records in {where}: check the path / file pattern")
    pixel_counts = totals["pixel_counts"]
    zero = class_weights.zero_count_classes(pixel_counts)
    stats = {
        "schema_version": SCHEMA_VERSION,
        "class_names": list(options.class_names),
        "num_classes": options.num_classes,
        "ignore_index": options.ignore_index,
        "labeled_policy": options.labeled_policy,
        "splits": splits,
        "inputs": list(inputs),
        "pixel_counts": pixel_counts,
        "image_counts": totals["image_counts"],
        # labelled pixels of the images that contain each class (median-frequency weights)
        "present_image_pixels": totals["present_image_pixels"],
        "ignored_pixels": totals["ignored_pixels"],
        "total_pixels": int(sum(pixel_counts)) + totals["ignored_pixels"],
        "num_records": totals["num_records"],
        "quarantined_records": totals["quarantined_records"],
        "zero_count_classes": zero,
        "zero_count_note": (f"classes {zero} have no pixels: their weights are set to "
                            f"{options.weight_options.get('zero_count_weight', 0.0)} (see trainer/class_weights.py)"
                            if zero else ""),
        "weights": class_weights.all_scheme_weights(pixel_counts, **options.weight_options,
                                                    present_image_pixels=totals["present_image_pixels"]),
        "weight_options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.weight_options.items()},
        "effective_number_beta": _effective_number_beta(options.weight_options.get("beta"), pixel_counts),
        "cooccurrence": totals["cooccurrence"],
        "missing_image_counts": totals["missing_image_counts"],
        "images_with_missing": totals["images_with_missing"],
        "suspect_threshold": options.suspect_threshold,
        "options": asdict(options),
    }
    with tf.io.gfile.GFile(os.path.join(output_dir, STATS_FILE), "w") as f:
        f.write(json.dumps(stats, indent=1))
    return stats


def remove_previous_output(output_dir: str) -> None:
    """Deletes the files of an earlier run in ``output_dir`` (only this layout's files), so a
    rerun with a different number of Parquet shards cannot leave stale rows behind."""
    import tensorflow as tf

    stale = tf.io.gfile.glob(os.path.join(output_dir, f"{PER_IMAGE_PREFIX}-*.parquet"))
    stale += [p for p in (os.path.join(output_dir, f) for f in (STATS_FILE, QUARANTINE_FILE, "_totals.json"))
              if tf.io.gfile.exists(p)]
    for path in stale:
        tf.io.gfile.remove(path)
    if stale:
        logging.info("ClassStats: removed %d files of an earlier run in %s", len(stale), output_dir)


def run_class_stats(file_patterns: Dict[str, str], output_dir: str, options: StatsOptions,
                    pipeline: Optional[beam.Pipeline] = None, beam_args: Optional[List[str]] = None) -> dict:
    """Run the Beam job over ``{split: file pattern}`` and write the artifact into ``output_dir``."""
    import tensorflow as tf

    for split, pattern in file_patterns.items():
        if not tf.io.gfile.glob(pattern):
            raise ClassStatsError(f"no files match {pattern} (split {split!r}): check the path")
    tf.io.gfile.makedirs(output_dir)
    remove_previous_output(output_dir)
    if pipeline is None:
        from apache_beam.options.pipeline_options import PipelineOptions

        pipeline = beam.Pipeline(options=PipelineOptions(beam_args or []))
    logging.info("ClassStats: counting classes in %s -> %s", file_patterns, output_dir)
    start = time.monotonic()
    build(pipeline, file_patterns, options, output_dir)
    result = pipeline.run()
    result.wait_until_finish()
    counters = _counters(result)
    logging.info("ClassStats: Beam job done in %.1f s (%s)", time.monotonic() - start,
                 ", ".join(f"{k} {v}" for k, v in counters.items()) or "no counters from this runner")
    return finalize(output_dir, options, list(file_patterns.values()), sorted(file_patterns))


def _counters(result) -> Dict[str, int]:
    """The ``class_stats`` Beam counters (records, quarantined), where the runner reports them."""
    try:
        from apache_beam.metrics.metric import MetricsFilter

        query = result.metrics().query(MetricsFilter().with_namespace("class_stats"))
        return {c.key.metric.name: int(c.committed or c.attempted or 0) for c in query["counters"]}
    except Exception:  # some runners do not support metrics queries
        return {}
