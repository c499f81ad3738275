"""Every field of the training, classes and stats sections, set to a non-default value in a YAML
config, reaches the typed config that run_fn trains with and ClassStatsGen's options: in the
pipeline LocalDagRunner runs (the compiled IR) and in the compiled KFP spec."""
import dataclasses
import json

import pytest
import yaml

from segbalance.pipeline.config import PipelineConfig, StatsConfig, load_config
from segbalance.trainer.loss_config import LossConfig
from segbalance.trainer.training_config import (PIXEL_WEIGHT_TYPES, Augmentation, ClassesConfig, LearningRateSchedule,
                                                TrainerConfig, TrainingConfig)
from segbalance.trainer.typed_config import from_dict, to_dict

NAMES = ["背景", "Road", "car", "person"]
CLASSES = {"names": NAMES, "ignore_index": 254}
LOSS = {"terms": [{"type": "focal", "weight": 0.5, "gamma": 1.5, "alpha": [0.5, 1, 1, 2]},
                  {"type": "tversky", "alpha": 0.3, "beta": 0.7, "smooth": 2.0},
                  {"type": "ce", "weight": 0.25}],  # the term missing_labels changes
        "class_weights": "enet", "missing_labels": "ignore_predicted", "fn_weights": [1, 2, 1, 1],
        "fp_weights": [1, 1, 3, 1], "low_confidence": {"tau": 0.4, "alpha": 0.2}, "class_weight_decay_epochs": 2}
TRAINING = {
    "image_size": [48, 32], "epochs": 3, "batch_size": 5, "steps_per_epoch": 7, "shuffle_buffer": 99,
    "optimizer": "sgd", "learning_rate": 0.05, "depth": 2, "base_filters": 6, "backbone": "MobileNetV2",
    "lr_schedule": {"type": "polynomial", "warmup_epochs": 0.5, "final_fraction": 0.1, "power": 2.0},
    "momentum": 0.8, "nesterov": True, "weight_decay": 1e-4, "restore_best": False, "early_stopping_patience": 2, "min_epochs": 2,
    "augmentation": {"scale": [0.5, 2.0], "flip_horizontal": False, "flip_vertical": False, "rotate90": True,
                     "brightness": 0.2, "contrast": 0.3},
    "backbone_weights": "/weights/encoder.weights.h5", "freeze_encoder_epochs": 1,
    "loss": LOSS, "pixel_weights": {"type": "unet_border", "w0": 3.0, "sigma": 2.0, "connectivity": 2},
    "devices": ["/cpu:0"], "mixed_precision": True, "jit_compile": True, "seed": 11, "warm_start": True,
    "backup_dir": "/tmp/segbalance-backup",
}
# the plateau schedule's own fields (a schedule refuses another type's fields): the flow runs with each
PLATEAU = {"type": "plateau", "final_fraction": 0.2, "factor": 0.3, "patience": 5}
STATS = {"labeled_policy": "partial", "suspect_threshold": 0.5, "clip": [0.2, 8.0], "damping": "sqrt",
         "zero_count_weight": 0.5, "beta": 0.99, "enet_k": 1.5}
# one non-default value for every parameter of every weight map (the pipeline above carries one of them)
PIXEL_WEIGHTS = {
    "edge": {"image_weight": 0.5, "boundary_weight": 3.0},
    "unet_border": {k: v for k, v in TRAINING["pixel_weights"].items() if k != "type"},
    "intensity_range": {"ranges": [[-1.0, 0.5, 2.0]], "default": 0.5, "channel": 1},
    "feature_extractor": {"model": "/models/extractor.keras", "layer": "conv1", "strength": 2.0, "reduce": "mean_abs"},
}


def fields_of(cls):
    return {f.name for f in dataclasses.fields(cls)}


