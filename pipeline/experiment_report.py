"""Tables (Markdown) and plots (PNG) for `segbalance experiment`; every number comes from the run."""
from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from segbalance.contract import counted
from segbalance.pipeline.output_guard import write_text_atomic


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


def _datasets(results: list) -> List[str]:
    return list(dict.fromkeys(r["dataset"] for r in results))


def _drops(results: list, dataset: Optional[str] = None) -> List[float]:
    return sorted({r["drop"] for r in results if dataset is None or r["dataset"] == dataset})


def _losses(results: list) -> List[str]:
    return list(dict.fromkeys(r["loss"] for r in results))


def _per_class(rows: list, c: int) -> List[float]:
    return [r["per_class_iou"][c] for r in rows if r["per_class_iou"][c] is not None]


# --------------------------------------------------------------------------- ranks
PLAIN_CE = "ce/none/none"  # the baseline cell: plain cross-entropy
BUDGETS = (10, 20)  # epochs of the short-budget rankings


def test_miou(row: dict) -> float:
    return row["miou"]


def budget_score(epochs: int) -> Callable[[dict], float]:
    """A row's best validation mIoU within its first ``epochs`` epochs: what the best-epoch export
    gives a user who trains only that long (validation masks are the annotated ones)."""
    return lambda row: max(row["history"]["val_miou"][:epochs])


def shorter_note(results: list, epochs: int) -> str:
    """Said of a short-budget ranking where trainings ran fewer than ``epochs`` epochs (QA 72: `--quick`'s 2 epochs
    were ranked "within the first 10 epochs" without a word): for those it is the best of the whole run."""
    short = sum(len(row["history"]["val_miou"]) < epochs for row in results)
    if not short:
        return ""
    which = "every training" if short == len(results) else f"{counted(short, 'training')} of {len(results)}"
    return (f"; {which} ran fewer than {epochs} epochs, so for {'them' if short > 1 else 'it'} this is the best of "
            f"the whole run")


def mean_ranks(results: list, score: Callable[[dict], float] = test_miou) -> List[dict]:
    """Rank the cells (losses) within each (data set, drop) group by their mean ``score`` over seeds
    (test mIoU unless told; 1 = best, ties share the mean rank); average the ranks over the groups.
    Only cells measured in every group take part, so each mean is over the same groups. Sorted best
    first."""
    from scipy.stats import rankdata

    groups = grouped(results)
    names = sorted({g for g, _ in groups})
    losses = [loss for loss in _losses(results) if all((g, loss) in groups for g in names)]
    if not losses:
        return []
    means = np.array([[np.mean([score(r) for r in groups[(g, loss)]]) for loss in losses] for g in names])
    ranks = np.array([rankdata(-row, method="average") for row in means])  # [group, loss]
    out = [{"loss": loss, "mean_rank": float(ranks[:, j].mean()), "groups": len(names),
            "mean_miou": float(means[:, j].mean()), "worst_rank": float(ranks[:, j].max())}
           for j, loss in enumerate(losses)]
    return sorted(out, key=lambda d: (d["mean_rank"], -d["mean_miou"]))


def rank_table(results: list, score: Callable[[dict], float] = test_miou) -> List[str]:
    ranked = mean_ranks(results, score)
    if not ranked:
        return []
    lines = ["| cell (terms/weighting/missing[/weight map]) | mean rank | worst rank | mean mIoU | groups |",
             "|---|---|---|---|---|"]
    lines += [f"| {d['loss']} | {d['mean_rank']:.2f} | {d['worst_rank']:.1f} | {d['mean_miou']:.3f} | {d['groups']} |"
              for d in ranked]
    return lines


# --------------------------------------------------------------------------- goals
def _cell_mean(results: list, dataset: str, drop: float, loss: str, value: Callable[[dict], Optional[float]]):
    values = [value(r) for r in results if r["dataset"] == dataset and r["drop"] == drop and r["loss"] == loss]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _ordered_cells(results: list) -> List[str]:
    ranked = [d["loss"] for d in mean_ranks(results)]
    return ranked + [loss for loss in _losses(results) if loss not in ranked]


