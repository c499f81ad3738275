"""The whole DAG on tiny data with LocalDagRunner: artifacts, blessing, push, cache, crash."""
import importlib.util
import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from segbalance.pipeline import run_summary
from segbalance.pipeline.config import load_config
from segbalance.pipeline.dag import component_ids

pytestmark = pytest.mark.slow

TINY = {
    "data": {"sample": {"num_images": 32, "size": 32, "drop_fraction": 0.3}},
    "training": {"image_size": [32, 32], "epochs": 2, "batch_size": 8, "depth": 2, "base_filters": 8},
    "evaluation": {"miou_threshold": 0.0, "tolerance": 1.0},
}


def _config_file(tmp_path, **changes):
    values = json.loads(json.dumps(TINY))
    for section, fields in changes.items():
        values.setdefault(section, {}).update(fields)
    path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _run_cli(config_path, output_dir, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "segbalance.pipeline.cli", "run", "--config", str(config_path),
                           "--output-dir", str(output_dir)], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("e2e")
    config_path = _config_file(tmp_path)
    result = _run_cli(config_path, tmp_path / "out")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return tmp_path, config_path, result


def test_first_run_produces_every_artifact(first_run):
    tmp_path, _, result = first_run
    out = tmp_path / "out"
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["status"] == "done" and summary["previous_summary"] is None  # a first run
    # One progress line per component as it starts and ends; a resolver: one line when it is done.
    for node in component_ids():
        if node.endswith("_resolver"):
            assert f"{node}: started" not in result.stdout, node
        else:
            assert f"{node}: started" in result.stdout and f"{node}: done" in result.stdout, node
    # A clean first run: the resolvers find nothing and say so in one line (issue 13 item 9) ...
    assert "] latest_blessed_model_resolver: no blessed model yet\n" in result.stdout
    assert "] latest_class_stats_resolver: no earlier ClassStats (first run)\n" in result.stdout
    console = result.stdout + result.stderr
    for library_line in ("Traceback", "InputResolutionError", "Input resolution error", "python-snappy",
                         "op_level_cost_estimator", "absl::InitializeLog", "W0000", "WARNING"):
        assert library_line not in console, library_line
    # ... and the library output is in the run's log file, named at the end of the console output
    log = Path(summary["log"])
    assert log.parent == out / "logs" and log.is_file() and f"log:              {log}" in result.stdout
    text = log.read_text()
    # ... and nothing failed: until session 26 TFX's latest-artifact strategy made the first run's ClassStats
    # resolver raise InputResolutionError (a traceback in the log) and ML Metadata recorded it FAILED
    assert "InputResolutionError" not in text and "Traceback" not in text
    assert "Not using the in-place Transform" in text and "Not using the in-place Transform" not in console
    states = run_summary.executions_by_component(run_summary.open_store(str(out / "metadata.sqlite")))
    assert states["latest_class_stats_resolver"] == states["latest_blessed_model_resolver"] == ["COMPLETE"], states
    assert all(s == ["COMPLETE"] for s in states.values()), states
    if importlib.util.find_spec("snappy") is None:
        assert "Couldn't find python-snappy" in text  # Beam's warning, written when ExampleGen writes records
    assert "] SegTrainer: started" in text  # the progress lines too, so the log reads in order
    # What ExampleGen read, from ML Metadata: the sample data's one span, all its records.
    ingested = json.loads((out / "data" / "Span-0" / "ingest_report.json").read_text())["num_written"]
    assert summary["data"]["spans"] == [0] and summary["data"]["records"] == {"0": ingested}
    assert summary["data"]["files_unchanged"] and summary["data"]["examples"].startswith(str(out / "pipeline_root"))
    assert f"data:             span 0 of {out / 'data'} ({ingested} records)" in result.stdout
    assert summary["data"]["not_ingested"] == {} and "not ingested:" not in result.stdout  # no bad pair here
    split = re.search(rf"data: (\d+) training and (\d+) eval records in {re.escape(str(out / 'data'))}/Span-0\n",
                      result.stdout)
    assert split and int(split.group(1)) + int(split.group(2)) == ingested and int(split.group(2)) > 0
    stats = json.loads((Path(summary["class_stats"]) / "class_stats.json").read_text())
    assert stats["num_classes"] == 4 and stats["num_records"] > 0
    assert set(stats["weights"]) >= {"inverse_frequency", "median_frequency", "enet", "effective_number"}
    evaluation = json.loads((Path(summary["evaluation"]) / "evaluation.json").read_text())
    assert evaluation["blessed"] and 0.0 <= evaluation["miou"] <= 1.0
    assert evaluation["truth_sources"]["reference_masks"] == evaluation["num_images"] > 0
    pushed = Path(summary["pushed_model"])
    assert pushed.parent == out / "serving_model" and (pushed / "saved_model.pb").is_file()
    # the version folder says what it holds: the evaluation that blessed it, the model artifact it came from
    record = json.loads((pushed / "push_record.json").read_text())
    assert record["version"] == pushed.name and record["evaluation"] == evaluation
    assert record["miou"] == evaluation["miou"] and record["model"]["uri"] == evaluation["model_uri"]  # exact
    report = (out / "report.html").read_text()
    assert "ellipse" in report and "circle" in report
    assert f"Every image pair was ingested ({ingested} records; {out / 'data' / 'Span-0' / 'ingest_report.json'})" \
        in report
    for line in ("report:", "class statistics:", "pushed model:", "mIoU:"):
        assert line in result.stdout
    assert f"{evaluation['miou']:.4f}" in result.stdout
    assert "property_predicate" not in result.stdout + result.stderr  # known harmless TFX warning, filtered


