"""ClassStats Beam job (components/class_stats_beam.py): every number against an independent NumPy
count on random masks with ignore pixels, labelled fields, an absent class and bad records."""
import io
import json

import zlib

import numpy as np
import pytest
import tensorflow as tf

from segbalance.components import class_stats_beam as csb
from segbalance.trainer import class_stats_io
from segbalance.trainer import example_codec as codec

C = 4


def make_records(seed=0, n=12, size=(6, 5), ignore=255):
    """Random masks with ignore pixels (value ``ignore``), labelled fields, an absent class (3) and bad records.

    Returns (serialized records, NumPy reference of what must be counted).
    """
    rng = np.random.default_rng(seed)
    records, good = [], []
    for i in range(n):
        mask = rng.choice([0, 1, 2], size=size, p=[0.6, 0.3, 0.1]).astype(np.uint8)
        mask[rng.random(size) < 0.1] = ignore
        labeled = [0, 1] if i % 3 == 0 else ([0, 1, 2] if i % 3 == 1 else None)
        ex = codec.build_example(codec.encode_png(np.zeros((*size, 3), np.uint8)), codec.encode_png(mask),
                                 f"img{i}", *size, labeled, group=record_group(i))
        records.append(ex.SerializeToString())
        good.append((f"img{i}", mask, labeled))
    bad_ids = np.full(size, 7, np.uint8)
    records.append(codec.build_example(b"x", codec.encode_png(bad_ids), "bad_ids", *size).SerializeToString())
    records.append(codec.build_example(b"x", b"not a png", "corrupt", *size).SerializeToString())
    no_mask = codec.build_example(b"x", b"", "no_mask", *size)
    del no_mask.features.feature[codec.MASK_KEY]
    records.append(no_mask.SerializeToString())
    out_of_range = codec.build_example(b"x", codec.encode_png(np.zeros(size, np.uint8)), "bad_labeled", *size, [0, 9])
    records.append(out_of_range.SerializeToString())
    return records, good


def record_group(i):
    """``make_records``' image/group_id of record i: a tile for even records, none for odd ones."""
    return f"tile{i % 3}" if i % 2 == 0 else None


def numpy_reference(good, policy="complete", ignore=255):
    pixel = np.zeros(C, np.int64)
    images = np.zeros(C, np.int64)
    cooc = np.zeros((C, C), np.int64)
    missing_counts = np.zeros(C, np.int64)
    ignored = 0
    per_image = {}
    for sid, mask, labeled in good:
        valid = mask[mask != ignore]
        ignored += int((mask == ignore).sum())
        counts = np.array([(valid == c).sum() for c in range(C)])
        pixel += counts
        present = [c for c in range(C) if counts[c] > 0]
        for a in present:
            images[a] += 1
            for b in present:
                cooc[a, b] += 1
        if labeled is None:
            lab = set(range(C)) if policy == "complete" else set(present)
        else:
            lab = set(labeled)
        lab |= set(present) | {0}
        missing = sorted(set(range(C)) - lab)
        for m in missing:
            missing_counts[m] += 1
        per_image[sid] = {"present": present, "labeled": sorted(lab), "missing": missing, "pixel_counts": counts}
    return pixel, images, cooc, missing_counts, ignored, per_image


def numpy_present_image_pixels(good, ignore=255):
    """Per class: labelled (non-ignored) pixels of the images in which the class appears."""
    totals = np.zeros(C, np.int64)
    for _, mask, _ in good:
        valid = mask[mask != ignore]
        for c in np.unique(valid):
            totals[c] += valid.size
    return totals


def write_tfrecord(path, records, compression=None):
    with tf.io.TFRecordWriter(str(path), compression) as writer:
        for r in records:
            writer.write(r)


