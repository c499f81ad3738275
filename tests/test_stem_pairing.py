"""Image and mask files whose names differ by an ending (Cityscapes, ISIC, *_mask): ingest pairs them with
--image-stem-suffix / --mask-stem-suffix, and when nothing pairs it says which endings would."""
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from segbalance.pipeline import cli
from segbalance.pipeline.stem_pairing import (common_ending, endings_after, strip_stem_suffix,
                                              suggest_stem_suffixes, suggestion_text)
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


GTFINE = ["_gtFine_color", "_gtFine_instanceIds", "_gtFine_labelIds"]  # Cityscapes: three masks per image


@pytest.mark.parametrize("images, masks, expected", [
    ([f"{s}_leftImg8bit" for s in CITYSCAPES], [f"{s}_gtFine_labelIds" for s in CITYSCAPES],
     ("_leftImg8bit", ("_gtFine_labelIds",), 3)),
    (["ISIC_0000000", "ISIC_0000001"], ["ISIC_0000000_segmentation", "ISIC_0000001_segmentation"],
     ("", ("_segmentation",), 2)),
    (["car_01", "car_11"], ["car_01-mask", "car_11-mask"], ("", ("-mask",), 2)),  # not "1-mask": at a separator
    (["scan1_img", "scan2_img"], ["scan1", "scan2"], ("_img", ("",), 2)),
    (["a", "b"], ["c", "d"], None),  # nothing would pair
    # QA 78: no ending common to every mask name; each kind pairs as many, so each is named
    ([f"{s}_leftImg8bit" for s in CITYSCAPES], [s + e for s in CITYSCAPES for e in GTFINE],
     ("_leftImg8bit", ("_gtFine_color", "_gtFine_labelIds", "_gtFine_instanceIds"), 3)),
    # QA 79: '' is no kind of mask (it cannot be passed), nor are endings that pair other images
    ([f"{s}_leftImg8bit" for s in CITYSCAPES], [*CITYSCAPES, *(s + "_gtFine_color" for s in CITYSCAPES)],
     ("_leftImg8bit", ("",), 3)),
    (["a", "b"], ["a_x", "b_y"], ("", ("_x",), 1)),
])
def test_suggested_endings(images, masks, expected):
    assert suggest_stem_suffixes(images, masks) == expected


def test_the_suggestion_is_a_command_line_a_shell_takes():
    text = suggestion_text(("", ("-mask",), 2), "car_01.jpg", "car_01-mask.png")
    assert "--mask-stem-suffix=-mask" in text and "--image-stem-suffix" not in text  # '=': not read as an option
    assert "car_01.jpg / car_01-mask.png" in text and "pairs 2 files" in text
    assert "--image-stem-suffix='_left img'" in suggestion_text(("_left img", ("_m",), 1), "a", "b")
    several = suggestion_text(("_leftImg8bit", tuple(GTFINE), 3), "a_leftImg8bit.png", "a_gtFine_color.png")
    assert "there are 3 kinds of mask per image ('_gtFine_color', '_gtFine_instanceIds', '_gtFine_labelIds')" in several
    assert "--image-stem-suffix=_leftImg8bit --mask-stem-suffix=ENDING with the ending of the masks" in several


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


