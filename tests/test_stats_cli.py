"""`segbalance stats`: same numbers as the Beam job in memory, with 2 worker processes, errors."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segbalance.trainer import class_stats_io
from segbalance.pipeline import cli, output_guard
from segbalance.pipeline.config import StatsConfig
from tests.test_class_stats_beam import (make_records, numpy_present_image_pixels, numpy_reference,  # noqa: F401
                                         numpy_suspects, stats_run, write_tfrecord)

KEYS = ("pixel_counts", "image_counts", "cooccurrence", "ignored_pixels", "total_pixels", "num_records",
        "quarantined_records", "weights", "missing_image_counts", "zero_count_classes")


def _per_image(uri):
    table = class_stats_io.read_per_image(uri)
    return {r["source_id"]: {k: list(r[k]) for k in ("present", "labeled", "missing", "suspect_missing",
                                                    "pixel_counts")} for r in table.to_dict("records")}


def _rows(uri):
    """Every Parquet row, every column, in source_id order (shards and row order vary with the runner)."""
    table = class_stats_io.read_per_image(uri)
    rows = [{k: (list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v) for k, v in r.items()}
            for r in table.to_dict("records")]
    return sorted(rows, key=lambda r: r["source_id"])


# unclipped weights, like the Beam job's own default (StatsOptions) the runs below are compared with
CLI_ARGS = ["--num-classes", "4", "--class-names", "bg,a,b,never", "--weight-clip", "none"]


@pytest.fixture(scope="module")
def cli_in_memory(stats_run, tmp_path_factory):
    """`segbalance stats` with the default in-memory runner: the reference the other runners must equal."""
    src, _, _ = stats_run
    out = tmp_path_factory.mktemp("cli_in_memory") / "out"
    assert cli.main(["stats", str(src / "data-*"), *CLI_ARGS, "--output", str(out)]) == 0
    return out


def _assert_same_output(out, reference):
    assert (out / "class_stats.json").read_bytes() == (reference / "class_stats.json").read_bytes()
    assert _rows(str(out)) == _rows(str(reference))
    assert sorted((out / "quarantine.jsonl").read_text().splitlines()) == \
        sorted((reference / "quarantine.jsonl").read_text().splitlines())


@pytest.mark.slow  # starts 2 Beam worker processes (~10 s)
def test_in_memory_and_two_worker_processes_agree_with_numpy(stats_run, cli_in_memory, tmp_path, capfd):
    src, in_memory, good = stats_run  # the Beam job with --direct_running_mode=in_memory --direct_num_workers=1
    pixel, images, cooc, missing, ignored, _ = numpy_reference(good)
    assert cli.main(["stats", str(src / "data-*"), "--num-classes", "4", "--output", str(tmp_path / "cli"),
                     "--class-names", "bg,a,b,never", "--weight-clip", "none",
                     "--beam-args", "--direct_running_mode=multi_processing --direct_num_workers=2"]) == 0
    out, err = capfd.readouterr()  # the worker processes' output too (file descriptors)
    # QA 27: the workers' google-api-core FutureWarnings and Beam's relayed WARNs reached the console
    assert "FutureWarning" not in err and "semi_persistent_directory" not in err, err
    assert "4 quarantined" in out and "classes [3] have no pixels" in out
    multi = class_stats_io.read_class_stats(str(tmp_path / "cli"))
    for key in KEYS:
        assert multi[key] == in_memory[key], key
    assert multi["pixel_counts"] == pixel.tolist() and multi["cooccurrence"] == cooc.tolist()
    assert multi["class_names"] == ["bg", "a", "b", "never"]
    assert _per_image(str(tmp_path / "cli")) == _per_image(str(src / "out"))
    assert sorted(q["source_id"] for q in class_stats_io.read_quarantine(str(tmp_path / "cli"))) == \
        ["bad_ids", "bad_labeled", "corrupt", "no_mask"]
    _assert_same_output(tmp_path / "cli", cli_in_memory)  # byte for byte, row for row


def test_two_threads_give_the_same_output(stats_run, cli_in_memory, tmp_path):
    """multi_threading (no worker start-up; docs/benchmarks.md: the fastest local mode end to end)."""
    src, _, _ = stats_run
    assert cli.main(["stats", str(src / "data-*"), *CLI_ARGS, "--output", str(tmp_path / "threads"),
                     "--beam-args", "--direct_running_mode=multi_threading --direct_num_workers=2"]) == 0
    _assert_same_output(tmp_path / "threads", cli_in_memory)  # byte for byte, row for row


@pytest.mark.slow  # starts a Beam job service and an SDK worker pool (~15 s)
def test_portable_runner_with_an_external_worker_pool(stats_run, cli_in_memory, tmp_path, capsys):
    """The job through Beam's portability framework, as Flink/Spark/Dataflow v2 run it: the
    pipeline goes as a proto to a job service; DoFns, the CombineFn, the side input and the
    quarantine output run in SDK harness processes started by a separate worker pool."""
    from tests.beam_services import portable_beam_args

    src, in_memory, good = stats_run
    with portable_beam_args(tmp_path) as beam_args:
        assert cli.main(["stats", str(src / "data-*"), *CLI_ARGS, "--output", str(tmp_path / "portable"),
                         "--beam-args", " ".join(beam_args)]) == 0
    assert "4 quarantined" in capsys.readouterr().out
    assert "Requesting worker at" in (tmp_path / "job_service.log").read_text()
    assert "SdkHarness" in (tmp_path / "worker_pool.log").read_text()  # the harness ran in the pool
    portable = class_stats_io.read_class_stats(str(tmp_path / "portable"))
    for key in KEYS:
        assert portable[key] == in_memory[key], key
    assert portable["pixel_counts"] == numpy_reference(good)[0].tolist()
    assert _per_image(str(tmp_path / "portable")) == _per_image(str(src / "out"))
    assert sorted(q["source_id"] for q in class_stats_io.read_quarantine(str(tmp_path / "portable"))) == \
        ["bad_ids", "bad_labeled", "corrupt", "no_mask"]
    _assert_same_output(tmp_path / "portable", cli_in_memory)  # byte for byte, row for row


def test_rerun_into_the_same_directory_leaves_no_stale_rows(stats_run, tmp_path):
    src, in_memory, _ = stats_run
    out = tmp_path / "again"
    assert cli.main(["stats", str(src / "data-*"), "--num-classes", "4", "--output", str(out)]) == 0
    stale = out / "per_image-00007-of-00008.parquet"
    stale.write_bytes(b"rows of an earlier run")
    assert cli.main(["stats", str(src / "data-*"), "--num-classes", "4", "--output", str(out)]) == 0
    assert not stale.exists()
    assert _per_image(str(out)) == _per_image(str(src / "out"))


def test_a_folder_stats_did_not_write_is_refused_and_left_as_it_was(stats_run, tmp_path, capsys):
    """A user's folder holding a hand-made class_stats.json (and notes) was written over: the stats
    files replaced, quarantine.jsonl emptied. Now refused, exit 2, nothing touched."""
    src, _, _ = stats_run
    mine = tmp_path / "myproject"
    mine.mkdir()
    files = {"class_stats.json": '{"my": "hand-made"}', "quarantine.jsonl": "my notes\n", "notes.txt": "keep"}
    for name, text in files.items():
        (mine / name).write_text(text)
    assert cli.main(["stats", str(src / "data-*"), "--num-classes", "4", "--output", str(mine)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "segbalance stats did not write" in err and "nothing was written" in err
    assert {p.name: p.read_text() for p in mine.iterdir()} == files
    # an ingest output (the records' own folder) is not a stats folder either
    assert cli.main(["stats", str(src / "data-*"), "--num-classes", "4", "--output", str(src)]) == 2
    # nor a new folder inside a span ingest wrote (QA 94 L3: written there, ingest --overwrite then refused the span)
    span = tmp_path / "Span-0"
    shutil.copytree(src, span, ignore=shutil.ignore_patterns("out"))
    output_guard.write_marker(span, "ingest")
    before = sorted(p.name for p in span.iterdir())
    capsys.readouterr()
    assert cli.main(["stats", str(span / "data-*"), "--num-classes", "4", "--output", str(span / "st")]) == 2
    assert f"{span / 'st'} is inside the input folder {span}" in capsys.readouterr().err
    assert sorted(p.name for p in span.iterdir()) == before


def test_weight_flags(stats_run, tmp_path):
    from segbalance.trainer.class_weights import compute_class_weights

    src, _, good = stats_run
    pixel = numpy_reference(good)[0]
    assert cli.main(["stats", str(src / "data-*"), "--num-classes", "4", "--output", str(tmp_path / "o"),
                     "--weight-damping", "sqrt", "--weight-clip", "0.5,3", "--zero-count-weight", "2"]) == 0
    stats = class_stats_io.read_class_stats(str(tmp_path / "o"))
    np.testing.assert_allclose(stats["weights"]["enet"],
                               compute_class_weights(pixel, "enet", damping="sqrt", clip=(0.5, 3), zero_count_weight=2))
    # the two options the pipeline's `stats` section has that the command lacked
    assert cli.main(["stats", str(src / "data-*"), "--num-classes", "4", "--output", str(tmp_path / "o2"),
                     "--weight-beta", "0.99", "--enet-k", "1.5"]) == 0
    stats = class_stats_io.read_class_stats(str(tmp_path / "o2"))
    clip = StatsConfig().clip
    np.testing.assert_allclose(stats["weights"]["enet"], compute_class_weights(pixel, "enet", enet_k=1.5, clip=clip))
    np.testing.assert_allclose(stats["weights"]["effective_number"],
                               compute_class_weights(pixel, "effective_number", beta=0.99, clip=clip))


@pytest.mark.parametrize("flags, message", [(["--enet-k", "1"], "--enet-k: must be > 1"),
                                            (["--weight-beta", "1"], "--weight-beta: must be in [0, 1)"),
                                            (["--suspect-threshold", "2"], "--suspect-threshold: must be in")])
def test_bad_option_values_are_refused_with_the_flag(tmp_path, capsys, flags, message):
    (tmp_path / "data-0").write_bytes(b"")
    assert cli.main(["stats", str(tmp_path / "data-*"), "--num-classes", "4", "--output", str(tmp_path / "o"),
                     *flags]) == 2
    assert message in capsys.readouterr().err


def test_weight_defaults_are_the_pipeline_config_s(stats_run, tmp_path):
    """Without weight flags `segbalance stats` clips like `segbalance run` (StatsConfig.clip); 'none' turns it off."""
    from segbalance.pipeline.config import StatsConfig
    from segbalance.trainer.class_weights import compute_class_weights

    src, _, good = stats_run
    pixel = numpy_reference(good)[0]
    clip = StatsConfig().clip
    assert clip is not None  # the default under test clips
    weights = {}
    for name, flags in (("default", []), ("none", ["--weight-clip", "none"])):
        assert cli.main(["stats", str(src / "data-*"), "--num-classes", "4", "--output", str(tmp_path / name),
                         *flags]) == 0
        weights[name] = class_stats_io.read_class_stats(str(tmp_path / name))["weights"]
    for scheme, clipped in (("default", clip), ("none", None)):
        np.testing.assert_allclose(weights[scheme]["inverse_frequency"],
                                   compute_class_weights(pixel, "inverse_frequency", clip=clipped))
    assert weights["default"]["inverse_frequency"] != weights["none"]["inverse_frequency"]


def test_errors_name_the_input(tmp_path, capsys):
    assert cli.main(["stats", str(tmp_path / "none*"), "--num-classes", "4", "--output", str(tmp_path / "x")]) == 2
    assert f"no files match {tmp_path / 'none*'}" in capsys.readouterr().err
    # records in a folder whose name holds '[': the pattern that reads them (QA 97: only "check the path")
    (tmp_path / "o[1]").mkdir()
    write_tfrecord(tmp_path / "o[1]" / "data.tfrecord", make_records(n=3)[0])
    assert cli.main(["stats", str(tmp_path / "o[1]" / "*.tfrecord"), "--num-classes", "4", "--output",
                     str(tmp_path / "z")]) == 2
    escaped = f"{tmp_path}/o[[]1]/*.tfrecord"
    assert capsys.readouterr().err.strip().endswith(
        f"the folder {tmp_path / 'o[1]'} exists and its name holds a pattern character: give {escaped} ('[' as '[[]')")
    assert cli.main(["stats", escaped, "--num-classes", "4", "--output", str(tmp_path / "z")]) == 0
    write_tfrecord(tmp_path / "bad.tfrecord", make_records(n=0)[0])
    assert cli.main(["stats", str(tmp_path / "bad.tfrecord"), "--num-classes", "4", "--output",
                     str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "all 4 records in" in err and "bad.tfrecord" in err and "quarantine.jsonl" in err
    write_tfrecord(tmp_path / "empty.tfrecord", [])
    assert cli.main(["stats", str(tmp_path / "empty.tfrecord"), "--num-classes", "4", "--output",
                     str(tmp_path / "z")]) == 2
    assert "no records in" in capsys.readouterr().err
    assert cli.main(["stats", str(tmp_path / "empty.tfrecord"), "--num-classes", "4", "--output",
                     str(tmp_path / "z"), "--weight-clip", "1"]) == 2
    assert "--weight-clip expects MIN,MAX" in capsys.readouterr().err
    assert cli.main(["stats", str(tmp_path / "empty.tfrecord"), "--num-classes", "2", "--output",
                     str(tmp_path / "z"), "--class-names", "a,b,c"]) == 2
    assert "--class-names gives 3 names for --num-classes 2" in capsys.readouterr().err


def _assert_matches_numpy(out, good, policy="complete", ignore=255):
    """Every count, the median-frequency weights and every per-image row of a `segbalance stats` output
    against the NumPy reference of test_class_stats_beam (4 bad records quarantined)."""
    from segbalance.trainer.class_weights import compute_class_weights

    pixel, images, cooc, missing, ignored, per_image = numpy_reference(good, policy, ignore)
    stats = class_stats_io.read_class_stats(str(out))
    assert stats["ignore_index"] == ignore and stats["labeled_policy"] == policy
    assert stats["pixel_counts"] == pixel.tolist()
    assert stats["image_counts"] == images.tolist()
    assert stats["cooccurrence"] == cooc.tolist()
    assert stats["missing_image_counts"] == missing.tolist()
    assert stats["images_with_missing"] == sum(1 for r in per_image.values() if r["missing"])
    assert stats["ignored_pixels"] == ignored and stats["total_pixels"] == int(pixel.sum()) + ignored
    assert stats["num_records"] == len(good) and stats["quarantined_records"] == 4
    assert stats["zero_count_classes"] == [c for c in range(len(pixel)) if pixel[c] == 0]
    np.testing.assert_allclose(stats["weights"]["median_frequency"], compute_class_weights(
        pixel, "median_frequency", present_image_pixels=numpy_present_image_pixels(good, ignore)))
    rows = _per_image(str(out))
    assert rows.keys() == per_image.keys()
    suspects = numpy_suspects(per_image, images, cooc, stats["suspect_threshold"])
    for sid, expected in per_image.items():
        for key in ("present", "labeled", "missing"):
            assert rows[sid][key] == expected[key], (sid, key)
        assert rows[sid]["pixel_counts"] == expected["pixel_counts"].tolist(), sid
        assert rows[sid]["suspect_missing"] == suspects[sid], sid


@pytest.mark.parametrize("ignore", [9, 4])  # outside 0..C-1 (4: the first value after the classes)
def test_ignore_index_flag(tmp_path, ignore):
    records, good = make_records(seed=3, ignore=ignore)
    assert sum(int((mask == ignore).sum()) for _, mask, _ in good) > 0
    write_tfrecord(tmp_path / "data-0.tfrecord", records)
    assert cli.main(["stats", str(tmp_path / "data-*"), "--num-classes", "4", "--output", str(tmp_path / "o"),
                     "--ignore-index", str(ignore)]) == 0
    _assert_matches_numpy(tmp_path / "o", good, ignore=ignore)


def test_an_ignore_index_inside_the_classes_is_refused(tmp_path, capsys):
    """It made every pixel of that class 'no label' with exit 0 (QA, session 18: bottle at 0 pixels)."""
    records, _ = make_records(seed=3, ignore=2)
    write_tfrecord(tmp_path / "data-0.tfrecord", records)
    assert cli.main(["stats", str(tmp_path / "data-*"), "--num-classes", "4", "--output", str(tmp_path / "o"),
                     "--ignore-index", "2"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--ignore-index 2 collides with a class id (< 4): every pixel of class 2 would be taken as 'no label'" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("policy", ["complete", "partial"])
def test_labeled_policy_flag(stats_run, tmp_path, policy):
    src, _, good = stats_run
    # a third of the records have no labeled field: the two policies disagree on them
    assert numpy_reference(good, "partial")[3].tolist() != numpy_reference(good, "complete")[3].tolist()
    assert cli.main(["stats", str(src / "data-*"), "--num-classes", "4", "--output", str(tmp_path / "o"),
                     "--labeled-policy", policy]) == 0
    _assert_matches_numpy(tmp_path / "o", good, policy=policy)


# --------------------------------------------------------------------------- bad files: one line, exit 2
def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "Traceback" not in err and not re.search(r"[0-9a-f]{24}", err), err  # no traceback, no hex dump
    return lines[0]


def test_plain_file_named_gz_is_one_line(tmp_path, capsys):
    (tmp_path / "x.gz").write_text("not compressed at all\n")
    assert cli.main(["stats", str(tmp_path / "x.gz"), "--num-classes", "4", "--output", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"segbalance stats: error: {tmp_path / 'x.gz'}: not gzip data")
    assert "rename the file if it is not compressed" in line
    assert not (tmp_path / "o").exists()  # the folder this run would have made is not left behind


@pytest.mark.parametrize("compression", [None, "GZIP"])
def test_truncated_tfrecord_names_the_file(tmp_path, capsys, compression):
    records, _ = make_records(n=6)
    suffix = ".gz" if compression else ""
    write_tfrecord(tmp_path / f"data-0.tfrecord{suffix}", records[:5], compression)
    cut = tmp_path / f"data-1.tfrecord{suffix}"
    write_tfrecord(cut, records[5:], compression)
    cut.write_bytes(cut.read_bytes()[:-30])
    out = tmp_path / "out"
    assert cli.main(["stats", str(tmp_path / "data-*"), "--num-classes", "4", "--output", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"error: {cut}: " in line and ("truncated" in line or "cut short" in line), line
    assert "replace it with a complete copy" in line
    assert not out.exists()


@pytest.mark.slow  # a fresh `segbalance` process: what a user sees on stderr, Beam's own logging included
def test_truncated_tfrecord_from_the_command_line_leaves_nothing_behind(tmp_path):
    records, _ = make_records(n=6)
    write_tfrecord(tmp_path / "data-0.tfrecord", records[:5])
    cut = tmp_path / "data-1.tfrecord"
    write_tfrecord(cut, records[5:])
    cut.write_bytes(cut.read_bytes()[:-30])
    out = tmp_path / "out"
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "segbalance"), "stats",
                             str(tmp_path / "data-*"), "--num-classes", "4", "--output", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    line = _one_error_line(result.stderr)
    last = len(records[5:]) - 1  # the cut hits the file's last record
    assert line.startswith(f"segbalance stats: error: {cut}: truncated: record {last + 1} "), line  # from 1
    assert not out.exists()  # no beam-temp-*, no half-written layout, no folder of only our marker


def test_beam_args_beam_would_drop_are_refused_before_the_job(tmp_path, capsys):
    records, _ = make_records(n=2)
    write_tfrecord(tmp_path / "data-0.tfrecord", records)
    assert cli.main(["stats", str(tmp_path / "data-*"), "--num-classes", "4", "--output", str(tmp_path / "o"),
                     "--beam-args", "--direct_running_mode=in_memory --direct_num_workerz=2"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == ("segbalance stats: error: --beam-args: '--direct_num_workerz=2' is not an option of Beam's direct "
                    "runner, which would drop it unread: did you mean --direct_num_workers?")
    assert not (tmp_path / "o").exists()


def test_not_a_tfrecord_file(tmp_path, capsys):
    (tmp_path / "data-0").write_text("hello, I am a text file\n")
    assert cli.main(["stats", str(tmp_path / "data-0"), "--num-classes", "4", "--output", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{tmp_path / 'data-0'}: not a TFRecord file" in line


@pytest.mark.parametrize("key, value, message", [
    ("pixel_counts", ["12", "3", "4", "0"], "pixel_counts must be a list of non-negative integers"),
    ("num_records", "10", "num_records must be a non-negative integer"),
    ("weights", {"enet": [1.0, 2.0]}, "the per-class entries disagree on the number of classes"),
    ("class_names", "bg,a,b,never", "class_names must be a list of strings"),
])
def test_hand_edited_class_stats_json_is_one_line(stats_run, tmp_path, capsys, key, value, message):
    import json
    import shutil

    src, _, _ = stats_run
    edited = tmp_path / "edited"
    shutil.copytree(src / "out", edited)
    path = edited / "class_stats.json"
    stats = json.loads(path.read_text())
    stats[key] = value
    path.write_text(json.dumps(stats))
    assert cli.main(["report", str(edited), "--output", str(tmp_path / "r.html")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{path}: {message}" in line and "regenerate it (`segbalance stats`" in line, line
    assert not (tmp_path / "r.html").exists()
    with pytest.raises(class_stats_io.ClassStatsFileError, match=message):  # every reader: trainer, drift gate
        class_stats_io.read_class_stats(str(edited))


def test_class_stats_json_that_is_not_json(stats_run, tmp_path):
    import shutil

    src, _, _ = stats_run
    shutil.copytree(src / "out", tmp_path / "edited")
    (tmp_path / "edited" / "class_stats.json").write_text('{"pixel_counts": [1, 2,}')
    with pytest.raises(class_stats_io.ClassStatsFileError, match=r"class_stats.json is not valid JSON .*regenerate"):
        class_stats_io.read_class_stats(str(tmp_path / "edited"))


@pytest.mark.parametrize("content", [b'{"source_id": "a", "reason": "x"}\n\xf2\x28', b'{"source_id": "a"\n'])
def test_a_damaged_quarantine_list_is_named(stats_run, tmp_path, capsys, content):
    """QA 69: report said only "'utf-8' codec can't decode byte 0xf2 in position 2", naming no file."""
    import shutil

    src, _, _ = stats_run
    shutil.copytree(src / "out", tmp_path / "edited")
    path = tmp_path / "edited" / "quarantine.jsonl"
    path.write_bytes(content)
    with pytest.raises(class_stats_io.ClassStatsFileError, match=rf"^{re.escape(str(path))} is not JSON lines .*"
                                                                 r"regenerate it"):
        class_stats_io.read_quarantine(str(tmp_path / "edited"))
    assert cli.main(["report", str(tmp_path / "edited"), "--output", str(tmp_path / "r.html")]) == 2
    assert f"error: {path} is not JSON lines" in _one_error_line(capsys.readouterr().err)


def test_a_num_classes_below_the_masks_ids_is_pointed_out(stats_run, tmp_path, capsys):
    """Most records quarantined for class ids >= C and exit 0 with no hint: the likely cause is
    --num-classes, so say so."""
    src, _, _ = stats_run
    assert cli.main(["stats", str(src / "data-*"), "--num-classes", "2", "--output", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "have mask class ids >= --num-classes 2" in out and "is --num-classes too small?" in out
    assert cli.main(["stats", str(src / "data-*"), "--num-classes", "4", "--output", str(tmp_path / "p")]) == 0
    assert "too small" not in capsys.readouterr().out


def _one_file(tmp_path, ids, bad=()):
    """data-0: a 4x4 record per name in ``ids`` (classes 0 and 1), those in ``bad`` holding class id 3."""
    from segbalance.trainer import example_codec as codec

    records = []
    for sid in ids:
        mask = np.zeros((4, 4), np.uint8)
        mask[:2] = 3 if sid in bad else 1
        records.append(codec.build_example(codec.encode_png(np.zeros((4, 4, 3), np.uint8)), codec.encode_png(mask),
                                           sid, 4, 4).SerializeToString())
    write_tfrecord(tmp_path / "data-0", records)
    return str(tmp_path / "data-*")


def test_repeated_source_ids_and_the_bad_id_hint_follow_the_trainer_s_rules(tmp_path, capsys):
    """QA 26: two records named alike were counted twice without a word (the trainer then refused the
    output); empty or repeated --class-names passed (the pipeline's classes.names refuses them); the
    too-many-ids hint fired at exactly 10 % of the records, where the trainer (more than 10 %) trains."""
    glob = _one_file(tmp_path, ["a", "b", "same", "same"])
    assert cli.main(["stats", glob, "--num-classes", "2", "--output", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "stats: 4 records, 0 quarantined" in out
    assert "warning: 1 image/source_id value(s) name more than one record (e.g. 'same')" in out
    for names, message in (("bg,", "error: --class-names: class name 1 is empty"),
                           ("bg,BG", "error: --class-names: class names must be unique (ignoring case): 'BG', 'bg' "
                                     "name the same class"),
                           ("", "error: --class-names gives 1 names for --num-classes 2"),  # QA 69: passed
                           ):
        assert cli.main(["stats", glob, "--num-classes", "2", "--class-names", names,
                         "--output", str(tmp_path / "n")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert cli.main(["stats", glob, "--num-classes", "2", "--output", str(tmp_path / "q"), "--beam-args",
                     "--foo='x"]) == 2
    assert "error: --beam-args \"--foo='x\": No closing quotation; close the quote" in capsys.readouterr().err
    ids = [f"r{i}" for i in range(10)]
    (tmp_path / "ten").mkdir()
    glob = _one_file(tmp_path / "ten", ids, bad={"r0"})
    assert cli.main(["stats", glob, "--num-classes", "2", "--output", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert "stats: 9 records, 1 quarantined" in out and "too small" not in out and "warning" not in out
    glob = _one_file(tmp_path / "ten", ids, bad={"r0", "r1"})
    assert cli.main(["stats", glob, "--num-classes", "2", "--output", str(tmp_path / "t2")]) == 0
    assert "2 of 10 records have mask class ids >= --num-classes 2" in capsys.readouterr().out


def test_a_relative_glob_is_stored_absolute(stats_run, tmp_path, monkeypatch):
    """class_stats.json "inputs" held the pattern as typed: a report made from another folder said the
    records had been moved or deleted."""
    import json as _json

    src, _, _ = stats_run
    monkeypatch.chdir(src.parent)
    assert cli.main(["stats", f"{src.name}/data-*", "--num-classes", "4", "--output", str(tmp_path / "o")]) == 0
    inputs = _json.loads((tmp_path / "o" / "class_stats.json").read_text())["inputs"]
    recorded = list(inputs.values()) if isinstance(inputs, dict) else inputs
    assert recorded == [str(src / "data-*")]


def test_a_failed_job_leaves_no_empty_tables_behind(tmp_path, capsys):
    """QA 64: files without records left the folder with our marker, an empty per-image table (which
    readers take for a valid empty one) and an empty quarantine.jsonl; with every record quarantined the
    empty table stayed beside the quarantine list the error names."""
    empty = tmp_path / "empty.tfrecord"
    empty.write_bytes(b"")
    out = tmp_path / "out_empty"
    assert cli.main(["stats", str(empty), "--num-classes", "4", "--output", str(out)]) == 2
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    records, _ = make_records(n=12)
    write_tfrecord(tmp_path / "allbad.tfrecord", records)  # with C = 1 every mask holds an id out of range
    out = tmp_path / "out_bad"
    code = cli.main(["stats", str(tmp_path / "allbad.tfrecord"), "--num-classes", "1", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "quarantine.jsonl" in err, err
    assert sorted(p.name for p in out.iterdir()) == [".segbalance.json", "quarantine.jsonl"]


def test_a_table_a_failed_job_cut_short_is_kept_and_the_error_reported(tmp_path, capsys, monkeypatch):
    """A job that fails while writing a per-image table (a full disk, say) leaves it cut short: not known to
    be empty, so kept, and reading it must not replace the job's error with a pyarrow traceback."""
    from segbalance.components import class_stats_beam

    def cut_short(patterns, output, *args, **kwargs):
        (Path(output) / "per_image-00000-of-00001.parquet").write_bytes(b"PAR1 cut")
        raise ValueError("writing per_image-00000-of-00001.parquet: No space left on device")

    monkeypatch.setattr(class_stats_beam, "run_class_stats", cut_short)
    records, _ = make_records(n=2)
    write_tfrecord(tmp_path / "data.tfrecord", records)
    out = tmp_path / "out"
    assert cli.main(["stats", str(tmp_path / "data.tfrecord"), "--num-classes", "4", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err, err
    assert (out / "per_image-00000-of-00001.parquet").read_bytes() == b"PAR1 cut"


@pytest.mark.parametrize("kept, said", [(28, "has 28 of its"), ("all", "has all"), (0, "has 0 of its")])
def test_a_truncated_record_is_counted_from_one_with_the_bytes_it_has(tmp_path, kept, said):
    """QA 64: the count took the 4 CRC bytes off a payload cut short ("24 of its 580 bytes" for 28), and the
    second record was "record 1" (from 0, not said)."""
    from segbalance.components.tfrecord_file import TFRecordFileError, iter_tfrecords

    records, _ = make_records(n=2)
    path = tmp_path / "cut.tfrecord"
    write_tfrecord(path, records)
    first = 12 + len(records[0]) + 4
    keep = len(records[1]) if kept == "all" else kept
    path.write_bytes(path.read_bytes()[:first + 12 + keep])
    with open(path, "rb") as handle, pytest.raises(TFRecordFileError) as raised:
        list(iter_tfrecords(handle))
    message = str(raised.value)
    assert message.startswith(f"truncated: record 2 (at byte {first}) {said}"), message
    if kept == "all":
        assert f"all {len(records[1])} of its bytes but not its 4-byte checksum" in message


def test_the_classes_json_beside_the_records_names_the_classes(tmp_path, capsys):
    """QA 89 M2: `stats` on a span written by `segbalance ingest` named the classes class_0.. though the span's
    classes.json named them; a name with a comma could not be given (--class-names is comma-separated)."""
    import json

    records, _ = make_records(seed=3)
    span = tmp_path / "data" / "Span-0"
    span.mkdir(parents=True)
    write_tfrecord(span / "data-00000-of-00001.tfrecord", records)
    names = ["background", "building, house", "edge", "contact"]

    def stats(out, *extra):
        code = cli.main(["stats", str(span / "data-*"), "--num-classes", "4", "--output", str(tmp_path / out), *extra])
        return code, capsys.readouterr()

    def named(out):
        return json.loads((tmp_path / out / "class_stats.json").read_text())["class_names"]

    assert stats("none")[0] == 0 and named("none") == ["class_0", "class_1", "class_2", "class_3"]
    (tmp_path / "data" / "classes.json").write_text(json.dumps({"class_names": names}))  # the data folder's own
    code, said = stats("folder")
    assert code == 0 and named("folder") == names
    assert f"classes: 4 from {tmp_path / 'data' / 'classes.json'}: 'background', 'building, house'" in said.out
    (span / "classes.json").write_text(json.dumps({"class_names": names[:3] + ["touching"]}))  # the span's first
    assert stats("span")[0] == 0 and named("span") == names[:3] + ["touching"]
    code, said = stats("flag", "--class-names", "a,b,c,d")  # a flag wins
    assert code == 0 and named("flag") == ["a", "b", "c", "d"]
    code, said = stats("other_count", "--num-classes", "5")  # a file of another count: not used, said
    assert code == 0 and named("other_count") == [f"class_{i}" for i in range(5)]
    assert f"note: {span / 'classes.json'} names 4 classes, not --num-classes 5: its names are not used" in said.out
    (span / "classes.json").write_text("{not json")  # a damaged file: said, not a failure of the statistics
    code, said = stats("damaged")
    assert code == 0 and named("damaged")[0] == "class_0" and "note: " in said.out and "classes.json" in said.out
    (span / "classes.json").write_text(json.dumps({"class_names": ["bg", "road", "Road", "car"]}))
    code, said = stats("same")  # a file ingest keeps (QA 90 M1: exit 2, blamed on --class-names)
    assert code == 0 and named("same")[0] == "class_0"
    assert (f"note: {span / 'classes.json'}: class names must be unique (ignoring case): 'Road', 'road' name the "
            f"same class; the classes are named class_0, class_1, ...") in said.out
    (span / "classes.json").write_text(json.dumps(["bg", "road", "car", "x"]))  # not the format: what to give
    code, said = stats("list")
    assert code == 0 and "fix it, or give --class-names or --classes-file; the classes are named" in said.out
    given = tmp_path / "names.json"
    given.write_text(json.dumps({"class_names": names}))
    assert stats("file", "--classes-file", str(given))[0] == 0 and named("file") == names
    code, said = stats("both", "--classes-file", str(given), "--class-names", "a,b,c,d")
    assert code == 2 and said.err.strip().splitlines() == [
        "segbalance stats: error: --class-names and --classes-file both name the classes: give one"]
    code, said = stats("missing", "--classes-file", str(tmp_path / "nope.json"))
    assert code == 2 and "--classes-file " in said.err and "is not a file" in said.err
    given.write_text(json.dumps({"class_names": ["a", "A", "b", "c"]}))
    code, said = stats("file_same", "--classes-file", str(given))
    assert code == 2 and said.err.strip() == (f"segbalance stats: error: --classes-file {given}: class names must be "
                                              f"unique (ignoring case): 'A', 'a' name the same class")
    given.write_text("[]")
    code, said = stats("file_list", "--classes-file", str(given))
    assert code == 2 and said.err.strip().endswith("fix it, or pass --class-names"), said.err
    given.write_text(json.dumps({"class_names": names[:3]}))
    code, said = stats("short", "--classes-file", str(given))
    assert code == 2 and said.err.strip() == (f"segbalance stats: error: --classes-file {given} names 3 classes for "
                                              f"--num-classes 4: give 4 names")
