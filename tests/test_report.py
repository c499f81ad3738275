"""The offline HTML report (pipeline/report.py): content, escaping, optional and unreadable
sections, error messages, sources from a STATS_DIR and from a run's ML Metadata, the CLI and
the DataReport component's executor. The browser check is in test_report_browser.py."""
import dataclasses
import html
import os
import tempfile
import json
import re
import shutil
import time

import pytest

import base64
import io

import numpy as np

from pathlib import Path

from segbalance.pipeline import cli, report_charts
from segbalance.pipeline import report_pictures as pictures
from segbalance.pipeline.report import render_report
from segbalance.pipeline.report_html import fmt
from segbalance.pipeline.report_sources import ReportSources, find_sources
from tests.report_inputs import ANOMALY, HISTORY, NAMES, ODD_ID, shape_records, write_report_inputs


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    sources = write_report_inputs(tmp)
    page = tmp / "report.html"
    assert render_report(sources, str(page)) == str(page)
    stats = json.loads((tmp / "stats" / "class_stats.json").read_text())
    return tmp, sources, stats, page.read_text()


def cells(text):
    """Every table cell's text, unescaped only of the tags (entities kept)."""
    return re.findall(r"<td[^>]*>(.*?)</td>", text)


def test_page_has_every_section_and_number(report):
    _, _, stats, text = report
    for heading in ("Summary", "Anomalies (ExampleValidator)", "Feature statistics (TFDV)", "Classes",
                    "Class weights", "Co-occurrence", "Class examples", "Annotation gaps", "Quarantined records",
                    "Training", "Evaluation", "Class-distribution drift", "Spans"):
        assert re.search(rf'<h2 id="\w+">{re.escape(heading)}</h2>', text), heading
    found = cells(text)
    classes = text.split('<h2 id="classes">')[1].split("<h2")[0]
    assert re.findall(r'<tr><td class="l">([^<]*)</td>', classes) == [html.escape(name) for name in NAMES]
    for count in stats["pixel_counts"] + stats["image_counts"]:
        assert str(count) in found
    for scheme, weights in stats["weights"].items():  # the weights table: one row per scheme, C weights
        row = re.search(rf'<tr><td class="l">{scheme}</td>(.*?)</tr>', text).group(1)
        assert cells(row) == [f"{w:.4g}" for w in weights], scheme
    assert stats["zero_count_classes"] == [3]
    assert f"Classes with no pixels in the train split: {html.escape(NAMES[3])}" in text
    assert "ERROR" in found and "Out-of-range values" in found
    assert "bad_ids" in found and f"{stats['quarantined_records']} records quarantined" in text
    assert "mIoU <b>0.55</b>" in text and "not blessed" in text and "blocked" in text
    charts = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,', text)  # matplotlib charts
    assert charts == ["class pixel and image frequencies", "class weights of every scheme", "image co-occurrence",
                      "training loss and mIoU per epoch", "per-class IoU", "confusion matrix (rows: truth, normalised)",
                      "class pixel frequency per span"]
    # ...and the TFDV tables: the numeric one from the DataFrame (heights 6, 6, 7)
    row = re.search(r'<tr><td class="l">image/height</td>(.*?)</tr>', text).group(1)
    assert cells(row) == ["int", "3", "0", "1", f"{19 / 3:.4g}", f"{(2 / 9) ** 0.5:.4g}", "6", "7", "0"]
    row = re.search(r'<tr><td class="l">image/source_id</td>(.*?)</tr>', text).group(1)
    assert cells(row) == ["string", "3", "0", "3", "1"]


def test_annotation_gaps_are_ranked_by_missing_classes(report):
    tmp, _, _, text = report
    from segbalance.trainer.class_stats_io import read_per_image

    frame = read_per_image(str(tmp / "stats"))
    score = {r.source_id: len(r.missing) + len(r.suspect_missing) for r in frame.itertuples()}
    gaps = text.split('id="gaps"')[1].split("<h2")[0]
    shown = re.findall(r'<tr><td class="l">([^<]+)</td>', gaps)
    expected = [html.escape(sid) for sid in
                sorted((sid for sid, s in score.items() if s > 0), key=lambda sid: (-score[sid], sid))]
    assert shown == expected and shown  # all of them: fewer than TOP_IMAGES
    assert f"{len(expected)} images have missing or suspect-missing classes" in gaps
    summary = text.split('<h2 id="summary">')[1].split("</ul>")[0]  # the same count, named the same (QA 68)
    assert f"{len(expected)} images with missing or suspect-missing classes" in summary


def test_a_page_is_ours_by_its_opening_only():
    """QA 73: a user's page quoting the generator meta, or opening as ours with "segbalance" in its title, was taken
    for a report and overwritten; pages written before the generator meta still count (QA 75: untested)."""
    from segbalance.pipeline.report_html import GENERATOR, PAGE_START, is_report

    assert is_report(f"{PAGE_START}{GENERATOR}<title>anything</title>")
    assert is_report(f"{PAGE_START}<title>segbalance data report</title><style>body{{}}</style>")  # an older page
    assert not is_report(f"{PAGE_START}<title>My notes about segbalance</title></head>")
    assert not is_report(f"<html><body><!-- {GENERATOR} --></body></html>")
    assert not is_report("")


def test_user_strings_are_escaped_and_nothing_loads_from_the_network(report):
    _, _, _, text = report
    assert "<script" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert ANOMALY not in text and html.escape(ANOMALY) in text
    assert re.findall(r"""(?:src|href)\s*=\s*["']?+(?!data:image/(?:png|jpeg);base64,|#)""", text) == []
    text = re.sub(r"data:image/(?:png|jpeg);base64,[A-Za-z0-9+/=]+", "", text)
    assert "<link" not in text and "@import" not in text and "url(" not in text and "//" not in text


def test_optional_sections_are_left_out(report, tmp_path):
    tmp, _, _, _ = report
    out = tmp_path / "r.html"
    render_report(ReportSources(class_stats_dir=str(tmp / "stats")), str(out))
    text = out.read_text()
    assert '<h2 id="classes">Classes</h2>' in text and "evaluation_dir: not given" in text
    for absent in ("anomalies", "statistics", "evaluation", "drift"):
        assert f'id="{absent}"' not in text and f'href="#{absent}"' not in text


def test_given_but_unreadable_sections_say_so(report, tmp_path):
    tmp, _, _, _ = report
    for name in ("statistics", "anomalies", "evaluation", "drift"):
        (tmp_path / name).mkdir()
    out = tmp_path / "r.html"
    render_report(ReportSources(str(tmp / "stats"), str(tmp_path / "statistics"), str(tmp_path / "anomalies"),
                                str(tmp_path / "evaluation"), str(tmp_path / "drift")), str(out))
    text = out.read_text()
    assert "No anomalies" not in text  # an empty folder is not a clean bill of health
    for missing in ("Split-*/SchemaDiff.pb", "Split-*/FeatureStats.pb", "evaluation.json", "drift.json"):
        assert f"holds no {missing}: this section could not be read" in text


