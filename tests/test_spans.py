"""Last-K span window (pipeline/spans.py), its config check, and the labelled-set join it relies on."""
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from segbalance.trainer import class_stats_io
from segbalance.pipeline.config import ConfigError, config_from_dict
from segbalance.pipeline.spans import list_spans, span_window


def _spans(root, files_per_span):
    for span, names in files_per_span.items():
        folder = root / f"Span-{span}"
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_bytes(f"{span}:{name}".encode())


def test_window_links_the_last_k_spans_under_the_latest_span(tmp_path):
    data = tmp_path / "data"
    _spans(data, {1: ["data-00000-of-00001.gz"], 2: ["data-00000-of-00002.gz", "data-00001-of-00002.gz"],
                  10: ["data-00000-of-00001.gz"], 3: ["notes.txt"]})  # Span-3 has no data-*: not a span
    assert list_spans(data) == [1, 2, 10]
    window = tmp_path / "window"
    assert span_window(data, 2, window) == [2, 10]  # numeric order, not "10" < "2"
    assert [p.name for p in window.iterdir()] == ["Span-10"]
    links = sorted((window / "Span-10").iterdir())
    assert [p.name for p in links] == ["data-span10-00000-of-00001.gz", "data-span2-00000-of-00002.gz",
                                       "data-span2-00001-of-00002.gz"]
    assert all(p.is_symlink() for p in links)
    assert links[1].read_bytes() == b"2:data-00000-of-00002.gz"
    # rebuilt on the next call (a new span arrives); K above the number of spans takes them all
    _spans(data, {11: ["data-00000-of-00001.gz"]})
    assert span_window(data, 5, window) == [1, 2, 10, 11]
    assert [p.name for p in window.iterdir()] == ["Span-11"]
    assert len(os.listdir(window / "Span-11")) == 5
    assert not (tmp_path / "window.tmp").exists() and not (tmp_path / "window.old").exists()


def test_window_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="segbalance ingest"):
        span_window(tmp_path / "empty", 2, tmp_path / "w")
    with pytest.raises(ValueError, match="num_spans"):
        span_window(tmp_path / "empty", 0, tmp_path / "w")
    with pytest.raises(ConfigError, match="data.num_spans"):
        config_from_dict({"data": {"num_spans": 0}})
    assert config_from_dict({"data": {"num_spans": 3}}).data.num_spans == 3


def _per_image(folder, rows):
    folder.mkdir()
    table = pa.table({"source_id": [r[0] for r in rows], "labeled": [r[1] for r in rows]})
    pq.write_table(table, str(folder / f"{class_stats_io.PER_IMAGE_PREFIX}-00000-of-00001.parquet"))
    return str(folder)


def test_join_refuses_one_source_id_with_two_labelled_sets(tmp_path):
    same = _per_image(tmp_path / "same", [("a", [0, 1]), ("b", [0]), ("a", [0, 1])])
    assert class_stats_io.labeled_by_source_id(same) == {"a": [0, 1], "b": [0]}
    clash = _per_image(tmp_path / "clash", [("a", [0, 1]), ("a", [0, 2])])
    with pytest.raises(ValueError, match="'a'.*unique file names"):
        class_stats_io.labeled_by_source_id(clash)
