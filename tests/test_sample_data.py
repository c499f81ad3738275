"""`segbalance sample-data`: determinism, skew, dropped annotations, real samples."""
import json
import shutil

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
    with_foreground = sum(bool(np.any((m > 0) & (m < 4))) for m in full.values())
    assert changed == round(0.4 * with_foreground)


def test_drop_fraction_counts_the_images_that_hold_a_foreground_class():
    """Half the masks background only (as lesion crops): 0.6 takes classes from 60 % of the other half,
    not from every one of them (0.6 of all 10 masks would be 6 > 5)."""
    masks = [np.zeros((4, 4), np.uint8) for _ in range(10)]
    for i in range(5):
        masks[i][1:3, 1:3] = 1 + i % 2
    new, labeled = sample_data.drop_annotations(masks, 0.6, 3, seed=0)
    erased = [i for i in range(10) if labeled[i] != [0, 1, 2]]
    assert len(erased) == 3 and set(erased) <= set(range(5))  # round(0.6 * 5)
    kept = [i for i in range(5) if i not in erased]
    assert all(np.array_equal(new[i], masks[i]) for i in kept) and all(not new[i].any() for i in erased)


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


def test_a_real_image_smaller_than_size_says_its_crop_size(tmp_path, capsys):
    """voc / arc2017 / nuclei crop one image: a --size beyond it gave smaller crops without a word."""
    _, mask, _ = sample_data.load_real_sample("voc")
    height, width = mask.shape
    part_width = int(round(width * sample_data.TRAIN_SHARE))
    crop = min(height, part_width)
    out = sample_data.write_sample_data("voc", tmp_path / "big", num_images=2, size=crop + 40, seed=0, part="train")
    assert capsys.readouterr().out.splitlines() == [
        f"sample-data: the voc image (train part) is {part_width}x{height} pixels: its crops are {crop}x{crop}, "
        f"not {crop + 40}x{crop + 40}; give --size {crop} or less to get the size asked for"]
    assert {m.shape for m in _read_set(out, "masks").values()} == {(crop, crop)}
    sample_data.write_sample_data("voc", tmp_path / "fits", num_images=2, size=crop, seed=0, part="train")
    assert capsys.readouterr().out == ""


def test_drop_fraction_on_a_real_kind_keeps_complete_masks(tmp_path):
    out = sample_data.write_sample_data("nuclei", tmp_path, num_images=10, size=32, seed=2, drop_fraction=0.5)
    masks, full = _read_set(out, "masks"), _read_set(out, "masks_full")
    labeled = json.loads((out / "labeled.json").read_text())
    changed = [k for k in masks if not np.array_equal(masks[k], full[k])]
    with_foreground = sum(bool(np.any((m > 0) & (m < 3))) for m in full.values())
    assert len(changed) == round(0.5 * with_foreground) > 0 and all(len(labeled[k]) < 3 for k in changed)
    for k in changed:
        assert np.all(masks[k][masks[k] != full[k]] == 0)


def test_part_splits_each_image_at_60_percent_of_its_columns(tmp_path):
    image, mask, _ = sample_data.load_real_sample("nuclei")
    cut = int(round(mask.shape[1] * sample_data.TRAIN_SHARE))
    for part, columns in (("train", slice(0, cut)), ("test", slice(cut, None))):
        out = sample_data.write_sample_data("nuclei", tmp_path / part, num_images=4, size=32, seed=0, part=part)
        region = sample_data._to_rgb_uint8(image)[:, columns]
        for crop in _read_set(out, "images").values():  # every crop is found inside its part of the image
            windows = np.lib.stride_tricks.sliding_window_view(region, crop.shape)[..., 0, :, :, :]
            assert np.any(np.all(windows == crop, axis=(-3, -2, -1)))


def test_lesion_slices_cut_at_60_percent_of_the_lesion_range():
    label = np.zeros((12, 4, 4), np.int32)
    label[3:8, 1, 1] = 1  # lesion on slices 3..7: 5 slices, cut at 3 + ceil(3.0) = 6
    assert sample_data.lesion_slices(label, "train").tolist() == [0, 1, 2, 3, 4, 5]
    assert sample_data.lesion_slices(label, "test").tolist() == [6, 7, 8, 9, 10, 11]
    assert sample_data.lesion_slices(label, "all").tolist() == list(range(12))


