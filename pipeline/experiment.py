"""`segbalance experiment [--quick] [--output docs/results]`: do the losses work?

For each data set the pipeline runs once (sample data -> ingest -> ImportExampleGen ->
ClassStatsGen -> Transform -> SegTrainer -> SegEvaluator, with LocalDagRunner), then every
(loss, seed) cell trains with the same ``segbalance.trainer.task.run_fn`` on that pipeline's
artifacts (examples, transform graph, ClassStats) and is scored on a held-out test set
with **complete** masks (``components.seg_evaluator``):

1. missing annotations: shapes with annotation drop fractions {0, 0.3, 0.6}; plain CE,
   class-weighted CE (median frequency), ignore-predicted CE (seed 004), marginal CE,
   marginal + exclusion, CE + Dice;
2. class imbalance: shapes (rare small circles) and the stardist nuclei image (thin
   boundary class): unweighted vs each weighting scheme, clipped or not, focal, Dice;
3. seed 004's numbers revisited (``pipeline/seed004.py``).

Writes ``results.md``, ``results.json`` and PNG plots into the output folder. Seeds are
fixed, so a re-run reproduces the table. ``--quick`` runs a 1-seed, 2-loss, tiny version
(a few minutes) that the test suite uses.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

CE = {"type": "ce", "weight": 1.0}
MISSING_LOSSES = {
    "plain_ce": {"terms": [CE]},
    "weighted_ce_median": {"terms": [CE], "class_weights": "median_frequency"},
    "ignore_predicted_ce": {"terms": [CE], "missing_labels": "ignore_predicted"},
    "marginal_ce": {"terms": [CE], "missing_labels": "marginal"},
    "marginal_exclusion": {"terms": [CE, {"type": "exclusion", "weight": 0.5}], "missing_labels": "marginal"},
    "ce_dice": {"terms": [CE, {"type": "dice", "weight": 1.0}]},
    "marginal_ce_dice": {"terms": [CE, {"type": "dice", "weight": 1.0}], "missing_labels": "marginal"},
}
CLIP = (0.5, 5.0)  # raw-weight clipping range of the "_clipped" variants (before normalisation)
IMBALANCE_LOSSES = {
    "unweighted": {"terms": [CE]},
    "inverse_frequency": {"terms": [CE], "class_weights": "inverse_frequency"},
    "inverse_frequency_clipped": {"terms": [CE], "class_weights": "inverse_frequency"},
    "median_frequency": {"terms": [CE], "class_weights": "median_frequency"},
    "median_frequency_clipped": {"terms": [CE], "class_weights": "median_frequency"},
    "enet": {"terms": [CE], "class_weights": "enet"},
    "effective_number": {"terms": [CE], "class_weights": "effective_number"},
    "focal": {"terms": [{"type": "focal", "weight": 1.0, "gamma": 2.0}]},
    "ce_dice": {"terms": [CE, {"type": "dice", "weight": 1.0}]},
}
# Cells whose class weights use other `stats` options than the pipeline run's (fields of
# pipeline/config.py StatsConfig): their weight vector is computed from the ClassStats counts.
STATS_CHANGES = {"inverse_frequency_clipped": {"clip": CLIP}, "median_frequency_clipped": {"clip": CLIP}}
NUCLEI_LOSSES = list(IMBALANCE_LOSSES)


@dataclass
class Plan:
    drop_fractions: List[float] = field(default_factory=lambda: [0.0, 0.3, 0.6])
    missing_losses: List[str] = field(default_factory=lambda: list(MISSING_LOSSES))
    missing_seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    imbalance_losses: List[str] = field(default_factory=lambda: list(IMBALANCE_LOSSES))
    imbalance_seeds: List[int] = field(default_factory=lambda: [0, 1])
    nuclei_losses: List[str] = field(default_factory=lambda: list(NUCLEI_LOSSES))
    nuclei_seeds: List[int] = field(default_factory=lambda: [0, 1])
    num_images: int = 200
    test_images: int = 60
    size: int = 64
    epochs: int = 8
    batch_size: int = 16

    @classmethod
    def quick(cls) -> "Plan":
        return cls(drop_fractions=[0.3], missing_losses=["plain_ce", "marginal_ce"], missing_seeds=[0],
                   imbalance_losses=[], imbalance_seeds=[], nuclei_losses=[], nuclei_seeds=[],
                   num_images=32, test_images=8, size=32, epochs=2, batch_size=8)


RESULTS_LOG = "results.jsonl"


def load_results(work: Path) -> list:
    path = work / RESULTS_LOG
    if not path.is_file():
        return []
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[(row["group"], row["loss"], row["seed"])] = row
    return list(rows.values())


# --------------------------------------------------------------------------- data
def shapes_data(root: Path, plan: Plan, drop: float) -> Path:
    from segbalance.pipeline import sample_data

    if (root / "labeled.json").is_file():  # written by an earlier (resumed) run: same seed, same files
        return root
    return sample_data.write_sample_data("shapes", root, plan.num_images, plan.size, seed=0, drop_fraction=drop)


def shapes_test_set(root: Path, plan: Plan) -> Path:
    """Held-out images (another seed: no image shared with training), complete masks."""
    from segbalance.pipeline import sample_data

    return sample_data.write_sample_data("shapes", root, plan.test_images, plan.size, seed=1000)


def nuclei_data(root: Path, plan: Plan, seed: int = 0):
    """Train crops from the left 60% of the stardist image, test crops from the right 40%."""
    from segbalance.pipeline import sample_data
    from segbalance.trainer.example_codec import encode_png

    image, mask, names = sample_data.load_real_sample("nuclei")
    cut = int(mask.shape[1] * 0.6)
    for folder, sl, count, crop_seed in ((root / "train", slice(0, cut), plan.num_images, seed),
                                         (root / "test", slice(cut, None), plan.test_images, seed + 1)):
        for sub in ("images", "masks"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        crops = sample_data._random_crops(image[:, sl], mask[:, sl], count, plan.size, crop_seed)
        for i, (img, msk) in enumerate(crops):
            (folder / "images" / f"nuclei_{i:05d}.png").write_bytes(encode_png(img))
            (folder / "masks" / f"nuclei_{i:05d}.png").write_bytes(encode_png(msk))
        (folder / "classes.json").write_text(json.dumps({"class_names": names, "ignore_index": 255}))
    return root / "train", root / "test", names


def load_test_items(folder: Path, mask_sub: str = "masks"):
    from segbalance.trainer.example_codec import decode_array

    items = []
    for path in sorted((folder / "images").glob("*.png")):
        mask = decode_array((folder / mask_sub / path.name).read_bytes())
        items.append((path.stem, path.read_bytes(), mask))
    return items


# --------------------------------------------------------------------------- runs
def pipeline_artifacts(config) -> dict:
    """Run the pipeline for ``config``; return the URIs the trainer cells reuse."""
    from segbalance.contract import CLASS_STATS_TYPE
    from segbalance.pipeline.run import run_local
    from segbalance.pipeline.run_summary import latest_artifact, open_store

    summary = run_local(config, with_report=False)
    store = open_store(summary["metadata"])
    return {
        "examples": latest_artifact(store, "Examples").uri,
        "transform_graph": latest_artifact(store, "TransformGraph").uri,
        "class_stats": latest_artifact(store, CLASS_STATS_TYPE).uri,
        "pipeline_miou": summary.get("miou"),
    }


def resolve_loss(loss: dict, class_stats_uri: str, stats_changes: Optional[dict] = None, base_stats=None) -> dict:
    """The cell's loss config; with ``stats_changes`` (StatsConfig fields over ``base_stats``) its
    class-weight scheme becomes the explicit vector computed from the ClassStats counts with them."""
    from segbalance.pipeline.config import StatsConfig
    from segbalance.trainer.class_stats_io import read_class_stats
    from segbalance.trainer.class_weights import compute_class_weights
    from segbalance.trainer.typed_config import from_dict, to_dict

    loss = copy.deepcopy(loss)
    scheme = loss.get("class_weights")
    if stats_changes and isinstance(scheme, str):
        stats_config = from_dict(StatsConfig, {**to_dict(base_stats or StatsConfig()), **stats_changes}, "stats")
        stats = read_class_stats(class_stats_uri)
        loss["class_weights"] = compute_class_weights(stats["pixel_counts"], scheme,
                                                      present_image_pixels=stats.get("present_image_pixels"),
                                                      **stats_config.weight_options()).tolist()
    return loss


def train_cell(artifacts: dict, base_cfg: dict, loss: dict, seed: int, workdir: Path) -> dict:
    """One training with segbalance.trainer.task.run_fn on the pipeline's artifacts (``base_cfg``: the
    pipeline's trainer custom_config; the cell changes its loss and seed)."""
    from tfx.components.trainer.fn_args_utils import FnArgs

    from segbalance.trainer.task import SUMMARY_FILE, run_fn

    shutil.rmtree(workdir, ignore_errors=True)
    cfg = copy.deepcopy(base_cfg)
    cfg["training"].update({"loss": loss, "seed": seed, "backup_dir": str(workdir / "backup")})
    cfg["class_stats_uri"] = artifacts["class_stats"]
    fn_args = FnArgs(
        train_files=[os.path.join(artifacts["examples"], "Split-train", "*")],
        eval_files=[os.path.join(artifacts["examples"], "Split-eval", "*")],
        transform_output=artifacts["transform_graph"], serving_model_dir=str(workdir / "serving"),
        model_run_dir=str(workdir / "run"), custom_config=cfg)
    started = time.time()
    run_fn(fn_args)
    summary = json.loads((workdir / "run" / SUMMARY_FILE).read_text())
    return {"serving_dir": str(workdir / "serving"), "seconds": round(time.time() - started, 1),
            "history": summary["history"], "class_weights": summary["class_weights"]}


