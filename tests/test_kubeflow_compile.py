"""`segbalance compile-kfp`: the compiled JSON is a KFP PipelineSpec holding every node of the
DAG with the image set; bad input fails before compiling; the Dockerfile installs the package."""
import importlib
import json
from pathlib import Path

import pytest
import yaml

from segbalance.kubeflow.runner import CompileError, build_pipeline, compile_pipeline, fix_custom_type_resolver_queries
from segbalance.pipeline import cli
from segbalance.pipeline.config import config_from_dict
from segbalance.pipeline.dag import component_ids
from tests.kubeflow_inputs import IMAGE, TINY, compile_into, write_span_data

ENTRYPOINT = ["python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]


@pytest.fixture(scope="module")
def span_data(tmp_path_factory):
    return write_span_data(tmp_path_factory.mktemp("kfp_compile"))


@pytest.fixture(scope="module")
def compiled(span_data):
    return compile_into(span_data)


def test_compiled_json_is_a_pipeline_spec_with_every_component(span_data, compiled):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    path, spec = compiled
    assert json.loads(path.read_text()) == spec
    proto = json_format.ParseDict(spec["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())
    assert proto.pipeline_info.name == "segbalance"
    tasks = proto.root.dag.tasks
    # deploymentSpec is a Struct in PipelineSpec; its schema is PipelineDeploymentConfig
    deployment = json_format.ParseDict(spec["pipelineSpec"]["deploymentSpec"],
                                       pipeline_spec_pb2.PipelineDeploymentConfig())
    config = config_from_dict({**TINY, "data": {"dir": str(span_data / "data")}})
    nodes = build_pipeline(config, str(span_data / "root")).components
    assert sorted(n.id for n in nodes) == sorted(component_ids(with_drift=True))
    for node in nodes:
        if node.id.endswith("resolver"):  # resolvers compile into query tasks, no container
            assert any(t.startswith(node.id) for t in tasks), node.id
            continue
        assert node.id in tasks, node.id
        executor = deployment.executors[proto.components[tasks[node.id].component_ref.name].executor_label]
        container = executor.container
        assert container.image == IMAGE, node.id
        assert list(container.command) == ENTRYPOINT, node.id
        class_path = container.args[list(container.args).index("--executor_class_path") + 1]
        module, name = class_path.rsplit(".", 1)
        assert getattr(importlib.import_module(module), name) is node.executor_spec.executor_class, node.id
    # the drift gate is wired: previous ClassStats -> validator -> evaluator (blessing) and report
    assert {"ClassStatsGen", "latest_class_stats_resolver"} <= set(tasks["ClassDistributionValidator"].dependent_tasks)
    assert "ClassDistributionValidator" in tasks["SegEvaluator"].dependent_tasks
    assert tasks["SegEvaluator"].inputs.artifacts["drift_report"].task_output_artifact.producer_task == \
        "ClassDistributionValidator"
    assert "preCacheCheck" in json.dumps(spec["pipelineSpec"]["deploymentSpec"]["executors"]["ImportExampleGen_executor"])


def test_latest_class_stats_query_asks_for_class_stats(compiled):
    _, spec = compiled
    query = spec["pipelineSpec"]["deploymentSpec"]["executors"]["latest_class_stats_resolver_executor"]
    assert query["resolver"]["outputArtifactQueries"]["class_stats"]["filter"] == \
        'schema_title="segbalance.ClassStats" AND state=LIVE'
    # the standard-type queries TFX writes are left alone
    blessing = spec["pipelineSpec"]["deploymentSpec"]["executors"][
        "latest_blessed_model_resolver-model-blessing-resolver_executor"]
    assert blessing["resolver"]["outputArtifactQueries"]["model_blessing"]["filter"].startswith(
        'schema_title="tfx.ModelBlessing" AND state=LIVE')
    assert fix_custom_type_resolver_queries(spec["pipelineSpec"]) == []  # already fixed: nothing to do


@pytest.mark.parametrize("change, message", [
    ({"image": ""}, "no container image"),
    ({"image": None}, "no container image"),
    ({"image": "Not An Image!"}, "does not look like a container image"),
    ({"pipeline_root": "relative/root"}, "neither a URI"),
    ({"span": 7}, "span 7 does not exist"),
])
def test_bad_inputs_fail_before_compiling(span_data, change, message):
    out = span_data / "bad.json"
    with pytest.raises(CompileError, match=message):
        compile_into(span_data, name="bad.json", **change)
    assert not out.exists()


def test_a_span_window_is_refused_rather_than_compiled_as_the_latest_span(span_data):
    from segbalance.kubeflow.runner import compile_pipeline
    from segbalance.pipeline.config import config_from_dict
    from tests.kubeflow_inputs import TINY

    config = config_from_dict({**TINY, "data": {"dir": str(span_data / "data"), "num_spans": 2}})
    with pytest.raises(CompileError, match="data.num_spans is 2, but a compiled pipeline trains on one span"):
        compile_pipeline(config, str(span_data / "window.json"), "gcr.io/example/segbalance:0.1", str(span_data / "r"))
    assert not (span_data / "window.json").exists()


def test_a_folder_without_spans_is_refused(tmp_path):
    from segbalance.pipeline.config import ConfigError

    (tmp_path / "data").mkdir()
    with pytest.raises(ConfigError, match="no Span-N/ folders"):
        compile_into(tmp_path)
    with pytest.raises(CompileError, match="no Span-N folders"):  # the check when the config is built in code
        from segbalance.kubeflow.runner import check_span
        check_span(str(tmp_path / "data"), None)


@pytest.mark.parametrize("name", ["Bad_Name", "-leading-dash", "has space", "x" * 129, "", "name\n"])
def test_invalid_pipeline_names_are_refused(span_data, name):
    config = config_from_dict({"data": {"dir": str(span_data / "data")}})
    config.name = name
    with pytest.raises(CompileError, match="not valid for KFP"):
        compile_pipeline(config, str(span_data / "x.json"), IMAGE, "gs://bucket/root")


def test_compile_kfp_cli(span_data, capsys):
    cfg = span_data / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "data": {"dir": str(span_data / "data")}}))
    out = span_data / "cli.json"
    assert cli.main(["compile-kfp", "--output", str(out), "--image", IMAGE,
                     "--pipeline-root", "gs://bucket/segbalance", "--config", str(cfg)]) == 0
    assert f"wrote {out} (14 tasks" in capsys.readouterr().out
    assert json.loads(out.read_text())["runtimeConfig"]["gcsOutputDirectory"] == "gs://bucket/segbalance"
    assert cli.main(["compile-kfp", "--output", str(span_data / "cli2.json"), "--pipeline-root", "gs://b",
                     "--config", str(cfg), "--image", ""]) == 2
    assert "no container image" in capsys.readouterr().err
    assert cli.main(["compile-kfp", "--output", str(span_data / "cli3.json"), "--pipeline-root", "gs://b",
                     "--config", str(cfg), "--image", IMAGE, "--span", "3"]) == 2
    assert "span 3 does not exist" in capsys.readouterr().err and not (span_data / "cli3.json").exists()
    assert cli.main(["compile-kfp", "--output", str(span_data / "cli4.json"), "--pipeline-root", "gs://b",
                     "--config", str(cfg), "--image", IMAGE, "--span", "-1"]) == 2
    assert "--span -1: spans are numbered from 0" in capsys.readouterr().err


