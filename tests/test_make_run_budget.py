"""benchmarks/make_run_budget.py: a --variant becomes the config file of its run, and its row records it."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("make_run_budget", ROOT / "benchmarks" / "make_run_budget.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parse_variant_nests_dotted_fields_and_reads_yaml_values():
    bench = load_benchmark()
    assert bench.parse_variant("cos:training.epochs=24,training.lr_schedule.type=cosine,"
                               "training.lr_schedule.warmup_epochs=0.5,training.restore_best=false") == (
        "cos", {"training": {"epochs": 24, "restore_best": False,
                             "lr_schedule": {"type": "cosine", "warmup_epochs": 0.5}}})
    for bad in ("no-fields", ":training.epochs=3"):
        with pytest.raises(SystemExit, match="write NAME:field.path=value"):
            bench.parse_variant(bad)


def test_a_variant_run_gets_its_config_file_and_its_row_names_it(tmp_path, monkeypatch):
    bench = load_benchmark()
    real_run = subprocess.run
    seen = {}

    def fake_run(command, **kwargs):  # stands in for `segbalance run`: writes what a run leaves
        if command[:3] != [sys.executable, "-m", "segbalance.pipeline.cli"]:
            return real_run(command, **kwargs)
        seen["command"] = command
        seen["config"] = (yaml.safe_load(Path(command[command.index("--config") + 1]).read_text())
                          if "--config" in command else None)
        out = Path(command[command.index("--output-dir") + 1])
        (out / "pipeline_root/SegTrainer/model_run/10").mkdir(parents=True)
        (out / "run_summary.json").write_text(json.dumps({"miou": 0.7, "num_eval_images": 46, "blessed": True,
                                                          "pushed_this_run": True}))
        (out / "pipeline_root/SegTrainer/model_run/10/training_summary.json").write_text(json.dumps(
            {"config": {"training": {"epochs": 24}}, "best_epoch": 20, "best_val_miou": 0.8,
             "history": {"val_miou": [0.5, 0.81234]}}))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    variant = bench.parse_variant("e24_cos:training.epochs=24,training.lr_schedule.type=cosine")
    row = bench.run_once(None, tmp_path, 24, variant)
    assert seen["config"] == {"training": {"epochs": 24, "lr_schedule": {"type": "cosine"}}}
    assert row["variant"] == "e24_cos" and row["config"] == seen["config"] and row["epochs"] == 24
    assert row["best_epoch"] == 21 and row["val_miou"] == [0.5, 0.8123] and row["miou"] == 0.7
    assert row["command"] == "segbalance run --output-dir WORK/e24_cos --config WORK/e24_cos.yaml"
    (tmp_path / "default").mkdir()
    row = bench.run_once(24, tmp_path / "default", 24)  # the default's own epochs: the default config, no file
    assert seen["config"] is None and row["variant"] == "epochs24" and row["config"] == {}
