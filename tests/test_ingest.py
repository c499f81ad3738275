"""`segbalance ingest`: round trip, every bad input, atomic output, CLI exit codes."""
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from segbalance.pipeline import cli, ingest, output_guard
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


def _slow_shard(args):
    """A shard worker that takes long (module level: the pool pickles it by name): says it started, then waits."""
    import time

    Path(args[0]).with_name(f"started-{os.getpid()}").write_text("")
    time.sleep(40)


def test_sigterm_ends_the_shard_workers_at_once(tmp_path, monkeypatch, capsys):
    """QA 91 L6: SIGTERM to `ingest --shards K` stopped it only once every shard was written (leaving the
    worker pool's block waits for them). The workers are ended at once, and nothing is left."""
    import signal
    import threading
    import time

    _dataset(tmp_path, n=4)
    monkeypatch.setattr(ingest, "_write_shard", _slow_shard)
    workers = []

    def stop_when_both_started():
        for _ in range(600):
            workers[:] = [int(p.name.split("-")[1]) for p in tmp_path.glob(".segbalance-ingest-tmp-*/started-*")]
            if len(workers) == 2:
                break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    started = time.monotonic()
    threading.Thread(target=stop_when_both_started, daemon=True).start()
    assert _run(tmp_path, "--shards", "2") == 143
    assert time.monotonic() - started < 30  # the workers' 40 s were not waited for
    assert len(workers) == 2
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".segbalance-ingest-tmp-*"))


def test_a_name_that_is_not_utf8_or_holds_a_newline_is_one_line_with_what_to_do(tmp_path, capsys):
    """QA 94 L8: a file name that is not UTF-8 made a good pair a bad one whose reason was Python's codec error,
    and a name with a newline split its skip line in two."""
    _dataset(tmp_path, n=2)
    image, mask = (tmp_path / "images" / "img0.png").read_bytes(), (tmp_path / "masks" / "img0.png").read_bytes()
    not_utf8 = os.fsdecode(b"bad\xff")
    for folder, data in (("images", image), ("masks", mask)):
        (tmp_path / folder / f"{not_utf8}.png").write_bytes(data)
        (tmp_path / folder / "new\nline.png").write_bytes(data)
    (tmp_path / "images" / "orphan\nimage.png").write_bytes(image)
    assert _run(tmp_path) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ingest: skipped")]
    assert sorted(lines) == [
        "ingest: skipped bad\\udcff: its file name is not UTF-8 text (bad\\udcff), which a record's image/source_id "
        "must be: rename the image and its mask",
        f"ingest: skipped orphan\\nimage: image has no mask orphan\\nimage.* in {tmp_path / 'masks'}"]
    bad = {entry["code"] for entry in _report(tmp_path / "out")["bad"]}
    assert bad == {"name_not_utf8", "no_mask"}
    assert sorted(r.source_id for r in _records(tmp_path / "out")) == ["img0", "img1", "new\nline"]


def test_more_shards_than_pairs_writes_one_shard_per_pair(tmp_path, capsys):
    """QA 69 F12: --shards 100000 over 6 pairs wrote 99,994 empty shard files."""
    pairs = _dataset(tmp_path, n=3)
    assert _run(tmp_path, "--shards", "50") == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("data-*")) == [
        f"data-0000{i}-of-00003.tfrecord" for i in range(3)]
    assert {r.source_id for r in _records(tmp_path / "out")} == pairs.keys()
    assert all(sum(1 for _ in tf.data.TFRecordDataset(str(f))) == 1 for f in (tmp_path / "out").glob("data-*"))
    assert "ingest: note: --shards 50 is more than the 3 image pairs: writing 3 shards, at most one pair each" \
        in capsys.readouterr().err


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


def test_with_a_palette_file_palette_mode_masks_map_by_colour_not_by_index(tmp_path):
    """A VOC-style "P" mask whose palette order differs from --palette: the colours decide the ids."""
    index = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    _write(tmp_path / "images" / "p.png", np.zeros((2, 2, 3), np.uint8))
    (tmp_path / "masks").mkdir()
    mask = Image.fromarray(index, mode="P")
    mask.putpalette([0, 0, 0, 0, 200, 0, 200, 0, 0] + [9] * (253 * 3))  # index 1 green, 2 red
    mask.save(tmp_path / "masks" / "p.png")
    (tmp_path / "palette.json").write_text(json.dumps([[0, 0, 0], [200, 0, 0], [0, 200, 0]]))  # 1 red, 2 green
    assert _run(tmp_path, "--palette", str(tmp_path / "palette.json")) == 0
    (record,) = _records(tmp_path / "out")
    np.testing.assert_array_equal(codec.decode_array(record.mask_bytes), [[0, 2], [1, 2]])


BAD_CASES = {
    "undecodable_image": "image",
    "undecodable_mask": "mask",
    "rgb_mask_no_palette": "is RGB colour, 3 channels, and no --palette",
    # QA (session 23): class ids saved as RGB were called colour masks, with no hint; RGBA was "3 channels"
    "grey_ids_saved_as_rgb": "is RGB colour, 3 channels, all equal: class ids saved as RGB; save the masks "
                             "single-channel (8-bit greyscale), or map them with --palette",
    "rgba_mask_no_palette": "is RGBA, 4 channels, and no --palette",
    "image_16_bit": "(16-bit); expected 8-bit RGB or greyscale: convert it to 8 bits",
    "size_mismatch": "but mask is",
    "class_id_too_large": "outside",
    "image_without_mask": "has no mask",
    "mask_without_image": "has no image",
}
BAD_CODES = {  # the machine-readable code of each (run.py matches "class_ids_out_of_range" exactly)
    "undecodable_image": "undecodable",
    "undecodable_mask": "undecodable",
    "rgb_mask_no_palette": "rgb_mask_without_palette",
    "grey_ids_saved_as_rgb": "rgb_mask_without_palette",
    "rgba_mask_no_palette": "rgb_mask_without_palette",
    "image_16_bit": "image_not_8bit",
    "size_mismatch": "size_mismatch",
    "class_id_too_large": "class_ids_out_of_range",
    "image_without_mask": "no_mask",
    "mask_without_image": "no_image",
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
    elif case == "grey_ids_saved_as_rgb":
        _write(tmp_path / "images" / "bad.png", image)
        _write(tmp_path / "masks" / "bad.png", np.repeat(rng.integers(0, 3, (6, 6, 1), dtype=np.uint8), 3, axis=-1))
    elif case == "rgba_mask_no_palette":
        _write(tmp_path / "images" / "bad.png", image)
        _write(tmp_path / "masks" / "bad.png", np.concatenate([image, np.full((6, 6, 1), 255, np.uint8)], -1))
    elif case == "image_16_bit":
        (tmp_path / "images").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 60000, (6, 6)).astype(np.uint16)).save(tmp_path / "images" / "bad.png")
        _write(tmp_path / "masks" / "bad.png", np.zeros((6, 6), np.uint8))
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
    assert bad["code"] == BAD_CODES[case]
    assert "skipped bad" in capsys.readouterr().err
    assert {r.source_id for r in _records(tmp_path / "out")} == {"img0", "img1"}


@pytest.mark.parametrize("case", ["undecodable_mask", "class_id_too_large", "mask_without_image"])
def test_strict_writes_nothing(tmp_path, case, capsys):
    _dataset(tmp_path, n=2)
    _make_bad(tmp_path, case)
    assert _run(tmp_path, "--strict") == 2
    # one line: the bad pair is named there and in the failed report, not in a 'skipped' line first (QA 96 L4)
    _one_error_line(capsys.readouterr().err, "--strict: 1 of 3 pairs are bad (first: bad: ", "report: ")
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
    _one_error_line(capsys.readouterr().err, "--strict: 2 --labeled stems match no image file", "(ghost, img9)")
    assert (tmp_path / "out" / "data-00000-of-00001.tfrecord").read_bytes() == first
    failed = tmp_path / "ingest_report.out.failed.json"
    assert json.loads(failed.read_text())["labeled_unmatched"] == ["ghost", "img9"]
    # every stem matched: no warning, the count is 0
    (tmp_path / "labeled.json").write_text(json.dumps({"img1": [0, 2]}))
    assert _run(tmp_path, "--labeled", str(tmp_path / "labeled.json"), "--strict", "--overwrite") == 0
    assert "warning" not in capsys.readouterr().err and not failed.exists()
    assert _report(tmp_path / "out")["num_labeled_unmatched"] == 0


@pytest.mark.parametrize("kind", ["file", "link"])
def test_a_file_named_like_the_failed_report_that_ingest_did_not_write_is_left_alone(tmp_path, capsys, kind):
    """QA 94 L11: the failed report was written over a file of its name beside the target (through a link: into
    the link's target), and the next ingest that wrote its data deleted that file."""
    _dataset(tmp_path, n=2)
    (tmp_path / "labeled.json").write_text(json.dumps({"img0": [0, 1], "ghost": [0]}))  # --strict: refused
    theirs, named = tmp_path / "notes.txt", tmp_path / "ingest_report.out.failed.json"
    theirs.write_text("my own notes\n")
    if kind == "link":
        named.symlink_to(theirs)
    else:
        theirs.rename(named)
        theirs = named
    assert _run(tmp_path, "--labeled", str(tmp_path / "labeled.json"), "--strict") == 2
    assert f"report: not written ({named} is a file ingest did not write)" in capsys.readouterr().err
    assert theirs.read_text() == "my own notes\n" and named.is_symlink() == (kind == "link")
    assert _run(tmp_path) == 0  # a successful ingest removes an earlier failure's report only
    assert theirs.read_text() == "my own notes\n" and named.is_symlink() == (kind == "link")


