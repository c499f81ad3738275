"""`segbalance ingest --value-map`: mask values that are not the class ids, several to one id (Cityscapes'
labelIds -> trainIds), checked against a NumPy look-up of the same table."""
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from segbalance.pipeline import cli
from segbalance.trainer import example_codec as codec

# a piece of Cityscapes' table: labelId -> trainId (road 7 -> 0, sidewalk 8 -> 1, car 26 -> 2); 0 (unlabeled),
# 1 (ego vehicle) and 4 (static) -> ignore
TABLE = {7: 0, 8: 1, 26: 2, 0: 255, 1: 255, 4: 255}


def _data(root, masks):
    rng = np.random.default_rng(1)
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for stem, mask in masks.items():
        image = rng.integers(0, 256, (*mask.shape[:2], 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"{stem}.png")
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")


def _ingest(root, *extra):
    return cli.main(["ingest", str(root / "images"), str(root / "masks"), "--output", str(root / "out"),
                     "--num-classes", "3", *extra])


def _masks(root):
    records = [codec.parse_record(r.numpy()) for r in tf.data.TFRecordDataset(
        [str(f) for f in sorted((root / "out").glob("data-*.tfrecord"))])]
    return {r.source_id: codec.decode_array(r.mask_bytes, what="mask") for r in records}


def _map_file(root, table):
    path = root / "map.json"
    path.write_text(json.dumps({str(k): v for k, v in table.items()}))
    return str(path)


def test_several_values_map_to_one_class_or_to_ignore(tmp_path):
    rng = np.random.default_rng(0)
    masks = {f"f{i}": rng.choice(sorted(TABLE), size=(9, 13)).astype(np.uint8) for i in range(3)}
    wide = rng.choice([1000, 7000, 0], size=(9, 13)).astype(np.uint16)  # a 16-bit mask: values past 255
    _data(tmp_path, {**masks, "wide": wide})
    table = {**TABLE, 1000: 1, 7000: 2}
    assert _ingest(tmp_path, "--value-map", _map_file(tmp_path, table)) == 0
    written = _masks(tmp_path)
    lookup = np.vectorize(table.__getitem__)  # the reference: the table applied pixel by pixel
    for stem, mask in {**masks, "wide": wide}.items():
        np.testing.assert_array_equal(written[stem], lookup(mask).astype(np.uint8))
    report = json.loads((tmp_path / "out" / "ingest_report.json").read_text())
    assert report["bad"] == [] and report["max_class_id"] == 2 and report["masks_with_ignore"] == 4


def test_a_value_the_map_lacks_is_a_bad_pair_that_says_what_to_add(tmp_path, capsys):
    _data(tmp_path, {"ok": np.full((4, 4), 7, np.uint8), "odd": np.full((4, 4), 33, np.uint8)})
    assert _ingest(tmp_path, "--value-map", _map_file(tmp_path, TABLE)) == 0
    (bad,) = json.loads((tmp_path / "out" / "ingest_report.json").read_text())["bad"]
    assert bad["source_id"] == "odd" and bad["code"] == "value_not_in_palette"
    assert "value 33 is not in --value-map" in bad["reason"] and '("33": 255 for \'no label\')' in bad["reason"]
    assert set(_masks(tmp_path)) == {"ok"}


def test_a_colour_mask_with_a_value_map_says_to_use_a_palette(tmp_path):
    _data(tmp_path, {"rgb": np.zeros((4, 4, 3), np.uint8) + np.array([128, 64, 128], np.uint8),
                     "ok": np.full((4, 4), 8, np.uint8)})
    assert _ingest(tmp_path, "--value-map", _map_file(tmp_path, TABLE)) == 0
    (bad,) = json.loads((tmp_path / "out" / "ingest_report.json").read_text())["bad"]
    assert bad["code"] == "rgb_mask_without_palette" and "map colours with --palette" in bad["reason"]


@pytest.mark.parametrize("content, message", [
    ({"road": 0}, 'key "road" is not a mask value'),
    ({"70000": 0}, 'key "70000" is not a mask value (0..65535)'),
    ({"7": 300}, 'value "7" maps to 300, not a class id 0..2 or the ignore index 255'),  # --num-classes 3
    ({"7": "0"}, 'value "7" maps to "0"'),
    ([0, 1], "the top level must be an object"),
    ({}, "maps no value"),
    ({"\u00b2": 0}, 'key "\\u00b2" is not a mask value'),  # a superscript two: isdigit, no int (QA 78: traceback)
    ({"\u0667": 0}, 'key "\\u0667" is not a mask value'),  # an Arabic-Indic seven: was read as 7
    ({"7": 0, "007": 1}, "value 7 is given twice, to class 0 and class 1; keep one"),
    ({"7": 3}, 'value "7" maps to 3, not a class id 0..2 or the ignore index 255'),  # 3 classes (QA 78 L2)
])
def test_a_bad_value_map_is_one_line_naming_the_file(tmp_path, capsys, content, message):
    _data(tmp_path, {"a": np.full((4, 4), 7, np.uint8)})
    (tmp_path / "map.json").write_text(json.dumps(content))
    assert _ingest(tmp_path, "--value-map", str(tmp_path / "map.json")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--value-map {tmp_path / 'map.json'}" in err[0] and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_palette_and_value_map_together_are_refused(tmp_path, capsys):
    _data(tmp_path, {"a": np.full((4, 4), 7, np.uint8)})
    assert _ingest(tmp_path, "--value-map", _map_file(tmp_path, TABLE), "--palette", _map_file(tmp_path, TABLE)) == 2
    assert "--palette and --value-map both map mask values" in capsys.readouterr().err


def test_reference_masks_are_mapped_as_the_masks_are(tmp_path, capsys):
    """QA 78 L5: Cityscapes' reference masks hold labelIds too; with --value-map every one was refused as out of
    range. They are mapped with the same table, and kept in the span as ids."""
    rng = np.random.default_rng(2)
    masks = {f"f{i}": rng.choice(sorted(TABLE), size=(6, 7)).astype(np.uint8) for i in range(3)}
    _data(tmp_path, masks)
    (tmp_path / "full").mkdir()
    full = {stem: rng.choice(sorted(TABLE), size=(6, 7)).astype(np.uint8) for stem in masks}
    for stem, mask in full.items():
        Image.fromarray(mask).save(tmp_path / "full" / f"{stem}.png")
    assert _ingest(tmp_path, "--value-map", _map_file(tmp_path, TABLE), "--reference-masks",
                   str(tmp_path / "full")) == 0
    lookup = np.vectorize(TABLE.__getitem__)
    for stem, mask in full.items():
        kept = codec.decode_array((tmp_path / "out" / "reference_masks" / f"{stem}.png").read_bytes(), what="mask")
        np.testing.assert_array_equal(kept, lookup(mask).astype(np.uint8))
    Image.fromarray(np.full((6, 7), 33, np.uint8)).save(tmp_path / "full" / "f1.png")  # a value the map lacks
    assert _ingest(tmp_path, "--value-map", _map_file(tmp_path, TABLE), "--reference-masks", str(tmp_path / "full"),
                   "--overwrite") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "f1.png" in err and "value 33 is not in --value-map" in err
