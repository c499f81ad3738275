"""Tiny, real inputs for the data report: a ClassStats folder from the Beam job over shape images
(with quarantined records), a TFDV statistics proto, an ExampleValidator anomalies proto,
evaluation.json with a per_image.json written by SegEvaluator's PerImageResults, a
training_summary.json, drift.json and a three-span history."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2

from segbalance.components import class_stats_beam as csb
from segbalance.components import evaluation_metrics as em
from segbalance.pipeline.report_sources import ReportSources, SpanStats
from segbalance.pipeline.sample_data import draw_shapes_image
from segbalance.trainer import example_codec as codec
from tests.test_class_stats_beam import write_tfrecord

# A class name that would run as a script if the page did not escape it, a class with no pixels whose
# name is HTML and LaTeX (matplotlib mathtext) at once.
NAMES = ["background", "<script>alert(1)</script>", "rare_circle", "$\\frac{a}{b}$ <b>&\"'"]
ANOMALY = "Unexpectedly large value: 4096 <b>"
ODD_ID = "odd<i>&\"'$\\frac{1}{2}$"  # a source_id with HTML and LaTeX metacharacters (a gap image)
HISTORY = {"loss": [1.2, 0.8, 0.6], "val_loss": [1.3, 1.0, 0.9], "miou": [0.2, 0.4, 0.5],
           "val_miou": [0.15, 0.3, 0.35]}


def shape_records(n=12, size=40, seed=5):
    """Shape images (classes 0..2; class 3 never drawn), some ignore pixels and labelled fields, and
    quarantined records: one whose image still decodes (bad class ids), three that do not."""
    records, pairs = [], {}
    for i in range(n):
        image, mask = draw_shapes_image(seed, i, size)
        mask[mask == 3] = 2
        mask[:2, :] = 255
        labeled = [0, 1] if i % 3 == 0 else ([0, 1, 2] if i % 3 == 1 else None)
        sid = ODD_ID if i == 0 else f"img{i}"
        records.append(codec.build_example(codec.encode_png(image), codec.encode_png(mask), sid, size, size,
                                           labeled).SerializeToString())
        pairs[sid] = (image, mask, labeled)
    image, _ = draw_shapes_image(seed, n, size)
    records.append(codec.build_example(codec.encode_png(image), codec.encode_png(np.full((size, size), 7, np.uint8)),
                                       "bad_ids", size, size).SerializeToString())
    records.append(codec.build_example(b"x", b"not a png", "corrupt", size, size).SerializeToString())
    no_mask = codec.build_example(b"x", b"", "no_mask", size, size)
    del no_mask.features.feature[codec.MASK_KEY]
    records.append(no_mask.SerializeToString())
    records.append(codec.build_example(codec.encode_png(image), codec.encode_png(np.zeros((size, size), np.uint8)),
                                       "bad_labeled", size, size, [0, 9]).SerializeToString())
    return records, pairs


def write_per_image_eval(folder: Path, pairs: dict) -> dict:
    """per_image.json as SegEvaluator writes it, for a 'model' that predicts background except on
    every other image's class-1 pixels."""
    from segbalance.components.seg_evaluator import PerImageResults

    recorder = PerImageResults(len(NAMES), 255, {sid: labeled for sid, (_, _, labeled) in pairs.items()}, worst=3,
                               references=set(sorted(pairs)[::2]))  # every other image scored against a reference
    for i, (sid, (image, mask, _)) in enumerate(sorted(pairs.items())):
        prediction = np.where((mask == 1) & (i % 2 == 0), 1, 0)
        recorder(sid, codec.encode_png(image), mask, prediction, em.confusion_matrix(mask, prediction, len(NAMES), 255))
    return recorder.write(str(folder))


def write_span_history(tmp: Path, spans=(1, 2, 3)) -> list:
    history = []
    for i, span in enumerate(spans):
        folder = tmp / f"span{span}_stats"
        folder.mkdir()
        counts = [1000, 300 - 100 * i, 50 + 200 * i, 0]
        (folder / "class_stats.json").write_text(json.dumps({"class_names": NAMES, "pixel_counts": counts,
                                                             "num_records": 10 + i}))
        history.append(SpanStats(span, str(folder), "ok" if i < 2 else "blocked", "block"))
    return history


def write_report_inputs(tmp: Path) -> ReportSources:
    records, pairs = shape_records()
    write_tfrecord(tmp / "data.tfrecord", records)
    csb.run_class_stats({"train": str(tmp / "data.tfrecord")}, str(tmp / "stats"),
                        csb.StatsOptions(num_classes=4, class_names=NAMES))
    frame = pd.DataFrame({"image/height": [6, 6, 7], "image/source_id": ["a", "b", "c"]})
    (tmp / "statistics" / "Split-train").mkdir(parents=True)
    stats_proto = tfdv.generate_statistics_from_dataframe(frame)
    (tmp / "statistics" / "Split-train" / "FeatureStats.pb").write_bytes(stats_proto.SerializeToString())
    anomalies = anomalies_pb2.Anomalies()
    info = anomalies.anomaly_info["image/height"]
    info.severity = anomalies_pb2.AnomalyInfo.ERROR
    info.short_description = "Out-of-range values"
    info.description = ANOMALY
    (tmp / "anomalies" / "Split-eval").mkdir(parents=True)
    (tmp / "anomalies" / "Split-eval" / "SchemaDiff.pb").write_bytes(anomalies.SerializeToString())
    (tmp / "anomalies" / "Split-train").mkdir(parents=True)
    (tmp / "anomalies" / "Split-train" / "SchemaDiff.pb").write_bytes(anomalies_pb2.Anomalies().SerializeToString())
    (tmp / "evaluation").mkdir()
    write_per_image_eval(tmp / "evaluation", pairs)
    (tmp / "model_run").mkdir()
    (tmp / "model_run" / "training_summary.json").write_text(json.dumps({
        "history": HISTORY, "epochs_run": [0, 1, 2], "initial_loss": 1.4, "num_train_records": 12}))
    (tmp / "evaluation" / "evaluation.json").write_text(json.dumps({
        "class_names": NAMES, "per_class_iou": [0.9, 0.5, 0.25, None], "miou": 0.55, "pixel_accuracy": 0.8,
        "confusion_matrix": [[9, 1, 0, 0], [1, 3, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], "num_images": 4,
        "blessed": False, "reason": "mIoU 0.5500 is below the threshold 0.6000", "threshold": 0.6,
        "baseline_miou": None, "split": "eval"}))
    (tmp / "drift").mkdir()
    (tmp / "drift" / "drift.json").write_text(json.dumps({
        "status": "blocked", "js_divergence": 0.2, "max_abs_change": 0.3, "new_classes": [],
        "missing_rate_change": 0.0, "anomalies": ["class rare_circle frequency changed by 0.3"],
        "thresholds": {"js_divergence": 0.05, "max_abs_change": 0.1, "missing_rate_change": 0.2}}))
    return ReportSources(class_stats_dir=str(tmp / "stats"), statistics_dir=str(tmp / "statistics"),
                         anomalies_dir=str(tmp / "anomalies"), evaluation_dir=str(tmp / "evaluation"),
                         drift_dir=str(tmp / "drift"), model_run_dir=str(tmp / "model_run"),
                         spans=write_span_history(tmp))
