"""The records a run is about to read are checked first (pipeline/span_records.py)."""
import re

import numpy as np
import pytest

from segbalance.pipeline import cli
from segbalance.pipeline.config import config_from_dict
from segbalance.pipeline.dag import split_of
from segbalance.pipeline.span_records import SpanRecordError, check_span_records
from segbalance.trainer import example_codec as codec
from tests.test_class_stats_beam import write_tfrecord

CONFIG = config_from_dict({})
IMAGE = codec.encode_png(np.zeros((4, 4, 3), np.uint8))
MASK = codec.encode_png(np.zeros((4, 4), np.uint8))


def record(source_id: str, group=None) -> bytes:
    return codec.build_example(IMAGE, MASK, source_id, 4, 4, group=group).SerializeToString()


def span(tmp_path, records, name="data-00000-of-00001.tfrecord", compression=None):
    folder = tmp_path / "spans" / "Span-3"
    folder.mkdir(parents=True, exist_ok=True)
    write_tfrecord(folder / name, records, compression)
    return tmp_path / "spans"


def test_counts_follow_importexamplegen_s_split(tmp_path):
    ids = [f"img_{i:03d}" for i in range(40)]
    spans = span(tmp_path, [record(i) for i in ids[:25]])
    span(tmp_path, [record(i) for i in ids[25:]], name="data-00001.tfrecord.gz", compression="GZIP")
    expected = {s: sum(split_of(i, CONFIG) == s for i in ids) for s in ("train", "eval")}
    assert check_span_records(spans, [3], CONFIG) == {**expected, "repeated": {}} and expected["eval"] > 0


def test_a_record_that_is_not_an_example_is_named(tmp_path):
    spans = span(tmp_path, [record("a"), record("b"), b"this is not a tf.train.Example at all"])
    path = spans / "Span-3" / "data-00000-of-00001.tfrecord"
    with pytest.raises(SpanRecordError, match=re.escape(f"{path}: record 3 is not a tf.train.Example (37 bytes)")):
        check_span_records(spans, [3], CONFIG)


def test_a_record_without_the_split_feature_is_named(tmp_path):
    spans = span(tmp_path, [record("a"), record("b")])
    group_config = config_from_dict({"data": {"split_by": "group"}})
    with pytest.raises(SpanRecordError, match=r"record 1 has no image/group_id feature, which ImportExampleGen splits on "
                                              r"\(data.split_by: group\).*`segbalance ingest` --groups"):
        check_span_records(spans, [3], group_config)


def test_a_cut_file_is_named(tmp_path):
    spans = span(tmp_path, [record("a"), record("b")])
    path = spans / "Span-3" / "data-00000-of-00001.tfrecord"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(SpanRecordError, match=re.escape(f"{path}: not a readable TFRecord file (after 1 good record: truncated: record 2 ")):
        check_span_records(spans, [3], CONFIG)


def test_a_split_left_empty_is_refused(tmp_path):
    ids = [i for i in (f"img_{n}" for n in range(60)) if split_of(i, CONFIG) == "train"][:3]
    spans = span(tmp_path, [record(i) for i in ids])
    with pytest.raises(SpanRecordError, match=r"all 3 records of span\(s\) \[3\] hash into the train split, none "
                                              r"into eval \(data.eval_fraction 0.2, by image/source_id\)"):
        check_span_records(spans, [3], CONFIG)


def test_run_stops_on_a_bad_record_before_any_component(tmp_path, capsys):
    ids = [f"img_{i:03d}" for i in range(12)]
    spans = span(tmp_path, [record(i) for i in ids] + [b"not an example"])
    out = tmp_path / "out"
    assert cli.main(["run", "--data", str(spans), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "record 13 is not a tf.train.Example" in err and "Traceback" not in err
    assert not (out / "metadata.sqlite").exists()


def test_a_damaged_gzip_file_is_named(tmp_path):
    spans = span(tmp_path, [record(f"r{i}") for i in range(20)], name="data-00000.tfrecord.gz", compression="GZIP")
    path = spans / "Span-3" / "data-00000.tfrecord.gz"
    raw = bytearray(path.read_bytes())
    raw[40:60] = b"\xff" * 20  # the deflate stream, not the header
    path.write_bytes(bytes(raw))
    with pytest.raises(SpanRecordError, match=re.escape(f"{path}: not a readable TFRecord file")):
        check_span_records(spans, [3], CONFIG)


def test_the_split_hashes_the_record_s_whole_feature():
    """ImportExampleGen hashes the serialized Feature: every value, the bytes as they are."""
    import hashlib

    from tensorflow.core.example import feature_pb2

    from segbalance.pipeline.dag import split_of_feature

    for values in ([b"a"], [b"a", b"b"], [b"\xff\xfe not utf-8"]):
        feature = feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=values))
        bucket = int(hashlib.sha256(feature.SerializeToString(deterministic=True)).hexdigest(), 16) % 10
        assert split_of_feature(feature, CONFIG) == ("train" if bucket < 8 else "eval")
    assert split_of("img_001", CONFIG) == split_of_feature(
        feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[b"img_001"])), CONFIG)


