"""Tables (Markdown) and plots (PNG) for `segbalance experiment`; every number comes from the run."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import numpy as np


def _stats(values: List[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def grouped(results: list) -> Dict[tuple, list]:
    out = defaultdict(list)
    for row in results:
        out[(row["group"], row["loss"])].append(row)
    return out


def _per_class(rows: list, c: int) -> List[float]:
    return [r["per_class_iou"][c] for r in rows if r["per_class_iou"][c] is not None]


def missing_table(results: list) -> List[str]:
    groups = grouped(results)
    drops = sorted({float(g.split("drop")[1]) for g, _ in groups if g.startswith("missing_drop")})
    losses = list(dict.fromkeys(r["loss"] for r in results if r["group"].startswith("missing_drop")))
    if not drops:
        return []
    lines = ["| loss | " + " | ".join(f"mIoU, drop {d}" for d in drops) + " |",
             "|---|" + "---|" * len(drops)]
    for loss in losses:
        cells = [_stats([r["miou"] for r in groups.get((f"missing_drop{d}", loss), [])]) for d in drops]
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    return lines


def per_class_table(results: list, group: str) -> List[str]:
    rows = [r for r in results if r["group"] == group]
    if not rows:
        return []
    names = rows[0]["class_names"]
    groups = grouped(rows)
    lines = ["| loss | mIoU | " + " | ".join(f"IoU {n}" for n in names) + " | seeds |",
             "|---|---|" + "---|" * len(names) + "---|"]
    for (_, loss), cell in groups.items():
        per_class = [_stats(_per_class(cell, c)) for c in range(len(names))]
        lines.append(f"| {loss} | {_stats([r['miou'] for r in cell])} | " + " | ".join(per_class)
                     + f" | {len(cell)} |")
    return lines


def seed004_table(seed004: dict) -> List[str]:
    ours, blog = seed004["ours"], seed004["blog"]
    return [
        "| quantity | blog (seed 004) | ours |", "|---|---|---|",
        f"| CE, complete annotations | {blog['plain_ce_complete']} | {ours['plain_ce_complete']:.3f} |",
        f"| CE, 2 annotations missing | {blog['plain_ce_missing']} | {ours['plain_ce_missing']:.3f} |",
        f"| custom / ignore-predicted CE, 2 missing | {blog['custom']} | {ours['ignore_predicted_ce']:.3f} |",
        f"| marginal CE, 2 missing | n/a | {ours['marginal_ce']:.3f} |",
    ]


# --------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_miou_vs_drop(results: list, path: Path) -> None:
    plt = _plt()
    groups = grouped(results)
    drops = sorted({float(g.split("drop")[1]) for g, _ in groups if g.startswith("missing_drop")})
    losses = list(dict.fromkeys(r["loss"] for r in results if r["group"].startswith("missing_drop")))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for loss in losses:
        means, stds = [], []
        for d in drops:
            values = [r["miou"] for r in groups.get((f"missing_drop{d}", loss), [])]
            means.append(np.mean(values))
            stds.append(np.std(values))
        ax.errorbar(drops, means, yerr=stds, marker="o", capsize=3, label=loss)
    ax.set_xlabel("fraction of images with erased annotations")
    ax.set_ylabel("test mIoU (complete masks)")
    ax.set_title("mIoU vs annotation drop (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_class(results: list, group: str, path: Path, title: str) -> None:
    rows = [r for r in results if r["group"] == group]
    if not rows:
        return
    plt = _plt()
    names = rows[0]["class_names"]
    groups = grouped(rows)
    fig, ax = plt.subplots(figsize=(max(7, 1.4 * len(groups)), 4.5))
    width = 0.8 / len(names)
    for c, name in enumerate(names):
        means = [np.mean(_per_class(cell, c) or [0]) for cell in groups.values()]
        stds = [np.std(_per_class(cell, c) or [0]) for cell in groups.values()]
        ax.bar(np.arange(len(groups)) + c * width, means, width, yerr=stds, capsize=2, label=name)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2)
    ax.set_xticklabels([loss for _, loss in groups], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test IoU")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_training_curves(results: list, group: str, path: Path) -> None:
    rows = [r for r in results if r["group"] == group and r["seed"] == min(x["seed"] for x in results)]
    if not rows:
        return
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for row in rows:
        axes[0].plot(row["history"]["loss"], label=row["loss"])
        if "val_miou" in row["history"]:
            axes[1].plot(row["history"]["val_miou"], label=row["loss"])
    axes[0].set_title(f"training loss ({group})")
    axes[1].set_title("validation mIoU (annotated masks)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_examples(results: list, items, drop_folder: Path, path: Path, group: str, count: int = 3) -> None:
    """image | complete mask | annotation (erased) | prediction per loss, for a few test images."""
    from segbalance.components.seg_evaluator import load_predictor

    rows = [r for r in results if r["group"] == group and r.get("serving_dir")]
    if not rows:
        return
    plt = _plt()
    from segbalance.trainer.example_codec import decode_array

    palette = np.array([[0, 0, 0], [230, 60, 50], [60, 180, 75], [50, 90, 230], [255, 255, 255]], np.uint8)
    colour = lambda m: palette[np.where(m == 255, 4, np.minimum(m, 3))]  # noqa: E731
    chosen = items[:count]
    predictions = {r["loss"]: load_predictor(r["serving_dir"])([image for _, image, _ in chosen]) for r in rows}
    columns = 2 + len(predictions)
    fig, axes = plt.subplots(count, columns, figsize=(1.8 * columns, 1.9 * count))
    for i, (sid, image_bytes, mask) in enumerate(chosen):
        panels = [("image", decode_array(image_bytes)), ("complete mask", colour(mask))]
        panels += [(loss, colour(pred[i])) for loss, pred in predictions.items()]
        for j, (title, panel) in enumerate(panels):
            axes[i, j].imshow(panel)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if i == 0:
                axes[i, j].set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- write
def write(report: dict, output: Path, shapes_items, example_drop: float) -> None:
    results = report["results"]
    for row in results:
        row.pop("serving_dir_tmp", None)
    plot_miou_vs_drop(results, output / "miou_vs_drop.png")
    example_group = f"missing_drop{example_drop}"
    plot_per_class(results, example_group, output / "per_class_iou_missing.png",
                   f"per-class test IoU, drop {example_drop}")
    plot_per_class(results, "imbalance_shapes", output / "per_class_iou_imbalance_shapes.png",
                   "per-class test IoU, shapes (circle = rare class)")
    plot_per_class(results, "imbalance_nuclei", output / "per_class_iou_imbalance_nuclei.png",
                   "per-class test IoU, nuclei (boundary = rare class)")
    plot_training_curves(results, example_group, output / "training_curves.png")
    plot_examples(results, shapes_items, output, output / "examples.png", example_group)
    for row in results:
        row.pop("serving_dir", None)
    (output / "results.json").write_text(json.dumps(report, indent=1))

    plan = report["plan"]
    lines = [
        "# Experiment results", "",
        f"Produced by `{report['command']}` on {report['date']} ({report['seconds']:.0f} s on a 2-core CPU machine). "
        f"Shapes: {plan['num_images']} training images of {plan['size']}x{plan['size']} per data set, "
        f"{plan['epochs']} epochs, batch {plan['batch_size']}; scores are on {plan['test_images']} held-out "
        f"images with **complete** masks. mean ± std over seeds. Raw numbers: `results.json`.", "",
        "## 1. Missing annotations (shapes)", "", *missing_table(results), "",
        "![mIoU vs drop](miou_vs_drop.png)", "",
        f"Per class at drop {example_drop}:", "", *per_class_table(results, example_group), "",
        "![per-class IoU](per_class_iou_missing.png)", "", "![training curves](training_curves.png)", "",
        "![examples](examples.png)", "",
    ]
    if any(r["group"] == "imbalance_shapes" for r in results):
        lines += ["## 2. Class imbalance", "", "Shapes, no annotations dropped (circle is the rare class):", "",
                  *per_class_table(results, "imbalance_shapes"), "",
                  "![imbalance shapes](per_class_iou_imbalance_shapes.png)", ""]
    if any(r["group"] == "imbalance_nuclei" for r in results):
        lines += ["Nuclei (stardist image; train crops from the left 60 %, test crops from the right 40 %; "
                  "boundary is the thin rare class):", "", *per_class_table(results, "imbalance_nuclei"), "",
                  "![imbalance nuclei](per_class_iou_imbalance_nuclei.png)", ""]
    lines += ["## 3. Seed 004's numbers, revisited", "", *seed004_table(report["seed004"]), "",
              f"Annotations removed: {report['seed004']['removed']}. See `pipeline/seed004.py` for the "
              "prediction used and why the blog's custom value fell below the complete-annotation CE.", ""]
    (output / "results.md").write_text("\n".join(lines))
