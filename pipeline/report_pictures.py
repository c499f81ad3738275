"""The data report's picture sections: class examples, annotation-gap cases, quarantine
thumbnails, the evaluation's worst images, training curves and the span history.

Which records are shown is decided from the ClassStats tables (a fixed-seed sample per class,
the top-ranked gaps, the first quarantined records), then ``report_images.load_records`` reads
those from the TFRecords in one pass: the page stays the same size whatever the data set size.
Predictions come from the evaluation artifact's ``per_image.json`` (SegEvaluator): the report
never runs a model.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from segbalance.pipeline import report_charts as charts
from segbalance.pipeline import report_images as images
from segbalance.pipeline.report_html import Raw, Section, esc, figure, fmt, share, table

THUMBS_PER_CLASS = 8  # images per class strip (sampled with SEED among the images with the class)
MAX_QUARANTINE_THUMBS = 40  # quarantined records shown with a thumbnail (the table lists up to 200)
SEED = 0


def class_members(frame, num_classes: int) -> Dict[int, List[str]]:
    """{class id: source_ids of the images in which it is present}."""
    members: Dict[int, List[str]] = {c: [] for c in range(num_classes)}
    for source_id, present in zip(frame["source_id"], frame["present"]):
        for c in present:
            if 0 <= int(c) < num_classes:
                members[int(c)].append(source_id)
    return members


def class_samples(frame, pixel_counts: Sequence[int], k: int = THUMBS_PER_CLASS, seed: int = SEED) -> Dict[int, List[str]]:
    """{class id: up to k sampled source_ids}, rarest class (fewest pixels) first."""
    members = class_members(frame, len(pixel_counts))
    order = sorted(range(len(pixel_counts)), key=lambda c: (pixel_counts[c], c))
    return {c: images.sample(members[c], k, seed + c) for c in order}


def _decoded(records: dict, name: str):
    """(image, mask, why not) of a loaded record."""
    if name not in records:
        return None, None, "record not found in the input files"
    image_bytes, mask_bytes = records[name]
    image, image_error = images.decode(image_bytes, "image")
    mask, mask_error = images.decode(mask_bytes, "mask")
    return image, mask, image_error or mask_error


def _text_figure(text: str, caption: str) -> str:
    return (f'<figure><div class="note" style="width:128px;height:64px;border:1px dashed #bbb;overflow:hidden">'
            f"{esc(text)}</div><figcaption>{esc(caption)}</figcaption></figure>")


def overlay_figure(records: dict, name: str, num_classes: int, caption: str) -> str:
    image, mask, problem = _decoded(records, name)
    if image is not None and mask is not None:
        return figure(images.img(images.overlay(image, mask, num_classes), f"{name} with its mask", "jpeg"), caption)
    if image is not None:
        return figure(images.img(images.downscale_image(image), f"{name}", "jpeg"), f"{caption} (mask: {problem})")
    return _text_figure(problem or "no picture", caption)


def class_examples_section(names: Sequence[str], stats: dict, samples: Dict[int, List[str]], records: dict,
                           problems: List[str], frame) -> Section:
    pixels = dict(zip(frame["source_id"], frame["pixel_counts"]))
    parts = [images.legend(names),
             f'<p class="note">Up to {THUMBS_PER_CLASS} images per class, sampled with a fixed seed among the '
             "images that contain it, rarest class first; the mask is drawn over the image in the class colours "
             "above (ignored pixels not coloured). Captions: image and the class's share of its labelled pixels.</p>"]
    parts += [f'<p class="bad">{esc(p)}</p>' for p in problems]
    for c, ids in samples.items():
        count = stats["image_counts"][c]
        heading = f"{names[c]}: {count} image{'s' if count != 1 else ''}, {stats['pixel_counts'][c]} pixels"
        parts.append(f"<h3>{esc(heading)}</h3>")
        if not ids:
            parts.append('<p class="note">No image contains this class.</p>')
            continue
        strip = []
        for source_id in ids:
            counts = pixels.get(source_id)
            caption = f"{source_id} ({share(counts[c], sum(counts))})" if counts is not None else source_id
            strip.append(overlay_figure(records, source_id, len(names), caption))
        parts.append('<div class="strip">' + "".join(strip) + "</div>")
    return Section("examples", "Class examples", "\n".join(parts), None)


# --------------------------------------------------------------------------- evaluation's per-image file
def read_per_image_eval(evaluation_dir: Optional[str]) -> Optional[dict]:
    """``per_image.json`` of the evaluation artifact (None when there is none)."""
    from segbalance.components.evaluation_metrics import PER_IMAGE_FILE

    if not evaluation_dir:
        return None
    path = os.path.join(evaluation_dir, PER_IMAGE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


def _read_png(folder: str, relative: Optional[str]) -> Optional[np.ndarray]:
    from PIL import Image

    if not relative:
        return None
    path = os.path.join(folder, relative)
    try:
        with Image.open(path) as pil:
            return np.asarray(pil)
    except (OSError, ValueError):
        return None


def gap_cases(rows: List[dict], records: dict, names: Sequence[str], evaluation_dir: Optional[str],
              per_image: Optional[dict]) -> str:
    """Image, annotated mask and (when the evaluation has it) the prediction of each gap image, with the
    missing and suspect-missing classes named under it. ``rows``: source_id, missing, suspect_missing."""
    predictions = {g["source_id"]: g["prediction"] for g in (per_image or {}).get("gap_predictions", [])}
    label = lambda ids: ", ".join(str(names[int(c)]) for c in ids) or "-"  # noqa: E731
    cases = []
    for row in rows:
        name = row["source_id"]
        image, mask, problem = _decoded(records, name)
        pictures = []
        if image is not None:
            pictures.append(figure(images.img(images.downscale_image(image), f"image {name}", "jpeg"), "image"))
        if mask is not None:
            pictures.append(figure(images.img(images.colour_mask(mask, len(names)), f"annotated mask of {name}"),
                                   "annotated mask"))
        if problem:
            pictures.append(_text_figure(problem, "not shown"))
        prediction = _read_png(evaluation_dir, predictions.get(name)) if evaluation_dir else None
        if prediction is not None:
            pictures.append(figure(images.img(images.colour_mask(prediction, len(names)), f"prediction for {name}"),
                                   "model prediction"))
        text = f"{name}: missing {label(row['missing'])}; suspect missing {label(row['suspect_missing'])}"
        cases.append(f'<div class="case">{"".join(pictures)}<p>{esc(text)}</p></div>')
    note = ("" if per_image is not None else
            '<p class="note">No prediction: the run has no evaluation with per-image results.</p>')
    return images.legend(names) + note + "".join(cases)


def quarantine_thumbnail(records: dict, name: str, num_classes: int) -> Raw:
    image, mask, problem = _decoded(records, name)
    if image is not None and mask is not None and mask.ndim == 2:
        return Raw(images.img(images.overlay(image, mask, num_classes), f"{name} with its mask", "jpeg"))
    if image is not None:
        return Raw(images.img(images.downscale_image(image), f"{name} (image only)", "jpeg"))
    return Raw(f'<span class="note">does not decode: {esc(problem)}</span>')


TRUTH_CAPTIONS = {"reference": "reference mask", "annotation": "annotated mask"}  # per_image.json truth_from


def worst_images(evaluation_dir: str, names: Sequence[str], per_image: Optional[dict]) -> str:
    """Image, reference mask, prediction and error map of the evaluation's worst images."""
    if per_image is None:
        return ('<p class="note">This evaluation has no per_image.json (written by SegEvaluator since the report '
                "shows the worst images), so no image is shown.</p>")
    worst = per_image.get("worst") or []
    scored = [r["miou"] for r in per_image.get("images", []) if r.get("miou") is not None]
    parts = [f"<h3>The {len(worst)} eval images with the lowest mIoU</h3>",
             f'<p class="note">Per-image mIoU over {len(scored)} images: median {fmt(float(np.median(scored)) if scored else None)}'
             ". Error map: red where the prediction differs from the mask the image was scored against (its "
             "reference mask, else its own annotation), white where not scored.</p>"]
    for entry in worst:
        truth = _read_png(evaluation_dir, entry.get("truth"))
        prediction = _read_png(evaluation_dir, entry.get("prediction"))
        image = _read_png(evaluation_dir, entry.get("image"))
        pictures = []
        if image is not None:
            pictures.append(figure(images.img(images.to_rgb(image), f"image {entry['source_id']}", "jpeg"), "image"))
        else:
            pictures.append(_text_figure(entry.get("image_error", "image file missing"), "image"))
        scored_against = TRUTH_CAPTIONS.get(entry.get("truth_from"), "scored mask")  # older files: no truth_from
        for array, caption in ((truth, scored_against), (prediction, "prediction")):
            if array is None:
                pictures.append(_text_figure("file missing", caption))
            else:
                pictures.append(figure(images.img(images.colour_mask(array, len(names)),
                                                  f"{caption} of {entry['source_id']}"), caption))
        if truth is not None and prediction is not None and truth.shape == prediction.shape:
            pictures.append(figure(images.img(images.error_map(truth, prediction, len(names)),
                                              f"error map of {entry['source_id']}"), "error map"))
        text = f"{entry['source_id']}: mIoU {entry['miou']:.3f}"
        parts.append(f'<div class="case">{"".join(pictures)}<p>{esc(text)}</p></div>')
    return "\n".join(parts)