def test_labeled_keys_of_which_none_is_a_stem_are_refused(tmp_path, capsys):
    """QA 68: keys written as file names matched no image; the sets were unused (every image 'complete')
    after one warning, and the run trained and pushed. None matching is refused, nothing written."""
    _dataset(tmp_path, n=2)
    (tmp_path / "labeled.json").write_text(json.dumps({"img0.png": [0, 1], "img1.PNG": [0]}))
    assert _run(tmp_path, "--labeled", str(tmp_path / "labeled.json")) == 2
    _one_error_line(capsys.readouterr().err, "--labeled: none of its 2 keys is the stem of an image file in "
                    f"{tmp_path / 'images'} (first: img0.png, img1.PNG); they look like file names: drop the suffixes "
                    "('img0.png' -> 'img0'); keys are file stems, e.g. 'img0' for img0.png; nothing was written")
    assert not (tmp_path / "out").exists()
    (tmp_path / "labeled.json").write_text(json.dumps({"ghost": [0]}))
    assert _run(tmp_path, "--labeled", str(tmp_path / "labeled.json")) == 2
    err = capsys.readouterr().err
    assert "none of its 1 keys is the stem of an image file" in err and "look like file names" not in err
    (tmp_path / "labeled.json").write_text(json.dumps({}))  # an empty file: no labelled sets, as before
    assert _run(tmp_path, "--labeled", str(tmp_path / "labeled.json")) == 0


def test_groups_are_written_and_every_image_needs_one(tmp_path, capsys):
    """--groups: image/group_id on every record (data.split_by: group splits on it); an image without a
    group stops the command (exit 2, one line, nothing written); a stem without image is a warning, an
    error with --strict; integer groups are kept as their text."""
    _dataset(tmp_path, n=3)
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({"img0": "tileA", "img1": "tileA", "img2": 7, "ghost": "tileB"}))
    assert _run(tmp_path, "--groups", str(groups)) == 0
    captured = capsys.readouterr()
    assert "warning: 1 --groups stems match no image file" in captured.err and "ghost" in captured.err
    assert {r.source_id: r.group for r in _records(tmp_path / "out")} == {"img0": "tileA", "img1": "tileA",
                                                                          "img2": "7"}
    report = _report(tmp_path / "out")
    assert report["num_groups"] == 2 and report["groups_unmatched"] == ["ghost"]
    # without --groups: no group feature
    assert _run(tmp_path, "--overwrite") == 0
    assert {r.group for r in _records(tmp_path / "out")} == {None}
    capsys.readouterr()
    before = _tree(tmp_path / "out")
    assert _run(tmp_path, "--groups", str(groups), "--strict", "--overwrite") == 2
    _one_error_line(capsys.readouterr().err, "--strict: 1 --groups stems match no image file", "ghost")
    groups.write_text(json.dumps({"img0": "tileA", "img2": "tileB"}))
    assert _run(tmp_path, "--groups", str(groups), "--overwrite") == 2
    _one_error_line(capsys.readouterr().err, "--groups: 1 of 3 images have no group (img1)", "nothing was written")
    assert _tree(tmp_path / "out") == before


@pytest.mark.parametrize("content, message", [
    ('["tileA"]', "the top level must be an object, got a JSON list"),
    ('{"img0": ["tileA"]}', "key 'img0' is a JSON list (['tileA']), not a group name"),
    ('{"img0": " "}', "key 'img0' is a JSON string (' '), not a group name"),
    ('{"img0": true}', "key 'img0' is a JSON boolean (True), not a group name"),
    ('{"img0": "a",', "is not valid JSON"),
])
def test_bad_groups_json(tmp_path, content, message, capsys):
    _refused_file_option(tmp_path, capsys, "--groups", "groups.json", content,
                         f"groups file {tmp_path / 'groups.json'}", message)


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
    ("{not json", "is not valid JSON: Expecting property name enclosed in double quotes at line 1, column 2"),
    ('{"img0": [0, 1],\n "img1": [0 2]}', "is not valid JSON: Expecting ',' delimiter at line 2, column 13"),
    ('["a", "b"]', "the top level must be an object, got a JSON list"),
    ('{"img0": [0, 5]}', "outside [0, 3)"),
    # only lists of integers: a string is not a list of its digits, floats and booleans are not ids
    ('{"img0": "13"}', "key 'img0' is a JSON string ('13'), not a list of class ids"),
    ('{"img0": 1}', "key 'img0' is a JSON integer (1), not a list of class ids"),
    ('{"img0": [1.9, 0]}', "key 'img0' lists 1.9 (number); class ids must be integers"),
    ('{"img0": [0, true]}', "key 'img0' lists True (boolean); class ids must be integers"),
    ('{"img0": [0, "1"]}', "key 'img0' lists '1' (string); class ids must be integers"),
    ('{"img0": [0, null]}', "key 'img0' lists None (null); class ids must be integers"),
    ('{"img0": [0, -1]}', "key 'img0' lists negative class ids [-1]"),
])
def test_bad_labeled_json(tmp_path, content, message, capsys):
    _refused_file_option(tmp_path, capsys, "--labeled", "labeled.json", content,
                         f"labeled file {tmp_path / 'labeled.json'}", message)


def test_labeled_json_lists_of_integers_are_valid(tmp_path):
    """The valid form round-trips unchanged (the strict reading refuses only what is not a list of ints)."""
    _dataset(tmp_path, n=2)
    (tmp_path / "labeled.json").write_text('{"img0": [2, 0], "img1": []}')
    assert _run(tmp_path, "--labeled", str(tmp_path / "labeled.json")) == 0
    assert {r.source_id: r.labeled for r in _records(tmp_path / "out")} == {"img0": [0, 2], "img1": []}


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


def test_a_span_another_ingest_wrote_meanwhile_is_not_replaced(tmp_path, monkeypatch, capsys):
    """Two ingests into one span at once: the --overwrite check ran at the start only, so the second to
    finish replaced the first's records, and both said `wrote N records` (QA: 600 written, 350 left).
    The one finishing last now stops without replacing anything, unless it was given --overwrite."""
    _dataset(tmp_path, n=2)
    other = tmp_path / "other"
    _dataset(other, n=3, seed=4)
    real_write_marker, started = ingest.output_guard.write_marker, []

    def the_other_ingest_finishes_first(folder, *args, **kwargs):  # while this one is still writing
        real_write_marker(folder, *args, **kwargs)
        if not started:
            started.append(folder)
            assert cli.main(["ingest", str(other / "images"), str(other / "masks"), "--output",
                             str(tmp_path / "out"), "--num-classes", "3", "--span", "0"]) == 0

    monkeypatch.setattr(ingest.output_guard, "write_marker", the_other_ingest_finishes_first)
    assert _run(tmp_path, "--span", "0") == 2
    err = capsys.readouterr().err
    assert "out/Span-0 was written by another command while this ingest ran; nothing was replaced" in err
    assert len(_records(tmp_path / "out" / "Span-0")) == 3  # the other's records, whole
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["Span-0"]  # this one's temporary folder is gone
    assert _run(tmp_path, "--span", "0", "--overwrite") == 0  # asked for: replaced
    assert len(_records(tmp_path / "out" / "Span-0")) == 2


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
    for option in ("--output", "--span", "--labeled", "--groups", "--num-classes", "--ignore-index", "--palette",
                   "--shards", "--strict", "--overwrite"):
        assert option in result.stdout
    top = subprocess.run([sys.executable, "-m", "segbalance.pipeline.cli"], capture_output=True, text=True)
    assert top.returncode == 2 and "sample-data" in top.stdout and "ingest" in top.stdout


