"""Artifacts on a remote file system (a Kubeflow run's gs://, s3://): TensorFlow's ram:// file system stands
in for them. Libraries that open files themselves (pyarrow, h5py, zipfile) read and write local copies
(QA 58: the drift gate read no per-image table and judged without its sampling limits, every SegTrainer
failed at its first backup, a warm start could not read its base model)."""
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from segbalance.trainer import class_stats_io
from segbalance.trainer.remote_files import local_copy_of
from segbalance.trainer.training_callbacks import SafeBackupAndRestore


def _remote(tmp_path, name):
    return f"ram://{tmp_path.name}/{name}"


def test_per_image_tables_are_read_from_a_remote_class_stats_folder(tmp_path):
    frame = pd.DataFrame({"source_id": ["a", "b", "c"], "split": ["train"] * 3,
                          "pixel_counts": [[5, 1], [4, 0], [0, 7]], "group_id": ["g1", None, "g2"]})
    local = tmp_path / "stats"
    local.mkdir()
    frame.iloc[:2].to_parquet(local / f"{class_stats_io.PER_IMAGE_PREFIX}-00000-of-00002.parquet")
    frame.iloc[2:].to_parquet(local / f"{class_stats_io.PER_IMAGE_PREFIX}-00001-of-00002.parquet")
    remote = _remote(tmp_path, "stats")
    tf.io.gfile.makedirs(remote)
    for path in local.iterdir():
        tf.io.gfile.copy(str(path), f"{remote}/{path.name}")
    near, far = class_stats_io.read_per_image(str(local)), class_stats_io.read_per_image(remote)
    assert list(far["source_id"]) == ["a", "b", "c"] and far["group_id"].tolist() == ["g1", None, "g2"]
    pd.testing.assert_frame_equal(near, far)


def test_local_copy_of_reads_and_writes_through_a_temporary_file(tmp_path):
    remote = _remote(tmp_path, "model.keras")
    with tf.io.gfile.GFile(remote, "wb") as f:
        f.write(b"zip bytes")
    with local_copy_of(remote) as path:
        assert "://" not in path and open(path, "rb").read() == b"zip bytes"
    with local_copy_of(_remote(tmp_path, "out.weights.h5"), write=True) as path:
        assert path.endswith("out.weights.h5")
        open(path, "wb").write(b"weights")
    with tf.io.gfile.GFile(_remote(tmp_path, "out.weights.h5"), "rb") as f:
        assert f.read() == b"weights"
    with local_copy_of(str(tmp_path / "here.h5")) as path:  # a local path is used as it is
        assert path == str(tmp_path / "here.h5")


def _model(seed):
    keras = tf.keras
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_a_training_backup_on_a_remote_folder_is_written_and_resumed(tmp_path):
    backup = _remote(tmp_path, "backup")
    x, y = np.ones((8, 3), np.float32), np.zeros((8, 2), np.float32)
    trained = _model(0)

    class Stop(tf.keras.callbacks.Callback):  # a run killed after its second epoch
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trained.fit(x, y, epochs=5, verbose=0, callbacks=[SafeBackupAndRestore(backup), Stop()])
    assert tf.io.gfile.exists(f"{backup}/latest.weights.h5")
    resumed = _model(1)  # other initial weights: the backup's replace them
    started = []

    class First(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if not started:
                started.append((epoch, [w.copy() for w in self.model.get_weights()]))

    resumed.fit(x, y, epochs=3, verbose=0, callbacks=[SafeBackupAndRestore(backup), First()])
    epoch, weights = started[0]
    assert epoch == 2  # two epochs were done
    for a, b in zip(weights, trained.get_weights()):
        np.testing.assert_allclose(a, b)


def test_a_push_to_a_remote_destination_copies_the_files_saved_model_last(tmp_path, monkeypatch):
    """ram:// moved the staging folder's entry only: the executor said pushed and the version was empty."""
    from tfx.dsl.io import fileio

    from segbalance.components import staged_pusher

    source, target = _remote(tmp_path, "serving/.incoming-1/1700000000"), _remote(tmp_path, "serving/1700000000")
    for name, data in (("variables/variables.index", b"index"), ("saved_model.pb", b"graph"),
                       ("variables/variables.data-00000-of-00001", b"data"), ("model.keras", b"keras")):
        fileio.makedirs(os.path.dirname(f"{source}/{name}"))
        with fileio.open(f"{source}/{name}", "wb") as f:
            f.write(data)
    order = []
    real = fileio.copy
    monkeypatch.setattr(fileio, "copy", lambda a, b, overwrite=False: (order.append(b), real(a, b, overwrite))[1])
    staged_pusher.move_folder(source, target)
    assert order[-1] == f"{target}/saved_model.pb" and len(order) == 4
    with fileio.open(f"{target}/variables/variables.data-00000-of-00001", "rb") as f:
        assert f.read() == b"data"
    local = tmp_path / "stage"
    (local / "v").mkdir(parents=True)
    (local / "v" / "saved_model.pb").write_bytes(b"graph")
    staged_pusher.move_folder(str(local / "v"), str(tmp_path / "final"))  # local: one rename
    assert (tmp_path / "final" / "saved_model.pb").read_bytes() == b"graph" and not (local / "v").exists()
