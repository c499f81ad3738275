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
    # the previous run's DriftReport, for a re-run on the same data (the gate keeps that run's baseline)
    assert query["resolver"]["outputArtifactQueries"]["drift_report"]["filter"] == \
        'schema_title="segbalance.DriftReport" AND state=LIVE'
    gate = spec["pipelineSpec"]["root"]["dag"]["tasks"]["ClassDistributionValidator"]["inputs"]["artifacts"]
    assert gate["previous_report"]["taskOutputArtifact"] == {"producerTask": "latest_class_stats_resolver",
                                                             "outputArtifactKey": "drift_report"}
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
    ({"pipeline_root": "ftp://host/root"}, "not ftp://"),  # QA 69: compiled
    ({"span": 2 ** 31}, "spans are numbered from 0 to 2147483647"),  # TFX's RangeConfig holds int32
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


def test_a_yaml_output_is_the_package_kfp_client_submits(span_data, tmp_path, monkeypatch, capsys):
    """compile-kfp wrote only the Vertex AI PipelineJob JSON, which kfp.Client refuses (it takes a
    YAML PipelineSpec): README's kfp submit and `schedule --kfp-host` could not work. A relative
    data.dir was compiled as it was and found nothing in the task's working folder."""
    from kfp.client import client as kfp_client

    from segbalance.kubeflow.runner import PACKAGE_HEADER

    monkeypatch.chdir(span_data)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "data": {"dir": "data", "reference_masks_dir": "raw/masks_full",
                                                    "sample": {"num_images": 99}}}))
    out = tmp_path / "pipeline.yaml"
    assert cli.main(["compile-kfp", "--output", str(out), "--image", IMAGE, "--pipeline-root", "gs://b/root",
                     "--config", str(cfg)]) == 0
    printed = capsys.readouterr().out
    assert f"compile-kfp: data.dir: data -> {span_data / 'data'} (relative to this folder" in printed
    assert f"data.reference_masks_dir: raw/masks_full -> {span_data / 'raw' / 'masks_full'}" in printed
    assert "data.sample" not in printed  # data.dir is set: nothing of the sample section is dropped
    text = out.read_text()
    assert text.startswith(PACKAGE_HEADER)
    doc = kfp_client._extract_pipeline_yaml(str(out))  # what kfp.Client.create_run_from_pipeline_package reads
    assert doc.pipeline_spec.pipeline_info.name == "segbalance" and doc.pipeline_spec.default_pipeline_root == \
        "gs://b/root"
    assert len(doc.pipeline_spec.root.dag.tasks) == 14
    parameters = json.dumps(yaml.safe_load(text)["root"]["dag"]["tasks"])
    assert str(span_data / "data") in parameters and str(span_data / "raw" / "masks_full") in parameters
    # the same spec as the job JSON's (the local launcher reads either)
    from segbalance.kubeflow import local_launcher

    assert cli.main(["compile-kfp", "--output", str(tmp_path / "job.json"), "--image", IMAGE, "--pipeline-root",
                     "gs://b/root", "--config", str(cfg)]) == 0
    package = local_launcher.load_spec(str(out))
    assert package.pop("defaultPipelineRoot") == "gs://b/root"
    assert package == local_launcher.load_spec(str(tmp_path / "job.json"))
    # compiling again over its own package is fine; a YAML file of the user's is not overwritten
    assert cli.main(["compile-kfp", "--output", str(out), "--image", IMAGE, "--pipeline-root", "gs://b/root",
                     "--config", str(cfg)]) == 0
    # the pipeline root from the environment, as the image (issue 8: [--pipeline-root URI]; QA 96 L2: required)
    monkeypatch.setenv("SEGBALANCE_PIPELINE_ROOT", "gs://b/from-env")
    assert cli.main(["compile-kfp", "--output", str(out), "--image", IMAGE, "--config", str(cfg)]) == 0
    assert kfp_client._extract_pipeline_yaml(str(out)).pipeline_spec.default_pipeline_root == "gs://b/from-env"
    monkeypatch.delenv("SEGBALANCE_PIPELINE_ROOT")
    assert cli.main(["compile-kfp", "--output", str(out), "--image", IMAGE, "--config", str(cfg)]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "no --pipeline-root: give a bucket URI such as gs://my-bucket/segbalance, or set $SEGBALANCE_PIPELINE_ROOT")
    (tmp_path / "mine.yaml").write_text("my: notes\n")
    assert cli.main(["compile-kfp", "--output", str(tmp_path / "mine.yaml"), "--image", IMAGE, "--pipeline-root",
                     "gs://b/root", "--config", str(cfg)]) == 2
    assert (tmp_path / "mine.yaml").read_text() == "my: notes\n"


