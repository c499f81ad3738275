"""Pipeline config: defaults, YAML/JSON loading, and errors that name the field."""
import dataclasses
import json
import os
import re

import pytest

from segbalance.pipeline import cli, sample_data
from segbalance.pipeline.config import ConfigError, PipelineConfig, config_from_dict, load_config


def test_defaults_are_the_shapes_sample():
    config = load_config()
    assert isinstance(config, PipelineConfig)
    assert config.num_classes == 4 and config.data.dir is None and config.data.sample.kind == "shapes"
    assert config.name == "segbalance"


def test_default_loss_is_the_experiment_cell_it_was_chosen_from():
    from segbalance.pipeline.experiment import CLIP, STATS_CHANGES, cell_loss
    from segbalance.trainer.loss_config import loss_config

    # README "Results": the cell that ranked first; its loss and its weights' clip, changed together
    cell = ("ce_dice", "median_frequency_clipped_decay", "marginal_dice")
    config = load_config()
    assert config.training.loss == loss_config(cell_loss(*cell))
    assert tuple(config.stats.clip) == CLIP == STATS_CHANGES[cell[1]]["clip"]


def test_defaults_live_in_the_schema_only():
    """The pipeline's values (24 epochs, 3e-3 decayed by a cosine) are the one default; the trainer reads the same
    objects."""
    from segbalance.trainer.training_config import TrainerConfig, TrainingConfig

    assert TrainingConfig().epochs == 24 and TrainingConfig().learning_rate == 3e-3
    assert TrainingConfig().lr_schedule.type == "cosine"
    config = load_config()
    assert config.training == TrainingConfig() and config.trainer_config() == TrainerConfig()
    assert TrainerConfig.from_custom_config({})[0] == TrainerConfig()  # run_fn with nothing set: same defaults


def test_drift_actions_are_the_drift_gate_s():
    from segbalance.components.drift_metrics import ACTIONS
    from segbalance.pipeline.config import DRIFT_ACTIONS

    assert DRIFT_ACTIONS == ACTIONS
    for action in ACTIONS:
        assert config_from_dict({"drift": {"action": action}}).drift.action == action


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  epochs: 3\n  image_size: [32, 48]\nclasses:\n  names: [bg, a, b]\n"
                    "evaluation:\n  miou_threshold: 1\n")
    config = load_config(str(path), output_dir=str(tmp_path / "o"))
    assert config.training.epochs == 3 and config.training.image_size == [32, 48]
    assert config.num_classes == 3 and config.output_dir == str(tmp_path / "o")
    assert config.evaluation.miou_threshold == 1.0 and isinstance(config.evaluation.miou_threshold, float)
    json_path = tmp_path / "c.json"
    json_path.write_text(json.dumps({"data": {"sample": {"num_images": 10}}}))
    assert load_config(str(json_path)).data.sample.num_images == 10


