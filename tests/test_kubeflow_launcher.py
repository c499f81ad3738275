"""The compiled tasks run locally through TFX's KFP v2 container entrypoint (kubeflow/local_launcher.py)."""
import json
import shutil
from pathlib import Path

import pytest

from segbalance.kubeflow import local_launcher
from tests.kubeflow_inputs import compile_into, write_span_data

CHAIN = ["ImportExampleGen", "StatisticsGen", "SchemaGen", "ClassStatsGen", "Transform", "SegTrainer"]


def test_task_order_follows_dependencies_and_names_missing_tasks():
    tasks = {"A": {}, "B": {"dependentTasks": ["A"]}, "C": {"dependentTasks": ["B", "A"]}}
    assert local_launcher.topological(tasks, ["C", "B", "A"]) == ["A", "B", "C"]
    assert local_launcher.topological(tasks, ["C", "B"], given=["A"]) == ["B", "C"]
    with pytest.raises(ValueError, match="task C needs B"):
        local_launcher.topological(tasks, ["A", "C"])
    with pytest.raises(ValueError, match=r"tasks \['D'\] are not in the compiled pipeline"):
        local_launcher.topological(tasks, ["D"])


def test_driver_parameters_become_value_messages():
    # the ExampleGen driver writes span as a float; the executor wants Value messages (span as intValue)
    assert local_launcher._as_value_message(3.0) == {"intValue": "3"}
    assert local_launcher._as_value_message(0.25) == {"doubleValue": 0.25}
    assert local_launcher._as_value_message("abc") == {"stringValue": "abc"}
    assert local_launcher._plain({"intValue": "6"}) == 6 and local_launcher._plain({"stringValue": "x"}) == "x"