def test_sample_options_are_said_to_be_left_out(tmp_path, capsys):
    config = config_from_dict({**TINY, "data": {"sample": {"num_images": 99}}})
    compile_pipeline(config, str(tmp_path / "p.json"), IMAGE, str(tmp_path / "root"))
    out = capsys.readouterr().out
    assert (f"compile-kfp: data.sample is for local runs and not compiled; the pipeline reads the spans in "
            f"{tmp_path / 'root'}/data") in out
    assert "class names" not in out  # shapes: the default names are its own
    # QA 63: without data.dir and data.sample, where the pipeline reads was nowhere said
    compile_pipeline(config_from_dict({**TINY, "data": {}}), str(tmp_path / "p.json"), IMAGE, str(tmp_path / "root"))
    out = capsys.readouterr().out
    assert (f"compile-kfp: no data.dir in the config: the pipeline reads the spans in {tmp_path / 'root'}/data "
            f"(segbalance ingest --span N)") in out
    assert "output_dir" not in out  # left at its default: nothing to say
    compile_pipeline(config_from_dict({**TINY, "output_dir": "runs/mine"}), str(tmp_path / "p.json"), IMAGE,
                     str(tmp_path / "root"))
    assert (f"compile-kfp: note: output_dir (runs/mine) is for local runs and not compiled: the pipeline writes under "
            f"--pipeline-root, its pushed models in {tmp_path / 'root'}/serving_model") in capsys.readouterr().out
    # QA 27: a real kind's class names are not compiled either (config validate shows them; the spec has 4)
    config = config_from_dict({**TINY, "data": {"sample": {"kind": "voc"}}})
    compile_pipeline(config, str(tmp_path / "p.json"), IMAGE, str(tmp_path / "root"))
    assert ("compile-kfp: note: nor are the voc sample's class names: the pipeline trains classes.names, here the "
            "4 defaults (background, ellipse, rectangle, circle); set classes.names") in capsys.readouterr().out


@pytest.mark.parametrize("image, valid", [
    ("gcr.io/my-project/segbalance:0.1", True), ("localhost:5000/seg", True), ("seg", True),
    ("a__b/c", True), ("registry.example.com:443/team/seg-balance_x:v1.2-rc.1", True),
    ("gcr.io/p/seg@sha256:" + "a" * 64, True), ("gcr.io/p/seg:1@sha256:" + "0" * 64, True),
    ("gcr.io/My-Project/seg:1", False), ("gcr.io/p/SEG:1", False), ("gcr.io/p/seg:1:2", False),
    ("Not An Image!", False), ("gcr.io/p/seg:" + "t" * 129, False), ("gcr.io//seg", False), ("seg-", False),
])
def test_image_references_follow_docker_s_grammar(image, valid):
    from segbalance.kubeflow.runner import IMAGE_PATTERN

    assert bool(IMAGE_PATTERN.match(image)) is valid