def test_bad_inputs_name_the_file_and_the_problem(report, tmp_path):
    tmp, _, _, _ = report
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.* has no class_stats.json"):
        render_report(ReportSources(class_stats_dir=str(tmp_path)), str(tmp_path / "x.html"))
    with pytest.raises(FileNotFoundError, match="drift_dir .*nowhere.* is not a folder"):
        render_report(ReportSources(str(tmp / "stats"), drift_dir=str(tmp_path / "nowhere")), str(tmp_path / "x.html"))
    # folders ML Metadata records (a run directory), moved or deleted since: flagged in their sections,
    # the rest of the report is written (it refused the whole report, naming an internal field)
    gone = {name: str(tmp_path / f"gone_{name}") for name in ("statistics_dir", "anomalies_dir", "evaluation_dir",
                                                              "drift_dir", "model_run_dir")}
    render_report(ReportSources(str(tmp / "stats"), recorded=True, **gone), str(tmp_path / "moved.html"))
    text = (tmp_path / "moved.html").read_text()
    assert "rare_circle" in text
    for name in ("statistics_dir", "anomalies_dir", "evaluation_dir", "drift_dir"):
        assert f"gone_{name} does not exist (moved or deleted since the run recorded it)" in text, name
    broken = tmp_path / "broken"
    shutil.copytree(tmp / "stats", broken)
    stats = json.loads((broken / "class_stats.json").read_text())
    del stats["weights"]
    (broken / "class_stats.json").write_text(json.dumps(stats))
    with pytest.raises(ValueError, match=r"broken/class_stats.json lacks weights"):
        render_report(ReportSources(str(broken)), str(tmp_path / "x.html"))
    (broken / "class_stats.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken/class_stats.json is not valid JSON"):
        render_report(ReportSources(str(broken)), str(tmp_path / "x.html"))
    assert not (tmp_path / "x.html").exists()


