"""`segbalance report STATS_DIR|RUN_DIR --output FILE.html`: one self-contained HTML page.

Sections: a summary, ExampleValidator anomalies, TFDV feature statistics as tables, the
classes (pixel and image frequencies, log-scale bar chart), the weights of every scheme,
the co-occurrence heatmap, class examples (image and mask thumbnails), the image pairs
ingest skipped, annotation gaps (the images with the most missing or suspect-missing
classes), quarantined records, and, when the run has them, the training curves, the
evaluation (per-class IoU, confusion matrix), the class-distribution drift and the spans.

STATS_DIR is a `segbalance stats --output` folder or a ClassStats artifact (class_stats.json);
RUN_DIR is a `segbalance run --output-dir` folder: its ML Metadata store (metadata.sqlite)
gives the artifacts of the latest run that wrote a report, by lineage (what its nodes made
or took from the cache; a node it skipped gives nothing, never an earlier run's artifact).

The page opens offline: charts are inline PNG (``data:`` URIs), the style is inline, there is
no script and no external URL; every string that comes from the data is HTML-escaped.
(``tfdv.visualize_statistics`` loads its viewer from a CDN, so it is not used.)
"""
from __future__ import annotations

import argparse
import glob
import json
import os
from collections import Counter
from pathlib import Path
from typing import List, Optional

from segbalance.contract import counted
from segbalance.pipeline import report_charts as charts
from segbalance.pipeline.output_guard import write_text_atomic
from segbalance.pipeline import report_images
from segbalance.pipeline import report_pictures as pictures
from segbalance.pipeline.report_sources import DRIFT_FILE, EVALUATION_FILE, STATS_FILE, ReportSources, find_sources
from segbalance.pipeline.report_html import (DEFAULT_TITLE, GENERATOR, PAGE_START, STYLE, Raw, Section,  # noqa: F401
                                             esc, fmt, is_report, table)  # (re-exported)

TOP_IMAGES = 25
MAX_QUARANTINE_ROWS = 200
STATS_PROTO = "FeatureStats.pb"  # tfx.components.statistics_gen.executor.DEFAULT_FILE_NAME
ANOMALIES_PROTO = "SchemaDiff.pb"  # tfx.components.example_validator.executor.DEFAULT_FILE_NAME
REQUIRED_KEYS = ("class_names", "pixel_counts", "image_counts", "num_records", "quarantined_records",
                 "total_pixels", "ignored_pixels", "ignore_index", "weights")


def _split_files(folder: str, file_name: str):
    """[(split name, path)] for folder/Split-<name>/<file_name>, sorted by split."""
    paths = sorted(glob.glob(os.path.join(glob.escape(folder), "Split-*", file_name)))
    return [(os.path.basename(os.path.dirname(p))[len("Split-"):], p) for p in paths]


def _missing_file(folder: str, what: str) -> str:
    if not os.path.isdir(folder):  # an artifact folder ML Metadata records, moved or deleted since
        return (f'<p class="bad">{esc(folder)} does not exist (moved or deleted since the run recorded it): '
                f'this section could not be read.</p>')
    return f'<p class="bad">{esc(folder)} holds no {esc(what)}: this section could not be read.</p>'


# --------------------------------------------------------------------------- sections
def anomalies_section(anomalies_dir: str) -> Section:
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    files = _split_files(anomalies_dir, ANOMALIES_PROTO)
    if not files:
        return Section("anomalies", "Anomalies (ExampleValidator)",
                       _missing_file(anomalies_dir, f"Split-*/{ANOMALIES_PROTO}"),
                       '<span class="bad">anomalies unreadable</span>')
    rows = []
    for split, path in files:
        anomalies = anomalies_pb2.Anomalies()
        with open(path, "rb") as f:
            anomalies.ParseFromString(f.read())
        infos = sorted(anomalies.anomaly_info.items())
        if anomalies.HasField("dataset_anomaly_info"):
            infos.append(("(dataset)", anomalies.dataset_anomaly_info))
        for feature, info in infos:
            severity = anomalies_pb2.AnomalyInfo.Severity.Name(info.severity)
            short = info.short_description or "; ".join(r.short_description for r in info.reason)
            description = info.description or "; ".join(r.description for r in info.reason)
            rows.append([split, feature, severity, short, description])
        if anomalies.data_missing:
            rows.append([split, "(dataset)", "ERROR", "No data", "the split has no examples"])
    splits = ", ".join(split for split, _ in files)
    if not rows:
        return Section("anomalies", "Anomalies (ExampleValidator)",
                       f'<p class="ok">No anomalies: splits {esc(splits)} match the schema.</p>',
                       '<span class="ok">no anomalies</span>')
    return Section("anomalies", "Anomalies (ExampleValidator)",
                   table(["split", "feature", "severity", "anomaly", "description"], rows, left=5),
                   f'<span class="bad">{len(rows)} anomal{"y" if len(rows) == 1 else "ies"}</span>')


