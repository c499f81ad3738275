"""Read a ClassStats directory (artifact URI or `segbalance stats --output`)."""
from __future__ import annotations

import json
import os
from typing import Dict, List

from segbalance.contract import PER_IMAGE_PREFIX, QUARANTINE_FILE, STATS_FILE


def read_class_stats(uri: str) -> dict:
    """``class_stats.json`` as a dict; a clear error when the folder is not a ClassStats dir."""
    import tensorflow as tf

    path = os.path.join(uri, STATS_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{uri} holds no {STATS_FILE}: is it a ClassStats artifact / `segbalance stats` output?")
    with tf.io.gfile.GFile(path) as f:
        return json.loads(f.read())


def per_image_files(uri: str) -> List[str]:
    import tensorflow as tf

    return sorted(tf.io.gfile.glob(os.path.join(uri, f"{PER_IMAGE_PREFIX}-*.parquet")))


def read_per_image(uri: str):
    """The per-image table as a pandas DataFrame (one row per image)."""
    import pandas as pd
    import pyarrow.parquet as pq

    files = per_image_files(uri)
    if not files:
        return pd.DataFrame(columns=["source_id", "split", "present", "labeled", "missing", "suspect_missing",
                                     "pixel_counts", "ignored_pixels"])
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


def labeled_by_source_id(uri: str) -> Dict[str, List[int]]:
    """{source_id: labelled class ids} from the per-image table (what the trainer joins on).

    ValueError when one source_id carries two different labelled sets (e.g. the same file
    name in two spans of a ``data.num_spans`` window): the join could not tell them apart.
    """
    table = read_per_image(uri)
    joined: Dict[str, List[int]] = {}
    for sid, labeled in zip(table["source_id"], table["labeled"]):
        labeled = [int(c) for c in labeled]
        if joined.setdefault(sid, labeled) != labeled:
            raise ValueError(f"ClassStats {uri}: source_id {sid!r} appears in several records with different "
                             f"labelled classes ({joined[sid]} and {labeled}), so the trainer cannot tell which "
                             f"set belongs to which record. Give the images unique file names (image/source_id "
                             f"is the file stem), e.g. across the spans of a data.num_spans window")
    return joined


def read_quarantine(uri: str) -> List[dict]:
    import tensorflow as tf

    path = os.path.join(uri, QUARANTINE_FILE)
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        return [json.loads(line) for line in f.read().splitlines() if line.strip()]
