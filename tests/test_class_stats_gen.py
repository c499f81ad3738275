"""ClassStatsGen in a real TFX LocalDagRunner pipeline (ImportExampleGen -> ClassStatsGen)."""
import json
import os

import numpy as np
import pytest
from tfx import v1 as tfx

from segbalance.components.artifacts import ClassStats
from segbalance.components.class_stats_gen import ClassStatsGen
from segbalance.components.component_config import StatsConfig
from segbalance.trainer.class_stats_io import read_class_stats, read_quarantine
from segbalance.pipeline.local_dag import run_dag_locally
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
    run_dag_locally(pipeline)

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
    clip = StatsConfig().clip  # the component's default is the config's (it was no clip)
    for scheme in SCHEMES:
        np.testing.assert_allclose(stats["weights"][scheme], compute_class_weights(
            pixel, scheme, present_image_pixels=numpy_present_image_pixels(good), clip=clip))
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
    assert "counting classes in splits ['train', 'eval']" in log
    assert f"ClassStatsGen: {len(good)} records, 4 quarantined" in log


def test_component_rejects_bad_arguments():
    channel = tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples)
    with pytest.raises(ValueError, match="labeled_policy"):
        ClassStatsGen(examples=channel, num_classes=3, labeled_policy="sometimes")
    with pytest.raises(ValueError, match="2 class names for num_classes=3"):
        ClassStatsGen(examples=channel, num_classes=3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="give 0 <= w_min <= w_max"):
        ClassStatsGen(examples=channel, num_classes=3, weight_clip=(3.0, 1.0))
    with pytest.raises(ValueError, match="beta must be in"):
        ClassStatsGen(examples=channel, num_classes=3, weight_beta=1.5)
    with pytest.raises(ValueError, match="at least one split"):
        ClassStatsGen(examples=channel, num_classes=3, splits=[])
    component = ClassStatsGen(examples=channel, num_classes=3, weight_beta=0.999, weight_damping="sqrt")
    props = component.exec_properties
    assert json.loads(props["splits"]) == ["train"] and props["ignore_index"] == 255
    assert json.loads(props["weight_options"])["beta"] == 0.999


# --------------------------------------------------------------------------- the quarantine protects training
def _first_name(prefix: str, split: str, config) -> str:
    """The first ``prefix<k>`` ImportExampleGen puts in ``split`` (dag.split_of: tested against TFX's
    partition function in tests/test_group_split.py)."""
    from segbalance.pipeline.dag import split_of

    return next(f"{prefix}{k}" for k in range(1000) if split_of(f"{prefix}{k}", config) == split)