def test_focused_crops_pad_small_images_and_find_rare_classes():
    small = (np.full((20, 50, 3), 9, np.uint8), np.zeros((20, 50), np.uint8))
    small[1][5, 40] = 2  # one pixel of a rare class in a 20-row image
    large = (np.zeros((100, 100, 3), np.uint8), np.zeros((100, 100), np.uint8))
    large[1][90:, 90:] = 1
    crops = list(sample_data.focused_crops([[small], [large]], 200, 32, seed=1, num_classes=3))
    assert all(img.shape == (32, 32, 3) and msk.shape == (32, 32) for img, msk in crops)
    with_class = [sum(bool((m == c).any()) for _, m in crops) for c in (1, 2)]
    # P(crop holds the class) = P(group) * (FOCUS + (1 - FOCUS) * P(a random window holds it)):
    # small (padded to 32 x 50): windows start at column 0..18, column 40 lies in those from 9: 10 / 19;
    # large: rows and columns 90..99 lie in windows starting at 59..68 of 0..68: (10 / 69) ** 2
    for count, p_random in ((with_class[1], 10 / 19), (with_class[0], (10 / 69) ** 2)):
        p = 0.5 * (0.5 + 0.5 * p_random)
        assert abs(count - 200 * p) < 4 * np.sqrt(200 * p * (1 - p)), (count, 200 * p)
    padded = [img for img, _ in crops if (img == 9).sum() == 20 * 32 * 3]
    assert padded  # the 20-row image was padded with zeros below its rows
    again = list(sample_data.focused_crops([[small], [large]], 200, 32, seed=1, num_classes=3))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(crops, again))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="drop-fraction"):
        sample_data.write_sample_data("shapes", tmp_path, num_images=2, drop_fraction=1.5)
    with pytest.raises(ValueError, match="--part is for the real kinds"):
        sample_data.write_sample_data("shapes", tmp_path, num_images=2, part="train")
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
                           (["--size", "8"], "--size must be from 16 to 4096 pixels, got 8"),
                           (["--size", "100000"], "--size must be from 16 to 4096 pixels, got 100000"),  # QA 69
                           (["--drop-fraction", "-0.1"], "--drop-fraction must be in [0, 1], got -0.1"),
                           (["--seed", "-1"], "--seed must be from 0 to 2**32 - 1, got -1")):  # was a traceback
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
    assert err == (f"segbalance sample-data: error: --output {user} is not empty and was not written by segbalance "
                   f"sample-data; choose a new or empty folder (nothing was written or deleted)\n")
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
    # ... nor when one of its folders is a link to someone else's (QA 94 L9: their sample-named files were replaced)
    (out / "masks" / "extra.png").unlink()
    theirs = tmp_path / "corrected"
    shutil.copytree(out / "masks", theirs)
    shutil.rmtree(out / "masks")
    (out / "masks").symlink_to(theirs)
    before = _tree(theirs)
    assert cli.main(["sample-data", "voc", "--output", str(out), "--num-images", "2", "--size", "16"]) == 2
    assert f"it holds masks (a link to {theirs}), which segbalance sample-data did not write" in capsys.readouterr().err
    assert _tree(theirs) == before and (out / "masks").is_symlink()


# --------------------------------------------------------------------------- package kinds
from segbalance.contract import UserError  # noqa: E402
from segbalance.pipeline import package_data  # noqa: E402

EXPECTED = {
    "buildings": ["background", "building", "edge", "contact"],
    "lesions": ["background", "brain_lesion", "lung_lesion", "breast_lesion"],
    "labelme": ["background", "bottle", "bus", "car", "chair", "person", "sofa"],
}


def _need_archive(kind):
    try:  # never downloads: `make datasets` / `python -m segbalance.pipeline.package_data` does
        package_data.archive_path(sample_data.PACKAGE_KINDS[kind])
    except UserError as exc:
        pytest.skip(f"package archive not fetched: {exc}")


