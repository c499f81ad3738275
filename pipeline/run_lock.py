"""One `segbalance run` at a time per output folder, and what a killed run left in ML Metadata.

Two runs on one output folder would share its metadata store, its pushed-model folder and its
spans, and either could push the other's model. ``exclusive_run`` holds an advisory lock
(``fcntl.flock``) on ``OUTPUT/.segbalance.lock`` for the whole run; the system releases it when
the process ends, however it ends, so a killed run never leaves a stale lock. A second run is
refused with one line naming the holder.

A run that is killed (SIGKILL, power loss) cannot record how its component ended: TFX leaves
that execution RUNNING in ML Metadata for good, and the next run (a new pipeline-run context)
starts a new one beside it. Holding the lock proves no run is using the store, so
``cancel_abandoned`` marks such executions CANCELED, with a note, and the store says what
happened.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from typing import Iterator, Optional

from segbalance.pipeline.output_guard import LOCK_FILE, OutputError, open_own_file

ABANDONED_NOTE = "segbalance_abandoned"  # custom property of an execution a killed run left RUNNING


@contextlib.contextmanager
def exclusive_run(output_dir: str, option: str = "--output-dir") -> Iterator[None]:
    """Hold the output folder's run lock for the block; OutputError (exit 2) when another run holds it.

    The lock is taken on the folder itself and on its lock file: a lock file deleted during a run (a clean-up)
    left the folder's lock to a new file, and a second run came in (QA 91 M2); the file's lock keeps earlier
    versions out, and the file names the holder. Neither is written through a symbolic link (QA 91 L4)."""
    path = os.path.join(output_dir, LOCK_FILE)
    folder = os.open(output_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    handle = None
    try:
        try:
            _lock(folder)
            handle = open_own_file(path, "a+")
            _lock(handle.fileno())
        except BlockingIOError:
            raise OutputError(f"{option} {output_dir} is in use by another segbalance run ({_holder(path)}): wait "
                              f"for it to finish, or give another {option}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield
    finally:
        if handle is not None:
            handle.close()  # releases the locks
        os.close(folder)


def _lock(fd: int) -> None:
    """An exclusive lock on ``fd`` now, or BlockingIOError; a file system that cannot lock a folder (some
    network file systems) leaves the lock file's lock alone to do the work."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EBADF, errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP):
            raise


def _holder(path: str) -> str:
    """What the lock file says of the run holding it (a run writes its pid and start time there)."""
    with contextlib.suppress(OSError, OutputError, UnicodeDecodeError):
        with open_own_file(path, "r") as f:
            return f.read().strip() or "another process"
    return "another process"


def cancel_abandoned(metadata_path: str, note: Optional[str] = None) -> int:
    """Mark the executions left NEW or RUNNING in the store CANCELED (call while holding the run
    lock: no run is using the store); returns how many. A missing store has none. ``note``: why (default:
    an earlier run that stopped, found by the next run; a run that stops cleanly marks its own with its reason)."""
    if not os.path.isfile(metadata_path):
        return 0
    from ml_metadata.proto import metadata_store_pb2

    from segbalance.pipeline.run_summary import open_store

    store = open_store(metadata_path, writable=True)
    state = metadata_store_pb2.Execution.State
    left = [e for e in store.get_executions() if e.last_known_state in (state.NEW, state.RUNNING)]
    found = time.strftime("%Y-%m-%d %H:%M:%S")
    for execution in left:
        execution.last_known_state = state.CANCELED
        execution.custom_properties[ABANDONED_NOTE].string_value = note or (
            f"the run that started this execution stopped before it ended (killed?); marked CANCELED by the "
            f"next run, {found}")
    if left:
        store.put_executions(left)
    return len(left)