def test_dockerfile_installs_the_package_with_the_pins():
    root = Path(__file__).resolve().parents[1]
    text = (root / "kubeflow" / "Dockerfile").read_text()
    assert "FROM python:3.11" in text
    assert "COPY constraints.txt" in text and "--ignore-requires-python -c constraints.txt ." in text
    for package in ("components", "trainer", "pipeline", "kubeflow"):
        assert f"COPY {package}/ {package}/" in text
    # the image's build checks the installed namespace: the module code and artifact types import
    assert "import segbalance, segbalance.components.artifacts, segbalance.trainer.task, " \
           "segbalance.trainer.preprocessing; segbalance.ClassStats" in text
    makefile = (root / "Makefile").read_text()
    assert "PIP_FLAGS := --ignore-requires-python --disable-pip-version-check -c constraints.txt" in makefile


def test_warm_start_wires_the_latest_blessed_model_into_the_trainer(span_data, tmp_path):
    config = config_from_dict({**TINY, "data": {"dir": str(span_data / "data")},
                               "training": {**TINY.get("training", {}), "warm_start": True}})
    spec = compile_pipeline(config, str(tmp_path / "warm.json"), IMAGE, str(tmp_path / "root"))
    trainer = spec["pipelineSpec"]["root"]["dag"]["tasks"]["SegTrainer"]
    base = trainer["inputs"]["artifacts"]["base_model"]["taskOutputArtifact"]
    assert base["producerTask"].startswith("latest_blessed_model_resolver")
    cold = compile_into(span_data, name="cold.json")[1]
    assert "base_model" not in cold["pipelineSpec"]["root"]["dag"]["tasks"]["SegTrainer"]["inputs"]["artifacts"]


