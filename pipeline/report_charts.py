"""Matplotlib charts rendered to inline base64 PNG `<img>` tags (no file, no network)."""
from __future__ import annotations

import base64
import html
import io
from typing import Dict, List, Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(class_names)), 3.6))
    floor = 1e-7  # log scale: show zero as the floor
    ax.bar(x - 0.2, np.maximum(pixel_freq, floor), 0.4, label="pixel frequency")
    ax.bar(x + 0.2, np.maximum(image_freq, floor), 0.4, label="image frequency")
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(class_names, rotation=30, ha="right")
    ax.set_ylabel("fraction (log scale)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return to_img(fig, "class pixel and image frequencies")


def weight_bars(class_names: Sequence[str], weights: Dict[str, List[float]]) -> str:
    plt = _plt()
    x = np.arange(len(class_names))
    width = 0.8 / max(1, len(weights))
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(class_names)), 3.6))
    for i, (scheme, values) in enumerate(weights.items()):
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=scheme)
    ax.set_xticks(x)
    ax.set_xticklabels(class_names, rotation=30, ha="right")
    ax.set_ylabel("class weight")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return to_img(fig, "class weights of every scheme")


def heatmap(matrix, labels: Sequence[str], title: str, row_label: str, col_label: str, normalise_rows=False) -> str:
    plt = _plt()
    values = np.asarray(matrix, dtype=np.float64)
    shown = values / np.maximum(values.sum(axis=1, keepdims=True), 1) if normalise_rows else values
    size = max(4, 0.55 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(shown, cmap="viridis")
    ax.set_xticks(range(len(labels)))
    ax.set_yticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    ax.set_title(title)
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
    values = [0.0 if v is None else v for v in iou]
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(class_names)), 3.2))
    ax.bar(range(len(class_names)), values, color="#4c72b0")
    ax.set_xticks(range(len(class_names)))
    ax.set_xticklabels(class_names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    ax.grid(axis="y", alpha=0.3)
    return to_img(fig, "per-class IoU")
