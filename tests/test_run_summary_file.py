"""run_summary.json describes the latest run only: a run that is refused, fails or is interrupted in a
folder an earlier run wrote does not leave that run's summary (its mIoU, its pushed model) to be read
as its own. The earlier summary is kept as run_summary.previous.json."""
import json

import pytest

from segbalance.contract import UserError
from segbalance.pipeline import cli, run
from segbalance.pipeline.output_guard import write_marker
from segbalance.pipeline.run_summary import (PREVIOUS_SUMMARY_FILE, SUMMARY_FILE, set_aside_summary,
                                             unfinished_summary, write_summary)

EARLIER = {"status": "done", "miou": 0.91, "pushed_model": "/somewhere/serving_model/1"}


class DataProblem(UserError, ValueError):
    pass


def an_earlier_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    write_marker(str(out), "run")
    (out / SUMMARY_FILE).write_text(json.dumps(EARLIER))
    return out


@pytest.mark.parametrize("error, status, code, line", [
    (DataProblem("masks/a.png: class id 9 >= num_classes 4; add the class to classes.names"), "refused", 2,
     "masks/a.png: class id 9 >= num_classes 4; add the class to classes.names"),
    (RuntimeError("disk\nfull"), "failed", None, "RuntimeError: disk full"),  # a bug: the traceback is shown
])
def test_a_run_that_does_not_finish_replaces_the_summary_and_keeps_the_earlier_one(tmp_path, monkeypatch, capsys,
                                                                                   error, status, code, line):
    out = an_earlier_run(tmp_path)

    def prepare_data(config, paths):
        raise error

    monkeypatch.setattr(run, "prepare_data", prepare_data)
    if code is None:
        with pytest.raises(type(error)):
            cli.main(["run", "--output-dir", str(out)])
    else:
        assert cli.main(["run", "--output-dir", str(out)]) == code
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["status"] == status and summary["error"] == line
    assert "miou" not in summary and "pushed_model" not in summary
    assert summary["previous_summary"] == str(out / PREVIOUS_SUMMARY_FILE)
    assert json.loads((out / PREVIOUS_SUMMARY_FILE).read_text()) == EARLIER
    assert summary["log"].startswith(str(out / "logs")) and (out / "logs").is_dir()
    assert not (out / f"{SUMMARY_FILE}.partial").exists()
    # the next run sets the failed run's summary aside in turn: the earlier success is not kept twice
    with pytest.raises(type(error)):
        run.run_local(run.load_config(None, [], output_dir=str(out)))
    assert json.loads((out / PREVIOUS_SUMMARY_FILE).read_text())["status"] == status
    capsys.readouterr()


def test_a_run_under_way_says_so_and_one_killed_outright_is_the_next_run_s_previous_summary(tmp_path, monkeypatch,
                                                                                           capsys):
    """QA 70: a SIGKILLed run left no run_summary.json (it had set the earlier one aside), and the next run said
    previous_summary null and nothing of the steps it found unfinished."""
    import os
    import subprocess
    import sys

    out = an_earlier_run(tmp_path)
    seen = {}

    def prepare_data(config, paths):  # while the run is under way
        seen.update(json.loads((out / SUMMARY_FILE).read_text()))
        raise DataProblem("stop here")

    monkeypatch.setattr(run, "prepare_data", prepare_data)
    assert cli.main(["run", "--output-dir", str(out)]) == 2
    assert seen["status"] == "running" and seen["pid"] == os.getpid() and seen["started"].endswith("+00:00")
    assert seen["previous_summary"] == str(out / PREVIOUS_SUMMARY_FILE)
    # what a run killed outright leaves: its `running` summary, with a process id that no longer runs
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    refused = json.loads((out / SUMMARY_FILE).read_text())
    (out / PREVIOUS_SUMMARY_FILE).write_text(json.dumps(EARLIER))  # the last finished run's summary
    stub = {**seen, "pid": dead}
    (out / SUMMARY_FILE).write_text(json.dumps(stub))
    assert refused["status"] == "refused"
    assert cli.main(["run", "--output-dir", str(out)]) == 2
    after = json.loads((out / SUMMARY_FILE).read_text())
    assert after["previous_summary"] == str(out / PREVIOUS_SUMMARY_FILE) and after["status"] == "refused"
    assert after["killed_run"] == {"pid": dead, "started": stub["started"]}
    # QA 71: the killed run's stub replaced the finished run's summary; it is kept
    assert json.loads((out / PREVIOUS_SUMMARY_FILE).read_text()) == EARLIER
    capsys.readouterr()


