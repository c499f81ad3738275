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


def test_deleting_the_lock_file_during_a_run_does_not_let_a_second_run_in(tmp_path):
    """QA 91 M2: the lock was the lock file's alone; a clean-up that deleted it let the next run lock a new file
    beside the first run, in the same folder. The folder itself is locked too."""
    out = tmp_path / "out"
    out.mkdir()
    with exclusive_run(str(out)):
        os.remove(out / LOCK_FILE)
        with pytest.raises(OutputError, match=r"is in use by another segbalance run \(another process\)"):
            with exclusive_run(str(out)):
                pass
        assert not (out / LOCK_FILE).exists()  # the refused run wrote nothing
    with exclusive_run(str(out)):
        pass


@pytest.mark.parametrize("name", [LOCK_FILE, ".segbalance.json"])
def test_the_lock_file_and_marker_are_never_written_through_a_link(tmp_path, capsys, name):
    """QA 91 L4: a symbolic link named .segbalance.lock had its target (someone else's file) emptied and
    rewritten by the run, the marker's too; now the run stops with one line naming the link."""
    from segbalance.pipeline.output_guard import write_marker

    out, theirs = tmp_path / "out", tmp_path / "theirs.txt"
    out.mkdir()
    if name == LOCK_FILE:
        write_marker(str(out), "run")  # an earlier run's folder
    theirs.write_text('{"written_by": "run", "theirs": 1}\n')  # (read as an earlier run's marker)
    (out / name).symlink_to(theirs)
    with pytest.raises(OutputError, match="is a symbolic link where segbalance keeps a file of its own"):
        if name == LOCK_FILE:
            with exclusive_run(str(out)):
                pass
        else:
            write_marker(str(out), "run")
    assert cli.main(["run", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out / name} is a symbolic link" in err and "Traceback" not in err
    assert theirs.read_text() == '{"written_by": "run", "theirs": 1}\n' and (out / name).is_symlink()


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


def test_another_pipeline_s_store_is_never_taken_for_a_run_directory(tmp_path, capsys):
    """QA 56: a folder holding another TFX pipeline's metadata.sqlite (with a RUNNING execution) passed as a
    run directory from before markers: `run` marked that pipeline's execution CANCELED, and wrote its marker
    there, even though it then stopped with exit 2. Only a store that names segbalance's types is a run's."""
    import hashlib

    from ml_metadata.proto import metadata_store_pb2 as pb

    from segbalance.pipeline import cli
    from segbalance.pipeline.output_guard import check_run_dir, is_run_store
    from tests.mlmd_inputs import new_store

    other = tmp_path / "tfxother"
    other.mkdir()
    store = new_store(other / "metadata.sqlite")
    trainer = store.put_execution_type(pb.ExecutionType(name="tfx.components.trainer.component.Trainer"))
    store.put_executions([pb.Execution(type_id=trainer, last_known_state=pb.Execution.RUNNING)])
    (other / "report.html").write_text("<html>theirs</html>")
    del store
    digest = lambda: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in other.iterdir()}  # noqa: E731
    before = digest()
    assert not is_run_store(other / "metadata.sqlite")
    assert cli.main(["run", "--output-dir", str(other)]) == 2
    assert "its metadata.sqlite is not the ML Metadata store of a segbalance pipeline" in capsys.readouterr().err
    assert digest() == before  # no execution cancelled, no marker, no lock
    # a store a segbalance pipeline wrote (its component and artifact types), from before markers: an earlier run's
    ours = tmp_path / "ours"
    ours.mkdir()
    store = new_store(ours / "metadata.sqlite")
    store.put_artifact_type(pb.ArtifactType(name="segbalance.ClassStats"))
    del store
    assert is_run_store(ours / "metadata.sqlite") and check_run_dir(ours)
    (ours / "notes.sqlite").write_bytes(b"not a database at all")
    assert not is_run_store(ours / "notes.sqlite") and not is_run_store(tmp_path / "missing.sqlite")
    # QA 61: with a user's file beside it, it was "not a segbalance run directory ... choose a new folder"
    # (losing its drift baseline, blessed models, served versions): what to move out, instead
    with pytest.raises(OutputError, match=rf"{ours} is a run directory of an earlier segbalance, but it also holds "
                                          rf"notes.sqlite, which a run does not write: move that out of it"):
        check_run_dir(ours)
    (ours / "notes.sqlite").unlink()
    # a run killed mid-write left a journal: read only, SQLite cannot roll it back ("readonly database"), and
    # the run directory was refused as not a run's (QA 59); a copy is rolled back instead, the files untouched
    hot = tmp_path / "hot"
    hot.mkdir()
    writer = ("import os, sqlite3\n"
              "db = sqlite3.connect('metadata.sqlite', isolation_level=None)\n"
              "db.execute('CREATE TABLE Type (id INTEGER PRIMARY KEY, name TEXT)')\n"
              "db.execute(\"INSERT INTO Type(name) VALUES ('segbalance.ClassStats')\")\n"
              "db.execute('CREATE TABLE Execution (id INTEGER PRIMARY KEY, state INT)')\n"
              "db.execute('INSERT INTO Execution(state) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
              "WHERE x < 5000) SELECT 1 FROM c')\n"
              "db.execute('BEGIN')\n"
              "db.execute(\"UPDATE Type SET name = 'x'\")\n"
              "db.execute('PRAGMA cache_size=1')\n"
              "db.execute('INSERT INTO Execution(state) SELECT 3 FROM Execution')\n"
              "os._exit(9)\n")
    subprocess.run([sys.executable, "-c", writer], cwd=hot, check=False)
    assert (hot / "metadata.sqlite-journal").is_file()
    files = {p.name: p.read_bytes() for p in hot.iterdir()}
    assert is_run_store(hot / "metadata.sqlite") and check_run_dir(hot)
    assert {p.name: p.read_bytes() for p in hot.iterdir()} == files


