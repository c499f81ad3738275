"""Kubeflow: compiled spec, input errors, compiled tasks run through the KFP entrypoint, schedule, drift."""
import json
import os
from pathlib import Path

import pytest
import yaml

from components import drift_metrics
from kubeflow import local_launcher, schedule
from kubeflow.runner import CompileError, compile_pipeline
from pipeline import cli, ingest, sample_data
from pipeline.config import config_from_dict
from pipeline.dag import component_ids

IMAGE = "gcr.io/example/segbalance:0.1"
TINY = {"data": {"sample": {"size": 32}},
        "training": {"image_size": [32, 32], "epochs": 1, "batch_size": 8, "depth": 2, "base_filters": 8}}


@pytest.fixture(scope="module")
def span_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("kfp")
    raw = sample_data.write_sample_data("shapes", root / "raw", num_images=24, size=32, drop_fraction=0.3)
    ingest.ingest(raw / "images", raw / "masks", root / "data", span=0,
                  options=ingest.IngestOptions(num_classes=4, labeled=ingest.load_labeled(raw / "labeled.json", 4)))
    return root


def _compile(span_data, **kwargs):
    config = config_from_dict({**TINY, "data": {"dir": str(span_data / "data")}})
    out = span_data / "pipeline.json"
    spec = compile_pipeline(config, str(out), kwargs.get("image", IMAGE),
                            kwargs.get("root", str(span_data / "root")), span=kwargs.get("span"))
    return out, spec


def test_compiled_json_is_a_pipeline_spec_with_every_component(span_data):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    path, spec = _compile(span_data)
    proto = json_format.ParseDict(spec["pipelineSpec"], pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)
    tasks = set(proto.root.dag.tasks)
    for node in component_ids(with_drift=True):
        if node.endswith("resolver"):
            assert any(t.startswith(node) for t in tasks), node
        else:
            assert node in tasks, node
    executors = spec["pipelineSpec"]["deploymentSpec"]["executors"]
    images = {name: e["container"]["image"] for name, e in executors.items() if "container" in e}
    assert images and set(images.values()) == {IMAGE}
    assert "components.class_stats_gen.ClassStatsGenExecutor" in json.dumps(executors)
    assert spec["pipelineSpec"]["pipelineInfo"]["name"] == "segbalance"


@pytest.mark.parametrize("change, message", [
    ({"image": ""}, "no container image"),
    ({"image": "Not An Image!"}, "does not look like a container image"),
    ({"root": "relative/root"}, "neither a URI"),
    ({"span": 7}, "span 7 does not exist"),
])
def test_bad_inputs_fail_before_compiling(span_data, change, message):
    with pytest.raises(CompileError, match=message):
        _compile(span_data, **change)


def test_invalid_pipeline_name_and_cli(span_data, capsys):
    config = config_from_dict({"data": {"dir": str(span_data / "data")}})
    config.name = "Bad_Name"
    with pytest.raises(CompileError, match="not valid for KFP"):
        compile_pipeline(config, str(span_data / "x.json"), IMAGE, "gs://bucket/root")
    cfg = span_data / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "data": {"dir": str(span_data / "data")}}))
    assert cli.main(["compile-kfp", "--output", str(span_data / "cli.json"), "--image", IMAGE,
                     "--pipeline-root", "gs://bucket/segbalance", "--config", str(cfg)]) == 0
    assert "wrote" in capsys.readouterr().out and (span_data / "cli.json").is_file()
    assert cli.main(["compile-kfp", "--output", str(span_data / "cli2.json"), "--pipeline-root", "gs://b",
                     "--config", str(cfg), "--image", ""]) == 2
    assert "no container image" in capsys.readouterr().err


