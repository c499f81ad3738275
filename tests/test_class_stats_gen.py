"""ClassStatsGen in a real TFX LocalDagRunner pipeline (ImportExampleGen -> ClassStatsGen)."""
import json
import os

import numpy as np
import pytest
from tfx import v1 as tfx

from components import ClassStats
from components.class_stats_gen import ClassStatsGen
from components.class_stats_io import read_class_stats, read_quarantine
from pipeline.run_summary import latest_artifact, open_store
from tests.test_class_stats import C, make_records, numpy_reference, write_tfrecord

pytestmark = pytest.mark.slow


def test_component_in_local_dag_runner(tmp_path):
    records, good = make_records(seed=3, n=10)
    (tmp_path / "data").mkdir()
    write_tfrecord(tmp_path / "data" / "data.tfrecord", records)
    example_gen = tfx.components.ImportExampleGen(input_base=str(tmp_path / "data"))
    stats_gen = ClassStatsGen(examples=example_gen.outputs["examples"], num_classes=C,
                              class_names=["bg", "a", "b", "never"], splits=["train", "eval"])
    metadata = str(tmp_path / "metadata.sqlite")
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="class-stats-test", pipeline_root=str(tmp_path / "root"),
        components=[example_gen, stats_gen], enable_cache=True,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata),
        beam_pipeline_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"])
    tfx.orchestration.LocalDagRunner().run(pipeline)

    artifact = latest_artifact(open_store(metadata), ClassStats.TYPE_NAME)
    assert artifact is not None and os.path.isdir(artifact.uri)
    stats = read_class_stats(artifact.uri)
    pixel, images, cooc, missing, ignored, _ = numpy_reference(good)
    assert stats["splits"] == ["eval", "train"]
    assert stats["pixel_counts"] == pixel.tolist() and stats["image_counts"] == images.tolist()
    assert stats["cooccurrence"] == cooc.tolist() and stats["ignored_pixels"] == ignored
    assert stats["num_records"] == len(good) and stats["quarantined_records"] == 4
    assert len(read_quarantine(artifact.uri)) == 4
    assert artifact.custom_properties["quarantined_records"].int_value == 4


def test_component_rejects_bad_arguments():
    channel = tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples)
    with pytest.raises(ValueError, match="labeled_policy"):
        ClassStatsGen(examples=channel, num_classes=3, labeled_policy="sometimes")
    with pytest.raises(ValueError, match="2 class names for num_classes=3"):
        ClassStatsGen(examples=channel, num_classes=3, class_names=["a", "b"])