# --------------------------------------------------------------------------- training, spans
def training_section(model_run_dir: str) -> Section:
    from segbalance.pipeline.report_sources import TRAINING_SUMMARY_FILE

    path = os.path.join(model_run_dir, TRAINING_SUMMARY_FILE)
    if not os.path.isfile(path):
        return Section("training", "Training", f'<p class="bad">{esc(model_run_dir)} holds no '
                                               f"{esc(TRAINING_SUMMARY_FILE)}: this section could not be read.</p>")
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    history = summary.get("history") or {}
    keys = [k for k in ("loss", "val_loss", "miou", "val_miou") if history.get(k)]
    if not keys:
        return Section("training", "Training", f'<p class="bad">{esc(path)} has no per-epoch loss or mIoU.</p>')
    epochs = max(len(history[k]) for k in keys)
    rows = [[e + 1, *[history[k][e] if e < len(history[k]) else None for k in keys]] for e in range(epochs)]
    last = {k: history[k][-1] for k in keys}
    body = "\n".join([
        f"<p>{epochs} epoch{'s' if epochs != 1 else ''} on {fmt(summary.get('num_train_records'))} training records; "
        f"loss before the first update {fmt(summary.get('initial_loss'))}.</p>",
        charts.training_curves(history),
        table(["epoch", *keys], rows),
    ])
    brief = ", ".join(f"{k} {fmt(v)}" for k, v in last.items() if k in ("val_miou", "val_loss")) or \
        ", ".join(f"{k} {fmt(v)}" for k, v in last.items())
    return Section("training", "Training", body, f"training: {epochs} epochs, last {brief}")