@pytest.mark.slow
def test_compiled_tasks_run_through_the_kfp_entrypoint(span_data):
    path, _ = _compile(span_data)
    root = span_data / "launcher_root"
    produced = local_launcher.run_compiled_tasks(
        str(path), ["ImportExampleGen", "StatisticsGen", "SchemaGen", "Transform", "ClassStatsGen", "SegTrainer"],
        str(root), beam_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"])
    examples = produced["ImportExampleGen"]["examples"]
    assert examples["metadata"].get("span") == 0 or "span" in json.dumps(examples)
    stats = json.loads((Path(produced["ClassStatsGen"]["class_stats"]["uri"]) / "class_stats.json").read_text())
    assert stats["num_records"] > 0 and stats["num_classes"] == 4
    model = Path(produced["SegTrainer"]["model"]["uri"])
    assert (model / "Format-Serving" / "saved_model.pb").is_file()
    assert (model / "Format-Serving" / "model.keras").is_file()


class FakeKfpClient:
    """Records what segbalance asks of a kfp.Client (no network, no mock of our code)."""

    def __init__(self, host):
        self.host, self.calls = host, []

    def get_experiment(self, experiment_name):
        self.calls.append(("get_experiment", experiment_name))
        raise ValueError("experiment not found")

    def create_experiment(self, name):
        self.calls.append(("create_experiment", name))
        return type("Experiment", (), {"experiment_id": "exp-123"})()

    def create_recurring_run(self, **request):
        self.calls.append(("create_recurring_run", request))
        return type("RecurringRun", (), {"recurring_run_id": "rr-1"})()


def test_schedule_creates_a_recurring_run_through_the_client(tmp_path, capsys):
    package = tmp_path / "pipeline.json"
    package.write_text("{}")
    clients = []

    def factory(host):
        clients.append(FakeKfpClient(host))
        return clients[-1]

    args = cli.build_parser().parse_args(["schedule", "--cron", "0 3 * * 1", "--kfp-host", "http://kfp.local",
                                          "--package", str(package)])
    assert schedule._main(args, client_factory=factory) == 0
    (client,) = clients
    assert client.host == "http://kfp.local"
    name, request = client.calls[-1]
    assert name == "create_recurring_run"
    assert request["experiment_id"] == "exp-123" and request["cron_expression"] == "0 0 3 * * 1"
    assert request["pipeline_package_path"] == str(package) and request["max_concurrency"] == 1
    assert "rr-1" in capsys.readouterr().out


def test_schedule_without_host_prints_definitions_and_checks_cron(capsys):
    assert cli.main(["schedule", "--cron", "30 2 * * 1,4", "--data", "/data/spans"]) == 0
    out = capsys.readouterr().out
    assert '"cron_expression": "0 30 2 * * 1,4"' in out
    assert "30 2 * * 1,4 cd " in out and "segbalance run --data /data/spans" in out
    assert "OnCalendar=Mon,Thu *-*-* 02:30:00" in out
    assert cli.main(["schedule", "--cron", "0 25 * * *"]) == 2
    assert "hour 25 is outside 0-23" in capsys.readouterr().err
    assert cli.main(["schedule", "--cron", "daily"]) == 2
    with pytest.raises(schedule.ScheduleError, match="does not exist"):
        schedule.create_recurring_run(FakeKfpClient("h"), "/nope.json", "0 3 * * 1", "e", "j")


def test_drift_metrics_hand_case():
    base = {"class_names": ["bg", "a", "b"], "pixel_counts": [50, 50, 0], "num_records": 10, "images_with_missing": 1}
    same = drift_metrics.compare(base, base, {"js_divergence": 0.01, "max_abs_change": 0.1, "missing_rate_change": 0.1})
    assert same["status"] == "ok" and same["js_divergence"] == 0.0 and same["max_abs_change"] == 0.0
    shifted = {"class_names": ["bg", "a", "b"], "pixel_counts": [50, 0, 50], "num_records": 10,
               "images_with_missing": 6}
    result = drift_metrics.compare(shifted, base, {"js_divergence": 0.01, "max_abs_change": 0.1,
                                                   "missing_rate_change": 0.1})
    # p = [.5, 0, .5], q = [.5, .5, 0], m = [.5, .25, .25]: JS = 0.5 * (.5 log2 2) * 2 = 0.5 bits
    assert result["js_divergence"] == pytest.approx(0.5)
    assert result["max_abs_change"] == pytest.approx(0.5) and result["new_classes"] == ["b"]
    assert result["missing_rate_change"] == pytest.approx(0.5)
    assert result["status"] == "blocked" and len(result["anomalies"]) == 4
    warned = drift_metrics.compare(shifted, base, {"js_divergence": 1, "max_abs_change": 1,
                                                   "missing_rate_change": 1}, action="warn")
    assert warned["status"] == "warned"  # the new class alone is an anomaly
    first = drift_metrics.compare(base, None, {"js_divergence": 0.01, "max_abs_change": 0.1,
                                               "missing_rate_change": 0.1})
    assert first["status"] == "ok" and "first run" in first["note"]


def test_dockerfile_installs_the_package_with_the_pins():
    text = (Path(__file__).resolve().parents[1] / "kubeflow" / "Dockerfile").read_text()
    assert "FROM python:3.11" in text and "-c constraints.txt ." in text and "import components" in text
    assert os.path.basename(local_launcher.__file__) == "local_launcher.py"
