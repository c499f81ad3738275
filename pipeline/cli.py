"""`segbalance` command line: one sub-command per module, registered below.

Each command module exposes ``add_parser(subparsers)``, which adds its parser and sets
``func`` (called with the parsed args, returns the exit code). Modules are imported only
when listed here; heavy imports (TensorFlow, Beam, TFX) happen inside the commands, so
``segbalance --help`` is fast.

Errors: a user's mistake (``segbalance.contract.UserError`` and its subclasses, or a bad
argument) prints ONE line on stderr, ``segbalance COMMAND: error: ...``, and exits with code
2; so does what the user's machine refuses (an unwritable folder, a full disk).
``segbalance --debug COMMAND ...`` also prints the traceback. Any other exception is a bug
and keeps its traceback. Ctrl-C exits 130 and SIGTERM (``systemctl stop``, ``timeout``, ``kill``)
143, each after the commands' clean-up has run (``run`` records its summary as interrupted).
"""
from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import re
import shutil
import signal
import sys
import traceback
import warnings
from typing import Callable, List, Optional, Sequence

from segbalance.contract import UserError
from segbalance.pipeline import stop_signals
from segbalance.pipeline.stop_signals import Terminated  # noqa: F401 (segbalance.pipeline.cli.Terminated)

# (module path) in the order they appear in --help.
COMMAND_MODULES = [
    "segbalance.pipeline.sample_data",
    "segbalance.pipeline.ingest",
    "segbalance.pipeline.stats",
    "segbalance.pipeline.run",
    "segbalance.pipeline.report",
    "segbalance.pipeline.experiment",
    "segbalance.pipeline.config_cmd",
    "segbalance.kubeflow.compile_cmd",
    "segbalance.kubeflow.schedule",
]


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (not the usage block), exit code 2."""

    def parse_known_args(self, args=None, namespace=None):
        self._given = list(sys.argv[1:] if args is None else args)  # for dash_hint (each sub-parser its own)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)}{self.dash_hint(message)} (see `{self.prog} --help`)\n")

    def dash_hint(self, message: str) -> str:
        """What to write for a file name or value that starts with one '-' (QA 69 F21): argparse reads it as an
        option and says a value or an argument is missing, naming neither the word nor the fix."""
        if not any(part in message for part in ("expected one argument", "arguments are required",
                                                "unrecognized arguments")):
            return ""
        given = getattr(self, "_given", [])
        tokens = given[:given.index("--")] if "--" in given else given

        def unknown(token: str) -> bool:  # a word starting with one '-' that names no option of this command
            name = token.split("=", 1)[0]
            return (len(token) > 1 and token.startswith("-") and not token.startswith("--")
                    and not self._negative_number_matcher.match(token)
                    and not any(option.startswith(name) for option in self._option_string_actions))

        option = re.match(r"argument (--[\w-]+)(?:/-\w)?: expected one argument", message)
        if option:  # the word right after the option is its value (QA 75: another word was paired with it)
            values = [b for a, b in zip(tokens, tokens[1:]) if a == option.group(1) and unknown(b)]
            return (f"; {values[0]!r} is read as an option: write {option.group(1)}={values[0]} for a value that "
                    f"starts with '-'") if values else ""
        for token in filter(unknown, tokens):
            if "-" + token.split("=", 1)[0] in self._option_string_actions:  # -output for --output
                return f"; {token!r} is not an option: write -{token}"
            return f"; {token!r} is read as an option: write ./{token} for a file or folder whose name starts with '-'"
        return ""


def one_line(text: str) -> str:
    """Collapse a message to one line (a multi-line message would read as several errors)."""
    return " ".join(str(text).split())


def error_line(prog: str, message: str, args: Optional[argparse.Namespace] = None) -> int:
    """A command's own report of the error it caught: its traceback first with ``--debug`` (``args.debug``;
    QA 27: the commands that catch their own errors printed none), then one line; returns exit code 2."""
    if getattr(args, "debug", False):
        traceback.print_exc()
    sys.stderr.flush()
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="segbalance",
        description="Semantic segmentation on imbalanced and partially annotated data, as a TFX pipeline.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="on an error, print the Python traceback as well as the one-line message")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def quiet_third_party() -> None:
    """Keep libraries' start-up chatter (TensorFlow C++ logs, google-api-core / Beam Future- and
    DeprecationWarnings) off the console, so an error is the one line it should be. Our own
    warnings still show; ``--debug`` shows everything."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"^(?!segbalance)")
    # Beam's multi_processing workers are interpreters of their own: google-api-core's start-up warning is
    # left out there through the environment (that one only: a user's PYTHONWARNINGS wins), and the job
    # service's relay of their "No semi_persistent_directory found" line is dropped, other lines kept (QA 27:
    # `stats --beam-args "--direct_running_mode=multi_processing ..."`, the README's example, printed four)
    os.environ.setdefault("PYTHONWARNINGS", f"ignore::FutureWarning:{GOOGLE_VERSION_WARNING}")
    relay = logging.getLogger("apache_beam.runners.portability.local_job_service")
    if not any(isinstance(f, _NoSemiPersistentLine) for f in relay.filters):
        relay.addFilter(_NoSemiPersistentLine())