@pytest.fixture(scope="module")
def stats_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stats")
    records, good = make_records()
    write_tfrecord(tmp / "data-0.tfrecord", records[:8])
    write_tfrecord(tmp / "data-1.tfrecord", records[8:])
    options = csb.StatsOptions(num_classes=C, class_names=["bg", "a", "b", "never"])
    stats = csb.run_class_stats({"train": str(tmp / "data-*")}, str(tmp / "out"), options,
                                beam_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"])
    return tmp, stats, good


def test_counts_match_numpy(stats_run):
    tmp, stats, good = stats_run
    pixel, images, cooc, missing, ignored, _ = numpy_reference(good)
    assert stats["pixel_counts"] == pixel.tolist()
    assert stats["image_counts"] == images.tolist()
    assert stats["cooccurrence"] == cooc.tolist()
    assert stats["missing_image_counts"] == missing.tolist()
    assert stats["ignored_pixels"] == ignored
    assert stats["total_pixels"] == int(pixel.sum()) + ignored == len(good) * 30
    assert stats["num_records"] == len(good) and stats["quarantined_records"] == 4
    assert stats["zero_count_classes"] == [3] and "[3]" in stats["zero_count_note"]
    for scheme, weights in stats["weights"].items():
        assert len(weights) == C and np.isfinite(weights).all() and weights[3] == 0.0, scheme
    on_disk = class_stats_io.read_class_stats(str(tmp / "out"))
    assert on_disk["pixel_counts"] == stats["pixel_counts"]


def test_weights_match_class_weights_module(stats_run):
    from segbalance.trainer.class_weights import compute_class_weights

    _, stats, good = stats_run
    pixel = numpy_reference(good)[0]
    present_pixels = numpy_present_image_pixels(good)
    assert stats["present_image_pixels"] == present_pixels.tolist()
    np.testing.assert_allclose(stats["weights"]["median_frequency"],
                               compute_class_weights(pixel, "median_frequency", present_image_pixels=present_pixels))
    np.testing.assert_allclose(stats["weights"]["enet"], compute_class_weights(pixel, "enet"))


def test_per_image_rows(stats_run):
    tmp, _, good = stats_run
    _, _, _, _, _, ref = numpy_reference(good)
    table = class_stats_io.read_per_image(str(tmp / "out"))
    assert sorted(table["source_id"]) == sorted(ref)
    for row in table.to_dict("records"):
        expected = ref[row["source_id"]]
        for key in ("present", "labeled", "missing"):
            assert list(row[key]) == expected[key], (row["source_id"], key)
        assert list(row["pixel_counts"]) == expected["pixel_counts"].tolist()
        assert row["group_id"] == record_group(int(row["source_id"][3:])), row["source_id"]  # None: no group
        mask, listed = next((m, lab) for sid, m, lab in good if sid == row["source_id"])
        image = codec.encode_png(np.zeros((*mask.shape, 3), np.uint8))
        crc = zlib.crc32(codec.encode_png(mask), zlib.crc32(image))  # the bytes; and the labelled ids listed
        ids = ("[" + ", ".join(map(str, sorted(listed))) + "]").encode() if listed is not None else None
        expected = crc if ids is None else zlib.crc32(ids, crc)
        assert row["content_crc32"] == expected, row["source_id"]
    assert table["group_id"].isna().sum() == sum(record_group(int(sid[3:])) is None for sid in ref) > 0
    labeled = class_stats_io.labeled_by_source_id(str(tmp / "out"))
    assert labeled["img0"] == [0, 1] + ([2] if 2 in ref["img0"]["present"] else [])


def test_quarantine_names_each_bad_record(stats_run):
    tmp, _, _ = stats_run
    reasons = {q["source_id"]: q["reason"] for q in class_stats_io.read_quarantine(str(tmp / "out"))}
    assert set(reasons) == {"bad_ids", "corrupt", "no_mask", "bad_labeled"}
    assert "num_classes=4" in reasons["bad_ids"] and "no mask" in reasons["no_mask"]
    assert "cannot decode" in reasons["corrupt"] or "mask" in reasons["corrupt"]
    assert "outside [0, 4)" in reasons["bad_labeled"]


def test_partial_policy_trusts_only_present_classes(tmp_path):
    records, good = make_records(seed=1, n=6)
    write_tfrecord(tmp_path / "d.tfrecord", records)
    options = csb.StatsOptions(num_classes=C, labeled_policy="partial")
    stats = csb.run_class_stats({"train": str(tmp_path / "d.tfrecord")}, str(tmp_path / "o"), options)
    assert stats["missing_image_counts"] == numpy_reference(good, "partial")[3].tolist()


def test_checked_only_split_gets_its_own_table_and_no_count(tmp_path):
    """count_splits=["train"] with an eval split: eval's per-image rows (labelled sets under the same
    policy) go to uncounted_per_image-*.parquet, its pixels into no count, and labeled_by_source_id
    joins both tables (what training and validation batches read)."""
    train, train_good = make_records(seed=4, n=6)
    evaluation, eval_good = make_records(seed=5, n=5)
    eval_records = [r for r in evaluation if b"img" in r]
    write_tfrecord(tmp_path / "train.tfrecord", train)
    write_tfrecord(tmp_path / "eval.tfrecord", [r.replace(b"img", b"evl") for r in eval_records])
    eval_good = [(sid.replace("img", "evl"), mask, lab) for sid, mask, lab in eval_good]
    options = csb.StatsOptions(num_classes=C, labeled_policy="partial")
    out = tmp_path / "out"
    stats = csb.run_class_stats({"train": str(tmp_path / "train.tfrecord"), "eval": str(tmp_path / "eval.tfrecord")},
                                str(out), options, count_splits=["train"],
                                beam_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"])
    assert stats["pixel_counts"] == numpy_reference(train_good, "partial")[0].tolist()  # eval counts nowhere
    counted = class_stats_io.read_per_image(str(out))
    assert sorted(counted["source_id"]) == sorted(sid for sid, _, _ in train_good)
    uncounted = class_stats_io.read_per_image(str(out), class_stats_io.UNCOUNTED_PER_IMAGE_PREFIX)
    ref = numpy_reference(eval_good, "partial")[5]
    assert sorted(uncounted["source_id"]) == sorted(ref) and set(uncounted["split"]) == {"eval"}
    for row in uncounted.to_dict("records"):
        assert [list(row[k]) for k in ("present", "labeled", "missing")] == \
            [ref[row["source_id"]][k] for k in ("present", "labeled", "missing")]
    joined = class_stats_io.labeled_by_source_id(str(out))
    assert set(joined) == set(ref) | {sid for sid, _, _ in train_good}
    assert all(joined[sid] == ref[sid]["labeled"] for sid in ref)
    # a rerun into the same folder replaces both tables (no stale shard of either is left)
    csb.remove_previous_output(str(out))
    assert not list(out.glob("*.parquet"))


def test_suspect_missing_hand_case():
    totals = {"cooccurrence": [[10, 9, 9], [9, 9, 9], [9, 9, 9]], "image_counts": [10, 9, 9]}
    row = {"present": [0, 1], "labeled": [0, 1], "missing": []}
    assert csb.suspect_missing(row, totals, threshold=0.9)["suspect_missing"] == [2]
    totals["cooccurrence"][1][2] = 5
    assert csb.suspect_missing(row, totals, threshold=0.9)["suspect_missing"] == []
    assert csb.suspect_missing({"present": [0]}, totals, 0.5)["suspect_missing"] == []


def test_empty_and_all_bad_inputs_name_the_path(tmp_path):
    options = csb.StatsOptions(num_classes=C)
    with pytest.raises(csb.ClassStatsError, match="no files match .*nothing"):
        csb.run_class_stats({"train": str(tmp_path / "nothing*")}, str(tmp_path / "o"), options)
    write_tfrecord(tmp_path / "bad.tfrecord", make_records(n=0)[0])
    with pytest.raises(csb.ClassStatsError, match="all 4 records in .*bad.tfrecord were quarantined") as raised:
        csb.run_class_stats({"train": str(tmp_path / "bad.tfrecord")}, str(tmp_path / "o2"), options)
    # the reasons are in the message (a failed pipeline component's folder, and its list, is removed)
    rows = [json.loads(line) for line in (tmp_path / "o2" / csb.QUARANTINE_FILE).read_text().splitlines()]
    kinds = {}
    for row in rows:
        kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
    assert f"({', '.join(f'{k}: {n}' for k, n in sorted(kinds.items()))}); first: {rows[0]['source_id']}: " \
           f"{rows[0]['reason']}" in str(raised.value)
    write_tfrecord(tmp_path / "empty.tfrecord", [])
    with pytest.raises(csb.ClassStatsError, match="no records in .*empty.tfrecord"):
        csb.run_class_stats({"train": str(tmp_path / "empty.tfrecord")}, str(tmp_path / "o3"), options)


def numpy_suspects(per_image, images, cooc, threshold):
    """Independent suspect_missing: absent non-background classes whose co-occurrence rate with
    every present foreground class reaches the threshold."""
    out = {}
    for sid, ref in per_image.items():
        fg = np.array([c for c in ref["present"] if c != 0], dtype=int)
        suspects = []
        if fg.size:
            rates = cooc[fg, :] / images[fg, None]
            suspects = [c for c in range(1, C) if c not in ref["present"] and (rates[:, c] >= threshold).all()]
        out[sid] = suspects
    return out


def test_suspect_missing_per_image_matches_numpy(stats_run):
    tmp, stats, good = stats_run
    _, images, cooc, _, _, ref = numpy_reference(good)
    expected = numpy_suspects(ref, images, cooc, stats["suspect_threshold"])
    table = class_stats_io.read_per_image(str(tmp / "out"))
    got = {row["source_id"]: list(row["suspect_missing"]) for row in table.to_dict("records")}
    assert got == expected


def test_suspect_missing_end_to_end_hand_case(tmp_path):
    """9 images hold classes {0, 1, 2}; the 10th holds {0, 1}: class 2 is suspect there only."""
    full = np.array([[0, 1], [2, 2]], np.uint8)
    partial = np.array([[0, 1], [1, 1]], np.uint8)
    image = codec.encode_png(np.zeros((2, 2, 3), np.uint8))
    records = [codec.build_example(image, codec.encode_png(m), f"i{k}", 2, 2).SerializeToString()
               for k, m in enumerate([full] * 9 + [partial])]
    write_tfrecord(tmp_path / "d.tfrecord", records)
    stats = csb.run_class_stats({"train": str(tmp_path / "d.tfrecord")}, str(tmp_path / "o"),
                                csb.StatsOptions(num_classes=3, suspect_threshold=0.9))
    assert stats["cooccurrence"] == [[10, 10, 9], [10, 10, 9], [9, 9, 9]]
    table = class_stats_io.read_per_image(str(tmp_path / "o"))
    suspects = {r["source_id"]: list(r["suspect_missing"]) for r in table.to_dict("records")}
    assert suspects == {**{f"i{k}": [] for k in range(9)}, "i9": [2]}


def test_count_mask_against_numpy():
    rng = np.random.default_rng(5)
    mask = rng.choice([0, 1, 2, 255], size=(7, 9)).astype(np.uint8)
    counts, ignored = csb.count_mask(mask, 3, 255)
    assert counts.tolist() == [int((mask == c).sum()) for c in range(3)] and ignored == int((mask == 255).sum())
    # an ignore id inside 0..C-1 is not counted as a class
    counts, ignored = csb.count_mask(mask, 256, 2)
    assert counts[2] == 0 and ignored == int((mask == 2).sum()) and counts[255] == int((mask == 255).sum())
    wide = np.array([[0, 300], [300, 1]], np.uint16)  # 16-bit masks
    assert csb.count_mask(wide, 301, 255)[0][[0, 1, 300]].tolist() == [1, 1, 2]
    with pytest.raises(ValueError, match=r"class ids \[3\] >= num_classes=3"):
        csb.count_mask(np.array([[3, 255]], np.uint8), 3, 255)
    with pytest.raises(ValueError, match="negative"):
        csb.count_mask(np.array([[-1, 0]], np.int32), 3, 255)


def test_garbage_bytes_and_rgb_mask_are_quarantined():
    options = csb.StatsOptions(num_classes=3)
    out = csb.image_row(b"\xff\xff\xff\xff", "train", options)
    assert out.tag == csb.QUARANTINE and "not a tf.train.Example" in out.value["reason"]
    rgb = codec.build_example(b"x", codec.encode_png(np.zeros((2, 2, 3), np.uint8)), "rgb", 2, 2)
    out = csb.image_row(rgb.SerializeToString(), "train", options)
    assert out.tag == csb.QUARANTINE and "single-channel" in out.value["reason"]
    assert out.value["source_id"] == "rgb" and out.value["split"] == "train"


def test_bad_options_fail_before_the_job():
    with pytest.raises(ValueError, match="unknown weight options"):
        csb.StatsOptions(num_classes=3, weight_options={"clipping": (1, 2)})
    with pytest.raises(ValueError, match="give 0 <= w_min <= w_max"):
        csb.StatsOptions(num_classes=3, weight_options={"clip": (2, 1)})
    with pytest.raises(ValueError, match="suspect_threshold"):
        csb.StatsOptions(num_classes=3, suspect_threshold=0.0)
    with pytest.raises(ValueError, match="labeled_policy"):
        csb.StatsOptions(num_classes=3, labeled_policy="sometimes")


def test_weight_options_reach_every_scheme(tmp_path, stats_run):
    from segbalance.trainer.class_weights import SCHEMES, compute_class_weights, default_beta

    src, _, good = stats_run
    pixel = numpy_reference(good)[0]
    opts = {"damping": "sqrt", "clip": (0.2, 5.0), "zero_count_weight": 1.5}
    stats = csb.run_class_stats({"train": str(src / "data-*")}, str(tmp_path / "w"),
                                csb.StatsOptions(num_classes=C, weight_options=opts))
    present_pixels = numpy_present_image_pixels(good)
    for scheme in SCHEMES:
        np.testing.assert_allclose(stats["weights"][scheme],
                                   compute_class_weights(pixel, scheme, **opts, present_image_pixels=present_pixels))
        assert stats["weights"][scheme][3] == 1.5
    assert stats["weight_options"]["clip"] == [0.2, 5.0]
    assert stats["effective_number_beta"] == pytest.approx(default_beta(pixel))
    assert csb._effective_number_beta(0.0, pixel.tolist()) == 0.0  # a given beta, even 0, is kept


def test_the_job_imports_no_tensorflow(stats_run, tmp_path):
    """The Beam job (its DoFns, CombineFns, the reader, tfx_bsl's decoder, the driver) and the `segbalance stats`
    command in a fresh interpreter: same numbers as the in-process run, and ``tensorflow`` never imported."""
    import subprocess
    import sys

    src, in_process, _ = stats_run
    script = f"""
import json, pickle, sys
from segbalance.components import class_stats_beam as csb
options = csb.StatsOptions(num_classes={C}, class_names=["bg", "a", "b", "never"])
# the DoFns as a worker gets them: pickled, unpickled, then called
read = pickle.loads(pickle.dumps(csb.ReadTFRecordFileFn()))
rows = pickle.loads(pickle.dumps(csb.BatchStatsFn("train", options, keep=True)))
rows.setup()
records = [r for path in csb.match_files({str(src / "data-*")!r}) for r in read.process(path)]
outputs = list(rows.process(records))
stats = csb.run_class_stats({{"train": {str(src / "data-*")!r}}}, {str(tmp_path / "out")!r}, options,
                            beam_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"])
# ... and the whole `segbalance stats` command, its checks after the job included (QA 96: they imported it)
from segbalance.pipeline import cli
assert cli.main(["stats", {str(src / "data-*")!r}, "--num-classes", "{C}", "--output", {str(tmp_path / "cli")!r}]) == 0
print(json.dumps({{"tf": sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.")),
                  "records": len(records), "outputs": len(outputs), "pixel_counts": stats["pixel_counts"]}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["tf"] == []
    assert out["records"] == in_process["num_records"] + in_process["quarantined_records"]
    # every record gives a row or a quarantine entry; each kept one also its serialized bytes
    assert out["outputs"] == out["records"] + in_process["num_records"]
    assert out["pixel_counts"] == in_process["pixel_counts"]


def test_batches_with_a_bad_record_decode_the_rest(stats_run):
    """tfx_bsl decodes a batch in one call; one record that is not an Example fails that call, and
    the batch is decoded again record by record: the others keep their fields."""
    records, _ = make_records(n=3)
    decoder = csb.make_decoder()
    fields = csb.decode_records(decoder, [records[0], b"\xff\xff\xff\xff", records[1]])
    assert isinstance(fields[1], csb.Undecodable) and "parse" in str(fields[1]).lower() and fields[1].source_id is None
    assert [f.source_id for f in (fields[0], fields[2])] == ["img0", "img1"]
    wrong_type = tf.train.Example.FromString(records[2])
    del wrong_type.features.feature[codec.LABELED_KEY].int64_list.value[:]
    wrong_type.features.feature[codec.LABELED_KEY].bytes_list.value.append(b"1")
    out = csb.image_row(wrong_type.SerializeToString(), "train", csb.StatsOptions(num_classes=C))
    assert out.tag == csb.QUARANTINE and out.value["kind"] == "not_an_example"
    assert "wrong type" in out.value["reason"]
    assert out.value["source_id"] == "img2"  # QA 64: its id is readable; it was named by the hash of its bytes
    garbage = csb.image_row(b"\xff\xff\xff\xff", "train", csb.StatsOptions(num_classes=C))
    assert garbage.value["source_id"].startswith("sha1:")  # no id to read
    # tfx_bsl's decoder breaks after such an error: the same RecordDecoder must go on decoding
    fields = decoder.decode([wrong_type.SerializeToString(), records[0]])
    assert "wrong type" in str(fields[0]) and fields[1].source_id == "img0"
    assert [f.source_id for f in decoder.decode([records[1], records[2]])] == ["img1", "img2"]


def test_reader_matches_tensorflow_on_plain_and_gzip_files(tmp_path):
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    records, _ = make_records(n=5)
    for name, compression in (("plain.tfrecord", None), ("zipped.tfrecord.gz", "GZIP")):
        write_tfrecord(tmp_path / name, records, compression)
        with FileSystems.open(str(tmp_path / name), compression_type=CompressionTypes.AUTO) as f:
            assert list(csb.iter_tfrecords(f)) == records, name


def test_record_checks_name_each_problem():
    """Every quarantine kind on a hand-made record, and a good record that passes."""
    options = csb.StatsOptions(num_classes=3)
    mask = np.array([[0, 1], [2, 255]], np.uint8)
    rgb_image = codec.encode_png(np.zeros((2, 2, 3), np.uint8))

    def row(image=rgb_image, mask_bytes=codec.encode_png(mask), labeled=None):
        return csb.image_row(codec.build_example(image, mask_bytes, "r", 2, 2, labeled).SerializeToString(),
                             "train", options)

    assert row()["pixel_counts"] == [1, 1, 1]
    no_image = codec.build_example(rgb_image, codec.encode_png(mask), "r", 2, 2)
    del no_image.features.feature[codec.IMAGE_KEY]
    cases = {
        "no_image": csb.image_row(no_image.SerializeToString(), "train", options),
        "bad_image": row(image=rgb_image[:30]),
        "size_mismatch": row(image=codec.encode_png(np.zeros((3, 2, 3), np.uint8))),
        "bad_mask": row(mask_bytes=b"\xff\xd8\xff\xe0 jpeg bytes"),
        "mask_ids": row(mask_bytes=codec.encode_png(np.array([[0, 7], [1, 1]], np.uint8))),
        "labeled_ids": row(labeled=[0, 5]),
    }
    for kind, out in cases.items():
        assert out.tag == csb.QUARANTINE and out.value["kind"] == kind, (kind, out.value)
    assert "no image" in cases["no_image"].value["reason"]
    assert "image is 3x2 but its mask is 2x2" in cases["size_mismatch"].value["reason"]
    assert "JPEG" in cases["bad_mask"].value["reason"]
    from PIL import Image
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((2, 2, 2), np.uint8), mode="LA").save(buffer, format="PNG")
    la = row(mask_bytes=buffer.getvalue())
    assert la.value["kind"] == "bad_mask" and "grey + alpha" in la.value["reason"]
    for kind in cases:
        assert kind in csb.KINDS


def test_mask_value_counts_against_numpy_and_what_the_trainer_decodes():
    """8-bit grey masks are counted by Pillow's histogram, equal to np.bincount of the ids and of what
    Transform decodes (tf.io.decode_png, channels 1, uint8). Palette and 16-bit PNGs were counted by
    their ids while TensorFlow read grey levels of the palette colours / scaled values (ignore 255 in a
    16-bit mask became background): now quarantined, naming the fix."""
    import io

    import tensorflow as tf
    from PIL import Image

    rng = np.random.default_rng(7)
    ids = rng.choice([0, 1, 2, 5, 255], size=(9, 11)).astype(np.uint8)
    counts, shape = csb.decode_mask_counts(codec.encode_png(ids))
    decoded = tf.io.decode_png(codec.encode_png(ids), channels=1, dtype=tf.uint8).numpy()[..., 0]
    for reference in (np.bincount(ids.ravel()), np.bincount(decoded.ravel())):
        assert shape == ids.shape
        assert counts[:len(reference)].tolist() == reference.tolist() and not counts[len(reference):].any()
    palette = Image.fromarray(ids, mode="P")
    palette.putpalette(list(rng.integers(0, 256, 768)))
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    wide_buffer = io.BytesIO()
    Image.fromarray(ids.astype(np.uint16)).save(wide_buffer, format="PNG")
    for data, what in ((buffer.getvalue(), "palette"), (wide_buffer.getvalue(), "16-bit")):
        seen = tf.io.decode_png(data, channels=1, dtype=tf.uint8).numpy()[..., 0]
        assert not np.array_equal(seen, ids), what  # the premise: TensorFlow does not read the ids
        with pytest.raises(csb.Quarantined, match=f"mask is a {what}.* PNG: TensorFlow decodes it to other values"):
            csb.decode_mask_counts(data)


def _grey_png(ids: np.ndarray, bits: int) -> bytes:
    """A greyscale PNG storing ``ids`` as they are at ``bits`` (1, 2, 4 or 8) per pixel."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\x00" + np.packbits(np.unpackbits(row[:, None], axis=1)[:, 8 - bits:].ravel()).tobytes()
                    for row in ids.astype(np.uint8))
    header = struct.pack(">IIBBBBB", ids.shape[1], ids.shape[0], bits, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_masks_tensorflow_rescales_or_refuses_are_quarantined():
    """QA 26: 2- and 4-bit grey PNG masks were counted by the values Pillow stretches them to (id 3 of a
    2-bit mask became 255, the ignore index), and damaged PNGs (cut, no end chunk, a wrong CRC) that
    Pillow reads were kept although Transform's tf.io.decode_png refuses them. The premises are checked
    against TensorFlow itself."""
    import tensorflow as tf

    ids = np.zeros((6, 8), np.uint8)
    ids[:, 4:] = 3
    ids[0, 0] = 1
    assert _grey_png(ids, 8) and csb.decode_mask_counts(_grey_png(ids, 8))[0][:4].tolist() == [23, 1, 0, 24]
    for bits in (2, 4):
        data = _grey_png(ids, bits)
        seen = tf.io.decode_png(data, channels=1, dtype=tf.uint8).numpy()[..., 0]
        assert not np.array_equal(seen, ids) and seen[0, 0] == 255 // (2 ** bits - 1), bits  # stretched
        with pytest.raises(csb.Quarantined, match=f"mask is a {bits}-bit greyscale PNG: TensorFlow scales"):
            csb.decode_mask_counts(data)
    good = codec.encode_png(ids)
    idat = good.find(b"IDAT") - 4
    crc_at = idat + 8 + int.from_bytes(good[idat:idat + 4], "big")
    damaged = {"cut": good[:-20], "no end chunk": good[:good.rfind(b"IEND") - 4],
               "wrong CRC": good[:crc_at] + bytes([good[crc_at] ^ 1]) + good[crc_at + 1:],
               # QA 80 H1: Pillow's verify passed these two
               "cut 1 byte": good[:-1], "wrong IEND CRC": good[:-1] + bytes([good[-1] ^ 1])}
    for what, data in damaged.items():
        with pytest.raises(tf.errors.InvalidArgumentError):
            tf.io.decode_png(data, channels=1, dtype=tf.uint8)
        with pytest.raises(csb.Quarantined, match=r"mask is a damaged PNG \(.*\): TensorFlow cannot decode it"):
            csb.decode_mask_counts(data)
    image = codec.encode_png(np.zeros((6, 8, 3), np.uint8))
    for data in (image[:-1], image[:-1] + bytes([image[-1] ^ 1]), image[:-12]):  # images too (QA 80 H1)
        with pytest.raises(tf.errors.InvalidArgumentError):
            tf.io.decode_png(data, channels=3)
        with pytest.raises(csb.Quarantined, match=r"image is a damaged PNG \(.*\): TensorFlow cannot decode it"):
            csb.check_image(data, (6, 8))
    csb.check_image(image, (6, 8))  # the whole file passes
    # QA 64: PIL's reason held "<_io.BytesIO object at 0x7f...>", another address on every run
    with pytest.raises(csb.Quarantined) as raised:
        csb.decode_mask_counts(b"\x89PNG\r\n\x1a\nthis is not a png")
    assert "object at 0x" not in str(raised.value) and str(raised.value).startswith("cannot decode mask: ")


@pytest.mark.parametrize("orientation", [1, 6, 0, 9, "malformed"])
def test_a_mask_with_an_exif_orientation_is_quarantined(orientation):
    """QA 80 M2: the trainer turns an image by its EXIF tag but decodes the mask as stored, so a tagged mask in
    a user's own records is off its image (silently, on a square picture); ingest turns them. Tag 1 (upright)
    is no turn, and so are tags outside 1-8 and a block that cannot be read, as in the trainer's graph (QA 82 M2,
    L1: those were quarantined)."""
    from PIL import Image

    from segbalance.trainer import exif_orientation as graph

    exif = Image.Exif()
    exif[0x0112] = 1 if orientation == "malformed" else orientation
    buffer = io.BytesIO()
    Image.fromarray(np.eye(4, dtype=np.uint8)).save(
        buffer, format="PNG", exif=b"garbage!" if orientation == "malformed" else exif.tobytes())
    assert (b"eXIf" in buffer.getvalue()) and int(graph.orientation(tf.constant(buffer.getvalue()))) == (
        6 if orientation == 6 else 1)  # what the trainer reads
    if orientation != 6:
        assert csb.decode_mask_counts(buffer.getvalue())[0][:2].tolist() == [12, 4]
        return
    with pytest.raises(csb.Quarantined, match=r"mask has an EXIF orientation tag \(6\), which the trainer does not"):
        csb.decode_mask_counts(buffer.getvalue())


def test_a_group_id_of_another_type_costs_the_record_its_group_not_the_record():
    """Review 26: with image/group_id in tfx_bsl's decoder schema as bytes, a user's record carrying an int64
    group id failed to decode and was quarantined whole ("not a tf.train.Example"); the trainer ignores such a
    group. It keeps the record now, without a group; a bytes group next to it in the batch is read."""
    image, mask = codec.encode_png(np.zeros((4, 4, 3), np.uint8)), codec.encode_png(np.zeros((4, 4), np.uint8))
    odd = codec.build_example(image, mask, "int_group", 4, 4)
    odd.features.feature[codec.GROUP_KEY].int64_list.value.append(7)
    fine = codec.build_example(image, mask, "bytes_group", 4, 4, group="tile1")
    rows = csb.decode_records(csb.make_decoder(), [odd.SerializeToString(), fine.SerializeToString()])
    assert [(r.source_id, r.group) for r in rows] == [("int_group", None), ("bytes_group", "tile1")]
    row = csb.image_row(odd.SerializeToString(), "train", csb.StatsOptions(num_classes=2))
    assert isinstance(row, dict) and row["group_id"] is None


def test_an_os2_bmp_header_is_quarantined_by_name():
    """Review 26: bit depth and compression were read at the offsets of a 40-byte header; in an OS/2 BMP
    (12-byte header) they are pixel data."""
    import struct

    width, height = 4, 2
    row = bytes([10, 20, 30] * width)  # 24-bit BGR, 12 bytes a row (a multiple of 4)
    pixels = row * height
    core = struct.pack("<IHHHH", 12, width, height, 1, 24)
    data = b"BM" + struct.pack("<IHHI", 14 + 12 + len(pixels), 0, 0, 26) + core + pixels
    from PIL import Image
    import io

    assert Image.open(io.BytesIO(data)).size == (width, height)  # Pillow reads it
    with pytest.raises(csb.Quarantined, match=r"BMP with a 12-byte \(OS/2\) header"):
        csb.check_image(data, (height, width))


def test_bmp_images_tensorflow_cannot_read_as_pillow_does_are_quarantined():
    """QA 26: TensorFlow's BMP decoder takes the bits per pixel as channels and ignores the palette: a 1-bit
    BMP fails in the trainer and an 8-bit palette BMP decodes to its indices as grey. Both are quarantined;
    24-, 32-bit and grey 8-bit BMPs decode as Pillow shows them and are kept."""
    import io

    import tensorflow as tf
    from PIL import Image

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (6, 5, 3), np.uint8)
    grey = rng.integers(0, 256, (6, 5), np.uint8)
    images = {"1-bit": Image.fromarray(grey > 128).convert("1"),
              "palette": Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
              "grey": Image.fromarray(grey), "24-bit": Image.fromarray(rgb),
              "32-bit": Image.fromarray(np.dstack([rgb, np.full((6, 5), 255, np.uint8)]))}
    for what, image in images.items():
        buffer = io.BytesIO()
        image.save(buffer, format="BMP")
        data = buffer.getvalue()
        shown = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        try:
            read = tf.io.decode_image(data, channels=3).numpy()
            same = np.array_equal(read, shown)
        except tf.errors.InvalidArgumentError:
            same = False
        assert same == (what in ("grey", "24-bit", "32-bit")), what  # the premise, from TensorFlow itself
        if same:
            csb.check_image(data, (6, 5))
        else:
            with pytest.raises(csb.Quarantined, match="image is a BMP with (1 bit per pixel|a palette): TensorFlow"):
                csb.check_image(data, (6, 5))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_turned_image_s_mask_must_fit_the_shown_image(fmt):
    """The trainer turns a JPEG (Exif segment) or a PNG (eXIf chunk) by its EXIF orientation
    (trainer/exif_orientation.py): a mask drawn on the shown (portrait) image fits; one of the stored
    (landscape) pixels would train misaligned and is quarantined, saying why."""
    from PIL import Image
    import io

    options = csb.StatsOptions(num_classes=3)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(buffer, fmt, exif=exif.tobytes())  # stored 4 wide x 2 high

    def row(mask_shape):
        mask = codec.encode_png(np.zeros(mask_shape, np.uint8))
        return csb.image_row(codec.build_example(buffer.getvalue(), mask, "phone", *mask_shape).SerializeToString(),
                             "train", options)

    assert row((4, 2))["pixel_counts"] == [8, 0, 0]  # shown 2 wide x 4 high
    stored = row((2, 4))
    assert stored.tag == csb.QUARANTINE and stored.value["kind"] == "size_mismatch"
    assert "image is 4x2 as shown (its EXIF orientation turns it by 90 degrees) but its mask is 2x4" in \
        stored.value["reason"]


def test_a_record_ingested_again_with_its_labelled_classes_is_another_content():
    """QA 92 M1: a delivery blocked without its labeled.json stayed blocked when ingested again with it (the
    drift gate held back the same names, counts and bytes). The labelled ids are part of a record's content;
    a record without them keeps the CRC of its bytes (blocked images recorded before stay known)."""
    mask = codec.encode_png(np.array([[0, 1], [2, 0]], np.uint8))
    image = codec.encode_png(np.zeros((2, 2, 3), np.uint8))
    options = csb.StatsOptions(num_classes=3)
    def row(labeled):
        record = codec.build_example(image, mask, "a", 2, 2, labeled).SerializeToString()
        return csb.image_row(record, "train", options)["content_crc32"]
    assert row(None) == zlib.crc32(mask, zlib.crc32(image))
    assert len({row(None), row([0, 1]), row([0, 1, 2])}) == 3
    assert row([1, 0]) == row([0, 1])  # the set, not its order