# --------------------------------------------------------------------------- output safety (issue 13, item 1)
def _tree(root):
    """{relative path: bytes} of every file under root (what must survive a refused command)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _one_error_line(err, *parts):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segbalance ingest: error: "), err
    assert "Traceback" not in err
    for part in parts:
        assert part in lines[0], (part, lines[0])


def _refused_file_option(tmp_path, capsys, option, name, content, lead, *parts):
    """Ingest of one good pair with ``option`` naming a file of ``content``: exit 2, one error line that
    starts with ``lead`` (the file named) and holds ``parts``, nothing written."""
    _dataset(tmp_path, n=1)
    (tmp_path / name).write_text(content)
    assert _run(tmp_path, option, str(tmp_path / name)) == 2
    err = capsys.readouterr().err
    _one_error_line(err, *parts)
    assert err.startswith(f"segbalance ingest: error: {lead}"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("output", [".", "images", "images/sub", "masks"])
def test_overwrite_never_touches_the_input_folders(tmp_path, output, capsys):
    """`ingest d/images d/masks --output d --overwrite` used to rename d aside and delete it."""
    d = tmp_path / "d"
    _dataset(d, n=2)
    (d / "classes.json").write_text(json.dumps({"class_names": ["bg", "a", "b"]}))
    before = _tree(d)
    target = d / output
    code = cli.main(["ingest", str(d / "images"), str(d / "masks"), "--output", str(target), "--overwrite"])
    assert code == 2
    relation = {".": "contains", "images": "is", "images/sub": "is inside", "masks": "is"}[output]
    _one_error_line(capsys.readouterr().err, f"--output {target} {relation} the input folder", "nothing was written")
    assert _tree(d) == before and sorted(p.name for p in d.iterdir()) == ["classes.json", "images", "masks"]
    # with --span the span folder inside the inputs is refused too
    if output != ".":
        assert cli.main(["ingest", str(d / "images"), str(d / "masks"), "--output", str(target), "--span", "0"]) == 2
        assert "the input folder" in capsys.readouterr().err and _tree(d) == before


def test_overwrite_replaces_only_what_ingest_wrote(tmp_path, capsys):
    _dataset(tmp_path, n=2)
    # a user's folder: not empty, never written by ingest -> refused even with --overwrite
    other = tmp_path / "out"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert _run(tmp_path, "--overwrite") == 2
    _one_error_line(capsys.readouterr().err, f"--output {other} is not empty: it holds notes.txt, which segbalance "
                    "ingest did not write; choose a new or empty folder (nothing was written or deleted)")
    assert _tree(other) == {"notes.txt": b"mine"}
    (other / "notes.txt").unlink()
    # an ingest output carries the marker; --overwrite replaces it
    assert _run(tmp_path) == 0
    assert json.loads((other / output_guard.MARKER).read_text()) == {
        "written_by": "ingest", "target": "out", "shards": ["data-00000-of-00001.tfrecord"]}
    assert _run(tmp_path, "--overwrite") == 0
    # ... unless someone put a file of theirs into it, a shard-like name included (QA 80 L2: it was deleted)
    for name in ("notes.txt", "data-00003-of-00004.tfrecord"):
        (other / name).write_text("mine")
        assert _run(tmp_path, "--overwrite") == 2
        _one_error_line(capsys.readouterr().err, f"--output {other} is not empty: it holds {name}")
        assert (other / name).read_text() == "mine" and (other / ingest.REPORT_NAME).is_file()
        (other / name).unlink()
    marker = json.loads((other / output_guard.MARKER).read_text())
    (other / "notes.txt").write_text("mine")  # a marker edited to claim it (QA 82 L4: it was deleted)
    (other / output_guard.MARKER).write_text(json.dumps({**marker, "shards": [*marker["shards"], "notes.txt"]}))
    assert _run(tmp_path, "--overwrite") == 2 and (other / "notes.txt").read_text() == "mine"
    (other / "notes.txt").unlink()
    assert _run(tmp_path, "--overwrite", "--shards", "2") == 0  # the shards it wrote itself are its own
    assert _run(tmp_path, "--overwrite") == 0
    assert sorted(p.name for p in other.glob("data-*")) == ["data-00000-of-00001.tfrecord"]
    # a folder written before the marker existed (report + shards only) is still ours
    (other / output_guard.MARKER).unlink()
    assert _run(tmp_path, "--overwrite") == 0
    assert sorted(p.name for p in other.iterdir()) == [output_guard.MARKER, "data-00000-of-00001.tfrecord",
                                                       ingest.REPORT_NAME]


@pytest.mark.parametrize("span", [None, "0"])
def test_output_that_is_a_file(tmp_path, span, capsys):
    _dataset(tmp_path, n=1)
    (tmp_path / "out").write_text("a file")
    assert _run(tmp_path, *(["--span", span] if span else [])) == 2
    target = tmp_path / "out" / f"Span-{span}" if span else tmp_path / "out"
    where = f" ({tmp_path / 'out'} is a file)" if span else ""
    _one_error_line(capsys.readouterr().err, f"--output {target} is not a folder{where}")
    assert (tmp_path / "out").read_text() == "a file"


def test_killed_ingest_leaves_nothing_a_data_glob_matches_and_the_next_run_cleans_it(tmp_path):
    """SIGKILL in the middle of writing (no `finally` runs): the temporary folder is hidden, holds
    no data-* file and no Span-* name; the next ingest into the same folder removes it."""
    _dataset(tmp_path, n=4)
    script = (
        "import os, signal\n"
        "from segbalance.pipeline import ingest\n"
        "real = ingest.encode_pair\n"
        "calls = []\n"
        "def kill_on_third(*a):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 3:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(*a)\n"
        "ingest.encode_pair = kill_on_third\n"
        f"ingest.ingest({str(tmp_path / 'images')!r}, {str(tmp_path / 'masks')!r}, {str(tmp_path / 'out')!r}, "
        "span=1, options=ingest.IngestOptions(num_classes=3))\n")
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    (left,) = (tmp_path / "out").iterdir()
    assert left.name.startswith(ingest.TMP_PREFIX) and left.name.startswith(".")
    assert "Span-" not in left.name and "data-" not in left.name
    assert [p.name for p in left.iterdir()] == ["shard-00000-of-00001.partial"]
    for pattern in ("*/data-*", "Span-*/data-*", "*/*.tfrecord", "Span-*"):
        assert tf.io.gfile.glob(str(tmp_path / "out" / pattern)) == [], pattern
    # the next run (same parent folder) removes it; a live process's folder would be kept
    assert _run(tmp_path, "--span", "2") == 0
    assert cli.main(["ingest", str(tmp_path / "images"), str(tmp_path / "masks"), "--output", str(tmp_path / "out"),
                     "--span", "1", "--num-classes", "3"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Span-1", "Span-2"]


def test_replacement_killed_between_renames_is_restored(tmp_path):
    """A replacement killed after moving the old span aside: the next ingest puts it back."""
    _dataset(tmp_path, n=2)
    assert _run(tmp_path, "--span", "1") == 0
    before = _tree(tmp_path / "out" / "Span-1")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    aside = tmp_path / "out" / f"{ingest.OLD_PREFIX}{int(dead.stdout)}"
    (tmp_path / "out" / "Span-1").rename(aside)
    assert _run(tmp_path, "--span", "2") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Span-1", "Span-2"]
    assert _tree(tmp_path / "out" / "Span-1") == before


# --------------------------------------------------------------------------- masks must be lossless (item 5)
def _jpeg_bytes(array):
    import io as _io
    buffer = _io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_jpeg_masks_are_bad_pairs_even_under_a_png_name(tmp_path, capsys):
    _dataset(tmp_path, n=2)
    rng = np.random.default_rng(3)
    ids = np.kron(rng.integers(0, 3, size=(3, 3)), np.ones((4, 4))).astype(np.uint8)  # 12x12 blocks
    _write(tmp_path / "images" / "j.png", rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8))
    (tmp_path / "masks" / "j.png").write_bytes(_jpeg_bytes(ids * 100))
    _write(tmp_path / "images" / "k.png", rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8))
    (tmp_path / "masks" / "k.jpg").write_bytes(_jpeg_bytes(ids))
    assert _run(tmp_path) == 0
    reasons = {b["source_id"]: b["reason"] for b in _report(tmp_path / "out")["bad"]}
    assert reasons == {
        "j": "mask j.png is JPEG data under a .png name: JPEG is lossy and changes class ids at region edges; "
             "masks must be lossless PNG",
        "k": "mask k.jpg is JPEG data: JPEG is lossy and changes class ids at region edges; masks must be lossless PNG"}
    assert "no mask" not in capsys.readouterr().err
    assert {r.source_id for r in _records(tmp_path / "out")} == {"img0", "img1"}
    assert _run(tmp_path, "--strict", "--overwrite") == 2
    # the error line alone (QA 96 L4: a "skipped" line per bad pair came first); the report names both
    _one_error_line(capsys.readouterr().err, "--strict: 2 of 4 pairs are bad", "JPEG")


def test_one_bit_masks_are_ids_0_and_1_and_alpha_masks_are_named(tmp_path):
    _dataset(tmp_path, n=1)
    rng = np.random.default_rng(4)
    bits = rng.integers(0, 2, size=(12, 10)).astype(bool)
    for stem in ("bits", "la", "cmyk", "rgba"):
        _write(tmp_path / "images" / f"{stem}.png", rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8))
    Image.fromarray(bits).convert("1").save(tmp_path / "masks" / "bits.png")
    assert Image.open(tmp_path / "masks" / "bits.png").mode == "1"
    Image.fromarray(np.zeros((12, 10, 2), np.uint8), mode="LA").save(tmp_path / "masks" / "la.png")
    Image.new("CMYK", (10, 12)).save(tmp_path / "masks" / "cmyk.tif")
    rgba = np.full((12, 10, 4), 255, np.uint8)
    rgba[0, 0, 3] = 128
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "masks" / "rgba.png")
    assert _run(tmp_path) == 0
    records = {r.source_id: r for r in _records(tmp_path / "out")}
    assert sorted(records) == ["bits", "img0"]
    np.testing.assert_array_equal(codec.decode_array(records["bits"].mask_bytes), bits.astype(np.uint8))
    reasons = {b["source_id"]: b["reason"] for b in _report(tmp_path / "out")["bad"]}
    assert reasons["la"].startswith("mask la.png is greyscale with an alpha channel (LA); class-id masks must be "
                                    "single-channel")
    assert reasons["cmyk"].startswith("mask cmyk.tif is CMYK colour; class-id masks must be single-channel")
    assert reasons["rgba"].startswith("mask rgba.png is RGBA with 1 (partly) transparent pixels")
    assert not any("3 channels" in r for r in reasons.values())


@pytest.mark.parametrize("case, where", [("undecodable_image", "image bad.png"), ("undecodable_mask", "mask bad.png")])
def test_undecodable_files_are_named_without_python_object_reprs(tmp_path, case, where):
    _dataset(tmp_path, n=1)
    _make_bad(tmp_path, case)
    assert _run(tmp_path) == 0
    (bad,) = _report(tmp_path / "out")["bad"]
    assert where in bad["reason"] and "BytesIO" not in bad["reason"] and "0x" not in bad["reason"], bad["reason"]


@pytest.mark.parametrize("folder, what", [("images", "image"), ("masks", "mask")])
def test_an_empty_file_is_said_to_be_empty(tmp_path, folder, what):
    """QA 89 L2: a 0-byte image or mask (a copy that failed) was "not an image PIL can read"."""
    _dataset(tmp_path, n=2)
    victim = sorted((tmp_path / folder).iterdir())[0]
    victim.write_bytes(b"")
    assert _run(tmp_path) == 0
    (bad,) = _report(tmp_path / "out")["bad"]
    assert bad["code"] == "undecodable"
    assert bad["reason"] == f"{what} {victim.name} is an empty file (0 bytes): copy it again from its source"


# --------------------------------------------------------------------------- class count (items 6, 8)
@pytest.mark.parametrize("value", ["0", "-1", "256"])
def test_num_classes_out_of_range_is_refused_not_replaced_by_classes_json(tmp_path, value, capsys):
    _dataset(tmp_path, n=1)
    (tmp_path / "classes.json").write_text(json.dumps({"class_names": ["bg", "a", "b"]}))
    assert _run(tmp_path, num_classes=value) == 2
    _one_error_line(capsys.readouterr().err, f"--num-classes must be between 1 and 255 (masks are 8-bit), got {value}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, message", [
    ('{"class_names": ["bg", "a"', "is not valid JSON: Expecting ',' delimiter at line 1, column 27"),
    ('["bg", "a"]', 'expected {"class_names": ["background", ...]}'),
    ('{"names": ["bg", "a"]}', 'expected {"class_names": ["background", ...]}'),
    ('{"class_names": []}', "with at least one name"),
    ('{"class_names": "bg,a"}', "with at least one name"),
    ('{"class_names": [0, 1]}', "(strings)"),
])
def test_malformed_classes_json(tmp_path, content, message, capsys):
    _dataset(tmp_path, n=1)
    (tmp_path / "classes.json").write_text(content)
    code = cli.main(["ingest", str(tmp_path / "images"), str(tmp_path / "masks"), "--output", str(tmp_path / "out")])
    assert code == 2
    _one_error_line(capsys.readouterr().err, f"classes file {tmp_path / 'classes.json'}", message)


def test_output_holding_spans_needs_span(tmp_path, capsys):
    _dataset(tmp_path, n=1)
    assert _run(tmp_path, "--span", "0") == 0
    before = _tree(tmp_path / "out")
    assert _run(tmp_path, "--overwrite") == 2
    _one_error_line(capsys.readouterr().err, f"--output {tmp_path / 'out'} holds spans (Span-0): add --span N")
    assert _tree(tmp_path / "out") == before



# --------------------------------------------------------------------------- QA pass on the ingest path
def _palette_image(ids, colours):
    image = Image.fromarray(ids, mode="P")
    image.putpalette(np.asarray(colours, np.uint8).ravel().tolist() + [0] * (768 - 3 * len(colours)))
    return image


@pytest.mark.parametrize("suffix", [".bmp", ".tif"])
def test_palette_bmp_and_tiff_images_are_stored_by_their_colours(tmp_path, suffix):
    """Item 1: a "P" image in a format that is re-encoded (not PNG/JPEG) used to be stored as its palette
    indices (a dark grey picture); the reference is the palette looked up with NumPy."""
    rng = np.random.default_rng(11)
    ids = rng.integers(0, 4, size=(6, 5)).astype(np.uint8)
    colours = np.array([[10, 20, 30], [200, 0, 0], [0, 200, 0], [0, 0, 200]], np.uint8)
    (tmp_path / "images").mkdir()
    _palette_image(ids, colours).save(tmp_path / "images" / f"p{suffix}")
    assert Image.open(tmp_path / "images" / f"p{suffix}").mode == "P"
    _write(tmp_path / "masks" / "p.png", ids % 3)
    assert _run(tmp_path) == 0
    (record,) = _records(tmp_path / "out")
    np.testing.assert_array_equal(codec.decode_array(record.image_bytes), colours[ids])
    np.testing.assert_array_equal(tf.io.decode_image(record.image_bytes, channels=3).numpy(), colours[ids])


def _jpeg_with_orientation(array, orientation):
    import io as _io
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = _io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def test_exif_rotated_images_are_stored_upright_and_counted(tmp_path, capsys):
    """Item 2: orientation 6 = the stored pixels must be turned 90 degrees clockwise for display; the mask
    was drawn on the displayed (4x6) picture. Reference: TensorFlow's decode of the JPEG (what the served
    model decodes from the original bytes) turned with np.rot90; PIL's decoder differs (QA, session 18:
    the model trained on PIL's pixels and served TensorFlow's, up to 14 grey levels apart)."""
    import io as _io
    rng = np.random.default_rng(12)
    raw = rng.integers(0, 256, size=(6, 4, 3)).astype(np.uint8)  # 6x4 stored, noisy: the decoders differ
    data = _jpeg_with_orientation(raw, 6)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "r.jpg").write_bytes(data)
    upright = np.rot90(tf.io.decode_jpeg(data, channels=3).numpy(), k=-1)  # clockwise
    pil = np.rot90(np.asarray(Image.open(_io.BytesIO(data)).convert("RGB")), k=-1)
    assert upright.shape == (4, 6, 3) and not np.array_equal(upright, pil)
    mask = rng.integers(0, 3, size=(4, 6)).astype(np.uint8)
    _write(tmp_path / "masks" / "r.png", mask)
    _write(tmp_path / "images" / "u.jpg", raw)  # no tag: kept byte for byte, not counted
    _write(tmp_path / "masks" / "u.png", np.zeros((6, 4), np.uint8))
    assert _run(tmp_path) == 0
    assert "ingest: 1 images had an EXIF orientation tag: stored turned upright" in capsys.readouterr().out
    records = {r.source_id: r for r in _records(tmp_path / "out")}
    assert (records["r"].height, records["r"].width) == (4, 6)
    np.testing.assert_array_equal(codec.decode_array(records["r"].image_bytes), upright)
    np.testing.assert_array_equal(codec.decode_array(records["r"].mask_bytes), mask)
    assert records["u"].image_bytes == (tmp_path / "images" / "u.jpg").read_bytes()
    report = _report(tmp_path / "out")
    assert report["exif_rotated"] == 1 and report["exif_rotated_source_ids"] == ["r"]
    # a mask of the stored (unturned) size no longer fits: the reason says the image was turned
    _write(tmp_path / "masks" / "r.png", np.zeros((6, 4), np.uint8))
    assert _run(tmp_path, "--overwrite") == 0
    (bad,) = _report(tmp_path / "out")["bad"]
    assert bad["code"] == "size_mismatch" and "turned upright by its EXIF orientation tag" in bad["reason"]


def _png_with_orientation(array, orientation, **save):
    import io as _io
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = _io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", exif=exif.tobytes(), **save)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation, turn", [(6, lambda a: np.rot90(a, k=-1)), (3, lambda a: a[::-1, ::-1]),
                                               (2, lambda a: a[:, ::-1]), (8, lambda a: np.rot90(a, k=1))])
def test_a_masks_exif_orientation_turns_it_like_its_image(tmp_path, orientation, turn):
    """QA 80 M2: image and mask carry the same EXIF tag (both shown turned, so they fit as shown); the image
    was stored turned and the mask as written, 90 degrees off on a square picture. Reference: NumPy's turn of
    the stored ids (orientation 6: clockwise for display); the image's colour encodes each pixel's class."""
    rng = np.random.default_rng(14)
    ids = rng.integers(0, 3, size=(5, 5)).astype(np.uint8)
    ids[0, :] = 2  # not symmetric under any of the turns
    ids[:, 0] = 1
    colours = np.array([[0, 0, 0], [200, 0, 0], [0, 200, 0]], np.uint8)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "t.png").write_bytes(_png_with_orientation(colours[ids], orientation))
    (tmp_path / "masks" / "t.png").write_bytes(_png_with_orientation(ids, orientation))
    palette = Image.fromarray(ids, mode="P")  # a palette mask with the tag: its indices turned, kept as ids
    palette.putpalette([0, 0, 0, 9, 9, 9, 7, 7, 7])
    (tmp_path / "images" / "p.png").write_bytes(_png_with_orientation(colours[ids], orientation))
    exif = Image.Exif()
    exif[0x0112] = orientation
    palette.save(tmp_path / "masks" / "p.png", format="PNG", exif=exif.tobytes())
    assert _run(tmp_path) == 0
    records = {r.source_id: r for r in _records(tmp_path / "out")}
    assert sorted(records) == ["p", "t"]
    for record in records.values():
        image, mask = codec.decode_array(record.image_bytes), codec.decode_array(record.mask_bytes)
        np.testing.assert_array_equal(mask, turn(ids))
        np.testing.assert_array_equal(image, colours[mask])  # pixel for pixel on its image
        np.testing.assert_array_equal(tf.io.decode_png(record.mask_bytes, channels=1).numpy()[..., 0], turn(ids))


def test_a_turned_mask_that_does_not_fit_says_so(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    _write(tmp_path / "images" / "w.png", np.zeros((4, 6, 3), np.uint8))  # no tag
    (tmp_path / "masks" / "w.png").write_bytes(_png_with_orientation(np.zeros((4, 6), np.uint8), 6))
    _write(tmp_path / "images" / "g.png", np.zeros((4, 6, 3), np.uint8))
    _write(tmp_path / "masks" / "g.png", np.ones((4, 6), np.uint8))
    assert _run(tmp_path) == 0
    (bad,) = _report(tmp_path / "out")["bad"]
    assert bad["reason"] == "image is 6x4 but mask (turned upright by its EXIF orientation tag) is 4x6 (WxH)"


@pytest.mark.parametrize("content, message", [
    ("[[0, 0, 0], [255, 0, 0], [0, 255, 0], [255, 0, 0]]",
     "colour [255, 0, 0] is given to class 1 and class 3; give each class its own colour"),
    ('{"0": [0, 0, 0], "2": [9, 9, 9], "5": [9, 9, 9]}', "colour [9, 9, 9] is given to class 2 and class 5"),
    ("[[0, 0, 0], [256, 0, 0]]", "class 1 colour [256, 0, 0] has values outside 0..255"),
    ("[[0, -1, 0]]", "class 0 colour [0, -1, 0] has values outside 0..255"),
    ("[[0, 0]]", "class 0 colour [0, 0]: every colour must have 3 components"),
    # QA (session 23): these said "cannot read it as a JSON list ... (invalid literal for int() ...: 'r')"
    ('{"0": [0, 0, 0], "1": "red"}', 'class 1: "red" is neither a colour [r, g, b] of integers nor a grey value'),
    ('{"0": [0, 0, 0], "1": [0.5, 0, 0]}', "class 1: [0.5, 0, 0] is neither a colour"),
    ('{"0": true}', "class 0: true is neither a colour"),
    ('{"road": [1, 2, 3]}', 'key "road" is not a class id (0, 1, 2, ...)'),
    ('"red"', 'cannot read it as a JSON list of [r, g, b] (or grey values) per class, or an object'),
])
def test_palette_file_with_a_repeated_or_impossible_colour_is_refused(tmp_path, content, message, capsys):
    """Item 3: a repeated colour used to map both classes' pixels to the last id, silently."""
    _refused_file_option(tmp_path, capsys, "--palette", "palette.json", content,
                         f"--palette {tmp_path / 'palette.json'}: {message}")