def _read_gz_records(folder: str):
    import glob

    import tensorflow as tf

    files = sorted(glob.glob(os.path.join(folder, "data_tfrecord-*.gz")))
    assert files, folder
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def test_quarantined_records_reach_no_transform_trainer_or_evaluator(tmp_path, capfd):
    """The real DAG (pipeline/dag.py, without drift gate and report) on data with a record without
    image (train), an RGB mask (train) and a corrupt mask (eval): Transform, SegTrainer and
    SegEvaluator run on ClassStatsGen's clean examples only; the counts agree everywhere."""
    from segbalance.pipeline.config import config_from_dict
    from segbalance.pipeline.dag import create_pipeline, split_of as dag_split_of
    from segbalance.trainer import example_codec as codec
    from tests.trainer_inputs import make_image_and_mask

    config = config_from_dict({
        "classes": {"names": ["background", "square", "bar"]},
        "training": {"image_size": [16, 16], "epochs": 1, "batch_size": 2, "depth": 2, "base_filters": 4},
        "evaluation": {"miou_threshold": 0.0, "tolerance": 1.0}})
    rng = np.random.default_rng(0)
    good = {}
    for k in range(14):
        image, mask = make_image_and_mask(rng, 16, 16)
        good[f"img{k}"] = codec.build_example(codec.encode_png(image), codec.encode_png(mask), f"img{k}",
                                              16, 16).SerializeToString()
    image, mask = make_image_and_mask(rng, 16, 16)
    no_image = codec.build_example(codec.encode_png(image), codec.encode_png(mask),
                                   _first_name("noimage", "train", config), 16, 16)
    del no_image.features.feature[codec.IMAGE_KEY]
    rgb_mask = codec.build_example(codec.encode_png(image), codec.encode_png(np.stack([mask] * 3, -1)),
                                   _first_name("rgbmask", "train", config), 16, 16)
    corrupt = codec.build_example(codec.encode_png(image), codec.encode_png(mask)[:40],
                                  _first_name("corrupt", "eval", config), 16, 16)
    bad = {ex.features.feature[codec.SOURCE_ID_KEY].bytes_list.value[0].decode(): ex.SerializeToString()
           for ex in (no_image, rgb_mask, corrupt)}
    split_of = {sid: dag_split_of(sid, config) for sid in [*good, *bad]}
    good_by_split = {s: {sid for sid in good if split_of[sid] == s} for s in ("train", "eval")}
    assert len(good_by_split["train"]) >= 4 and len(good_by_split["eval"]) >= 1, good_by_split
    (tmp_path / "data" / "Span-0").mkdir(parents=True)
    write_tfrecord(tmp_path / "data" / "Span-0" / "data-00000.tfrecord", [*good.values(), *bad.values()])

    metadata = str(tmp_path / "metadata.sqlite")
    pipeline = create_pipeline(
        config, str(tmp_path / "data"), str(tmp_path / "root"), str(tmp_path / "serving"),
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata),
        with_drift=False, with_report=False,
        beam_pipeline_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"])
    nodes = {node.id: node for node in pipeline.components}
    for consumer in ("Transform", "SegTrainer", "SegEvaluator"):  # the wiring: clean examples in
        channel = nodes[consumer].inputs["examples"]
        assert (channel.producer_component_id, channel.output_key) == ("ClassStatsGen", "clean_examples"), consumer
    for reporter in ("StatisticsGen",):  # TFDV still sees (and reports on) the raw records
        assert nodes[reporter].inputs["examples"].producer_component_id == "ImportExampleGen"
    run_dag_locally(pipeline)

    store = open_store(metadata)
    stats_uri = latest_artifact(store, ClassStats.TYPE_NAME).uri
    stats = read_class_stats(stats_uri)
    # ClassStatsGen: every split checked, counts from train only
    assert stats["splits"] == ["train"] and stats["checked_splits"] == ["eval", "train"]
    assert stats["split_counts"] == {
        "train": {"read": len(good_by_split["train"]) + 2, "kept": len(good_by_split["train"]), "quarantined": 2,
                  "quarantined_by_kind": {"bad_mask": 1, "no_image": 1}},
        "eval": {"read": len(good_by_split["eval"]) + 1, "kept": len(good_by_split["eval"]), "quarantined": 1,
                 "quarantined_by_kind": {"bad_mask": 1}}}
    assert stats["num_records"] == len(good_by_split["train"]) and stats["quarantined_records"] == 2
    assert [p.split("/Split-")[1] for p in stats["checked_inputs"]] == ["eval/*", "train/*"]
    from segbalance.pipeline.report import classes_sections  # the report says how many were left out

    counts = stats["split_counts"]
    body = classes_sections(stats)[0].body
    assert f"train {counts['train']['read']} / {counts['train']['kept']} / 2" in body
    assert f"eval {counts['eval']['read']} / {counts['eval']['kept']} / 1" in body
    quarantine = {q["source_id"]: q for q in read_quarantine(stats_uri)}
    assert set(quarantine) == set(bad)
    by_kind = {q["kind"]: q for q in quarantine.values()}
    assert by_kind["no_image"]["split"] == "train" and "no image" in by_kind["no_image"]["reason"]
    rgb, = [q for q in quarantine.values() if q["source_id"].startswith("rgbmask")]
    assert rgb["split"] == "train" and "single-channel" in rgb["reason"] and "RGB" in rgb["reason"]
    broken, = [q for q in quarantine.values() if q["source_id"].startswith("corrupt")]
    assert broken["split"] == "eval" and "cannot decode mask" in broken["reason"]

    # the clean examples: exactly the good records of each split, their bytes as ImportExampleGen wrote them
    import tensorflow as tf

    def source_id(record):
        return tf.train.Example.FromString(record).features.feature[codec.SOURCE_ID_KEY].bytes_list.value[0].decode()

    raw_uri = _only_dir(tmp_path / "root" / "ImportExampleGen" / "examples")
    clean_uri = _only_dir(tmp_path / "root" / "ClassStatsGen" / "clean_examples")
    for split in ("train", "eval"):
        raw = _read_gz_records(os.path.join(raw_uri, f"Split-{split}"))
        records = _read_gz_records(os.path.join(clean_uri, f"Split-{split}"))
        assert sorted(map(source_id, records)) == sorted(good_by_split[split]), split
        assert sorted(records) == sorted(r for r in raw if source_id(r) in good), split
    # what the trainer and the evaluator read
    model_run = _only_dir(tmp_path / "root" / "SegTrainer" / "model_run")
    summary = json.loads(open(os.path.join(model_run, "training_summary.json")).read())
    assert summary["num_train_records"] == stats["split_counts"]["train"]["kept"]
    evaluation = json.loads(open(os.path.join(_only_dir(tmp_path / "root" / "SegEvaluator" / "evaluation"),
                                              "evaluation.json")).read())
    assert evaluation["num_images"] == stats["split_counts"]["eval"]["kept"]
    printed = "".join(capfd.readouterr())
    assert "records passed on (kept / read): " in printed
    # every split's quarantined records, on the console and in the run's summary (the counted line said 2:
    # train's only, and the summary named none; QA, session 23)
    assert f"3 quarantined in all, each with its reason in {stats_uri}/quarantine.jsonl" in printed
    from segbalance.pipeline.run import print_summary
    from segbalance.pipeline.run_summary import summarize

    summary = summarize({"metadata": metadata, "output_dir": str(tmp_path)})
    read = counts["train"]["read"] + counts["eval"]["read"]
    assert summary["quarantined"] == {"records": 3, "by_split": {"eval": 1, "train": 2}, "read": read,
                                      "list": f"{stats_uri}/quarantine.jsonl"}
    print_summary({**summary, "seconds": 1.0, "log": "run.log"})
    assert (f"  quarantined:      3 of {read} records (eval 1, train 2), kept out of training and evaluation "
            f"(each with its reason: {stats_uri}/quarantine.jsonl)") in capfd.readouterr().out


def _only_dir(folder):
    found = [p for p in folder.iterdir() if p.is_dir()]
    assert len(found) == 1, found
    return str(found[0])


def test_clean_examples_keep_span_and_version_properties():
    """The clean Examples describe the same data: span/version as properties and as the custom
    properties KFP v2 uses (``custom:span``), split names and format."""
    from tfx.types import standard_artifacts

    from segbalance.components.class_stats_gen import copy_examples_properties

    source = standard_artifacts.Examples()
    source.split_names = '["train", "eval"]'
    source.span, source.version = 3, 1
    source.set_int_custom_property("span", 7)
    source.set_float_custom_property("version", 2.0)
    target = standard_artifacts.Examples()
    copy_examples_properties(source, target)
    assert (target.span, target.version, target.split_names) == (3, 1, '["train", "eval"]')
    assert target.get_int_custom_property("span") == 7 and target.get_int_custom_property("version") == 2
    plain = standard_artifacts.Examples()
    copy_examples_properties(standard_artifacts.Examples(), plain)
    assert not plain.has_custom_property("span")