def test_the_values_cover_every_field_and_differ_from_the_defaults():
    """A field added to the schema must get a value here, or this test fails."""
    for values, cls in ((TRAINING, TrainingConfig), (LOSS, LossConfig), (STATS, StatsConfig),
                        (CLASSES, ClassesConfig), ({**TRAINING["lr_schedule"], **PLATEAU}, LearningRateSchedule),
                        (TRAINING["augmentation"], Augmentation)):
        assert set(values) == fields_of(cls), cls.__name__
    defaults = {**to_dict(TrainingConfig()), "loss": to_dict(LossConfig(terms=[]))}
    for name, value in TRAINING.items():
        assert value != defaults[name], name
    for section, values in (("lr_schedule", TRAINING["lr_schedule"]), ("lr_schedule", PLATEAU),
                            ("augmentation", TRAINING["augmentation"])):  # nested sections: every field differs too
        for name, value in values.items():
            assert value != defaults[section][name], (section, name)
    for name, value in LOSS.items():
        assert value != defaults["loss"][name], name
    for name, value in STATS.items():
        assert value != to_dict(StatsConfig())[name], name
    assert set(PIXEL_WEIGHTS) == set(PIXEL_WEIGHT_TYPES)
    for kind, params in PIXEL_WEIGHTS.items():
        cls = PIXEL_WEIGHT_TYPES[kind]
        assert set(params) == fields_of(cls), kind
        typed = from_dict(TrainingConfig, {"pixel_weights": {"type": kind, **params}}, "training").pixel_weights
        for name, value in params.items():
            default = getattr(cls, name, dataclasses.MISSING)  # a field without a default is required
            assert value != default, (kind, name)
            assert to_dict(typed)[name] == value, (kind, name)


@pytest.fixture(scope="module", params=["polynomial", "plateau"])
def training(request):
    return TRAINING if request.param == "polynomial" else {**TRAINING, "lr_schedule": PLATEAU}


@pytest.fixture(scope="module")
def config(training, tmp_path_factory):
    path = tmp_path_factory.mktemp("flow") / "config.yaml"
    path.write_text(yaml.safe_dump({"name": "flow", "classes": CLASSES, "stats": STATS, "training": training},
                                   allow_unicode=True))
    return load_config(str(path))


def check_trainer_config(custom_config: dict, training: dict):
    """What run_fn rebuilds from the custom_config a runner hands the SegTrainer executor."""
    from segbalance.trainer import task

    expected = from_dict(TrainerConfig, {"classes": CLASSES, "training": training})
    typed, extras = task.trainer_config({**custom_config, "class_stats_uri": "/stats"})
    assert typed == expected and extras == {"class_stats_uri": "/stats"}
    for name, value in training.items():  # field by field, so a failure names the field
        assert to_dict(getattr(typed.training, name)) == to_dict(getattr(expected.training, name)), name
    assert to_dict(typed.training.lr_schedule) == {**to_dict(LearningRateSchedule()), **training["lr_schedule"]}
    assert typed.classes.names == NAMES and typed.classes.ignore_index == 254


def check_stats_options(exec_properties: dict):
    from segbalance.components.class_stats_gen import stats_options

    options = stats_options(exec_properties)
    assert options.labeled_policy == STATS["labeled_policy"]
    assert options.suspect_threshold == STATS["suspect_threshold"]
    assert options.weight_options == {"clip": tuple(STATS["clip"]), "damping": "sqrt", "zero_count_weight": 0.5,
                                      "beta": 0.99, "enet_k": 1.5}
    assert options.ignore_index == 254 and options.class_names == NAMES and options.num_classes == 4