def test_a_span_ingest_wrote_is_counted_from_its_report_and_read_once_changed(tmp_path, monkeypatch):
    """Reading every record on every run costs minutes on a large span: a span ingest wrote (report newer
    than its files) is counted from the report's source ids; a file changed after it is read again."""
    import os
    import time

    from segbalance.pipeline import sample_data, span_records

    raw = sample_data.write_sample_data("shapes", tmp_path / "raw", num_images=20, size=16, seed=4)
    assert cli.main(["ingest", str(raw / "images"), str(raw / "masks"), "--output", str(tmp_path / "spans"),
                     "--span", "0"]) == 0
    spans = tmp_path / "spans"
    read_counts = {}
    real_open = open

    def counting_open(path, *args, **kwargs):
        read_counts[str(path)] = read_counts.get(str(path), 0) + 1
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(span_records, "open", counting_open, raising=False)
    from_report = check_span_records(spans, [0], CONFIG)
    assert read_counts == {} and from_report["train"] + from_report["eval"] == 20
    report = spans / "Span-0" / "ingest_report.json"
    stale = report.stat().st_mtime - 10
    os.utime(report, (stale, stale))  # a data file is now newer than the report: read again
    assert check_span_records(spans, [0], CONFIG) == from_report and read_counts
    (data_file,) = list((spans / "Span-0").glob("data-*"))
    with real_open(data_file, "ab") as handle:  # a record appended after ingest: found, not trusted away
        write_tfrecord(tmp_path / "extra.tfrecord", [b"not an example"])
        handle.write((tmp_path / "extra.tfrecord").read_bytes())
    time.sleep(0.01)
    with pytest.raises(SpanRecordError, match="record 21 is not a tf.train.Example"):
        check_span_records(spans, [0], CONFIG)