def evaluate(serving_dir: str, items, num_classes: int, ignore_index: int) -> dict:
    from segbalance.components import evaluation_metrics
    from segbalance.components.seg_evaluator import confusion_over, load_predictor

    cm = confusion_over(load_predictor(serving_dir), items, num_classes, ignore_index)
    return evaluation_metrics.summarize(cm)


def experiment_config(plan: Plan, data_dir: Path, output_dir: Path, class_names: List[str], seed: int = 0):
    from segbalance.pipeline.config import config_from_dict

    return config_from_dict({
        "name": "segbalance-experiment", "output_dir": str(output_dir),
        "data": {"dir": str(data_dir)},
        "classes": {"names": list(class_names)},
        "training": {"image_size": [plan.size, plan.size], "epochs": plan.epochs, "batch_size": plan.batch_size,
                     "depth": 3 if plan.size % 8 == 0 else 2, "loss": {"terms": [CE]}, "seed": seed},
        "evaluation": {"miou_threshold": 0.0, "tolerance": 1.0},
    })


def run_group(name: str, plan: Plan, config, losses: Dict[str, dict], names: List[str], seeds: List[int],
              items, work: Path, results: list, keep_models: Optional[set] = None) -> None:
    from segbalance.pipeline.dag import trainer_custom_config

    print(f"experiment: [{name}] pipeline for {config.data.dir}", flush=True)
    artifacts = pipeline_artifacts(config)
    base_cfg = trainer_custom_config(config)
    done = {(r["group"], r["loss"], r["seed"]) for r in results}
    for loss_name in names:
        for seed in seeds:
            if (name, loss_name, seed) in done and (keep_models is None or (loss_name, seed) not in keep_models):
                print(f"experiment: [{name}] {loss_name} seed {seed}: done in an earlier run, reused", flush=True)
                continue
            cell_dir = work / "cells" / f"{name}-{loss_name}-{seed}"
            loss = resolve_loss(losses[loss_name], artifacts["class_stats"], STATS_CHANGES.get(loss_name),
                                config.stats)
            outcome = train_cell(artifacts, base_cfg, loss, seed, cell_dir)
            scores = evaluate(outcome["serving_dir"], items, config.num_classes, config.classes.ignore_index)
            row = {"group": name, "loss": loss_name, "seed": seed, "miou": scores["miou"],
                   "per_class_iou": scores["per_class_iou"], "seconds": outcome["seconds"],
                   "history": outcome["history"], "class_weights": outcome["class_weights"],
                   "class_names": list(config.classes.names)}
            results[:] = [r for r in results if (r["group"], r["loss"], r["seed"]) != (name, loss_name, seed)]
            results.append(row)
            with open(work / RESULTS_LOG, "a") as log:  # a crashed or stopped run resumes from here
                log.write(json.dumps(row) + "\n")
            print(f"experiment: [{name}] {loss_name} seed {seed}: test mIoU {scores['miou']:.4f} "
                  f"({outcome['seconds']}s)", flush=True)
            if keep_models is None or (loss_name, seed) not in keep_models:
                shutil.rmtree(cell_dir, ignore_errors=True)
            else:
                results[-1]["serving_dir"] = outcome["serving_dir"]


