"""`segbalance stats`: same numbers as the Beam job in memory, with 2 worker processes, errors."""
import numpy as np
import pytest

from components import class_stats_io
from pipeline import cli
from tests.test_class_stats_beam import make_records, numpy_reference, stats_run, write_tfrecord  # noqa: F401

KEYS = ("pixel_counts", "image_counts", "cooccurrence", "ignored_pixels", "total_pixels", "num_records",
        "quarantined_records", "weights", "missing_image_counts", "zero_count_classes")


def _per_image(uri):
    table = class_stats_io.read_per_image(uri)
    return {r["source_id"]: {k: list(r[k]) for k in ("present", "labeled", "missing", "suspect_missing",
                                                    "pixel_counts")} for r in table.to_dict("records")}


@pytest.mark.slow  # starts 2 Beam worker processes (~10 s)
def test_in_memory_and_two_worker_processes_agree_with_numpy(stats_run, tmp_path, capsys):
    src, in_memory, good = stats_run  # the Beam job with --direct_running_mode=in_memory --direct_num_workers=1
    pixel, images, cooc, missing, ignored, _ = numpy_reference(good)
    assert cli.main(["stats", str(src / "data-*"), "--num-classes", "4", "--output", str(tmp_path / "cli"),
                     "--class-names", "bg,a,b,never",
                     "--beam-args", "--direct_running_mode=multi_processing --direct_num_workers=2"]) == 0
    out = capsys.readouterr().out
    assert "4 quarantined" in out and "classes [3] have no pixels" in out
    multi = class_stats_io.read_class_stats(str(tmp_path / "cli"))
    for key in KEYS:
        assert multi[key] == in_memory[key], key
    assert multi["pixel_counts"] == pixel.tolist() and multi["cooccurrence"] == cooc.tolist()
    assert multi["class_names"] == ["bg", "a", "b", "never"]
    assert _per_image(str(tmp_path / "cli")) == _per_image(str(src / "out"))
    assert sorted(q["source_id"] for q in class_stats_io.read_quarantine(str(tmp_path / "cli"))) == \
        ["bad_ids", "bad_labeled", "corrupt", "no_mask"]


def test_rerun_into_the_same_directory_leaves_no_stale_rows(stats_run, tmp_path):
    src, in_memory, _ = stats_run
    out = tmp_path / "again"
    out.mkdir()
    stale = out / "per_image-00007-of-00008.parquet"
    stale.write_bytes(b"rows of an earlier run")
    (out / "notes.txt").write_text("not ours")
    assert cli.main(["stats", str(src / "data-*"), "--num-classes", "4", "--output", str(out)]) == 0
    assert not stale.exists() and (out / "notes.txt").exists()
    assert _per_image(str(out)) == _per_image(str(src / "out"))


def test_weight_flags(stats_run, tmp_path):
    from trainer.class_weights import compute_class_weights

    src, _, good = stats_run
    pixel = numpy_reference(good)[0]
    assert cli.main(["stats", str(src / "data-*"), "--num-classes", "4", "--output", str(tmp_path / "o"),
                     "--weight-damping", "sqrt", "--weight-clip", "0.5,3", "--zero-count-weight", "2"]) == 0
    stats = class_stats_io.read_class_stats(str(tmp_path / "o"))
    np.testing.assert_allclose(stats["weights"]["enet"],
                               compute_class_weights(pixel, "enet", damping="sqrt", clip=(0.5, 3), zero_count_weight=2))


def test_errors_name_the_input(tmp_path, capsys):
    assert cli.main(["stats", str(tmp_path / "none*"), "--num-classes", "4", "--output", str(tmp_path / "x")]) == 2
    assert f"no files match {tmp_path / 'none*'}" in capsys.readouterr().err
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
    assert "3 class names for num_classes=2" in capsys.readouterr().err
