"""`segbalance sample-data`: determinism, skew, dropped annotations, real samples."""
import json

import numpy as np
import pytest

from segbalance.pipeline import cli, sample_data
from segbalance.trainer.example_codec import decode_array


def _read_set(folder, sub):
    return {p.stem: decode_array(p.read_bytes()) for p in sorted((folder / sub).glob("*.png"))}


def test_shapes_is_deterministic_by_seed(tmp_path):
    a = sample_data.write_sample_data("shapes", tmp_path / "a", num_images=6, size=32, seed=3, drop_fraction=0.5)
    b = sample_data.write_sample_data("shapes", tmp_path / "b", num_images=6, size=32, seed=3, drop_fraction=0.5)
    c = sample_data.write_sample_data("shapes", tmp_path / "c", num_images=6, size=32, seed=4, drop_fraction=0.5)
    for sub in ("images", "masks", "masks_full"):
        sa, sb, sc = _read_set(a, sub), _read_set(b, sub), _read_set(c, sub)
        assert sa.keys() == sb.keys() == sc.keys()
        assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    assert (a / "labeled.json").read_text() == (b / "labeled.json").read_text()
    images_a, images_c = _read_set(a, "images"), _read_set(c, "images")
    assert not all(np.array_equal(images_a[k], images_c[k]) for k in images_a)


def test_shapes_image_depends_only_on_seed_and_index():
    image_1, mask_1 = sample_data.draw_shapes_image(seed=7, index=5, size=48)
    image_2, mask_2 = sample_data.draw_shapes_image(seed=7, index=5, size=48)
    assert image_1.shape == (48, 48, 3) and image_1.dtype == np.uint8
    assert mask_1.shape == (48, 48) and mask_1.dtype == np.uint8
    np.testing.assert_array_equal(image_1, image_2)
    np.testing.assert_array_equal(mask_1, mask_2)


def test_shapes_class_frequencies_are_skewed_as_configured():
    masks = [sample_data.draw_shapes_image(seed=0, index=i, size=64)[1] for i in range(200)]
    pixels = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=4)
    images = np.array([[np.any(m == c) for c in range(4)] for m in masks]).mean(axis=0)
    # Image frequency of each foreground class follows SHAPES_PRESENCE (binomial, n=200).
    for c, presence in enumerate(sample_data.SHAPES_PRESENCE, start=1):
        sd = np.sqrt(presence * (1 - presence) / 200)
        assert abs(images[c] - presence) < 4 * sd + 0.02, (c, images[c], presence)
    # Pixel frequency: background >> ellipse > rectangle > circle (rare and small).
    assert pixels[0] > pixels[1] > pixels[2] > pixels[3] > 0
    assert pixels[3] / pixels.sum() < 0.01
    # The images are not trivially separable: colour alone does not give the class.
    image, mask = sample_data.draw_shapes_image(seed=0, index=0, size=64)
    assert image[mask == 0].std() > 10


def test_drop_annotations_semantics(tmp_path):
    out = sample_data.write_sample_data("shapes", tmp_path, num_images=30, size=32, seed=1, drop_fraction=0.4)
    masks, full = _read_set(out, "masks"), _read_set(out, "masks_full")
    labeled = json.loads((out / "labeled.json").read_text())
    assert set(labeled) == set(masks) == set(full)
    changed = 0
    for source_id, mask in masks.items():
        complete = full[source_id]
        erased = sorted(set(np.unique(complete[mask != complete]).tolist()))
        # Masks differ from the complete masks only by erased classes set to background ...
        assert np.all(mask[mask != complete] == 0)
        assert not np.isin(mask, erased).any()
        # ... and the erased classes are exactly the complement of `labeled`.
        assert sorted(set(range(4)) - set(labeled[source_id])) == erased
        assert 0 in labeled[source_id]
        changed += bool(erased)
    assert changed == round(0.4 * 30)


def test_drop_fraction_zero_keeps_masks_and_full_labels(tmp_path):
    out = sample_data.write_sample_data("shapes", tmp_path, num_images=5, size=32, drop_fraction=0.0)
    masks, full = _read_set(out, "masks"), _read_set(out, "masks_full")
    assert all(np.array_equal(masks[k], full[k]) for k in masks)
    assert all(v == [0, 1, 2, 3] for v in json.loads((out / "labeled.json").read_text()).values())