def spans_section(spans, names: Sequence[str]) -> Optional[Section]:
    """Per-class pixel frequency across spans and the drift decision per span (None with < 2 spans); a span whose
    statistics count other classes than ``names`` (before a class was added) is named and left out."""
    if not spans or len(spans) < 2:
        return None
    rows, frequencies, blocked, notes, spans_shown = [], [], [], [], []
    for item in spans:
        path = os.path.join(item.class_stats_dir, "class_stats.json")
        with open(path, encoding="utf-8") as f:
            stats = json.load(f)
        counts = list(stats.get("pixel_counts", []))
        if len(counts) != len(names):
            notes.append(f"span {item.span}: {len(counts)} classes in {path}, not {len(names)}: left out")
            continue
        total = max(1, sum(counts))
        frequency = [n / total for n in counts]
        frequencies.append(frequency)
        spans_shown.append(item.span)
        blocked.append(item.drift_status == "blocked")
        decision = item.drift_status or "no drift gate"
        if item.drift_status and item.drift_action:
            decision += f" (action {item.drift_action})"
        label = item.span if not item.window else f"{item.span} (window {', '.join(map(str, item.window))})"
        rows.append([label, stats.get("num_records"), decision, *frequency])
    # (QA 92 L4: the week a class was added, every earlier span was left out and the section with it, unsaid)
    shown = f"{len(rows)} spans" if not notes else f"{len(rows)} of {len(spans)} spans"
    body = [f"<p>{shown}. The drift gate compares each span's class statistics with the last "
            "accepted ones (of the latest run it did not block); its decision is the one recorded for that span's "
            "statistics.</p>"]
    if len(rows) > 1:
        body.append(charts.span_lines(spans_shown, names, frequencies, images.palette(len(names)), blocked))
    if rows:
        body.append(table(["span", "records", "drift decision", *names], rows, left=1))
    if any(item.window for item in spans):
        body.append("<p>A row of a <code>data.num_spans</code> window counts every span of the window under its "
                    "latest span; the window is named where its links are still in the run folder (the links of "
                    "earlier windows are replaced by the latest window's).</p>")
    body += [f'<p class="bad">{esc(n)}</p>' for n in notes]
    flagged = [str(span) for span, b in zip(spans_shown, blocked) if b]
    summary = shown + (f', <span class="bad">drift blocked span {esc(", ".join(flagged))}</span>' if flagged else "")
    return Section("spans", "Spans", "\n".join(body), summary)