def test_a_file_written_in_one_rename_survives_a_failed_write(tmp_path, monkeypatch):
    """QA 56: report and compile-kfp truncated their file, then wrote it: a kill (or a full disk) between
    left an empty file, which the next call refused as not segbalance's."""
    from pathlib import Path

    from segbalance.pipeline.output_guard import write_text_atomic

    target = tmp_path / "report.html"
    write_text_atomic(target, "first")
    assert target.read_text() == "first"
    real = Path.write_text

    def cut(self, text, **kwargs):
        real(self, text[:2], **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", cut)
    with pytest.raises(OSError):
        write_text_atomic(target, "second, longer")
    assert target.read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_a_file_written_in_one_rename_keeps_its_link_and_mode_and_clears_a_killed_writer_s_copy(tmp_path):
    """QA 59: the rename replaced a symbolic link with a file and reset the permissions to the umask's; a
    writer killed before its rename left its hidden copy beside the file for good."""
    import os

    from segbalance.pipeline.output_guard import write_text_atomic

    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "report.html").write_text("old")
    os.chmod(pages / "report.html", 0o640)
    (tmp_path / "report.html").symlink_to(pages / "report.html")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = pages / f".report.html.segbalance-{int(dead.stdout)}.partial"
    leftover.write_text("cut")
    users = pages / f".report.html.{int(dead.stdout)}.partial"  # a look-alike without our mark: the user's (QA 73 L4)
    users.write_text("mine")
    write_text_atomic(tmp_path / "report.html", "new")
    assert (tmp_path / "report.html").is_symlink() and (pages / "report.html").read_text() == "new"
    assert (pages / "report.html").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in pages.iterdir()) == [users.name, "report.html"]  # the dead writer's copy is gone


def test_a_file_with_the_longest_name_is_written_in_one_rename(tmp_path):
    """QA 73 L4: a 245-character page name failed: the hidden copy's name (NAME.PID.partial) was too long."""
    import os

    from segbalance.pipeline.output_guard import NAME_MAX, partial_path, write_text_atomic

    for name in ("r" * 250 + ".html", "é" * 125 + ".html"):  # 255 bytes each (é is two)
        assert len(os.fsencode(name)) == NAME_MAX
        write_text_atomic(tmp_path / name, "page")
        assert (tmp_path / name).read_text() == "page"
        assert len(os.fsencode(partial_path(tmp_path / name, 4194304).name)) <= NAME_MAX
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        partial_path(tmp_path / name, int(dead.stdout)).write_text("cut")  # a killed writer's: removed on the next
        write_text_atomic(tmp_path / name, "page 2")
        assert (tmp_path / name).read_text() == "page 2"
    assert sorted(os.listdir(tmp_path)) == sorted(("r" * 250 + ".html", "é" * 125 + ".html"))