@pytest.mark.parametrize("kind, part", [("buildings", "train"), ("lesions", "test"), ("labelme", "test")])
def test_package_kinds_write_valid_masks_with_rare_classes(tmp_path, kind, part):
    _need_archive(kind)
    out = sample_data.write_sample_data(kind, tmp_path / "a", num_images=40, size=48, seed=5, drop_fraction=0.3,
                                        part=part)
    classes = json.loads((out / "classes.json").read_text())
    assert classes["class_names"] == EXPECTED[kind] and classes["ignore_index"] == 255
    assert "PyPI" in classes["source"] and classes["licence"] == package_data.ARCHIVES[
        sample_data.PACKAGE_KINDS[kind]].licence
    images, masks, full = _read_set(out, "images"), _read_set(out, "masks"), _read_set(out, "masks_full")
    assert images.keys() == masks.keys() == full.keys() and len(images) == 40
    n = len(EXPECTED[kind])
    counts = np.zeros(n, np.int64)
    for key, mask in full.items():
        assert images[key].shape == (48, 48, 3) and mask.shape == (48, 48)
        valid = mask[mask != 255]
        assert valid.max(initial=0) < n
        counts += np.bincount(valid, minlength=n)
    assert np.all(counts > 0), dict(zip(EXPECTED[kind], counts))  # every class, the rarest too
    if kind != "labelme":
        assert counts[1:].sum() < counts[0] and counts[-1] == counts[1:].min()  # the last class is the rarest
    labeled = json.loads((out / "labeled.json").read_text())
    with_foreground = sum(bool(np.any((m > 0) & (m < n))) for m in full.values())
    assert sum(not np.array_equal(masks[k], full[k]) for k in masks) == round(0.3 * with_foreground) > 0
    assert all(sorted(set(range(n)) - set(labeled[k])) == sorted(set(np.unique(full[k][masks[k] != full[k]])))
               for k in masks)
    same = sample_data.write_sample_data(kind, tmp_path / "b", num_images=40, size=48, seed=5, drop_fraction=0.3,
                                         part=part)
    other = sample_data.write_sample_data(kind, tmp_path / "c", num_images=40, size=48, seed=6, part=part)
    assert _tree(same) == _tree(out)
    assert any(not np.array_equal(a, b) for a, b in zip(_read_set(other, "images").values(), images.values()))


def test_building_labels_belong_to_the_tile():
    """The building class equals solaris' own rasterisation of this tile's outlines
    (sample_fp_mask_from_geojson.tif), which the former source (sample_fbc_from_df2px.tif, another
    tile's outlines) overlapped with IoU 0.04."""
    import io

    import tifffile

    _need_archive("buildings")
    groups, names = sample_data.load_package_sample("buildings", "all")
    (image, mask), = groups[0]
    footprint = package_data.read_members("solaris", [sample_data.SOLARIS_DATA + "sample_fp_mask_from_geojson.tif"])
    reference = tifffile.imread(io.BytesIO(next(iter(footprint.values())))) > 0
    assert image.shape == (900, 900, 3) and mask.shape == reference.shape
    building = mask == 1
    assert (building & reference).sum() / (building | reference).sum() > 0.99
    share = np.bincount(mask.ravel(), minlength=4) / mask.size
    assert share[3] == share[1:].min() > 0  # contact: the rarest class, present


def test_building_classes_on_a_hand_made_case():
    instances = np.zeros((12, 20, 2), np.uint8)
    instances[4:8, 2:6, 0] = 255
    instances[4:8, 10:14, 1] = 255  # 4 columns of background between the two buildings
    mask = sample_data.building_classes(instances)
    assert (mask == 1).sum() == 32 and set(np.unique(mask[instances.any(-1)])) == {1}
    assert (mask[4:8, 6:10] == 3).all()  # between them, within 10 px of both: contact
    assert mask[0, 19] == 0  # hypot(4, 6) = 7.2 from the second building only, and outside its ring
    single = sample_data.building_classes(instances[..., :1])  # one building: a ring, no contact
    assert 3 not in single and single[5, 8] == 2 and single[5, 9] == 0  # 3 px right of it: edge; 4 px: not
    assert not ((mask == 2) & instances.any(-1)).any()