@pytest.mark.slow
def test_compiled_tasks_produce_class_stats_and_a_trained_model(tmp_path, monkeypatch):
    system_tmp = tmp_path / "system_tmp"  # the temp folder the task commands would inherit
    system_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(system_tmp))
    root = write_span_data(tmp_path, num_images=24)
    shutil.copytree(root / "data" / "Span-0", root / "data" / "Span-1")  # the driver must pick the latest
    spec_path, spec = compile_into(root)
    # the previous run's ClassStats, as KFP's latest-artifact query would return it: all 'background'
    previous = tmp_path / "previous_class_stats"
    previous.mkdir()
    (previous / "class_stats.json").write_text(json.dumps({
        "class_names": ["background", "ellipse", "rectangle", "circle"], "pixel_counts": [1000, 0, 0, 0],
        "num_records": 10, "images_with_missing": 0}))
    resolved = {"latest_class_stats_resolver": {"class_stats": {
        "name": "previous", "uri": str(previous), "metadata": {},
        "type": {"instanceSchema": "title: segbalance.ClassStats\ntype: object\n"}}}}
    with pytest.raises(ValueError, match="runs no container"):
        local_launcher.run_compiled_tasks(str(spec_path), ["latest_class_stats_resolver"], str(tmp_path / "r"))
    produced = local_launcher.run_compiled_tasks(
        str(spec_path), CHAIN + ["ClassDistributionValidator"], str(tmp_path / "launcher_root"),
        beam_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"], resolved=resolved)
    # dependency order: Transform waits for SchemaGen, SegTrainer for all
    assert list(produced) == CHAIN + ["ClassDistributionValidator"]
    # each task ran with a temporary folder of its own, removed with it (TFX's Beam executors leave a
    # ~50 MB worker package in theirs): nothing in the inherited temp folder, nothing left beside the logs
    assert not list(system_tmp.glob("*/build/tfx"))
    assert not list((tmp_path / "launcher_root" / "_tasks").glob("*/tmp-*"))
    assert (tmp_path / "launcher_root" / "_tasks" / "Transform" / "executor.log").is_file()
    examples = produced["ImportExampleGen"]["examples"]
    # the span resolved by the ExampleGen driver travels as a custom property
    assert examples["metadata"]["custom:span"] == 1 and "input_fingerprint" in examples["metadata"]
    assert (Path(examples["uri"]) / "Split-train").is_dir() and (Path(examples["uri"]) / "Split-eval").is_dir()
    assert examples["type"]["schemaTitle"] == "tfx.Examples"
    class_stats = produced["ClassStatsGen"]["class_stats"]
    assert yaml_title(class_stats) == "segbalance.ClassStats"
    stats = json.loads((Path(class_stats["uri"]) / "class_stats.json").read_text())
    import tensorflow as tf

    train_files = tf.io.gfile.glob(str(Path(examples["uri"]) / "Split-train" / "*"))
    num_train = sum(1 for _ in tf.data.TFRecordDataset(train_files, compression_type="GZIP"))
    assert stats["num_classes"] == 4 and stats["splits"] == ["train"]
    assert stats["num_records"] + stats["quarantined_records"] == num_train and 0 < num_train < 24
    assert sum(stats["pixel_counts"]) + stats["ignored_pixels"] == stats["total_pixels"] > 0
    model = Path(produced["SegTrainer"]["model"]["uri"])
    assert (model / "Format-Serving" / "saved_model.pb").is_file()
    assert (model / "Format-Serving" / "model.keras").is_file()
    # the trainer's class weights are the ones in the ClassStats artifact the launcher handed over
    summary = json.loads((Path(produced["SegTrainer"]["model_run"]["uri"]) / "training_summary.json").read_text())
    scheme = spec["pipelineSpec"]["root"]["dag"]["tasks"]["SegTrainer"]["inputs"]["parameters"]["custom_config"]
    scheme = json.loads(scheme["runtimeValue"]["constantValue"]["stringValue"])["training"]["loss"]["class_weights"]
    assert summary["class_weights"] == pytest.approx(stats["weights"][scheme])
    assert summary["epochs_run"] == [0]
    # the drift gate ran through the entrypoint too: DriftReport type and its `blocked` property round-trip
    report = produced["ClassDistributionValidator"]["drift_report"]
    assert yaml_title(report) == "segbalance.DriftReport"
    drift = json.loads((Path(report["uri"]) / "drift.json").read_text())
    assert drift["baseline"] == str(previous) and drift["current"] == class_stats["uri"]
    assert drift["status"] == "blocked" and set(drift["new_classes"]) <= {"ellipse", "rectangle", "circle"}
    assert drift["new_classes"] and report["metadata"]["blocked"] == 1

    # compiled with drift.action block_training, the same blocked gate skips SegTrainer (its triggerPolicy)
    # ... and the blocked run still gets its report, from DataReportBlocked (DataReport reads the skipped
    # SegEvaluator's output, which KFP cannot resolve: it is skipped too)
    gated_path, _ = compile_into(root, name="gated.json", drift={"action": "block_training"})
    given = {k: produced[k] for k in ("ImportExampleGen", "StatisticsGen", "SchemaGen", "Transform", "ClassStatsGen")}
    no_model = {"latest_blessed_model_resolver-model-resolver": {"model": {
        "name": "none", "uri": str(tmp_path / "no_model"), "metadata": {}, "type": {"schemaTitle": "tfx.Model"}}}}
    gated = local_launcher.run_compiled_tasks(
        str(gated_path), ["ExampleValidator", "ClassDistributionValidator", "SegTrainer", "SegEvaluator", "Pusher",
                          "DataReport", "DataReportBlocked"], str(tmp_path / "gated_root"),
        beam_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"],
        resolved={**resolved, **given, **no_model})
    assert list(gated) == ["ExampleValidator", "ClassDistributionValidator", "DataReportBlocked"]
    assert gated["ClassDistributionValidator"]["drift_report"]["metadata"]["blocked"] == 1
    assert not (tmp_path / "gated_root" / "SegTrainer").exists()
    page = (Path(gated["DataReportBlocked"]["report"]["uri"]) / "report.html").read_text()
    assert "training, evaluation and push did not run" in page and "Class-distribution drift" in page


def test_trigger_conditions_are_evaluated_not_guessed():
    condition = "(inputs.artifacts['_gate.drift_report'].artifacts[0].metadata['blocked'] == 0.0)"
    report = lambda blocked: {"_gate.drift_report": {"uri": "/r", "metadata": {"blocked": blocked}}}  # noqa: E731
    assert local_launcher.condition_holds(condition, report(0))
    assert not local_launcher.condition_holds(condition, report(1))
    assert local_launcher.condition_holds(condition.replace("== 0.0", "> 0"), report(1))
    assert local_launcher.condition_holds(
        "inputs.artifacts['a'].artifacts[0].metadata['status'] != 'ok'", {"a": {"metadata": {"status": "blocked"}}})
    with pytest.raises(ValueError, match="unsupported triggerPolicy condition"):
        local_launcher.condition_holds("inputs.parameter_values['x'] == 1", report(0))
    with pytest.raises(ValueError, match="which the task does not have"):
        local_launcher.condition_holds(condition, {"other": {"metadata": {}}})
    with pytest.raises(ValueError, match="has no metadata 'blocked'"):
        local_launcher.condition_holds(condition, {"_gate.drift_report": {"uri": "/r", "metadata": {}}})


def yaml_title(artifact):
    import yaml

    kind = artifact["type"]
    return kind.get("schemaTitle") or yaml.safe_load(kind["instanceSchema"])["title"]


def tiny_spec(tmp_path, code_by_task):
    """A PipelineJob JSON whose tasks run ``python -c CODE EXECUTOR_INPUT`` (in the order given)."""
    names = list(code_by_task)
    tasks = {name: {"componentRef": {"name": f"comp-{name}"}, "inputs": {},
                    **({"dependentTasks": names[:i]} if i else {})} for i, name in enumerate(names)}
    components = {f"comp-{name}": {"executorLabel": f"exec-{name}"} for name in names}
    executors = {f"exec-{name}": {"container": {"command": ["python", "-c", code], "args": ["{{$}}"]}}
                 for name, code in code_by_task.items()}
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"pipelineSpec": {"root": {"dag": {"tasks": tasks}}, "components": components,
                                                  "deploymentSpec": {"executors": executors}}}))
    return path


