"""`data.split_by: group`: crops of one scene / scan / tile are never on both sides of the split.

ImportExampleGen hashes ``image/group_id`` (written by `segbalance ingest --groups`, or from the data
folder's ``groups.json`` by `segbalance run`) instead of ``image/source_id``."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from segbalance.contract import GROUP_KEY, GROUPS_FILE, SOURCE_ID_KEY
from segbalance.pipeline import cli, ingest, sample_data
from segbalance.pipeline.config import ConfigError, config_from_dict
from segbalance.pipeline.local_dag import run_dag_locally
from segbalance.pipeline.dag import example_gen_component, local_paths, split_feature, split_of
from segbalance.pipeline.run import check_span_groups, prepare_data
from segbalance.trainer import example_codec as codec


def _config(tmp_path, **data):
    return config_from_dict({"data": data, "output_dir": str(tmp_path / "out")})


@pytest.mark.parametrize("eval_fraction", [0.1, 0.2, 0.5])
def test_split_of_is_the_split_tfx_gives(tmp_path, eval_fraction):
    """Reference: TFX's own partition function on a record carrying both keys."""
    from tfx.components.example_gen.base_example_gen_executor import _PartitionFn
    from tfx.proto import example_gen_pb2

    for split_by in ("record", "group"):
        config = _config(tmp_path, eval_fraction=eval_fraction, split_by=split_by)
        buckets = round(10 * eval_fraction)
        split_config = example_gen_pb2.SplitConfig(
            splits=[example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=10 - buckets),
                    example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=buckets)],
            partition_feature_name=split_feature(config))
        sides = set()
        for k in range(60):
            record = codec.build_example(b"i", b"m", f"img{k}", 1, 1, group=f"tile{k % 23}-é")
            value = f"tile{k % 23}-é" if split_by == "group" else f"img{k}"
            tfx_side = ("train", "eval")[_PartitionFn(record, 2, [10 - buckets, 10], split_config)]
            assert split_of(value, config) == tfx_side
            sides.add(tfx_side)
        assert sides == {"train", "eval"}
    assert split_feature(_config(tmp_path)) == SOURCE_ID_KEY
    assert split_feature(_config(tmp_path, split_by="group")) == GROUP_KEY


def test_split_by_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="data.split_by: 'scene' is not allowed"):
        _config(tmp_path, split_by="scene")


def _grouped_data(root, groups_per_image):
    """shapes images whose groups.json says ``groups_per_image(stem)``."""
    folder = sample_data.write_sample_data("shapes", root, num_images=30, size=16, seed=4)
    stems = sorted(p.stem for p in (folder / "images").iterdir())
    (folder / GROUPS_FILE).write_text(json.dumps({s: groups_per_image(i) for i, s in enumerate(stems)}))
    return folder, stems


@pytest.mark.slow
def test_importexamplegen_keeps_each_group_in_one_split(tmp_path):
    """The pipeline's own ImportExampleGen (dag.example_gen_component) on data that `run` ingested with
    groups: every group's records are in one split, the one split_of names; by record (the default)
    the same groups straddle both splits."""
    from tfx import v1 as tfx

    folder, stems = _grouped_data(tmp_path / "raw", lambda i: f"scene{i // 3}")
    groups = json.loads((folder / GROUPS_FILE).read_text())
    for split_by in ("group", "record"):
        config = _config(tmp_path / split_by, dir=str(folder), split_by=split_by)
        paths = local_paths(str(tmp_path / split_by / "out"))
        examples_dir, _ = prepare_data(config, paths)
        example_gen = example_gen_component(config, examples_dir)
        pipeline = tfx.dsl.Pipeline(
            pipeline_name="group-split", pipeline_root=str(tmp_path / split_by / "root"), components=[example_gen],
            metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
                str(tmp_path / split_by / "metadata.sqlite")),
            beam_pipeline_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"])
        run_dag_locally(pipeline)
        side = {}
        for split in ("train", "eval"):
            root = tmp_path / split_by / "root"
            files = sorted(str(p) for p in root.glob(f"ImportExampleGen/examples/*/Split-{split}/*"))
            for raw in tf.data.TFRecordDataset(files, compression_type="GZIP"):
                record = codec.parse_record(raw.numpy())
                side[record.source_id] = split
                assert record.group == groups[record.source_id]  # by record too: the drift gate counts groups
        assert sorted(side) == stems
        by_group = {}
        for stem, split in side.items():
            by_group.setdefault(groups[stem], set()).add(split)
        if split_by == "group":
            assert all(len(s) == 1 for s in by_group.values())
            assert {g: s.pop() for g, s in by_group.items()} == {g: split_of(g, config) for g in by_group}
        else:
            assert any(len(s) == 2 for s in by_group.values())  # what the group split prevents
            assert side == {stem: split_of(stem, config) for stem in stems}


