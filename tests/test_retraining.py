"""Scheduled retraining simulated locally: span 1 -> span 2 (similar) -> span 3 (shifted classes).

The same commands a schedule runs: `segbalance ingest --span N` adds data, `segbalance run
--data DATA` reads the latest span, the drift gate compares its ClassStats with the previous
run's, and only blessed, un-blocked models are pushed.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from segbalance.pipeline import cli, sample_data
from segbalance.trainer.example_codec import decode_array, encode_png

pytestmark = pytest.mark.slow


def _shapes(root: Path, seed: int, relabel_ellipses_as_circles: bool = False) -> Path:
    out = sample_data.write_sample_data("shapes", root, num_images=32, size=32, seed=seed, drop_fraction=0.2)
    if relabel_ellipses_as_circles:  # the class distribution shifts: circles become common, ellipses vanish
        for folder in ("masks", "masks_full"):
            for path in (out / folder).glob("*.png"):
                mask = decode_array(path.read_bytes()).copy()
                mask[mask == 1] = 3
                path.write_bytes(encode_png(mask))
    return out


def _ingest(raw: Path, data: Path, span: int) -> None:
    assert cli.main(["ingest", str(raw / "images"), str(raw / "masks"), "--output", str(data), "--span", str(span),
                     "--labeled", str(raw / "labeled.json")]) == 0


def test_span_1_2_3_blesses_then_blocks_on_drift_then_blocks_training(tmp_path, capsys):
    out = tmp_path / "out"
    data = out / "data"  # the spans live where `run --data IMAGES_AND_MASKS` ingests too
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "training": {"image_size": [32, 32], "epochs": 2, "batch_size": 8, "depth": 2, "base_filters": 8},
        "evaluation": {"miou_threshold": 0.0, "tolerance": 1.0},
        "drift": {"js_divergence": 0.02, "max_abs_change": 0.03, "action": "block"},
    }))
    run = ["run", "--config", str(config), "--data", str(data), "--output-dir", str(out)]
    versions = lambda: sorted(p.name for p in (out / "serving_model").iterdir())  # noqa: E731

    _ingest(_shapes(tmp_path / "raw1", seed=1), data, 1)
    assert cli.main(run) == 0
    assert len(versions()) == 1

    # span 2 arrives as a plain images/ + masks/ folder given to `run --data` (issue 13 item 2): it is
    # ingested as the next span of OUTPUT/data and that span, not the older span 1, is what the run reads
    capsys.readouterr()
    raw2 = _renamed(_shapes(tmp_path / "raw2", seed=2), "s2")
    assert cli.main(["run", "--config", str(config), "--data", str(raw2), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"ingest: 32 records from {raw2} to {data / 'Span-2'}; {data} already held span 1" in printed
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["data"]["spans"] == [2] and summary["data"]["records"] == {"2": 32}
    assert f"data:             span 2 of {data} (32 records)" in printed
    from segbalance.trainer.class_stats_io import read_per_image

    counted = read_per_image(str(Path(summary["class_stats"])))["source_id"]
    assert len(counted) > 0 and all(sid.startswith("s2_") for sid in counted)  # raw2's images, none of span 1
    assert "ClassDistributionValidator: ok" in printed and "drift gate:       ok, " in printed
    assert len(versions()) == 2  # similar data: trained, blessed, pushed

    _ingest(_shapes(tmp_path / "raw3", seed=3, relabel_ellipses_as_circles=True), data, 3)
    assert cli.main(run) == 3  # a scheduler sees the blocked run (it exited 0, like a good one)
    printed = capsys.readouterr().out
    assert "ClassDistributionValidator: blocked" in printed
    assert "drift gate:       blocked (the model was not pushed; exit status 3), " in printed
    assert len(versions()) == 2  # drift: not pushed
    summary = json.loads((out / "run_summary.json").read_text())
    assert not summary["blessed"] and "drift blocked the push" in summary["blessing_reason"]
    assert summary["drift"]["status"] == "blocked" and summary["drift"]["action"] == "block"
    assert summary["status"] == "blocked" and summary["previous_summary"] == str(out / "run_summary.previous.json")
    assert json.loads((out / "run_summary.previous.json").read_text())["status"] == "done"  # the run before
    assert Path(summary["drift"]["report"]).is_file()
    report = (out / "report.html").read_text()
    assert "Class-distribution drift" in report and "blocked" in report and "circle" in report
    drift_files = sorted((out / "pipeline_root" / "ClassDistributionValidator").glob("*/*/drift.json"),
                         key=lambda p: int(p.parent.name))
    assert len(drift_files) == 3
    class_stats = sorted((out / "pipeline_root" / "ClassStatsGen" / "class_stats").iterdir(), key=lambda p: int(p.name))
    assert len(class_stats) == 3
    # the resolver runs before this run's ClassStatsGen: the baseline is the previous run's ClassStats
    second = json.loads(drift_files[1].read_text())
    assert second["current"] == str(class_stats[1]) and second["baseline"] == str(class_stats[0])
    drift = json.loads(drift_files[-1].read_text())
    assert drift["current"] == str(class_stats[2]) and drift["baseline"] == str(class_stats[1])
    assert json.loads(drift_files[0].read_text())["baseline"] is None  # span 1: first run
    assert drift["status"] == "blocked" and drift["max_change_class"] in ("ellipse", "circle")
    assert np.isclose(sum(drift["frequency_change"].values()), 0.0, atol=1e-9)
    assert "the model was trained but not blessed" in report
    assert f"Compared with the ClassStats in {class_stats[1]}" in report
    assert "accept it: run once with drift.action: warn" in report

    # span 4 drifted like span 3, now with action block_training: SegTrainer, SegEvaluator, Pusher are skipped.
    # It is compared with span 2 (the last accepted), not with the blocked span 3, which it resembles (with
    # the previous run's ClassStats as baseline it passed, and the drift came in through a blocked span)
    models = lambda: sorted((out / "pipeline_root" / "SegTrainer" / "model").iterdir())  # noqa: E731
    evaluations = lambda: sorted((out / "pipeline_root" / "SegEvaluator" / "evaluation").iterdir())  # noqa: E731
    trained, evaluated = models(), evaluations()
    assert len(trained) == 3 and len(evaluated) == 3
    config.write_text(config.read_text().replace("action: block", "action: block_training"))
    _ingest(_shapes(tmp_path / "raw4", seed=4, relabel_ellipses_as_circles=True), data, 4)
    assert cli.main(run) == 3
    printed = capsys.readouterr().out
    assert "ClassDistributionValidator: blocked" in printed and "run once with drift.action: warn" in printed
    fourth = json.loads(sorted((out / "pipeline_root" / "ClassDistributionValidator").glob("*/*/drift.json"),
                               key=lambda p: int(p.parent.name))[-1].read_text())
    assert fourth["baseline"] == str(class_stats[1]) and fourth["accepted"] == str(class_stats[1])
    assert all(f"{name}: skipped in" in printed for name in ("SegTrainer", "SegEvaluator", "Pusher"))
    assert "DataReport: skipped in" in printed and "DataReportBlocked: done in" in printed  # its twin
    assert models() == trained and evaluations() == evaluated and len(versions()) == 2
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["training_blocked"] and "drift blocked training" in summary["blessing_reason"]
    assert not summary["pushed_this_run"] and "model" not in summary  # the served model is an earlier run's
    assert "(earlier run; this run: class-distribution drift blocked training" in printed
    assert "miou" not in summary  # the last evaluation is span 3's, not this run's
    assert "drift blocked training" in printed
    report = (out / "report.html").read_text()
    assert "training, evaluation and push did not run" in report and "Evaluation" not in report
    from segbalance.pipeline.run_summary import executions_by_component, open_store

    states = executions_by_component(open_store(str(out / "metadata.sqlite")))
    assert len(states["SegTrainer"]) == 3 and all(s in ("COMPLETE", "CACHED") for s in states["SegTrainer"])
    assert states["DataReport"] == ["COMPLETE"] * 3, states  # compiled with block_training: in the Cond
    assert states["DataReportBlocked"] == ["COMPLETE"], states

    # the same run again (or its resume after a stop): ClassStatsGen is cached, so the latest ClassStats
    # are this run's own; compared with themselves they passed and the blocked model was trained and
    # pushed. The gate keeps the baseline the blocked run judged against.
    assert cli.main(run) == 3
    printed = capsys.readouterr().out
    assert "ClassDistributionValidator: blocked" in printed and "SegTrainer: skipped in" in printed
    assert "drift gate:       blocked (nothing was trained; exit status 3), " in printed
    assert models() == trained and len(versions()) == 2
    drift_files = sorted((out / "pipeline_root" / "ClassDistributionValidator").glob("*/*/drift.json"),
                         key=lambda p: int(p.parent.name))
    again, judged = (json.loads(p.read_text()) for p in (drift_files[-1], drift_files[-2]))
    assert again["current"] == judged["current"] and again["baseline"] == judged["baseline"] != judged["current"]


def _renamed(raw: Path, prefix: str) -> Path:
    """The same pairs under file names unique to this span (source_id = file stem)."""
    for folder in ("images", "masks", "masks_full"):
        for path in (raw / folder).glob("*.png"):
            path.rename(path.with_name(f"{prefix}_{path.name}"))
    for keyed in ("labeled.json", "groups.json"):
        stems = json.loads((raw / keyed).read_text())
        (raw / keyed).write_text(json.dumps({f"{prefix}_{k}": v for k, v in stems.items()}))
    return raw


def test_last_two_spans_with_warm_start(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"num_spans": 2},
        "training": {"image_size": [32, 32], "epochs": 1, "batch_size": 8, "depth": 2, "base_filters": 8,
                     "warm_start": True},
        "evaluation": {"miou_threshold": 0.0, "tolerance": 1.0},
        "drift": {"action": "warn"},
    }))
    run = ["run", "--config", str(config), "--data", str(data), "--output-dir", str(out)]
    for span in (1, 2):
        _ingest(_renamed(_shapes(tmp_path / f"raw{span}", seed=span), f"s{span}"), data, span)
    assert cli.main(run) == 0  # window = spans 1, 2; no blessed model yet
    _ingest(_renamed(_shapes(tmp_path / "raw3", seed=3), "s3"), data, 3)
    assert cli.main(run) == 0  # window = spans 2, 3; warm start from the first run's model

    from segbalance.trainer.class_stats_io import read_per_image

    stats_dirs = sorted((out / "pipeline_root" / "ClassStatsGen" / "class_stats").iterdir(), key=lambda p: int(p.name))
    prefixes = [sorted({sid.split("_")[0] for sid in read_per_image(str(d))["source_id"]}) for d in stats_dirs]
    assert prefixes == [["s1", "s2"], ["s2", "s3"]]  # each run's statistics cover the last two spans
    summaries = sorted((out / "pipeline_root" / "SegTrainer" / "model_run").glob("*/training_summary.json"),
                       key=lambda p: int(p.parent.name))
    first, second = (json.loads(p.read_text()) for p in summaries)
    pushed = sorted((out / "serving_model").iterdir())
    assert first["warm_started_from"] is None and len(pushed) == 2
    models = sorted((out / "pipeline_root" / "SegTrainer" / "model").iterdir(), key=lambda p: int(p.name))
    assert second["warm_started_from"] == str(models[0] / "Format-Serving" / "model.keras")
    # the examples ExampleGen produced carry the latest span of the window
    from segbalance.pipeline.run_summary import open_store

    store = open_store(str(out / "metadata.sqlite"))
    spans = sorted(a.custom_properties["span"].int_value for a in store.get_artifacts_by_type("Examples")
                   if "/ImportExampleGen/" in a.uri)  # ClassStatsGen's clean_examples are Examples too
    assert spans == [2, 3]
    summary = json.loads((out / "run_summary.json").read_text())  # the window, as ML Metadata and the links say
    assert summary["data"]["spans"] == [2, 3] and summary["data"]["records"] == {"2": 32, "3": 32}
    assert summary["data"]["span_folders"] == {"2": str(data / "Span-2"), "3": str(data / "Span-3")}
    # the report's span table names the window its row counted (it showed 64 records under "3" alone)
    from segbalance.pipeline.report_sources import span_history

    history = span_history(store)
    assert [(item.span, item.window) for item in history] == [(2, None), (3, [2, 3])]  # span 2's links replaced
    assert '<td class="l">3 (window 2, 3)</td>' in (out / "report.html").read_text()
