"""What `segbalance run --data` trains on, what it refuses, and where library output goes.

Fast: no pipeline runs here (tests/test_pipeline_e2e.py and tests/test_retraining.py run the
DAG and check the same things through ML Metadata).
"""
import json
import re
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segbalance.pipeline import cli, sample_data
from segbalance.pipeline.config import config_from_dict
from segbalance.pipeline.dag import local_paths
from segbalance.pipeline.ingest_reports import current_ingest_report
from segbalance.pipeline.run import prepare_data
from segbalance.pipeline.run_log import ComponentProgress, LibraryLog, route_absl, unroute_absl
from segbalance.pipeline.spans import list_spans, next_span
from segbalance.trainer.example_codec import encode_png


def _raw(root: Path, seed: int, num_images: int, prefix: str = "") -> Path:
    out = sample_data.write_sample_data("shapes", root, num_images=num_images, size=16, seed=seed, drop_fraction=0.0)
    if prefix:
        for folder in ("images", "masks", "masks_full"):
            for path in (out / folder).glob("*.png"):
                path.rename(path.with_name(f"{prefix}{path.name}"))
        for keyed in (out / "labeled.json", out / "groups.json"):
            if keyed.is_file():
                keyed.write_text(json.dumps({f"{prefix}{k}": v for k, v in json.loads(keyed.read_text()).items()}))
    return out


def _written(span_dir: Path) -> list:
    return json.loads((span_dir / "ingest_report.json").read_text())["written"]


def _same_pngs(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.glob("*.png"))
    return names == sorted(p.name for p in b.glob("*.png")) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def test_the_complete_masks_stay_with_the_span_for_later_runs_over_the_span_folder(tmp_path, capsys):
    """QA 63: `run --data NEW` scored against NEW/masks_full, and the scheduled `run --data OUTPUT/data`
    that followed, over the same span, against the partial annotations: the same model was not
    blessed (mIoU 0.39 on complete masks), then blessed and pushed (0.57 on annotation masks). The
    span keeps copies of its records' complete masks; every later run over the span reads them, a
    span window links its spans' (a later span's copy wins); a reused span takes corrected ones."""
    out = tmp_path / "out"
    paths = local_paths(str(out))
    first = _raw(tmp_path / "first", seed=1, num_images=4, prefix="a_")
    second = _raw(tmp_path / "second", seed=2, num_images=3, prefix="b_")
    data = out / "data"
    for source in (first, second):
        prepare_data(config_from_dict({"data": {"dir": str(source)}, "output_dir": str(out)}), paths)
    assert list_spans(data) == [0, 1]
    assert _same_pngs(data / "Span-0" / "reference_masks", first / "masks_full")
    assert len(list((data / "Span-1" / "reference_masks").glob("*.png"))) == 3
    # the spans' ingest reports count them (QA 70: 0, since run copies them after ingest wrote its report)
    assert [json.loads((data / f"Span-{n}" / "ingest_report.json").read_text())["num_reference_masks"]
            for n in (0, 1)] == [4, 3]
    assert current_ingest_report(data / "Span-1")["num_reference_masks"] == 3  # still the span's current report
    capsys.readouterr()
    # the scheduled run: the span folder itself
    examples_dir, reference = prepare_data(config_from_dict({"data": {"dir": str(data)}, "output_dir": str(out)}),
                                           paths)
    assert examples_dir == str(data) and reference == str(data / "Span-1" / "reference_masks")
    assert f"reference masks: 3 in {reference}" in capsys.readouterr().out
    # a window of both spans: every eval image of the window has its reference
    window_config = config_from_dict({"data": {"dir": str(data), "num_spans": 2}, "output_dir": str(out)})
    examples_dir, reference = prepare_data(window_config, paths)
    linked = Path(reference)
    assert linked.parent.parent == out / "span_window"
    assert sorted(p.name for p in linked.iterdir()) == sorted(
        [p.name for p in (first / "masks_full").iterdir()] + [p.name for p in (second / "masks_full").iterdir()])
    assert all((linked / p.name).read_bytes() == p.read_bytes() for p in (first / "masks_full").iterdir())
    # a config's reference_masks_dir still wins
    mine = tmp_path / "mine"
    mine.mkdir()
    _, reference = prepare_data(config_from_dict({"data": {"dir": str(data), "reference_masks_dir": str(mine)},
                                                  "output_dir": str(out)}), paths)
    assert reference == str(mine)
    # corrected complete masks of unchanged data: the span is reused and takes them
    corrected = sorted((second / "masks_full").glob("*.png"))[0]
    corrected.write_bytes(encode_png(np.zeros((16, 16), np.uint8)))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (data / "Span-1" / f".reference_masks.tmp-{int(dead.stdout)}").mkdir()  # a killed sync's (QA 65)
    _, reference = prepare_data(config_from_dict({"data": {"dir": str(second)}, "output_dir": str(out)}), paths)
    assert list_spans(data) == [0, 1] and reference == str(data / "Span-1" / "reference_masks")
    assert _same_pngs(data / "Span-1" / "reference_masks", second / "masks_full")
    assert not [p for p in (data / "Span-1").iterdir() if p.name.startswith(".reference_masks")]