def test_run_refuses_a_group_split_it_cannot_make(tmp_path, capsys):
    """No groups.json, one group only, a group per image missing, Span-N records without groups: each a
    ConfigError naming the file and what to do, before anything is ingested."""
    folder, stems = _grouped_data(tmp_path / "raw", lambda i: "one-scene")
    paths = local_paths(str(tmp_path / "out"))
    config = _config(tmp_path, dir=str(folder), split_by="group")
    with pytest.raises(ConfigError, match=r"none of the 1 groups in .*groups.json hashes into the (eval|train) split"):
        prepare_data(config, paths)
    (folder / GROUPS_FILE).unlink()
    with pytest.raises(ConfigError, match=r"data.split_by: group needs .*groups.json \(\{image stem: group\}"):
        prepare_data(config, paths)
    assert not (tmp_path / "out" / "data").exists()  # nothing ingested
    # through the CLI: exit 2 and one line
    (tmp_path / "c.yaml").write_text(json.dumps({"data": {"dir": str(folder), "split_by": "group"},
                                                 "output_dir": str(tmp_path / "out")}))
    assert cli.main(["run", "--config", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "groups.json" in err[0] and "data.split_by: record" in err[0]
    # Span-N folders ingested without --groups
    ingest.ingest(folder / "images", folder / "masks", tmp_path / "spans", span=0)
    spans = _config(tmp_path, dir=str(tmp_path / "spans"), split_by="group")
    with pytest.raises(ConfigError, match=r"the records in .*Span-0 have no image/group_id; ingest them again"):
        prepare_data(spans, paths)
    # data.num_spans: 2 reads an earlier span too: it must have groups as well
    ingest.ingest(folder / "images", folder / "masks", tmp_path / "spans", span=1,
                  options=ingest.IngestOptions(groups={s: "g" for s in stems}))
    prepare_data(_config(tmp_path, dir=str(tmp_path / "spans"), split_by="group"), paths)  # Span-1 only: fine
    two = _config(tmp_path, dir=str(tmp_path / "spans"), split_by="group", num_spans=2)
    with pytest.raises(ConfigError, match=r"the records in .*Span-0 have no image/group_id"):
        prepare_data(two, paths)
    # with groups: the split is made and says how
    groups = {s: f"scene{i % 6}" for i, s in enumerate(stems)}
    (folder / GROUPS_FILE).write_text(json.dumps(groups))
    (folder / "images" / "notes.txt").write_text("not an image: ingest skips it, so does the count")
    capsys.readouterr()
    prepare_data(config, paths)
    printed = capsys.readouterr().out
    evaluated = sorted({g for g in groups.values() if split_of(g, config) == "eval"})
    in_eval = sum(groups[s] in evaluated for s in stems)
    assert f"data: split by group: {len(evaluated)} of 6 groups ({in_eval} of {len(stems)} images)" in printed
    # a split by record writes groups.json's group ids too (the drift gate counts in groups), and does not
    # need groups on both sides
    (folder / GROUPS_FILE).write_text(json.dumps({s: "one-scene" for s in stems}))
    plain = _config(tmp_path / "plain", dir=str(folder))
    examples_dir, _ = prepare_data(plain, local_paths(str(tmp_path / "plain" / "out")))
    written = sorted(str(p) for p in (tmp_path / "plain" / "out" / "data").rglob("data-*"))
    assert {codec.parse_record(r.numpy()).group for r in tf.data.TFRecordDataset(written)} == {"one-scene"}


def test_a_split_by_record_refuses_images_without_a_group_naming_the_file(tmp_path, capsys):
    """groups.json read by a split by record: an image without a group is refused as `ingest --groups`
    refuses it, in one line naming the file and both ways out; nothing is written."""
    folder, stems = _grouped_data(tmp_path / "raw", lambda i: f"scene{i % 4}")
    groups = json.loads((folder / GROUPS_FILE).read_text())
    del groups[stems[3]], groups[stems[7]]
    (folder / GROUPS_FILE).write_text(json.dumps(groups))
    (tmp_path / "c.yaml").write_text(json.dumps({"data": {"dir": str(folder)}, "output_dir": str(tmp_path / "out")}))
    assert cli.main(["run", "--config", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"{folder / GROUPS_FILE}: 2 of {len(stems)} images have no group ({stems[3]}, {stems[7]})" in err[0]
    assert f"or remove {folder / GROUPS_FILE}" in err[0] and "--groups" not in err[0]
    assert not list((tmp_path / "out").rglob("data-*"))


def test_a_window_refused_for_groups_leaves_no_span_and_split_by_alone_does_not_reingest(tmp_path, capsys):
    """A split_by: group window over an earlier span without group ids was refused after the new span
    had been ingested; following the advice (split_by: record) ingested the same images again, and the
    window trained on them twice."""
    from segbalance.pipeline.spans import list_spans

    first, _ = _grouped_data(tmp_path / "raw1", lambda i: f"a{i % 6}")
    (first / GROUPS_FILE).unlink()
    paths = local_paths(str(tmp_path / "out"))
    prepare_data(_config(tmp_path, dir=str(first)), paths)  # no groups.json: Span-0 has no group ids
    second, _ = _grouped_data(tmp_path / "raw2", lambda i: f"b{i % 6}")
    with pytest.raises(ConfigError, match=r"the records in .*Span-0 have no image/group_id"):
        prepare_data(_config(tmp_path, dir=str(second), split_by="group", num_spans=2), paths)
    assert list_spans(tmp_path / "out" / "data") == [0]  # refused before the new span was written
    # ingested once with groups, the same data by record (split_by alone changed) is that span, not a new one
    prepare_data(_config(tmp_path, dir=str(second), split_by="group"), paths)
    assert list_spans(tmp_path / "out" / "data") == [0, 1]
    prepare_data(_config(tmp_path, dir=str(second), num_spans=2), paths)
    assert list_spans(tmp_path / "out" / "data") == [0, 1]
    # ... and the other way: a split by record wrote groups.json's ids, which a split by group uses
    third, _ = _grouped_data(tmp_path / "raw3", lambda i: f"c{i % 6}")
    prepare_data(_config(tmp_path, dir=str(third)), paths)
    prepare_data(_config(tmp_path, dir=str(third), split_by="group"), paths)
    assert list_spans(tmp_path / "out" / "data") == [0, 1, 2]
    (third / GROUPS_FILE).write_text((third / GROUPS_FILE).read_text().replace('"c0"', '"c9"'))
    capsys.readouterr()
    prepare_data(_config(tmp_path, dir=str(third)), paths)
    assert list_spans(tmp_path / "out" / "data") == [0, 1, 2]
    assert "changed: its records keep the earlier group ids" in capsys.readouterr().out
    # groups.json written after its images were ingested: a split by record keeps the span and says so; new
    # data from the folder takes the file's ids
    fourth, _ = _grouped_data(tmp_path / "raw4", lambda i: f"d{i % 6}")
    groups = (fourth / GROUPS_FILE).read_text()
    (fourth / GROUPS_FILE).unlink()
    prepare_data(_config(tmp_path, dir=str(fourth)), paths)
    (fourth / GROUPS_FILE).write_text(groups)
    capsys.readouterr()
    prepare_data(_config(tmp_path, dir=str(fourth)), paths)
    out = capsys.readouterr().out
    assert list_spans(tmp_path / "out" / "data") == [0, 1, 2, 3]
    assert (f"{tmp_path / 'out' / 'data' / 'Span-3'} was ingested before {fourth / GROUPS_FILE} was read: its "
            f"records keep no group ids, which the drift gate counts in; the next span ingested from this folder "
            f"takes the file's") in out
    (fourth / GROUPS_FILE).write_text(groups.replace('"d0"', '"d9"'))  # changed: the span keeps the earlier ids
    capsys.readouterr()
    prepare_data(_config(tmp_path, dir=str(fourth)), paths)
    assert list_spans(tmp_path / "out" / "data") == [0, 1, 2, 3] and "keep no group ids" in capsys.readouterr().out
    for folder in ("images", "masks"):  # new data from the folder: a new span, with the file's group ids
        (fourth / folder / sorted(p.name for p in (fourth / folder).iterdir())[0]).unlink()
    prepare_data(_config(tmp_path, dir=str(fourth)), paths)
    assert list_spans(tmp_path / "out" / "data") == [0, 1, 2, 3, 4]
    check_span_groups(tmp_path / "out" / "data", span=4)  # refuses records without image/group_id
    prepare_data(_config(tmp_path, dir=str(fourth), split_by="group"), paths)
    assert list_spans(tmp_path / "out" / "data") == [0, 1, 2, 3, 4]  # with ids already: reused


def test_a_span_is_reused_from_its_own_marker(tmp_path):
    """What `run` ingested is recorded in the span's marker, renamed into place with the records: a run
    killed after that rename (before a separate file recorded it) does not make the next run ingest the
    same data again as a new span. Spans recorded by earlier versions' source_fingerprint.json are still
    reused."""
    from segbalance.pipeline import output_guard
    from segbalance.pipeline.run import FINGERPRINT_FILE, SOURCE_KEY
    from segbalance.pipeline.spans import list_spans

    folder, _ = _grouped_data(tmp_path / "raw", lambda i: f"s{i % 5}")
    paths = local_paths(str(tmp_path / "out"))
    data = tmp_path / "out" / "data"
    prepare_data(_config(tmp_path, dir=str(folder)), paths)
    (data / FINGERPRINT_FILE).unlink(missing_ok=True)  # the kill: nothing recorded beside the span
    prepare_data(_config(tmp_path, dir=str(folder)), paths)
    assert list_spans(data) == [0]
    recorded = output_guard.read_marker(data / "Span-0")[SOURCE_KEY]
    assert recorded["source"] == str(folder) and recorded["with_groups"] is True
    # a span an earlier version ingested: its marker holds no record, source_fingerprint.json does
    output_guard.write_marker(data / "Span-0", "ingest", target="Span-0")
    (data / FINGERPRINT_FILE).write_text(json.dumps({**recorded, "span": 0}))
    prepare_data(_config(tmp_path, dir=str(folder)), paths)
    assert list_spans(data) == [0]
    # ... unless the span was written again after it (`ingest --overwrite`): the stamp no longer describes it
    os.utime(data / FINGERPRINT_FILE, ns=(1, 1))
    prepare_data(_config(tmp_path, dir=str(folder)), paths)
    assert list_spans(data) == [0, 1]
    output_guard.write_marker(data / "Span-1", "ingest", target="Span-1")
    (data / FINGERPRINT_FILE).write_text(json.dumps({**recorded, "span": 5}))  # names another span: not this one
    prepare_data(_config(tmp_path, dir=str(folder)), paths)
    assert list_spans(data) == [0, 1, 2]
    # QA 61: a stamp of 4984419 and before has no plain_fingerprint; that run read no groups.json, so its
    # fingerprint is the plain one: the folder is the same data (it was ingested again as a new span)
    output_guard.write_marker(data / "Span-2", "ingest", target="Span-2")
    (data / FINGERPRINT_FILE).write_text(json.dumps({"fingerprint": recorded["plain_fingerprint"],
                                                     "source": str(folder), "span": 2}))
    prepare_data(_config(tmp_path, dir=str(folder)), paths)
    assert list_spans(data) == [0, 1, 2]


def test_compile_kfp_splits_by_group_and_checks_local_spans(tmp_path):
    from tests.kubeflow_inputs import IMAGE, TINY

    from segbalance.kubeflow.runner import compile_pipeline

    folder, stems = _grouped_data(tmp_path / "raw", lambda i: f"scene{i % 5}")
    groups = ingest.load_groups(folder / GROUPS_FILE)
    ingest.ingest(folder / "images", folder / "masks", tmp_path / "data", span=0,
                  options=ingest.IngestOptions(groups=groups))
    config = config_from_dict({**TINY, "data": {"dir": str(tmp_path / "data"), "split_by": "group"}})
    spec = compile_pipeline(config, str(tmp_path / "p.json"), IMAGE, str(tmp_path / "root"))
    text = json.dumps(spec)
    assert '\\"partition_feature_name\\": \\"image/group_id\\"' in text or \
        '"partition_feature_name": "image/group_id"' in text.replace('\\"', '"')
    plain = compile_pipeline(config_from_dict({**TINY, "data": {"dir": str(tmp_path / "data")}}),
                             str(tmp_path / "q.json"), IMAGE, str(tmp_path / "root"))
    assert "image/group_id" not in json.dumps(plain) and "image/source_id" in json.dumps(plain)
    ingest.ingest(folder / "images", folder / "masks", tmp_path / "data", span=1)  # no groups
    with pytest.raises(ConfigError, match="Span-1 have no image/group_id"):
        compile_pipeline(config, str(tmp_path / "r.json"), IMAGE, str(tmp_path / "root"))


def test_sample_data_groups_keep_overlapping_crops_together(tmp_path):
    """Cropped kinds: a group is a block of GROUP_BLOCK crop sizes of one source image run; crops in
    different groups start in different blocks; shapes: each image its own group."""
    places = []
    image = np.zeros((300, 200, 3), np.uint8)
    mask = np.zeros((300, 200), np.uint8)
    crops = list(sample_data._random_crops(image, mask, 50, 32, seed=2, places=places))
    assert len(places) == len(crops) == 50
    block = sample_data.GROUP_BLOCK * 32
    for place in places:
        _, _, top, left = place
        assert sample_data.crop_group(place, 32) == f"s0-i0-r{top // block}-c{left // block}"
    nuclei = sample_data.write_sample_data("nuclei", tmp_path / "n", num_images=40, size=32)
    groups = json.loads((nuclei / GROUPS_FILE).read_text())
    assert sorted(groups) == sorted(p.stem for p in (nuclei / "images").iterdir())
    assert 1 < len(set(groups.values())) < 40
    shapes = sample_data.write_sample_data("shapes", tmp_path / "s", num_images=5, size=16)
    assert json.loads((shapes / GROUPS_FILE).read_text()) == {f"shapes_{i:05d}": f"shapes_{i:05d}" for i in range(5)}