def run_experiment(output: Path, plan: Plan, work: Optional[Path] = None) -> dict:
    from segbalance.pipeline import experiment_report, seed004
    from segbalance.pipeline.sample_data import SHAPES_CLASSES

    work = Path(work or output / "_work")
    output.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results: list = load_results(work)
    if results:
        print(f"experiment: resuming, {len(results)} trainings already done in {work}", flush=True)
    test_dir = shapes_test_set(work / "shapes_test", plan)
    shapes_items = load_test_items(test_dir)
    example_drop = max(plan.drop_fractions)
    for drop in plan.drop_fractions:
        data = shapes_data(work / f"shapes_drop{drop}", plan, drop)
        config = experiment_config(plan, data, work / f"run_drop{drop}", SHAPES_CLASSES)
        keep = {(loss, plan.missing_seeds[0]) for loss in plan.missing_losses} if drop == example_drop else set()
        run_group(f"missing_drop{drop}", plan, config, MISSING_LOSSES, plan.missing_losses, plan.missing_seeds,
                  shapes_items, work, results, keep)
        if drop == 0.0 and plan.imbalance_losses:
            # Cells identical to ones just trained (same data, loss and seed) are reused, not retrained.
            same = {"unweighted": "plain_ce", "median_frequency": "weighted_ce_median", "ce_dice": "ce_dice"}
            for row in list(results):
                for new, old in same.items():
                    if (row["group"] == "missing_drop0.0" and row["loss"] == old and new in plan.imbalance_losses
                            and row["seed"] in plan.imbalance_seeds
                            and not any((r["group"], r["loss"], r["seed"]) == ("imbalance_shapes", new, row["seed"])
                                        for r in results)):
                        results.append({**row, "group": "imbalance_shapes", "loss": new})
            extra = [n for n in plan.imbalance_losses if n not in same or same[n] not in plan.missing_losses]
            run_group("imbalance_shapes", plan, config, IMBALANCE_LOSSES, extra, plan.imbalance_seeds,
                      shapes_items, work, results)
    if plan.nuclei_losses:
        train_dir, nuclei_test, nuclei_names = nuclei_data(work / "nuclei", plan)
        config = experiment_config(plan, train_dir, work / "run_nuclei", nuclei_names)
        run_group("imbalance_nuclei", plan, config, IMBALANCE_LOSSES, plan.nuclei_losses, plan.nuclei_seeds,
                  load_test_items(nuclei_test), work, results)
    report = {
        "plan": plan.__dict__, "results": results, "seed004": seed004.revisit(),
        "seconds": round(time.time() - started, 1), "date": time.strftime("%Y-%m-%d"),
        "command": "segbalance experiment" + (" --quick" if plan.epochs <= 2 else ""),
    }
    experiment_report.write(report, output, shapes_items, example_drop)
    return report


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "experiment", help="train small models to compare the losses (tables and plots)",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="docs/results", help="where results.md and the plots go")
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 losses, tiny data (a few minutes)")
    parser.add_argument("--work-dir", help="scratch folder (default OUTPUT/_work, removed at the end)")
    parser.set_defaults(func=_main)


def _main(args) -> int:
    from segbalance.pipeline.run import quiet_library_output

    quiet_library_output()
    from segbalance.pipeline.output_guard import check_is_folder

    output = Path(args.output)
    work = Path(args.work_dir) if args.work_dir else output / "_work"
    check_is_folder(output, "--output")  # a file there: one line now, not a traceback after the first training
    check_is_folder(work, "--work-dir" if args.work_dir else "--output (its _work folder)")
    report = run_experiment(output, Plan.quick() if args.quick else Plan(), work)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    print(f"experiment: {len(report['results'])} trainings in {report['seconds']}s; "
          f"tables and plots in {output}", flush=True)
    return 0
