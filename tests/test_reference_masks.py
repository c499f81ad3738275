"""Reference (complete) masks are checked before a run: pipeline/reference_masks.py."""
import io

import numpy as np
import pytest
from PIL import Image

from segbalance.pipeline import cli, sample_data
from segbalance.pipeline.reference_masks import ReferenceMaskError, check_reference_masks, image_sizes
from segbalance.trainer.example_codec import encode_png


def _data(tmp_path):
    return sample_data.write_sample_data("shapes", tmp_path / "data", num_images=4, size=16, seed=2, drop_fraction=0.5)


def test_good_reference_masks_pass_and_bad_ones_are_named(tmp_path):
    data = _data(tmp_path)
    full = data / "masks_full"
    assert check_reference_masks(full, 4, 255, data / "images") == 4
    names = sorted(p.name for p in full.glob("*.png"))
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(full / names[0])  # colour
    (full / names[1]).write_bytes(encode_png(np.zeros((8, 16), np.uint8)))  # half the height
    bad_ids = np.zeros((16, 16), np.uint8)
    bad_ids[0, :2] = [9, 255]  # 255 is the ignore index: fine; 9 is not a class
    (full / names[2]).write_bytes(encode_png(bad_ids))
    (full / "no_such_image.png").write_bytes(b"not read: no image of that name")
    with pytest.raises(ReferenceMaskError) as raised:
        check_reference_masks(full, 4, 255, data / "images")
    message = str(raised.value)
    assert message.startswith(f"reference masks in {full}: 3 of 4 cannot be scored against (")
    assert f"{names[0]} has 3 channels (colour)" in message and f"{names[1]} is 16x8 pixels, its image 16x16" in message
    assert f"{names[2]} has class ids [9] outside [0, 4)" in message and "no_such_image" not in message
    # without an images folder (Span-N data) sizes are not known; channels and ids still are
    with pytest.raises(ReferenceMaskError, match="3 of 5 cannot be scored against .no_such_image.png cannot decode"):
        check_reference_masks(full, 4, 255)


def test_reference_files_that_are_not_used_are_named_and_a_png_in_capitals_is_used(tmp_path, capsys):
    """QA 94 M2: a mask saved as .PNG, a typo in a name, a mask without its image, other files and folders in
    masks_full/ were passed over without a word: the image whose complete mask it was is then scored against
    its partial annotation."""
    from segbalance.components.seg_evaluator import reference_paths

    data = _data(tmp_path)
    full = data / "masks_full"
    names = sorted(p.name for p in full.glob("*.png"))
    (full / names[0]).rename(full / names[0].replace(".png", ".PNG"))
    (full / "shapes_0001.png").write_bytes((full / names[1]).read_bytes())  # a typo: no such image
    (full / "notes.txt").write_text("mine")
    (full / "sub").mkdir()
    (full / ".DS_Store").write_bytes(b"")
    assert check_reference_masks(full, 4, 255, data / "images") == 4  # the .PNG one included
    assert reference_paths(str(full))[names[0][:-4]] == str(full / names[0].replace(".png", ".PNG"))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"reference masks: warning: 3 file(s) in {full} are not used (")
    assert "notes.txt, sub/, shapes_0001.png (no image shapes_0001)" in err
    (full / names[1]).rename(full / names[1].replace(".png", ".PNG"))
    (full / names[1]).write_bytes((full / names[1].replace(".png", ".PNG")).read_bytes())  # both spellings
    assert check_reference_masks(full, 4, 255, data / "images") == 4
    assert reference_paths(str(full))[names[1][:-4]] == str(full / names[1])  # the .png one
    assert f"{names[1].replace('.png', '.PNG')}" in capsys.readouterr().err


def test_sizes_follow_the_exif_orientation_ingest_applies(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # turned by 90 degrees: shown 30 wide x 40 high
    Image.new("RGB", (40, 30)).save(folder / "phone.jpg", exif=exif.tobytes())
    Image.new("RGB", (40, 30)).save(folder / "plain.png")
    assert image_sizes(folder) == {"phone": (40, 30), "plain": (30, 40)}


def test_run_refuses_bad_reference_masks_before_anything_runs(tmp_path, capsys):
    data = _data(tmp_path)
    first = sorted((data / "masks_full").glob("*.png"))[0]
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(first)
    out = tmp_path / "out"
    assert cli.main(["run", "--data", str(data), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"reference masks in {data / 'masks_full'}: 1 of 4" in err
    assert not (out / "metadata.sqlite").exists()  # no component ran


def test_a_config_s_reference_mask_of_another_size_than_its_image_is_refused(tmp_path, capsys):
    """QA 65: with the span's copies (6ee0e25) a data.reference_masks_dir beside an images/ + masks/ folder
    was checked without its images: a mask of another size passed, the run trained, and SegEvaluator
    skipped that image afterwards."""
    data = _data(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    first = sorted((data / "masks_full").glob("*.png"))[0]
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(mine / first.name)
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  reference_masks_dir: {mine}\n")
    out = tmp_path / "out"
    assert cli.main(["run", "--config", str(config), "--data", str(data), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{first.name} is 7x5 pixels, its image" in err, err
    assert not (out / "metadata.sqlite").exists()


def test_a_reference_mask_named_in_nfd_is_found_for_its_image(tmp_path):
    """QA (session 18, real data): macOS writes "café" as NFD. Ingest gives the image the NFC source_id, and
    the evaluator looked up reference masks only by that spelling: the image was scored silently against
    its partial annotation ("complete masks for 13 of 14 images")."""
    import unicodedata

    from segbalance.components.seg_evaluator import load_eval_set, reference_lookup, reference_paths
    from segbalance.trainer.example_codec import build_example

    nfd, nfc = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
    assert nfd != nfc
    images, full = tmp_path / "images", tmp_path / "masks_full"
    images.mkdir()
    full.mkdir()
    Image.new("RGB", (6, 4)).save(images / f"{nfd}.png")
    complete, partial = np.full((4, 6), 2, np.uint8), np.zeros((4, 6), np.uint8)
    (full / f"{nfd}.png").write_bytes(encode_png(complete))
    (full / "other.png").write_bytes(encode_png(complete))
    assert check_reference_masks(full, 4, 255, images) == 1  # found for its image, checked (other.png: no image)
    assert reference_paths(str(full)) == {nfd: str(full / f"{nfd}.png"), "other": str(full / "other.png")}
    find = reference_lookup(reference_paths(str(full)))
    assert find(nfc) == find(nfd) == str(full / f"{nfd}.png") and find("other") and find("none") is None
    image_png = (images / f"{nfd}.png").read_bytes()
    record = build_example(image_png, encode_png(partial), source_id=nfc, height=4, width=6).SerializeToString()
    items, counts = load_eval_set([record], str(full))
    assert counts["reference_masks"] == 1 and counts["annotation_masks"] == 0
    np.testing.assert_array_equal(items[0][2], complete)
    # a record another tool wrote with an NFD source_id finds the file too (review: only NFC ids did)
    nfd_record = build_example(image_png, encode_png(partial), source_id=nfd, height=4, width=6).SerializeToString()
    assert load_eval_set([nfd_record], str(full))[1]["reference_masks"] == 1
    # both spellings on disk: each record gets the file spelled as its source_id
    (full / f"{nfc}.png").write_bytes(encode_png(np.ones((4, 6), np.uint8)))
    find = reference_lookup(reference_paths(str(full)))
    assert find(nfc) == str(full / f"{nfc}.png") and find(nfd) == str(full / f"{nfd}.png")