def test_building_classes_equal_dilating_the_whole_tile():
    """building_classes dilates each building within its box widened by the contact distance; a NumPy
    reference dilating the whole tile (what it did before) gives the same mask, buildings at the
    borders, touching each other and an empty channel included."""
    from scipy import ndimage

    def reference(instances):
        footprints = instances > 0
        building = footprints.any(-1)
        near = sum(ndimage.binary_dilation(footprints[..., k], structure=sample_data._disk(sample_data.CONTACT_DISTANCE))
                   .astype(np.int32) for k in range(footprints.shape[-1]))
        mask = np.zeros(building.shape, np.uint8)
        mask[ndimage.binary_dilation(building, structure=sample_data._disk(sample_data.EDGE_WIDTH)) & ~building] = 2
        mask[(near >= 2) & ~building] = 3
        mask[building] = 1
        return mask

    rng = np.random.default_rng(3)
    for _ in range(5):
        instances = np.zeros((64, 80, 7), np.uint8)
        for k in range(6):  # channel 6 stays empty
            y, x = rng.integers(0, 60), rng.integers(0, 76)
            instances[y:y + rng.integers(1, 12), x:x + rng.integers(1, 12), k] = 255
        instances[:2, :3, 0] = instances[-3:, -2:, 1] = 255  # at the tile's corners
        np.testing.assert_array_equal(sample_data.building_classes(instances), reference(instances))


def test_lesion_pixels_are_rare_in_the_scans():
    _need_archive("lesions")
    groups, names = sample_data.load_package_sample("lesions", "all")
    masks = np.concatenate([np.stack([m for _, m in group]).ravel() for group in groups])
    share = np.bincount(masks, minlength=4) / masks.size
    assert 0 < share[1:].sum() < 0.002 and share[3] == share[1:].min()  # breast lesion: 143 voxels


def test_missing_archive_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["sample-data", "buildings", "--output", str(out), "--cache-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "solaris-0.4.0-py3-none-any.whl is not in" in err
    assert "run `python -m segbalance.pipeline.package_data solaris --cache-dir" in err
    assert not out.exists()


def test_cached_sample_reuses_a_finished_write_and_redoes_a_killed_one(tmp_path, monkeypatch):
    """The marker names the options and drop rule of a finished write; a write killed after the old
    files were removed leaves no marker, so asking again for the old options writes them again."""
    folder = tmp_path / "sample"
    small = {"kind": "shapes", "num_images": 3, "size": 16, "seed": 0, "drop_fraction": 0.0}
    assert sample_data.cached_sample(folder, **small) is False
    first = {p.name: p.read_bytes() for p in (folder / "images").iterdir()}
    assert sample_data.cached_sample(folder, **small) is True
    marker = json.loads((folder / sample_data.SAMPLE_MARKER).read_text())
    assert marker == {**small, "drop_of": sample_data.DROP_OF, "groups": sample_data.GROUPS_RULE}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sample_data, "draw_shapes_image", killed)
    with pytest.raises(KeyboardInterrupt):
        sample_data.cached_sample(folder, **{**small, "num_images": 5})
    assert not (folder / sample_data.SAMPLE_MARKER).exists() and not list((folder / "images").iterdir())
    monkeypatch.undo()
    assert sample_data.cached_sample(folder, **small) is False  # not vouched for by the old marker
    assert {p.name: p.read_bytes() for p in (folder / "images").iterdir()} == first


def test_the_sample_data_command_s_defaults_are_the_config_s():
    """QA 67: `sample-data` wrote 200 images by default, the run's sample (data.sample) 240; the drop stays 0
    (complete masks) and its help names the run's."""
    from segbalance.pipeline.cli import build_parser
    from segbalance.pipeline.config import SampleConfig

    args = build_parser().parse_args(["sample-data", "shapes", "--output", "x"])
    assert (args.num_images, args.size, args.seed, args.drop_fraction) == (
        SampleConfig().num_images, SampleConfig().size, SampleConfig().seed, 0.0)
    assert sample_data.write_sample_data.__defaults__[:4] == (
        SampleConfig().num_images, SampleConfig().size, SampleConfig().seed, 0.0)


@pytest.mark.parametrize("size", [8, 5000])
def test_the_run_s_sample_size_has_the_command_s_bounds(size):
    """data.sample.size 8 passed the config and then failed in the sample writer with a message naming --size."""
    from segbalance.pipeline.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=r"data.sample.size: must be from 16 to 4096 pixels"):
        config_from_dict({"data": {"sample": {"size": size}}})
