"""Matplotlib charts rendered to inline base64 PNG `<img>` tags (no file, no network).

Text from the data (class names) is drawn as plain text: ``plain`` escapes its ``$`` signs,
so matplotlib never enters mathtext for it and a name like ``$\\frac{a}{b}$`` is printed as
it is (a malformed one used to stop the report with a mathtext ParseException). Ticks and
legends show names shortened to ``LABEL_LIMIT`` characters (``short_labels``): one 400-character
name made a 2,800 x 1,900 pixel chart that was mostly its label. The page's tables keep the
full names."""
from __future__ import annotations

import base64
import functools
import html
import io
from typing import Dict, List, Sequence

import numpy as np


# More classes than this: bar charts run down the page, one row per class (QA 76: at 150-255 classes the
# columns made 8,000-15,000 px wide charts that the page shrank to unreadable strips), and the heat maps and the
# span chart show the classes with the most pixels (the tables and the JSON keep them all)
MANY_CLASSES = 40
SPAN_CHART_CLASSES = 20  # lines (and legend entries) of the span chart


def _class_axis(ax, class_names: Sequence[str], ylabel: str, legend: bool = False, rows: bool = False) -> None:
    """One tick per class (``short_labels``, turned 30 degrees; with ``rows``, one per row of a horizontal bar
    chart, the first class at the top), the value axis label, its grid and, with ``legend``, the legend
    outside the plot on the right."""
    if rows:
        ax.set_yticks(np.arange(len(class_names)))
        ax.set_yticklabels(short_labels(class_names), fontsize=8)
        ax.set_ylim(len(class_names) - 0.5, -0.5)
        ax.set_xlabel(ylabel)
    else:
        ax.set_xticks(np.arange(len(class_names)))
        ax.set_xticklabels(short_labels(class_names), rotation=30, ha="right")
        ax.set_ylabel(ylabel)
    if legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.grid(axis="x" if rows else "y", alpha=0.3)


def _class_figure(plt, num_classes: int, per_class: float, height: float):
    """(figure, axes, rows): columns for a few classes, one row per class (0.22 inch each) for many."""
    rows = num_classes > MANY_CLASSES
    size = (9, 0.22 * num_classes + 1.2) if rows else (max(6, per_class * num_classes), height)
    fig, ax = plt.subplots(figsize=size)
    return fig, ax, rows


def _bars(ax, rows: bool, positions, values, width, **kwargs):
    return ax.barh(positions, values, width, **kwargs) if rows else ax.bar(positions, values, width, **kwargs)


def log_floor(values: Sequence[float]) -> float:
    """Where a log-scale chart draws 0: 1e-7, or a tenth of the smallest value above 0 when that is smaller (QA 76:
    one pixel in 22 million, 4.5e-8, was drawn at 1e-7 like a class with none)."""
    positive = [float(v) for v in values if v and v > 0]
    return min([1e-7] + [v / 10 for v in positive])


def most_pixels(totals: Sequence[float], limit: int) -> List[int]:
    """The ids of the ``limit`` classes with the largest ``totals`` (ties: the lower id), in id order."""
    order = sorted(range(len(totals)), key=lambda c: (-float(totals[c]), c))
    return sorted(order[:limit])


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain(text) -> str:
    """``text`` as matplotlib shows it literally: ``\\$`` is a dollar sign, never the start of mathtext."""
    return str(text).replace("$", r"\$")


def plains(texts) -> List[str]:
    return [plain(t) for t in texts]


LABEL_LIMIT = 24  # characters of a class name in a tick or legend


def short_labels(names: Sequence[str], limit: int = LABEL_LIMIT) -> List[str]:
    """Names for ticks and legends: plain, at most ``limit`` characters (the middle elided, so a
    path-like name keeps its start and its leaf); when two would then read the same, each is
    prefixed with its class id."""
    def short(name: str) -> str:
        if len(name) <= limit:
            return name
        head = (limit - 1) // 2
        return name[:head] + "\u2026" + name[len(name) - (limit - 1 - head):]

    shown = [short(str(n)) if drawable(str(n)) else f"class {i}" for i, n in enumerate(names)]
    if len(set(shown)) < len(shown):
        shown = [f"{i}: {s}" for i, s in enumerate(shown)]
    return plains(shown)


def drawable(text: str) -> bool:
    """Whether the charts' fonts have a glyph for every character of ``text`` (QA 73: CJK and emoji class names
    were empty boxes, so the bars of 人, 車 and 犬 could not be told apart, and matplotlib warned for each glyph);
    a name that is not is shown as ``class ID`` (the tables' rows are in id order, with the names)."""
    fonts = _chart_fonts()
    return all(any(font.get_char_index(ord(c)) for font in fonts) for c in text if not c.isspace())


@functools.lru_cache(maxsize=1)
def _chart_fonts() -> tuple:
    """The fonts matplotlib draws chart text with (its font list, with fallback), loaded once."""
    from matplotlib import font_manager, ft2font

    paths = font_manager.fontManager._find_fonts_by_props(font_manager.FontProperties())  # noqa: SLF001
    return tuple(ft2font.FT2Font(str(path)) for path in paths)


def to_img(fig, alt: str) -> str:
    plt = _plt()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def frequency_bars(class_names: Sequence[str], pixel_freq: Sequence[float], image_freq: Sequence[float]) -> str:
    plt = _plt()
    x = np.arange(len(class_names))
    fig, ax, rows = _class_figure(plt, len(class_names), 0.7, 3.6)
    floor = log_floor([*pixel_freq, *image_freq])  # log scale: show zero as the floor
    _bars(ax, rows, x - 0.2, np.maximum(pixel_freq, floor), 0.4, label="pixel frequency")
    _bars(ax, rows, x + 0.2, np.maximum(image_freq, floor), 0.4, label="image frequency")
    (ax.set_xscale if rows else ax.set_yscale)("log")
    _class_axis(ax, class_names, "fraction (log scale)", legend=True, rows=rows)
    return to_img(fig, "class pixel and image frequencies")


