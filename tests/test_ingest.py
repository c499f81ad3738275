"""`segbalance ingest`: round trip, every bad input, atomic output, CLI exit codes."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from segbalance.pipeline import cli, ingest
from segbalance.trainer import example_codec as codec


def _write(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def _dataset(root, n=4, size=(12, 10), num_classes=3, seed=0):
    """n random image/mask pairs; returns {stem: (image, mask)}."""
    rng = np.random.default_rng(seed)
    pairs = {}
    for i in range(n):
        image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        mask = rng.integers(0, num_classes, size=size, dtype=np.uint8)
        mask[0, 0] = 255  # an ignore pixel
        _write(root / "images" / f"img{i}.png", image)
        _write(root / "masks" / f"img{i}.png", mask)
        pairs[f"img{i}"] = (image, mask)
    return pairs


def _records(folder):
    files = sorted(folder.glob("data-*.tfrecord"))
    return [codec.parse_record(r.numpy()) for r in tf.data.TFRecordDataset([str(f) for f in files])]


def _run(tmp_path, *extra, num_classes=3):
    return cli.main(["ingest", str(tmp_path / "images"), str(tmp_path / "masks"), "--output", str(tmp_path / "out"),
                     "--num-classes", str(num_classes), *extra])


def _report(folder):
    return json.loads((folder / ingest.REPORT_NAME).read_text())


def test_round_trip_folder_to_tfrecord_to_arrays(tmp_path):
    pairs = _dataset(tmp_path, n=5)
    (tmp_path / "labeled.json").write_text(json.dumps({"img1": [0, 2], "img3": [0, 1, 2]}))
    assert _run(tmp_path, "--labeled", str(tmp_path / "labeled.json"), "--span", "3", "--shards", "2") == 0
    target = tmp_path / "out" / "Span-3"
    assert sorted(p.name for p in target.glob("*.tfrecord")) == [
        "data-00000-of-00002.tfrecord", "data-00001-of-00002.tfrecord"]
    records = {r.source_id: r for r in _records(target)}
    assert records.keys() == pairs.keys()
    for stem, (image, mask) in pairs.items():
        record = records[stem]
        np.testing.assert_array_equal(codec.decode_array(record.image_bytes), image)
        np.testing.assert_array_equal(codec.decode_array(record.mask_bytes), mask)
        assert (record.height, record.width) == image.shape[:2]
    assert records["img1"].labeled == [0, 2] and records["img3"].labeled == [0, 1, 2]
    assert records["img0"].labeled is None
    report = _report(target)
    assert report["num_written"] == 5 and report["num_bad"] == 0


def test_jpeg_images_kept_and_palette_masks_mapped(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    ids = rng.integers(0, 3, size=(8, 8), dtype=np.uint8)
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], dtype=np.uint8)
    _write(tmp_path / "images" / "a.jpg", image)
    _write(tmp_path / "masks" / "a.png", colours[ids])
    (tmp_path / "palette.json").write_text(json.dumps(colours.tolist()))
    jpeg_bytes = (tmp_path / "images" / "a.jpg").read_bytes()
    assert _run(tmp_path, "--palette", str(tmp_path / "palette.json")) == 0
    (record,) = _records(tmp_path / "out")
    assert record.image_bytes == jpeg_bytes
    np.testing.assert_array_equal(codec.decode_array(record.mask_bytes), ids)


def test_palette_mode_png_masks_keep_indices(tmp_path):
    ids = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    _write(tmp_path / "images" / "p.png", np.zeros((2, 2, 3), np.uint8))
    (tmp_path / "masks").mkdir()
    mask = Image.fromarray(ids, mode="P")
    mask.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0] + [9] * (253 * 3))
    mask.save(tmp_path / "masks" / "p.png")
    assert _run(tmp_path) == 0
    (record,) = _records(tmp_path / "out")
    np.testing.assert_array_equal(codec.decode_array(record.mask_bytes), ids)


BAD_CASES = {
    "undecodable_image": "image",
    "undecodable_mask": "mask",
    "rgb_mask_no_palette": "3 channels",
    "size_mismatch": "but mask is",
    "class_id_too_large": "outside",
    "image_without_mask": "has no mask",
    "mask_without_image": "has no image",
}


def _make_bad(tmp_path, case):
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir(exist_ok=True)
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    if case == "undecodable_image":
        (tmp_path / "images" / "bad.png").write_bytes(b"\x89PNG not really")
        _write(tmp_path / "masks" / "bad.png", np.zeros((6, 6), np.uint8))
    elif case == "undecodable_mask":
        _write(tmp_path / "images" / "bad.png", image)
        (tmp_path / "masks" / "bad.png").write_bytes(b"garbage")
    elif case == "rgb_mask_no_palette":
        _write(tmp_path / "images" / "bad.png", image)
        _write(tmp_path / "masks" / "bad.png", image)
    elif case == "size_mismatch":
        _write(tmp_path / "images" / "bad.png", image)
        _write(tmp_path / "masks" / "bad.png", np.zeros((5, 6), np.uint8))
    elif case == "class_id_too_large":
        _write(tmp_path / "images" / "bad.png", image)
        _write(tmp_path / "masks" / "bad.png", np.full((6, 6), 7, np.uint8))
    elif case == "image_without_mask":
        _write(tmp_path / "images" / "bad.png", image)
    elif case == "mask_without_image":
        _write(tmp_path / "masks" / "bad.png", np.zeros((6, 6), np.uint8))


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_pair_is_reported_and_good_pairs_written(tmp_path, case, capsys):
    _dataset(tmp_path, n=2)
    _make_bad(tmp_path, case)
    assert _run(tmp_path) == 0
    report = _report(tmp_path / "out")
    assert report["num_written"] == 2 and report["written"] == ["img0", "img1"]
    (bad,) = report["bad"]
    assert bad["source_id"] == "bad" and BAD_CASES[case] in bad["reason"]
    assert "skipped bad" in capsys.readouterr().err
    assert {r.source_id for r in _records(tmp_path / "out")} == {"img0", "img1"}


@pytest.mark.parametrize("case", ["undecodable_mask", "class_id_too_large", "mask_without_image"])
def test_strict_writes_nothing(tmp_path, case, capsys):
    _dataset(tmp_path, n=2)
    _make_bad(tmp_path, case)
    assert _run(tmp_path, "--strict") == 2
    assert "--strict" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_all_bad_exits_non_zero(tmp_path, capsys):
    _make_bad(tmp_path, "undecodable_mask")
    assert _run(tmp_path) == 2
    err = capsys.readouterr().err
    assert "no record was written" in err
    assert not (tmp_path / "out").exists()
    # no temp folder left behind; the report survives beside the (not created) output folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "ingest_report.out.failed.json", "masks"]
    assert f"report: {tmp_path / 'ingest_report.out.failed.json'}" in err
    report = json.loads((tmp_path / "ingest_report.out.failed.json").read_text())
    assert report["num_written"] == 0 and report["written"] == [] and report["num_bad"] == 1
    assert report["bad"][0]["source_id"] == "bad" and "mask" in report["bad"][0]["reason"]
    assert "no record was written" in report["error"]


def test_strict_failure_report_survives_and_a_later_run_needs_no_overwrite(tmp_path, capsys):
    _dataset(tmp_path, n=2)
    _make_bad(tmp_path, "class_id_too_large")
    assert _run(tmp_path, "--strict", "--span", "3") == 2
    failed = tmp_path / "out" / "ingest_report.Span-3.failed.json"
    assert f"report: {failed}" in capsys.readouterr().err
    assert not (tmp_path / "out" / "Span-3").exists() and list((tmp_path / "out").glob("Span-*")) == []
    assert [p.name for p in (tmp_path / "out").iterdir()] == [failed.name]
    report = json.loads(failed.read_text())
    assert report["error"].startswith("--strict: 1 of 3 pairs are bad")
    assert report["num_written"] == 0 and report["good_not_written"] == ["img0", "img1"]
    assert [(b["source_id"], "outside" in b["reason"]) for b in report["bad"]] == [("bad", True)]
    # fixed input, same span: no --overwrite needed (nothing was there), and the stale report goes
    (tmp_path / "images" / "bad.png").unlink()
    (tmp_path / "masks" / "bad.png").unlink()
    assert _run(tmp_path, "--strict", "--span", "3") == 0
    assert not failed.exists()
    assert _report(tmp_path / "out" / "Span-3")["written"] == ["img0", "img1"]


def test_labeled_stems_without_image_are_a_warning_or_a_strict_error(tmp_path, capsys):
    _dataset(tmp_path, n=2)
    (tmp_path / "labeled.json").write_text(json.dumps({"img0": [0, 1], "ghost": [0, 2], "img9": [0]}))
    assert _run(tmp_path, "--labeled", str(tmp_path / "labeled.json")) == 0
    captured = capsys.readouterr()
    assert "warning: 2 --labeled stems match no image file" in captured.err and "ghost, img9" in captured.err
    assert "2 --labeled stems without image" in captured.out
    report = _report(tmp_path / "out")
    assert report["num_labeled_unmatched"] == 2 and report["labeled_unmatched"] == ["ghost", "img9"]
    assert report["num_written"] == 2 and report["num_bad"] == 0
    assert {r.source_id: r.labeled for r in _records(tmp_path / "out")} == {"img0": [0, 1], "img1": None}
    first = (tmp_path / "out" / "data-00000-of-00001.tfrecord").read_bytes()
    # --strict: an error, nothing replaced, the report beside the output folder
    assert _run(tmp_path, "--labeled", str(tmp_path / "labeled.json"), "--strict", "--overwrite") == 2
    err = capsys.readouterr().err
    assert "--strict: 2 --labeled stems match no image file" in err and "(ghost, img9)" in err
    assert (tmp_path / "out" / "data-00000-of-00001.tfrecord").read_bytes() == first
    failed = tmp_path / "ingest_report.out.failed.json"
    assert json.loads(failed.read_text())["labeled_unmatched"] == ["ghost", "img9"]
    # every stem matched: no warning, the count is 0
    (tmp_path / "labeled.json").write_text(json.dumps({"img1": [0, 2]}))
    assert _run(tmp_path, "--labeled", str(tmp_path / "labeled.json"), "--strict", "--overwrite") == 0
    assert "warning" not in capsys.readouterr().err and not failed.exists()
    assert _report(tmp_path / "out")["num_labeled_unmatched"] == 0


@pytest.mark.parametrize("n, shards, expected", [
    # one line every tenth of a shard once there are more than 100 pairs: 101 // 10 = 10, 101 // 2 // 10 = 5
    (101, 1, {"data-00000-of-00001.tfrecord": [(k, 101) for k in range(10, 101, 10)]}),
    (101, 2, {"data-00000-of-00002.tfrecord": [(k, 51) for k in range(5, 51, 5)],
              "data-00001-of-00002.tfrecord": [(k, 50) for k in range(5, 51, 5)]}),
    (100, 1, {}),
])
def test_progress_lines_on_more_than_100_pairs(tmp_path, capfd, n, shards, expected):
    """capfd (file-descriptor capture): with --shards 2 the lines come from the worker processes."""
    _dataset(tmp_path, n=n, size=(2, 2))
    assert _run(tmp_path, "--shards", str(shards)) == 0
    out = capfd.readouterr().out
    got = {}
    for line in out.splitlines():
        if line.endswith(" pairs"):
            match = re.fullmatch(r"ingest: (\S+): (\d+)/(\d+) pairs", line)
            assert match, f"garbled progress line {line!r}"
            got.setdefault(match.group(1), []).append((int(match.group(2)), int(match.group(3))))
    assert {k: sorted(v) for k, v in got.items()} == expected
    assert _report(tmp_path / "out")["num_written"] == n


def test_empty_folders(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    assert _run(tmp_path) == 2
    assert "no image files" in capsys.readouterr().err
    assert cli.main(["ingest", str(tmp_path / "nope"), str(tmp_path / "masks"), "--output", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    ("{not json", "cannot read it"),
    ('["a", "b"]', "top level must be an object"),
    ('{"img0": [0, 5]}', "outside [0, 3)"),
])
def test_bad_labeled_json(tmp_path, content, message, capsys):
    _dataset(tmp_path, n=1)
    (tmp_path / "labeled.json").write_text(content)
    assert _run(tmp_path, "--labeled", str(tmp_path / "labeled.json")) == 2
    err = capsys.readouterr().err
    assert "labeled.json" in err and message in err
    assert not (tmp_path / "out").exists()


def test_existing_span_needs_overwrite(tmp_path, capsys):
    _dataset(tmp_path, n=2)
    assert _run(tmp_path, "--span", "0") == 0
    first = (tmp_path / "out" / "Span-0" / "data-00000-of-00001.tfrecord").read_bytes()
    _dataset(tmp_path, n=3, seed=9)
    assert _run(tmp_path, "--span", "0") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "out" / "Span-0" / "data-00000-of-00001.tfrecord").read_bytes() == first
    assert _run(tmp_path, "--span", "0", "--overwrite") == 0
    assert len(_records(tmp_path / "out" / "Span-0")) == 3
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["Span-0"]  # no temp/old folders left


def test_crash_mid_write_leaves_no_partial_span(tmp_path, monkeypatch):
    _dataset(tmp_path, n=3)
    calls = {"n": 0}
    real = ingest.encode_pair

    def crash_on_second(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash")
        return real(*args)

    monkeypatch.setattr(ingest, "encode_pair", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        ingest.ingest(tmp_path / "images", tmp_path / "masks", tmp_path / "out", span=1,
                      options=ingest.IngestOptions(num_classes=3))
    assert not (tmp_path / "out" / "Span-1").exists()
    assert list((tmp_path / "out").iterdir()) == []
    monkeypatch.setattr(ingest, "encode_pair", real)
    result = ingest.ingest(tmp_path / "images", tmp_path / "masks", tmp_path / "out", span=1,
                           options=ingest.IngestOptions(num_classes=3))
    assert len(result.written) == 3


def test_num_classes_from_classes_json(tmp_path):
    _dataset(tmp_path, n=1, num_classes=3)
    (tmp_path / "classes.json").write_text(json.dumps({"class_names": ["bg", "a"]}))
    _make_bad(tmp_path, "image_without_mask")
    code = cli.main(["ingest", str(tmp_path / "images"), str(tmp_path / "masks"), "--output", str(tmp_path / "out")])
    # C=2 from classes.json makes the random mask (ids 0..2) invalid: the only pair is bad.
    assert code == 2


def test_cli_help_lists_every_option():
    result = subprocess.run([sys.executable, "-m", "segbalance.pipeline.cli", "ingest", "--help"],
                            capture_output=True, text=True, check=True)
    for option in ("--output", "--span", "--labeled", "--num-classes", "--ignore-index", "--palette",
                   "--shards", "--strict", "--overwrite"):
        assert option in result.stdout
    top = subprocess.run([sys.executable, "-m", "segbalance.pipeline.cli"], capture_output=True, text=True)
    assert top.returncode == 2 and "sample-data" in top.stdout and "ingest" in top.stdout