WRITES_OUTPUT = ("import json, sys; e = json.loads(sys.argv[1]); "
                 "open(e['outputs']['outputFile'], 'w').write('{}')")


def test_command_line_runs_tasks_and_names_a_failed_task_s_log_in_one_line(tmp_path, capsys):
    spec = tiny_spec(tmp_path, {"A": WRITES_OUTPUT, "B": "import sys; print('step one'); print('boom: bad input'); "
                                                        "sys.exit(3)"})
    assert local_launcher.main([str(spec), "--tasks", "A", "--root", str(tmp_path / "root")]) == 0
    assert json.loads(capsys.readouterr().out.split("local-launcher: A\n", 1)[1]) == {"A": {}}
    code = local_launcher.main([str(spec), "--tasks", "A,B", "--root", str(tmp_path / "root")])
    err = capsys.readouterr().err
    log = tmp_path / "root" / "_tasks" / "B" / "executor.log"
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert f"task B failed (exit code 3); its output: {log}; last line: boom: bad input" in err
    assert "step one" in log.read_text()
    with pytest.raises(local_launcher.TaskFailed, match="task B failed"):  # the API keeps the exception
        local_launcher.run_compiled_tasks(str(spec), ["A", "B"], str(tmp_path / "root"))


@pytest.mark.parametrize("case, expected", [
    ("missing", "no such file: pass the file `segbalance compile-kfp --output` wrote"),
    ("folder", "no such file: pass the file `segbalance compile-kfp --output` wrote"),
    ("not_json", "not a PipelineJob JSON written by `segbalance compile-kfp`"),
    ("yaml_without_spec", "not a KFP package (YAML) written by `segbalance compile-kfp` (no root"),
    ("unknown_task", "tasks ['C'] are not in the compiled pipeline"),
    ("missing_dependency", "task B needs A: add it to the tasks to run"),
    ("no_tasks_option", "the following arguments are required: --tasks"),
])
def test_command_line_mistakes_are_one_line_exit_2(tmp_path, capsys, case, expected):
    spec = tiny_spec(tmp_path, {"A": WRITES_OUTPUT, "B": WRITES_OUTPUT})
    argv = {"missing": [str(tmp_path / "nope.json"), "--tasks", "A"],
            "folder": [str(tmp_path), "--tasks", "A"],
            "not_json": [str(tmp_path / "bad.json"), "--tasks", "A"],
            "yaml_without_spec": [str(tmp_path / "bad.yaml"), "--tasks", "A"],
            "unknown_task": [str(spec), "--tasks", "A,C"],
            "missing_dependency": [str(spec), "--tasks", "B"],
            "no_tasks_option": [str(spec)]}[case]
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "bad.yaml").write_text("pipelineInfo: {name: x}\n")
    code = exit_code(argv + ["--root", str(tmp_path / "root")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"{local_launcher.PROG}: error: ") and expected in err
    assert not (tmp_path / "root" / "_tasks").exists()  # nothing ran


def exit_code(argv) -> int:
    """What the command line exits with: main's return value, or argparse's SystemExit code."""
    try:
        return local_launcher.main(argv)
    except SystemExit as exc:
        return exc.code