@pytest.mark.parametrize("values, message", [
    ({"trainng": {}}, "unknown field trainng"),
    ({"training": {"epoch": 3}}, "unknown field training.epoch"),
    ({"training": {"epochs": "ten"}}, "training.epochs: expected int"),
    ({"training": {"epochs": True}}, "training.epochs: expected int"),
    ({"training": {"image_size": 64}}, "training.image_size: expected a list"),
    ({"training": {"epochs": 0}}, "training.epochs: must be >= 1"),
    ({"output_dir": ""}, "output_dir: is empty: name the folder a run writes into"),  # QA 27
    ({"data": {"sample": {"seed": -1}}}, "data.sample.seed: must be from 0 to 2**32 - 1"),  # QA 27
    ({"data": {"sample": {"seed": 2 ** 32}}}, "data.sample.seed: must be from 0 to 2**32 - 1"),
    # PyYAML reads 3e-3 as text (YAML 1.1 wants a dot): the message says how to write it (QA 27)
    ({"training": {"learning_rate": "3e-3"}},
     "training.learning_rate: expected float, got str '3e-3' (YAML reads 3e-3 as text: write 0.003 or 3.0e-3)"),
    ({"training": {"learning_rate": "fast"}}, "training.learning_rate: expected float, got str 'fast'"),
    ({"training": {"learning_rate": "1e-5"}},  # review 27: the hint must be a form YAML reads as a number
     "training.learning_rate: expected float, got str '1e-5' (YAML reads 1e-5 as text: write 1.0e-5)"),
    ({"training": {"learning_rate": "1.0e5"}},
     "training.learning_rate: expected float, got str '1.0e5' (YAML reads 1.0e5 as text: write 100000.0 or 1.0e+5)"),
    ({"training": {"learning_rate": "0.5"}},
     "training.learning_rate: expected float, got str '0.5' (a number in quotes: write 0.5 without them)"),
    ({"training": {"steps_per_epoch": 0}}, "training.steps_per_epoch: must be between 1 and 2147483647"),
    ({"training": {"optimizer": "rmsprop"}}, "training.optimizer: 'rmsprop' is not allowed"),
    ({"training": {"lr_schedule": {"type": "cosine", "power": 2}}},
     "training.lr_schedule.power: 2.0 is read by the polynomial schedule only; type cosine would ignore it"),
    ({"training": {"lr_schedule": {"type": "polynomial", "patience": 5}}},
     "training.lr_schedule.patience: 5 is read by the plateau schedule only; type polynomial would ignore it"),
    ({"training": {"lr_schedule": {"type": "constant", "final_fraction": 0.1}}},
     "training.lr_schedule.final_fraction: 0.1 is read by the cosine / polynomial / plateau schedule only; type "
     "constant would ignore it"),
    ({"training": {"momentum": 0.8}}, "training.momentum: 0.8 is sgd's momentum; adam would ignore it"),
    ({"training": {"optimizer": "adamw", "nesterov": True}},
     "training.nesterov: Nesterov momentum is sgd's; adamw would ignore it: set optimizer: sgd or nesterov: false"),
    ({"training": {"backbone": "mobilenet"}}, "training.backbone: 'mobilenet' is not a keras.applications model: "
                                              "use one of ConvNeXtBase, "),
    # these passed `config validate` and failed at SegTrainer, minutes in, with a traceback
    ({"training": {"backbone": "NotAModel"}}, "training.backbone: 'NotAModel' is not a keras.applications model"),
    ({"training": {"seed": -5}}, "training.seed: -5 is outside 0..2**32 - 1"),
    ({"classes": {"ignore_index": 300}}, "classes.ignore_index: 300 is not an 8-bit mask value"),
    ({"classes": {"ignore_index": 2}}, "classes.ignore_index: 2 collides with a class id (< 4): every pixel of class 2"),
    ({"classes": {"names": [f"c{i}" for i in range(256)]}},
     "classes.ignore_index: 255: 8-bit masks have no value left for 'no label' beside 256 classes; at most 255"),
    ({"data": {"reference_masks_dir": "/nonexistent/masks"}}, "data.reference_masks_dir: /nonexistent/masks is not "
                                                              "a folder"),
    ({"training": {"loss": {"terms": [{"type": "ce"}], "low_confidence": {"tau": 2}}}},
     "training.loss.low_confidence.tau: 2.0: give the top-probability threshold, in (0, 1]"),
    ({"drift": {"js_divergence": 5}}, "drift.js_divergence: must be in [0, 1]"),
    ({"drift": {"significance": 0.7}}, "drift.significance: must be in [0, 0.5]"),
    ({"drift": {"baseline_min_share": 1.5}}, "drift.baseline_min_share: must be in [0, 1]"),
    ({"drift": {"baseline_min_share": -0.1}}, "drift.baseline_min_share: must be in [0, 1]"),
    ({"training": {"devices": []}}, "training.devices: list device names"),
    # the U-Net halves the size `depth` times (a backbone once more): refused when the config loads
    ({"training": {"image_size": [36, 36]}}, "training.image_size: [36, 36] must be divisible by 8 (the U-Net "
                                              "halves it depth = 3 times); use e.g. [32, 32]"),
    ({"training": {"image_size": [48, 40], "backbone": "MobileNetV2"}},
     "training.image_size: [48, 40] must be divisible by 16 (the MobileNetV2 encoder halves it depth + 1"),
    ({"training": {"pixel_weights": {"type": "sobel"}}}, "training.pixel_weights.type: unknown type 'sobel'"),
    # QA 69 F16: no upper bound; a huge size ran out of memory in the first batch
    ({"training": {"image_size": [65536, 64]}}, "training.image_size: give [height, width], each from 8 to 8192 "
                                                "pixels"),
    # QA (session 23): passed the check and stopped SegTrainer (TensorFlow's integers)
    ({"training": {"batch_size": 10 ** 20}}, "training.batch_size: must be <= 2147483647"),
    ({"training": {"epochs": 2 ** 31}}, "training.epochs: must be <= 2147483647"),
    ({"training": {"steps_per_epoch": 2 ** 40}}, "training.steps_per_epoch: must be between 1 and 2147483647"),
    ({"training": {"pixel_weights": {"type": "edge", "w0": 2}}}, "unknown field training.pixel_weights.w0"),
    ({"training": {"learning_rate": float("inf")}}, "training.learning_rate: must be a finite number > 0"),
    ({"training": {"pixel_weights": {"type": "unet_border", "sigma": 0}}}, "training.pixel_weights.sigma: must be"),
    ({"training": {"pixel_weights": {"type": "intensity_range", "ranges": [[2, 1, 3]]}}},
     "training.pixel_weights.ranges[0]: lo=2.0 must be < hi=1.0"),
    ({"training": {"pixel_weights": {"type": "feature_extractor", "model": "x.h5"}}},
     "training.pixel_weights.model: 'x.h5': give the path of a saved Keras model file"),
    ({"training": {"loss": {"terms": [{"type": "ce"}], "ignore_index": 254}}},
     "training.loss.ignore_index is not a setting any more: the ignore index is set once, classes.ignore_index"),
    ({"training": {"loss": {"terms": [{"type": "ce"}], "fn_weights": [1, 2]}}},
     "training.loss.fn_weights: has 2 values for 4 classes"),
    # a loss-wide field that no term of the loss reads would silently change nothing
    ({"training": {"loss": {"terms": [{"type": "focal"}, {"type": "dice", "marginal": True}],
                            "missing_labels": "marginal"}}},
     "training.loss.missing_labels: no term of this loss uses it (only ce terms do): add one to the terms, or "
     "remove missing_labels (a dice term takes marginal: true)"),
    ({"training": {"loss": {"terms": [{"type": "tversky"}], "missing_labels": "ignore_predicted"}}},
     "training.loss.missing_labels: no term of this loss uses it"),
    ({"training": {"loss": {"terms": [{"type": "dice"}, {"type": "tversky"}], "fp_weights": [1, 2, 1, 1],
                            "low_confidence": {"tau": 0.5}}}},
     "training.loss.fp_weights: no term of this loss uses it (only ce, focal terms do): add one to the terms, or "
     "remove fp_weights"),
    ({"training": {"loss": {"terms": [{"type": "generalized_dice"}, {"type": "exclusion"}],
                            "class_weights": "median_frequency", "class_weight_decay_epochs": 5}}},
     "training.loss.class_weights: no term of this loss uses it (only ce, focal, dice, tversky terms do)"),
    ({"training": {"min_epochs": 3}}, "training.min_epochs: holds off early stopping and plateau rate cuts, and "
                                      "this training has neither: set early_stopping_patience"),
    ({"training": {"backbone": "MobileNetV2", "epochs": 10, "freeze_encoder_epochs": 11}},
     "training.freeze_encoder_epochs: 11 is longer than the training (10 epochs): the encoder would never train; "
     "give at most 10"),
    ({"data": {"eval_fraction": 0.25}}, "data.eval_fraction: 0.25 is not a multiple of 0.1 (the split hashes "
                                        "records into 10 buckets): use 0.2 or 0.3"),
    ({"data": {"eval_fraction": 0.95}}, "data.eval_fraction: 0.95 is not a multiple of 0.1 (the split hashes "
                                        "records into 10 buckets): use 0.9"),
    ({"classes": {"names": ["bg"]}}, "classes.names"),
    ({"classes": {"names": ["bg", "Car", "car"]}}, "classes.names: 'Car' and 'car' name the same class"),
    ({"classes": {"names": ["bg", " "]}}, "classes.names[1]: a class name must not be empty"),
    ({"classes": {"names": ["bg", "a"], "ignore_index": 1}}, "classes.ignore_index"),
    ({"name": "My_Pipeline"}, "not a valid pipeline name"),
    ({"data": {"labeled_policy": "partial"}}, "data.labeled_policy is not a setting any more: set stats.labeled_policy"),
    ({"stats": {"labeled_policy": "some"}}, "stats.labeled_policy: 'some' is not allowed"),
    ({"stats": {"clip": [5, 1]}}, "stats.clip: [5.0, 1.0]: give [w_min, w_max]"),
    ({"stats": {"clip": [1]}}, "stats.clip: expected 2 values"),
    ({"stats": {"clip": [0, 0]}}, r"stats.clip: [0.0, 0.0]: give [w_min, w_max] with 0 <= w_min <= w_max and w_max > 0"),
    ({"stats": {"damping": "log"}}, "stats.damping: 'log' is not allowed"),
    ({"stats": {"beta": 1.0}}, "stats.beta: must be in [0, 1)"),
    ({"stats": {"enet_k": 1.0}}, "stats.enet_k: must be > 1"),
    ({"stats": {"suspect_threshold": 0}}, "stats.suspect_threshold: must be in (0, 1]"),
    ({"drift": {"action": "explode"}}, "drift.action"),
])
def test_invalid_values_name_the_field(values, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict(values)


@pytest.mark.parametrize("beam_args, message", [
    (["--direct_num_workerz=2"], "beam_args: '--direct_num_workerz=2' is not an option of Beam's direct runner, which "
                                 "would drop it unread: did you mean --direct_num_workers?"),
    (["direct_running_mode=in_memory"], "beam_args: 'direct_running_mode=in_memory' is not an option of Beam's direct "
                                        "runner, which would drop it unread: did you mean --direct_running_mode?"),
    (["--runner=Flinck"], "beam_args: --runner=Flinck is not a Beam runner: use one of DataflowRunner, "),
    (["--direct_num_workers=two"], "beam_args: argument --direct_num_workers: invalid int value: 'two'"),
    (["--direct_running_mode=threads"], "beam_args: argument --direct_running_mode: invalid choice: 'threads'"),
    (["--runner=DirectRunner", "--frobnicate"], "'--frobnicate' is not an option of Beam's direct runner"),
    (["--runner=apache_beam.runners.direct.direct_runner.DirectRunner", "--direct_num_workerz=2"],
     "'--direct_num_workerz=2' is not an option of Beam's direct runner"),
    (["--help"], "'--help' is not an option of Beam's direct runner"),  # Beam printed its help and exited
    (["-h"], "'-h' is not an option of Beam's direct runner"),
])
def test_beam_args_are_parsed_as_beam_parses_them(beam_args, message):
    """Beam drops a flag it does not know with a line in the log only: the direct runner ran with its default;
    an unknown runner or a bad value failed when the first Beam component started, with Beam's traceback."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict({"beam_args": beam_args})


def test_beam_args_beam_accepts_are_accepted():
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

    from segbalance.pipeline.config import KUBEFLOW_BEAM_ARGS, LOCAL_BEAM_ARGS

    for beam_args in (LOCAL_BEAM_ARGS, KUBEFLOW_BEAM_ARGS, ["--direct_num_worker=2"],  # a prefix, as Beam reads it
                      ["--runner", "direct", "--direct_num_workers", "2"],
                      ["--runner=DataflowRunner", "--project=p", "--region=europe-west1", "--temp_location=gs://b/t"],
                      ["--runner=FlinkRunner", "--flink_master=localhost:8081", "--a_job_server_flag=1"],  # handed on
                      ["--runner=mypackage.runners.MyRunner", "--my_runner_flag"]):
        assert config_from_dict({"beam_args": list(beam_args)}).beam_args == list(beam_args)
    assert PipelineOptions(["--direct_num_worker=2"]).view_as(DirectOptions).direct_num_workers == 2  # Beam agrees
    assert PipelineOptions(["--direct_num_workerz=2"]).view_as(DirectOptions).direct_num_workers == 1  # dropped


def test_any_unique_class_names_are_accepted():
    names = ["背景", "猫", "Café", "a b", "a-b"]  # metric names are made safe from them (trainer/metrics.py)
    assert config_from_dict({"classes": {"names": names}}).classes.names == names


def test_data_dir_must_hold_data(tmp_path):
    with pytest.raises(ConfigError, match="data.dir: .* is not a folder"):
        config_from_dict({"data": {"dir": str(tmp_path / "missing")}})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="nothing to train on; give a folder with images/ and masks/, or the "
                                          "--output of `segbalance ingest ... --span N`"):
        config_from_dict({"data": {"dir": str(tmp_path / "empty")}})


def test_a_data_dir_of_ingest_output_without_spans_says_what_to_give(tmp_path):
    """QA (session 23): `ingest` without --span writes its shards into the output folder itself, and `run
    --data` on it (or on one Span-N folder) said only "nothing to train on"."""
    shard = "data-00000-of-00001.tfrecord"  # what `segbalance ingest` names its shards (pipeline/ingest.py OWNED)
    from fnmatch import fnmatch

    from segbalance.pipeline.ingest import OWNED

    assert fnmatch(shard, OWNED[0])
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / shard).write_bytes(b"")
    with pytest.raises(ConfigError, match=re.escape(f"{flat} holds TFRecords that `segbalance ingest` wrote without "
                                                    "--span, and a run reads Span-N/ folders: ingest again with --span 0")):
        config_from_dict({"data": {"dir": str(flat)}})
    span = tmp_path / "spans" / "Span-3"
    span.mkdir(parents=True)
    (span / shard).write_bytes(b"")
    with pytest.raises(ConfigError, match=re.escape(f"{span} is one span's folder; give the folder that holds it, "
                                                    f"--data {span.parent}")):
        config_from_dict({"data": {"dir": str(span)}})
    assert config_from_dict({"data": {"dir": str(span.parent)}}).data.dir == str(span.parent)  # and that is read


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    (tmp_path / "bad.yaml").write_text("training: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(tmp_path / "bad.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(str(tmp_path / "list.yaml"))


def test_run_cli_reports_config_errors(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("training:\n  epochs: -1\n")
    assert cli.main(["run", "--config", str(tmp_path / "c.yaml"), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "training.epochs" in err and "segbalance run: error:" in err and "(in " in err
    assert not (tmp_path / "o").exists()


def test_too_few_class_names_for_the_mask_ids_stops_the_run(tmp_path, capsys):
    from segbalance.pipeline import sample_data

    raw = sample_data.write_sample_data("shapes", tmp_path / "raw", num_images=12, size=32, seed=0)
    (tmp_path / "c.yaml").write_text("classes:\n  names: [background, ellipse]\n")  # the masks hold ids 0..3
    out = tmp_path / "o"
    assert cli.main(["run", "--config", str(tmp_path / "c.yaml"), "--data", str(raw), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err  # the folder's classes.json names 4 classes: the two lists disagree
    assert "classes.names ['background', 'ellipse'] are not the classes of" in err and "classes.json" in err
    (raw / "classes.json").unlink()  # without it, the labelled sets and the masks tell
    assert cli.main(["run", "--config", str(tmp_path / "c.yaml"), "--data", str(raw), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "classes.names lists 2 classes" in err and "add the missing class names" in err
    assert not (out / "metadata.sqlite").exists()  # stopped before the pipeline started
    (raw / "labeled.json").unlink()  # now the masks' ids are what is out of range
    assert cli.main(["run", "--config", str(tmp_path / "c.yaml"), "--data", str(raw), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "classes.names lists 2 classes but" in err and "masks have larger class ids" in err
    assert "grey levels" not in err  # more values in a mask than classes: not a mask saved for viewing
    assert not (out / "metadata.sqlite").exists()


def test_config_modules_import_no_tensorflow_keras_or_tfx():
    """Config checks (segbalance config validate, --help) must not wait for TF / TFX imports."""
    import subprocess
    import sys

    code = ("import sys, segbalance.pipeline.config, segbalance.pipeline.config_cmd, segbalance.trainer.loss_config; "
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'tfx', 'apache_beam', "
            "'tensorflow_transform'}); print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_experiment_clipped_cells_take_their_weight_options_from_the_stats_section(tmp_path):
    """No tuple of its own: a cell's `stats` changes (StatsConfig fields) give its class weights."""
    import numpy as np

    from segbalance.pipeline.config import StatsConfig
    from segbalance.pipeline.experiment import CLIP, IMBALANCE_LOSSES, STATS_CHANGES, resolve_loss
    from segbalance.trainer.class_weights import compute_class_weights

    counts, present = [9000, 400, 60, 0], [10000, 3000, 900, 0]
    (tmp_path / "class_stats.json").write_text(json.dumps({"pixel_counts": counts, "present_image_pixels": present}))
    assert STATS_CHANGES["median_frequency_clipped"] == {"clip": CLIP}
    loss = resolve_loss(IMBALANCE_LOSSES["median_frequency_clipped"], str(tmp_path),
                        STATS_CHANGES["median_frequency_clipped"], StatsConfig(zero_count_weight=0.5))
    want = compute_class_weights(counts, "median_frequency", present_image_pixels=present, clip=CLIP,
                                 zero_count_weight=0.5)
    np.testing.assert_allclose(loss["class_weights"], want)
    assert loss["class_weights"][3] == 0.5 and max(loss["class_weights"]) / min(loss["class_weights"][:3]) <= 10.0
    unclipped = compute_class_weights(counts, "median_frequency", present_image_pixels=present)
    assert not np.allclose(want, unclipped)  # the clip changed something
    # cells without changes keep the scheme name: run_fn reads the artifact's vector
    assert resolve_loss(IMBALANCE_LOSSES["median_frequency"], str(tmp_path), None) == \
        IMBALANCE_LOSSES["median_frequency"]
    with pytest.raises(ConfigError, match=r"stats.clip: \[5.0, 1.0\]"):
        resolve_loss(IMBALANCE_LOSSES["median_frequency"], str(tmp_path), {"clip": [5, 1]})


def test_backbone_names_are_keras_applications_models():
    """The config's list (checked without importing Keras) is the pinned Keras' own."""
    import keras

    from segbalance.trainer.training_config import KERAS_APPLICATIONS

    models = [n for n in dir(keras.applications) if n[:1].isupper() and callable(getattr(keras.applications, n))]
    assert list(KERAS_APPLICATIONS) == models


@pytest.mark.parametrize("name, text", [
    ("c.yaml", "training:\n  epochs: 2\n  batch_size: 4\n  epochs: 3\n"),
    ("c.json", '{"training": {"epochs": 2, "epochs": 3}}'),
])
def test_a_key_given_twice_is_refused(tmp_path, name, text):
    """YAML and JSON keep the last of two equal keys without a word (it trained 3 epochs)."""
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=r"'epochs' is given twice" + (r" \(line 4\)" if name.endswith("yaml") else "")):
        load_config(str(tmp_path / name))
    (tmp_path / "ok.yaml").write_text("base: &b {epochs: 2}\n")  # anchors and a single key stay fine
    with pytest.raises(ConfigError, match="unknown field base"):
        load_config(str(tmp_path / "ok.yaml"))