def test_next_span_is_one_above_every_span_folder(tmp_path):
    assert next_span(tmp_path / "missing") == 0 and list_spans(tmp_path / "missing") == []
    (tmp_path / "Span-2").mkdir()
    (tmp_path / "Span-2" / "data-00000-of-00001.tfrecord").write_bytes(b"")
    (tmp_path / "Span-7").mkdir()  # no data: not a span ExampleGen reads, but the number is taken
    (tmp_path / "Span-x").mkdir()
    assert list_spans(tmp_path) == [2] and next_span(tmp_path) == 8


def _tree(folder: Path) -> dict:
    """Every entry under ``folder``: a file's bytes, a link's target, a folder's name (what a run must not change)."""
    return {str(p.relative_to(folder)): (os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else "/")
            for p in sorted(folder.rglob("*"))}


def test_a_user_s_data_folder_named_data_in_the_output_folder_is_never_written_into(tmp_path, capsys):
    """QA 94 M1: `run --output-dir P` took a user's P/data (their images/ + masks/) for the spans folder and
    ingested the sample data into it (a file named data got the run's marker, logs and sample data before the
    refusal); QA 94 L5: P/data a link to the --data folder was refused only after P was written into."""
    from segbalance.pipeline.output_guard import INGEST_OLD_PREFIX, check_run_dir

    mine = tmp_path / "mine"
    _raw(mine / "data", seed=1, num_images=2)
    file_named_data = tmp_path / "file"
    file_named_data.mkdir()
    (file_named_data / "data").write_text("my data\n")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "data").symlink_to(mine / "data")
    before = {folder: _tree(folder) for folder in (mine, file_named_data, linked)}
    cases = [(["--output-dir", str(mine)], "groups.json, images (+3 more), which are not spans segbalance ingest "
                                           "wrote"),  # (sample data: no --data)
             (["--output-dir", str(file_named_data)], f"{file_named_data} holds a file named data"),
             (["--output-dir", str(linked), "--data", str(mine / "data")], f"lies in {linked / 'data'}")]
    for argv, line in cases:
        assert cli.main(["run", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and line in err and "nothing was written" in err, err
    assert {folder: _tree(folder) for folder in before} == before
    # what ingest writes there before a first run (ingest --output OUT/data --span N) is a new run folder's
    out = tmp_path / "out"
    assert cli.main(["ingest", str(mine / "data" / "images"), str(mine / "data" / "masks"), "--output",
                     str(out / "data"), "--span", "2"]) == 0
    (out / "data" / "classes.json").write_text(json.dumps({"class_names": ["a", "b", "c", "d"]}))
    (out / "data" / f"{INGEST_OLD_PREFIX}123").mkdir()
    (out / "data" / "ingest_report.Span-3.failed.json").write_text("{}")
    assert check_run_dir(out) is False
def test_fresh_data_becomes_the_next_span_and_is_what_run_reads(tmp_path, capsys):
    """issue 13 item 2: ingest --span 2 into OUTPUT/data, then run --data NEW: NEW must be read."""
    out = tmp_path / "out"
    old = _raw(tmp_path / "old", seed=1, num_images=3)
    new = _raw(tmp_path / "new", seed=2, num_images=5, prefix="new_")
    assert cli.main(["ingest", str(old / "images"), str(old / "masks"), "--output", str(out / "data"),
                     "--span", "2"]) == 0
    config = config_from_dict({"data": {"dir": str(new)}, "output_dir": str(out)})
    paths = local_paths(str(out))
    capsys.readouterr()

    examples_dir, reference = prepare_data(config, paths)
    printed = capsys.readouterr().out
    data = out / "data"
    # the complete masks stay with the span (copies of masks_full/ for its records)
    assert examples_dir == str(data) and reference == str(data / "Span-3" / "reference_masks")
    assert _same_pngs(data / "Span-3" / "reference_masks", new / "masks_full")
    assert list_spans(data) == [2, 3]  # the latest span, the one ImportExampleGen reads, is the new data
    assert _written(data / "Span-3") == sorted(p.stem for p in (new / "images").iterdir())
    assert _written(data / "Span-2") == sorted(p.stem for p in (old / "images").iterdir())  # untouched
    assert f"5 records from {new} to {data / 'Span-3'}" in printed and "already held span 2" in printed

    # unchanged: not ingested again
    assert prepare_data(config, paths)[0] == str(data)
    assert "unchanged, reusing" in capsys.readouterr().out and list_spans(data) == [2, 3]

    # changed (a pair removed): the next span again
    for folder in ("images", "masks"):
        (new / folder / "new_shapes_00004.png").unlink()
    prepare_data(config, paths)
    assert list_spans(data) == [2, 3, 4] and len(_written(data / "Span-4")) == 4

    # a new ingest --span 5 by hand, then the same data again: it must not hide behind span 5
    assert cli.main(["ingest", str(old / "images"), str(old / "masks"), "--output", str(data), "--span", "5"]) == 0
    prepare_data(config, paths)
    assert list_spans(data) == [2, 3, 4, 5, 6] and len(_written(data / "Span-6")) == 4

    # data.num_spans: 2 reads the last two spans, through the window
    windowed = config_from_dict({"data": {"dir": str(new), "num_spans": 2}, "output_dir": str(out)})
    window, _ = prepare_data(windowed, paths)
    assert window == str(out / "span_window") and list_spans(data) == [2, 3, 4, 5, 6]
    links = sorted(p.name for p in (out / "span_window" / "Span-6").glob("data-*"))
    assert [n.split("-")[1] for n in links] == ["span5", "span6"]
    assert sorted(p.name for p in (out / "span_window" / "Span-6").iterdir()) == links + ["reference_masks"]
    # QA 94 L7: the window's staging and set-aside folders were deleted with whatever they held
    from segbalance.pipeline.output_guard import OutputError

    for name in ("span_window.old", "span_window.tmp", "span_window"):
        (out / name).mkdir(exist_ok=True)
        (out / name / "mine.txt").write_text("mine\n")
        with pytest.raises(OutputError, match=f"{out / name} holds {out / name / 'mine.txt'}, which a run does not"):
            prepare_data(windowed, paths)
        assert (out / name / "mine.txt").read_text() == "mine\n"
        (out / name / "mine.txt").unlink()
    assert prepare_data(windowed, paths)[0] == str(out / "span_window")  # links and folders only: replaced


def test_a_span_a_killed_ingest_moved_aside_is_restored_before_run_picks_the_latest(tmp_path, capsys):
    """`ingest --overwrite` killed between its two renames leaves the span it replaces under a hidden
    name: `run --data SPANS` read the span before it as the latest (an older one, silently), and `run
    --data IMAGES_DIR` ingested the same data again as a new span. Both put it back first."""
    from segbalance.pipeline import ingest

    raw = [_raw(tmp_path / f"raw{k}", seed=k, num_images=2, prefix=f"s{k}_") for k in range(2)]
    spans = tmp_path / "spans"
    for k, folder in enumerate(raw):
        assert cli.main(["ingest", str(folder / "images"), str(folder / "masks"), "--output", str(spans),
                         "--span", str(k)]) == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (spans / "Span-1").rename(spans / f"{ingest.OLD_PREFIX}{int(dead.stdout)}")
    config = config_from_dict({"data": {"dir": str(spans)}, "output_dir": str(tmp_path / "out")})
    assert prepare_data(config, local_paths(str(tmp_path / "out")))[0] == str(spans)
    assert list_spans(spans) == [0, 1] and _written(spans / "Span-1") == ["s1_shapes_00000", "s1_shapes_00001"]
    assert "restored" in capsys.readouterr().err
    # QA 91 M3: the folder's only span moved aside: the config check refused it as holding nothing to train on
    only = tmp_path / "only"
    only.mkdir()
    (spans / "Span-0").rename(only / f"{ingest.OLD_PREFIX}{int(dead.stdout)}")
    config = config_from_dict({"data": {"dir": str(only)}, "output_dir": str(tmp_path / "out_only")})
    assert prepare_data(config, local_paths(str(tmp_path / "out_only")))[0] == str(only)
    assert list_spans(only) == [0] and _written(only / "Span-0") == ["s0_shapes_00000", "s0_shapes_00001"]
    (only / "Span-0").rename(only / "elsewhere")  # nothing moved aside by ingest: refused as before
    with pytest.raises(ValueError, match="has no images/ folder and no Span-N/ folders"):
        config_from_dict({"data": {"dir": str(only)}})
    # the same through run's own OUTPUT/data
    out = tmp_path / "out2"
    config = config_from_dict({"data": {"dir": str(raw[1])}, "output_dir": str(out)})
    prepare_data(config, local_paths(str(out)))
    (out / "data" / "Span-0").rename(out / "data" / f"{ingest.OLD_PREFIX}{int(dead.stdout)}")
    prepare_data(config, local_paths(str(out)))
    assert list_spans(out / "data") == [0]  # put back and reused, not ingested again as Span-1
    # a span run ingested (with the class names it keeps beside the records) can be replaced by ingest --overwrite
    assert (out / "data" / "Span-0" / "classes.json").is_file()
    assert cli.main(["ingest", str(raw[0] / "images"), str(raw[0] / "masks"), "--output", str(out / "data"),
                     "--span", "0", "--overwrite"]) == 0
    assert _written(out / "data" / "Span-0") == ["s0_shapes_00000", "s0_shapes_00001"]
    prepare_data(config, local_paths(str(out)))  # other data than run's folder now: that folder is the next span
    assert list_spans(out / "data") == [0, 1] and _written(out / "data" / "Span-1")[0].startswith("s1_")


def test_class_ids_beyond_the_class_names_leave_no_span(tmp_path):
    raw = _raw(tmp_path / "raw", seed=3, num_images=2)
    mask = np.zeros((16, 16), np.uint8)
    mask[0, 0] = 7  # 4 class names in the default config
    (raw / "masks" / "shapes_00000.png").write_bytes(encode_png(mask))
    config = config_from_dict({"data": {"dir": str(raw)}, "output_dir": str(tmp_path / "out")})
    from segbalance.pipeline.config import ConfigError

    # the data's classes.json names the classes: the advice points there (adding them to the config is refused)
    assert (raw / "classes.json").is_file()
    with pytest.raises(ConfigError, match=re.escape(f"add the missing class names to {raw / 'classes.json'} "
                                                    f"(or fix those masks)")):
        prepare_data(config, local_paths(str(tmp_path / "out")))
    assert list_spans(tmp_path / "out" / "data") == []  # the span written a moment ago is removed
    (raw / "classes.json").unlink()  # without it, the config's classes.names are the list to extend
    with pytest.raises(ConfigError, match="add the missing class names to classes.names in the config"):
        prepare_data(config_from_dict({"data": {"dir": str(raw)}, "output_dir": str(tmp_path / "out")}),
                     local_paths(str(tmp_path / "out")))


def test_a_data_folder_with_spans_and_image_files_is_refused(tmp_path, capsys):
    """Span-N/ beside images/ + masks/: run read the spans and left the 72 image pairs unused, silently."""
    from segbalance.pipeline import cli

    raw = _raw(tmp_path / "data", seed=3, num_images=2)
    (raw / "Span-0").mkdir()
    (raw / "Span-0" / "data-00000.tfrecord").write_bytes(b"")
    out = tmp_path / "out"
    assert cli.main(["run", "--data", str(raw), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds both Span-N/ folders and images and masks/" in err
    assert not out.exists()  # refused before anything was written
    # the advice, followed literally, works (QA 63: it was an ingest into the folder holding its inputs,
    # which ingest refuses)
    advice = re.search(r"`segbalance ingest (NEW/images) (NEW/masks) --output (\S+) --span (\d+)`", err)
    assert advice and advice.group(3) == str(raw) and advice.group(4) == "1", err
    new = tmp_path / "NEW"
    new.mkdir()
    for sub in ("images", "masks"):
        (raw / sub).rename(new / sub)
    assert cli.main(["ingest", str(new / "images"), str(new / "masks"), "--output", advice.group(3), "--span",
                     advice.group(4), "--num-classes", "4"]) == 0
    from segbalance.pipeline.run import check_data_folder

    check_data_folder(raw)  # accepted now


def _run_cli(*args, timeout=300):
    # as a user's shell has it (an in-process cli.main of another test may have set both)
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    return subprocess.run([sys.executable, "-m", "segbalance.pipeline.cli", "run", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def _one_error_line(result, *names):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[0].startswith("segbalance run: error:"), lines[0]
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def test_run_data_mistakes_are_one_line_and_leave_nothing(tmp_path):
    """issue 13 item 6 (run parts): no masks/, empty folders, only bad pairs."""
    no_masks = _raw(tmp_path / "no_masks", seed=1, num_images=2)
    for path in (no_masks / "masks").iterdir():
        path.unlink()
    (no_masks / "masks").rmdir()
    out = tmp_path / "out_a"
    line = _one_error_line(_run_cli("--data", no_masks, "--output-dir", out), no_masks / "masks")
    assert "no masks/ folder" in line and not out.exists()

    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    out = tmp_path / "out_b"
    line = _one_error_line(_run_cli("--data", empty, "--output-dir", out), empty / "images")
    assert "holds no image files" in line and not out.exists()
    from segbalance.pipeline.ingest import IngestError
    from segbalance.pipeline.run import check_data_folder

    split = _raw(tmp_path / "split", seed=1, num_images=2)  # QA 89 L3: images/train, images/val said nothing of them
    for sub in ("images", "masks"):
        for part in ("train", "val"):
            (split / sub / part).mkdir()
        for i, path in enumerate(sorted(p for p in (split / sub).iterdir() if p.is_file())):
            path.rename(split / sub / ("train", "val")[i % 2] / path.name)
    with pytest.raises(IngestError) as caught:
        check_data_folder(split)
    assert str(caught.value) == (
        f"data folder {split}: {split / 'images'} holds no image files (.png, .jpg, .jpeg, .bmp, .tif, .tiff); its "
        f"sub-folders train, val hold some, and run reads only the files directly in images/: give one data set's "
        f"files there (a train / val split is made by the pipeline, data.split_by)")

    bad = _raw(tmp_path / "bad", seed=2, num_images=3)
    for path in (bad / "masks").iterdir():  # every mask has the wrong size: every pair is bad
        path.write_bytes(encode_png(np.zeros((8, 8), np.uint8)))
    out = tmp_path / "out_c"
    line = _one_error_line(_run_cli("--data", bad, "--output-dir", out), bad / "images")
    report = out / "data" / "ingest_report.Span-0.failed.json"
    assert str(report) in line and json.loads(report.read_text())["num_bad"] == 3
    # nothing half-made: the failed ingest's report, the run's log and summary (refused), the run folder's marker
    # (output_guard) and its lock file (run_lock); no span, store or temp folder
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    logs = [p for p in left if p.startswith("logs/run-")]
    expected = ["data", "data/ingest_report.Span-0.failed.json", "logs", *logs, "run_summary.json"]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["status"] == "refused" and str(report) in summary["error"] and summary["log"] == str(out / logs[0])
    assert sorted(p for p in left if p not in (".segbalance.json", ".segbalance.lock")) == sorted(expected) and \
        len(logs) == 1, left
    assert "skipped shapes_00000" in (out / logs[0]).read_text()  # the per-pair lines went to the log


def test_library_output_goes_to_the_log_file_unless_verbose(tmp_path, capfd):
    child = [sys.executable, "-c", "import os; os.write(2, b'worker process line\\n')"]
    with LibraryLog(tmp_path / "logs") as log:
        os.write(2, b"C++ level line\n")  # what TensorFlow's C++ logging does
        subprocess.run(child, check=True)
        print("python stderr line", file=sys.stderr)
        print("progress line")
        log.write("our line")
    out, err = capfd.readouterr()
    assert err == "" and out == "progress line\n"
    text = log.path.read_text()
    for line in ("C++ level line", "worker process line", "python stderr line", "our line"):
        assert line in text, line
    assert log.path.parent == tmp_path / "logs" and log.path.name.startswith("run-")

    with LibraryLog(tmp_path / "logs", verbose=True) as verbose:
        os.write(2, b"C++ level line\n")
        subprocess.run(child, check=True)
    err = capfd.readouterr().err
    assert "C++ level line" in err and "worker process line" in err
    assert verbose.path != log.path and "C++ level line" not in verbose.path.read_text()
    os.write(2, b"after\n")  # descriptor 2 is the console again
    assert capfd.readouterr().err == "after\n"


def test_handlers_made_during_the_run_survive_the_log_file_closing(tmp_path, capfd):
    """A library that adds a StreamHandler(sys.stderr) during the run captured the log file;
    after the run its records must reach the console, not fail on the closed file."""
    import logging

    logger = logging.getLogger("segbalance-test-library")
    logger.propagate = False
    with LibraryLog(tmp_path / "logs") as log:
        handler = logging.StreamHandler(sys.stderr)
        logger.addHandler(handler)
        logger.warning("during the run")
    try:
        logger.warning("after the run")
    finally:
        logger.removeHandler(handler)
    err = capfd.readouterr().err
    assert "Logging error" not in err and "after the run" in err and "during the run" not in err
    assert "during the run" in log.path.read_text()


def test_absl_records_go_to_the_log_and_a_first_run_resolver_is_one_line(tmp_path, capfd):
    from absl import logging as absl_logging

    with LibraryLog(tmp_path / "logs") as log:
        progress = route_absl(log)
        try:
            for message in ("Component latest_class_stats_resolver is running.",
                            "Component Transform is running.", "Component Transform is finished."):
                absl_logging.info(message)
            try:  # what TFX's resolver node handler logs when the latest-artifact strategy finds nothing
                raise RuntimeError("InputResolutionError: <LatestArtifactStrategy object> returned None.")
            except RuntimeError as exc:
                absl_logging.exception("[%s] Input resolution error: %s", "latest_class_stats_resolver", exc)
            absl_logging.info("Component latest_class_stats_resolver is finished.")
            absl_logging.warning("some library warning")
        finally:
            unroute_absl(progress)
    out, err = capfd.readouterr()
    lines = out.splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == [
        "Transform: started", "Transform: done in 0.0s",
        "latest_class_stats_resolver: no earlier ClassStats (first run)"]
    assert err == "" and "Traceback" not in out
    text = log.path.read_text()
    assert "Traceback" in text and "returned None" in text and "some library warning" in text
    assert "latest_class_stats_resolver: no earlier ClassStats (first run)" in text
    assert logging.getLogger("absl").propagate

    # another resolution error is not a first run: it says so
    progress = ComponentProgress()
    for message in ("Component r_resolver is running.", "[r_resolver] Input resolution error: bad query",
                    "Component r_resolver is finished."):
        progress.emit(logging.LogRecord("absl", logging.INFO, __file__, 1, message, None, None))
    assert "r_resolver: input resolution failed: bad query" in capfd.readouterr().out


def test_a_resolver_that_found_nothing_says_so_and_one_that_found_something_is_done(capfd):
    """The local DAG's resolvers resolve each channel on its own (``LatestEachStrategy``): a first run's
    resolver completes with empty lists, which TFX logs as ``Resolved inputs``; the line says what that
    means. Found artifacts, or some channel empty and another not, is ``done``."""
    progress = ComponentProgress()

    def resolve(node, resolved):
        for message in (f"Component {node} is running.", f"[{node}] Resolved inputs: {resolved}",
                        f"Component {node} is finished."):
            progress.emit(logging.LogRecord("absl", logging.INFO, __file__, 1, message, None, None))

    resolve("latest_class_stats_resolver", "({'class_stats': [], 'drift_report': []},)")  # as TFX 1.16 logs it
    resolve("latest_blessed_model_resolver", "({'model': [], 'model_blessing': []},)")
    resolve("other_resolver", "[{'x': []}]")
    resolve("latest_class_stats_resolver", "({'class_stats': [Artifact(artifact: id: 3)], 'drift_report': []},)")
    resolve("latest_blessed_model_resolver", "[{'model': [Artifact(artifact: id: 7)], 'model_blessing': []}]")
    resolve("ImportExampleGen", "({},)")  # a component without inputs logs this too: not a resolver
    resolve("Evaluator", "({'baseline_model': []},)")  # nor is one whose only input is empty
    lines = [line.split("] ", 1)[1] for line in capfd.readouterr().out.splitlines()]
    assert lines == ["latest_class_stats_resolver: no earlier ClassStats (first run)",
                     "latest_blessed_model_resolver: no blessed model yet",
                     "other_resolver: nothing to resolve yet (first run)",
                     "latest_class_stats_resolver: done in 0.0s", "latest_blessed_model_resolver: done in 0.0s",
                     "ImportExampleGen: started", "ImportExampleGen: done in 0.0s",
                     "Evaluator: started", "Evaluator: done in 0.0s"]


def test_a_silent_component_says_it_is_still_running(capfd):
    """A Beam component on big data printed nothing between `started` and `done` for minutes (QA): the
    progress handler now adds a line every heartbeat while one runs; not for SegTrainer (its epochs
    show) and never after the component finished."""
    import re
    import time as _time

    progress = ComponentProgress(heartbeat=0.2)
    progress.start_heartbeat()

    def say(message):
        progress.emit(logging.LogRecord("absl", logging.INFO, __file__, 1, message, None, None))

    try:
        say("Component StatisticsGen is running.")
        _time.sleep(0.7)
        say("Component StatisticsGen is finished.")
        after_statistics = capfd.readouterr().out
        _time.sleep(0.5)
        say("Component SegTrainer is running.")
        _time.sleep(0.5)
        say("Component SegTrainer is finished.")
    finally:
        progress.stop_heartbeat()
    beats = re.findall(r"StatisticsGen: still running \((\d+) s\)", after_statistics)
    assert 1 <= len(beats) <= 4, after_statistics  # every 0.2 s of the 0.7 s (fewer on a loaded machine)
    assert re.search(r"StatisticsGen: done in [\d.]+s$", after_statistics.rstrip())
    later = capfd.readouterr().out
    assert "still running" not in later and "SegTrainer: started" in later  # after done: quiet; SegTrainer: epochs
    assert not progress._thread.is_alive()


def test_sample_drop_fraction_applies_to_every_kind(tmp_path):
    """data.sample.drop_fraction reaches the sample writer for a real kind too (it was shapes only)."""
    import json as _json

    from segbalance.pipeline.config import config_from_dict
    from segbalance.pipeline.run import _ensure_sample

    config = config_from_dict({"data": {"sample": {"kind": "nuclei", "num_images": 6, "size": 32,
                                                   "drop_fraction": 1.0}}})
    folder = _ensure_sample(config, tmp_path / "sample")
    labeled = _json.loads((folder / "labeled.json").read_text())
    assert len(labeled) == 6 and (folder / "masks_full").is_dir()
    assert any(len(ids) < 3 for ids in labeled.values())  # some class dropped from some image


def test_sample_data_of_an_earlier_drop_rule_is_written_again(tmp_path, capsys):
    """A sample folder whose marker predates the foreground-image drop rule is rewritten, not reused."""
    import json as _json

    from segbalance.pipeline.config import config_from_dict
    from segbalance.pipeline.run import _ensure_sample

    config = config_from_dict({"data": {"sample": {"num_images": 4, "size": 16}}})
    folder = _ensure_sample(config, tmp_path / "sample")
    marker = folder / "sample_config.json"
    assert _ensure_sample(config, folder) == folder and "reusing" in capsys.readouterr().out
    stamp = _json.loads(marker.read_text())
    marker.write_text(_json.dumps({k: v for k, v in stamp.items() if k != "drop_of"}))  # before the rule changed
    _ensure_sample(config, folder)
    assert "wrote 4 shapes images" in capsys.readouterr().out and _json.loads(marker.read_text()) == stamp


def test_a_sample_kind_brings_its_class_names_but_never_replaces_the_users(tmp_path):
    from segbalance.pipeline.config import ConfigError, config_from_dict
    from segbalance.pipeline.run import prepare_data

    sample = {"kind": "nuclei", "num_images": 4, "size": 32}
    paths = {"sample_dir": str(tmp_path / "sample"), "examples_dir": str(tmp_path / "examples")}
    config = config_from_dict({"data": {"sample": sample}})  # default names: the sample's replace them
    prepare_data(config, paths)
    assert config.classes.names == ["background", "nucleus", "boundary"]
    # QA 27: the spans folder keeps them, so `run --data OUTPUT/data` (what `schedule` prints) trains the same
    # classes; before, it fell back to the four default names
    again = config_from_dict({"data": {"dir": paths["examples_dir"], "sample": sample}})
    prepare_data(again, paths)
    assert again.classes.names == ["background", "nucleus", "boundary"]
    mine = config_from_dict({"data": {"sample": sample}, "classes": {"names": ["bg", "cell", "edge"]}})
    with pytest.raises(ConfigError, match=r"classes.names \['bg', 'cell', 'edge'\] are not the nuclei sample's "
                                          r"classes \['background', 'nucleus', 'boundary'\]: remove classes.names"):
        prepare_data(mine, {**paths, "examples_dir": str(tmp_path / "examples2")})
    assert mine.classes.names == ["bg", "cell", "edge"]


def test_a_link_to_nothing_among_the_images_is_a_bad_pair_and_a_folder_named_labeled_json_is_refused(tmp_path):
    """QA 69: run --data stopped with a FileNotFoundError traceback (its fingerprint stat()ed the link) where
    ingest skips the pair naming the link; a folder named labeled.json was passed over (images trained as
    complete) where ingest --labeled refuses it."""
    from segbalance.pipeline import sample_data
    from segbalance.pipeline.config import config_from_dict
    from segbalance.pipeline.ingest import IngestError
    from segbalance.pipeline.run import ingest_as_next_span

    data = sample_data.write_sample_data("shapes", tmp_path / "data", num_images=3, size=16)
    (data / "images" / "zz.png").symlink_to(tmp_path / "gone.png")
    (data / "masks" / "zz.png").write_bytes((data / "masks" / "shapes_00000.png").read_bytes())
    out = tmp_path / "examples"
    assert ingest_as_next_span(config_from_dict({}), data, out) == 0
    report = json.loads((out / "Span-0" / "ingest_report.json").read_text())
    assert report["num_written"] == 3
    assert [(b["source_id"], b["code"]) for b in report["bad"]] == [("zz", "broken_link")]
    (data / "labeled.json").unlink(missing_ok=True)
    (data / "labeled.json").mkdir()
    with pytest.raises(IngestError, match=re.escape(f"labeled file {data / 'labeled.json'} is a folder")):
        ingest_as_next_span(config_from_dict({}), data, tmp_path / "examples2")


def test_run_refuses_binary_masks_saved_as_0_255_and_says_how_to_map_them(tmp_path):
    """QA 68 (real data): `run --data` over 0/255 masks trained no foreground (class weights [1, 0], every
    foreground pixel ignored), blessed and pushed a model with IoU 0 on it; ingest's warning reached the log
    file only. Refused (exit 2), the span just written removed; masks saved as 0/1 run."""
    import numpy as np
    from PIL import Image

    from segbalance.pipeline.config import ConfigError, config_from_dict
    from segbalance.pipeline.run import ingest_as_next_span
    from segbalance.pipeline.spans import list_spans

    data = tmp_path / "binary"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 3:6] = 255
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(data / "images" / f"b{i}.png")
        Image.fromarray(mask).save(data / "masks" / f"b{i}.png")
    config = config_from_dict({"classes": {"names": ["background", "lesion"]}})
    out = tmp_path / "examples"
    with pytest.raises(ConfigError, match=re.escape(
            f"no mask in {data / 'masks'} holds a class id other than 0 (background), and 3 of 3 hold 255, the "
            f"ignore index: binary masks saved as 0/255 would train no 'lesion'. Save the foreground as 1, or ingest "
            f"them once with `segbalance ingest {data / 'images'} {data / 'masks'} --palette PALETTE.json --output "
            f"{out} --span 0`, then `segbalance run --data {out}` (with the same --config and --output-dir) "
            f"(PALETTE.json: {{\"0\": 0, \"1\": 255}})")):
        ingest_as_next_span(config, data, out)
    assert list_spans(out) == []
    for i in range(3):
        Image.fromarray(mask // 255).save(data / "masks" / f"b{i}.png")
    assert ingest_as_next_span(config, data, out) == 0 and list_spans(out) == [0]


def test_a_few_masks_with_ids_the_classes_lack_are_skipped_more_refuse_the_data(tmp_path, capsys):
    """QA 70: one pixel of id 7 in one of 100 masks refused the whole scheduled delivery (exit 2, "add the
    missing class names"); ingest skips that pair. Up to MAX_BAD_ID_FRACTION of the masks (the trainer's
    rule for such records) are skipped and listed; more means the config lacks class names: refused."""
    import numpy as np
    from PIL import Image

    from segbalance.contract import MAX_BAD_ID_FRACTION
    from segbalance.pipeline.config import ConfigError
    from segbalance.pipeline.run import ingest_as_next_span

    data = sample_data.write_sample_data("shapes", tmp_path / "data", num_images=10, size=16)
    broken = np.array(Image.open(data / "masks" / "shapes_00003.png"))
    broken[0, 0] = 7
    Image.fromarray(broken).save(data / "masks" / "shapes_00003.png")
    assert 1 / 10 <= MAX_BAD_ID_FRACTION
    out = tmp_path / "examples"
    assert ingest_as_next_span(config_from_dict({}), data, out) == 0
    printed = capsys.readouterr().out
    assert ("ingest: warning: 1 of 10 masks hold class ids the 4 classes lack (first: shapes_00003: mask "
            "shapes_00003.png has class ids [7]") in printed and "skipped as bad pairs" in printed
    assert "grey levels" not in printed  # it holds class ids 1..3 too: not a mask of grey levels (QA 71)
    report = json.loads((out / "Span-0" / "ingest_report.json").read_text())
    assert report["num_written"] == 9 and [b["source_id"] for b in report["bad"]] == ["shapes_00003"]
    Image.fromarray(broken).save(data / "masks" / "shapes_00004.png")  # 2 of 10: the classes are too few
    with pytest.raises(ConfigError, match=r"classes.names lists 4 classes but 2 masks have larger class ids"):
        ingest_as_next_span(config_from_dict({}), data, out)
    assert list_spans(out) == [0]


def test_masks_saved_as_grey_levels_get_the_palette_that_maps_them(tmp_path):
    """QA 68: a mask of 4 classes saved for viewing (0/85/170/255) was refused with "add the missing class
    names" (171 of them); the reason now shows the grey-value --palette, and run how to ingest with it."""
    import numpy as np
    from PIL import Image

    from segbalance.pipeline import ingest
    from segbalance.pipeline.config import ConfigError, config_from_dict
    from segbalance.pipeline.run import ingest_as_next_span
    from segbalance.trainer.example_codec import decode_array

    data = tmp_path / "grey"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    ids = np.repeat(np.arange(4, dtype=np.uint8), 4).reshape(2, 8)
    for i in range(2):
        Image.fromarray(np.full((2, 8, 3), 9 * i, np.uint8)).save(data / "images" / f"g{i}.png")
        Image.fromarray((ids * 85).astype(np.uint8)).save(data / "masks" / f"g{i}.png")
    config = config_from_dict({"classes": {"names": ["bg", "a", "b", "c"]}})
    out = tmp_path / "examples"
    with pytest.raises(ingest.IngestError) as refused:  # every mask refused: ingest's own error, with run's advice
        ingest_as_next_span(config, data, out)
    assert "all 2 pairs were bad" in str(refused.value) and "map them with --palette FILE holding" in str(refused.value)
    assert str(refused.value).endswith(f"`, then `segbalance run --data {out}` (with the same --config and "
                                       f"--output-dir)")
    Image.fromarray(ids).save(data / "masks" / "g1.png")  # one mask of ids among the grey-level one
    with pytest.raises(ConfigError) as refused:
        ingest_as_next_span(config, data, out)
    message = str(refused.value)
    assert ("mask g0.png has class ids [85, 170] outside [0, num_classes=4) that are not ignore_index=255; if it holds "
            'its classes as grey levels (0, 85, 170, 255), map them with --palette FILE holding {"0": 0, "1": 85, '
            '"2": 170, "3": 255} (in class order); 255 is the ignore index: unmapped, its pixels are \'no label\'') \
        in message
    assert message.endswith(f"masks that hold their classes as grey levels need a palette, which `run` does not take: "
                            f"ingest them once with `segbalance ingest {data / 'images'} {data / 'masks'} --palette "
                            f"PALETTE.json --output {out} --span 0`, then `segbalance run --data {out}` (with the "
                            f"same --config and --output-dir)")
    (tmp_path / "grey.json").write_text(json.dumps({"0": 0, "1": 85, "2": 170, "3": 255}))  # the advice, followed
    result = ingest.ingest(data / "images", data / "masks", out, span=0, options=ingest.IngestOptions(
        num_classes=4, palette=ingest.load_palette(tmp_path / "grey.json")))
    assert [b["code"] for b in result.bad] == ["value_not_in_palette"] and result.written == ["g0"]  # g1: ids
    import tensorflow as tf

    from segbalance.trainer.example_codec import parse_record

    files = [str(f) for f in (out / "Span-0").glob("*.tfrecord")]
    records = [parse_record(r.numpy()) for r in tf.data.TFRecordDataset(files)]
    assert [decode_array(r.mask_bytes).tolist() for r in records] == [ids.tolist()]


def test_run_on_colour_masks_says_how_to_ingest_them_and_warns_of_unmatched_labeled_keys(tmp_path, capsys):
    """`run --data` told the user to pass --palette, an option `run` does not have; labeled.json keys
    that matched no image were reported in the log file only (their labelled sets silently unused)."""
    import json

    import numpy as np
    from PIL import Image

    from segbalance.pipeline.config import config_from_dict
    from segbalance.pipeline.ingest import IngestError
    from segbalance.pipeline.run import ingest_as_next_span

    data = tmp_path / "colour"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data / "images" / f"a{i}.png")
        Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(data / "masks" / f"a{i}.png")
    with pytest.raises(IngestError, match=r"colour \(RGB\) masks need a palette, which `run` does not take: "
                                          r"ingest them once with `segbalance ingest .* --palette PALETTE.json"):
        ingest_as_next_span(config_from_dict({}), data, tmp_path / "out1")
    for i in range(2):  # now masks of classes 0 and 1, and a labeled.json keyed by file names instead of stems
        Image.fromarray(np.eye(8, dtype=np.uint8)).save(data / "masks" / f"a{i}.png")
    (data / "labeled.json").write_text(json.dumps({"a0.png": [0, 1], "a1.png": [0]}))
    # none matches (QA 68: every image trained as complete, pushed, the warning once): refused, nothing written
    with pytest.raises(IngestError, match=rf"^{re.escape(str(data / 'labeled.json'))}: none of its 2 keys is the stem "
                                          r"of an image file in .*images \(first: a0.png, a1.png\); they look like "
                                          r"file names: drop the suffixes \('a0.png' -> 'a0'\); keys are file stems, "
                                          r"e.g. 'a0' for a0.png; nothing was written$"):
        ingest_as_next_span(config_from_dict({}), data, tmp_path / "out2")
    assert not (tmp_path / "out2").exists() or not list((tmp_path / "out2").glob("Span-*"))
    (data / "labeled.json").write_text(json.dumps({"a0": [0, 1], "a1.png": [0]}))  # one of two: a warning
    ingest_as_next_span(config_from_dict({}), data, tmp_path / "out2")
    out = capsys.readouterr().out
    assert "ingest: warning: 1 keys of" in out and "labeled.json match no image file (first: a1.png)" in out