def retention_table(results: list) -> List[str]:
    """Per cell and data set: test mIoU at the highest drop rate as a share of the same cell's at the
    lowest, and the mIoU points lost."""
    datasets = [d for d in _datasets(results) if len(_drops(results, d)) > 1]
    if not datasets:
        return ["Not measured: no data set among the reported rows has more than one drop rate."]
    header = " | ".join(f"{d}: kept at drop {max(_drops(results, d))} (points lost)" for d in datasets)
    lines = [f"| cell | {header} | min kept |", "|---|" + "---|" * (len(datasets) + 1)]
    for loss in _ordered_cells(results):
        cells, kept_all = [], []
        for dataset in datasets:
            drops = _drops(results, dataset)
            low, high = (_cell_mean(results, dataset, d, loss, test_miou) for d in (drops[0], drops[-1]))
            if low is None or high is None or low <= 0:
                cells.append("n/a")
                continue
            kept_all.append(high / low)
            cells.append(f"{100 * high / low:.0f} % ({100 * (low - high):+.1f})")
        least = f"{100 * min(kept_all):.0f} %" if len(kept_all) == len(datasets) else "n/a"
        lines.append(f"| {loss} | " + " | ".join(cells) + f" | {least} |")
    return lines


def rarest_classes(test_items: Dict[str, list], class_names: Dict[str, List[str]],
                   ignore_index: int = 255) -> Dict[str, int]:
    """Per data set: the foreground class with the fewest pixels in its held-out (complete) test masks
    among those present there."""
    out = {}
    for dataset, items in test_items.items():
        if dataset not in class_names or not items:
            continue
        c = len(class_names[dataset])
        counts = np.zeros(c, np.int64)
        for _, _, mask in items:
            values = np.asarray(mask).ravel()
            counts += np.bincount(values[values != ignore_index], minlength=c)[:c]
        present = [k for k in range(1, c) if counts[k] > 0]
        if present:
            out[dataset] = min(present, key=lambda k: counts[k])
    return out


def rarest_class_table(results: list, rarest: Dict[str, int]) -> List[str]:
    """Per cell and data set: the rarest class's test IoU minus plain CE's in the same group, averaged
    over the drop rates (the cell's own IoU in brackets)."""
    datasets = [d for d in _datasets(results) if d in rarest]
    if PLAIN_CE not in _losses(results):
        return [f"Not measured: plain CE (`{PLAIN_CE}`) is not among the reported rows."]
    if not datasets:
        return []
    names = {r["dataset"]: r["class_names"] for r in results}
    header = " | ".join(f"{d} ({names[d][rarest[d]]})" for d in datasets)
    lines = [f"| cell | {header} |", "|---|" + "---|" * len(datasets)]
    for loss in _ordered_cells(results):
        cells = []
        for dataset in datasets:
            c = rarest[dataset]
            iou = lambda r: r["per_class_iou"][c]  # noqa: E731
            pairs = [(_cell_mean(results, dataset, d, loss, iou), _cell_mean(results, dataset, d, PLAIN_CE, iou))
                     for d in _drops(results, dataset)]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            cells.append(f"{np.mean([a - b for a, b in pairs]):+.3f} ({np.mean([a for a, _ in pairs]):.3f})"
                         if pairs else "n/a")
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    return lines


def _at_best(row: dict, key: str) -> Optional[float]:
    """``history[key]`` at the row's best epoch (None where the curve or the best epoch is missing)."""
    curve, best = row.get("history", {}).get(key), row.get("best_epoch")
    return curve[best] if curve and best is not None and best < len(curve) else None


def validation_table(results: list, rarest: Dict[str, int]) -> List[str]:
    """Per group: the validation mIoU that chose each model (best epoch) beside its test mIoU, mean over
    the trained rows, the range of the cells' gaps, and the same for the rarest class. A large gap says
    the validation split does not predict held-out data (e.g. crops that overlap the training crops)."""
    from segbalance.trainer.metrics import metric_names

    lines = ["| group | trainings | validation mIoU (best epoch) | test mIoU | validation - test (cells) "
             "| rarest class: validation / test |", "|---|---|---|---|---|---|"]
    for group in dict.fromkeys(r["group"] for r in results):
        rows = [r for r in results if r["group"] == group and not r.get("same_training_as")
                and _at_best(r, "val_miou") is not None]
        if not rows:
            continue
        val = [_at_best(r, "val_miou") for r in rows]
        test = [r["miou"] for r in rows]
        gaps = [np.mean([_at_best(r, "val_miou") - r["miou"] for r in cell]) for cell in grouped(rows).values()]
        rare = "n/a"
        c = rarest.get(rows[0]["dataset"])
        if c is not None:
            key = "val_" + metric_names(rows[0]["class_names"])[c]
            pairs = [(_at_best(r, key), r["per_class_iou"][c]) for r in rows if _at_best(r, key) is not None]
            if pairs:
                rare = (f"{rows[0]['class_names'][c]} {np.mean([v for v, _ in pairs]):.3f} / "
                        f"{np.mean([t for _, t in pairs]):.3f}")
        lines.append(f"| {group} | {len(rows)} | {np.mean(val):.3f} | {np.mean(test):.3f} | "
                     f"{np.mean(val) - np.mean(test):+.3f} ({min(gaps):+.3f} to {max(gaps):+.3f}) | {rare} |")
    return lines