def test_files_ingest_does_not_read_are_named_and_counted(tmp_path, capsys):
    """Item 4: files in sub-folders and files with other suffixes are listed (hidden files are not); a
    .webp image beside its mask is a bad pair that names the suffix, not "mask has no image"."""
    _dataset(tmp_path, n=2)
    _write(tmp_path / "images" / "sub" / "deep" / "x.png", np.zeros((2, 2, 3), np.uint8))
    _write(tmp_path / "masks" / "sub" / "x.png", np.zeros((2, 2), np.uint8))
    (tmp_path / "images" / "notes.txt").write_text("mine")
    (tmp_path / "images" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "images" / ".hidden").mkdir()
    (tmp_path / "images" / ".hidden" / "y.png").write_bytes(b"")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "w.webp")
    _write(tmp_path / "masks" / "w.png", np.zeros((4, 4), np.uint8))
    assert _run(tmp_path) == 0
    err = capsys.readouterr().err
    report = _report(tmp_path / "out")
    assert report["skipped_files"] == [str(tmp_path / "images" / "notes.txt"),
                                       str(tmp_path / "images" / "sub" / "deep" / "x.png"),
                                       str(tmp_path / "masks" / "sub" / "x.png")]
    assert report["num_skipped_files"] == 3 and report["num_written"] == 2
    (warning,) = [line for line in err.splitlines() if "warning" in line]
    assert warning.startswith("ingest: warning: skipped 3 files that ingest does not read (")
    assert "(not in sub-folders) ending in .png, .jpg, .jpeg, .bmp, .tif, .tiff" in warning
    (bad,) = report["bad"]
    assert bad["code"] == "unsupported_image_extension" and bad["image"] == str(tmp_path / "images" / "w.webp")
    assert bad["reason"].startswith("image w.webp has the suffix .webp, which ingest does not read")
    assert "has no image" not in err