def test_a_refusal_in_a_new_folder_leaves_no_folder_and_no_summary(tmp_path, monkeypatch, capsys):
    def prepare_data(config, paths):
        raise DataProblem("no images")

    monkeypatch.setattr(run, "prepare_data", prepare_data)
    assert cli.main(["run", "--output-dir", str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists()
    assert capsys.readouterr().err.strip() == "segbalance run: error: no images"


def test_unfinished_summary_statuses_and_the_file_helpers(tmp_path):
    assert unfinished_summary(KeyboardInterrupt(), None, None)["status"] == "interrupted"
    assert unfinished_summary(KeyboardInterrupt(), None, None)["error"] == "KeyboardInterrupt"
    assert unfinished_summary(RuntimeError("disk\n full"), None, None)["error"] == "RuntimeError: disk full"
    assert unfinished_summary(DataProblem("bad"), "x.log", "p.json") == {
        "status": "refused", "error": "bad", "log": "x.log", "previous_summary": "p.json"}
    assert set_aside_summary(str(tmp_path)) is None and not (tmp_path / PREVIOUS_SUMMARY_FILE).exists()
    write_summary(str(tmp_path), {"a": 1})
    assert set_aside_summary(str(tmp_path)) == str(tmp_path / PREVIOUS_SUMMARY_FILE)
    assert not (tmp_path / SUMMARY_FILE).exists()
    assert json.loads((tmp_path / PREVIOUS_SUMMARY_FILE).read_text()) == {"a": 1}


def test_a_long_store_error_is_cut_at_a_word_with_an_ellipsis(tmp_path, monkeypatch):
    """open_store cut ML Metadata's message at 200 characters mid-word, without saying so (QA 25)."""
    from ml_metadata.metadata_store import metadata_store

    from segbalance.pipeline import run_summary

    store = tmp_path / "metadata.sqlite"
    store.write_bytes(b"x" * 10)

    def refuse(config):
        raise RuntimeError("word " * 100)

    monkeypatch.setattr(metadata_store, "MetadataStore", refuse)
    with pytest.raises(run_summary.MetadataStoreError) as caught:
        run_summary.open_store(str(store))
    reason = str(caught.value).split("(", 1)[1].split(")", 1)[0]
    assert reason.endswith("word ...") and len(reason) <= 204 and "wor ..." not in reason


@pytest.mark.parametrize("stop", ["SIGTERM", "failure", "SIGTERM, then Ctrl-C in the clean-up"])
def test_a_stopped_pipeline_says_so_in_one_line_and_a_failed_one_names_its_log(tmp_path, monkeypatch, capsys, stop):
    """SIGTERM inside the pipeline printed two lines ("the pipeline stopped; library messages are in LOG",
    then "stopped (SIGTERM)"); a failure still names the log, where the libraries' messages went. QA 91 L2: a
    second stop signal during the clean-up (a held-down Ctrl-C) cut it short: run_summary.json said ``running``."""
    import os
    import signal

    from segbalance.pipeline import local_dag, run_lock

    if stop.endswith("clean-up"):
        cancel = run_lock.cancel_abandoned

        def cancel_after_a_second_signal(*args, **kwargs):
            if kwargs.get("note"):  # the clean-up's call (the run's start calls it without)
                os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
            return cancel(*args, **kwargs)

        monkeypatch.setattr(run_lock, "cancel_abandoned", cancel_after_a_second_signal)

    def run_dag_locally(pipeline):
        from ml_metadata import metadata_store
        from ml_metadata.proto import metadata_store_pb2

        connection = metadata_store_pb2.ConnectionConfig()
        connection.sqlite.filename_uri = str(tmp_path / "out" / "metadata.sqlite")
        connection.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
        store = metadata_store.MetadataStore(connection)  # a step under way
        type_id = store.put_execution_type(metadata_store_pb2.ExecutionType(name="SegTrainer"))
        store.put_executions([metadata_store_pb2.Execution(
            type_id=type_id, last_known_state=metadata_store_pb2.Execution.RUNNING)])
        if stop.startswith("SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
        raise RuntimeError("a component failed")

    monkeypatch.setattr(local_dag, "run_dag_locally", run_dag_locally)
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"data": {"sample": {"num_images": 30, "size": 16}}}))
    argv = ["run", "--config", str(config), "--output-dir", str(tmp_path / "out")]
    if stop.startswith("SIGTERM"):
        assert cli.main(argv) == 143
    else:
        with pytest.raises(RuntimeError, match="a component failed"):
            cli.main(argv)
    captured = capsys.readouterr()
    summary = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    named = f"segbalance run: the pipeline stopped; library messages are in {summary['log']}"
    # QA 77: the step under way was left RUNNING in ML Metadata until the next run called it killed
    from ml_metadata.proto import metadata_store_pb2

    from segbalance.pipeline.run_lock import ABANDONED_NOTE
    from segbalance.pipeline.run_summary import open_store

    [execution] = open_store(str(tmp_path / "out" / "metadata.sqlite")).get_executions()
    assert execution.last_known_state == metadata_store_pb2.Execution.CANCELED
    why = "stopped by SIGTERM" if stop.startswith("SIGTERM") else "the run failed (RuntimeError)"
    assert execution.custom_properties[ABANDONED_NOTE].string_value.startswith(
        f"{why} before this execution ended; marked CANCELED by the same run")
    if stop.startswith("SIGTERM"):
        assert summary["status"] == "interrupted" and named not in captured.out
        assert captured.err == "segbalance run: stopped (SIGTERM); run the same command again to resume\n"
    else:
        assert summary["status"] == "failed" and named in captured.out


