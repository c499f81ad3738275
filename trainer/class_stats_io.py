"""Read a ClassStats directory (artifact URI or `segbalance stats --output`)."""
from __future__ import annotations

import glob
import json
import os
from typing import Dict, List

from segbalance.contract import PER_IMAGE_PREFIX, QUARANTINE_FILE, STATS_FILE, UNCOUNTED_PER_IMAGE_PREFIX, UserError

FIX = "the file was edited by hand or is damaged: regenerate it (`segbalance stats`, or rerun ClassStatsGen)"


class ClassStatsFileError(UserError, ValueError):
    """A class_stats.json that is not valid JSON or has a value of the wrong type."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _counts(v) -> bool:
    return isinstance(v, list) and all(_is_int(x) and x >= 0 for x in v)


_CHECKS = {  # key -> (test, what it must be); keys are checked when present
    "num_classes": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "class_names": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "ignore_index": (_is_int, "an integer"),
    "labeled_policy": (lambda v: v in ("complete", "partial"), "'complete' or 'partial'"),
    "splits": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of split names"),
    "checked_splits": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of split names"),
    "zero_count_classes": (lambda v: isinstance(v, list) and all(_is_int(x) for x in v), "a list of class ids"),
    "suspect_threshold": (_is_number, "a number"),
    "cooccurrence": (lambda v: isinstance(v, list) and all(_counts(r) for r in v),
                     "a list of lists of non-negative integers"),
    "weights": (lambda v: isinstance(v, dict) and all(isinstance(w, list) and all(_is_number(x) for x in w)
                                                      for w in v.values()), "a mapping of scheme to a list of numbers"),
    "split_counts": (lambda v: isinstance(v, dict) and all(
        isinstance(c, dict) and all(_is_int(c.get(k, 0)) and c.get(k, 0) >= 0 for k in ("read", "kept", "quarantined"))
        for c in v.values()), "a mapping of split to read/kept/quarantined counts"),
}
for _key in ("pixel_counts", "image_counts", "present_image_pixels", "missing_image_counts"):
    _CHECKS[_key] = (_counts, "a list of non-negative integers")
for _key in ("num_records", "quarantined_records", "ignored_pixels", "total_pixels", "images_with_missing"):
    _CHECKS[_key] = (lambda v: _is_int(v) and v >= 0, "a non-negative integer")
PER_CLASS = ("class_names", "pixel_counts", "image_counts", "present_image_pixels", "missing_image_counts",
             "cooccurrence")


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_class_stats(stats, path: str) -> dict:
    """``stats`` when every key present has its type and the per-class lists agree in length;
    ClassStatsFileError naming the file and the key otherwise (a file may hold a subset of keys)."""
    if not isinstance(stats, dict):
        raise ClassStatsFileError(f"{path} holds {type(stats).__name__}, not a JSON object; {FIX}")
    for key, (test, what) in _CHECKS.items():
        if key in stats and not test(stats[key]):
            raise ClassStatsFileError(f"{path}: {key} must be {what}, got {_short(stats[key])}; {FIX}")
    sizes = {k: len(stats[k]) for k in PER_CLASS if k in stats}
    sizes.update({f"weights[{s}]": len(w) for s, w in stats.get("weights", {}).items()})
    if "num_classes" in stats:
        sizes["num_classes"] = stats["num_classes"]
    if len(set(sizes.values())) > 1:
        raise ClassStatsFileError(f"{path}: the per-class entries disagree on the number of classes "
                                  f"({', '.join(f'{k} {n}' for k, n in sizes.items())}); {FIX}")
    return stats


def read_class_stats(uri: str) -> dict:
    """``class_stats.json`` as a dict; a clear error when the folder is not a ClassStats dir, the file is
    not JSON or a value has the wrong type (``check_class_stats``)."""
    import tensorflow as tf

    path = os.path.join(uri, STATS_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{uri} holds no {STATS_FILE}: is it a ClassStats artifact / `segbalance stats` output?")
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    try:
        stats = json.loads(text)
    except ValueError as exc:
        raise ClassStatsFileError(f"{path} is not valid JSON ({exc}); {FIX}") from None
    return check_class_stats(stats, path)


def per_image_files(uri: str, prefix: str = PER_IMAGE_PREFIX) -> List[str]:
    """The per-image Parquet shards of a ClassStats folder; a local folder without TensorFlow (`segbalance stats`
    imports none: QA 96 saw its repeated-id check import it after the job) and with its name taken literally."""
    from segbalance.trainer.remote_files import is_remote

    if not is_remote(uri):
        return sorted(glob.glob(os.path.join(glob.escape(uri), f"{prefix}-*.parquet")))
    import tensorflow as tf

    return sorted(tf.io.gfile.glob(os.path.join(uri, f"{prefix}-*.parquet")))


def read_per_image(uri: str, prefix: str = PER_IMAGE_PREFIX):
    """The per-image table as a pandas DataFrame (one row per image): of the counted splits, or
    with ``prefix=UNCOUNTED_PER_IMAGE_PREFIX`` of the splits only checked (e.g. eval)."""
    import pandas as pd
    import pyarrow.parquet as pq

    from segbalance.trainer.remote_files import readable

    files = per_image_files(uri, prefix)
    if not files:
        return pd.DataFrame(columns=["source_id", "split", "present", "labeled", "missing", "suspect_missing",
                                     "pixel_counts", "ignored_pixels", "group_id", "content_crc32"])
    # pyarrow has file systems of its own: a remote file is read as bytes through TensorFlow's (QA 58)
    return pd.concat([pq.read_table(readable(f)).to_pandas() for f in files], ignore_index=True)


def read_every_per_image(uri: str, counted=None):
    """The per-image rows of every split ClassStatsGen checked, counted or not, as one DataFrame; ``counted``:
    the counted splits' rows when already read (``read_per_image``)."""
    import pandas as pd

    counted = read_per_image(uri) if counted is None else counted
    checked = read_per_image(uri, UNCOUNTED_PER_IMAGE_PREFIX)
    return pd.concat([counted, checked], ignore_index=True) if len(checked) else counted


