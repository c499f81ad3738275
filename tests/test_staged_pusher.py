"""StagedPushExecutor: a version folder appears whole or not at all (a push stopped mid-copy left an empty or
saved_model.pb-less folder as the highest version, QA session 24); stale staging folders are ours to remove."""
import json
import os

import pytest
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts, standard_component_specs
from tfx.utils import proto_utils

from segbalance.components import seg_evaluator, staged_pusher
from segbalance.contract import is_version_folder


def _model(tmp_path):
    serving = tmp_path / "model" / "Format-Serving"
    (serving / "variables").mkdir(parents=True, exist_ok=True)
    (serving / "saved_model.pb").write_bytes(b"graph")
    (serving / "variables" / "variables.index").write_bytes(b"index")
    (serving / "model.keras").write_bytes(b"keras")
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "model")
    return model


def _push(tmp_path, name="push", evaluation=None):
    model = _model(tmp_path)
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / "blessing")
    blessing.set_int_custom_property("blessed", 1)
    if evaluation is not None:  # as SegEvaluator records it
        (tmp_path / "evaluation").mkdir(exist_ok=True)
        (tmp_path / "evaluation" / "evaluation.json").write_text(json.dumps(evaluation))
        blessing.set_string_custom_property("evaluation_uri", str(tmp_path / "evaluation"))
        blessing.set_float_custom_property("miou", evaluation["miou"])
        blessing.set_string_custom_property("reason", "mIoU 0.7000 >= threshold 0.0000")
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / name)
    destination = pusher_pb2.PushDestination(
        filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=str(tmp_path / "serving")))
    staged_pusher.StagedPushExecutor().Do(
        {standard_component_specs.MODEL_KEY: [model], standard_component_specs.MODEL_BLESSING_KEY: [blessing]},
        {standard_component_specs.PUSHED_MODEL_KEY: [pushed]},
        {standard_component_specs.PUSH_DESTINATION_KEY: proto_utils.proto_to_json(destination)})
    return pushed


def _files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def test_a_push_renames_a_complete_copy_into_place(tmp_path, monkeypatch):
    monkeypatch.setattr(staged_pusher.pusher_executor.time, "time", lambda: 1_700_000_000.5)  # one second, twice
    first, second = _push(tmp_path, "push1"), _push(tmp_path, "push2")
    serving = tmp_path / "serving"
    assert sorted(os.listdir(serving)) == ["1700000000", "1700000001"]  # the same second: the next free version
    for pushed, version in ((first, "1700000000"), (second, "1700000001")):
        assert pushed.get_int_custom_property("pushed") == 1
        assert pushed.get_string_custom_property("pushed_destination") == str(serving / version)
        assert pushed.get_string_custom_property("pushed_version") == version
        assert _files(serving / version) == sorted(_files(tmp_path / "model" / "Format-Serving")
                                                   + ["push_record.json"])
        assert json.loads((serving / version / "push_record.json").read_text())["version"] == version
    assert seg_evaluator.pushed_copy(str(tmp_path / "model" / "Format-Serving"), str(serving)) == str(
        serving / "1700000000")