def test_file_errors_name_the_file_but_not_for_command_line_values(tmp_path):
    (tmp_path / "c.yaml").write_text("training:\n  epochs: 0\n")
    with pytest.raises(ConfigError, match=r"training.epochs: must be >= 1 \(in .*c.yaml\)"):
        load_config(str(tmp_path / "c.yaml"))
    (tmp_path / "d.yaml").write_text("training:\n  epochs: 2\n")
    with pytest.raises(ConfigError) as raised:
        load_config(str(tmp_path / "d.yaml"), **{"data.dir": str(tmp_path / "missing")})
    assert str(raised.value).startswith("data.dir: ") and "d.yaml" not in str(raised.value)


def test_run_takes_the_class_names_of_the_data_folder(tmp_path, capsys):
    """DATA/classes.json was read for sample data only: `run --data` on a 2-class folder trained and
    scored 4 classes (the shapes defaults), reporting half the mIoU, without a word."""
    import json

    from segbalance.pipeline.config import config_from_dict
    from segbalance.pipeline.run import prepare_data
    from segbalance.pipeline import sample_data

    raw = sample_data.write_sample_data("shapes", tmp_path / "raw", num_images=6, size=32, seed=0)
    (raw / "classes.json").write_text(json.dumps({"class_names": ["bg", "ellipse", "rectangle", "circle"]}))
    config = config_from_dict({"data": {"dir": str(raw)}})
    paths = {"sample_dir": str(tmp_path / "s"), "examples_dir": str(tmp_path / "examples"),
             "output_dir": str(tmp_path)}
    prepare_data(config, paths)
    assert config.classes.names == ["bg", "ellipse", "rectangle", "circle"]
    assert "classes: 4 from the classes of" in capsys.readouterr().out
    # kept with the span: a run on the spans (a scheduled `run --data OUTPUT/data`) has the same classes
    spans = config_from_dict({"data": {"dir": paths["examples_dir"]}})
    prepare_data(spans, paths)
    assert spans.classes.names == ["bg", "ellipse", "rectangle", "circle"]
    assert json.loads((tmp_path / "examples" / "Span-0" / "classes.json").read_text())["class_names"] == \
        ["bg", "ellipse", "rectangle", "circle"]
    # a later span of data without classes.json, whose names the config gives: the latest span's names rule,
    # not a file left from the first (QA 27 review: one OUTPUT/data/classes.json went stale)
    other = sample_data.write_sample_data("shapes", tmp_path / "raw2", num_images=6, size=32, seed=1)
    (other / "classes.json").unlink()
    mine = {"classes": {"names": ["bg", "x", "y", "z"]}}
    prepare_data(config_from_dict({"data": {"dir": str(other)}, **mine}), paths)
    again = config_from_dict({"data": {"dir": paths["examples_dir"]}, **mine})
    prepare_data(again, paths)
    assert again.classes.names == ["bg", "x", "y", "z"]
    unnamed = config_from_dict({"data": {"dir": paths["examples_dir"]}})
    prepare_data(unnamed, paths)
    assert unnamed.classes.names == ["bg", "x", "y", "z"]
    mine = config_from_dict({"data": {"dir": str(raw)}, "classes": {"names": ["x", "y", "z", "w"]}})
    with pytest.raises(ConfigError, match="remove classes.names"):  # the user's names still never replaced
        prepare_data(mine, {**paths, "examples_dir": str(tmp_path / "examples1")})
    assert not (tmp_path / "examples1").exists()
    # per-class vectors are checked against the data's class count at once, not at Transform
    (raw / "classes.json").write_text(json.dumps({"class_names": ["bg", "a", "b", "c", "d"]}))
    config = config_from_dict({"data": {"dir": str(raw)},
                               "training": {"loss": {"terms": [{"type": "ce"}], "fn_weights": [1, 2, 2, 2]}}})
    with pytest.raises(ConfigError, match="training.loss.fn_weights: has 4 values for 5 classes"):
        prepare_data(config, {**paths, "examples_dir": str(tmp_path / "examples2")})
    (raw / "classes.json").write_text("[\"bg\", \"a\"]")  # not the documented form: named, not guessed
    from segbalance.pipeline.ingest import IngestError

    with pytest.raises(IngestError, match=r"classes file .*classes.json: expected \{\"class_names\""):
        prepare_data(config_from_dict({"data": {"dir": str(raw)}}), {**paths, "examples_dir": str(tmp_path / "e3")})