@pytest.mark.parametrize("root", ["gs://bucket/root", "s3://bucket/root", "minio://mlpipeline/root", "/mnt/root"])
def test_the_stores_kubeflow_keeps_artifacts_in_are_pipeline_roots(root):
    from segbalance.kubeflow.runner import check_pipeline_root

    check_pipeline_root(root)  # KFP's Go CDK: GCS, S3 and its own MinIO; or a path its pods mount


def test_an_output_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    from segbalance.kubeflow import runner

    with pytest.raises(CompileError, match=r"--output /proc/segbalance_test.json: cannot write it \("):
        runner.write_compiled({"pipelineSpec": {}, "runtimeConfig": {}}, "/proc/segbalance_test.json")
    monkeypatch.setattr(runner.os, "access", lambda path, mode: False)  # a read-only folder (tests run as root)
    with pytest.raises(CompileError, match=f"--output {tmp_path}/new/p.json: {tmp_path} is not writable"):
        runner.check_writable(str(tmp_path / "new" / "p.json"))


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
    assert len(tasks) == 15 and "DataReportBlocked" in tasks  # one more node than without block_training
    for name in ("SegTrainer", "SegEvaluator", "Pusher", "DataReport"):
        condition = tasks[name]["triggerPolicy"]["condition"]
        assert "blocked" in condition and condition.rstrip(")").endswith("== 0.0"), (name, condition)
        assert "ClassDistributionValidator" in tasks[name]["dependentTasks"], name
    # a blocked run's report: the opposite condition, and no input from a node the gate skips
    blocked = tasks["DataReportBlocked"]
    assert blocked["triggerPolicy"]["condition"].rstrip(")").endswith("== 1.0"), blocked["triggerPolicy"]
    assert not {"SegTrainer", "SegEvaluator", "Pusher"} & set(blocked["dependentTasks"])
    for name in ("Transform", "ClassStatsGen"):
        assert "triggerPolicy" not in tasks[name], name
    # every condition reads an input its task has (TFX wrote '_ClassDistributionValidator.drift_report' for
    # the tasks that consume that channel under their own name, and gave them no such input)
    import re

    for name, task in tasks.items():
        for key in re.findall(r"inputs\.artifacts\['([^']+)'\]", task.get("triggerPolicy", {}).get("condition", "")):
            assert key in task["inputs"]["artifacts"], (name, key)
    assert "inputs.artifacts['drift']" in blocked["triggerPolicy"]["condition"]
    assert "inputs.artifacts['drift_report']" in tasks["SegEvaluator"]["triggerPolicy"]["condition"]
    from segbalance.kubeflow.runner import fix_condition_input_keys

    assert fix_condition_input_keys(spec["pipelineSpec"]) == []  # already fixed: nothing to do
    plain = compile_into(span_data, name="plain.json")[1]["pipelineSpec"]["root"]["dag"]["tasks"]
    assert "triggerPolicy" not in plain["SegTrainer"] and "triggerPolicy" not in plain["DataReport"]
    assert "DataReportBlocked" not in plain


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


def test_every_drift_field_reaches_the_gate_in_the_kfp_spec(span_data, tmp_path):
    """The drift section's every field, set off its default, is a parameter of the compiled gate."""
    import dataclasses

    from segbalance.pipeline.config import DriftConfig

    values = {"js_divergence": 0.07, "max_abs_change": 0.15, "missing_rate_change": 0.3,
              "vanished_class_chance": 0.002, "significance": 0.02, "action": "warn", "new_class_chance": 0.003,
              "baseline_min_share": 0.25}
    assert set(values) == {f.name for f in dataclasses.fields(DriftConfig)}
    assert all(values[k] != v for k, v in dataclasses.asdict(DriftConfig()).items())
    spec = compile_into(span_data, name="drift_fields.json", drift=values)[1]
    parameters = spec["pipelineSpec"]["root"]["dag"]["tasks"]["ClassDistributionValidator"]["inputs"]["parameters"]
    compiled = {k: next(iter(parameters[k]["runtimeValue"]["constantValue"].values())) for k in values}
    assert compiled == values