def test_cli_on_a_stats_dir(report, tmp_path, capsys):
    tmp, _, _, _ = report
    assert find_sources(str(tmp / "stats")) == ReportSources(class_stats_dir=str(tmp / "stats"))
    out = tmp_path / "sub" / "cli.html"
    assert cli.main(["report", str(tmp / "stats"), "--output", str(out)]) == 0
    assert "rare_circle" in out.read_text() and f"report: wrote {out}" in capsys.readouterr().out
    assert cli.main(["report", str(tmp_path), "--output", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} has neither class_stats.json" in err and "point the report at" in err
    assert cli.main(["report", str(tmp_path / "nothing"), "--output", str(tmp_path / "x.html")]) == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("content, reason", [(b"", "an empty file"), (b"garbage", "file is not a database")])
def test_a_metadata_store_that_cannot_be_opened_is_one_line(tmp_path, capsys, content, reason):
    """An empty or damaged metadata.sqlite (a disk that filled, a copy cut short) was ML Metadata's
    RuntimeError and a traceback from `report` and `run`; it is one line naming the file, exit 2."""
    (tmp_path / "metadata.sqlite").write_bytes(content)
    assert cli.main(["report", str(tmp_path), "--output", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{tmp_path / 'metadata.sqlite'} cannot be opened as an ML Metadata store ({reason})" in err
    assert not (tmp_path / "x.html").exists() and (tmp_path / "metadata.sqlite").read_bytes() == content


def _store(path):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(path)
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    return metadata_store.MetadataStore(config)


def _register(store, type_name, uri, state="LIVE"):
    from ml_metadata.proto import metadata_store_pb2

    type_id = store.put_artifact_type(metadata_store_pb2.ArtifactType(name=type_name))
    artifact = metadata_store_pb2.Artifact(type_id=type_id, uri=str(uri),
                                           state=metadata_store_pb2.Artifact.State.Value(state))
    return store.put_artifacts([artifact])[0]


def test_run_dir_sources_come_from_ml_metadata(report, tmp_path, capsys):
    tmp, _, _, _ = report
    run = tmp_path / "run"
    run.mkdir()
    store = _store(run / "metadata.sqlite")
    _register(store, "segbalance.ClassStats", tmp_path / "older_stats")  # older: not used
    _register(store, "segbalance.ClassStats", tmp / "stats")
    _register(store, "segbalance.ClassStats", tmp_path / "deleted", state="DELETED")  # newest, but not live
    _register(store, "ExampleStatistics", tmp / "statistics")
    _register(store, "ExampleAnomalies", tmp / "anomalies")
    _register(store, "ModelEvaluation", tmp / "evaluation")
    (tmp_path / "old_drift").mkdir()
    (tmp_path / "old_drift" / "drift.json").write_text(json.dumps({"status": "ok"}))
    _register(store, "SomeDriftCheck", tmp_path / "old_drift")  # older drift.json: not used
    _register(store, "Schema", tmp_path)  # an artifact without drift.json, newer than the drift ones
    _register(store, "SomeDriftCheck", tmp / "drift")  # no DriftReport type: found by its drift.json
    _register(store, "Schema", tmp_path / "schema")
    _register(store, "ModelRun", tmp / "model_run")
    del store
    # spans=[]: no ClassStats with a producing execution; ingest_reports=[]: no ImportExampleGen execution;
    # recorded: the folders come from ML Metadata
    assert find_sources(str(run)) == ReportSources(
        class_stats_dir=str(tmp / "stats"), statistics_dir=str(tmp / "statistics"),
        anomalies_dir=str(tmp / "anomalies"), evaluation_dir=str(tmp / "evaluation"), drift_dir=str(tmp / "drift"),
        model_run_dir=str(tmp / "model_run"), spans=[], ingest_reports=[], recorded=True)
    assert cli.main(["report", str(run), "--output", str(tmp_path / "run.html")]) == 0
    text = (tmp_path / "run.html").read_text()
    assert '<h2 id="evaluation">Evaluation</h2>' in text and "Out-of-range values" in text and "blocked" in text
    assert '<h2 id="training">Training</h2>' in text
    assert "did not finish" not in text
    # the folder's latest run was stopped (QA 25: the page lacked sections without saying why)
    (run / "run_summary.json").write_text(json.dumps({"status": "interrupted", "error": "Terminated"}))
    assert find_sources(str(run)).note.startswith(
        "The latest run in this folder did not finish: run_summary.json says interrupted (Terminated).")
    assert cli.main(["report", str(run), "--output", str(tmp_path / "run.html")]) == 0
    head = (tmp_path / "run.html").read_text().split('<h2 id="summary">')[0]
    assert '<p class="bad">The latest run in this folder did not finish' in head and "Run the same" in head
    # a run under way, or killed outright (QA 71: its `running` summary was not read as unfinished)
    (run / "run_summary.json").write_text(json.dumps({"status": "running", "pid": 7, "started": "2026-12-07"}))
    assert find_sources(str(run)).note.startswith(
        "The latest run in this folder did not finish: run_summary.json says running (process 7, started "
        "2026-12-07: under way, or killed).")
    # a refused run (QA 92 L3: the page said to run the same command again, which is refused again)
    (run / "run_summary.json").write_text(json.dumps({"status": "refused", "error": "3 records, all in train"}))
    note = find_sources(str(run)).note
    assert "says refused (3 records, all in train)" in note and "Run the same" not in note
    assert note.endswith("Do what the error says, then run the `segbalance run` command again (the same command "
                         "alone is refused again).")
    (run / "run_summary.json").write_text(json.dumps({"status": "done"}))
    assert find_sources(str(run)).note is None

    empty = tmp_path / "empty_run"
    empty.mkdir()
    store = _store(empty / "metadata.sqlite")
    _register(store, "ExampleStatistics", tmp / "statistics")
    del store
    with pytest.raises(FileNotFoundError, match="records no segbalance.ClassStats artifact"):
        find_sources(str(empty))
    moved = tmp_path / "moved_run"
    moved.mkdir()
    store = _store(moved / "metadata.sqlite")
    _register(store, "segbalance.ClassStats", tmp_path / "gone")
    del store
    with pytest.raises(FileNotFoundError, match=r"ClassStats artifact .*gone, which has no class_stats.json"):
        find_sources(str(moved))


def test_data_report_executor_writes_report_html(report, tmp_path, capsys):
    from tfx import types
    from tfx.types import standard_artifacts

    from segbalance.components.artifacts import ClassStats, HtmlReport
    from segbalance.pipeline.report_component import DataReport, DataReportExecutor

    tmp, sources, _, _ = report

    def artifact(cls, uri):
        a = cls()
        a.uri = str(uri)
        return a

    output = artifact(HtmlReport, tmp_path / "report_artifact")
    DataReportExecutor().Do({"statistics": [artifact(standard_artifacts.ExampleStatistics, sources.statistics_dir)],
                             "anomalies": [artifact(standard_artifacts.ExampleAnomalies, sources.anomalies_dir)],
                             "class_stats": [artifact(ClassStats, sources.class_stats_dir)],
                             "model_run": [artifact(standard_artifacts.ModelRun, sources.model_run_dir)]},
                            {"report": [output]}, {"metadata_path": str(tmp_path / "no_store.sqlite")})
    text = (tmp_path / "report_artifact" / "report.html").read_text()
    out = capsys.readouterr().out
    assert "DataReport: rendering" in out and "with statistics, anomalies, model_run" in out
    assert f"DataReport: wrote {tmp_path / 'report_artifact' / 'report.html'}" in out
    assert "rare_circle" in text and "Out-of-range values" in text and "Evaluation</h2>" not in text
    assert "Training</h2>" in text and "Spans</h2>" not in text  # no store: no span history

    component = DataReport(statistics=types.Channel(type=standard_artifacts.ExampleStatistics),
                           anomalies=types.Channel(type=standard_artifacts.ExampleAnomalies),
                           class_stats=types.Channel(type=ClassStats))
    assert component.outputs["report"].type_name == "segbalance.HtmlReport"
    with pytest.raises(TypeError):
        DataReport(statistics=types.Channel(type=ClassStats), anomalies=types.Channel(type=ClassStats),
                   class_stats=types.Channel(type=ClassStats))


def test_data_report_reads_and_writes_artifacts_on_a_remote_file_system(report, tmp_path, capsys, monkeypatch):
    """A Kubeflow run's artifacts are on gs:// (s3://, ...): the report read them with local file calls, found
    no class_stats.json and failed the run's last step (nor could it write its page there). Here TensorFlow's
    ram:// file system stands in for gs://, records included: the page equals the one of the local folders,
    and names the remote addresses."""
    import tensorflow as tf
    from tfx.types import standard_artifacts

    from segbalance.components.artifacts import ClassStats, DriftReport, HtmlReport
    from segbalance.pipeline.report_component import DataReportExecutor

    tmp, sources, _, _ = report
    remote = f"ram://report-{tmp_path.name}"
    local_dirs = {"class_stats": sources.class_stats_dir, "statistics": sources.statistics_dir,
                  "anomalies": sources.anomalies_dir, "evaluation": sources.evaluation_dir,
                  "drift": sources.drift_dir, "model_run": sources.model_run_dir}
    for key, folder in local_dirs.items():
        for path in Path(folder).rglob("*"):
            if path.is_file():
                target = f"{remote}/{key}/{path.relative_to(folder)}"
                tf.io.gfile.makedirs(os.path.dirname(target))
                tf.io.gfile.copy(str(path), target, overwrite=True)
    tf.io.gfile.copy(str(tmp / "data.tfrecord"), f"{remote}/records/data.tfrecord")
    stats = json.loads((Path(sources.class_stats_dir) / "class_stats.json").read_text())
    for key in ("inputs", "checked_inputs"):  # the records the statistics were computed from, remote too
        if key in stats:
            stats[key] = [f"{remote}/records/data.tfrecord" for _ in stats[key]]
    tf.io.gfile.remove(f"{remote}/class_stats/class_stats.json")  # (ram:// writes over a file without cutting it)
    with tf.io.gfile.GFile(f"{remote}/class_stats/class_stats.json", "w") as f:
        f.write(json.dumps(stats))
    types = {"class_stats": ClassStats, "statistics": standard_artifacts.ExampleStatistics,
             "anomalies": standard_artifacts.ExampleAnomalies, "evaluation": standard_artifacts.ModelEvaluation,
             "drift": DriftReport, "model_run": standard_artifacts.ModelRun}

    def run(where, out):
        inputs = {}
        for key, cls in types.items():
            artifact = cls()
            artifact.uri = where[key]
            inputs[key] = [artifact]
        output = HtmlReport()
        output.uri = out
        DataReportExecutor().Do(inputs, {"report": [output]}, {})
        with tf.io.gfile.GFile(f"{out}/report.html") as f:
            return f.read()

    before = set(Path(tempfile.gettempdir()).glob("segbalance-report-*"))  # another process's (a killed run's)
    made, mkdtemp = [], tempfile.mkdtemp

    def recorded_mkdtemp(**kwargs):
        made.append(mkdtemp(**kwargs))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", recorded_mkdtemp)
    far = run({key: f"{remote}/{key}" for key in types}, f"{remote}/out")
    assert len(made) == 1
    near = run(local_dirs, str(tmp_path / "out"))
    assert len(made) == 1  # a local run makes no staging folder (a killed one left an empty one behind: QA 77)
    assert f"DataReport: wrote {remote}/out/report.html" in capsys.readouterr().out
    inputs = re.compile(r'<p class="note">Inputs: .*?</p>')
    assert f"class_stats_dir: {remote}/class_stats" in inputs.search(far).group(0)  # the addresses, not copies
    assert inputs.sub("", far) == inputs.sub("", near)
    assert "rare_circle" in far and "no file matches" not in far and 'class="thumb"' in far
    assert set(Path(tempfile.gettempdir()).glob("segbalance-report-*")) <= before  # its copies are gone


# --------------------------------------------------------------------------- pictures
def thumbs(fragment):
    """[(alt, kind, pixels)] of the thumbnails in an HTML fragment."""
    from PIL import Image

    found = re.findall(r'<img class="thumb" alt="([^"]*)" width="\d+" height="\d+" '
                       r'src="data:image/(png|jpeg);base64,([^"]+)"', fragment)
    return [(html.unescape(alt), kind, np.asarray(Image.open(io.BytesIO(base64.b64decode(data)))))
            for alt, kind, data in found]


def voc_colour(c):
    """The PASCAL VOC colour of class c (bit-interleaved), written out independently of imgviz."""
    r = g = b = 0
    for j in range(8):
        r |= ((c >> 0) & 1) << (7 - j)
        g |= ((c >> 1) & 1) << (7 - j)
        b |= ((c >> 2) & 1) << (7 - j)
        c >>= 3
    return np.array([r, g, b])


def section(text, anchor):
    return text.split(f'<h2 id="{anchor}">')[1].split("<h2")[0]


def test_class_examples_show_images_with_the_class_rarest_first(report):
    _, _, stats, text = report
    _, pairs = shape_records()
    examples = section(text, "examples")
    order = sorted(range(4), key=lambda c: (stats["pixel_counts"][c], c))
    headings = [html.unescape(h) for h in re.findall(r"<h3>(.*?)</h3>", examples)]
    assert [h.rsplit(":", 2)[0] for h in headings] == [NAMES[c] for c in order]
    strips = examples.split("<h3>")[1:]
    for c, strip in zip(order, strips):
        with_class = [sid for sid, (_, mask, _) in pairs.items() if (mask == c).any()]
        shown = [alt[: -len(" with its mask")] for alt, _, _ in thumbs(strip)]
        assert len(shown) == min(8, len(with_class)) and set(shown) <= set(with_class), NAMES[c]
        # every image shown holds the class: its share is never printed as nothing (QA 68: "0.0%")
        assert "(0.0%)" not in strip and len(re.findall(r"\((?:<|&lt;)?[0-9.]+%\)", strip)) >= len(shown)
    # a thumbnail is the image with the mask at alpha 0.5 in the VOC colours (ignore: the image)
    alt, kind, pixels = thumbs(strips[-1])[0]
    image, mask, _ = pairs[alt[: -len(" with its mask")]]
    expected = image.astype(float)
    for c in range(4):
        expected[mask == c] = 0.5 * image[mask == c] + 0.5 * voc_colour(c)
    assert kind == "jpeg" and pixels.shape == image.shape
    error = np.abs(pixels.astype(float) - expected).mean()  # JPEG (quality 80) of a noisy 40 px image
    assert error < 10 and error < np.abs(pixels.astype(float) - image).mean() / 3  # far closer than no overlay


def test_a_share_never_rounds_a_part_to_nothing_or_to_the_whole():
    from segbalance.pipeline.report_html import share

    assert [share(10, 45901), share(45891, 45901), share(0, 5), share(5, 5), share(1, 3), share(0, 0)] == [
        "<0.1%", ">99.9%", "0.0%", "100.0%", "33.3%", "0.0%"]
    assert [share(1, 2000), share(1999, 2000), share(1, 2001), share(1998, 2000)] == [
        "0.1%", ">99.9%", "<0.1%", "99.9%"]


def test_gap_cases_and_quarantine_thumbnails(report):
    tmp, _, _, text = report
    per_image = json.loads((tmp / "evaluation" / "per_image.json").read_text())
    predicted = {g["source_id"] for g in per_image["gap_predictions"]}
    gaps = section(text, "gaps")
    cases = gaps.split('<div class="case">')[1:]
    rows = re.findall(r'<tr><td class="l">([^<]+)</td>', gaps)
    assert len(cases) == len(rows) and predicted
    for row, case in zip(rows, cases):
        sid = html.unescape(row)
        alts = [alt for alt, _, _ in thumbs(case)]
        assert alts[:2] == [f"image {sid}", f"annotated mask of {sid}"]
        assert (f"prediction for {sid}" in alts) == (sid in predicted)
        caption = html.unescape(re.search(r"<p>(.*?)</p>", case).group(1))
        assert caption.startswith(f"{sid}: missing ") and NAMES[3] in caption
    quarantine = section(text, "quarantine")
    rows = dict(re.findall(r'<tr><td class="l">([^<]+)</td>.*?<td>(.*?)</td></tr>', quarantine))
    assert sorted(rows) == ["bad_ids", "bad_labeled", "corrupt", "no_mask"]
    assert [alt for alt, _, _ in thumbs(rows["bad_ids"])] == ["bad_ids with its mask"]
    assert [alt for alt, _, _ in thumbs(rows["bad_labeled"])] == ["bad_labeled with its mask"]
    assert "does not decode: cannot decode image" in rows["corrupt"] and "does not decode" in rows["no_mask"]


def test_worst_images_with_reference_prediction_and_error_map(report):
    tmp, _, _, text = report
    _, pairs = shape_records()
    order = sorted(pairs)
    evaluation = section(text, "evaluation")
    cases = evaluation.split('<div class="case">')[1:]
    per_image = json.loads((tmp / "evaluation" / "per_image.json").read_text())
    assert [w["source_id"] for w in per_image["worst"]] == [
        html.unescape(re.search(r"<p>(.*?): mIoU", c).group(1)) for c in cases]
    for case in cases:
        (alt_image, _, _), (alt_truth, _, truth), (_, _, prediction), (alt, kind, error) = thumbs(case)
        sid = alt[len("error map of "):]
        scored = "reference mask" if sorted(pairs).index(sid) % 2 == 0 else "annotated mask"  # report_inputs
        assert alt_truth == f"{scored} of {sid}" and f"<figcaption>{scored}</figcaption>" in case
        _, mask, _ = pairs[sid]
        i = order.index(sid)
        expected_prediction = np.where((mask == 1) & (i % 2 == 0), 1, 0)  # tests/report_inputs.py's model
        wrong = (mask != expected_prediction) & (mask != 255)
        assert kind == "png" and alt_image == f"image {sid}"
        np.testing.assert_array_equal(error[wrong], np.tile([220, 20, 60], (wrong.sum(), 1)))
        np.testing.assert_array_equal(error[mask == 255], 255)
        np.testing.assert_array_equal(error[~wrong & (mask != 255)], 200)
        np.testing.assert_array_equal(truth[mask == 1], np.tile(voc_colour(1), ((mask == 1).sum(), 1)))


def test_training_curves_and_spans(report):
    _, sources, _, text = report
    training = section(text, "training")
    rows = [cells(r) for r in re.findall(r"<tr><td[^>]*>.*?</tr>", training)]
    assert rows == [[str(e + 1)] + [f"{HISTORY[k][e]:.4g}" for k in ("loss", "val_loss", "miou", "val_miou")]
                    for e in range(3)]
    spans = section(text, "spans")
    rows = [cells(r) for r in re.findall(r"<tr><td[^>]*>.*?</tr>", spans)]
    assert [r[:3] for r in rows] == [["1", "10", "ok (action block)"], ["2", "11", "ok (action block)"],
                                     ["3", "12", "blocked (action block)"]]
    for span, row in zip(sources.spans, rows):
        counts = json.loads((Path(span.class_stats_dir) / "class_stats.json").read_text())["pixel_counts"]
        assert row[3:] == [fmt(n / sum(counts)) for n in counts]
    assert "drift blocked span 3" in text
    one = ReportSources(**{**sources.__dict__, "spans": sources.spans[:1]})
    assert pictures.spans_section(one.spans, NAMES) is None  # one span: no section
    # QA 92 L4: the run after a class was added left out every earlier span, and with them the section, unsaid
    tmp = Path(sources.spans[-1].class_stats_dir).parent / "added_class"
    tmp.mkdir(exist_ok=True)
    stats = json.loads((Path(sources.spans[-1].class_stats_dir) / "class_stats.json").read_text())
    (tmp / "class_stats.json").write_text(json.dumps({**stats, "pixel_counts": stats["pixel_counts"] + [5]}))
    latest = dataclasses.replace(sources.spans[-1], class_stats_dir=str(tmp))
    added = pictures.spans_section([*sources.spans[:-1], latest], NAMES + ["added"])
    assert added.summary.startswith("1 of 3 spans, ") and "drift blocked span 3" in added.summary
    assert "<img" not in added.body and added.body.count("<table") == 1  # one span: its row, no chart
    for span in sources.spans[:-1]:
        assert f"span {span.span}: {len(NAMES)} classes in " in html.unescape(added.body)


def test_metacharacters_render_as_text_everywhere(report):
    _, _, _, text = report
    for raw in (NAMES[1], NAMES[3], ODD_ID):
        assert raw not in text and html.escape(raw) in text
    assert "<i>" not in text and "<b>&" not in text
    # matplotlib draws the names as text: a malformed TeX name is no longer a mathtext ParseException
    from matplotlib.text import Text

    for name in NAMES + ["$\\frac$", "$x$ and $y$", "100$"]:
        shown, is_math = Text(0, 0, report_charts.plain(name))._preprocess_math(report_charts.plain(name))
        assert (shown, is_math) == (name, False), name  # printed literally, never parsed as TeX
    for names in (["$\\frac$", "a_b^c"], ["$x", "$\\frac{a}{b}$"]):
        assert report_charts.iou_bars(names, [0.1, 0.2]).startswith("<img")
        assert report_charts.heatmap([[1, 2], [3, 4]], names, "t", "r", "c").startswith("<img")


def _png_size(img_tag: str):
    import base64
    import io

    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(img_tag.split("base64,")[1].split('"')[0]))).size


def test_names_the_chart_font_cannot_draw_are_shown_as_class_ids(recwarn):
    """QA 73: CJK and emoji names were rows of empty boxes in every chart (人, 車 and 犬 alike), with a matplotlib
    warning per missing glyph on the console."""
    from matplotlib import font_manager, ft2font

    font = ft2font.FT2Font(font_manager.findfont(font_manager.FontProperties()))  # the chart font, read directly
    assert font.get_char_index(ord("車")) == 0 and font.get_char_index(ord("ß")) > 0  # (this venv's DejaVu Sans)
    assert report_charts.short_labels(["背景", "Straße", "車 🚗", "bell\x07", "a b"]) == \
        ["class 0", "Straße", "class 2", "class 3", "a b"]
    report_charts.weight_bars(["背景", "人", "車"], {"uniform": [1.0, 1.0, 1.0]})
    assert not [w for w in recwarn if "missing from font" in str(w.message)]


def test_long_class_names_are_shortened_in_charts_not_in_tables():
    """A 400-character class name made a 2,831 x 1,856 pixel IoU chart, mostly its tick label."""
    long_names = ["background", "ontology/vehicle/car/sedan/four-door/" + "red" * 30, "x" * 400]
    shown = report_charts.short_labels(long_names)
    assert shown[0] == "background" and all(len(s) <= report_charts.LABEL_LIMIT for s in shown)
    assert shown[1].startswith("ontology/v") and shown[1].endswith("redred") and "\u2026" in shown[1]
    # names that would read the same get their class id; a '$' stays literal
    assert report_charts.short_labels(["a" * 30 + "1", "a" * 30 + "1", "b$"]) == \
        ["0: " + "a" * 11 + "\u2026" + "a" * 11 + "1", "1: " + "a" * 11 + "\u2026" + "a" * 11 + "1", r"2: b\$"]
    short_size = _png_size(report_charts.iou_bars(["bg", "a", "b"], [0.5, 0.2, 0.1]))
    for chart in (report_charts.iou_bars(long_names, [0.5, 0.2, None]),
                  report_charts.heatmap([[1, 2, 3]] * 3, long_names, "t", "r", "c"),
                  report_charts.span_lines([0, 1], long_names, [[.5, .3, .2], [.4, .4, .2]],
                                           [(0, 0, 0), (255, 0, 0), (0, 255, 0)], [False, True])):
        width, height = _png_size(chart)
        assert width < 2 * short_size[0] and height < 2 * short_size[1], (width, height, short_size)


def test_an_absent_class_has_no_iou_bar_but_n_a(monkeypatch):
    """None (a class neither labelled nor predicted) was drawn as a bar of IoU 0, a failed class."""
    monkeypatch.setattr(report_charts, "to_img", lambda fig, alt: fig)
    fig = report_charts.iou_bars(["bg", "absent", "poor"], [0.9, None, 0.0])
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights[0] == 0.9 and np.isnan(heights[1]) and heights[2] == 0.0
    assert [(t.get_text(), t.get_position()[0]) for t in ax.texts] == [("n/a", 1)]


def test_report_output_that_is_a_folder_is_one_line_exit_2(report, tmp_path, capsys):
    tmp, _, _, _ = report
    assert cli.main(["report", str(tmp / "stats"), "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a folder" in err and "report.html" in err and "Traceback" not in err
    (tmp_path / "file").write_text("x")
    assert cli.main(["report", str(tmp / "stats"), "--output", str(tmp_path / "file" / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("segbalance report: error:")


def test_span_history_from_ml_metadata_lineage(tmp_path):
    """ClassStats <- ClassStatsGen execution <- Examples(span); the drift decision whose drift.json names them."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    from segbalance.pipeline.report_sources import SpanStats, span_history_from_metadata

    store = _store(tmp_path / "metadata.sqlite")
    gen_type = store.put_execution_type(pb.ExecutionType(name="ClassStatsGen"))
    gate_type = store.put_execution_type(pb.ExecutionType(name="ClassDistributionValidator"))
    examples_type = store.put_artifact_type(pb.ArtifactType(name="Examples", properties={"span": pb.INT}))
    stats_type = store.put_artifact_type(pb.ArtifactType(name="segbalance.ClassStats"))
    drift_type = store.put_artifact_type(pb.ArtifactType(name="segbalance.DriftReport"))

    def event(kind):
        return pb.Event(type=kind)

    def class_stats(span, name):
        examples = pb.Artifact(type_id=examples_type, uri=str(tmp_path / f"ex{name}"), state=pb.Artifact.LIVE)
        examples.properties["span"].int_value = span
        folder = tmp_path / name
        folder.mkdir()
        (folder / "class_stats.json").write_text("{}")
        stats = pb.Artifact(type_id=stats_type, uri=str(folder), state=pb.Artifact.LIVE)
        store.put_execution(pb.Execution(type_id=gen_type), [(examples, event(pb.Event.INPUT)),
                                                             (stats, event(pb.Event.OUTPUT))], [])
        return str(folder)

    def drift(current, status, name):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "drift.json").write_text(json.dumps({"current": current, "status": status, "action": "block"}))
        report = pb.Artifact(type_id=drift_type, uri=str(folder), state=pb.Artifact.LIVE)
        store.put_execution(pb.Execution(type_id=gate_type), [(report, event(pb.Event.OUTPUT))], [])

    first = class_stats(1, "s1")
    drift(first, "ok", "d1")
    old_two = class_stats(2, "s2_old")  # span 2 computed twice: the newer statistics count
    drift(old_two, "blocked", "d2_old")
    two = class_stats(2, "s2")
    drift(two, "warn", "d2a")
    drift(two, "blocked", "d2b")  # newer decision on the same statistics wins
    three = class_stats(3, "s3")  # no drift gate ran
    del store
    assert span_history_from_metadata(str(tmp_path / "metadata.sqlite")) == [
        SpanStats(1, first, "ok", "block"), SpanStats(2, two, "blocked", "block"), SpanStats(3, three, None, None)]


def test_record_reader_matches_tensorflow_and_names_a_truncated_file(tmp_path):
    import hashlib

    import tensorflow as tf

    from segbalance.pipeline import report_images

    records = [b"first", b"", b"x" * 70000]
    for name, options in (("plain.tfrecord", None), ("zipped.gz", "GZIP")):
        with tf.io.TFRecordWriter(str(tmp_path / name), options=options) as writer:
            for r in records:
                writer.write(r)
        assert list(report_images.iter_tfrecords(str(tmp_path / name))) == records
    data = (tmp_path / "plain.tfrecord").read_bytes()
    (tmp_path / "cut.tfrecord").write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"cut.tfrecord: truncated in record 3"):  # the third, counted from 1
        list(report_images.iter_tfrecords(str(tmp_path / "cut.tfrecord")))
    # load_records: by source_id, by ClassStats' sha1 name for a record without one, problems named
    from segbalance.trainer import example_codec as codec

    anonymous = codec.build_example(b"img", b"mask", "", 1, 1).SerializeToString()
    named = codec.build_example(b"a", b"b", "n1", 1, 1).SerializeToString()
    with tf.io.TFRecordWriter(str(tmp_path / "ex.tfrecord")) as writer:
        for r in (named, b"not an example", anonymous):
            writer.write(r)
    sha = f"sha1:{hashlib.sha1(anonymous).hexdigest()[:16]}"
    found, problems = report_images.load_records([str(tmp_path / "ex.tfrecord"), str(tmp_path / "cut.tfrecord")],
                                                 {"n1", sha, "absent"})
    assert found == {"n1": (b"a", b"b"), sha: (b"img", b"mask")}
    assert problems == [f"{tmp_path / 'cut.tfrecord'}: truncated in record 3"]
    found, problems = report_images.load_records([str(tmp_path / "moved" / "*")], {"n1"})
    assert found == {} and "no file matches" in problems[0]
    # the sample is fixed by the seed, not by the order of the ids
    ids = [f"i{k}" for k in range(50)]
    assert report_images.sample(ids, 8, 3) == report_images.sample(ids[::-1], 8, 3)
    assert len(set(report_images.sample(ids, 8, 3))) == 8 and report_images.sample(ids[:5], 8, 3) == ids[:5]


def test_thumbnails_are_downscaled_and_keep_class_ids():
    from segbalance.pipeline import report_images

    rng = np.random.default_rng(0)
    mask = np.kron(rng.integers(0, 3, size=(6, 4)), np.ones((50, 50), int)).astype(np.uint8)  # 300 x 200 blocks
    mask[:50, :50] = 255  # an ignored block
    image = rng.integers(0, 256, size=(300, 200, 3)).astype(np.uint8)
    shown = report_images.colour_mask(mask, 3)
    assert shown.shape == (128, 85, 3)  # longest side 128
    expected = np.array([*(voc_colour(c) for c in range(3)), [255, 255, 255]])  # ignore: white
    blocks = np.where(mask == 255, 3, mask)[25::50, 25::50]  # block centres
    centres = shown[(np.arange(6) * 50 + 25) * 128 // 300][:, (np.arange(4) * 50 + 25) * 85 // 200]
    np.testing.assert_array_equal(centres, expected[blocks])
    assert report_images.overlay(image, mask, 3).shape == (128, 85, 3)
    # a mask of another size than its image: drawn over the image resized to the mask
    assert report_images.overlay(image[:150, :100], mask, 3).shape == (128, 85, 3)
    err = report_images.error_map(np.array([[0, 1], [255, 2]]), np.array([[0, 2], [1, 2]]), 3)
    np.testing.assert_array_equal(err, [[[200] * 3, [220, 20, 60]], [[255] * 3, [200] * 3]])


def test_record_reader_names_a_corrupt_record(tmp_path):
    """The report's thumbnails read records with the ClassStats reader's checksums: a flipped
    byte is a problem naming the file, not a garbled picture."""
    import tensorflow as tf

    from segbalance.pipeline import report_images

    path = tmp_path / "flip.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(b"abcdefgh")
    data = bytearray(path.read_bytes())
    data[12] ^= 0xFF  # first data byte
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"flip.tfrecord: corrupt: data checksum of record 1 "):
        list(report_images.iter_tfrecords(str(path)))


def test_a_quarantined_eval_record_is_shown_from_the_eval_files(tmp_path):
    """The report looked for quarantined records in the counted (train) split's files only: an eval
    record's row said "record not found in the input files" although it is there."""
    from segbalance.components import class_stats_beam as csb
    from tests.report_inputs import write_tfrecord

    records, _ = shape_records()
    bad = [r for r in records if b"bad_ids" in r]
    write_tfrecord(tmp_path / "train.tfrecord", [r for r in records if r not in bad])
    write_tfrecord(tmp_path / "eval.tfrecord", bad)
    csb.run_class_stats({"train": str(tmp_path / "train.tfrecord"), "eval": str(tmp_path / "eval.tfrecord")},
                        str(tmp_path / "stats"), csb.StatsOptions(num_classes=4, class_names=NAMES),
                        count_splits=["train"])
    page = tmp_path / "report.html"
    render_report(ReportSources(class_stats_dir=str(tmp_path / "stats")), str(page))
    rows = dict(re.findall(r'<tr><td class="l">([^<]+)</td>.*?<td>(.*?)</td></tr>', section(page.read_text(),
                                                                                          "quarantine")))
    assert "record not found" not in rows["bad_ids"]
    assert [alt for alt, _, _ in thumbs(rows["bad_ids"])] == ["bad_ids with its mask"]


def test_image_pairs_ingest_skipped_are_in_the_report_and_the_summary(tmp_path, capsys):
    """Pairs dropped at ingest went to the log and ingest_report.json only: the report said "No record
    was quarantined" and the run summary said nothing, also on a re-run."""
    from segbalance.pipeline import sample_data
    from segbalance.pipeline.run import print_summary

    raw = sample_data.write_sample_data("shapes", tmp_path / "raw", num_images=6, size=16, seed=1)
    (raw / "masks" / "shapes_00001.png").unlink()  # an image without its mask
    (raw / "images" / "shapes_00002.png").write_bytes(b"not an image")
    assert cli.main(["ingest", str(raw / "images"), str(raw / "masks"), "--output", str(tmp_path / "spans"),
                     "--span", "4"]) == 0
    ingest_report = tmp_path / "spans" / "Span-4" / "ingest_report.json"
    from tests.report_inputs import write_report_inputs

    (tmp_path / "inputs").mkdir()
    sources = write_report_inputs(tmp_path / "inputs")
    sources.ingest_reports = [str(ingest_report)]
    page = tmp_path / "report.html"
    render_report(sources, str(page))
    text = section(page.read_text(), "ingest")
    assert "2 image pairs were not ingested" in text and "4 were" in text
    rows = re.findall(r'<tr><td class="l">(Span-4)</td><td class="l">([^<]+)</td><td class="l">([^<]+)</td>', text)
    assert sorted((file, code) for _, file, code in rows) == [("shapes_00001.png", "no_mask"),
                                                              ("shapes_00002.png", "undecodable")]
    assert "2 image pairs not ingested" in page.read_text().split('<h2 id="summary">')[1].split("</ul>")[0]
    assert "Records were added to" not in text
    # a file of records added to the span after ingest (QA 25: "16 records" for a span of 19): said, and the
    # run summary's count (current_ingest_report) is dropped rather than wrong
    from segbalance.pipeline.ingest_reports import current_ingest_report

    assert current_ingest_report(ingest_report.parent)["num_written"] == 4
    time.sleep(0.01)
    (ingest_report.parent / "data-extra.tfrecord").write_bytes(b"")
    assert current_ingest_report(ingest_report.parent) is None
    render_report(sources, str(page))
    assert (f"Records were added to or changed in {ingest_report.parent} after ingest wrote its report: the counts "
            f"here are ingest's, not the span's.") in section(page.read_text(), "ingest")
    summary = {"seconds": 1, "output_dir": "o", "metadata": "m", "log": "l",
               "data": {"spans": [4], "span_folders": {"4": str(ingest_report.parent)}, "records": {"4": 4},
                        "not_ingested": {"4": {"pairs": 2, "report": str(ingest_report)}}}}
    capsys.readouterr()
    print_summary(summary)
    assert f"  not ingested:     2 image pair(s) of span 4 (each with its reason: {ingest_report})" in \
        capsys.readouterr().out


def _ingest_section(tmp_path, report_path):
    """(page, its Ingest section's HTML) of a report whose run read the span of ``report_path``."""
    (tmp_path / "inputs").mkdir()
    sources = write_report_inputs(tmp_path / "inputs")
    sources.ingest_reports = [report_path]
    page = tmp_path / "report.html"
    render_report(sources, str(page))
    return page, section(page.read_text(), "ingest")


def test_labelled_set_keys_of_no_image_are_in_the_report_and_every_run_summary(tmp_path, capsys):
    """QA 68: labeled.json keys that name no image (their labelled sets unused) were one console warning
    at ingest; a cached re-run, run_summary.json and the report never said so again."""
    from segbalance.pipeline import sample_data
    from segbalance.pipeline.run import print_summary
    from segbalance.pipeline.run_summary import span_ingest_facts

    raw = sample_data.write_sample_data("shapes", tmp_path / "raw", num_images=3, size=16, seed=1)
    (tmp_path / "labeled.json").write_text(json.dumps({"shapes_00000": [0, 1], "shapes_00001.png": [0],
                                                       "ghost": [0]}))
    assert cli.main(["ingest", str(raw / "images"), str(raw / "masks"), "--output", str(tmp_path / "spans"),
                     "--span", "2", "--labeled", str(tmp_path / "labeled.json")]) == 0
    span = tmp_path / "spans" / "Span-2"
    report_path = str(span / "ingest_report.json")
    facts = span_ingest_facts(str(span))
    assert facts == {"records": 3, "unmatched_keys": {"labeled": 2, "groups": 0, "report": report_path}}
    page, text = _ingest_section(tmp_path, report_path)
    assert "Every image pair was ingested (3 records" in text
    assert ('<p class="bad">2 labelled-set keys name no image, so they are not used (keys are image file stems; '
            "listed in the reports' labeled_unmatched / groups_unmatched).</p>") in text
    assert "2 labelled-set keys unmatched" in page.read_text().split('<h2 id="summary">')[1].split("</ul>")[0]
    summary = {"seconds": 1, "output_dir": "o", "metadata": "m", "log": "l",
               "data": {"spans": [2], "span_folders": {"2": str(span)}, "records": {"2": 3}, "not_ingested": {},
                        "unmatched_keys": {"2": facts["unmatched_keys"]}}}
    capsys.readouterr()
    print_summary(summary)
    assert (f"  unmatched keys:   2 labelled-set keys of span 2 name no image, so they are not used (keys are image "
            f"file stems; listed in {report_path})") in capsys.readouterr().out
    assert span_ingest_facts(str(tmp_path / "nothing")) == {}


def test_files_ingest_did_not_read_are_counted_by_the_run_summary_and_the_report(tmp_path, capsys):
    """QA 89 L1: notes.txt and Thumbs.db in the data folders were said by `segbalance ingest` only; `run --data`'s
    console and the report counted the bad pairs, so the inputs did not add up (32 + 8 of 42)."""
    from segbalance.pipeline import sample_data
    from segbalance.pipeline.run import print_summary
    from segbalance.pipeline.run_summary import span_ingest_facts

    raw = sample_data.write_sample_data("shapes", tmp_path / "raw", num_images=3, size=16, seed=1)
    (raw / "images" / "notes.txt").write_text("delivered 2026-12-01")
    (raw / "masks" / "Thumbs.db").write_bytes(b"\0" * 8)
    assert cli.main(["ingest", str(raw / "images"), str(raw / "masks"), "--output", str(tmp_path / "spans"),
                     "--span", "0"]) == 0
    span = tmp_path / "spans" / "Span-0"
    report_path = str(span / "ingest_report.json")
    facts = span_ingest_facts(str(span))
    assert facts == {"records": 3, "files_not_read": {"files": 2, "report": report_path}}
    summary = {"seconds": 1, "output_dir": "o", "metadata": "m", "log": "l",
               "data": {"spans": [0], "span_folders": {"0": str(span)}, "records": {"0": 3},
                        "files_not_read": {"0": facts["files_not_read"]}}}
    capsys.readouterr()
    print_summary(summary)
    assert (f"  not read:         2 file(s) in the data folders of span 0, not images or masks ingest reads (listed "
            f"in {report_path} skipped_files)") in capsys.readouterr().out
    _, text = _ingest_section(tmp_path, report_path)
    assert "Every image pair was ingested (3 records" in text
    assert ("2 files in the data folders were not read: not images or masks ingest reads (another suffix, a "
            "sub-folder, no stem ending; ") in text and "notes.txt" in text and "Thumbs.db" in text


def test_the_drift_section_shows_vanished_classes_with_their_chance(tmp_path):
    from segbalance.pipeline.report import drift_section

    (tmp_path / "drift.json").write_text(json.dumps({
        "status": "blocked", "action": "block", "js_divergence": 0.01, "max_abs_change": 0.02,
        "missing_rate_change": 0.0, "vanished_classes": {"rare <b>": 0.0001048576, "bus": 0.5},
        "vanished_class_chance": 0.0001048576, "new_classes": [],
        "anomalies": ["classes present before have no pixels now: rare <b> (chance 0.0001 if unchanged)"],
        "thresholds": {"js_divergence": 0.05, "max_abs_change": 0.1, "missing_rate_change": 0.2,
                       "vanished_class_chance": 0.01}}))
    body = drift_section(str(tmp_path)).body
    assert "vanished_class_chance (lowest; anomaly below)" in body and "0.0001" in body
    assert "rare &lt;b&gt; (0.0001" in body and "bus (0.5" in body and "rare <b>" not in body


def test_the_drift_section_shows_new_class_chances_and_groups(tmp_path):
    """Decisions from session 26: new classes with their chance, the lowest in the table, and a bootstrap
    that drew whole groups says so."""
    from segbalance.pipeline.report import drift_section

    (tmp_path / "drift.json").write_text(json.dumps({
        "status": "ok", "action": "block", "js_divergence": 0.01, "max_abs_change": 0.02, "missing_rate_change": 0.0,
        "new_classes": ["rare <b>", "bus"], "new_class_chances": {"rare <b>": 0.1, "bus": 0.0415},
        "presence_unit": "groups", "anomalies": [],
        "thresholds": {"js_divergence": 0.05, "max_abs_change": 0.1, "missing_rate_change": 0.2,
                       "vanished_class_chance": 0.01, "new_class_chance": 0.01},
        "sampling": {"js_divergence": 0.2, "max_abs_change": 0.3, "missing_rate_change": 0.4, "significance": 0.005,
                     "new_images": 10, "accepted_images": 50, "n_eff": 2, "draws": 2000, "groups": 10,
                     "new_groups": 2}}))
    body = drift_section(str(tmp_path)).body
    assert re.search(r"new_class_chance \(lowest; anomaly below\)</td><td[^>]*>0.0415</td><td[^>]*>0.01<", body), body
    assert "New classes (chance if unchanged): rare &lt;b&gt; (0.1), bus (0.0415)" in body
    assert "(2000 bootstrap draws); whole groups drawn: the new images come from 2 groups, the accepted ones from 10." \
        in body


def test_the_drift_section_shows_what_sampling_alone_gives(tmp_path):
    from segbalance.pipeline.report import drift_section

    drift = {"status": "ok", "action": "block", "js_divergence": 0.031, "max_abs_change": 0.07,
             "missing_rate_change": 0.1, "new_classes": [], "anomalies": [],
             "thresholds": {"js_divergence": 0.01, "max_abs_change": 0.03, "missing_rate_change": 0.05,
                            "vanished_class_chance": 0.01},
             "sampling": {"js_divergence": 0.2071, "max_abs_change": 0.3833, "missing_rate_change": 0.4,
                          "significance": 0.005, "new_images": 10, "accepted_images": 200, "n_eff": 10,
                          "draws": 2000}}
    (tmp_path / "drift.json").write_text(json.dumps(drift))
    body = drift_section(str(tmp_path)).body
    assert "sampling alone (chance 0.005, 10 new images)" in body
    rows = re.findall(r"<tr><td[^>]*>(js_divergence|max_abs_change)</td>(.*?)</tr>", body)
    assert [name for name, _ in rows] == ["js_divergence", "max_abs_change"]
    assert "0.2071" in rows[0][1] and "0.3833" in rows[1][1]
    assert "10 images drawn from the 200 accepted ones exceed with chance 0.005 (2000 bootstrap draws)." in body
    # session 27: limits from a few units are widened, and the page says by how much and why
    drift["sampling"].update(small_sample_factor=1.25, groups=12, new_groups=2)
    (tmp_path / "drift.json").write_text(json.dumps(drift))
    body = drift_section(str(tmp_path)).body
    assert ("the new images come from 2 groups, the accepted ones from 12; widened 1.25x (the JS divergence "
            "1.56x) because only 12 accepted groups show how much they differ.") in body
    drift["sampling"].update(small_sample_factor=1.004)  # many units: nothing worth saying
    (tmp_path / "drift.json").write_text(json.dumps(drift))
    assert "widened" not in drift_section(str(tmp_path)).body
    del drift["sampling"]  # a decision from before session 19: three columns, no sentence
    (tmp_path / "drift.json").write_text(json.dumps(drift))
    assert "sampling alone" not in drift_section(str(tmp_path)).body


def test_the_rarest_class_of_the_summary_has_pixels(report):
    """QA 89 L5: a class with no pixel (listed apart) was called the rarest."""
    from segbalance.pipeline.report import classes_sections

    _, _, stats, _ = report
    names = stats["class_names"]
    counts = [0, 50, 7, 30][:len(names)] + [40] * max(0, len(names) - 4)
    zero = [c for c, n in enumerate(counts) if n == 0]
    shown = {**stats, "pixel_counts": counts, "zero_count_classes": zero}
    summary = classes_sections(shown)[0].summary
    assert summary.startswith(f"{len(names)} classes, rarest {html.escape(names[2])}; "), summary
    nothing = {**stats, "pixel_counts": [0] * len(names), "zero_count_classes": list(range(len(names)))}
    assert "rarest" not in classes_sections(nothing)[0].summary


def test_eval_images_gaps_are_shown_with_the_models_prediction(tmp_path):
    """QA 96 M1: in a pipeline run SegEvaluator predicts eval images only, and the gaps section read the counted
    (train) split's rows only: no gap case ever had the model's prediction, and the count left eval out."""
    from segbalance.components import class_stats_beam as csb
    from segbalance.trainer.class_stats_io import read_every_per_image
    from tests.report_inputs import write_per_image_eval
    from tests.test_class_stats_beam import write_tfrecord

    records, pairs = shape_records(n=12)
    ids = list(pairs)
    train, evaluation = records[:8], records[8:12]  # img8..img11 are eval (no quarantined record)
    write_tfrecord(tmp_path / "train.tfrecord", train)
    write_tfrecord(tmp_path / "eval.tfrecord", evaluation)
    csb.run_class_stats({"train": str(tmp_path / "train.tfrecord"), "eval": str(tmp_path / "eval.tfrecord")},
                        str(tmp_path / "stats"), csb.StatsOptions(num_classes=4, class_names=NAMES),
                        count_splits=["train"])
    (tmp_path / "evaluation").mkdir()
    per_image = write_per_image_eval(tmp_path / "evaluation", {sid: pairs[sid] for sid in ids[8:]})
    predicted = [g["source_id"] for g in per_image["gap_predictions"]]
    assert predicted and set(predicted) <= set(ids[8:])
    render_report(ReportSources(class_stats_dir=str(tmp_path / "stats"), evaluation_dir=str(tmp_path / "evaluation")),
                  str(tmp_path / "report.html"))
    text = (tmp_path / "report.html").read_text()
    gaps = section(text, "gaps")
    frame = read_every_per_image(str(tmp_path / "stats"))
    score = {r.source_id: len(r.missing) + len(r.suspect_missing) for r in frame.itertuples()}
    split = {r.source_id: r.split for r in frame.itertuples()}
    with_gaps = [sid for sid in score if score[sid] > 0]
    rows = [html.unescape(sid) for sid in re.findall(r'<tr><td class="l">([^<]+)</td>', gaps)]
    # the predicted eval images first, then the rest by most gaps
    most = lambda sid: (-score[sid], sid)  # noqa: E731
    assert rows == sorted(predicted, key=most) + sorted(set(with_gaps) - set(predicted), key=most)
    cases = gaps.split('<div class="case">')[1:]
    for sid, case in zip(rows, cases):
        assert (f"prediction for {sid}" in [alt for alt, _, _ in thumbs(case)]) == (sid in predicted), sid
    by_split = {s: sum(split[sid] == s for sid in with_gaps) for s in ("eval", "train")}
    assert by_split["eval"] and by_split["train"]
    counts = f"{len(with_gaps)} images have missing or suspect-missing classes ({by_split['eval']} of eval, " \
             f"{by_split['train']} of train); the {len(predicted)} the model predicted (evaluation), then the " \
             f"{len(rows) - len(predicted)} with the most"
    assert counts in gaps
    summary = section(text, "summary")
    assert f"{len(with_gaps)} images with missing or suspect-missing classes ({by_split['eval']} of eval" in summary
    assert re.findall(r'<tr><td class="l">[^<]+</td><td class="l">(\w+)</td>', gaps) == [split[s] for s in rows]


def test_predicted_gap_images_take_half_of_the_rows_at_most():
    """QA 98: SegEvaluator predicts up to 100 gap images, which filled all 25 rows: no training image was shown."""
    import pandas as pd

    from segbalance.pipeline.report import gap_rows

    rows = [{"source_id": f"e{i:02d}", "split": "eval", "missing": [1], "suspect_missing": []} for i in range(30)]
    rows += [{"source_id": f"t{i:02d}", "split": "train", "missing": [1, 2], "suspect_missing": [3]} for i in range(5)]
    predicted = [f"e{i:02d}" for i in range(29, -1, -1)]  # the evaluator's order
    every, shown = gap_rows(pd.DataFrame(rows), top=25, first=predicted)
    assert len(every) == 35
    assert list(shown["source_id"]) == sorted(predicted[:12]) + [f"t{i:02d}" for i in range(5)] + \
        sorted(set(predicted) - set(predicted[:12]))[:8]
