"""Image and mask files whose names differ by an ending (Cityscapes, ISIC, *_mask): ingest pairs them with
--image-stem-suffix / --mask-stem-suffix, and when nothing pairs it says which endings would."""
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from segbalance.pipeline import cli
from segbalance.pipeline.stem_pairing import (common_ending, strip_stem_suffix, suggest_stem_suffixes,
                                              suggestion_text)
from segbalance.trainer import example_codec as codec

CITYSCAPES = ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000313"]


def test_strip_stem_suffix():
    assert strip_stem_suffix("a_gtFine_labelIds", "_gtFine_labelIds") == "a"
    assert strip_stem_suffix("a", "_mask") == "a"  # no such ending: kept whole
    assert strip_stem_suffix("_mask", "_mask") == "_mask"  # nothing would be left: kept whole
    assert strip_stem_suffix("a_mask", "") == "a_mask"
    assert strip_stem_suffix("cafe\u0301_mask", "_mask") == "cafe\u0301"


def test_common_ending():
    assert common_ending(["x_leftImg8bit", "yy_leftImg8bit"]) == "_leftImg8bit"
    assert common_ending(["img_001", "img_011"]) == "1"
    assert common_ending(["a", "b"]) == "" and common_ending([]) == "" and common_ending(["abc"]) == "abc"


@pytest.mark.parametrize("images, masks, expected", [
    ([f"{s}_leftImg8bit" for s in CITYSCAPES], [f"{s}_gtFine_labelIds" for s in CITYSCAPES],
     ("_leftImg8bit", "_gtFine_labelIds", 3)),
    (["ISIC_0000000", "ISIC_0000001"], ["ISIC_0000000_segmentation", "ISIC_0000001_segmentation"],
     ("", "_segmentation", 2)),
    (["car_01", "car_11"], ["car_01-mask", "car_11-mask"], ("", "-mask", 2)),  # not "1-mask": at a separator
    (["scan1_img", "scan2_img"], ["scan1", "scan2"], ("_img", "", 2)),
    (["a", "b"], ["c", "d"], None),  # nothing would pair
])
def test_suggested_endings(images, masks, expected):
    assert suggest_stem_suffixes(images, masks) == expected


def test_the_suggestion_is_a_command_line_a_shell_takes():
    text = suggestion_text(("", "-mask", 2), "car_01.jpg", "car_01-mask.png")
    assert "--mask-stem-suffix=-mask" in text and "--image-stem-suffix" not in text  # '=': not read as an option
    assert "car_01.jpg / car_01-mask.png" in text and "pairs 2 files" in text
    assert "--image-stem-suffix='_left img'" in suggestion_text(("_left img", "_m", 1), "a", "b")


def _cityscapes(root):
    rng = np.random.default_rng(0)
    masks = {}
    for stem in CITYSCAPES:
        for folder in ("images", "masks", "masks_full"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)).save(
            root / "images" / f"{stem}_leftImg8bit.png")
        masks[stem] = rng.integers(0, 3, (8, 16), dtype=np.uint8)
        Image.fromarray(masks[stem]).save(root / "masks" / f"{stem}_gtFine_labelIds.png")
        Image.fromarray(masks[stem]).save(root / "masks_full" / f"{stem}_gtFine_labelIds.png")
    return masks


def _ingest(root, *extra):
    return cli.main(["ingest", str(root / "images"), str(root / "masks"), "--output", str(root / "out"),
                     "--num-classes", "3", "--span", "0", *extra])


def test_ingest_pairs_names_that_differ_by_an_ending(tmp_path, capsys):
    masks = _cityscapes(tmp_path)
    assert _ingest(tmp_path) == 2  # nothing pairs by stem: one line that says what to pass
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no image file pairs with a mask file of the same stem" in err
    assert "--image-stem-suffix=_leftImg8bit --mask-stem-suffix=_gtFine_labelIds" in err and "pairs 3 files" in err
    assert "Traceback" not in err and not (tmp_path / "out" / "Span-0").exists()
    assert _ingest(tmp_path, "--image-stem-suffix", "_leftImg8bit", "--mask-stem-suffix", "_gtFine_labelIds",
                   "--reference-masks", str(tmp_path / "masks_full")) == 0
    span = tmp_path / "out" / "Span-0"
    records = [codec.parse_record(r.numpy()) for r in tf.data.TFRecordDataset(
        [str(f) for f in sorted(span.glob("data-*.tfrecord"))])]
    assert sorted(r.source_id for r in records) == sorted(CITYSCAPES)  # the stem without the endings
    for record in records:
        np.testing.assert_array_equal(codec.decode_array(record.mask_bytes, what="mask"), masks[record.source_id])
    report = json.loads((span / "ingest_report.json").read_text())
    assert report["num_written"] == 3 and report["bad"] == [] and report["num_reference_masks"] == 3
    assert sorted(p.name for p in (span / "reference_masks").iterdir()) == [f"{s}.png" for s in sorted(CITYSCAPES)]


def test_run_on_such_a_folder_says_how_to_ingest_it(tmp_path):
    import subprocess
    import sys

    _cityscapes(tmp_path / "data")
    (tmp_path / "data" / "classes.json").write_text(json.dumps({"class_names": ["road", "car", "person"]}))
    result = subprocess.run([sys.executable, "-m", "segbalance.pipeline.cli", "run", "--data", str(tmp_path / "data"),
                             "--output-dir", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr and "no image file pairs with a mask file of the same stem" in line
    assert (f"segbalance ingest {tmp_path / 'data' / 'images'} {tmp_path / 'data' / 'masks'} "
            f"--image-stem-suffix=_leftImg8bit --mask-stem-suffix=_gtFine_labelIds --output "
            f"{tmp_path / 'out' / 'data'} --span 0`, then `segbalance run --data {tmp_path / 'out' / 'data'}`") in line
