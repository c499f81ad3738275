"""What `make run` scores for a given training budget, with its curves, time and machine on record.

    .venv/bin/python benchmarks/make_run_budget.py [--epochs 24,40,80] [--record FILE] [--plot FILE]
    .venv/bin/python benchmarks/make_run_budget.py --variant NAME:training.epochs=24,training.batch_size=8 ...

For each epoch budget, runs `segbalance run` (the `make run` job: shapes sample data, whole DAG
on CPU) into a fresh output folder with a config that sets only ``training.epochs`` (the default's
own epochs run the default config itself: no ``--config``); each ``--variant`` (repeatable; ``--epochs`` is then not
run unless given) runs it with a config that sets the dotted fields it names (values read as YAML).
Appends one JSON line per run to ``--record``
(default ``docs/results/make_run/runs.jsonl``): the model's mIoU on the eval images' complete
masks (SegEvaluator's; ``blessed`` / ``pushed_this_run`` say whether it was pushed), the
restored best epoch (1-based), the validation mIoU of every epoch, wall and CPU seconds (user +
sys of the child processes), the load average, the commit and the machine.
``--plot`` draws the validation curves of the runs just made. The README's `make run` figures
come from this file.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_variant(text: str):
    """``NAME:a.b=1,c=x`` -> (NAME, {"a": {"b": 1}, "c": "x"}); values are YAML scalars."""
    import yaml

    name, _, assignments = text.partition(":")
    if not name or not assignments:
        raise SystemExit(f"--variant {text!r}: write NAME:field.path=value[,field.path=value...]")
    config: dict = {}
    for assignment in assignments.split(","):
        path, _, value = assignment.partition("=")
        *parents, leaf = path.strip().split(".")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = yaml.safe_load(value)
    return name, config


def run_once(epochs: int, work: Path, default_epochs: int, variant=None) -> dict:
    import yaml

    name, changes = variant or (f"epochs{epochs}", {"training": {"epochs": epochs}} if epochs != default_epochs else {})
    output = work / name
    command = [sys.executable, "-m", "segbalance.pipeline.cli", "run", "--output-dir", str(output)]
    if changes:
        config = work / f"{name}.yaml"
        config.write_text(yaml.safe_dump(changes))
        command += ["--config", str(config)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"segbalance run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    summary = json.loads((output / "run_summary.json").read_text())
    training = json.loads((_model_run(output) / "training_summary.json").read_text())
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                 text=True).stdout.strip(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}",
        "command": " ".join(["segbalance", *command[3:]]).replace(str(work), "WORK"),
        "variant": name, "config": changes,
        "epochs": training["config"]["training"]["epochs"], "miou": summary.get("miou"),
        "num_eval_images": summary.get("num_eval_images"),
        "blessed": summary.get("blessed"), "pushed_this_run": summary.get("pushed_this_run"),
        "best_epoch": None if training.get("best_epoch") is None else training["best_epoch"] + 1,
        "best_val_miou": training.get("best_val_miou"),
        # the loss of the first batch before any update: where two runs of one seed part (README, "The pipeline")
        "initial_loss": training.get("initial_loss"),
        "val_miou": [round(v, 4) for v in training["history"]["val_miou"]],
        "wall_s": round(wall, 1),
        "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
        "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
    }


def _model_run(output: Path) -> Path:
    runs = sorted((output / "pipeline_root" / "SegTrainer" / "model_run").iterdir(), key=lambda p: int(p.name))
    return runs[-1]


def plot(rows: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for row in rows:
        epochs = range(1, len(row["val_miou"]) + 1)
        label = row.get("variant") or f"{row['epochs']} epochs"
        ax.plot(epochs, row["val_miou"], label=f"{label}: scored {row['miou']:.3f}")
        if row["best_epoch"]:
            ax.plot(row["best_epoch"], row["val_miou"][row["best_epoch"] - 1], "o", color=ax.lines[-1].get_color())
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation mIoU")
    kinds = sorted({(row.get("config") or {}).get("data", {}).get("sample", {}).get("kind", "shapes") for row in rows})
    ax.set_title(f"make run's job ({', '.join(kinds)}): validation mIoU per epoch; dot = restored best")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", help="comma-separated epoch budgets (default: the default config's, when no --variant is given)")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME:field.path=value[,...]: a run with these config fields set (repeatable)")
    parser.add_argument("--record", default=str(ROOT / "docs/results/make_run/runs.jsonl"))
    parser.add_argument("--plot", help="PNG of the validation curves of these runs")
    args = parser.parse_args()
    from segbalance.trainer.training_config import TrainingConfig

    default_epochs = TrainingConfig().epochs
    budgets = [int(e) for e in (args.epochs or ("" if args.variant else str(default_epochs))).split(",") if e]
    runs = [(epochs, None) for epochs in budgets] + [(None, parse_variant(v)) for v in args.variant]
    work = Path(tempfile.mkdtemp(prefix="segbalance-make-run-"))
    rows = []
    try:
        for epochs, variant in runs:
            row = run_once(epochs, work, default_epochs, variant)
            rows.append(row)
            Path(args.record).parent.mkdir(parents=True, exist_ok=True)
            with open(args.record, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{row['variant']} ({row['epochs']} epochs): mIoU {row['miou']:.4f} (pushed: {row['pushed_this_run']}), best epoch "
                  f"{row['best_epoch']} (validation {row['best_val_miou']:.4f}), {row['wall_s']} s wall, {row['cpu_s']} s CPU, "
                  f"load {row['load_before']} -> {row['load_after']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.plot and rows:
        plot(rows, Path(args.plot))


if __name__ == "__main__":
    main()
