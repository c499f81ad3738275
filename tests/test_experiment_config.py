"""`segbalance experiment --config FILE`: the user's recipe reaches every cell, the protocol stays the experiment's."""
import json
from pathlib import Path

import pytest
import yaml

from segbalance.pipeline import cli
from segbalance.pipeline.experiment import Plan, dataset_folders
from segbalance.pipeline.experiment_config import OWNED, config_digest, merged, split_owned
from tests.experiment_fakes import recording_run_fn

USER = {
    "name": "mine", "data": {"dir": "/somewhere", "split_by": "group"}, "classes": {"names": ["a", "b"]},
    "stats": {"clip": [0.1, 10.0], "damping": "sqrt"},
    "training": {"optimizer": "sgd", "momentum": 0.8, "learning_rate": 0.01, "weight_decay": 0.0001,
                 "base_filters": 8, "epochs": 7, "seed": 3, "batch_size": 2, "loss": {"terms": [{"type": "focal"}]},
                 "augmentation": {"rotate90": True, "brightness": 0.1}, "lr_schedule": {"type": "cosine"}},
}


def test_owned_fields_are_left_out_and_named():
    kept, dropped = split_owned(USER)
    assert sorted(dropped) == sorted(["name", "data", "classes", "stats.clip", "training.epochs", "training.seed",
                                      "training.batch_size", "training.loss", "training.lr_schedule"])
    assert kept == {"stats": {"damping": "sqrt"},
                    "training": {"optimizer": "sgd", "momentum": 0.8, "learning_rate": 0.01, "weight_decay": 0.0001,
                                 "base_filters": 8, "augmentation": {"rotate90": True, "brightness": 0.1}}}
    assert USER["training"]["epochs"] == 7  # the caller's dict is not changed
    assert all(dotted.split(".")[0] in ("name", "output_dir", "data", "classes", "evaluation", "drift", "stats",
                                        "training", "beam_args") for dotted in OWNED)


