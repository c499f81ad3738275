"""`segbalance report STATS_DIR|RUN_DIR --output FILE.html`: one self-contained HTML page.

Sections: data (TFDV feature statistics as tables, ExampleValidator anomalies), classes
(pixel and image frequencies with a log-scale bar chart, the weights of every scheme,
the co-occurrence heatmap), annotation gaps (the images with the most missing or
suspect-missing classes), quarantined records, evaluation (per-class IoU, confusion
matrix) and class-distribution drift when the run has them.

The page opens offline: charts are inline PNG (``data:`` URIs), the style is inline, there
is no script and no external URL; every string that comes from the data is HTML-escaped.
(``tfdv.visualize_statistics`` loads its viewer from a CDN, so it is not used.)
"""
from __future__ import annotations

import argparse
import glob
import html
import json
import os
import sys
from typing import List, Optional

from pipeline import report_charts as charts
from pipeline.report_sources import ReportSources, find_sources

TOP_IMAGES = 25
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;
color:#222;padding:0 16px} h1{font-size:1.6em} h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:2em}
table{border-collapse:collapse;margin:8px 0 16px;font-size:0.9em} th,td{border:1px solid #ccc;padding:3px 8px;
text-align:right} th{background:#f3f3f3} td.l,th.l{text-align:left} .bad{color:#b00020;font-weight:600}
.ok{color:#1b7a1b;font-weight:600} .note{color:#555;font-size:0.9em} img{max-width:100%}
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return esc(value)


def table(header: List[str], rows: List[list], left: int = 1) -> str:
    head = "".join(f'<th class="l">{esc(h)}</th>' if i < left else f"<th>{esc(h)}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td class="l">{fmt(c)}</td>' if i < left else f"<td>{fmt(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


# --------------------------------------------------------------------------- sections
def classes_section(stats: dict) -> str:
    names = stats["class_names"]
    pixels = stats["pixel_counts"]
    valid = max(1, sum(pixels))
    records = max(1, stats["num_records"])
    pixel_freq = [p / valid for p in pixels]
    image_freq = [n / records for n in stats["image_counts"]]
    rows = [[names[c], pixels[c], pixel_freq[c], stats["image_counts"][c], image_freq[c],
             stats.get("missing_image_counts", [0] * len(names))[c]] for c in range(len(names))]
    parts = [
        "<h2>Classes</h2>",
        f"<p>{stats['num_records']} records, {stats['quarantined_records']} quarantined; "
        f"{stats['total_pixels']} pixels, {stats['ignored_pixels']} ignored (id {esc(stats['ignore_index'])}); "
        f"labelled-set policy for records without a <code>labeled</code> field: "
        f"<b>{esc(stats.get('labeled_policy', 'complete'))}</b>.</p>",
        table(["class", "pixels", "pixel frequency", "images", "image frequency", "images where missing"], rows),
        charts.frequency_bars(names, pixel_freq, image_freq),
    ]
    if stats.get("zero_count_classes"):
        parts.append(f'<p class="bad">Classes with no pixels: {esc(stats.get("zero_count_note", ""))}</p>')
    weights = stats["weights"]
    parts += ["<h2>Class weights</h2>",
              '<p class="note">Normalised to mean 1 over the classes present (see trainer/class_weights.py).</p>',
              table(["scheme", *names], [[scheme, *[round(w, 4) for w in values]] for scheme, values in weights.items()]),
              charts.weight_bars(names, weights)]
    if stats.get("cooccurrence"):
        parts += ["<h2>Co-occurrence</h2>",
                  '<p class="note">Number of images containing both classes (diagonal: images with the class).</p>',
                  charts.heatmap(stats["cooccurrence"], names, "image co-occurrence", "class", "class")]
    return "\n".join(parts)


def gaps_section(class_stats_dir: str, names: List[str], top: int = TOP_IMAGES) -> str:
    from components.class_stats_io import read_per_image, read_quarantine

    table_rows = []
    frame = read_per_image(class_stats_dir)
    if len(frame):
        frame = frame.assign(score=[len(m) + len(s) for m, s in zip(frame["missing"], frame["suspect_missing"])])
        frame = frame[frame["score"] > 0].sort_values(["score", "source_id"], ascending=[False, True]).head(top)
        label = lambda ids: ", ".join(names[int(c)] for c in ids) or "-"  # noqa: E731
        table_rows = [[r.source_id, label(r.present), label(r.missing), label(r.suspect_missing)]
                      for r in frame.itertuples()]
    parts = ["<h2>Annotation gaps</h2>",
             '<p class="note"><b>missing</b>: not labelled in the image, so its absence proves nothing; '
             "<b>suspect</b>: absent although it almost always appears with the image's classes.</p>"]
    parts.append(table(["image", "present", "missing", "suspect missing"], table_rows) if table_rows
                 else "<p>No image has missing or suspect-missing classes.</p>")
    quarantine = read_quarantine(class_stats_dir)
    parts.append("<h2>Quarantined records</h2>")
    if quarantine:
        parts.append(table(["record", "split", "reason"],
                           [[q.get("source_id", q.get("record_index")), q.get("split", ""), q.get("reason", "")]
                            for q in quarantine[:200]], left=3))
    else:
        parts.append('<p class="ok">No record was quarantined.</p>')
    return "\n".join(parts)


def tfdv_section(statistics_dir: Optional[str]) -> str:
    if not statistics_dir:
        return ""
    import tensorflow_data_validation as tfdv

    parts = ["<h2>Feature statistics (TFDV)</h2>"]
    for path in sorted(glob.glob(os.path.join(statistics_dir, "Split-*", "FeatureStats.pb"))):
        split = os.path.basename(os.path.dirname(path))[len("Split-"):]
        dataset = tfdv.load_stats_binary(path).datasets[0]
        numeric, strings = [], []
        for feature in dataset.features:
            name = "/".join(feature.path.step) or feature.name
            kind = feature.WhichOneof("stats")
            if kind == "num_stats":
                s = feature.num_stats
                common = s.common_stats
                numeric.append([name, common.num_non_missing, common.num_missing, s.mean, s.std_dev, s.min, s.max,
                                s.num_zeros])
            elif kind in ("string_stats", "bytes_stats"):
                s = getattr(feature, kind)
                strings.append([name, s.common_stats.num_non_missing, s.common_stats.num_missing,
                                getattr(s, "unique", ""), getattr(s, "avg_length", getattr(s, "avg_num_bytes", ""))])
        parts.append(f"<h3>Split {esc(split)}: {dataset.num_examples} examples</h3>")
        if numeric:
            parts.append(table(["numeric feature", "present", "missing", "mean", "std", "min", "max", "zeros"],
                               numeric))
        if strings:
            parts.append(table(["bytes/string feature", "present", "missing", "unique", "avg length"], strings))
    return "\n".join(parts)


def anomalies_section(anomalies_dir: Optional[str]) -> str:
    if not anomalies_dir:
        return ""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    rows = []
    for path in sorted(glob.glob(os.path.join(anomalies_dir, "Split-*", "SchemaDiff.pb"))):
        split = os.path.basename(os.path.dirname(path))[len("Split-"):]
        anomalies = anomalies_pb2.Anomalies()
        with open(path, "rb") as f:
            anomalies.ParseFromString(f.read())
        for feature, info in sorted(anomalies.anomaly_info.items()):
            rows.append([split, feature, info.short_description, info.description])
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            rows.append([split, "(dataset)", info.short_description, info.description])
    parts = ["<h2>Anomalies (ExampleValidator)</h2>"]
    parts.append(table(["split", "feature", "anomaly", "description"], rows, left=4) if rows
                 else '<p class="ok">No anomalies: every split matches the schema.</p>')
    return "\n".join(parts)


def evaluation_section(evaluation_dir: Optional[str]) -> str:
    path = os.path.join(evaluation_dir, "evaluation.json") if evaluation_dir else None
    if not path or not os.path.isfile(path):
        return ""
    with open(path) as f:
        result = json.load(f)
    names = result["class_names"]
    verdict = '<span class="ok">blessed</span>' if result["blessed"] else '<span class="bad">not blessed</span>'
    return "\n".join([
        "<h2>Evaluation</h2>",
        f"<p>mIoU <b>{result['miou']:.4f}</b>, pixel accuracy {result['pixel_accuracy']:.4f} on "
        f"{result['num_images']} images of split {esc(result.get('split', 'eval'))}: {verdict} "
        f"({esc(result['reason'])}).</p>",
        table(["class", "IoU"], [[n, v] for n, v in zip(names, result["per_class_iou"])]),
        charts.iou_bars(names, result["per_class_iou"]),
        charts.heatmap(result["confusion_matrix"], names, "confusion matrix (rows: truth, normalised)",
                       "true class", "predicted class", normalise_rows=True),
    ])


def drift_section(drift_dir: Optional[str]) -> str:
    path = os.path.join(drift_dir, "drift.json") if drift_dir else None
    if not path or not os.path.isfile(path):
        return ""
    with open(path) as f:
        drift = json.load(f)
    status = drift.get("status", "ok")
    css = "ok" if status == "ok" else "bad"
    rows = [[k, drift.get(k), drift.get("thresholds", {}).get(k)]
            for k in ("js_divergence", "max_abs_change", "missing_rate_change") if k in drift]
    parts = ["<h2>Class-distribution drift</h2>", f'<p>Status: <span class="{css}">{esc(status)}</span></p>',
             table(["measure", "value", "threshold"], rows)]
    if drift.get("new_classes"):
        parts.append(f"<p class=\"bad\">New classes: {esc(drift['new_classes'])}</p>")
    if drift.get("anomalies"):
        parts.append("<ul>" + "".join(f"<li>{esc(a)}</li>" for a in drift["anomalies"]) + "</ul>")
    return "\n".join(parts)


def render_report(sources: ReportSources, output_html: str, title: str = "segbalance data report") -> str:
    """Write the page to ``output_html`` and return its path."""
    from components.class_stats_io import read_class_stats

    stats = read_class_stats(sources.class_stats_dir)
    body = [
        f"<h1>{esc(title)}</h1>",
        f'<p class="note">Class statistics: {esc(sources.class_stats_dir)}</p>',
        drift_section(sources.drift_dir),
        evaluation_section(sources.evaluation_dir),
        classes_section(stats),
        gaps_section(sources.class_stats_dir, stats["class_names"]),
        anomalies_section(sources.anomalies_dir),
        tfdv_section(sources.statistics_dir),
    ]
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(b for b in body if b)}</body></html>")
    os.makedirs(os.path.dirname(os.path.abspath(output_html)), exist_ok=True)
    with open(output_html, "w", encoding="utf-8") as f:
        f.write(page)
    return output_html


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="self-contained HTML report of a statistics folder or a pipeline run",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", metavar="STATS_DIR|RUN_DIR")
    parser.add_argument("--output", required=True, metavar="FILE.html")
    parser.set_defaults(func=_main)


def _main(args) -> int:
    from pipeline.run import quiet_library_output

    quiet_library_output()
    try:
        sources = find_sources(args.path)
    except FileNotFoundError as exc:
        print(f"segbalance report: error: {exc}", file=sys.stderr)
        return 2
    print(f"report: wrote {render_report(sources, args.output)}")
    return 0
