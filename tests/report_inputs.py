"""Tiny, real inputs for the data report: a ClassStats folder from the Beam job, a TFDV statistics
proto, an ExampleValidator anomalies proto, evaluation.json and drift.json."""
import json
from pathlib import Path

import pandas as pd
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2

from segbalance.components import class_stats_beam as csb
from segbalance.pipeline.report_sources import ReportSources
from tests.test_class_stats_beam import make_records, write_tfrecord

# A class name that would run as a script if the page did not escape it, and a class with no pixels.
NAMES = ["background", "<script>alert(1)</script>", "rare_circle", "never"]
ANOMALY = "Unexpectedly large value: 4096 <b>"


def write_report_inputs(tmp: Path) -> ReportSources:
    write_tfrecord(tmp / "data.tfrecord", make_records(seed=5)[0])
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
                         drift_dir=str(tmp / "drift"))