@pytest.mark.parametrize("kind, num_classes", [("voc", 21), ("arc2017", None), ("nuclei", 3)])
def test_real_samples_ship_inside_packages(tmp_path, kind, num_classes):
    out = sample_data.write_sample_data(kind, tmp_path, num_images=3, size=48, seed=0)
    classes = json.loads((out / "classes.json").read_text())
    if num_classes:
        assert len(classes["class_names"]) == num_classes
    images, masks = _read_set(out, "images"), _read_set(out, "masks")
    assert images.keys() == masks.keys() and len(images) == 3
    for key in images:
        assert images[key].shape == (48, 48, 3) and masks[key].shape == (48, 48)
        valid = masks[key][masks[key] != 255]
        assert valid.max(initial=0) < len(classes["class_names"])
    if kind == "nuclei":
        _, mask, _ = sample_data.load_real_sample("nuclei")
        assert set(np.unique(mask).tolist()) == {0, 1, 2}
        assert 0 < (mask == 2).sum() < (mask == 1).sum()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="drop-fraction"):
        sample_data.write_sample_data("shapes", tmp_path, num_images=2, drop_fraction=1.5)
    with pytest.raises(ValueError, match="only supported"):
        sample_data.write_sample_data("voc", tmp_path, num_images=2, drop_fraction=0.5)
    assert cli.main(["sample-data", "shapes", "--output", str(tmp_path), "--num-images", "0"]) == 2


def test_cli_writes_layout(tmp_path, capsys):
    assert cli.main(["sample-data", "shapes", "--output", str(tmp_path), "--num-images", "3", "--size", "24",
                     "--drop-fraction", "0.5"]) == 0
    assert "wrote 3 shapes images" in capsys.readouterr().out
    for sub in ("images", "masks", "masks_full"):
        assert len(list((tmp_path / sub).glob("*.png"))) == 3
    assert (tmp_path / "classes.json").is_file() and (tmp_path / "labeled.json").is_file()


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_bad_arguments_are_one_line_on_stderr(tmp_path, capsys):
    """They were printed on stdout; --size below 16 and --num-images 0 write nothing."""
    for extra, message in ((["--num-images", "0"], "--num-images must be >= 1, got 0"),
                           (["--size", "8"], "--size must be >= 16 pixels, got 8"),
                           (["--drop-fraction", "-0.1"], "--drop-fraction must be in [0, 1], got -0.1")):
        assert cli.main(["sample-data", "shapes", "--output", str(tmp_path / "o"), *extra]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err == f"segbalance sample-data: error: {message}\n"
        assert not (tmp_path / "o").exists()


def test_output_must_be_new_empty_or_an_earlier_sample(tmp_path, capsys):
    # a user's folder (their images and classes.json) is never written into
    user = tmp_path / "mydata"
    (user / "images").mkdir(parents=True)
    (user / "images" / "photo.png").write_bytes(b"mine")
    (user / "classes.json").write_text('{"class_names": ["bg", "road"]}')
    before = _tree(user)
    assert cli.main(["sample-data", "shapes", "--output", str(user), "--num-images", "2", "--size", "16"]) == 2
    err = capsys.readouterr().err
    assert err == (f"segbalance sample-data: error: --output {user} is not empty: it holds images/photo.png, which "
                   f"segbalance sample-data did not write; choose a new or empty folder (nothing was written or "
                   f"deleted)\n")
    assert _tree(user) == before
    (user / "notes.txt").write_text("mine")
    before = _tree(user)
    assert cli.main(["sample-data", "shapes", "--output", str(user), "--num-images", "2", "--size", "16"]) == 2
    assert f"--output {user} is not empty: it holds notes.txt, which" in capsys.readouterr().err
    assert _tree(user) == before
    # a file where the folder should be
    (tmp_path / "f").write_text("x")
    assert cli.main(["sample-data", "shapes", "--output", str(tmp_path / "f" / "sub")]) == 2
    assert f"--output {tmp_path / 'f' / 'sub'} is not a folder ({tmp_path / 'f'} is a file)" in capsys.readouterr().err
    # an earlier sample is replaced, without stale files from a bigger one
    out = tmp_path / "sample"
    assert cli.main(["sample-data", "shapes", "--output", str(out), "--num-images", "3", "--size", "16"]) == 0
    assert cli.main(["sample-data", "voc", "--output", str(out), "--num-images", "2", "--size", "16"]) == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["voc_00000.png", "voc_00001.png"]
    assert not (out / "masks_full").exists() or not any((out / "masks_full").iterdir())
    assert not (out / "labeled.json").exists()
    # ... but not when someone put their own file into it
    (out / "masks" / "extra.png").write_bytes(b"mine")
    assert cli.main(["sample-data", "voc", "--output", str(out), "--num-images", "2", "--size", "16"]) == 2
    assert "it holds masks/extra.png, which segbalance sample-data did not write" in capsys.readouterr().err
    assert (out / "masks" / "extra.png").read_bytes() == b"mine" and len(list((out / "images").iterdir())) == 2
