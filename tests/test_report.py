"""The offline HTML report: content, escaping, sources, CLI, and a real headless browser."""
import json
import re
import shutil
import subprocess

import pandas as pd
import pytest
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2

from components import class_stats_beam as csb
from pipeline import cli
from pipeline.report import render_report
from pipeline.report_sources import ReportSources, find_sources
from tests.test_class_stats_beam import make_records, write_tfrecord

NAMES = ["background", "<script>alert(1)</script>", "rare_circle", "never"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    write_tfrecord(tmp / "data.tfrecord", make_records(seed=5)[0])
    stats = csb.run_class_stats({"train": str(tmp / "data.tfrecord")}, str(tmp / "stats"),
                                csb.StatsOptions(num_classes=4, class_names=NAMES))
    frame = pd.DataFrame({"image/height": [6, 6, 7], "image/source_id": ["a", "b", "c"]})
    (tmp / "statistics" / "Split-train").mkdir(parents=True)
    stats_proto = tfdv.generate_statistics_from_dataframe(frame)
    (tmp / "statistics" / "Split-train" / "FeatureStats.pb").write_bytes(stats_proto.SerializeToString())
    anomalies = anomalies_pb2.Anomalies()
    info = anomalies.anomaly_info["image/height"]
    info.short_description = "Out-of-range values"
    info.description = "Unexpectedly large value: 4096"
    (tmp / "anomalies" / "Split-eval").mkdir(parents=True)
    (tmp / "anomalies" / "Split-eval" / "SchemaDiff.pb").write_bytes(anomalies.SerializeToString())
    (tmp / "evaluation").mkdir()
    (tmp / "evaluation" / "evaluation.json").write_text(json.dumps({
        "class_names": NAMES, "per_class_iou": [0.9, 0.5, 0.25, None], "miou": 0.55, "pixel_accuracy": 0.8,
        "confusion_matrix": [[9, 1, 0, 0], [1, 3, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], "num_images": 4,
        "blessed": False, "reason": "mIoU 0.5500 is below the threshold 0.6000", "split": "eval"}))
    (tmp / "drift").mkdir()
    (tmp / "drift" / "drift.json").write_text(json.dumps({
        "status": "blocked", "js_divergence": 0.2, "max_abs_change": 0.3, "new_classes": [],
        "missing_rate_change": 0.0, "anomalies": ["class rare_circle frequency changed by 0.3"],
        "thresholds": {"js_divergence": 0.05, "max_abs_change": 0.1, "missing_rate_change": 0.2}}))
    src = ReportSources(class_stats_dir=str(tmp / "stats"), statistics_dir=str(tmp / "statistics"),
                        anomalies_dir=str(tmp / "anomalies"), evaluation_dir=str(tmp / "evaluation"),
                        drift_dir=str(tmp / "drift"))
    page = tmp / "report.html"
    render_report(src, str(page))
    return tmp, stats, page


def test_page_has_every_section_and_number(sources):
    _, stats, page = sources
    text = page.read_text()
    for heading in ("Classes", "Class weights", "Co-occurrence", "Annotation gaps", "Quarantined records",
                    "Anomalies (ExampleValidator)", "Feature statistics (TFDV)", "Evaluation",
                    "Class-distribution drift"):
        assert f"<h2>{heading}</h2>" in text, heading
    for count in stats["pixel_counts"]:
        assert f"<td>{count}</td>" in text
    assert f"{round(stats['weights']['median_frequency'][2], 4):.4g}" in text
    assert "Unexpectedly large value: 4096" in text and "blocked" in text
    assert "bad_ids" in text  # a quarantined record, by name
    assert text.count("data:image/png;base64,") >= 5


def test_user_strings_are_escaped_and_nothing_loads_from_the_network(sources):
    _, _, page = sources
    text = page.read_text()
    assert "<script" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "<link" not in text and "@import" not in text and "url(" not in text


def test_optional_sections_are_left_out(sources, tmp_path):
    tmp, _, _ = sources
    out = tmp_path / "r.html"
    render_report(ReportSources(class_stats_dir=str(tmp / "stats")), str(out))
    text = out.read_text()
    assert "<h2>Classes</h2>" in text and "<h2>Evaluation</h2>" not in text and "TFDV" not in text


def test_find_sources_and_cli(sources, tmp_path, capsys):
    tmp, _, _ = sources
    assert find_sources(str(tmp / "stats")).class_stats_dir == str(tmp / "stats")
    with pytest.raises(FileNotFoundError, match="neither class_stats.json .* nor metadata.sqlite"):
        find_sources(str(tmp_path))
    assert cli.main(["report", str(tmp / "stats"), "--output", str(tmp_path / "cli.html")]) == 0
    assert (tmp_path / "cli.html").is_file()
    assert cli.main(["report", str(tmp_path / "nothing"), "--output", str(tmp_path / "x.html")]) == 2
    assert "point the report at" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (make test installs it)")
def test_renders_offline_in_headless_chromium(sources, tmp_path):
    _, stats, page = sources
    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
            "--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run(base + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = re.sub(r"<[^>]+>", " ", dom.stdout)
    for name in ("background", "rare_circle", "never"):
        assert name in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom.stdout  # shown as text, not run
    assert f"{round(stats['weights']['enet'][1], 4):.4g}" in text
    assert "Unexpectedly large value: 4096" in text
    shot = tmp_path / "report.png"
    subprocess.run(base + [f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 10_000