def test_endings_after_gives_the_bases_each_ending_pairs():
    """The pairs of each ending, counted while the endings are found (QA 90 L4: recounted per ending, 16 s for
    5,000 masks of odd endings), are those strip_stem_suffix gives."""
    masks = ["a_x", "b_x", "a_gt_y", "c_x", "z"]
    bases = {"a", "b", "a_gt"}
    found = endings_after(masks, bases)
    assert found == {"_x": {"a", "b"}, "_gt_y": {"a"}, "_y": {"a_gt"}}
    for ending, paired in found.items():
        assert paired == bases & {strip_stem_suffix(s, ending) for s in masks}


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

    data = tmp_path / "data"
    _cityscapes(data)
    (data / "classes.json").write_text(json.dumps({"class_names": ["road", "car", "person"]}))
    # keyed by the stems without the endings, as ingest with the endings reads them (QA 78: the labeled.json check
    # spoke first, and the advice left out labeled.json and masks_full/, so following it lost the partial sets)
    (data / "labeled.json").write_text(json.dumps({CITYSCAPES[0]: [0, 1]}))
    result = subprocess.run([sys.executable, "-m", "segbalance.pipeline.cli", "run", "--data", str(data),
                             "--output-dir", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr and "no image file pairs with a mask file of the same stem" in line
    command = (f"segbalance ingest {data / 'images'} {data / 'masks'} --image-stem-suffix=_leftImg8bit "
               f"--mask-stem-suffix=_gtFine_labelIds --labeled {data / 'labeled.json'} --reference-masks "
               f"{data / 'masks_full'} --output {tmp_path / 'out' / 'data'} --span 0")
    assert f"`{command}`, then `segbalance run --data {tmp_path / 'out' / 'data'}`" in line, line
    assert "the keys of labeled.json are then the stems without the endings" in line
    followed = cli.main(command.split()[1:] + ["--num-classes", "3"])  # the advice, followed
    report = json.loads((tmp_path / "out" / "data" / "Span-0" / "ingest_report.json").read_text())
    assert followed == 0 and report["num_written"] == 3 and report["num_reference_masks"] == 3
    assert report.get("labeled_unmatched", []) == []


def test_masks_of_other_kinds_are_skipped_not_bad_pairs(tmp_path, capsys):
    """QA 78: Cityscapes' gtFine folder holds _color, _instanceIds and _labelIds masks of each image; the other
    kinds were bad pairs (so --strict could never pass) and no ending was suggested (none is common to all)."""
    masks = _cityscapes(tmp_path)
    for stem in CITYSCAPES:
        Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(tmp_path / "masks" / f"{stem}_gtFine_color.png")
    assert _ingest(tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "there are 2 kinds of mask per image ('_gtFine_color', '_gtFine_labelIds')" in err
    assert _ingest(tmp_path, "--image-stem-suffix", "_leftImg8bit", "--mask-stem-suffix", "_gtFine_labelIds",
                   "--strict") == 0
    err = capsys.readouterr().err
    assert "skipped 3 mask files whose names do not end in '_gtFine_labelIds'" in err
    report = json.loads((tmp_path / "out" / "Span-0" / "ingest_report.json").read_text())
    assert report["num_written"] == 3 and report["bad"] == []
    assert sorted(report["skipped_files"]) == sorted(str(tmp_path / "masks" / f"{s}_gtFine_color.png")
                                                     for s in CITYSCAPES)
    assert len(masks) == 3


def test_the_suggestion_names_the_whole_ending_when_a_given_one_was_too_short(tmp_path, capsys):
    """QA 78: with --mask-stem-suffix=_labelIds the suggestion was computed on the shortened stems and proposed
    _gtFine, then, given that, another ending: now it names the whole ending to pass."""
    _cityscapes(tmp_path)
    assert _ingest(tmp_path, "--mask-stem-suffix", "_labelIds") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--image-stem-suffix=_leftImg8bit --mask-stem-suffix=_gtFine_labelIds" in err


def test_a_file_without_the_given_ending_still_pairs_by_its_whole_stem(tmp_path, capsys):
    """QA 79: with --mask-stem-suffix, a mask named exactly as its image was skipped, and its image was told it had
    no mask, though the file was there; it pairs as it did without the option."""
    masks = _cityscapes(tmp_path)
    odd = CITYSCAPES[0]
    (tmp_path / "images" / f"{odd}_leftImg8bit.png").rename(tmp_path / "images" / f"{odd}.png")
    (tmp_path / "masks" / f"{odd}_gtFine_labelIds.png").rename(tmp_path / "masks" / f"{odd}.png")
    assert _ingest(tmp_path, "--image-stem-suffix", "_leftImg8bit", "--mask-stem-suffix", "_gtFine_labelIds",
                   "--strict") == 0
    report = json.loads((tmp_path / "out" / "Span-0" / "ingest_report.json").read_text())
    assert report["num_written"] == 3 and report["bad"] == [] and report["skipped_files"] == []
    assert len(masks) == 3


def test_nothing_paired_leaves_the_failed_report_the_error_names(tmp_path, capsys):
    """QA 79: the early refusal wrote no ingest_report.NAME.failed.json, which README promises for an ingest that
    writes nothing."""
    _cityscapes(tmp_path)
    assert _ingest(tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    failed = tmp_path / "out" / "ingest_report.Span-0.failed.json"
    assert err.endswith(f"nothing was written; report: {failed}")
    report = json.loads(failed.read_text())
    assert report["num_written"] == 0 and "--image-stem-suffix=_leftImg8bit" in report["error"]
    assert {b["code"] for b in report["bad"]} == {"no_mask", "no_image"} and len(report["bad"]) == 6
    assert not (tmp_path / "out" / "Span-0").exists()


def _car_masks(root, bare: int, suffixed: int):
    """``bare`` images whose masks share their stem and ``suffixed`` whose masks end in ``_mask``."""
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(bare + suffixed):
        Image.fromarray(np.full((8, 16, 3), i, np.uint8)).save(root / "images" / f"car_{i:02d}.png")
        name = f"car_{i:02d}.png" if i < bare else f"car_{i:02d}_mask.png"
        Image.fromarray(np.full((8, 16), i % 3, np.uint8)).save(root / "masks" / name)


def test_files_left_without_a_partner_that_an_ending_would_pair_are_said(tmp_path, capsys):
    """QA 89 M1: with most masks named STEM_mask.png and a few bare stems, ingest wrote the few (3 of 40), exit 0,
    and only "image has no mask" / "mask has no image" lines: the ending was suggested only when nothing paired."""
    _car_masks(tmp_path, bare=3, suffixed=5)  # the ending would pair more than pair as they are: refused
    assert _ingest(tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith(f"segbalance ingest: error: 3 image file(s) pair with a mask file of the same stem in "
                             f"{tmp_path / 'images'} and {tmp_path / 'masks'}, and 5 more of those without a partner "
                             f"once an ending is dropped: ")
    assert "--mask-stem-suffix=_mask drops it before pairing and pairs 5 files" in err[0]
    assert err[0].endswith(f"nothing was written; report: {tmp_path / 'out' / 'ingest_report.Span-0.failed.json'}")
    assert not (tmp_path / "out" / "Span-0").exists()
    assert _ingest(tmp_path, "--mask-stem-suffix=_mask", "--strict") == 0  # the advice: all 8 pair
    assert json.loads((tmp_path / "out" / "Span-0" / "ingest_report.json").read_text())["num_written"] == 8
    capsys.readouterr()
    other = tmp_path / "fewer"  # the ending would pair fewer than pair as they are: a warning, the rest written
    _car_masks(other, bare=5, suffixed=2)
    assert _ingest(other) == 0
    err = capsys.readouterr().err.splitlines()
    warning = [line for line in err if line.startswith("ingest: warning: 5 image file(s) pair")]
    assert len(warning) == 1 and "--mask-stem-suffix=_mask drops it before pairing and pairs 2 files" in warning[0]
    assert err.index(warning[0]) < min(i for i, line in enumerate(err) if line.startswith("ingest: skipped"))
    report = json.loads((other / "out" / "Span-0" / "ingest_report.json").read_text())
    assert report["num_written"] == 5 and len(report["bad"]) == 4  # 2 images without mask, 2 masks without image
    capsys.readouterr()
    frames = tmp_path / "frames"  # one image and one mask left over: any two names differ by an ending (QA 90 M3)
    _car_masks(frames, bare=3, suffixed=0)
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(frames / "images" / "car_0100.png")
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(frames / "masks" / "car_0007.png")
    assert _ingest(frames) == 0
    assert "more of those without a partner" not in capsys.readouterr().err
    kinds = tmp_path / "kinds"  # colour renders of every mask beside the class-id masks of 4 of 6 images: their
    _car_masks(kinds, bare=4, suffixed=0)  # ending is another kind of mask, not a way to pair (QA 90 M2: its option
    for i in range(6):  # swapped the class-id masks of the 4 images that pair for the colour ones)
        Image.fromarray(np.full((8, 16), 2, np.uint8)).save(kinds / "masks" / f"car_{i:02d}_color.png")
    for i in (4, 5):
        Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(kinds / "images" / f"car_{i:02d}.png")
    assert _ingest(kinds) == 0
    assert "more of those without a partner" not in capsys.readouterr().err
    unlabelled = tmp_path / "unlabelled"  # images without masks that no ending pairs: nothing more said
    _car_masks(unlabelled, bare=4, suffixed=0)
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(unlabelled / "images" / "street.png")
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(unlabelled / "masks" / "road_mask.png")
    assert _ingest(unlabelled) == 0
    assert "more of those without a partner" not in capsys.readouterr().err


def test_stems_that_differ_in_letter_case_only_are_said(tmp_path, capsys):
    """QA 89 L3: images B000.png with masks b000.png: 'image has no mask' 40 times and nothing of the case."""
    _car_masks(tmp_path, bare=4, suffixed=0)
    for path in sorted((tmp_path / "masks").iterdir())[:3]:
        path.rename(path.with_name(path.name.upper().replace(".PNG", ".png")))
    assert _ingest(tmp_path) == 2  # 3 pair only by case, 1 as it is: refused
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"segbalance ingest: error: 3 image file(s) in {tmp_path / 'images'} pair with a mask in "
                   f"{tmp_path / 'masks'} only when letter case is ignored (car_00.png / CAR_00.png): ingest pairs "
                   f"stems exactly; rename the files of one folder so that the stems match; nothing was written; "
                   f"report: {tmp_path / 'out' / 'ingest_report.Span-0.failed.json'}"], err
    folded = tmp_path / "folded"  # two images that fold to one mask's stem pair one file at most (QA 90 L3)
    _car_masks(folded, bare=1, suffixed=0)
    for name in ("Ab", "aB"):
        Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(folded / "images" / f"{name}.png")
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(folded / "masks" / "AB.png")
    assert _ingest(folded) == 0  # 1 by case against 1 as it is: a warning
    assert any(line.startswith("ingest: warning: 1 image file(s) in ") for line in capsys.readouterr().err.splitlines())
    # --strict: the pair left out fails the ingest, and the one line says why (QA 98: a warning came first)
    assert _ingest(folded, "--strict", "--overwrite") == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("segbalance ingest: error: 1 image file(s) in ")
    assert "only when letter case is ignored" in line
    (tmp_path / "masks" / "CAR_00.png").rename(tmp_path / "masks" / "car_00.png")
    (tmp_path / "masks" / "CAR_01.png").rename(tmp_path / "masks" / "car_01.png")
    assert _ingest(tmp_path) == 0  # 1 pairs only by case, 3 as they are: a warning, the 3 written
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("ingest: warning: 1 image file(s) in ") and "(car_02.png / CAR_02.png)" in line
               for line in err), err
    assert json.loads((tmp_path / "out" / "Span-0" / "ingest_report.json").read_text())["num_written"] == 3