GOOGLE_VERSION_WARNING = "google.api_core._python_version_support"  # the module whose FutureWarning it is


class _NoSemiPersistentLine(logging.Filter):
    """Drops Beam's relayed worker line about a missing semi_persistent_directory (a local multi-process run
    has none, and nothing of ours is defined in __main__); every other line passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "semi_persistent_directory" not in record.getMessage()


def failed_path(exc: Optional[BaseException], code: int) -> Optional[str]:
    """The path an OSError of ``errno`` ``code`` names, when ``exc`` or an exception it was raised from (or
    while handling) is one; None otherwise. TFX wraps the OSError: a copy's ``shutil.Error`` lists its
    failures as text, and its launcher raises again while publishing."""
    for raised in _chain(exc):
        if isinstance(raised, shutil.Error) and raised.args and isinstance(raised.args[0], list):
            for failure in raised.args[0]:
                if isinstance(failure, tuple) and len(failure) == 3 and f"[Errno {code}]" in str(failure[2]):
                    return str(failure[1])
        elif isinstance(raised, OSError) and raised.errno == code:
            named = None if raised.filename else _NAMED_FILE.search(str(raised))  # h5py's error names it in text
            # a copy's (shutil's sendfile) names source and destination: the destination is on the full disk (QA 91
            # L1: the message sent the user to free space on the disk of their input files)
            return str(raised.filename2 or raised.filename or (named.group(1) if named else "?"))
    return None


_NAMED_FILE = re.compile(r"filename = '([^']+)'")  # h5py: "Can't close file (... filename = '/x.h5', ...)"


def _chain(exc: Optional[BaseException]):
    """``exc`` and the exceptions it was raised from or while handling, each once."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


# a full disk in other words than an OSError's: TensorFlow's ResourceExhaustedError ("PATH; No space left on
# device") and SQLite's through ML Metadata ("database or disk is full"); QA 27: a traceback and exit 1
_TF_FULL = re.compile(r"(\S+); No space left on device")
_SQLITE_FULL = "database or disk is full"


# TensorFlow's file errors are no OSError: PermissionDeniedError "PATH; Read-only file system" / "PATH; Permission
# denied" (QA 77: a read-only pipeline_root part-way through a run was a traceback and exit 1)
_TF_READ_ONLY = re.compile(r"((?:/|[a-z][a-z0-9+.-]*://)[^;\n]*); Read-only file system")  # a path may hold spaces
_TF_DENIED = re.compile(r"((?:/|[a-z][a-z0-9+.-]*://)[^;\n]*); (?:Permission denied|Operation not permitted)")