def test_rerun_with_same_data_and_config_is_cached(first_run):
    tmp_path, config_path, _ = first_run
    result = _run_cli(config_path, tmp_path / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    for node in ("ImportExampleGen", "StatisticsGen", "ClassStatsGen", "Transform", "SegTrainer"):
        assert f"{node}: cached" in result.stdout, node
    assert "ingest: " in result.stdout and "unchanged" in result.stdout
    # The evaluator re-runs (its baseline is now the first run's blessed model, the same model):
    # it does not bless it again, so nothing is pushed twice.
    assert "already the latest blessed model" in result.stdout
    assert len(list((tmp_path / "out" / "serving_model").iterdir())) == 1
    assert "(earlier run" in result.stdout


def test_unblessed_model_is_not_pushed(first_run):
    tmp_path, _, _ = first_run
    strict = _config_file(tmp_path, evaluation={"miou_threshold": 1.0, "tolerance": 0.0})
    result = _run_cli(strict, tmp_path / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SegTrainer: cached" in result.stdout and "SegEvaluator: done" in result.stdout
    assert "pushed model:" in result.stdout and "below the threshold" in result.stdout
    assert len(list((tmp_path / "out" / "serving_model").iterdir())) == 1  # only the first run's push


def test_crash_during_training_then_rerun_completes(tmp_path):
    config_path = _config_file(tmp_path, training={"epochs": 20})
    out = tmp_path / "out"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "segbalance.pipeline.cli", "run", "--config", str(config_path),
                             "--output-dir", str(out), "--verbose"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)
    deadline = time.time() + 400
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "SegTrainer: started" in line or time.time() > deadline:
            break
    time.sleep(6)  # inside training (compiling, first epochs)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert any("SegTrainer: started" in s for s in seen), "".join(seen[-50:])
    # --verbose: the library output is on the console (TFX's Transform executor warns, as absl WARNING, that
    # image/encoded needs analysing; without --verbose it goes to the log file)
    shown = "".join(seen)
    assert "Not using the in-place Transform" in shown
    if importlib.util.find_spec("snappy") is None:
        assert "Couldn't find python-snappy" in shown
    killed = json.loads((out / "run_summary.json").read_text())  # QA 70: no summary at all was left
    assert killed["status"] == "running" and killed["pid"] != os.getpid()
    stats_dir = run_summary.latest_artifact(run_summary.open_store(str(out / "metadata.sqlite")),
                                            "segbalance.ClassStats").uri
    stats_before = (Path(stats_dir) / "class_stats.json").read_bytes()

    resumed = _run_cli(config_path, out)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    for node in ("ImportExampleGen", "StatisticsGen", "ClassStatsGen", "Transform"):
        assert f"{node}: cached" in resumed.stdout, node
    assert (Path(stats_dir) / "class_stats.json").read_bytes() == stats_before
    store = run_summary.open_store(str(out / "metadata.sqlite"))
    states = run_summary.executions_by_component(store)
    # The killed training left a RUNNING execution; the re-run marked it CANCELED (with a note) and
    # added a COMPLETE one: nothing stays RUNNING for good.
    assert states["SegTrainer"] == ["CANCELED", "COMPLETE"], states
    assert "metadata: 1 execution(s) an earlier run left unfinished (it was stopped) marked CANCELED" in \
        resumed.stdout
    assert not [node for node, s in states.items() if "RUNNING" in s or "NEW" in s], states
    from segbalance.pipeline.run_lock import ABANDONED_NOTE

    canceled = [e for e in store.get_executions() if ABANDONED_NOTE in e.custom_properties]
    assert len(canceled) == 1 and "killed" in canceled[0].custom_properties[ABANDONED_NOTE].string_value
    assert states["ClassStatsGen"] == ["COMPLETE", "CACHED"], states
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["pushed_model"] and summary["canceled_executions"] == 1
    assert summary["killed_run"] == {"pid": killed["pid"], "started": killed["started"]}
    assert summary["previous_summary"] is None  # the killed run was the first: none before it


def test_default_config_is_what_make_run_uses():
    config = load_config()
    assert config.data.dir is None and config.data.sample.drop_fraction > 0