def tfdv_section(statistics_dir: str) -> Section:
    from tensorflow_metadata.proto.v0 import statistics_pb2

    files = _split_files(statistics_dir, STATS_PROTO)
    if not files:
        return Section("statistics", "Feature statistics (TFDV)",
                       _missing_file(statistics_dir, f"Split-*/{STATS_PROTO}"))
    parts = []
    for split, path in files:
        stats_list = statistics_pb2.DatasetFeatureStatisticsList()  # what tfdv.load_stats_binary parses
        with open(path, "rb") as f:
            stats_list.ParseFromString(f.read())
        for dataset in stats_list.datasets:
            numeric, strings = [], []
            for feature in dataset.features:
                name = "/".join(feature.path.step) or feature.name
                kind = feature.WhichOneof("stats")
                dtype = statistics_pb2.FeatureNameStatistics.Type.Name(feature.type).lower()
                if kind == "num_stats":
                    s = feature.num_stats
                    c = s.common_stats
                    numeric.append([name, dtype, c.num_non_missing, c.num_missing, c.avg_num_values, s.mean, s.std_dev,
                                    s.min, s.max, s.num_zeros])
                elif kind == "string_stats":
                    s = feature.string_stats
                    strings.append([name, dtype, s.common_stats.num_non_missing, s.common_stats.num_missing, s.unique,
                                    s.avg_length])
                elif kind == "bytes_stats":
                    s = feature.bytes_stats
                    strings.append([name, dtype, s.common_stats.num_non_missing, s.common_stats.num_missing, s.unique,
                                    s.avg_num_bytes])
            label = f"Split {split}" + (f" / {dataset.name}" if len(stats_list.datasets) > 1 and dataset.name else "")
            parts.append(f"<h3>{esc(label)}: {dataset.num_examples} examples</h3>")
            if numeric:
                parts.append(table(["numeric feature", "type", "count", "missing", "values/example", "mean", "std",
                                    "min", "max", "zeros"], numeric, left=2))
            if strings:
                parts.append(table(["bytes/string feature", "type", "count", "missing", "unique", "avg length"],
                                   strings, left=2))
    return Section("statistics", "Feature statistics (TFDV)", "\n".join(parts))


