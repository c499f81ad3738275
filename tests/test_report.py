"""The offline HTML report (pipeline/report.py): content, escaping, optional and unreadable
sections, error messages, sources from a STATS_DIR and from a run's ML Metadata, the CLI and
the DataReport component's executor. The browser check is in test_report_browser.py."""
import html
import json
import re
import shutil

import pytest

from segbalance.pipeline import cli
from segbalance.pipeline.report import render_report
from segbalance.pipeline.report_sources import ReportSources, find_sources
from tests.report_inputs import ANOMALY, NAMES, write_report_inputs


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
                    "Class weights", "Co-occurrence", "Annotation gaps", "Quarantined records", "Evaluation",
                    "Class-distribution drift"):
        assert re.search(rf'<h2 id="\w+">{re.escape(heading)}</h2>', text), heading
    found = cells(text)
    classes = text.split('<h2 id="classes">')[1].split("<h2")[0]
    assert re.findall(r'<tr><td class="l">([^<]*)</td>', classes) == [html.escape(name) for name in NAMES]
    for count in stats["pixel_counts"] + stats["image_counts"]:
        assert str(count) in found
    for scheme, weights in stats["weights"].items():  # the weights table: one row per scheme, C weights
        row = re.search(rf'<tr><td class="l">{scheme}</td>(.*?)</tr>', text).group(1)
        assert cells(row) == [f"{w:.4g}" for w in weights], scheme
    assert stats["zero_count_classes"] == [3] and "Classes with no pixels: never" in text
    assert "ERROR" in found and "Out-of-range values" in found
    assert "bad_ids" in found and f"{stats['quarantined_records']} records quarantined" in text
    assert "mIoU <b>0.55</b>" in text and "not blessed" in text and "blocked" in text
    assert text.count("data:image/png;base64,") == 5  # frequencies, weights, co-occurrence, IoU, confusion
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
    expected = sorted((sid for sid, s in score.items() if s > 0), key=lambda sid: (-score[sid], sid))
    assert shown == expected and shown  # all of them: fewer than TOP_IMAGES
    assert f"{len(expected)} images have missing or suspect-missing classes" in gaps


def test_user_strings_are_escaped_and_nothing_loads_from_the_network(report):
    _, _, _, text = report
    assert "<script" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert ANOMALY not in text and html.escape(ANOMALY) in text
    assert re.findall(r"""(?:src|href)\s*=\s*["']?+(?!data:image/png;base64,|#)""", text) == []
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
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
    del store
    assert find_sources(str(run)) == ReportSources(
        class_stats_dir=str(tmp / "stats"), statistics_dir=str(tmp / "statistics"),
        anomalies_dir=str(tmp / "anomalies"), evaluation_dir=str(tmp / "evaluation"), drift_dir=str(tmp / "drift"))
    assert cli.main(["report", str(run), "--output", str(tmp_path / "run.html")]) == 0
    text = (tmp_path / "run.html").read_text()
    assert '<h2 id="evaluation">Evaluation</h2>' in text and "Out-of-range values" in text and "blocked" in text

    empty = tmp_path / "empty_run"
    empty.mkdir()
    store = _store(empty / "metadata.sqlite")
    _register(store, "ExampleStatistics", tmp / "statistics")
    del store
    with pytest.raises(FileNotFoundError, match="records no components.ClassStats artifact"):
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
    from segbalance.components.data_report import DataReport, DataReportExecutor

    tmp, sources, _, _ = report

    def artifact(cls, uri):
        a = cls()
        a.uri = str(uri)
        return a

    output = artifact(HtmlReport, tmp_path / "report_artifact")
    DataReportExecutor().Do({"statistics": [artifact(standard_artifacts.ExampleStatistics, sources.statistics_dir)],
                             "anomalies": [artifact(standard_artifacts.ExampleAnomalies, sources.anomalies_dir)],
                             "class_stats": [artifact(ClassStats, sources.class_stats_dir)]},
                            {"report": [output]}, {})
    text = (tmp_path / "report_artifact" / "report.html").read_text()
    out = capsys.readouterr().out
    assert "DataReport: rendering" in out and "with statistics, anomalies" in out
    assert f"DataReport: wrote {tmp_path / 'report_artifact' / 'report.html'}" in out
    assert "rare_circle" in text and "Out-of-range values" in text and "Evaluation</h2>" not in text

    component = DataReport(statistics=types.Channel(type=standard_artifacts.ExampleStatistics),
                           anomalies=types.Channel(type=standard_artifacts.ExampleAnomalies),
                           class_stats=types.Channel(type=ClassStats))
    assert component.outputs["report"].type_name == "segbalance.HtmlReport"
    with pytest.raises(TypeError):
        DataReport(statistics=types.Channel(type=ClassStats), anomalies=types.Channel(type=ClassStats),
                   class_stats=types.Channel(type=ClassStats))