def test_a_push_that_fails_mid_copy_leaves_no_version_folder(tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):  # the last file, saved_model.pb, cannot be written
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(staged_pusher.pusher_executor.io_utils, "copy_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _push(tmp_path)
    assert os.listdir(tmp_path / "serving") == []  # neither a version nor the staged part


def test_stale_staging_folders_are_removed_and_never_taken_for_a_version(tmp_path):
    serving = tmp_path / "serving"
    stale = serving / f"{staged_pusher.STAGING_PREFIX}1700000000-0a1b2c3d" / "1700000000"
    stale.mkdir(parents=True)
    (stale / "model.keras").write_bytes(b"keras")  # a copy stopped by a kill: no saved_model.pb
    model_dir = _model(tmp_path).uri + "/Format-Serving"
    fileio.copy(model_dir + "/saved_model.pb", str(stale / "saved_model.pb"))
    (serving / "1600000000").mkdir()  # an earlier push, and a file of the user's: kept
    (serving / "README").write_text("mine")
    assert not is_version_folder(stale.parent.name) and is_version_folder("1600000000/")
    assert seg_evaluator.pushed_copy(model_dir, str(serving)) is None  # a staged copy is not a push
    assert staged_pusher.remove_stale_staging(str(serving)) == [str(stale.parent)]
    assert sorted(os.listdir(serving)) == ["1600000000", "README"]
    assert staged_pusher.remove_stale_staging(str(tmp_path / "none")) == []


def test_a_push_removes_staging_folders_over_a_day_old_and_keeps_recent_ones(tmp_path, capsys):
    """On a cluster no `segbalance run` holds the folder's lock and removes a stopped push's staging folder: they
    piled up (QA 58). Each push removes those started over a day ago; a recent one may be another run's push."""
    import time

    serving = tmp_path / "serving"
    old = serving / f"{staged_pusher.STAGING_PREFIX}{int(time.time()) - 2 * 24 * 3600}-0a1b2c3d"
    recent = serving / f"{staged_pusher.STAGING_PREFIX}{int(time.time()) - 60}-4e5f6a7b"
    for folder in (old, recent):
        (folder / "1700000000").mkdir(parents=True)
        (folder / "1700000000" / "model.keras").write_bytes(b"keras")
    (serving / f"{staged_pusher.STAGING_PREFIX}notes").mkdir()  # not a name a push makes: left alone
    _push(tmp_path)
    left = sorted(os.listdir(serving))
    assert old.name not in left and recent.name in left and f"{staged_pusher.STAGING_PREFIX}notes" in left
    assert sum(is_version_folder(name) for name in left) == 1
    assert f"Pusher: removed {old}" in capsys.readouterr().out
    assert staged_pusher.staging_started(old.name) == int(old.name.split("-")[1])
    assert staged_pusher.staging_started("1700000000") is None


def test_the_version_folder_holds_the_evaluation_that_blessed_it(tmp_path):
    evaluation = {"miou": 0.7, "per_class_iou": [0.9, 0.5], "class_names": ["background", "car"], "num_images": 3}
    pushed = _push(tmp_path, evaluation=evaluation)
    version = tmp_path / "serving" / pushed.get_string_custom_property("pushed_version")
    record = json.loads((version / "push_record.json").read_text())
    assert record["evaluation"] == evaluation
    assert record["miou"] == 0.7 and record["blessing"]["reason"].startswith("mIoU 0.7000")
    assert record["blessing"]["evaluation_uri"] == str(tmp_path / "evaluation")
    assert record["model"]["uri"] == str(tmp_path / "model") and record["pushed_at"].endswith("+00:00")
    # the record is not part of the model: the pushed copy is still found, file for file
    assert seg_evaluator.pushed_copy(str(tmp_path / "model" / "Format-Serving"), str(tmp_path / "serving")) == str(
        version)
    # a blessing without an evaluation (another evaluator's): the record says so instead of failing the push
    other = _push(tmp_path / "other")
    record = json.loads((tmp_path / "other" / "serving" / other.get_string_custom_property("pushed_version")
                         / "push_record.json").read_text())
    assert record["evaluation"] is None and record["miou"] is None and "evaluation_uri" not in record["blessing"]


def test_without_an_evaluation_file_the_record_takes_the_blessing_s_miou(tmp_path):
    """QA 79 L7: the evaluation file gone (or another evaluator's blessing with an miou): its value, not null."""
    from segbalance.components.staged_pusher import push_record

    blessing = standard_artifacts.ModelBlessing()
    blessing.set_float_custom_property("miou", 0.61)
    blessing.set_string_custom_property("evaluation_uri", str(tmp_path / "evaluation"))  # its file is gone
    assert push_record("1", _model(tmp_path), blessing)["miou"] == pytest.approx(0.61)
