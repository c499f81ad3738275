"""One run per output folder (a second is one line, exit 2); executions a killed run left RUNNING are marked."""
import os
import subprocess
import sys

import pytest

from segbalance.pipeline import cli
from segbalance.pipeline.output_guard import OutputError
from segbalance.pipeline.run_lock import ABANDONED_NOTE, LOCK_FILE, cancel_abandoned, exclusive_run
from tests.mlmd_inputs import new_store


def test_a_second_run_on_the_same_folder_is_refused_while_the_first_holds_it(tmp_path, capsys):
    from segbalance.pipeline.output_guard import write_marker

    out = tmp_path / "out"
    out.mkdir()
    write_marker(str(out), "run")  # as a run does before it takes the lock
    with exclusive_run(str(out)):
        assert f"pid {os.getpid()}" in (out / LOCK_FILE).read_text()
        with pytest.raises(OutputError, match="is in use by another segbalance run"):
            with exclusive_run(str(out)):
                pass
        # the CLI: one line naming the holder, nothing else done (no sample data, no spans)
        assert cli.main(["run", "--output-dir", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"is in use by another segbalance run (pid {os.getpid()}" in err
        assert "Traceback" not in err and not (out / "sample_data").exists() and not (out / "data").exists()
    with exclusive_run(str(out)):  # released at the end of the block
        pass


def test_the_lock_goes_with_a_killed_process(tmp_path):
    """flock is released by the system when its holder dies, however it dies: no stale lock."""
    out = tmp_path / "out"
    out.mkdir()
    code = ("import os, sys, time; from segbalance.pipeline.run_lock import exclusive_run\n"
            f"with exclusive_run({str(out)!r}):\n    print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=f"pid {proc.pid}"):
            with exclusive_run(str(out)):
                pass
    finally:
        proc.kill()
        proc.wait()
    with exclusive_run(str(out)):
        pass


def test_executions_left_running_are_marked_canceled_with_a_note(tmp_path):
    from ml_metadata.proto import metadata_store_pb2

    assert cancel_abandoned(str(tmp_path / "none.sqlite")) == 0  # no store yet: nothing to do, nothing created
    assert not (tmp_path / "none.sqlite").exists()
    store = new_store(tmp_path / "metadata.sqlite")
    state = metadata_store_pb2.Execution.State
    type_id = store.put_execution_type(metadata_store_pb2.ExecutionType(name="SegTrainer"))
    given = [state.COMPLETE, state.RUNNING, state.CACHED, state.NEW, state.FAILED]
    ids = store.put_executions([metadata_store_pb2.Execution(type_id=type_id, last_known_state=s) for s in given])
    assert cancel_abandoned(str(tmp_path / "metadata.sqlite")) == 2
    after = {e.id: e for e in new_store(tmp_path / "metadata.sqlite").get_executions_by_id(ids)}
    expected = [state.COMPLETE, state.CANCELED, state.CACHED, state.CANCELED, state.FAILED]
    assert [after[i].last_known_state for i in ids] == expected
    assert [ABANDONED_NOTE in after[i].custom_properties for i in ids] == [False, True, False, True, False]
    assert "stopped before it ended" in after[ids[1]].custom_properties[ABANDONED_NOTE].string_value
    assert cancel_abandoned(str(tmp_path / "metadata.sqlite")) == 0