def test_block_training_puts_trainer_evaluator_and_pusher_under_the_drift_condition(span_data, tmp_path):
    spec = compile_into(span_data, name="gated.json", drift={"action": "block_training"})[1]
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    for name in ("SegTrainer", "SegEvaluator", "Pusher"):
        condition = tasks[name]["triggerPolicy"]["condition"]
        assert "blocked" in condition and "ClassDistributionValidator" in json.dumps(tasks[name]), name
        assert "ClassDistributionValidator" in tasks[name]["dependentTasks"], name
    for name in ("Transform", "ClassStatsGen", "DataReport"):
        assert "triggerPolicy" not in tasks[name], name
    plain = compile_into(span_data, name="plain.json")[1]["pipelineSpec"]["root"]["dag"]["tasks"]
    assert "triggerPolicy" not in plain["SegTrainer"]


def test_the_config_s_beam_args_reach_every_compiled_beam_task(span_data, compiled, tmp_path):
    """compile-kfp passed its own Beam options whatever the config said (a Dataflow config
    compiled into DirectRunner tasks without a word); null keeps the per-core default."""
    from segbalance.pipeline.config import KUBEFLOW_BEAM_ARGS

    mine = ["--runner=DataflowRunner", "--project=p", "--region=r", "--temp_location=gs://b/tmp"]
    config = config_from_dict({**TINY, "data": {"dir": str(span_data / "data")}, "beam_args": mine})
    spec = compile_pipeline(config, str(tmp_path / "beam.json"), IMAGE, str(tmp_path / "root"))
    executors = spec["pipelineSpec"]["deploymentSpec"]["executors"]
    text = {name: json.dumps(e) for name, e in executors.items()}
    for name in ("ClassStatsGen_executor", "Transform_executor", "StatisticsGen_executor"):
        assert all(arg in text[name] for arg in mine), name
        assert "direct_running_mode" not in text[name], name
    default = json.dumps(compiled[1]["pipelineSpec"]["deploymentSpec"]["executors"]["ClassStatsGen_executor"])
    assert all(arg in default for arg in KUBEFLOW_BEAM_ARGS) and "DataflowRunner" not in default


def test_a_given_span_compiles_into_a_static_range(tmp_path):
    """`compile-kfp --span N` crashed (AttributeError: StaticRange) on every call."""
    import shutil

    root = write_span_data(tmp_path, num_images=8)
    shutil.copytree(root / "data" / "Span-0", root / "data" / "Span-1")
    for span, expected in ((1, {"start_span_number": 1, "end_span_number": 1}), (0, {})):  # 0: proto defaults
        spec = compile_into(root, span=span, name=f"span{span}.json")[1]
        params = spec["pipelineSpec"]["root"]["dag"]["tasks"]["ImportExampleGen"]["inputs"]["parameters"]
        range_config = json.loads(params["range_config"]["runtimeValue"]["constantValue"]["stringValue"])
        assert range_config == {"static_range": expected}, span