def test_only_sub_folders_says_ingest_does_not_recurse(tmp_path, capsys):
    _write(tmp_path / "images" / "batch1" / "a.png", np.zeros((2, 2, 3), np.uint8))
    _write(tmp_path / "masks" / "batch1" / "a.png", np.zeros((2, 2), np.uint8))
    assert _run(tmp_path) == 2
    _one_error_line(capsys.readouterr().err, "no image files", "there are sub-folders (",
                    str(tmp_path / "images" / "batch1"), "ingest does not look inside sub-folders")


def test_output_that_is_a_symlink_is_written_through_and_stale_links_are_left_alone(tmp_path, capsys):
    """Item 5: --output LINK (to a folder) used to rename the link aside and crash in rmtree, leaving a
    .segbalance-ingest-old-PID link that crashed every later ingest beside it."""
    _dataset(tmp_path, n=2)
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "out").symlink_to(real, target_is_directory=True)
    assert _run(tmp_path) == 0
    assert _run(tmp_path, "--overwrite") == 0
    assert (tmp_path / "out").is_symlink() and (tmp_path / "out").resolve() == real
    assert sorted(p.name for p in real.iterdir()) == [output_guard.MARKER, "data-00000-of-00001.tfrecord",
                                                      ingest.REPORT_NAME]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "masks", "out", "real"]
    assert {r.source_id for r in _records(real)} == {"img0", "img1"}
    # what the old version left after its crash: the link renamed aside (its name "out" taken by the new data)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    kept = tmp_path / "kept"
    kept.mkdir()
    output_guard.write_marker(kept, "ingest", target="out")
    (kept / ingest.REPORT_NAME).write_text("{}")
    link = tmp_path / f"{ingest.OLD_PREFIX}{int(dead.stdout)}"
    link.symlink_to(kept, target_is_directory=True)
    capsys.readouterr()
    assert _run(tmp_path, "--overwrite") == 0
    assert f"ingest: warning: left {link} alone: a symbolic link (to {kept})" in capsys.readouterr().err
    assert link.is_symlink() and sorted(p.name for p in kept.iterdir()) == [output_guard.MARKER, ingest.REPORT_NAME]
    # its name free: renamed back (what the old version moved), and then it needs --overwrite like any output
    (tmp_path / "out").unlink()
    assert _run(tmp_path) == 2
    assert f"ingest: restored {tmp_path / 'out'}" in capsys.readouterr().err
    assert (tmp_path / "out").is_symlink() and not link.exists()
    assert sorted(p.name for p in kept.iterdir()) == [output_guard.MARKER, ingest.REPORT_NAME]


