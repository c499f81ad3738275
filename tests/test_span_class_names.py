"""QA 84 H1: a span written by `segbalance ingest` kept no class names, so a later run over the span folder
(`run --data OUTPUT/data`, what `segbalance schedule` prints, or `data.dir` in a config) trained the four
default names on the user's 3-class data, and following the drift gate's advice pushed that model. Now ingest
keeps a classes.json beside IMAGES_DIR with the span, a run takes the names of the latest span that has them,
and a span ingested for another class count than the config's is refused before the run."""
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from segbalance.pipeline import cli
from segbalance.pipeline.config import config_from_dict, load_config
from segbalance.pipeline.span_records import SpanRecordError, check_span_records
from segbalance.pipeline.spans import class_names_file

NAMES = ["background", "square", "disk"]


def _three_class_folder(root, n=12, size=32, names=True, seed=0):
    """``root/images`` + ``root/masks`` (a square, class 1, and a disk, class 2) and, with ``names``,
    ``root/classes.json``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        x, y = rng.integers(2, size // 2, 2)
        mask[y:y + 8, x:x + 8] = 1
        mask[(yy - size * 3 // 4) ** 2 + (xx - size * 3 // 4) ** 2 < 25] = 2
        image = rng.integers(0, 60, (size, size, 3)).astype(np.uint8) + (mask[..., None] * 80).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{root.name}{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{root.name}{i:02d}.png")
    if names:
        (root / "classes.json").write_text(json.dumps({"class_names": NAMES}))
    return root


def _ingest(source, out, span, *extra):
    return cli.main(["ingest", str(source / "images"), str(source / "masks"), "--output", str(out), "--span",
                     str(span), *extra])


def test_ingest_keeps_the_names_of_a_classes_json_beside_the_images_with_the_span(tmp_path, capsys):
    first = _three_class_folder(tmp_path / "first")
    assert _ingest(first, tmp_path / "data", 0) == 0
    kept = tmp_path / "data" / "Span-0" / "classes.json"
    assert json.loads(kept.read_text()) == {"class_names": NAMES}
    assert json.loads((tmp_path / "data" / "Span-0" / "ingest_report.json").read_text())["num_classes"] == 3
    # --num-classes that agrees: kept too; one that does not: the names are not kept, and it says so
    assert _ingest(first, tmp_path / "data", 1, "--num-classes", "3") == 0
    assert json.loads((tmp_path / "data" / "Span-1" / "classes.json").read_text()) == {"class_names": NAMES}
    capsys.readouterr()
    assert _ingest(first, tmp_path / "data", 2, "--num-classes", "4") == 0
    assert not (tmp_path / "data" / "Span-2" / "classes.json").exists()
    err = capsys.readouterr().err
    assert f"ingest: note: {first / 'classes.json'} names 3 classes, --num-classes is 4: its names are not kept" in err
    # --overwrite replaces the span's classes.json (ingest's own file) with the new data's
    (first / "classes.json").write_text(json.dumps({"class_names": ["bg", "sq", "dk"]}))
    assert _ingest(first, tmp_path / "data", 0, "--overwrite") == 0
    assert json.loads(kept.read_text()) == {"class_names": ["bg", "sq", "dk"]}


def test_a_run_takes_the_names_of_the_latest_span_that_has_them(tmp_path):
    data = tmp_path / "data"
    assert class_names_file(data) == data / "classes.json"  # no span: the folder's own
    assert _ingest(_three_class_folder(tmp_path / "first"), data, 0) == 0
    assert _ingest(_three_class_folder(tmp_path / "second", names=False), data, 1, "--num-classes", "3") == 0
    assert not (data / "Span-1" / "classes.json").exists()
    assert class_names_file(data) == data / "Span-0" / "classes.json"
    config = load_config_text(tmp_path, {"data": {"dir": str(data)}})
    assert config.classes.names == NAMES  # not the four default names
    assert check_span_records(data, [1], config)["train"] > 0
    (data / "Span-1" / "classes.json").write_text(json.dumps({"class_names": ["bg", "a", "b"]}))
    assert class_names_file(data) == data / "Span-1" / "classes.json"  # the latest span's own, when it has them


def load_config_text(tmp_path, values):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return load_config(str(path))


def test_a_span_ingested_for_another_class_count_is_refused_when_nothing_names_its_classes(tmp_path, capsys):
    """No names anywhere: --num-classes 3 and a config left at the four default names is refused before the
    run, with what to do (it trained the default names). A user's own names are theirs to give (ids beyond
    them are refused by the largest-id check)."""
    data = tmp_path / "data"
    assert _ingest(_three_class_folder(tmp_path / "only", names=False), data, 0, "--num-classes", "3") == 0
    config = config_from_dict({"data": {"dir": str(data)}})
    assert config.num_classes == 4
    with pytest.raises(SpanRecordError) as caught:
        check_span_records(data, [0], config)
    assert str(caught.value) == (
        f"{data / 'Span-0'} (Span-0/ingest_report.json): ingested for 3 classes (its ingest_report.json "
        f"num_classes), but no classes.json names them and the config's classes.names are the 4 default names "
        f"(background, ellipse, rectangle, circle): name the span's 3 classes in id order in the config's "
        f"classes.names, or in {data / 'classes.json'} ({{\"class_names\": [...]}})")
    assert check_span_records(data, [0], config_from_dict({"classes": {"names": NAMES}}))["train"] > 0
    five = ["background", "square", "disk", "star", "ring"]  # more names than the span's: the user's choice
    assert check_span_records(data, [0], config_from_dict({"classes": {"names": five}}))["train"] > 0
    capsys.readouterr()
    assert cli.main(["run", "--data", str(data), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ingested for 3 classes" in err and "Traceback" not in err
    (data / "classes.json").write_text(json.dumps({"class_names": NAMES}))  # what the message says: then it runs
    assert check_span_records(data, [0], load_config_text(tmp_path, {"data": {"dir": str(data)}}))["train"] > 0


def test_a_window_that_gained_a_class_trains_and_takes_names_latest_span_folder_then_earlier_span(tmp_path):
    """A data.num_spans window: an earlier span ingested for fewer classes (its ids fit the new names) is not
    refused (QA 87 H1); the names come from the latest span's classes.json, else the folder's own (before an
    earlier span's, QA 87 M1), else an earlier span's only when they are as many as the latest span was ingested
    for (QA 88); an earlier span's names never replace a config's own (QA 87 M1), the latest span's do."""
    data = tmp_path / "data"
    assert _ingest(_three_class_folder(tmp_path / "first"), data, 0) == 0  # 3 names kept
    four = NAMES + ["triangle"]
    second = _three_class_folder(tmp_path / "second", names=False, seed=1)
    (second / "classes.json").write_text(json.dumps({"class_names": four}))
    assert _ingest(second, data, 1) == 0  # declared 4, names kept
    config = load_config_text(tmp_path, {"data": {"dir": str(data)}})
    assert config.classes.names == four
    assert check_span_records(data, [0, 1], config)["train"] > 0
    # the latest span without names: the folder's own classes.json comes before Span-0's
    (data / "Span-1" / "classes.json").unlink()
    (data / "classes.json").write_text(json.dumps({"class_names": four}))
    assert class_names_file(data) == data / "classes.json"
    assert load_config_text(tmp_path, {"data": {"dir": str(data)}}).classes.names == four
    assert check_span_records(data, [0, 1], config)["train"] > 0
    # without it: Span-0's three names are not the names of Span-1, ingested for four (QA 88)
    (data / "classes.json").unlink()
    assert class_names_file(data) == data / "classes.json"
    # an earlier span's names of the latest span's count are taken for a config that names none; a user's own
    # names are not refused for them
    other = ["bg", "x", "y", "z"]
    (data / "Span-0" / "classes.json").write_text(json.dumps({"class_names": other}))
    assert class_names_file(data) == data / "Span-0" / "classes.json"
    assert class_names_file(data, older_spans=False) == data / "classes.json"
    from segbalance.pipeline.run import adopt_class_names, data_class_names

    own = config_from_dict({"data": {"dir": str(data)}, "classes": {"names": four}})
    names, origin, binding = data_class_names(own)
    assert names == other and not binding  # an earlier span's: the config's own names stay
    adopt_class_names(own, names, origin, binding=binding)
    assert own.classes.names == four
    assert data_class_names(config_from_dict({"data": {"dir": str(data)}}))[0] == other
    (data / "Span-1" / "classes.json").write_text(json.dumps({"class_names": other}))  # the latest span's: binding
    assert data_class_names(own)[2]


def test_ingest_with_num_classes_does_not_need_a_readable_classes_json(tmp_path, capsys):
    """QA 87 M2: with --num-classes, a classes.json beside IMAGES_DIR in another format stopped ingest (before,
    it was not read at all); it is now left out, with a note after the records are written."""
    source = _three_class_folder(tmp_path / "src", names=False)
    (source / "classes.json").write_text(json.dumps({"0": "background", "1": "a", "2": "b"}))
    assert _ingest(source, tmp_path / "data", 0, "--num-classes", "3") == 0
    assert not (tmp_path / "data" / "Span-0" / "classes.json").exists()
    err = capsys.readouterr().err
    note = next(line for line in err.splitlines() if line.startswith("ingest: note: classes file"))
    assert note.startswith(f"ingest: note: classes file {source / 'classes.json'}: expected {{\"class_names\"")
    assert "(strings): its names are not kept with the records" in note and "fix it" not in note, note
    assert _ingest(source, tmp_path / "data", 1) == 2  # without --num-classes it is needed: refused, as before
    assert "expected {\"class_names\": [\"background\", ...]}" in capsys.readouterr().err


def test_a_run_over_spans_ingested_by_hand_trains_their_classes(tmp_path, capsys):
    """End to end, QA 84's journey: the first span ingested from a folder with classes.json, the next one from a
    folder without; `run --config` over the span folder trains and pushes the three named classes."""
    data = tmp_path / "data"
    assert _ingest(_three_class_folder(tmp_path / "first"), data, 0) == 0
    assert _ingest(_three_class_folder(tmp_path / "second", names=False, seed=1), data, 1, "--num-classes", "3") == 0
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"dir": str(data)}, "training": {
        "image_size": [32, 32], "epochs": 1, "batch_size": 8, "depth": 2, "base_filters": 8},
        "evaluation": {"miou_threshold": 0.0}}))
    capsys.readouterr()
    assert cli.main(["run", "--config", str(config), "--output-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"classes: 3 from the classes of {data / 'Span-0' / 'classes.json'}: background, square, disk" in out
    pushed = sorted((tmp_path / "out" / "serving_model").iterdir())
    assert pushed, out
    assert json.loads((pushed[-1] / "classes.json").read_text()) == {"class_names": NAMES, "num_classes": 3}


def test_an_earlier_span_s_names_of_another_count_are_not_taken(tmp_path, capsys, monkeypatch):
    """QA 88: Span-1 ingested by hand for 3 classes without names, after a Span-0 whose classes.json names 4:
    the run took Span-0's four names for Span-1 and trained it as 4 classes. Names of another count than the
    latest span was ingested for are not its names; nothing then names its classes, which is refused by `run`,
    `config validate` and `compile-kfp`, and noted by `config show`."""
    data = tmp_path / "data"
    first = _three_class_folder(tmp_path / "first", names=False)
    (first / "classes.json").write_text(json.dumps({"class_names": ["background", "a", "b", "c"]}))
    assert _ingest(first, data, 0) == 0
    assert _ingest(_three_class_folder(tmp_path / "second", names=False, seed=1), data, 1, "--num-classes", "3") == 0
    assert class_names_file(data) == data / "classes.json"  # not Span-0's four
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump({"data": {"dir": str(data)}}))
    config = load_config(str(config_file))
    assert config.classes.names == ["background", "ellipse", "rectangle", "circle"]
    with pytest.raises(SpanRecordError, match="Span-1/ingest_report.json\\): ingested for 3 classes"):
        check_span_records(data, [1], config)
    capsys.readouterr()
    assert cli.main(["config", "validate", str(config_file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ingested for 3 classes" in err
    assert cli.main(["config", "show", "--config", str(config_file)]) == 0
    assert "note: `segbalance run` refuses this data: " in capsys.readouterr().err
    monkeypatch.setenv("UNSUPPORTED_DO_NOT_PACKAGE_USER_MODULES", "1")
    assert cli.main(["compile-kfp", "--config", str(config_file), "--output", str(tmp_path / "p.json"), "--image",
                     "gcr.io/p/s:1", "--pipeline-root", str(tmp_path / "root")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ingested for 3 classes" in err and not (tmp_path / "p.json").exists()
    # an earlier span's names of the latest span's count are taken (QA 84 H1's journey)
    (data / "Span-0" / "classes.json").write_text(json.dumps({"class_names": NAMES}))
    assert class_names_file(data) == data / "Span-0" / "classes.json"
    assert load_config(str(config_file)).classes.names == NAMES
    assert cli.main(["config", "validate", str(config_file)]) == 0


def test_a_window_s_earlier_span_with_more_classes_says_how_to_leave_it_out(tmp_path):
    """QA 88: a window whose latest span names fewer classes than an earlier span's ids need: naming them in the
    config conflicts with the latest span's classes.json, so the message also names that file and the window."""
    data = tmp_path / "data"
    first = _three_class_folder(tmp_path / "first", names=False)
    (first / "classes.json").write_text(json.dumps({"class_names": NAMES}))
    assert _ingest(first, data, 0) == 0
    second = _three_class_folder(tmp_path / "second", names=False, seed=1)
    (second / "classes.json").write_text(json.dumps({"class_names": ["background", "square"]}))
    for mask in (second / "masks").iterdir():  # the disk class is gone from the new data
        array = np.asarray(Image.open(mask))
        Image.fromarray(np.where(array == 2, 0, array).astype(np.uint8)).save(mask)
    assert _ingest(second, data, 1) == 0
    config = load_config_text(tmp_path, {"data": {"dir": str(data), "num_spans": 2}})
    assert config.classes.names == ["background", "square"]
    with pytest.raises(SpanRecordError) as caught:
        check_span_records(data, [0, 1], config)
    assert str(caught.value).startswith(f"{data / 'Span-0'} (Span-0/ingest_report.json): its masks hold class ids "
                                        f"up to 2, but classes.names lists 2 classes")
    assert str(caught.value).endswith("or lower data.num_spans (2) to leave Span-0 out of the window")


def test_the_classes_line_quotes_names_when_one_holds_a_comma(capsys):
    """QA 89 L6: 'classes: 4 from ...: Hintergrund, Gebäude, Haus, edge, 接触' read as five names."""
    from segbalance.contract import names_listed
    from segbalance.pipeline.run import adopt_class_names

    assert names_listed(["background", "square", "disk"]) == "background, square, disk"  # as before
    names = ["Hintergrund", "Gebäude, Haus", "edge", "接触"]
    assert names_listed(names) == "'Hintergrund', 'Gebäude, Haus', 'edge', '接触'"
    config = config_from_dict({})
    adopt_class_names(config, names, "the classes of x/classes.json")
    assert config.classes.names == names
    assert capsys.readouterr().out == f"classes: 4 from the classes of x/classes.json: {names_listed(names)}\n"