# --------------------------------------------------------------------------- tables
def dataset_table(results: list, dataset: str) -> List[str]:
    rows = [r for r in results if r["dataset"] == dataset]
    drops, groups = _drops(rows), grouped(rows)
    lines = ["| cell | " + " | ".join(f"mIoU, drop {d}" for d in drops) + " |", "|---|" + "---|" * len(drops)]
    for loss in _losses(rows):
        cells = [_stats([r["miou"] for r in groups.get((f"{dataset}_drop{d}", loss), [])]) for d in drops]
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    return lines


def per_class_table(results: list, group: str) -> List[str]:
    rows = [r for r in results if r["group"] == group]
    if not rows:
        return []
    names = rows[0]["class_names"]
    groups = grouped(rows)
    lines = ["| cell | mIoU | " + " | ".join(f"IoU {n}" for n in names) + " | seeds |",
             "|---|---|" + "---|" * len(names) + "---|"]
    for (_, loss), cell in groups.items():
        per_class = [_stats(_per_class(cell, c)) for c in range(len(names))]
        lines.append(f"| {loss} | {_stats([r['miou'] for r in cell])} | " + " | ".join(per_class)
                     + f" | {len(cell)} |")
    return lines


def capped(row: dict) -> bool:
    """The training ran to the epoch cap without early stopping: not shown to be on its plateau."""
    return row["stopped_epoch"] is None and row["epochs_run"] >= row["max_epochs"]


def convergence_table(results: list) -> List[str]:
    lines = ["| group | trainings | stopped early | hit the epoch cap | epochs run (median, max) "
             "| best epoch (median) |", "|---|---|---|---|---|---|"]
    for group in dict.fromkeys(r["group"] for r in results):
        rows = [r for r in results if r["group"] == group]
        epochs = [r["epochs_run"] for r in rows]
        best = [r["best_epoch"] + 1 for r in rows if r["best_epoch"] is not None]
        lines.append(f"| {group} | {len(rows)} | {sum(r['stopped_epoch'] is not None for r in rows)} | "
                     f"{sum(capped(r) for r in rows)} | {np.median(epochs):.0f}, {max(epochs)} | "
                     f"{np.median(best) if best else float('nan'):.0f} |")
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