def test_output_dot_is_the_current_folder(tmp_path, monkeypatch, capsys):
    """Item 6: `--output .` used to fail renaming '.'."""
    _dataset(tmp_path, n=2)
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path / "out")
    assert cli.main(["ingest", "../images", "../masks", "--output", ".", "--num-classes", "3"]) == 0
    assert f"run `cd {tmp_path / 'out'}`" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # the folder the process was in was replaced by the new one
    assert cli.main(["ingest", "images", "masks", "--output", "out/.", "--num-classes", "3", "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "masks", "out"]
    assert {r.source_id for r in _records(tmp_path / "out")} == {"img0", "img1"}


def _png_bytes(array):
    import io as _io
    buffer = _io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _bad_crc(data):
    data = bytearray(data)
    at = data.find(b"IDAT")
    length = int.from_bytes(data[at - 4:at], "big")
    data[at + 4 + length] ^= 0xFF  # first byte of the IDAT chunk's CRC
    return bytes(data)


def test_damaged_pngs_are_bad_pairs(tmp_path):
    """Item 7: PIL decodes a PNG with a wrong IDAT checksum or without IEND; TensorFlow does not (checked
    here: the reference), so ingest must not write them."""
    _dataset(tmp_path, n=1)
    rng = np.random.default_rng(13)
    image = _png_bytes(rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8))
    mask = _png_bytes(np.ones((6, 6), np.uint8))
    # QA 80 H1: a file 1 byte short (its IEND CRC cut) and a wrong IEND CRC passed Pillow's verify
    iend_crc = image[:-1] + bytes([image[-1] ^ 1])
    cases = {"imgcrc": (_bad_crc(image), mask), "noiend": (image[:-12], mask), "maskcrc": (image, _bad_crc(mask)),
             "imgcut1": (image[:-1], mask), "maskcut1": (image, mask[:-1]), "iendcrc": (iend_crc, mask)}
    for stem, (image_bytes, mask_bytes) in cases.items():
        (tmp_path / "images" / f"{stem}.png").write_bytes(image_bytes)
        (tmp_path / "masks" / f"{stem}.png").write_bytes(mask_bytes)
        broken = image_bytes if image_bytes != image else mask_bytes
        with pytest.raises(tf.errors.InvalidArgumentError):
            tf.io.decode_png(broken)
    assert _run(tmp_path) == 0
    bad = {b["source_id"]: b for b in _report(tmp_path / "out")["bad"]}
    assert sorted(bad) == sorted(cases) and {b["code"] for b in bad.values()} == {"undecodable"}
    assert bad["imgcrc"]["reason"] == ("image imgcrc.png is a damaged PNG (the checksum (CRC) of its 'IDAT' chunk is "
                                       "wrong): TensorFlow cannot decode it; export or copy the file again")
    assert bad["noiend"]["reason"].startswith("image noiend.png is a damaged PNG (it ends before its IEND chunk (the "
                                              "file is cut short))")
    assert bad["maskcrc"]["reason"].startswith("mask maskcrc.png is a damaged PNG (the checksum (CRC) of its 'IDAT'")
    assert bad["imgcut1"]["reason"].startswith("image imgcut1.png is a damaged PNG (its 'IEND' chunk is cut short")
    assert bad["maskcut1"]["reason"].startswith("mask maskcut1.png is a damaged PNG (its 'IEND' chunk is cut short")
    assert bad["iendcrc"]["reason"].startswith("image iendcrc.png is a damaged PNG (the checksum (CRC) of its 'IEND'")
    assert {r.source_id for r in _records(tmp_path / "out")} == {"img0"}


@pytest.mark.parametrize("bits", [2, 4])
def test_2_and_4_bit_grey_masks_keep_their_ids(tmp_path, bits):
    """Item 8: Pillow scales 2/4-bit greyscale to 0..255 (2-bit id 3 read as 255, the ignore index)."""
    ids = (np.arange(24).reshape(4, 6) % 2 ** bits).astype(np.uint8)  # every id 0..2^bits-1
    (tmp_path / "masks").mkdir()
    Image.fromarray(ids, mode="L").save(tmp_path / "masks" / "m.png", bits=bits)
    data = (tmp_path / "masks" / "m.png").read_bytes()
    assert (data[24], data[25]) == (bits, 0)  # really a grey PNG of that depth
    _write(tmp_path / "images" / "m.png", np.zeros((4, 6, 3), np.uint8))
    assert _run(tmp_path, num_classes=2 ** bits) == 0
    (record,) = _records(tmp_path / "out")
    np.testing.assert_array_equal(codec.decode_array(record.mask_bytes), ids)
    np.testing.assert_array_equal(tf.io.decode_png(record.mask_bytes).numpy()[..., 0], ids)


def test_negative_ids_of_an_int32_tiff_mask_are_listed(tmp_path):
    """Item 9: the reason listed "class ids []" for negative ids."""
    _dataset(tmp_path, n=1)
    ids = np.array([[-5, -1, 0], [1, 2, 3]], np.int32)
    Image.fromarray(ids, mode="I").save(tmp_path / "masks" / "neg.tif")
    _write(tmp_path / "images" / "neg.png", np.zeros((2, 3, 3), np.uint8))
    assert _run(tmp_path) == 0
    (bad,) = _report(tmp_path / "out")["bad"]
    assert bad["code"] == "class_ids_out_of_range"
    assert bad["reason"].startswith("mask neg.tif has class ids [-5, -1, 3] outside [0, num_classes=3)")


def test_nfc_and_nfd_names_pair(tmp_path):
    """Item 10: macOS writes NFD names; the same stem typed (labeled.json, groups.json) is usually NFC."""
    import unicodedata
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    _write(tmp_path / "images" / f"{nfd}.png", np.zeros((2, 2, 3), np.uint8))
    _write(tmp_path / "masks" / f"{nfc}.png", np.ones((2, 2), np.uint8))
    (tmp_path / "labeled.json").write_text(json.dumps({nfd: [0, 1]}))
    (tmp_path / "groups.json").write_text(json.dumps({nfc: "g"}))
    assert _run(tmp_path, "--labeled", str(tmp_path / "labeled.json"), "--groups", str(tmp_path / "groups.json")) == 0
    (record,) = _records(tmp_path / "out")
    assert (record.source_id, record.labeled, record.group) == (nfc, [0, 1], "g")
    report = _report(tmp_path / "out")
    assert report["bad"] == [] and report["labeled_unmatched"] == [] and report["groups_unmatched"] == []
    # two keys that are one name in two forms: refused, not one silently dropped
    (tmp_path / "labeled.json").write_text(json.dumps({nfd: [0, 1], nfc: [0]}))
    with pytest.raises(ingest.IngestError, match="same name in different Unicode forms"):
        ingest.load_labeled(tmp_path / "labeled.json", 3)


def test_stats_reads_an_ingest_output_by_a_relative_glob(tmp_path, monkeypatch):
    """Item 11: `segbalance stats 'o*/data-*'` (wildcard in a folder part, relative) found no files, and
    'out0/*' matched the hidden .segbalance.json marker."""
    from segbalance.components import class_stats_beam as csb

    _dataset(tmp_path, n=3)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["ingest", "images", "masks", "--output", "out0", "--num-classes", "3"]) == 0
    assert csb.match_input_files("o*/data-*") == ["out0/data-00000-of-00001.tfrecord"]
    assert csb.match_input_files("out0/*") == ["out0/data-00000-of-00001.tfrecord", "out0/ingest_report.json"]
    assert csb.match_input_files("nothing*/data-*") == []
    assert cli.main(["stats", "o*/data-*", "--num-classes", "3", "--output", "st"]) == 0
    stats = json.loads((tmp_path / "st" / "class_stats.json").read_text())
    assert stats["num_records"] == 3 and stats["quarantined_records"] == 0