def test_a_span_whose_masks_hold_more_classes_than_the_config_names_is_refused_first(tmp_path, capsys):
    """QA (session 18, helpers 29 and 30): a Span-N folder run with too few class names trained for half a
    minute and then stopped with a traceback (exit 1). Ingest records the largest class id in its report,
    and the run refuses the span in one line before any component; without a class count ingest says
    it checked no ids."""
    import json

    from segbalance.pipeline import sample_data

    raw = sample_data.write_sample_data("shapes", tmp_path / "raw", num_images=16, size=16, seed=5)
    (raw / "classes.json").unlink()  # no class count: ingest checks no ids, and says so
    assert cli.main(["ingest", str(raw / "images"), str(raw / "masks"), "--output", str(tmp_path / "spans"),
                     "--span", "0"]) == 0
    assert "class ids were not checked" in capsys.readouterr().err
    report = json.loads((tmp_path / "spans" / "Span-0" / "ingest_report.json").read_text())
    largest = max(int(codec.decode_array(p.read_bytes(), what="mask").max()) for p in (raw / "masks").iterdir())
    assert (report["num_classes"], report["ignore_index"], report["max_class_id"]) == (None, 255, largest) == \
        (None, 255, 3)
    two = config_from_dict({"classes": {"names": ["background", "square"]}})
    with pytest.raises(SpanRecordError, match=re.escape("Span-0 (Span-0/ingest_report.json): its masks hold class ids "
                                                        "up to 3, but classes.names lists 2 classes: name all 4")):
        check_span_records(tmp_path / "spans", [0], two)
    checked = check_span_records(tmp_path / "spans", [0], CONFIG)
    assert checked["train"] + checked["eval"] == 16  # 4 names: fine
    config = tmp_path / "two.yaml"
    config.write_text("classes: {names: [background, square]}\n")
    assert cli.main(["run", "--config", str(config), "--data", str(tmp_path / "spans"),
                     "--output-dir", str(tmp_path / "out")]) == 2
    printed = capsys.readouterr()
    err = printed.err.strip().splitlines()
    assert len(err) == 1 and "name all 4 (or more) classes" in err[0]
    assert "output in" not in printed.out  # the run never started: the error is the one line it prints
    assert not (tmp_path / "out").exists()  # refused before any component: no empty run folder left behind
    # QA 92 M2: with the span's complete masks kept beside it (ids up to 3 too), the span's ids are named first,
    # not the reference masks (whose advice was to re-save or remove them)
    (tmp_path / "spans" / "Span-0" / "reference_masks").mkdir()
    for mask in (raw / "masks").iterdir():
        (tmp_path / "spans" / "Span-0" / "reference_masks" / mask.name).write_bytes(mask.read_bytes())
    assert cli.main(["run", "--config", str(config), "--data", str(tmp_path / "spans"),
                     "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "name all 4 (or more) classes" in err[0] and "reference masks" not in err[0], err


def test_one_source_id_on_two_different_records_is_refused(tmp_path):
    """QA (session 18, helper 29): two sample data sets (both named shapes_000NN) as the spans of a window
    stopped the trainer with a traceback (different labelled sets under one source_id). Read first: one
    line naming both records. The same record twice passes."""
    other = codec.build_example(codec.encode_png(np.ones((4, 4, 3), np.uint8)), MASK, "a", 4, 4).SerializeToString()
    spans = span(tmp_path, [record("a"), record("b"), record(f"c{0}"), record("a")])
    span(tmp_path, [record(f"d{i}") for i in range(12)], name="data-00001.tfrecord")
    checked = check_span_records(spans, [3], CONFIG)
    assert checked["train"] + checked["eval"] == 16 and checked["repeated"] == {"a": 1}  # counted (the run says so)
    span(tmp_path, [record("e"), other], name="data-00002.tfrecord")
    first, second = spans / "Span-3" / "data-00000-of-00001.tfrecord", spans / "Span-3" / "data-00002.tfrecord"
    with pytest.raises(SpanRecordError, match=re.escape(f"image/source_id 'a' names two different records ({first} "
                                                        f"record 1, and {second} record 2): give the images unique")):
        check_span_records(spans, [3], CONFIG)


def test_a_window_repeating_a_span_s_images_says_so(tmp_path, capsys):
    """QA 25: a drop folder that grows, run with `--data` each time and data.num_spans 2, put its first
    images in both spans of the window: counted and trained twice, without a word."""
    from segbalance.pipeline.run import check_records_to_read

    spans = span(tmp_path, [record(f"img_{i}") for i in range(12)] + [record("img_0"), record("img_1")])
    window = config_from_dict({"data": {"num_spans": 2}})
    check_records_to_read(window, spans)
    out = capsys.readouterr().out
    assert ("data: note: 2 records repeat an identical record of another span (2 images: img_0, img_1): each copy "
            "is counted and trained on; give a new span only its new images, or set data.num_spans: 1") in out
    check_records_to_read(CONFIG, spans)  # one span (QA 94 L10: its copies were said to be another span's)
    assert ("data: note: 2 records repeat an identical record in the span (2 images: img_0, img_1): each copy is "
            "counted and trained on; remove the copies from the data and ingest it again as a new span"
            ) in capsys.readouterr().out
    other = span(tmp_path / "unique", [record(f"img_{i}") for i in range(12)])
    check_records_to_read(CONFIG, other)
    assert "note" not in capsys.readouterr().out


def test_the_trainer_s_data_errors_are_the_user_s():
    """Where the run cannot refuse first (a Kubeflow run, a window of spans without reports), the trainer's
    data checks are UserErrors: one line and exit 2, not a traceback."""
    from segbalance.contract import UserError
    from segbalance.trainer.class_stats_io import DuplicateSourceIdError
    from segbalance.trainer.task import DataMismatchError

    assert issubclass(DataMismatchError, UserError) and issubclass(DataMismatchError, ValueError)
    assert issubclass(DuplicateSourceIdError, UserError) and issubclass(DuplicateSourceIdError, ValueError)


def test_a_window_s_spans_are_checked_through_its_links_and_the_ignore_index_too(tmp_path):
    """Review (session 18): the class-id check looked for ingest_report.json in the window folder, which holds
    only links, and passed every window; and a span ingested with another ignore index was not compared."""
    from segbalance.pipeline import sample_data
    from segbalance.pipeline.spans import span_window

    for span, seed in ((0, 5), (1, 6)):
        raw = sample_data.write_sample_data("shapes", tmp_path / f"raw{span}", num_images=12, size=16, seed=seed)
        for path in list((raw / "images").iterdir()) + list((raw / "masks").iterdir()):
            path.rename(path.with_name(f"s{span}_{path.name}"))  # unique source_ids across the spans
        first = sorted((raw / "masks").iterdir())[0]
        mask = codec.decode_array(first.read_bytes(), what="mask").copy()
        mask[0, 0] = 255  # a 'no label' pixel: the span's ignore index matters
        first.write_bytes(codec.encode_png(mask))
        assert cli.main(["ingest", str(raw / "images"), str(raw / "masks"), "--output", str(tmp_path / "spans"),
                         "--span", str(span)]) == 0
    window = tmp_path / "window"
    assert span_window(tmp_path / "spans", 2, window) == [0, 1]
    (latest,) = [int(p.name.split("-")[1]) for p in window.glob("Span-*")]
    two = config_from_dict({"classes": {"names": ["background", "square"]}})
    with pytest.raises(SpanRecordError, match=r"Span-0 \(Span-0/ingest_report.json\): its masks hold class ids up "
                                              r"to 3"):
        check_span_records(window, [latest], two)
    checked = check_span_records(window, [latest], CONFIG)
    assert checked["train"] + checked["eval"] == 24 and checked["repeated"] == {}
    other_ignore = config_from_dict({"classes": {"ignore_index": 254}})
    with pytest.raises(SpanRecordError, match="its masks mark 'no label' with 255 .ingest --ignore-index., the config "
                                              "with classes.ignore_index 254: set classes.ignore_index: 255"):
        check_span_records(tmp_path / "spans", [1], other_ignore)


def test_a_run_refused_by_another_run_s_lock_leaves_the_folder(tmp_path, monkeypatch):
    """Review (session 18): two runs starting on one new folder both took it for their own; the one the lock
    refused removed the folder (the other's lock, marker and log) as an empty leftover. Clean-up happens only
    while holding the lock."""
    import contextlib

    from segbalance.pipeline import output_guard, run as run_module

    @contextlib.contextmanager
    def held_by_another(folder, option="--output-dir"):
        raise output_guard.OutputError(f"{folder} is in use by another segbalance run")
        yield

    monkeypatch.setattr(run_module, "exclusive_run", held_by_another, raising=False)
    monkeypatch.setattr("segbalance.pipeline.run_lock.exclusive_run", held_by_another)
    out = tmp_path / "out"
    assert cli.main(["run", "--output-dir", str(out)]) == 2
    assert out.is_dir() and (out / output_guard.MARKER).exists()


def test_a_window_of_two_data_sets_under_the_same_names_is_refused_and_leaves_nothing(tmp_path, capsys):
    """QA (session 18, helpers 29 and 31): two sample data sets (both shapes_000NN) as the spans of a window
    stopped the trainer with a traceback; now one line before any component, and the refused run leaves no
    folder (its span window's links included)."""
    from segbalance.pipeline import sample_data

    for span, seed in ((0, 5), (1, 6)):
        raw = sample_data.write_sample_data("shapes", tmp_path / f"raw{span}", num_images=12, size=16, seed=seed)
        assert cli.main(["ingest", str(raw / "images"), str(raw / "masks"), "--output", str(tmp_path / "spans"),
                         "--span", str(span)]) == 0
    capsys.readouterr()
    config = tmp_path / "window.yaml"
    config.write_text("data: {num_spans: 2}\n")
    out = tmp_path / "out"
    assert cli.main(["run", "--config", str(config), "--data", str(tmp_path / "spans"), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "image/source_id 'shapes_00000' names two different records" in err[0], err
    assert not out.exists()


def test_an_id_repeated_in_one_file_before_a_bad_record_names_the_bad_record(tmp_path):
    """Review (session 18): the duplicate check read the whole file of an id's first record again, parsing
    records the main loop had not checked yet: a repeat followed by a bad record was a DecodeError
    traceback. The bad record is named, as without the repeat."""
    spans = span(tmp_path, [record("a"), record("a"), *[record(f"x{i}") for i in range(10)],
                            b"this is not a tf.train.Example at all"])
    with pytest.raises(SpanRecordError, match=r"record 13 is not a tf.train.Example \(37 bytes\)"):
        check_span_records(spans, [3], CONFIG)


def test_a_span_of_binary_masks_saved_as_0_and_255_is_refused_first(tmp_path, capsys):
    """QA 76: `run --data` on such Span-N folders trained background only, blessed the model (mIoU 0.30) and
    pushed it; the images/ + masks/ path refused the same masks."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (tmp_path / "raw" / folder).mkdir(parents=True)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "raw" / "images" / f"b{i}.png")
        mask = np.zeros((8, 8), np.uint8)
        mask[2:5, 2:6] = 255  # the foreground, saved as 255
        Image.fromarray(mask).save(tmp_path / "raw" / "masks" / f"b{i}.png")
    assert cli.main(["ingest", str(tmp_path / "raw" / "images"), str(tmp_path / "raw" / "masks"), "--output",
                     str(tmp_path / "spans"), "--span", "0", "--num-classes", "2"]) == 0
    capsys.readouterr()
    two = config_from_dict({"classes": {"names": ["background", "lesion"]}})
    with pytest.raises(SpanRecordError, match=re.escape("no mask holds a class id other than 0 (background; "
                                                        "ingest_report.json max_class_id): there is nothing to learn "
                                                        "for the other classes; 12 masks hold 255")):
        check_span_records(tmp_path / "spans", [0], two)
    config = tmp_path / "two.yaml"
    config.write_text("classes: {names: [background, lesion]}\n")
    assert cli.main(["run", "--config", str(config), "--data", str(tmp_path / "spans"),
                     "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and '--palette holding {"0": 0, "1": 255}' in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_span_ingest_kept_a_minority_of_for_want_of_class_names_is_refused(tmp_path, capsys):
    """QA 92 M4: `ingest --span N` with a classes.json a class short skipped 41 of 80 pairs as bad (ids
    outside the classes) and exited 0, and the scheduled run trained on the 39 left, where `run --data`
    refuses the same folder (more than 10 % of the masks). Ingest now warns, and a run refuses the span."""
    import json

    from segbalance.contract import MAX_BAD_ID_FRACTION
    from segbalance.pipeline import sample_data

    raw = sample_data.write_sample_data("shapes", tmp_path / "raw", num_images=16, size=16, seed=5)
    (raw / "classes.json").write_text(json.dumps({"class_names": ["background", "ellipse"]}))  # a stale file
    assert cli.main(["ingest", str(raw / "images"), str(raw / "masks"), "--output", str(tmp_path / "spans"),
                     "--span", "0"]) == 0  # bad pairs are skipped, the rest written, as documented
    report = json.loads((tmp_path / "spans" / "Span-0" / "ingest_report.json").read_text())
    largest = [int(codec.decode_array(p.read_bytes(), what="mask").max()) for p in sorted((raw / "masks").iterdir())]
    skipped = sum(m > 1 for m in largest)  # ids 2 and 3 are outside the 2 named classes
    assert report["num_bad"] == skipped and report["num_written"] == 16 - skipped
    assert skipped > MAX_BAD_ID_FRACTION * 16
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ingest: warning: ")]
    assert any(f"{skipped} of 16 masks hold class ids the 2 classes lack" in line
               and "`segbalance run` refuses this span" in line for line in warning), warning
    config = tmp_path / "two.yaml"
    config.write_text("classes: {names: [background, ellipse]}\n")
    assert cli.main(["run", "--config", str(config), "--data", str(tmp_path / "spans"),
                     "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{skipped} of 16 masks hold class ids the 2 classes lack" in err[0], err
    assert f"the span holds {16 - skipped} of its images" in err[0] and "--overwrite" in err[0]
    assert not (tmp_path / "out").exists()
    # one such mask among many is a broken file: skipped, no warning, and the run reads the span
    one = sample_data.write_sample_data("shapes", tmp_path / "one", num_images=16, size=16, seed=5)
    keep = [p for p in sorted((one / "masks").iterdir())
            if int(codec.decode_array(p.read_bytes(), what="mask").max()) > 1]
    for extra in keep[1:]:  # all but one mask with ids 2-3 made 2-class masks
        ids = codec.decode_array(extra.read_bytes(), what="mask")
        extra.write_bytes(codec.encode_png(np.minimum(ids, 1).astype(np.uint8)))
    (one / "classes.json").write_text(json.dumps({"class_names": ["background", "ellipse"]}))
    assert cli.main(["ingest", str(one / "images"), str(one / "masks"), "--output", str(tmp_path / "spans1"),
                     "--span", "0"]) == 0
    assert "ingest: warning: " not in capsys.readouterr().err
    checked = check_span_records(tmp_path / "spans1", [0], config_from_dict({"classes": {"names": ["background",
                                                                                                   "ellipse"]}}))
    assert checked["train"] + checked["eval"] == 15