def _save(fig, plt, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_miou_vs_drop(results: list, path: Path) -> None:
    plt = _plt()
    datasets = _datasets(results)
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        rows = [r for r in results if r["dataset"] == dataset]
        drops, groups = _drops(rows), grouped(rows)
        for i, loss in enumerate(_losses(rows)):  # past 10 cells the colours repeat: the line style tells them apart
            values = [[r["miou"] for r in groups.get((f"{dataset}_drop{d}", loss), [])] for d in drops]
            ax.errorbar(drops, [np.mean(v) if v else np.nan for v in values],
                        yerr=[np.std(v) if v else 0 for v in values], marker="o", capsize=3, label=loss,
                        linestyle=("-", "--", ":")[i // 10 % 3])
        ax.set_title(dataset)
        ax.set_xlabel("annotation drop (fraction of the images with a foreground class)")
        ax.set_ylabel("test mIoU (complete masks)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    _save(fig, plt, path)


def plot_per_class(results: list, groups: list, path: Path, dataset: str) -> None:
    """Per-class test IoU of every cell, one panel per group (drop rate) in ``groups`` that has rows:
    complete masks beside the highest drop, so a cell trained at one drop only still shows."""
    selected = ([r for r in results if r["group"] == g] for g in dict.fromkeys(groups))
    panels = [grouped(rows) for rows in selected if rows]  # per panel: (group, loss) -> rows
    if not panels:
        return
    plt = _plt()
    names = next(iter(panels[0].values()))[0]["class_names"]
    most = max(map(len, panels))
    fig, axes = plt.subplots(1, len(panels), figsize=(max(7, 1.2 * most) * len(panels), 4.5),
                             sharey=True, squeeze=False)
    width = 0.8 / len(names)
    for ax, cells in zip(axes[0], panels):
        for c, name in enumerate(names):
            means = [np.mean(_per_class(cell, c) or [0]) for cell in cells.values()]
            stds = [np.std(_per_class(cell, c) or [0]) for cell in cells.values()]
            ax.bar(np.arange(len(cells)) + c * width, means, width, yerr=stds, capsize=2, label=name)
        ax.set_xticks(np.arange(len(cells)) + 0.4 - width / 2)
        ax.set_xticklabels([loss for _, loss in cells], rotation=30, ha="right", fontsize=7)
        ax.set_title(f"per-class test IoU, {dataset}, drop {next(iter(cells.values()))[0]['drop']}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test IoU")
    axes[0][-1].legend(fontsize=7)
    _save(fig, plt, path)


def plot_training_curves(results: list, group: str, path: Path) -> None:
    """Validation mIoU per epoch of every cell (first seed), its best epoch marked: the plateau."""
    rows = [r for r in results if r["group"] == group]
    rows = [r for r in rows if r["seed"] == min(x["seed"] for x in rows)]
    if not rows:
        return
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
        (line,) = axes[0].plot(row["history"]["loss"], label=row["loss"])
        curve = row["history"].get("val_miou", [])
        axes[1].plot(curve, color=line.get_color(), label=row["loss"])
        if row["best_epoch"] is not None and row["best_epoch"] < len(curve):
            axes[1].plot([row["best_epoch"]], [curve[row["best_epoch"]]], "o", color=line.get_color())
    axes[0].set_title(f"training loss ({group})")
    axes[1].set_title("validation mIoU (annotated masks)\ndot = best epoch (exported)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    _save(fig, plt, path)


def example_items(items, count: int) -> list:
    """The ``count`` test items with the most foreground classes in their complete masks (first ones on
    ties): crops of background only show nothing of what the losses differ in."""
    classes = [len(set(np.unique(mask).tolist()) - {0, 255}) for _, _, mask in items]
    order = sorted(range(len(items)), key=lambda i: -classes[i])
    return [items[i] for i in order[:count]]


def plot_examples(results: list, items, path: Path, group: str, count: int = 3) -> None:
    """image | complete mask | prediction per kept cell, for a few test images."""
    rows = [r for r in results if r["group"] == group and r.get("serving_dir") and Path(r["serving_dir"]).is_dir()]
    if not rows or not items:
        return
    from segbalance.components.seg_evaluator import load_predictor
    from segbalance.trainer.example_codec import decode_array

    plt = _plt()

    palette = (np.array(plt.get_cmap("tab10").colors) * 255).astype(np.uint8)
    palette = np.concatenate([[[0, 0, 0]], palette, [[255, 255, 255]]]).astype(np.uint8)
    colour = lambda m: palette[np.where(m == 255, len(palette) - 1, np.minimum(m, len(palette) - 2))]  # noqa: E731
    chosen = example_items(items, count)
    predictions = {r["loss"]: load_predictor(r["serving_dir"])([image for _, image, _ in chosen]) for r in rows}
    columns = 2 + len(predictions)
    fig, axes = plt.subplots(len(chosen), columns, figsize=(1.9 * columns, 1.9 * len(chosen)), squeeze=False)
    for i, (_, image_bytes, mask) in enumerate(chosen):
        panels = [("image", decode_array(image_bytes)), ("complete mask", colour(mask))]
        panels += [(loss, colour(pred[i])) for loss, pred in predictions.items()]
        for j, (title, panel) in enumerate(panels):
            axes[i, j].imshow(panel)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if i == 0:
                axes[i, j].set_title(title, fontsize=6)
    _save(fig, plt, path)


# --------------------------------------------------------------------------- write
def row_values(results: list, key: str, default) -> str:
    """The values of ``key`` the rows hold ("25 or 50"), rows without the field taken as ``default``.

    The report states the protocol its rows were trained under, not the command line of the
    ``--report-only`` call that writes it (which may select rows trained with other options)."""
    return " or ".join(str(v) for v in sorted({r.get(key, default) for r in results} or {default}))


def test_sizes(results: list, default: int) -> str:
    """The test-set sizes the rows were scored on (``test_images``; rows from before the field: ``default``)."""
    return row_values(results, "test_images", default)


def rescored_table(results: list) -> List[str]:
    """Rows scored again (``experiment --rescore``): mIoU on the run's own test set and on this report's."""
    rows = sorted((r for r in results if r.get("earlier_score")), key=lambda r: (r["group"], r["loss"], r["seed"]))
    if not rows:
        return []
    sizes = sorted({r["test_images"] for r in rows})
    lines = ["## Rescored", "",
             f"These models were scored again (`--rescore`) on {', '.join(map(str, sizes))} held-out crops; every "
             "table above uses the new scores. Their scores on the run's own test set:", "",
             "| group | cell | seed | mIoU, run's test set | mIoU, this report | change |", "|---|---|---|---|---|---|"]
    for r in rows:
        before = r["earlier_score"]["miou"]
        lines.append(f"| {r['group']} | {r['loss']} | {r['seed']} | {before:.3f} | {r['miou']:.3f} "
                     f"| {r['miou'] - before:+.3f} |")
    return lines + [""]


def twins_note(results: list) -> str:
    """Says which rows are another cell's training (every class annotated: marginal CE is plain CE)."""
    twins = [r for r in results if r.get("same_training_as")]
    if not twins:
        return ""
    groups = ", ".join(dict.fromkeys(r["group"] for r in twins))
    pairs = ", ".join(f"{a} = {b}" for a, b in dict.fromkeys((r["loss"], r["same_training_as"]) for r in twins))
    return (f"{counted(len(twins), 'row')} ({groups}: every class annotated in every image) "
            f"{'is' if len(twins) == 1 else 'are'} the training of the same "
            f"terms and weighting under another missing-label handling, which is then the same loss (marginal CE "
            f"equals CE, marginal Dice equals Dice): {pairs}. ")


def commits_note(results: list) -> str:
    """Says when the rows were trained by more than one version of the code (``code_commit``): sets split on the
    values a row records, and a code change that keeps the defaults (session 31's Transform statistics) is none
    of them (QA 75)."""
    commits = list(dict.fromkeys(r.get("code_commit") or NOT_RECORDED for r in results
                                 if not r.get("same_training_as")))
    if len(commits) < 2:
        return ""
    return (f"The rows were trained by {len(commits)} versions of the code ({', '.join(commits)}; `code_commit`), "
            f"ranked together here where their recorded values agree. ")


NOT_RECORDED = "not recorded"  # a field a row from before it was recorded lacks


def training_sets(results: list) -> List[tuple]:
    """The rows by what they were trained with (``experiment_config.trained_with``: the --config digest and
    the protocol options), on the fields whose recorded values differ among them: ``[(values,
    rows)]`` in the order of first appearance; one set, ``({}, results)``, when they agree. A row from
    before a field was recorded counts as any value of it while the recorded values agree, as
    ``NOT_RECORDED`` where they differ."""
    from segbalance.pipeline.experiment_config import trained_with

    recorded = [dict(trained_with(r)) for r in results]
    fields = list(dict.fromkeys(key for values in recorded for key in values))
    differing = [key for key in fields if len({values[key] for values in recorded if key in values}) > 1]
    sets: dict = {}
    for row, values in zip(results, recorded):
        chosen = {key: values.get(key, NOT_RECORDED) for key in differing}
        sets.setdefault(tuple(chosen.items()), (chosen, []))[1].append(row)
    return list(sets.values())


def training_time(seconds: float) -> str:
    """``2.3 h``, or ``12 min`` under a tenth of an hour (a quick run read "0.0 h")."""
    return f"{seconds / 3600:.1f} h" if seconds >= 360 else f"{max(1, round(seconds / 60))} min"


def set_label(values: dict, rows: list) -> str:
    """A set's values as the options that gave them ("--config b.yaml (values of digest 1a2b), --max-epochs 2")."""
    parts = []
    for key, value in values.items():
        if key == "config_digest":
            files = ", ".join(dict.fromkeys(r["config"] for r in rows if r.get("config")))
            parts.append("no --config (the defaults)" if value is None else
                         f"--config {files} (values of digest {value})" if files else
                         f"--config values of digest {value}")
        elif key == "defaults_digest":
            parts.append(f"code whose training defaults have digest {value}" if value != NOT_RECORDED else
                         "code from before session 31 (defaults not recorded)")
        else:
            option = "--" + key.replace("_", "-")
            parts.append(f"{option} {NOT_RECORDED} (rows from before the field)" if value == NOT_RECORDED
                         else f"{option} {value}")
    return ", ".join(parts)


def protocol_text(results: list, plan: dict) -> str:
    """The data and the training protocol the rows were trained under, from the rows."""
    return (
        f"Data sets: {', '.join(_datasets(results))}; annotation drop {', '.join(map(str, _drops(results)))}; "
        f"{row_values(results, 'num_images', plan['num_images'])} training crops of "
        f"{' or '.join(f'{v}x{v}' for v in row_values(results, 'size', plan['size']).split(' or '))} "
        f"per data set and drop (batch {row_values(results, 'batch_size', plan.get('batch_size', 16))}), scored on "
        f"{test_sizes(results, plan['test_images'])} held-out crops with **complete** masks; seeds "
        f"{', '.join(map(str, sorted({r['seed'] for r in results})))} "
        f"(the rows of the work folder the command selects). "
        f"Learning-rate schedule `{row_values(results, 'lr_schedule', plan.get('lr_schedule', 'constant'))}` "
        f"(`training.lr_schedule.type`); train / eval split by "
        f"{row_values(results, 'split_by', plan.get('split_by', 'record'))} (`data.split_by`). "
        f"Each training runs at least {row_values(results, 'min_epochs', plan.get('min_epochs', 0))} epochs, then "
        f"until validation mIoU has not improved for {row_values(results, 'patience', plan['patience'])} epochs "
        f"(at most {row_values(results, 'max_epochs', plan['max_epochs'])}); the best epoch is the model scored. "
        f"mean ± std over seeds. "
        f"Raw numbers and every curve: `results.json`.")


def _set_sections(results: list, output: Path, test_items: dict, example_drop: float, suffix: str) -> List[str]:
    """The plots (PNG names end in ``suffix``) and the Markdown sections of one set of rows."""
    plot_miou_vs_drop(results, output / f"miou_vs_drop{suffix}.png")
    sections = []
    for dataset in _datasets(results):
        group = f"{dataset}_drop{example_drop}"
        first = f"{dataset}_drop{min(_drops(results, dataset))}"
        per_class, curves, examples = (f"{kind}_{dataset}{suffix}.png" for kind in
                                       ("per_class_iou", "training_curves", "examples"))
        plot_per_class(results, [first, group], output / per_class, dataset)
        plot_training_curves(results, group, output / curves)
        plot_examples(results, test_items.get(dataset, []), output / examples, group)
        sections += [f"### {dataset}", "", *dataset_table(results, dataset), ""]
        for g in dict.fromkeys([first, group]):
            sections += [f"Per class, {g}:", "", *per_class_table(results, g), ""]
        sections += [f"![per-class IoU {dataset}]({per_class})", "", f"![training curves {dataset}]({curves})", ""]
        if (output / examples).is_file():
            sections += [f"![examples {dataset}]({examples})", ""]
    rarest = rarest_classes(test_items, {r["dataset"]: r["class_names"] for r in results})
    return [
        "## Mean rank over data sets and drop rates", "",
        "Cells ranked by mean test mIoU within each (data set, drop) group (1 = best), averaged over groups:", "",
        *rank_table(results), "",
        "## Missing annotations: mIoU kept at the highest drop rate", "",
        "Each cell's test mIoU at the highest drop as a share of its own at the lowest (complete masks "
        "in the test set either way), and the mIoU points lost:", "",
        *retention_table(results), "",
        "## Imbalance: the rarest class against plain CE", "",
        f"Test IoU of each data set's rarest foreground class (fewest pixels in its test masks) minus "
        f"plain CE's (`{PLAIN_CE}`) in the same group, mean over drop rates; the cell's own IoU in brackets:",
        "", *rarest_class_table(results, rarest), "",
        "## Validation against the test set", "",
        "The validation mIoU at the best epoch (what chose each model) beside the same models' test mIoU, mean "
        "over the trainings of each group (twins counted once); the gap's range over the cells in brackets. "
        "Validation crops come from the training images' eval split, test crops from held-out images; with "
        "dropped annotations validation scores the labelled classes only. A large positive gap says the "
        "validation split does not predict held-out data:", "",
        *validation_table(results, rarest), "",
        "## A short training budget", "",
        *[line for epochs in BUDGETS for line in (
            f"Mean rank by the best **validation** mIoU within the first {epochs} epochs (what the best-epoch "
            f"export gives with `training.epochs: {epochs}`; read from the same trainings' curves, so a "
            f"schedule that depends on the epoch count is not re-run){shorter_note(results, epochs)}:", "",
            *rank_table(results, budget_score(epochs)), "")],
        *rescored_table(results),
        "## Convergence", "",
        "Trainings that hit the epoch cap without early stopping are not shown to be on their plateau:", "",
        *convergence_table(results), "",
        f"![mIoU vs drop](miou_vs_drop{suffix}.png)", "",
        "## Per data set", "", *sections,
    ]


# the PNGs a report writes (``_set_sections``): a report removes an earlier one's that it does not write again
REPORT_PLOT = re.compile(r"(miou_vs_drop(_set\d+)?|per_class_iou_.+|training_curves_.+|examples_.+)\.png")


def write(report: dict, output: Path, test_items: dict, example_drop: float) -> None:
    """results.json (every row with its curves), results.md and the PNGs. ``test_items``: per data set.
    Rows trained with other values (``training_sets``) are reported set by set, each with its own
    tables, ranks and plots (``_setN`` in their names), and ``results.json`` lists the sets under
    ``training_sets``: cells are never ranked across sets."""
    results = report["results"]
    plan = report["plan"]
    earlier_plots = {p.name for p in output.glob("*.png") if REPORT_PLOT.fullmatch(p.name)}
    sets = training_sets(results)
    several = len(sets) > 1
    bodies = []
    for number, (values, rows) in enumerate(sets, 1):
        drop = example_drop if any(r["drop"] == example_drop for r in rows) else max(r["drop"] for r in rows)
        bodies.append(_set_sections(rows, output, test_items, drop, f"_set{number}" if several else ""))
    for row in results:
        row.pop("serving_dir", None)
    if several:
        report["training_sets"] = [{"set": number, "values": values, "label": set_label(values, rows),
                                    "rows": len(rows), "mean_ranks": mean_ranks(rows)}
                                   for number, (values, rows) in enumerate(sets, 1)]
    write_text_atomic(output / "results.json", json.dumps(report, indent=1))  # a stopped report leaves the last whole

    trained = [r for r in results if not r.get("same_training_as")]
    produced = (f"Produced by `{report['command']}` on {report['date']} ({len(trained)} trainings, "
                f"{training_time(sum(r.get('seconds', 0) for r in trained))} of training time on {report['machine']}). "
                f"{twins_note(results)}{commits_note(results)}")
    if not several:
        body = [produced + protocol_text(results, plan), "", *bodies[0]]
    else:
        body = [produced, "",
                f"**The rows were trained with {len(sets)} sets of values** (`--config` digest or protocol "
                f"options): each set is reported on its own below, its cells ranked within the set, never across "
                f"sets. What differs between the sets:", "",
                *(f"- set {number} ({counted(len(rows), 'row')}): {set_label(values, rows)}"
                  for number, (values, rows) in enumerate(sets, 1)), ""]
        for number, ((values, rows), sections) in enumerate(zip(sets, bodies), 1):
            body += [f"## Set {number}: {set_label(values, rows)}", "", protocol_text(rows, plan), "",
                     *(f"#{line}" if line.startswith("#") else line for line in sections)]
    lines = [
        "# Experiment results", "", *body,
        "## Seed 004's numbers, revisited", "", *seed004_table(report["seed004"]), "",
        f"Annotations removed: {report['seed004']['removed']}. See `pipeline/seed004.py` for the "
        "prediction used and why the blog's custom value fell below the complete-annotation CE.", "",
    ]
    (output / "results.md").write_text("\n".join(lines))
    for stale in earlier_plots - set(re.findall(r"\]\(([^)]+\.png)\)", "\n".join(lines))):  # an earlier report's
        (output / stale).unlink(missing_ok=True)  # plots of data sets or sets this one lacks (QA 72: left beside it)