class DuplicateSourceIdError(UserError, ValueError):
    """One source_id on records with different labelled classes: the user's data to fix (one line, exit 2)."""


def labeled_by_source_id(uri: str) -> Dict[str, List[int]]:
    """{source_id: labelled class ids} from the per-image tables of every split ClassStatsGen
    checked, counted or not (what the trainer joins on: training and validation batches).

    DuplicateSourceIdError (a ValueError) when one source_id carries two different labelled sets (e.g.
    the same file name in two spans of a ``data.num_spans`` window): the join could not tell them apart.
    """
    table = read_every_per_image(uri)
    joined: Dict[str, List[int]] = {}
    for sid, labeled in zip(table["source_id"], table["labeled"]):
        labeled = [int(c) for c in labeled]
        if joined.setdefault(sid, labeled) != labeled:
            raise DuplicateSourceIdError(
                f"ClassStats {uri}: source_id {sid!r} appears in several records with different labelled classes "
                f"({joined[sid]} and {labeled}), so the trainer cannot tell which set belongs to which record. "
                f"Give the images unique file names (image/source_id is the file stem), e.g. across the spans of "
                f"a data.num_spans window")
    return joined


def read_quarantine(uri: str) -> List[dict]:
    import tensorflow as tf

    path = os.path.join(uri, QUARANTINE_FILE)
    if not tf.io.gfile.exists(path):
        return []
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            lines = f.read().decode("utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except ValueError as exc:  # a damaged file (QA 69: the decoder's words alone, naming no file)
        raise ClassStatsFileError(f"{path} is not JSON lines ({exc}); {FIX}") from None