def test_config_validate_and_show_check_the_data_folder_s_class_names(tmp_path, capsys):
    """`config validate` passed a file whose classes.names contradict DATA/classes.json (and whose
    per-class vectors fit the defaults, not the data); `run` then refused it. Both commands now read
    the data's classes as `run` does."""
    import json

    import yaml

    from segbalance.pipeline import cli

    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "classes.json").write_text(json.dumps({"class_names": ["bg", "road", "car"]}))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"dir": str(raw)}}))
    assert cli.main(["config", "validate", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{config}: valid (3 classes from the classes of {raw / 'classes.json'},") and \
        out.count("\n") == 1
    assert cli.main(["config", "show", "--config", str(config)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["classes"]["names"] == ["bg", "road", "car"]  # YAML only
    for body, message in [
        ({"classes": {"names": ["bg", "road", "car", "bike"]}}, "are not the classes of"),
        ({"training": {"loss": {"terms": [{"type": "ce"}], "fn_weights": [1, 2, 2, 2]}}},
         "training.loss.fn_weights: has 4 values for 3 classes"),
    ]:
        config.write_text(yaml.safe_dump({"data": {"dir": str(raw)}, **body}))
        assert cli.main(["config", "validate", str(config)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and str(config) in err
    # per-class lists sized for the data's classes are valid (they were checked against the default 4 first)
    from segbalance.pipeline.config import load_config

    right = {"terms": [{"type": "ce"}], "class_weights": [1, 3, 5], "fn_weights": [1, 2, 2], "missing_labels": "marginal"}
    config.write_text(yaml.safe_dump({"data": {"dir": str(raw)}, "training": {"loss": right}}))
    assert cli.main(["config", "validate", str(config)]) == 0, capsys.readouterr().err
    assert "valid (3 classes" in capsys.readouterr().out
    loaded = load_config(str(config))
    assert loaded.classes.names == ["bg", "road", "car"] and loaded.training.loss.class_weights == [1, 3, 5]
    relative = load_config(None, **{"data.dir": os.path.relpath(raw), "training.epochs": 2})  # --data DIR, cwd-relative
    assert relative.classes.names == ["bg", "road", "car"]
    (raw / "classes.json").write_text("[\"bg\"]")  # malformed: the file is named
    config.write_text(yaml.safe_dump({"data": {"dir": str(raw)}}))
    assert cli.main(["config", "validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"classes file {raw / 'classes.json'}" in err


def test_a_sample_kind_names_the_classes_before_the_file_is_checked(tmp_path, capsys, monkeypatch):
    """With data.sample.kind voc (21 classes) `config validate` counted the 4 default names: a 21-value
    fn_weights was refused ('21 values for 4 classes') and a 4-value one passed, which `run` then
    refused ('4 values for 21 classes'). Validate, show and a local run now take the sample's names
    first (those sample-data writes); compile-kfp, which does not compile data.sample, does not."""
    import yaml

    from segbalance.contract import UserError
    from segbalance.pipeline import package_data, sample_data

    for kind in ("voc", "nuclei"):  # the names the written sample's classes.json holds
        written = sample_data.write_sample_data(kind, tmp_path / kind, num_images=1, size=16)
        assert sample_data.sample_class_names(kind) == json.loads((written / "classes.json").read_text())["class_names"]
    voc = sample_data.sample_class_names("voc")
    assert len(voc) == 21
    config = tmp_path / "voc.yaml"

    def write(fn_weights, **extra):
        config.write_text(yaml.safe_dump({"data": {"sample": {"kind": "voc"}}, **extra, "training": {"loss": {
            "terms": [{"type": "ce"}], "fn_weights": fn_weights, "missing_labels": None}}}))

    write([1.0] * 21)
    assert cli.main(["config", "validate", str(config)]) == 0, capsys.readouterr().err
    assert "valid (21 classes" in capsys.readouterr().out
    assert cli.main(["config", "show", "--config", str(config)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["classes"]["names"] == voc
    assert load_config(str(config), sample_names=sample_data.sample_class_names).num_classes == 21
    with pytest.raises(ConfigError, match="has 21 values for 4 classes"):  # compile-kfp: the names it compiles
        load_config(str(config))
    write([1.0] * 4)
    assert cli.main(["config", "validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "training.loss.fn_weights: has 4 values for 21 classes" in err
    write([1.0] * 4, classes={"names": ["bg", "a", "b", "c"]})  # the user's own names: refused before the run
    with pytest.raises(ConfigError, match=r"classes.names: \['bg', 'a', 'b', 'c'\] are not the classes of the voc"):
        load_config(str(config), sample_names=sample_data.sample_class_names)  # (QA 63: run wrote the sample first)
    assert load_config(None, **{"data.dir": str(tmp_path / "voc")}).classes.names == voc  # --data: its classes.json
    monkeypatch.setenv(package_data.CACHE_ENV, str(tmp_path / "no-cache"))  # labelme's names are in its archive
    config.write_text(yaml.safe_dump({"data": {"sample": {"kind": "labelme"}}}))
    with pytest.raises(UserError):
        package_data.archive_path("labelme")
    assert cli.main(["config", "validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.sample.kind: labelme:" in err and "is not in" in err


def test_the_components_keyword_defaults_are_the_config_s():
    """ClassStatsGen defaulted to no weight clip and SegEvaluator to threshold 0 / tolerance 0, where
    `segbalance run` clips to [0.5, 5] and blesses from 0.3 / 0.02: a user's own pipeline got other
    defaults. The components now take theirs from the config sections."""
    import inspect

    from segbalance.components.class_distribution_validator import ClassDistributionValidator
    from segbalance.components.class_stats_beam import StatsOptions
    from segbalance.components.class_stats_gen import ClassStatsGen
    from segbalance.components.seg_evaluator import SegEvaluator
    from segbalance.pipeline.config import DriftConfig, EvaluationConfig, StatsConfig

    def defaults(fn):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items()}

    stats, gen = StatsConfig(), defaults(ClassStatsGen.__init__)
    assert (gen["labeled_policy"], gen["suspect_threshold"], gen["weight_damping"], gen["weight_clip"],
            gen["zero_count_weight"], gen["weight_beta"], gen["weight_enet_k"]) == \
        (stats.labeled_policy, stats.suspect_threshold, stats.damping, stats.clip, stats.zero_count_weight,
         stats.beta, stats.enet_k)
    options = StatsOptions(num_classes=2)
    assert (options.labeled_policy, options.suspect_threshold) == (stats.labeled_policy, stats.suspect_threshold)
    evaluator = defaults(SegEvaluator.__init__)
    assert (evaluator["miou_threshold"], evaluator["tolerance"]) == (EvaluationConfig().miou_threshold,
                                                                     EvaluationConfig().tolerance)
    drift, validator = DriftConfig(), defaults(ClassDistributionValidator.__init__)
    assert {f.name: validator[f.name] for f in dataclasses.fields(drift)} == dataclasses.asdict(drift)


def test_a_loss_that_leaves_out_default_fields_gets_a_note(tmp_path, capsys):
    """training.loss is taken as a whole (other sections merge field by field): a file that changed only
    the terms silently dropped the default's class weights, their decay and marginal CE. Now it is said."""
    import yaml

    from segbalance.trainer.loss_config import default_training_loss
    from segbalance.trainer.typed_config import to_dict

    default = to_dict(default_training_loss())
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"training": {"loss": {"terms": [{"type": "ce"}, {"type": "dice"}]}}}))
    notes = []
    config = load_config(str(path), notes)
    assert config.training.loss.class_weights is None and config.training.loss.missing_labels is None
    (note,) = notes
    for key in ("class_weights", "class_weight_decay_epochs", "missing_labels"):
        assert f"{key}: null (default {default[key]})" in note  # as YAML says it (it printed None)
    assert note.startswith("training.loss replaces the default loss as a whole: ")
    assert note.endswith("give class_weights and missing_labels and class_weight_decay_epochs in training.loss "
                         "to keep the default")
    assert cli.main(["config", "validate", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.err == f"segbalance config validate: note: {note}\n" and "valid" in captured.out
    # every field given (null on purpose, or kept): no note; other sections never get one
    given = {"terms": [{"type": "ce"}], "class_weights": None, "class_weight_decay_epochs": None, "missing_labels": None}
    for body in ({"training": {"loss": given}}, {"training": {"epochs": 3}}, {}):
        path.write_text(yaml.safe_dump(body))
        notes = []
        load_config(str(path), notes)
        assert notes == [], body


def test_the_loss_note_asks_only_for_defaults_the_loss_can_take(tmp_path, capsys):
    """QA 63: a loss without a ce term was told to give missing_labels to keep the default, and
    `config validate` then refused exactly that (no term reads it). Each field the note asks for,
    given as the note says, validates; the others say why they cannot be kept."""
    import yaml

    from segbalance.trainer.loss_config import default_training_loss
    from segbalance.trainer.typed_config import to_dict

    default = to_dict(default_training_loss())
    path = tmp_path / "c.yaml"
    for loss, asked, refused in (
            ({"terms": [{"type": "focal"}, {"type": "tversky"}], "class_weights": "effective_number"},
             ["class_weight_decay_epochs"], {"missing_labels": "only ce terms read it)"}),  # no dice term: no hint
            ({"terms": [{"type": "dice"}]}, ["class_weights", "class_weight_decay_epochs"],
             {"missing_labels": "only ce terms read it; a dice term takes marginal: true)"}),
            ({"terms": [{"type": "dice", "marginal": True}]}, ["class_weights", "class_weight_decay_epochs"],
             {"missing_labels": "only ce terms read it)"}),  # marginal already (QA 65)
            ({"terms": [{"type": "generalized_dice"}]}, [],
             {"missing_labels": "only ce terms", "class_weights": "only ", "class_weight_decay_epochs":
              "it decays class weights, which this loss has none of"}),
            ({"terms": [{"type": "ce"}], "class_weights": None}, ["missing_labels"],
             {"class_weight_decay_epochs": "it decays class weights"})):
        path.write_text(yaml.safe_dump({"training": {"loss": loss}}))
        notes = []
        load_config(str(path), notes)
        (note,) = notes
        for key, why in refused.items():
            assert f"{key}: null (default {default[key]}: {why}" in note, note
        assert ("give " + " and ".join(asked) + " in training.loss to keep the default" in note) == bool(asked), note
        path.write_text(yaml.safe_dump({"training": {"loss": {**loss, **{k: default[k] for k in asked}}}}))
        notes = []
        load_config(str(path), notes)  # what the note asks for is valid ...
        assert notes == [] or all("give" not in n for n in notes), notes  # ... and asked for no more
        assert cli.main(["config", "validate", str(path)]) == 0, capsys.readouterr().err


def test_names_unlike_the_sample_s_are_refused_by_run_and_a_note_elsewhere(tmp_path, capsys):
    """QA 63: `run` without data.dir wrote the sample data, then refused the names; it now refuses them first.
    QA 65: `config validate` and `schedule --config` refused them too, though such a config is for --data, a
    data.dir given later, or compile-kfp (whose pipeline reads PIPELINE_ROOT/data): a note there."""
    config = tmp_path / "few.yaml"
    config.write_text("classes: {names: [a, b]}\n")
    message = "classes.names: ['a', 'b'] are not the classes of the shapes sample data"
    assert cli.main(["run", "--config", str(config), "--output-dir", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert cli.main(["config", "validate", str(config)]) == 0
    captured = capsys.readouterr()
    assert "valid (2 classes" in captured.out and f"note: {message}" in captured.err
    assert "(a local run without data.dir or --data refuses it)" in captured.err
    assert cli.main(["schedule", "--cron", "0 3 * * 1", "--config", str(config), "--output-dir",
                     str(tmp_path / "sched")]) == 0
    assert message not in capsys.readouterr().err
    # with --data the sample's names do not matter
    data = sample_data.write_sample_data("shapes", tmp_path / "raw", num_images=2, size=16)
    (data / "classes.json").unlink()  # the names come from the config
    assert load_config(str(config), [], sample_data.sample_class_names, **{"data.dir": str(data)}).num_classes == 2


def test_config_validate_notes_a_backbone_weights_file_that_is_not_there(tmp_path, capsys):
    """`run` refused it and `config validate` said valid without a word; it now says so in a note (a
    config compiled for a cluster may name a file that is only there, so it is not an error)."""
    import yaml

    from segbalance.pipeline import cli

    config = tmp_path / "c.yaml"
    missing = tmp_path / "missing.weights.h5"
    config.write_text(yaml.safe_dump({"training": {"backbone": "MobileNetV2", "backbone_weights": str(missing)}}))
    assert cli.main(["config", "validate", str(config)]) == 0
    captured = capsys.readouterr()
    assert f"note: training.backbone_weights: {missing} is not a file" in captured.err
    assert "`segbalance run` here refuses it" in captured.err and "valid" in captured.out
    missing.write_bytes(b"weights")
    assert cli.main(["config", "validate", str(config)]) == 0
    assert "note" not in capsys.readouterr().err