def classes_sections(stats: dict) -> List[Section]:
    names = stats["class_names"]
    pixels = stats["pixel_counts"]
    valid = max(1, sum(pixels))
    records = max(1, stats["num_records"])
    pixel_freq = [p / valid for p in pixels]
    image_freq = [n / records for n in stats["image_counts"]]
    missing = stats.get("missing_image_counts") or [None] * len(names)
    rows = [[names[c], pixels[c], pixel_freq[c], stats["image_counts"][c], image_freq[c], missing[c]]
            for c in range(len(names))]
    zero = [names[c] for c in stats.get("zero_count_classes", [])]
    body = [
        f"<p>{stats['num_records']} records, {stats['quarantined_records']} quarantined; "
        f"{stats['total_pixels']} pixels, {stats['ignored_pixels']} ignored (id {esc(stats['ignore_index'])}); "
        f"labelled-set policy for records without a <code>labeled</code> field: "
        f"<b>{esc(stats.get('labeled_policy', 'complete'))}</b>.</p>",
        table(["class", "pixels", "pixel frequency", "images", "image frequency", "images where missing"], rows),
        charts.frequency_bars(names, pixel_freq, image_freq),
    ]
    if stats.get("split_counts"):  # ClassStatsGen checks every split; only kept records go downstream
        body.insert(1, "<p>Records per split (read / passed on to training and evaluation / quarantined): "
                       + ", ".join(f"{esc(s)} {c['read']} / {c['kept']} / {c['quarantined']}"
                                   for s, c in stats["split_counts"].items())
                       + f"; counted for the statistics: {esc(', '.join(stats.get('splits', [])))}.</p>")
    counted = stats.get("splits") or []  # (QA 76: a class of the eval images only read as absent from the data)
    where = f" in the {' and '.join(counted)} split{'s' if len(counted) > 1 else ''}" if counted else ""
    if zero:
        others = set(stats.get("checked_splits") or []) - set(counted)  # a run's eval split; none for `stats`
        uncounted = (f" (the split{'s' if len(counted) > 1 else ''} counted; a class found only in "
                     f"{', '.join(sorted(others))} is still scored by the evaluation)" if others else "")
        body.insert(0, f'<p class="bad">Classes with no pixels{esc(where)}: {esc(", ".join(zero))}{esc(uncounted)}. '
                       f'{esc(stats.get("zero_count_note", ""))}</p>')
    seen = [c for c in range(len(names)) if pixels[c] > 0]  # (QA 89 L5: a class of no pixel was called the rarest)
    rarest = f", rarest {esc(names[min(seen, key=lambda c: pixels[c])])}" if seen else ""
    summary = (f"{len(names)} classes{rarest}"
               + (f'; <span class="bad">no pixels{esc(where)}: {esc(", ".join(zero))}</span>' if zero else ""))
    weights = stats["weights"]
    options = stats.get("weight_options") or {}
    weight_body = [
        f'<p class="note">Options: {esc(", ".join(f"{k}={v}" for k, v in options.items()) or "defaults")}; '
        "unless turned off, weights are normalised to mean 1 over the classes present "
        "(trainer/class_weights.py).</p>",
        table(["scheme", *names], [[scheme, *[float(w) for w in values]] for scheme, values in weights.items()]),
        charts.weight_bars(names, weights)]
    sections = [Section("classes", "Classes", "\n".join(body), summary),
                Section("weights", "Class weights", "\n".join(weight_body))]
    if stats.get("cooccurrence"):
        sections.append(Section("cooccurrence", "Co-occurrence", "\n".join([
            '<p class="note">Number of images containing both classes (diagonal: images with the class).</p>',
            charts.heatmap(stats["cooccurrence"], names, "image co-occurrence", "class", "class")])))
    return sections