def _tf_words(exc: Optional[BaseException], pattern) -> Optional[str]:
    """``pattern``'s first group in the message of an error in ``exc``'s chain that is not an OSError (TensorFlow's
    errors carry a path, or a decoder's reason, only in their text), or None."""
    for raised in _chain(exc):
        match = pattern.search(str(raised)) if not isinstance(raised, OSError) else None
        if match:
            return match.group(1)
    return None


def read_only_path(exc: Optional[BaseException]) -> Optional[str]:
    """What a read-only file system refused to write (``failed_path`` EROFS, or TensorFlow's words), or None."""
    return failed_path(exc, errno.EROFS) or _tf_words(exc, _TF_READ_ONLY)


def no_space_left(exc: Optional[BaseException]) -> Optional[str]:
    """What a full disk refused to write (a path, "the ML Metadata store"; ``failed_path``), or None."""
    found = failed_path(exc, errno.ENOSPC)
    for raised in _chain(exc) if found is None else ():
        match = _TF_FULL.search(str(raised))
        if match:
            return match.group(1)
        if _SQLITE_FULL in str(raised):
            return "the ML Metadata store (metadata.sqlite)"
    return found


# TensorFlow's decoders failing on a record's bytes inside Transform, the trainer or the evaluator (QA 80 H1: a
# traceback and exit 1 that named no file): "Invalid PNG data, size N", "jpeg::Uncompress failed. Invalid JPEG data"
_TF_UNDECODABLE = re.compile(r"(Invalid PNG data, size \d+|Invalid JPEG data[^.\n]*|Unknown image file format[^.\n]*)")


def undecodable_data(exc: Optional[BaseException]) -> Optional[str]:
    """TensorFlow's words when one of its image decoders refused a record's bytes (in ``exc``'s chain), or None."""
    return _tf_words(exc, _TF_UNDECODABLE)


_PATHLIB_LOOP = re.compile(r"^Symlink loop from '(.*)'$")


def looping_link(exc: Optional[BaseException]) -> Optional[str]:
    """The path of a symbolic link that loops which ``exc`` (or one it was raised from) failed on: pathlib's
    ``RuntimeError`` from ``resolve()`` or an OSError ELOOP; None otherwise."""
    for raised in _chain(exc):
        match = _PATHLIB_LOOP.match(str(raised)) if isinstance(raised, RuntimeError) else None
        if match:
            return match.group(1)
    return failed_path(exc, errno.ELOOP)


# options whose value is itself a list of flags: ``--beam-args --runner=DirectRunner`` is taken as
# ``--beam-args=--runner=DirectRunner`` (argparse reads a value starting with "-" as an option; QA 63)
FLAG_VALUED_OPTIONS = ("--beam-args",)


