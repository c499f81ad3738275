"""Files on a remote file system (a Kubeflow run's gs://, s3://: TensorFlow's file systems) for libraries
that open files themselves: h5py (Keras weights), zipfile (``model.keras``), pyarrow (Parquet, whose own
file systems know neither a minio endpoint nor TensorFlow's credentials). QA 58: on a cluster the drift
gate read no per-image table and judged without its sampling limits, every SegTrainer failed at its first
backup, and a warm start or ``backbone_weights`` file could not be read.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator


def is_remote(path: str) -> bool:
    return "://" in str(path)


@contextlib.contextmanager
def local_copy_of(path: str, write: bool = False) -> Iterator[str]:
    """A local path for ``path``: the path itself when it is local; else a temporary file of the same name,
    copied from ``path`` first (reading) or to it at the end of the block (``write``)."""
    if not is_remote(path):
        yield path
        return
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="segbalance-") as scratch:
        local = os.path.join(scratch, path.rstrip("/").rsplit("/", 1)[-1])
        if not write:
            tf.io.gfile.copy(path, local, overwrite=True)
        yield local
        if write:
            tf.io.gfile.copy(local, path, overwrite=True)


def readable(path: str):
    """``path`` for pyarrow: a local path as it is, a remote file as a buffer of its bytes."""
    if not is_remote(path):
        return path
    import pyarrow as pa
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "rb") as f:
        return pa.BufferReader(f.read())