def gap_rows(frame, top: int = TOP_IMAGES, first=()):
    """(the images with gaps, the ``top`` of them: the first half at most from ``first`` (the evaluation's predicted
    gap images, in its order: at most 100 of them would fill every row), then those with the most missing +
    suspect-missing classes)."""
    if not len(frame):
        return frame, frame
    frame = frame.assign(score=[len(m) + len(s) for m, s in zip(frame["missing"], frame["suspect_missing"])])
    first = set(list(first)[:max(1, top // 2)])
    frame = frame[frame["score"] > 0].assign(later=lambda f: ~f["source_id"].isin(first))
    return frame, frame.sort_values(["later", "score", "source_id"], ascending=[True, False, True]).head(top)


def predicted_gaps(per_image: Optional[dict]) -> List[str]:
    """The source ids of the gap images the evaluation predicted (``per_image.json``)."""
    return [g["source_id"] for g in (per_image or {}).get("gap_predictions", [])]


def gaps_sections(gaps: tuple, quarantine: List[dict], names: List[str], records: dict, evaluation_dir: Optional[str],
                  per_image: Optional[dict]) -> List[Section]:
    """``gaps``: ``gap_rows`` of the per-image rows of every checked split (QA 96 M1: of the counted one only, no
    eval image was shown, so no gap case ever had the model's prediction)."""
    gap_frame, shown_gaps = gaps
    with_gaps = len(gap_frame)
    by_split = Counter(gap_frame["split"]) if with_gaps else Counter()
    splits = f" ({', '.join(f'{n} of {split}' for split, n in sorted(by_split.items()))})" if len(by_split) > 1 else ""
    label = lambda ids: ", ".join(str(names[int(c)]) for c in ids) or "-"  # noqa: E731
    rows = [[r.source_id, r.split, label(r.present), label(r.missing), label(r.suspect_missing)]
            for r in shown_gaps.itertuples()] if with_gaps else []
    gaps = ['<p class="note"><b>missing</b>: not labelled in the image, so its absence proves nothing; '
            "<b>suspect missing</b>: absent although it almost always appears with the image's classes.</p>"]
    if rows:
        predicted = int((~shown_gaps["later"]).sum())
        which = f"the {predicted} the model predicted (evaluation)" if predicted else ""
        if predicted < len(rows):
            which += f"{', then ' if predicted else ''}the {len(rows) - predicted} with the most"
        gaps += [f"<p>{with_gaps} images have missing or suspect-missing classes{splits}; {which}:</p>",
                 table(["image", "split", "present", "missing", "suspect missing"], rows, left=5),
                 pictures.gap_cases([{"source_id": r.source_id, "missing": r.missing,
                                      "suspect_missing": r.suspect_missing} for r in shown_gaps.itertuples()],
                                    records, names, evaluation_dir, per_image)]
    else:
        gaps.append('<p class="ok">No image has missing or suspect-missing classes.</p>')
    if quarantine:
        shown = quarantine[:MAX_QUARANTINE_ROWS]
        thumbs = pictures.MAX_QUARANTINE_THUMBS
        body = (f'<p class="bad">{len(quarantine)} records quarantined'
                + (f" (first {len(shown)} shown)" if len(shown) < len(quarantine) else "")
                + f":</p><p class=\"note\">Thumbnails for the first {min(thumbs, len(shown))}, where the record "
                "still decodes (image with its mask, or the image alone).</p>"
                + table(["record", "split", "reason", "thumbnail"],
                        [[q.get("source_id", q.get("record_index")), q.get("split", ""), q.get("reason", ""),
                          pictures.quarantine_thumbnail(records, str(q.get("source_id")), len(names))
                          if i < thumbs else "-"] for i, q in enumerate(shown)], left=3))
    else:
        body = '<p class="ok">No record was quarantined.</p>'
    # (QA 68: "images with missing classes" counted the suspect-only ones too, unlike class_stats.json)
    return [Section("gaps", "Annotation gaps", "\n".join(gaps),
                    f"{counted(with_gaps, 'image')} with missing or suspect-missing classes{splits}"),
            Section("quarantine", "Quarantined records", body,
                    f'<span class="bad">{len(quarantine)} quarantined records</span>' if quarantine
                    else '<span class="ok">no quarantined record</span>')]


def not_ingested_section(report_paths: List[str]) -> Optional[Section]:
    """The image pairs ingest skipped (from each read span's ``ingest_report.json``): they never
    became records, so ClassStats cannot count them; None without a report."""
    if not report_paths:
        return None
    from segbalance.pipeline.ingest_reports import current_ingest_report, describe_unmatched_keys, unmatched_key_counts

    rows, total, written, codes, unmatched, unread = [], 0, 0, Counter(), Counter(), []
    changed = [os.path.dirname(p) for p in report_paths if current_ingest_report(os.path.dirname(p)) is None]
    note = (f'<p class="note">Records were added to or changed in {esc(", ".join(changed))} after ingest wrote '
            f"its report: the counts here are ingest's, not the span's.</p>" if changed else "")
    for path in report_paths:
        report = _load_json(path)
        span = os.path.basename(os.path.dirname(path))
        bad = report.get("bad") or []
        total += int(report.get("num_bad", len(bad)))
        written += int(report.get("num_written", 0))
        codes.update(b.get("code", "?") for b in bad)
        unmatched.update(unmatched_key_counts(report))
        unread += [str(f) for f in report.get("skipped_files") or []]
        rows += [[span, os.path.basename(b.get("image") or b.get("mask") or str(b.get("source_id"))),
                  b.get("code", ""), b.get("reason", "")] for b in bad]
    where = "; ".join(report_paths)
    keys = describe_unmatched_keys(unmatched)
    if keys:  # labelled sets or groups of no image: not used (QA 68: said once on the console, then nowhere)
        note += (f'<p class="bad">{esc(keys)} name no image, so they are not used (keys are image '
                 f"file stems; listed in the reports' labeled_unmatched / groups_unmatched).</p>")
    if unread:  # (QA 89 L1: said by `segbalance ingest` only; neither run's console nor this page counted them)
        first = ", ".join(os.path.basename(f) for f in unread[:5]) + (", ..." if len(unread) > 5 else "")
        were = "was" if len(unread) == 1 else "were"
        note += (f'<p class="note">{counted(len(unread), "file")} in the data folders {were} '
                 f"not read: not images or masks ingest reads (another suffix, a sub-folder, no stem ending; "
                 f"{esc(first)}; listed in the reports' skipped_files).</p>")
    if not total:
        return Section("ingest", "Ingest",
                       f'<p class="ok">Every image pair was ingested ({written} records; {esc(where)}).</p>' + note,
                       f'<span class="bad">{esc(keys)} unmatched</span>' if keys
                       else '<span class="ok">every image pair ingested</span>')
    shown = rows[:MAX_QUARANTINE_ROWS]
    body = (f'<p class="bad">{counted(total, "image pair")} {"was" if total == 1 else "were"} not ingested '
            f"(they are in no record, so no count, "
            f"weight or score includes them); {written} were:</p>"
            + table(["reason", "pairs"], [[code, n] for code, n in codes.most_common()])
            + (f"<p>First {len(shown)}:</p>" if len(shown) < len(rows) else "")
            + table(["span", "file", "reason", "detail"], shown, left=4)
            + f'<p class="note">From {esc(where)}.</p>' + note)
    return Section("ingest", "Ingest", body, f'<span class="bad">{total} image pairs not ingested</span>')


def evaluation_section(evaluation_dir: str, per_image: Optional[dict] = None) -> Section:
    path = os.path.join(evaluation_dir, EVALUATION_FILE)
    if not os.path.isfile(path):
        return Section("evaluation", "Evaluation", _missing_file(evaluation_dir, EVALUATION_FILE))
    result = _load_json(path)
    names = result["class_names"]
    verdict = '<span class="ok">blessed</span>' if result.get("blessed") else '<span class="bad">not blessed</span>'
    body = "\n".join([
        f"<p>mIoU <b>{fmt(result.get('miou'))}</b>, pixel accuracy {fmt(result.get('pixel_accuracy'))} on "
        f"{fmt(result.get('num_images'))} images of split {esc(result.get('split', 'eval'))}: {verdict} "
        f"({esc(result.get('reason', ''))}).</p>",
        table(["class", "IoU"], [[n, v] for n, v in zip(names, result["per_class_iou"])]),
        charts.iou_bars(names, result["per_class_iou"]),
        charts.heatmap(result["confusion_matrix"], names, "confusion matrix (rows: truth, normalised)",
                       "true class", "predicted class", normalise_rows=True),
        pictures.worst_images(evaluation_dir, names, per_image),
    ])
    return Section("evaluation", "Evaluation", body, f"mIoU {fmt(result.get('miou'))}, {verdict}")


def drift_section(drift_dir: str) -> Section:
    path = os.path.join(drift_dir, DRIFT_FILE)
    if not os.path.isfile(path):
        return Section("drift", "Class-distribution drift", _missing_file(drift_dir, DRIFT_FILE))
    drift = _load_json(path)
    status = drift.get("status", "unknown")
    status_html = f'<span class="{"ok" if status == "ok" else "bad"}">{esc(status)}</span>'
    thresholds = drift.get("thresholds") or {}
    sampling = drift.get("sampling")  # what sampling alone gives (decisions from session 19 on)
    rows = [[k, drift.get(k), thresholds.get(k)] + ([sampling.get(k)] if sampling else [])
            for k in ("js_divergence", "max_abs_change", "missing_rate_change") if k in drift]
    if drift.get("vanished_class_chance") is not None:  # an anomaly below its threshold, not above
        rows.append(["vanished_class_chance (lowest; anomaly below)", drift["vanished_class_chance"],
                     thresholds.get("vanished_class_chance")] + (["-"] if sampling else []))
    if drift.get("new_class_chances"):  # decisions from session 26 on: new classes weighed by their chance
        rows.append(["new_class_chance (lowest; anomaly below)", min(drift["new_class_chances"].values()),
                     thresholds.get("new_class_chance")] + (["-"] if sampling else []))
    header = ["measure", "value", "threshold"]
    if sampling:
        header.append(f"sampling alone (chance {fmt(sampling.get('significance'))}, {sampling.get('new_images')} "
                      f"new images)")
    effect = {"block": "the model was trained but not blessed, so not pushed",
              "block_training": "training, evaluation and push did not run"}.get(drift.get("action"))
    effect_html = f" ({esc(effect)})" if status == "blocked" and effect else ""
    parts = [f"<p>Status: {status_html}{effect_html}</p>", table(header, rows)]
    if sampling:
        groups = (f"; whole groups drawn: the new images come from {sampling['new_groups']} groups, the accepted "
                  f"ones from {sampling['groups']}") if "groups" in sampling else ""
        factor = sampling.get("small_sample_factor")  # decisions from session 27 on
        units = sampling.get("groups", sampling.get("accepted_images"))
        widened = (f"; widened {factor:.3g}x (the JS divergence {factor ** 2:.3g}x) because only {units} accepted "
                   f"{'groups' if 'groups' in sampling else 'images'} show how much they differ"
                   if factor and factor >= 1.005 else "")
        parts.append(f"<p>A measure is an anomaly above its threshold and above what sampling alone gives: the value "
                     f"that {sampling.get('new_images')} images drawn from the {sampling.get('accepted_images')} "
                     f"accepted ones exceed with chance {fmt(sampling.get('significance'))} "
                     f"({sampling.get('draws')} bootstrap draws){esc(groups)}{esc(widened)}.</p>")
    baseline = drift.get("baseline")
    parts.append(f"<p>Compared with {'the ClassStats in ' + esc(baseline) if baseline else 'nothing'}"
                 + (f" ({esc(drift['note'])})" if drift.get("note") else "") + ".</p>")
    if status == "blocked" and drift.get("advice"):
        parts.append(f"<p>{esc(drift['advice'][0].upper() + drift['advice'][1:])}.</p>")
    if drift.get("new_classes"):
        chances = drift.get("new_class_chances") or {}
        shown = ", ".join(f"{n} ({fmt(chances[n])})" if n in chances else str(n) for n in drift["new_classes"])
        parts.append(f'<p class="bad">New classes{" (chance if unchanged)" if chances else ""}: {esc(shown)}</p>')
    if drift.get("vanished_classes"):
        parts.append(f'<p>Classes with no pixels now (chance if unchanged): '
                     f'{esc(", ".join(f"{n} ({fmt(c)})" for n, c in drift["vanished_classes"].items()))}</p>')
    if drift.get("anomalies"):
        parts.append("<ul>" + "".join(f"<li>{esc(a)}</li>" for a in drift["anomalies"]) + "</ul>")
    return Section("drift", "Class-distribution drift", "\n".join(parts), f"drift {status_html}")


def _load_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


def read_stats(class_stats_dir: str) -> dict:
    from segbalance.trainer.class_stats_io import check_class_stats

    path = os.path.join(class_stats_dir, STATS_FILE)
    stats = check_class_stats(_load_json(path), path)  # types of hand-edited values: one line naming the key
    absent = [k for k in REQUIRED_KEYS if k not in stats]
    if absent:
        raise ValueError(f"{path} lacks {', '.join(absent)}: is it written by ClassStatsGen / `segbalance stats`?")
    return stats  # check_class_stats has already compared the per-class lengths


def render_report(sources: ReportSources, output_html: str, title: str = DEFAULT_TITLE) -> str:
    """Write the page to ``output_html`` (folders created) and return its path."""
    from segbalance.trainer.class_stats_io import read_every_per_image, read_per_image, read_quarantine

    if os.path.isdir(output_html):
        raise ValueError(f"the output {output_html} is a folder: give the report's file name, e.g. "
                         f"{os.path.join(output_html, 'report.html')}")
    sources.check()
    stats = read_stats(sources.class_stats_dir)
    names = [str(n) for n in stats["class_names"]]
    frame = read_per_image(sources.class_stats_dir)
    quarantine = read_quarantine(sources.class_stats_dir)
    per_image = pictures.read_per_image_eval(sources.evaluation_dir)
    checked = read_every_per_image(sources.class_stats_dir, frame)  # every split's gaps: eval's have predictions
    samples = pictures.class_samples(frame, stats["pixel_counts"])
    gaps = gap_rows(checked, first=predicted_gaps(per_image))  # (all with gaps, those shown)
    wanted = {sid for ids in samples.values() for sid in ids} | set(gaps[1]["source_id"] if len(gaps[1]) else [])
    wanted |= {str(q.get("source_id")) for q in quarantine[:pictures.MAX_QUARANTINE_THUMBS]}
    # every checked split's files: a quarantined eval record is found there too (not "record not found")
    records, problems = report_images.load_records(stats.get("checked_inputs") or stats.get("inputs") or [], wanted)
    sections: List[Section] = []
    if sources.anomalies_dir:
        sections.append(anomalies_section(sources.anomalies_dir))
    if sources.statistics_dir:
        sections.append(tfdv_section(sources.statistics_dir))
    sections += classes_sections(stats)
    sections.append(pictures.class_examples_section(names, stats, samples, records, problems, frame))
    not_ingested = not_ingested_section(sources.ingest_reports or [])
    if not_ingested is not None:
        sections.append(not_ingested)
    sections += gaps_sections(gaps, quarantine, names, records, sources.evaluation_dir, per_image)
    if sources.model_run_dir:
        sections.append(pictures.training_section(sources.model_run_dir))
    if sources.evaluation_dir:
        sections.append(evaluation_section(sources.evaluation_dir, per_image))
    if sources.drift_dir:
        sections.append(drift_section(sources.drift_dir))
    spans = pictures.spans_section(sources.spans, names)
    if spans is not None:
        sections.append(spans)
    shown = sources.shown_as or {}
    inputs = [(name, getattr(sources, name)) for name in ReportSources.__dataclass_fields__
              if name not in ("spans", "note", "shown_as", "recorded")]  # (QA 73: "recorded: not given")
    inputs = [(name, shown.get(value, value) if isinstance(value, str) else value) for name, value in inputs]
    inputs = [(name, "; ".join(value) if isinstance(value, list) else value) for name, value in inputs]
    if sources.spans:
        inputs.append(("spans", ", ".join(str(s.span) for s in sources.spans)))
    head = [
        f"<h1>{esc(title)}</h1>",
        *([f'<p class="bad">{esc(sources.note)}</p>'] if sources.note else []),
        "<nav>" + "".join(f'<a href="#{s.anchor}">{esc(s.title)}</a>' for s in sections) + "</nav>",
        '<h2 id="summary">Summary</h2><ul class="summary">'
        f"<li>{stats['num_records']} records in splits {esc(', '.join(stats.get('splits', [])) or '?')}</li>"
        + "".join(f"<li>{s.summary}</li>" for s in sections if s.summary) + "</ul>",
        '<p class="note">Inputs: ' + "; ".join(f"{esc(n)}: {esc(v) if v else 'not given'}" for n, v in inputs) + "</p>",
    ]
    body = head + [f'<h2 id="{s.anchor}">{esc(s.title)}</h2>\n{s.body}' for s in sections]
    page = (f'{PAGE_START}{GENERATOR}<title>{esc(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    os.makedirs(os.path.dirname(os.path.abspath(output_html)), exist_ok=True)
    write_text_atomic(output_html, page)  # a killed write left an empty file the next call refused as not ours
    return output_html


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="self-contained HTML report of a statistics folder or a pipeline run",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", metavar="STATS_DIR|RUN_DIR")
    parser.add_argument("--output", required=True, metavar="FILE.html")
    parser.set_defaults(func=_main)


def _main(args) -> int:
    # (cli.quiet_third_party keeps third-party start-up output quiet for every command)
    from segbalance.pipeline.output_guard import check_output_file

    check_output_file(args.output, "--output", is_report)  # never overwrite a file segbalance did not write
    stats_dir = Path(args.path)
    if (stats_dir / STATS_FILE).is_file() and stats_dir.resolve() in Path(args.output).resolve().parents:
        # (QA 69: written into the folder it reads; `stats --output` there then refused a folder of others' files)
        from segbalance.pipeline.cli import error_line

        return error_line("segbalance report", f"--output {args.output} lies inside {args.path}, the statistics "
                          f"folder it reads (an input): write the page elsewhere, e.g. "
                          f"{stats_dir.resolve().parent / 'report.html'}", args)
    try:
        path = render_report(find_sources(args.path), args.output)
    except (OSError, ValueError) as exc:  # FileNotFoundError, a folder or file in the way of --output
        from segbalance.pipeline.cli import error_line

        return error_line("segbalance report", str(exc), args)
    print(f"report: wrote {path}")
    return 0