def join_flag_values(argv: Sequence[str]) -> List[str]:
    """``argv`` with each FLAG_VALUED_OPTIONS option and a following value that starts with "-" joined by "="."""
    joined: List[str] = []
    items = iter(argv)
    for item in items:
        if item in FLAG_VALUED_OPTIONS:
            value = next(items, None)
            if value is not None and value.startswith("-"):
                joined.append(f"{item}={value}")
                continue
            joined.extend([item] if value is None else [item, value])
            continue
        joined.append(item)
    return joined


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(join_flag_values(sys.argv[1:] if argv is None else argv))
    if extra:  # named by the sub-command's parser (was the top level's, which has other options: QA 63)
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        (commands.get(args.command) or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if not args.debug:
        quiet_third_party()
    with stop_signals.handled():
        code = run_reporting_errors(lambda: args.func(args), f"segbalance {args.command}", args.debug)
    try:
        sys.stdout.flush()  # what is still buffered, here rather than at exit (a pipe's reader may be gone)
    except BrokenPipeError:
        if not stdout_reader_gone():
            raise
        return _reader_gone(args.debug)
    return code


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll reports an error on its write end); False
    for anything else, a file, a terminal, or no file descriptor (a test's capture)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _reader_gone(debug: bool = False) -> int:
    """stdout's reader closed the pipe (``segbalance schedule | head -1``): nothing to report (QA 27: a
    BrokenPipeError traceback; ``--debug`` still shows it). stdout goes to /dev/null so that Python's
    flush at exit raises nothing more; 141 (128 + SIGPIPE), as a shell reports a writer its reader left."""
    if debug:
        traceback.print_exc()
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor behind stdout (a test's capture)
        pass
    return 128 + signal.SIGPIPE


def run_reporting_errors(call: Callable[[], Optional[int]], prog: str, debug: bool = False) -> int:
    """``call()``'s exit code; a user's mistake, a refused permission, a full disk or a looping link is one line on
    stderr (``PROG: error: ...``, exit code 2; ``debug`` adds the traceback), Ctrl-C exits 130,
    and any other exception (a bug) keeps its traceback."""
    try:
        return int(call() or 0)
    except UserError as exc:
        if debug:
            traceback.print_exc()
        sys.stderr.flush()
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr, flush=True)
        return 2
    except PermissionError as exc:  # the user's path, not our code: an unwritable output folder, say
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: permission denied: {exc.filename}: choose a folder you can write "
              f"(and read), or change its permissions", file=sys.stderr, flush=True)
        return 2
    except BrokenPipeError:
        if not stdout_reader_gone():  # another pipe (a worker's, a socket): a bug, with its traceback
            raise
        return _reader_gone(debug)  # the reader of stdout left: not an error at all
    except Exception as exc:
        if stop_signals.received() is not None:  # the stop, raised inside TensorFlow's callbacks as another type
            return _stopped(prog, stop_signals.received(), debug)
        full, read_only, loop = no_space_left(exc), read_only_path(exc), looping_link(exc)
        denied, undecodable = _tf_words(exc, _TF_DENIED), undecodable_data(exc)
        if full is None and read_only is None and loop is None and denied is None and undecodable is None:
            raise  # a bug: keep the traceback
        if debug:
            traceback.print_exc()
        if undecodable is not None:  # the user's data: ClassStatsGen does not inflate images (cost; README)
            print(f"{prog}: error: TensorFlow could not decode an image or mask of the records ({undecodable}): "
                  f"the statistics check each record's PNG chunks but not an image's pixel data; write the records "
                  f"again with `segbalance ingest` from the source files (it checks every file's pixel data and "
                  f"names each damaged one)", file=sys.stderr, flush=True)
        elif loop is not None:  # the user's path (QA 69: pathlib's RuntimeError, a traceback and exit 1)
            print(f"{prog}: error: {loop} is a link that loops (it leads back to itself): point it at a real file "
                  f"or folder, or give another path", file=sys.stderr, flush=True)
        elif full is not None:
            print(f"{prog}: error: no space left on the device (writing {full}): free space there "
                  f"(the temporary folder, TMPDIR, counts too) and run the same command again; a run resumes where "
                  f"it stopped", file=sys.stderr, flush=True)
        elif read_only is not None:  # a read-only mount (a container's readOnly volume, say)
            print(f"{prog}: error: read-only file system: {read_only}: choose a folder on a file system you can "
                  f"write, or mount it read-write", file=sys.stderr, flush=True)
        else:  # TensorFlow's PermissionDeniedError: as the PermissionError above
            print(f"{prog}: error: permission denied: {denied}: choose a folder you can write (and read), or change "
                  f"its permissions", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the commands' own clean-up (finally blocks) has run
        return _stopped(prog, stop_signals.stopped(exc), debug)


def _stopped(prog: str, signum: int, debug: bool) -> int:
    """One line and 130 (Ctrl-C) or 143 (SIGTERM)."""
    if debug:
        traceback.print_exc()
    if signum == signal.SIGTERM:
        print(f"{prog}: stopped (SIGTERM); run the same command again to resume", file=sys.stderr, flush=True)
        return 128 + signal.SIGTERM
    again = "; run the same command again to resume" if prog.endswith(" run") else ""  # others start over
    print(f"{prog}: interrupted{again}", file=sys.stderr, flush=True)
    return 130

if __name__ == "__main__":
    sys.exit(main())