def test_merged_and_digest():
    assert merged({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": 5}, "e": 2}) == {"a": {"b": 5, "c": 2}, "d": 1, "e": 2}
    assert config_digest({}) is None and config_digest(None) is None
    one = {"training": {"optimizer": "sgd", "base_filters": 8}}
    assert config_digest(one) == config_digest({"training": {"base_filters": 8, "optimizer": "sgd"}}) != \
        config_digest({"training": {"optimizer": "sgd", "base_filters": 16}})


def test_equal_values_give_one_digest():
    """QA D4: the digest hashed the file's raw values, so `learning_rate: 1` and `1.0` (or
    `weight_decay: 0` and `0.0`) were "trained otherwise"; it is now of the typed values."""
    from segbalance.pipeline.experiment_config import differences_from_defaults

    assert config_digest({"training": {"learning_rate": 1}}) == config_digest({"training": {"learning_rate": 1.0}})
    assert config_digest({"training": {"weight_decay": 0}}) == config_digest({"training": {"weight_decay": 0.0}})
    assert config_digest({"training": {"learning_rate": 1}}) != config_digest({"training": {"learning_rate": 2}})
    assert differences_from_defaults({"training": {"learning_rate": 1}}) == {"training": {"learning_rate": 1.0}}
    # the typed values: an int for a float field is that float
    assert isinstance(differences_from_defaults({"training": {"learning_rate": 1}})["training"]["learning_rate"],
                      float)
    # the digest of a file's values is the one of the same values spelled otherwise, read from YAML
    assert config_digest(yaml.safe_load("training: {learning_rate: 1, weight_decay: 0}")) == \
        config_digest(yaml.safe_load("training: {learning_rate: 1.0, weight_decay: 0.0}"))


def test_the_user_s_recipe_reaches_the_cells_and_the_protocol_stays_the_experiment_s(tmp_path, monkeypatch):
    """train_cell hands run_fn a custom_config whose training has the file's optimizer, rate, weight
    decay, filters and augmentation, and the experiment's epochs, patience, seed, size, batch and loss;
    the row records the config's digest, and a reused row trained with other values says so."""
    from segbalance.pipeline import experiment
    from segbalance.pipeline.dag import trainer_custom_config
    from segbalance.trainer import task

    kept, _ = split_owned(USER)
    plan = Plan(datasets=["shapes"], drop_fractions=[0.0], terms=["ce"], weightings=["none"], missing=["none"],
                num_images=8, test_images=4, size=32, max_epochs=2, patience=1, min_epochs=0, batch_size=4,
                config="user.yaml", config_values=kept)
    plan.check()
    work = tmp_path / "work"
    train, _ = dataset_folders("shapes", plan, 0.0, work)
    names = json.loads((train / "classes.json").read_text())["class_names"]
    config = experiment.experiment_config(plan, train, work / "run", names, seed=1)
    assert config.stats.damping == "sqrt" and config.stats.clip is None and config.data.split_by == "record"
    assert config.training.depth == 3  # the experiment's choice for 32x32 crops: the file does not set it
    assert experiment.experiment_config(
        Plan(size=32, config_values={"training": {"depth": 2}}), train, work / "run", names).training.depth == 2

    seen = []
    monkeypatch.setattr(task, "run_fn", recording_run_fn(work / "cell", seen))
    artifacts = {"examples": "E", "transform_graph": "T", "class_stats": "S"}
    experiment.train_cell(artifacts, trainer_custom_config(config), experiment.cell_loss("ce", "none", "none"), 5,
                          work / "cell", plan)
    training = seen[0]
    assert (training.optimizer, training.momentum, training.learning_rate, training.weight_decay,
            training.base_filters) == ("sgd", 0.8, 0.01, 0.0001, 8)
    assert training.augmentation.rotate90 and training.augmentation.brightness == 0.1
    assert training.augmentation.flip_horizontal  # a field the file leaves out keeps its default
    assert (training.epochs, training.early_stopping_patience, training.seed, training.batch_size,
            list(training.image_size), training.lr_schedule.type) == (2, 1, 5, 4, [32, 32], "plateau")
    assert [type(t).__name__ for t in training.loss.terms] == ["CE"]

    monkeypatch.setattr(experiment, "pipeline_artifacts", lambda config: artifacts)
    monkeypatch.setattr(experiment, "train_cell", lambda *a: {
        "serving_dir": "M", "seconds": 1.0, "history": {}, "class_weights": None, "epochs_run": 2, "best_epoch": 1,
        "stopped_epoch": None})
    monkeypatch.setattr(experiment, "evaluate", lambda *a: {"miou": 0.5, "per_class_iou": [0.5] * 4})
    results = []
    experiment.run_group("shapes", 0.0, plan, config, [None] * 4, work, results)  # 4 test crops, as the plan
    assert results[0]["config_digest"] == config_digest(kept) is not None
    assert experiment.protocol_differences(results[0], plan) == ""
    assert experiment.protocol_differences(results[0], Plan(**{**plan.__dict__, "config_values": {}})) == \
        f"--config values of digest {config_digest(kept)}"
    assert experiment.protocol_differences({**results[0], "config_digest": None}, plan) == "no --config"


def test_the_command_line_notes_owned_fields_and_refuses_bad_values_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"training": {"optimizer": "lion"}}))
    assert cli.main(["experiment", "--output", str(tmp_path / "o"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--config {bad} under this experiment's options: training.optimizer" in err
    missing = tmp_path / "missing.yaml"
    assert cli.main(["experiment", "--output", str(tmp_path / "o"), "--config", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"config file {missing} does not exist" in err
    assert not (tmp_path / "o").exists()
    # owned fields: a note each, before anything runs (here a bad --weightings then stops it)
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump(USER))
    assert cli.main(["experiment", "--output", str(tmp_path / "o"), "--config", str(mine),
                     "--weightings", "squared"]) == 2
    printed = capsys.readouterr().out
    assert f"note: {mine}: training.epochs is not used by the experiment (--max-epochs sets it)" in printed
    assert f"note: {mine}: data is not used by the experiment" in printed


def test_a_report_with_config_covers_the_rows_trained_with_it(tmp_path):
    import argparse

    from segbalance.pipeline.experiment import row_selector

    kept, _ = split_owned(USER)
    plan = Plan(config="user.yaml", config_values=kept)
    rows = [{"config_digest": config_digest(kept)}, {"config_digest": None}, {}]
    args = argparse.Namespace()
    assert [select for select in map(row_selector(args, plan), rows)] == [True, False, False]
    assert all(map(row_selector(args, Plan()), rows))


def test_the_file_is_checked_as_the_cells_train_and_freezing_reaches_them(tmp_path, monkeypatch):
    """Plan.check validated the file against the default 40 epochs and 64x64 crops, and the group's
    1-epoch pipeline run refused any freeze_encoder_epochs >= 2 after the data was built: the file is
    now checked under the plan's epochs and size, the pipeline run freezes at most its one epoch, and
    every cell freezes the file's number."""
    from segbalance.contract import UserError
    from segbalance.pipeline import experiment
    from segbalance.pipeline.dag import trainer_custom_config
    from segbalance.trainer import task

    recipe = {"training": {"backbone": "MobileNetV2", "freeze_encoder_epochs": 5}}
    plan = Plan(datasets=["shapes"], drop_fractions=[0.0], terms=["ce"], weightings=["none"], missing=["none"],
                num_images=8, test_images=4, size=32, max_epochs=10, patience=2, min_epochs=0, batch_size=4,
                config="r.yaml", config_values=recipe)
    plan.check()
    with pytest.raises(UserError, match=r"freeze_encoder_epochs: 60 is longer than the training \(10 epochs\)"):
        Plan(**{**plan.__dict__, "config_values": {"training": {**recipe["training"], "freeze_encoder_epochs": 60}}}
             ).check()
    with pytest.raises(UserError, match=r"under this experiment's options: training.image_size: \[40, 40\]"):
        Plan(size=40, config_values={"training": {"depth": 4}}).check()
    work = tmp_path / "work"
    train, _ = dataset_folders("shapes", plan, 0.0, work)
    names = json.loads((train / "classes.json").read_text())["class_names"]
    config = experiment.experiment_config(plan, train, work / "run", names)
    assert config.training.freeze_encoder_epochs == 1 and config.training.epochs == 1
    seen = []
    monkeypatch.setattr(task, "run_fn", recording_run_fn(work / "cell", seen))
    experiment.train_cell({"examples": "E", "transform_graph": "T", "class_stats": "S"}, trainer_custom_config(config),
                          experiment.cell_loss("ce", "none", "none"), 0, work / "cell", plan)
    assert seen[0].freeze_encoder_epochs == 5 and seen[0].epochs == 10 and seen[0].backbone == "MobileNetV2"


def test_the_digest_ignores_defaults_and_legacy_rows_count_as_trained_without_a_config():
    from segbalance.pipeline.experiment import protocol_differences

    assert config_digest({"training": {"optimizer": "adam", "augmentation": {"rotate90": False}}}) is None
    assert split_owned({"training": {"epochs": 3}, "beam_args": ["--x"]}) == ({}, ["beam_args", "training.epochs"])
    mine = Plan(config="m.yaml", config_values={"training": {"optimizer": "sgd"}})
    assert protocol_differences({"max_epochs": 150}, mine) == "no --config"  # a row from before the field
    assert protocol_differences({"max_epochs": 150}, Plan()) == ""
    assert protocol_differences({}, Plan(config="d.yaml", config_values={"training": {"optimizer": "adam"}})) == ""


def test_library_output_of_a_cell_goes_to_the_log_not_the_console(tmp_path, capfd):
    """QA (session 18, helper 29): `experiment --quick` printed a dozen TensorFlow "Error in PredictCost()"
    lines on the console; `run` keeps library output in its log, and so does each cell now."""
    import os

    from segbalance.pipeline.experiment import train_and_score

    def train():
        os.write(2, b"op_level_cost_estimator.cc:699] Error in PredictCost() for the op\n")
        print("experiment: our own line")
        return {"serving_dir": str(tmp_path / "served")}

    outcome, scores = train_and_score(tmp_path / "logs", train, lambda served: {"served": served})
    assert scores == {"served": str(tmp_path / "served")} and outcome["serving_dir"] == scores["served"]
    out, err = capfd.readouterr()
    assert "PredictCost" not in err and "experiment: our own line" in out
    (log,) = list((tmp_path / "logs").glob("run-*.log"))
    assert "Error in PredictCost()" in log.read_text()


def test_rows_record_the_commit_of_a_segbalance_checkout_only(tmp_path):
    """QA 75: an installed segbalance inside a user's git project recorded that project's commit."""
    import shutil
    import subprocess

    import segbalance.pipeline.experiment_config as module

    def git(*args, cwd):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()

    checkout = Path(module.__file__).resolve().parents[1]
    expected = None
    if (checkout / ".git").exists():
        expected = git("rev-parse", "--short=12", "HEAD", cwd=checkout)
        if git("status", "--porcelain", "--untracked-files=no", cwd=checkout):
            expected += "+changes"
    assert module.source_commit() == expected
    # a copy installed in a venv inside the user's own repository (the wheel's layout)
    project = tmp_path / "project"
    installed = project / ".venv" / "lib" / "site-packages" / "segbalance" / "pipeline"
    installed.mkdir(parents=True)
    shutil.copy(module.__file__, installed / "experiment_config.py")
    git("init", "-q", cwd=project)
    (project / "notes.txt").write_text("mine\n")
    git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty", "-m", "x", cwd=project)
    namespace = {"__file__": str(installed / "experiment_config.py"), "__name__": "installed_copy"}
    exec(compile((installed / "experiment_config.py").read_text(), namespace["__file__"], "exec"), namespace)
    assert namespace["source_commit"]() is None