def weight_bars(class_names: Sequence[str], weights: Dict[str, List[float]]) -> str:
    plt = _plt()
    x = np.arange(len(class_names))
    width = 0.8 / max(1, len(weights))
    fig, ax, rows = _class_figure(plt, len(class_names), 0.8, 3.6)
    for i, (scheme, values) in enumerate(weights.items()):
        _bars(ax, rows, x + i * width - 0.4 + width / 2, values, width, label=plain(scheme))
    _class_axis(ax, class_names, "class weight", legend=True, rows=rows)
    return to_img(fig, "class weights of every scheme")


def heatmap(matrix, labels: Sequence[str], title: str, row_label: str, col_label: str, normalise_rows=False) -> str:
    plt = _plt()
    values = np.asarray(matrix, dtype=np.float64)
    shown = values / np.maximum(values.sum(axis=1, keepdims=True), 1) if normalise_rows else values
    if len(labels) > MANY_CLASSES:  # (QA 76: 255 classes drew a 90-megapixel PNG with sub-pixel labels)
        kept = most_pixels(values.sum(axis=0) + values.sum(axis=1), MANY_CLASSES)
        title = f"{title}: the {MANY_CLASSES} of {len(labels)} classes with the largest totals"
        labels = [f"{c}: {labels[c]}" for c in kept]
        values, shown = values[np.ix_(kept, kept)], shown[np.ix_(kept, kept)]
    size = max(4, 0.55 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(shown, cmap="viridis")
    ax.set_xticks(range(len(labels)))
    ax.set_yticks(range(len(labels)))
    ax.set_xticklabels(short_labels(labels), rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(short_labels(labels), fontsize=8)
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    ax.set_title(plain(title))
    if len(labels) <= 12:
        middle = (shown.min() + shown.max()) / 2
        for i in range(len(labels)):
            for j in range(len(labels)):
                text = f"{shown[i, j]:.2f}" if normalise_rows else f"{int(values[i, j])}"
                colour = "black" if shown[i, j] > middle else "white"  # viridis: dark low end, yellow high end
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    fig.colorbar(image, ax=ax, fraction=0.046)
    return to_img(fig, title)


def iou_bars(class_names: Sequence[str], iou: Sequence) -> str:
    plt = _plt()
    values = [np.nan if v is None else v for v in iou]  # None: neither in the labels nor predicted
    fig, ax, rows = _class_figure(plt, len(class_names), 0.7, 3.2)
    _bars(ax, rows, range(len(class_names)), values, 0.8, color="#4c72b0")
    for c, v in enumerate(iou):
        if v is None:  # no bar, which would read as an IoU of 0
            if rows:
                ax.text(0.02, c, "n/a", ha="left", va="center", fontsize=8, color="#555555")
            else:
                ax.text(c, 0.02, "n/a", ha="center", va="bottom", fontsize=8, color="#555555")
    (ax.set_xlim if rows else ax.set_ylim)(0, 1)
    _class_axis(ax, class_names, "IoU", rows=rows)
    return to_img(fig, "per-class IoU")


def training_curves(history: Dict[str, List[float]]) -> str:
    """Loss (left) and mIoU (right) per epoch, training and validation."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, key, label in ((left, "loss", "loss"), (right, "miou", "mIoU")):
        for prefix, style in (("", "-o"), ("val_", "--s")):
            values = history.get(prefix + key)
            if values:
                ax.plot(range(1, len(values) + 1), values, style, label=("validation " if prefix else "training ")
                        + label, markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    right.set_ylim(0, 1)
    return to_img(fig, "training loss and mIoU per epoch")


def span_lines(spans: Sequence[int], class_names: Sequence[str], frequencies, colours, blocked: Sequence[bool]) -> str:
    """Pixel frequency of every class per span (one line per class, the page's class colours);
    spans whose drift gate blocked are marked."""
    plt = _plt()
    values = np.asarray(frequencies, dtype=np.float64)
    values = np.maximum(values, log_floor(values.ravel()))  # [spans, C]; log scale floor
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(spans) + 4), 3.6))
    names = short_labels(class_names)
    drawn = (range(len(class_names)) if len(class_names) <= SPAN_CHART_CLASSES else
             most_pixels(values.mean(axis=0), SPAN_CHART_CLASSES))  # (QA 76: a 2,300 px legend at 150 classes)
    for c in drawn:
        ax.plot(range(len(spans)), values[:, c], "-o", color=np.asarray(colours[c]) / 255.0, label=names[c],
                markersize=4)
    if len(drawn) < len(class_names):
        ax.set_title(f"the {len(drawn)} of {len(class_names)} classes with the most pixels", fontsize=9)
    for i, flag in enumerate(blocked):
        if flag:
            ax.axvspan(i - 0.3, i + 0.3, color="#b00020", alpha=0.12)
    ax.set_yscale("log")
    ax.set_xticks(range(len(spans)))
    ax.set_xticklabels([str(s) for s in spans])
    ax.set_xlabel("span (shaded: drift gate blocked)")
    ax.set_ylabel("pixel frequency (log scale)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.grid(alpha=0.3)
    return to_img(fig, "class pixel frequency per span")