def _full_disk_for_new_files(monkeypatch, errno_=28):
    """The summary module's ``open``: a new file (the ``.partial`` beside the summary) is refused as a full
    disk refuses it; the existing summary opens as usual."""
    import builtins

    from segbalance.pipeline import run_summary

    def full(path, mode="r", *args, **kwargs):
        if str(path).endswith(".partial"):
            raise OSError(errno_, "No space left on device" if errno_ == 28 else "refused", str(path))
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(run_summary, "open", full, raising=False)


def test_on_a_full_disk_the_failure_summary_is_written_over_the_running_one(tmp_path, monkeypatch):
    """QA 77: a run that failed on a full disk left run_summary.json saying ``running`` (the new file had no
    block). It now takes the blocks of the summary already there, when the new one fits them."""
    from segbalance.pipeline.run_summary import running_summary

    write_summary(str(tmp_path), running_summary(None))
    _full_disk_for_new_files(monkeypatch)
    failed = unfinished_summary(OSError(28, "No space left on device", "/out/x"), "run.log", None)
    write_summary(str(tmp_path), failed)
    assert json.loads((tmp_path / SUMMARY_FILE).read_text()) == failed
    assert [p.name for p in tmp_path.iterdir()] == [SUMMARY_FILE]  # no .partial left
    # a summary that does not fit the file's blocks is not written over it: the OSError stands, the file whole
    with pytest.raises(OSError, match="No space left"):
        write_summary(str(tmp_path), {**failed, "error": "x" * (1 << 16)})
    assert json.loads((tmp_path / SUMMARY_FILE).read_text()) == failed


def test_other_write_errors_and_no_earlier_summary_keep_the_error(tmp_path, monkeypatch):
    _full_disk_for_new_files(monkeypatch)
    with pytest.raises(OSError, match="No space left"):  # nothing to write over
        write_summary(str(tmp_path), {"status": "failed"})
    assert not list(tmp_path.iterdir())
    monkeypatch.undo()
    write_summary(str(tmp_path), {"status": "running"})
    _full_disk_for_new_files(monkeypatch, errno_=13)  # not a full disk: never written in place
    with pytest.raises(OSError, match="refused"):
        write_summary(str(tmp_path), {"status": "failed"})
    assert json.loads((tmp_path / SUMMARY_FILE).read_text()) == {"status": "running"}
