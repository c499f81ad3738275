"""Never delete or overwrite what segbalance did not write: checks for the folders commands write.

Every command that writes a folder (``ingest --output``, ``sample-data --output``, ``stats
--output``, ``run --output-dir``) calls :func:`check_output_folder` before anything is written
or moved. A folder may be written when it does not exist, is empty, or holds only what the
same command wrote there before: its marker file (``.segbalance.json``, ``{"written_by":
COMMAND}``) or, for folders written before the marker existed, its key file (whose content must
be the command's: a file name alone is no sign, a user's data folder has a ``classes.json`` too),
and nothing but the command's own file names. Anything else (a file where a folder is expected, a folder
holding the command's inputs or inside them, a folder with other files) is a
:class:`~segbalance.contract.UserError`: one line, exit code 2, nothing moved.

No TensorFlow/TFX imports: commands check their output before the slow imports.
"""
from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import shutil
import sqlite3
import tempfile
from glob import escape as glob_escape
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from segbalance.contract import UserError

MARKER = ".segbalance.json"
LOCK_FILE = ".segbalance.lock"  # held by a run while it uses its folder (run_lock.exclusive_run)


class OutputError(UserError):
    """An output path that must not be written (it is a file, holds inputs, or holds others' files)."""


def open_own_file(path: os.PathLike, mode: str):
    """``open(path, mode)`` ("r", "w" or "a+") for a file segbalance keeps in its folders (the marker, the lock
    file), never through a symbolic link: the link's target is someone else's file (QA 91 L4: a link named
    .segbalance.lock had its target emptied). A link there is an OutputError naming it."""
    flags = {"r": os.O_RDONLY, "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "a+": os.O_RDWR | os.O_CREAT | os.O_APPEND}
    try:
        fd = os.open(path, flags[mode] | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise OutputError(f"{path} is a symbolic link where segbalance keeps a file of its own: remove the link "
                          f"(its target is left alone) and run again") from None
    return os.fdopen(fd, mode)


def write_marker(folder: os.PathLike, command: str, **extra) -> None:
    with open_own_file(Path(folder, MARKER), "w") as f:
        f.write(json.dumps({"written_by": command, **extra}) + "\n")


def read_marker(folder: os.PathLike) -> Optional[dict]:
    """The folder's marker as a dict, or None (no marker, or not readable)."""
    try:
        data = json.loads(Path(folder, MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def written_by(folder: os.PathLike) -> Optional[str]:
    """The command named by the folder's marker, or None (no marker, or not ours)."""
    return (read_marker(folder) or {}).get("written_by")


def _related(a: Path, b: Path) -> Optional[str]:
    """How output ``a`` relates to input ``b``: 'is', 'contains', 'is inside', or None."""
    if a == b:
        return "is"
    if a in b.parents:
        return "contains"
    if b in a.parents:
        return "is inside"
    return None


def check_not_inputs(folder: os.PathLike, option: str, inputs: Iterable[os.PathLike]) -> None:
    """Refuse an output folder that is, contains or is inside one of the input folders."""
    out = Path(folder).resolve()
    for item in inputs:
        relation = _related(out, Path(item).resolve())
        if relation:
            raise OutputError(f"{option} {folder} {relation} the input folder {item}: choose an output folder "
                              f"outside the inputs (nothing was written)")


def check_is_folder(path: Path, option: str) -> None:
    """Refuse a path that is a file, lies below a file, or is (or lies below) a link to nothing."""
    for parent in [path, *path.parents]:
        if parent.is_symlink() and not parent.exists():  # mkdir: FileExistsError, a traceback (QA 25)
            where = "" if parent == path else f" ({parent} is one)"
            if link_loops(parent):  # (QA 69: "create that folder", which a loop makes impossible)
                raise OutputError(f"{option} {path} is a link that loops{where} (it leads back to itself): point it "
                                  f"at a real folder, or give another path")
            raise OutputError(f"{option} {path} is a link to a folder that does not exist{where}: "
                              f"{os.readlink(parent)}; create that folder or give another path")
        if parent.exists() and not parent.is_dir():
            where = "" if parent == path else f" ({parent} is a file)"
            raise OutputError(f"{option} {path} is not a folder{where}: give a folder path")
        if parent.exists():
            break


def check_literal_path(path: os.PathLike, option: str) -> None:
    """Refuse an output folder Beam or TFX would read as a file-name pattern (``contract.PATTERN_CHARACTERS``)."""
    from segbalance.contract import pattern_characters_problem

    problem = pattern_characters_problem(str(path))
    if problem:
        raise OutputError(f"{option} {path}: {problem}")


def link_loops(link: Path) -> bool:
    try:
        os.stat(link)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def make_folder(path: Path, option: str) -> bool:
    """``mkdir -p path``; True when this call made ``path`` (not merely found it absent a moment before: two
    runs may start on one new folder). A path that cannot be made (``/proc/x``, a name too long) is one line
    naming the option (a refused permission, a full disk and a read-only mount are the command line's own)."""
    try:
        path.mkdir(parents=True)
        return True
    except FileExistsError:
        return False
    except PermissionError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EROFS):
            raise
        raise OutputError(f"{option} {path}: cannot create the folder ({exc.strerror or exc}); give a folder "
                          f"path that can be created") from exc


def foreign_entries(folder: Path, owned: Sequence[str]) -> list:
    """Names in ``folder`` that match none of the ``owned`` glob patterns (the marker is always owned)."""
    patterns = [MARKER, *owned]
    return sorted(p.name for p in folder.iterdir() if not any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns))


def check_output_folder(
    folder: os.PathLike,
    *,
    command: str,
    option: str,
    owned: Optional[Sequence[str]],
    key_file: Optional[str] = None,
    key_check: Optional[Callable[[Path], bool]] = None,
    inputs: Iterable[os.PathLike] = (),
) -> bool:
    """Check that ``folder`` may be written by ``command``; returns True when it already holds data
    (of this command). Raises OutputError when it must not be written:

    - it exists and is not a folder, or a path above it is a file;
    - it is, contains or is inside one of ``inputs``;
    - it is not empty, and either lacks the marker of ``command`` (and ``key_file``, the sign of
      a folder written before markers existed, when ``key_check(path)`` says its content is the
      command's) or holds names matching none of ``owned`` (``owned=None``: any names, for a
      command that only rewrites its own files among others').
    """
    path = Path(folder)
    check_is_folder(path, option)
    check_not_inputs(path, option, inputs)
    if not path.is_dir() or not any(path.iterdir()):
        return False
    key = path / key_file if key_file is not None else None
    ours = written_by(path) == command or (key is not None and key.is_file()
                                           and (key_check is None or key_check(key)))
    foreign = foreign_entries(path, owned) if owned is not None else []
    if foreign:
        raise OutputError(f"{option} {folder} is not empty: it holds {_sample(foreign)}, which segbalance {command} did not "
                          f"write; choose a new or empty folder (nothing was written or deleted)")
    if not ours:
        raise OutputError(f"{option} {folder} is not empty and was not written by segbalance {command}; choose a new "
                          f"or empty folder (nothing was written or deleted)")
    return True


# What `segbalance run` writes into its output directory (pipeline/dag.py local_paths, run.py).
# Run only writes these names, so other files in an earlier run's directory are left alone;
# a non-empty folder that is not a run directory (no marker, no ML Metadata store) and holds
# other names is refused. (``data/`` may already be there: ``ingest --output OUT/data --span N``
# before the first ``run --data OUT/data --output-dir OUT``.)
RUN_KEY_FILE = "metadata.sqlite"
# the latest run's summary and the one before it (pipeline/run_summary.py writes them)
SUMMARY_FILE, PREVIOUS_SUMMARY_FILE = "run_summary.json", "run_summary.previous.json"
RUN_OWNED = (RUN_KEY_FILE, "metadata.sqlite-journal", "pipeline_root", "serving_model", "data", "sample_data",
             "report.html", SUMMARY_FILE, PREVIOUS_SUMMARY_FILE, f"{SUMMARY_FILE}.partial", "logs", "span_window",
             LOCK_FILE)


INGEST_OLD_PREFIX = ".segbalance-ingest-old-"  # a span `ingest --overwrite` sets aside while it replaces it
INGEST_TMP_PREFIX = ".segbalance-ingest-tmp-"  # hidden, no "Span-" and no "data-": no data glob matches


def ingest_wrote(entry: Path) -> bool:
    """Whether ``entry``, in a folder of spans, is `segbalance ingest`'s: a ``Span-N`` folder it wrote (its
    marker, or from before markers its report), its temporary or set-aside folder, its report of a failure, or
    the folder's ``classes.json`` (the spans' names, which a run reads and never writes)."""
    from segbalance.pipeline.ingest_reports import FAILED_PREFIX, FAILED_SUFFIX, REPORT_NAME

    name = entry.name
    if name.startswith((INGEST_TMP_PREFIX, INGEST_OLD_PREFIX)) or name == "classes.json":
        return True
    if name.startswith(FAILED_PREFIX) and name.endswith(FAILED_SUFFIX):
        return True
    return (fnmatch.fnmatchcase(name, "Span-*") and entry.is_dir()
            and (written_by(entry) == "ingest" or (entry / REPORT_NAME).is_file()))


def check_spans_folder(path: Path, option: str) -> None:
    """OutputError unless ``path/data``, the only entry of a new run folder, holds nothing but what ingest
    writes (``ingest --output OUT/data --span N`` before the first run). QA 94 M1: a user's data set laid out as
    OUT/data/images + masks gained a Span-0/ of the sample data (a run without --data), and a file named data
    got a run's marker, logs and sample data before the run refused it."""
    data = path / "data"
    if not data.is_dir():
        raise OutputError(f"{option} {path} holds a file named data, where a run keeps its spans: move it, or "
                          f"choose a new or empty folder (nothing was written or deleted)")
    theirs = sorted(p.name for p in data.iterdir() if not ingest_wrote(p))
    if theirs:
        raise OutputError(f"{option} {path} is not a segbalance run directory: its data/ holds {_sample(theirs)}, "
                          f"which are not spans segbalance ingest wrote (a run writes its spans there); to train on "
                          f"that folder, give it as --data and another {option}; else choose a new or empty folder "
                          f"(nothing was written or deleted)")


def check_store_beside_artifacts(path: Path, option: str) -> None:
    """OutputError for a run folder holding earlier runs' artifacts (``pipeline_root/``) without the ML Metadata
    store that records them: a new store numbers its executions from 1 again, so its artifacts land in the
    earlier runs' folders (QA 91 H1: the next run overwrote their Examples, ClassStats and drift.json, and
    stopped in Transform on a folder not empty)."""
    root = path / "pipeline_root"
    if root.is_dir() and any(root.iterdir()) and not (path / RUN_KEY_FILE).exists():
        raise OutputError(f"{option} {path} holds pipeline_root/ (the artifacts of earlier runs) but no "
                          f"{RUN_KEY_FILE}, the store that records them: a new store would write into their "
                          f"folders; move pipeline_root/ aside too (with the store, if you moved it), or give a new "
                          f"{option} (nothing was written or deleted)")


def check_run_dir(folder: os.PathLike, option: str = "--output-dir") -> bool:
    """``segbalance run``'s output directory: new, empty, or an earlier run's (True).

    An earlier run's: its marker (``run`` writes one), or, from before markers, the ML Metadata
    store of a segbalance pipeline (``is_run_store``) beside only names a run writes. A folder
    holding only ``data/`` (spans ingested there before the first run: ``check_spans_folder``) is new. Anything else is
    refused: names alone (a user's report.html, logs/) do not make a folder ours, nor does a
    metadata.sqlite beside the user's own files, or another pipeline's or program's."""
    path = Path(folder)
    check_literal_path(path, option)
    check_is_folder(path, option)
    if not path.is_dir() or not any(path.iterdir()):
        return False
    if written_by(path) == "run":
        check_store_beside_artifacts(path, option)
        return True
    foreign = foreign_entries(path, RUN_OWNED)
    if foreign and RUN_KEY_FILE in {p.name for p in path.iterdir()} and is_run_store(path / RUN_KEY_FILE):
        # an earlier version's run directory (before markers): a new folder would lose its drift baseline,
        # blessed models and served versions (QA 61: the message said to choose one)
        raise OutputError(f"{option} {folder} is a run directory of an earlier segbalance, but it also holds "
                          f"{_sample(foreign)}, which a run does not write: move that out of it and run again "
                          f"(nothing was written or deleted)")
    if foreign:
        raise OutputError(f"{option} {folder} is not empty and is not a segbalance run directory: it holds "
                          f"{_sample(foreign)}; choose a new or empty folder (nothing was written or deleted)")
    names = {p.name for p in path.iterdir()}
    if names <= {"data"}:
        check_spans_folder(path, option)
        return False
    if RUN_KEY_FILE in names and is_run_store(path / RUN_KEY_FILE):
        return True
    if RUN_KEY_FILE in names:  # another pipeline's ML Metadata store, or an application's database
        raise OutputError(f"{option} {folder} is not a segbalance run directory: its {RUN_KEY_FILE} is not the ML "
                          f"Metadata store of a segbalance pipeline; choose a new or empty folder (nothing was written "
                          f"or deleted)")
    raise OutputError(f"{option} {folder} is not empty and was not written by segbalance run (no marker, no "
                      f"{RUN_KEY_FILE}): it holds {_sample(sorted(names))}; choose a new or empty folder (nothing was "
                      f"written or deleted)")


def is_run_store(path: Path) -> bool:
    """Whether ``path`` is the ML Metadata store of a segbalance pipeline (SQLite whose ``Type`` table
    names a segbalance component or artifact type), read only. Another TFX pipeline's store, whose
    unfinished executions a run would mark CANCELED, and an application's metadata.sqlite are not."""
    def names_ours(database: Path, mode: str = "ro") -> bool:
        with contextlib.closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode={mode}", uri=True)) as db:
            return db.execute("SELECT 1 FROM Type WHERE name LIKE 'segbalance.%' LIMIT 1").fetchone() is not None

    journal = path.with_name(path.name + "-journal")
    try:
        return names_ours(path)
    except sqlite3.Error:  # not a database, no Type table; or a run killed mid-write left a journal to roll back
        if not journal.is_file():
            return False
    with tempfile.TemporaryDirectory() as scratch:  # rolled back in a copy: the user's files are not touched
        shutil.copyfile(path, Path(scratch, path.name))
        shutil.copyfile(journal, Path(scratch, journal.name))
        try:
            return names_ours(Path(scratch, path.name), mode="rw")  # rw: SQLite rolls the copy back
        except sqlite3.Error:
            return False


NAME_MAX = 255  # bytes in one file name (Linux, macOS)
PARTIAL_MARK = ".segbalance-"  # in the hidden copy's name: .NAME.segbalance-PID.partial


def partial_prefix(path: Path) -> str:
    """``.NAME.segbalance-``: the start of ``write_text_atomic``'s hidden copy of ``path``, NAME cut (at a
    character) so that the whole name, with any process id, fits one file name: a 245-character page name
    failed naming it (QA 73 L4)."""
    return f".{cut_name(path.name, NAME_MAX - 1 - len(PARTIAL_MARK) - len('4294967295.partial'))}{PARTIAL_MARK}"


def cut_name(name: str, room: int) -> str:
    """``name`` cut (at a character) to at most ``room`` bytes of the file system's encoding: a name made of a
    user's name and more must still fit one file name (NAME_MAX). A name that fits is kept as it is (QA 82 L2: a
    name with bytes that are not UTF-8 lost them, and two targets shared one failed report)."""
    encoded = os.fsencode(name)
    return name if len(encoded) <= room else encoded[:room].decode("utf-8", "ignore")


def partial_path(path: Path, pid: int) -> Path:
    """The hidden copy ``write_text_atomic`` writes before its rename: ``.NAME.segbalance-PID.partial``."""
    return path.with_name(f"{partial_prefix(path)}{pid}.partial")


def write_text_atomic(path: os.PathLike, text: str) -> None:
    """``path`` replaced by ``text`` in one rename: a command killed while writing (or a full disk) leaves
    the earlier file whole, never a cut one (which the next run could not tell as its own, and refused).
    The text goes to a hidden file of this process beside it first (``partial_path``); a dead writer's is
    removed, recognised by the ``segbalance`` mark in its name (a user's ``.NAME.123.partial`` is not ours)."""
    path = Path(os.path.realpath(path))  # a symbolic link keeps pointing to the page (QA 59: it became a file)
    prefix = partial_prefix(path)
    for stale in path.parent.glob(f"{glob_escape(prefix)}*.partial"):  # of a writer killed before its rename
        if left_by_dead_process(stale.name, prefix, ".partial"):
            stale.unlink(missing_ok=True)
    partial = partial_path(path, os.getpid())
    try:
        partial.write_text(text, encoding="utf-8")
        if path.exists():
            os.chmod(partial, path.stat().st_mode & 0o7777)  # the file's own permissions, not the umask's
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def left_by_dead_process(name: str, prefix: str, suffix: str = "") -> bool:
    """Whether ``name`` is ``prefix + PID + suffix`` of another process that no longer runs: what a writer
    killed before its rename left (a partial file, a temporary or set-aside folder)."""
    if not (name.startswith(prefix) and name.endswith(suffix)):
        return False
    pid = name[len(prefix):len(name) - len(suffix)]
    return pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _sample(names: Sequence[str]) -> str:
    return ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")


def check_output_file(path: os.PathLike, option: str, is_ours, example: str = "report.html",
                      read: Optional[int] = 4096) -> None:
    """An output FILE: refuse a folder (or a path below a file), and an existing file that
    ``is_ours(head)`` (its first ``read`` bytes as text; None: all of it) does not recognise as
    written by segbalance. ``example``: the file name the refusal of a folder suggests."""
    named = str(path)
    path = Path(path)
    # a name ending in a separator is a folder too, made or not (QA 27: "[Errno 21] Is a directory")
    if path.is_dir() or named.endswith((os.sep, "/")):
        raise OutputError(f"{option} {named} is a folder; give a file name, e.g. {path / example}")
    check_is_folder(path.parent, f"{option} {path}: its folder")
    if path.is_symlink() and not path.exists():  # (QA 69: the user's looping link was replaced by the page)
        what = "a link that loops (it leads back to itself)" if link_loops(path) else "a link to nothing"
        raise OutputError(f"{option} {path} is {what}: point it at a real file, or give another file name (nothing "
                          f"was written)")
    if path.exists() and not path.is_file():  # a FIFO or a terminal: reading its head waited for ever (QA 73)
        raise OutputError(f"{option} {path} is not a regular file; give a file name (nothing was written)")
    if path.exists():
        with open(path, "rb") as f:
            head = (f.read() if read is None else f.read(read)).decode("utf-8", errors="replace")
        if not is_ours(head):
            raise OutputError(f"{option} {path} exists and was not written by segbalance; choose another file name "
                              f"(nothing was overwritten)")