def test_binary_0_255_masks_are_named_and_mapped_by_grey_values(tmp_path, capsys):
    """QA (session 18, real data): binary masks saved as 0/255 became background + 'no label' with "0 bad";
    the foreground was never learnt. Ingest now warns, and --palette maps grey values."""
    rng = np.random.default_rng(3)
    masks = {}
    for i in range(3):
        mask = np.where(rng.random((12, 10)) < 0.4, 255, 0).astype(np.uint8)
        _write(tmp_path / "images" / f"b{i}.png", rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
        _write(tmp_path / "masks" / f"b{i}.png", mask)
        masks[f"b{i}"] = mask
    assert _run(tmp_path, num_classes=2) == 0
    err = capsys.readouterr().err
    assert 'no mask holds a class id other than 0, and 3 of 3 hold the ignore index 255' in err
    assert '--palette FILE holding {"0": 0, "1": 255}' in err
    report = _report(tmp_path / "out")
    assert (report["num_classes"], report["max_class_id"], report["masks_with_ignore"]) == (2, 0, 3)
    (tmp_path / "binary.json").write_text(json.dumps({"0": 0, "1": 255}))
    assert _run(tmp_path, "--palette", str(tmp_path / "binary.json"), "--overwrite", num_classes=2) == 0
    assert "no mask holds" not in capsys.readouterr().err
    for record in _records(tmp_path / "out"):
        np.testing.assert_array_equal(codec.decode_array(record.mask_bytes), masks[record.source_id] // 255)
    assert _report(tmp_path / "out")["max_class_id"] == 1
    # a value the grey palette does not map is a bad pair that says what to add
    (tmp_path / "half.json").write_text(json.dumps({"1": 255}))
    assert _run(tmp_path, "--palette", str(tmp_path / "half.json"), "--overwrite", num_classes=2) == 2
    assert "value 0 is not in --palette, which maps single-channel masks by their grey values" in \
        capsys.readouterr().err


def test_a_voc_border_colour_maps_to_the_ignore_index(tmp_path, capsys):
    """QA (session 18): VOC colour masks carry a (224, 224, 192) border; the palette's dict form gives it the
    ignore index, and the error for an unknown colour says so."""
    colours = {0: (0, 0, 0), 1: (128, 0, 0)}
    ids = np.zeros((12, 10), np.uint8)
    ids[3:8, 2:6] = 1
    rgb = np.array([colours[i] for i in ids.ravel()], np.uint8).reshape(12, 10, 3)
    rgb[3, 2:6] = (224, 224, 192)
    _write(tmp_path / "images" / "voc.png", np.zeros((12, 10, 3), np.uint8))
    _write(tmp_path / "masks" / "voc.png", rgb)
    _write(tmp_path / "images" / "other.png", np.zeros((12, 10, 3), np.uint8))
    _write(tmp_path / "masks" / "other.png", np.zeros((12, 10, 3), np.uint8))
    (tmp_path / "palette.json").write_text(json.dumps([list(c) for c in colours.values()]))
    assert _run(tmp_path, "--palette", str(tmp_path / "palette.json"), num_classes=2) == 0
    assert "colour (224, 224, 192) is not in --palette: give it its class, or 'no label' with \"255\": " \
           "[224, 224, 192]" in capsys.readouterr().err
    (tmp_path / "palette.json").write_text(json.dumps({"0": [0, 0, 0], "1": [128, 0, 0], "255": [224, 224, 192]}))
    assert _run(tmp_path, "--palette", str(tmp_path / "palette.json"), "--overwrite", num_classes=2) == 0
    (record,) = [r for r in _records(tmp_path / "out") if r.source_id == "voc"]
    expected = ids.copy()
    expected[3, 2:6] = 255
    np.testing.assert_array_equal(codec.decode_array(record.mask_bytes), expected)


def test_a_link_to_nothing_is_named_as_one(tmp_path, capsys):
    """QA (session 23): an image that is a dangling link was reported as "mask has no image"; one whose
    mask was a dangling link too was in no list at all."""
    _dataset(tmp_path, n=2)
    _write(tmp_path / "masks" / "imglink.png", np.zeros((12, 10), np.uint8))
    (tmp_path / "images" / "imglink.png").symlink_to(tmp_path / "gone" / "a.png")
    _write(tmp_path / "images" / "masklink.png", np.zeros((12, 10, 3), np.uint8))
    (tmp_path / "masks" / "masklink.png").symlink_to("nowhere.png")
    (tmp_path / "images" / "both.jpg").symlink_to("x.jpg")
    (tmp_path / "masks" / "both.png").symlink_to("y.png")
    (tmp_path / "images" / "notes.txt").symlink_to("z.txt")  # a suffix ingest does not read: listed as skipped
    assert _run(tmp_path) == 0
    report = _report(tmp_path / "out")
    assert report["num_written"] == 2
    bad = {b["source_id"]: b for b in report["bad"]}
    assert {k: b["code"] for k, b in bad.items()} == {"imglink": "broken_link", "masklink": "broken_link",
                                                      "both": "broken_link"}
    assert bad["imglink"]["reason"] == f"image imglink.png is a link to {tmp_path / 'gone' / 'a.png'}, which does not exist"
    assert bad["masklink"]["reason"] == "mask masklink.png is a link to nowhere.png, which does not exist"
    assert bad["both"]["reason"] == ("image both.jpg is a link to x.jpg, which does not exist; "
                                     "mask both.png is a link to y.png, which does not exist")
    assert bad["both"]["image"] == str(tmp_path / "images" / "both.jpg")
    assert report["skipped_files"] == [str(tmp_path / "images" / "notes.txt")]
    assert "ingest: skipped imglink: image imglink.png is a link to" in capsys.readouterr().err


def test_every_stem_shared_by_several_files_is_named_at_once(tmp_path, capsys):
    """QA 89 L4: only the first stem with two image files was named, so a user fixed one per run."""
    _dataset(tmp_path, n=5)
    for stem in ("img0", "img2", "img3", "img4"):
        shutil.copy(tmp_path / "images" / f"{stem}.png", tmp_path / "images" / f"{stem}.jpg")
    shutil.copy(tmp_path / "images" / "img2.png", tmp_path / "images" / "img2.tif")
    assert _run(tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["segbalance ingest: error: 4 stems are each shared by several image files: 'img0': img0.jpg, "
                   "img0.png; 'img2': img2.jpg, img2.png, img2.tif; 'img3': img3.jpg, img3.png; and 1 more; keep one "
                   "file of each"], err
    for stem in ("img2", "img3", "img4"):
        (tmp_path / "images" / f"{stem}.jpg").unlink()
    (tmp_path / "images" / "img2.tif").unlink()
    assert _run(tmp_path) == 2  # one: as before
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "two image files share the stem 'img0': img0.jpg, img0.png; keep one")


def test_a_link_to_nothing_beside_a_file_of_its_stem_is_refused_like_two_files(tmp_path, capsys):
    """It would otherwise be left out unsaid: the file of that stem pairs, the link is in no list."""
    _dataset(tmp_path, n=2)
    (tmp_path / "images" / "img0.jpg").symlink_to("gone.jpg")
    assert _run(tmp_path) == 2
    assert ("two image files share the stem 'img0': img0.png, img0.jpg (a link to nothing); keep one"
            in capsys.readouterr().err)


def test_shard_workers_end_with_a_killed_ingest(tmp_path):
    """QA 27: SIGKILL on `segbalance ingest --shards 2` left both workers running (re-parented to init, about
    0.5 GiB each) for good. Workers started as ingest starts them (its initializer) die with their parent."""
    import os
    import signal
    import time

    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    parent = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from segbalance.pipeline.ingest import die_with_parent\n"
        "pool = ProcessPoolExecutor(2, initializer=die_with_parent, initargs=(os.getpid(),))\n"
        "futures = [pool.submit(time.sleep, 120) for _ in range(2)]\n"
        "time.sleep(2)\n"
        "print(' '.join(str(p) for p in pool._processes), flush=True)\n"
        "time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    workers = []
    try:
        workers = [int(p) for p in parent.stdout.readline().split()]
        assert len(workers) == 2
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.time() + 20
        alive = workers
        while alive and time.time() < deadline:
            alive = [p for p in workers if os.path.exists(f"/proc/{p}") and
                     open(f"/proc/{p}/stat").read().split()[2] != "Z"]
            time.sleep(0.2)
        assert not alive, alive
    finally:
        parent.kill()
        for pid in workers:  # the failing case's orphans
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_reference_masks_are_kept_with_the_records(tmp_path, capsys):
    """--reference-masks DIR: the complete masks of the written records go to TARGET/reference_masks/
    (where `segbalance run` finds them for every later run over the span); one of an image that is
    not written stays out; unusable ones are refused before anything is written."""
    pairs = _dataset(tmp_path, n=3)
    full = tmp_path / "masks_full"
    for stem, (_, mask) in pairs.items():
        _write(full / f"{stem}.png", np.minimum(mask, 2))
    _write(full / "orphan.png", np.zeros((12, 10), np.uint8))  # no image of that name
    (tmp_path / "masks" / "img2.png").unlink()  # img2: an image without mask, not written
    out = tmp_path / "out"
    assert cli.main(["ingest", str(tmp_path / "images"), str(tmp_path / "masks"), "--output", str(out), "--span", "1",
                     "--num-classes", "3", "--reference-masks", str(full)]) == 0
    kept = out / "Span-1" / "reference_masks"
    assert sorted(p.name for p in kept.iterdir()) == ["img0.png", "img1.png"]
    assert all((kept / n).read_bytes() == (full / n).read_bytes() for n in ("img0.png", "img1.png"))
    assert _report(out / "Span-1")["num_reference_masks"] == 2
    assert "2 reference masks" in capsys.readouterr().out
    # the span is ingest's own, reference masks and all: --overwrite replaces it
    assert cli.main(["ingest", str(tmp_path / "images"), str(tmp_path / "masks"), "--output", str(out), "--span", "1",
                     "--num-classes", "3", "--overwrite"]) == 0
    assert not kept.exists()
    capsys.readouterr()
    # a reference mask of another size than its image: named, nothing written
    _write(full / "img0.png", np.zeros((5, 5), np.uint8))
    assert cli.main(["ingest", str(tmp_path / "images"), str(tmp_path / "masks"), "--output", str(out), "--span", "2",
                     "--num-classes", "3", "--reference-masks", str(full)]) == 2
    err = capsys.readouterr().err
    assert "img0.png is 5x5 pixels, its image 10x12" in err and not (out / "Span-2").exists()
    assert cli.main(["ingest", str(tmp_path / "images"), str(tmp_path / "masks"), "--output", str(out), "--span", "2",
                     "--reference-masks", str(tmp_path / "nope")]) == 2
    assert f"--reference-masks {tmp_path / 'nope'} is not a folder" in capsys.readouterr().err
    (tmp_path / "none").mkdir()  # QA 65: none of the records' masks there was said nowhere
    assert cli.main(["ingest", str(tmp_path / "images"), str(tmp_path / "masks"), "--output", str(out), "--span", "3",
                     "--num-classes", "3", "--reference-masks", str(tmp_path / "none")]) == 0
    assert "holds no <source_id>.png of the written records" in capsys.readouterr().err
    # QA 94 L2: an output inside the reference masks (an input too) was written there
    _write(full / "img0.png", np.minimum(pairs["img0"][1], 2))
    before = sorted(p.name for p in full.iterdir())
    for output, span in ((full / "out", []), (full, ["--span", "4"])):
        assert cli.main(["ingest", str(tmp_path / "images"), str(tmp_path / "masks"), "--output", str(output),
                         *span, "--num-classes", "3", "--reference-masks", str(full)]) == 2
        assert f"the input folder {full}: choose an output folder outside the inputs" in capsys.readouterr().err
    assert sorted(p.name for p in full.iterdir()) == before


@pytest.mark.parametrize("values, hint", [([0, 85, 170, 255], True), ([0, 1, 2, 7], False), ([0, 2, 4], False)])
def test_the_grey_level_palette_is_offered_only_for_masks_without_class_ids(tmp_path, values, hint):
    """QA 68 offered it for 0/85/170/255; QA 71: also for ids 0..2 with one broken pixel of 7, or for a class
    the config lacks (0/2/4 of 3 classes), where following it renumbered the ids."""
    mask = np.array([values * 2], np.uint8)
    _write(tmp_path / "images" / "m.png", np.zeros((*mask.shape, 3), np.uint8))
    _write(tmp_path / "masks" / "m.png", mask)
    assert _run(tmp_path, num_classes=len(values) if hint else 3 + (7 in values)) == 2
    failed = json.loads((tmp_path / "ingest_report.out.failed.json").read_text())
    assert ("grey levels" in failed["bad"][0]["reason"]) is hint, failed["bad"][0]["reason"]


def test_images_too_large_for_one_evaluation_request_are_named(tmp_path, capsys):
    """QA 80 M1: three 13000x13000 PNGs of 569 KB took a run past 12 GB (SegEvaluator predicts at the input size)
    and ingest said only Pillow's warning, once, without a file name. Now every such image is named, with the
    memory one request takes (2 x H x W x C float32: by hand, 2 * 6800 * 6800 * 3 * 4 bytes = 1.03 GiB)."""
    _dataset(tmp_path, n=2)
    side = 6800  # over 1 GiB at 3 classes; 6600 would not be: 0.97 GiB
    _write(tmp_path / "images" / "big.png", np.zeros((side, side), np.uint8))
    _write(tmp_path / "masks" / "big.png", np.ones((side, side), np.uint8))
    _write(tmp_path / "images" / "under.png", np.zeros((6600, 6600), np.uint8))
    _write(tmp_path / "masks" / "under.png", np.ones((6600, 6600), np.uint8))
    assert _run(tmp_path) == 0
    err = capsys.readouterr().err
    assert ("ingest: warning: 1 image is too large for one evaluation request (1 GiB at 3 classes): big "
            "(6800x6800, about 1.0 GiB).") in err and "under" not in err
    report = _report(tmp_path / "out")
    assert report["num_large_images"] == 1 and report["large_images"] == [
        {"source_id": "big", "height": side, "width": side}]
    assert len(report["written"]) == 4  # written all the same


def test_a_wrong_text_chunk_checksum_is_called_damaged(tmp_path):
    """QA 80 L5: Pillow fails at open on a wrong CRC before the pixels, and the reason was 'not an image PIL can
    read' beside 'is damaged' for the same fault in IDAT."""
    from PIL import PngImagePlugin
    import io as _io

    _dataset(tmp_path, n=1)
    info = PngImagePlugin.PngInfo()
    info.add_text("k", "v")
    buffer = _io.BytesIO()
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(buffer, format="PNG", pnginfo=info)
    data = bytearray(buffer.getvalue())
    data[data.find(b"tEXt") + 4] ^= 1  # first byte of the text: its CRC no longer matches
    (tmp_path / "images" / "t.png").write_bytes(bytes(data))
    _write(tmp_path / "masks" / "t.png", np.zeros((4, 5), np.uint8))
    assert _run(tmp_path) == 0
    (bad,) = _report(tmp_path / "out")["bad"]
    assert bad["reason"] == ("image t.png is a damaged PNG (the checksum (CRC) of its 'tEXt' chunk is wrong): "
                             "TensorFlow cannot decode it; export or copy the file again")


def test_a_long_output_name_gets_its_failed_report_beside_it(tmp_path):
    """QA 80 L1: ``ingest_report.<TARGET name>.failed.json`` of a 245-character TARGET exceeded one file name:
    a traceback (exit 1) after a good ingest, and instead of the exit-2 line when every pair was bad."""
    _dataset(tmp_path, n=1)
    target = tmp_path / ("q" * 245)
    argv = ["ingest", str(tmp_path / "images"), str(tmp_path / "masks"), "--output", str(target), "--num-classes", "3"]
    assert cli.main(argv) == 0 and len(_records(target)) == 1
    _write(tmp_path / "masks" / "img0.png", np.full((12, 10), 9, np.uint8))  # every pair bad now
    assert cli.main(argv + ["--overwrite"]) == 2
    (failed,) = tmp_path.glob("ingest_report.*.failed.json")
    assert len(os.fsencode(failed.name)) == 255 and failed.name.startswith("ingest_report.qqq")
    assert _report(target)  # the earlier good ingest's data and report are kept
    assert json.loads(failed.read_text())["num_bad"] == 1


def test_the_failed_report_name_keeps_a_name_that_fits():
    """QA 82 L2: bytes that are not UTF-8 were dropped from every name, so targets 'out' and 'out\\xff' shared one
    failed report."""
    odd = Path("/data") / os.fsdecode(b"out\xff")
    assert ingest.failed_report_path(odd) != ingest.failed_report_path(Path("/data/out"))
    assert ingest.failed_report_path(odd).name == "ingest_report." + odd.name + ".failed.json"
    assert len(os.fsencode(ingest.failed_report_path(Path("/d") / ("é" * 200)).name)) <= 255


def test_two_files_whose_names_differ_only_in_unicode_form_are_told_apart(tmp_path, capsys):
    """QA 80 L4: 'café.png' in NFC and in NFD beside it: the refusal showed two names that look the same."""
    _dataset(tmp_path, n=1)
    for form in ("NFC", "NFD"):
        _write(tmp_path / "images" / unicodedata.normalize(form, "café.png"), np.zeros((12, 10, 3), np.uint8))
    _write(tmp_path / "masks" / "café.png", np.zeros((12, 10), np.uint8))
    assert _run(tmp_path) == 2
    assert "(the same name in different Unicode forms, NFC / NFD); keep one" in capsys.readouterr().err


def test_folders_fifos_and_link_loops_named_like_images_are_called_what_they_are(tmp_path):
    """QA 80 L3: a folder or FIFO named d.png / f.png among the images gave their masks "mask has no image d.* in
    ..." (the FIFO was in no list), and a loop of links was "a link to ..., which does not exist"."""
    _dataset(tmp_path, n=1)
    for stem in ("d", "f", "loop_a"):
        _write(tmp_path / "masks" / f"{stem}.png", np.zeros((12, 10), np.uint8))
    (tmp_path / "images" / "d.png").mkdir()
    os.mkfifo(tmp_path / "images" / "f.png")
    (tmp_path / "images" / "loop_a.png").symlink_to("loop_b.png")
    (tmp_path / "images" / "loop_b.png").symlink_to("loop_a.png")
    (tmp_path / "masks" / "loop_b.png").symlink_to("loop_a.png")  # a loop on both sides
    assert _run(tmp_path) == 0
    report = _report(tmp_path / "out")
    bad = {b["source_id"]: b["reason"] for b in report["bad"]}
    images = tmp_path / "images"
    assert bad["d"] == f"mask has no image file: d.png in {images} is a folder"
    assert bad["f"] == f"mask has no image file: f.png in {images} is not a regular file (a FIFO, socket or device)"
    assert bad["loop_a"] == "image loop_a.png is a link to loop_b.png, which leads into a loop of links"
    assert str(images / "f.png") in report["skipped_files"]


def test_links_to_special_files_and_fifos_of_other_suffixes_are_listed(tmp_path):
    """QA 82 L3: a link to a FIFO named lf.png got the old 'has no image' reason and was in no list, and a FIFO
    named notes.fifo was in no list either; a link into a loop named the wrong file as leading back."""
    _dataset(tmp_path, n=1)
    images = tmp_path / "images"
    for stem in ("lf", "into"):
        _write(tmp_path / "masks" / f"{stem}.png", np.zeros((12, 10), np.uint8))
    os.mkfifo(tmp_path / "fifo")
    (images / "lf.png").symlink_to(tmp_path / "fifo")
    os.mkfifo(images / "notes.fifo")
    (images / "loop_a").symlink_to("loop_b")
    (images / "loop_b").symlink_to("loop_a")
    (images / "into.png").symlink_to("loop_a")
    assert _run(tmp_path) == 0
    report = _report(tmp_path / "out")
    bad = {b["source_id"]: b["reason"] for b in report["bad"]}
    assert bad["lf"] == f"mask has no image file: lf.png in {images} is not a regular file (a FIFO, socket or device)"
    assert bad["into"] == "image into.png is a link to loop_a, which leads into a loop of links"
    assert {str(images / "lf.png"), str(images / "notes.fifo")} <= set(report["skipped_files"])
    # QA 83 L6: a FIFO named like a WebP image beside a mask was told "convert it to PNG"
    os.mkfifo(images / "w.webp")
    _write(tmp_path / "masks" / "w.png", np.zeros((12, 10), np.uint8))
    assert _run(tmp_path, "--overwrite") == 0
    report = _report(tmp_path / "out")
    assert {b["source_id"]: b["reason"] for b in report["bad"]}["w"] == f"mask has no image w.* in {images}"
    assert str(images / "w.webp") in report["skipped_files"]


def test_without_num_classes_large_images_are_judged_at_the_masks_classes(tmp_path, capsys):
    """QA 82 M3: without --num-classes the check assumed 2 classes, so a 2600x2600 image whose mask holds ids
    0..19 (2 * 2600 * 2600 * 20 * 4 bytes = 1.01 GiB a request) was not named."""
    (tmp_path / "images").mkdir()
    _write(tmp_path / "images" / "wide.png", np.zeros((2600, 2600), np.uint8))
    ids = np.zeros((2600, 2600), np.uint8)
    ids[:20, 0] = np.arange(20)
    _write(tmp_path / "masks" / "wide.png", ids)
    argv = ["ingest", str(tmp_path / "images"), str(tmp_path / "masks"), "--output", str(tmp_path / "out")]
    assert cli.main(argv) == 0
    assert ("1 image is too large for one evaluation request (1 GiB at 20 or more classes): wide (2600x2600, "
            "about 1.0 GiB)") in capsys.readouterr().err
    assert _report(tmp_path / "out")["large_images"] == [{"source_id": "wide", "height": 2600, "width": 2600}]
    ids[:20, 0] = 0  # ids 0 only: 2 classes, 0.1 GiB a request
    _write(tmp_path / "masks" / "wide.png", ids)
    assert cli.main(argv + ["--overwrite"]) == 0
    assert "too large" not in capsys.readouterr().err and _report(tmp_path / "out")["large_images"] == []


@pytest.mark.parametrize("exif", [0, 9, "malformed"])
def test_masks_with_no_valid_orientation_are_kept_as_they_are(tmp_path, exif):
    """QA 82 M2, L1: a tag outside 1-8 is no turn (the trainer's graph reads 1), and a malformed EXIF block was a
    bad pair ('cannot decode mask: not a TIFF file') although its pixels decode."""
    _dataset(tmp_path, n=1)
    ids = np.tril(np.ones((12, 10), np.uint8))
    block = b"garbage!"
    if exif != "malformed":
        tag = Image.Exif()
        tag[0x0112] = exif
        block = tag.tobytes()
    Image.fromarray(ids).save(tmp_path / "masks" / "img0.png", format="PNG", exif=block)
    assert _run(tmp_path) == 0
    (record,) = _records(tmp_path / "out")
    np.testing.assert_array_equal(codec.decode_array(record.mask_bytes), ids)


def test_large_images_at_the_most_classes_say_no_or_more(tmp_path, capsys):
    """QA 83 L6: masks reaching id 254 (255 classes, the most there can be) were '255 or more classes'."""
    (tmp_path / "images").mkdir()
    _write(tmp_path / "images" / "m.png", np.zeros((800, 800), np.uint8))  # 2 * 800 * 800 * 255 * 4 B = 1.2 GiB
    ids = np.zeros((800, 800), np.uint8)
    ids[0, 0] = 254
    _write(tmp_path / "masks" / "m.png", ids)
    assert cli.main(["ingest", str(tmp_path / "images"), str(tmp_path / "masks"), "--output", str(tmp_path / "o")]) == 0
    assert "(1 GiB at 255 classes): m (800x800, about 1.2 GiB)" in capsys.readouterr().err