def test_every_field_reaches_run_fn_and_class_stats_gen_under_local_dag_runner(config, training, tmp_path):
    """The intermediate representation LocalDagRunner executes: each node's execution properties."""
    from tfx.dsl.compiler import compiler

    from segbalance.pipeline.dag import create_pipeline

    pipeline = create_pipeline(config, examples_dir=str(tmp_path / "data"), pipeline_root=str(tmp_path / "root"),
                               serving_model_dir=str(tmp_path / "serving"))
    ir = compiler.Compiler().compile(pipeline)
    nodes = {n.pipeline_node.node_info.id: n.pipeline_node for n in ir.nodes}

    def properties(node_id):
        params = nodes[node_id].parameters.parameters
        return {k: getattr(v.field_value, v.field_value.WhichOneof("value")) for k, v in params.items()}

    check_trainer_config(json.loads(properties("SegTrainer")["custom_config"]), training)
    # Transform: only what preprocessing_fn reads (the same typed object, defaults elsewhere)
    from segbalance.trainer.training_config import TrainerConfig

    transform, _ = TrainerConfig.from_custom_config(json.loads(properties("Transform")["custom_config"]))
    trainer, _ = TrainerConfig.from_custom_config(json.loads(properties("SegTrainer")["custom_config"]))
    assert transform.classes == trainer.classes
    for name in ("image_size", "backbone", "depth"):
        assert getattr(transform.training, name) == getattr(trainer.training, name), name
    check_stats_options(properties("ClassStatsGen"))
    evaluator = properties("SegEvaluator")
    assert evaluator["ignore_index"] == 254 and json.loads(evaluator["class_names"]) == NAMES


def test_every_field_reaches_run_fn_and_class_stats_gen_in_the_kfp_spec(config, training, tmp_path):
    from segbalance.kubeflow.runner import compile_pipeline

    config = dataclasses.replace(config, data=dataclasses.replace(config.data, dir="gs://bucket/flow/data"))
    job = compile_pipeline(config, str(tmp_path / "flow.json"), "gcr.io/example/segbalance:0.1", "gs://bucket/flow")
    tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]

    def parameters(task):
        out = {}
        for name, value in tasks[task]["inputs"]["parameters"].items():
            constant = value["runtimeValue"]["constant"] if "constant" in value["runtimeValue"] else \
                value["runtimeValue"]["constantValue"]
            out[name] = next(iter(constant.values())) if isinstance(constant, dict) else constant
        return out

    check_trainer_config(json.loads(parameters("SegTrainer")["custom_config"]), training)
    check_stats_options(parameters("ClassStatsGen"))


def test_config_show_prints_what_validate_and_run_read(config, tmp_path, capsys):
    from segbalance.pipeline import cli

    source = tmp_path / "in.yaml"
    source.write_text(yaml.safe_dump({"classes": CLASSES, "stats": STATS, "training": TRAINING}, allow_unicode=True))
    assert cli.main(["config", "show", "--config", str(source)]) == 0
    shown = capsys.readouterr().out
    assert yaml.safe_load(shown)["training"]["loss"]["terms"][1] == {"type": "tversky", "weight": 1.0, "alpha": 0.3,
                                                                      "beta": 0.7, "smooth": 2.0}
    (tmp_path / "shown.yaml").write_text(shown)
    assert cli.main(["config", "validate", str(tmp_path / "shown.yaml")]) == 0
    assert "valid (4 classes, 3 epochs, 3 loss term(s))" in capsys.readouterr().out
    assert load_config(str(tmp_path / "shown.yaml")) == load_config(str(source))
    assert cli.main(["config", "show"]) == 0
    assert load_config() == from_dict(PipelineConfig, yaml.safe_load(capsys.readouterr().out))  # the defaults
    (tmp_path / "bad.yaml").write_text("training:\n  image_size: [36, 36]\n")
    assert cli.main(["config", "validate", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("segbalance config validate: error: training.image_size: [36, 36] must be divisible by 8")


def test_transform_s_config_ignores_what_preprocessing_fn_does_not_read():
    """Any training change (seed, loss, epochs) changed Transform's custom_config, so its cache key:
    a re-run with a new seed re-ran Transform. Only what preprocessing_fn reads may change it."""
    from segbalance.pipeline.config import config_from_dict
    from segbalance.pipeline.dag import transform_custom_config

    base = transform_custom_config(config_from_dict({}))
    for change in ({"seed": 7}, {"epochs": 3}, {"loss": {"terms": [{"type": "focal"}]}}, {"learning_rate": 0.1}):
        assert transform_custom_config(config_from_dict({"training": change})) == base, change
    for change in ({"image_size": [32, 32]}, {"backbone": "MobileNetV2"}):
        assert transform_custom_config(config_from_dict({"training": change})) != base, change
    assert transform_custom_config(config_from_dict({"classes": {"ignore_index": 254}})) != base
