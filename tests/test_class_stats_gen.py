"""ClassStatsGen in a real TFX LocalDagRunner pipeline (ImportExampleGen -> ClassStatsGen)."""
import json
import os

import numpy as np
import pytest
from tfx import v1 as tfx

from segbalance.components.artifacts import ClassStats
from segbalance.components.class_stats_gen import ClassStatsGen
from segbalance.trainer.class_stats_io import read_class_stats, read_quarantine
from segbalance.pipeline.run_summary import latest_artifact, open_store
from segbalance.trainer.class_stats_io import read_per_image
from tests.test_class_stats_beam import (C, make_records, numpy_present_image_pixels, numpy_reference,
                                         numpy_suspects, write_tfrecord)
from segbalance.trainer.class_weights import SCHEMES, compute_class_weights

pytestmark = pytest.mark.slow


def test_component_in_local_dag_runner(tmp_path, capfd):
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
    assert stats["zero_count_classes"] == [3] and stats["class_names"] == ["bg", "a", "b", "never"]
    for scheme in SCHEMES:
        np.testing.assert_allclose(stats["weights"][scheme], compute_class_weights(
            pixel, scheme, present_image_pixels=numpy_present_image_pixels(good)))
    _, _, _, _, _, ref = numpy_reference(good)
    expected_suspects = numpy_suspects(ref, images, cooc, stats["suspect_threshold"])
    rows = {r["source_id"]: r for r in read_per_image(artifact.uri).to_dict("records")}
    assert sorted(rows) == sorted(ref)
    for sid, row in rows.items():
        assert list(row["pixel_counts"]) == ref[sid]["pixel_counts"].tolist()
        assert [list(row[k]) for k in ("present", "labeled", "missing")] == \
            [ref[sid][k] for k in ("present", "labeled", "missing")]
        assert list(row["suspect_missing"]) == expected_suspects[sid]
    log = "".join(capfd.readouterr())
    assert "ClassStatsGen: counting classes in splits ['train', 'eval']" in log
    assert f"ClassStatsGen: {len(good)} records, 4 quarantined" in log


def test_component_rejects_bad_arguments():
    channel = tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples)
    with pytest.raises(ValueError, match="labeled_policy"):
        ClassStatsGen(examples=channel, num_classes=3, labeled_policy="sometimes")
    with pytest.raises(ValueError, match="2 class names for num_classes=3"):
        ClassStatsGen(examples=channel, num_classes=3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="w_min must be <= w_max"):
        ClassStatsGen(examples=channel, num_classes=3, weight_clip=(3.0, 1.0))
    with pytest.raises(ValueError, match="beta must be in"):
        ClassStatsGen(examples=channel, num_classes=3, weight_beta=1.5)
    with pytest.raises(ValueError, match="at least one split"):
        ClassStatsGen(examples=channel, num_classes=3, splits=[])
    component = ClassStatsGen(examples=channel, num_classes=3, weight_beta=0.999, weight_damping="sqrt")
    props = component.exec_properties
    assert json.loads(props["splits"]) == ["train"] and props["ignore_index"] == 255
    assert json.loads(props["weight_options"])["beta"] == 0.999
