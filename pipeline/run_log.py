"""What `segbalance run` shows on the console and what goes to its log file.

The console gets segbalance's own lines: one progress line per component (resolvers: one
line when they finish, e.g. ``no blessed model yet``; a component that prints
nothing itself adds ``still running (N min)`` every minute), what the components print on
stdout, and the summary. Everything the libraries write goes to
``OUTPUT/logs/run-<UTC time>.log``:

- TensorFlow's C++ log lines (grappler's cost-estimator errors, ``absl::InitializeLog``),
  Beam's Python warnings (python-snappy), Keras warnings ("ran out of data"), anything a
  worker process prints: they all write to file descriptor 2, so ``LibraryLog`` points
  descriptor 2 (and ``sys.stderr``) at the log file for the run;
- TFX's absl log records from WARNING up, with their tracebacks (``route_absl``; TFX's INFO
  records, mostly proto dumps, made a fresh run's log ~180 KB; ML Metadata keeps what they
  say), and segbalance's progress lines, so the log reads in order.

With ``verbose`` nothing is redirected: library output shows on the console as it comes
(absl records from WARNING up, as before), and the log file gets the absl records and the
progress lines only.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

# TFX's channel resolver warns on every resolver input under LocalDagRunner although the
# query still resolves (the latest-artifact and blessed-model resolvers are tested).
HARMLESS_WARNINGS = ("ArtifactQuery.property_predicate is not supported.",)

# What a resolver that found nothing yet means (every channel resolved to no artifact; TFX's
# LatestArtifactStrategy, which Kubeflow's DAG keeps, "returned None" instead).
EMPTY_RESOLUTION = {
    "latest_class_stats_resolver": "no earlier ClassStats (first run)",
    "latest_blessed_model_resolver": "no blessed model yet",
}
_RESOLUTION_ERROR = re.compile(r"^\[([^\]]+)\] Input resolution error: (.*)", re.S)
# TFX's resolver node logs "[node] Resolved inputs: ({'key': [Artifact(...)], ...},)" (a tuple of dicts;
# a list in other TFX versions); nothing found:
_RESOLVED_NOTHING = re.compile(r"^\[([^\]]+_resolver)\] Resolved inputs: [\[(]\{('[^']*': \[\](, )?)+\},?[\])]$")


class LibraryLog:
    """Context manager: library output of the block goes to ``logs_dir/run-<UTC time>.log``."""

    def __init__(self, logs_dir: os.PathLike, verbose: bool = False):
        self.logs_dir = Path(logs_dir)
        self.verbose = verbose
        self.path: Optional[Path] = None
        self.file = None
        self._saved_fd: Optional[int] = None
        self._saved_stderr = None

    def __enter__(self) -> "LibraryLog":
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.path = self.logs_dir / f"run-{stamp}.log"
        n = 1
        while self.path.exists():  # two runs in the same second
            n += 1
            self.path = self.logs_dir / f"run-{stamp}-{n}.log"
        self.file = open(self.path, "a", buffering=1, encoding="utf-8", errors="replace")
        if not self.verbose:
            sys.stderr.flush()
            self._saved_fd = os.dup(2)
            os.dup2(self.file.fileno(), 2)  # C++ logging, worker processes
            self._saved_stderr, sys.stderr = sys.stderr, self.file  # Python writes, whatever sys.stderr was
        return self

    def write(self, line: str) -> None:
        """A line of ours (progress), so the log reads in order."""
        if self.file is not None and not self.file.closed:
            self.file.write(line.rstrip("\n") + "\n")

    def __exit__(self, *exc) -> None:
        try:
            sys.stderr.flush()
        finally:
            if self._saved_fd is not None:
                sys.stderr = self._saved_stderr
                os.dup2(self._saved_fd, 2)
                os.close(self._saved_fd)
                self._saved_fd = None
            _repoint_handlers(self.file, sys.stderr)
            self.file.close()


def _repoint_handlers(old_stream, new_stream) -> None:
    """Logging handlers made inside the block (absl's, a library's StreamHandler) captured
    ``sys.stderr``, i.e. the log file: point them back at the console before it closes, or
    their next record is a "Logging error ... I/O operation on closed file"."""
    loggers = [logging.getLogger()] + [obj for obj in logging.Logger.manager.loggerDict.values()
                                       if isinstance(obj, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is old_stream:
                handler.setStream(new_stream)


# A component that prints nothing of its own (Beam jobs: StatisticsGen, ClassStatsGen, Transform) says it
# is still running once a minute, so a long run on big data does not look hung (SegTrainer prints epochs).
HEARTBEAT_SECONDS = 60.0
QUIET_WHILE_RUNNING = ("SegTrainer",)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


class ComponentProgress(logging.Handler):
    """Turns LocalDagRunner's log records into one line per component start / end, and a line every
    ``heartbeat`` seconds while a silent component runs (``start_heartbeat`` / ``stop_heartbeat``)."""

    def __init__(self, echo: Callable[[str], None] = lambda line: None, heartbeat: float = HEARTBEAT_SECONDS):
        super().__init__(level=logging.INFO)
        self.started = {}
        self.cached = set()
        self.skipped = set()
        self.unresolved = {}  # resolver id -> why it resolved nothing
        self.current = None
        self.extra_handlers = []
        self.echo = echo  # also write each line here (the log file)
        self.heartbeat = heartbeat
        self._finished = set()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="segbalance-progress", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _beat(self) -> None:
        beats = {}  # component -> heartbeat lines printed
        while not self._stop.wait(min(1.0, self.heartbeat / 4)):
            name = self.current
            if name is None or name in self._finished or name.endswith("_resolver") or name in QUIET_WHILE_RUNNING:
                continue
            elapsed = time.time() - self.started[name]
            if elapsed >= self.heartbeat * (beats.get(name, 0) + 1):
                beats[name] = int(elapsed // self.heartbeat)
                self._print(name, f"still running ({_duration(elapsed)})")

    def _print(self, name: str, what: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {name}: {what}"
        print(line, flush=True)
        self.echo(line)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Component ") and message.endswith(" is running."):
            name = message[len("Component "):-len(" is running.")]
            self.started[name] = time.time()
            self._finished.discard(name)
            self.unresolved.pop(name, None)
            self.current = name
            if not self.current.endswith("_resolver"):  # resolvers: one line when finished
                self._print(self.current, "started")
        elif message.startswith("A cached execution") and self.current:
            self.cached.add(self.current)
        elif message.startswith("Skipping execution for ") and self.current:  # a tfx.dsl.Cond was false
            self.skipped.add(self.current)
        elif _RESOLVED_NOTHING.match(message):
            node = _RESOLVED_NOTHING.match(message).group(1)
            self.unresolved[node] = EMPTY_RESOLUTION.get(node, "nothing to resolve yet (first run)")
        elif _RESOLUTION_ERROR.match(message):
            node, error = _RESOLUTION_ERROR.match(message).groups()
            if "returned None" in error:  # a latest-artifact strategy found no artifact: nothing there yet
                self.unresolved[node] = EMPTY_RESOLUTION.get(node, "nothing to resolve yet (first run)")
            else:
                self.unresolved[node] = f"input resolution failed: {error.splitlines()[0]} (see the log file)"
        elif message.startswith("Component ") and message.endswith(" is finished."):
            name = message[len("Component "):-len(" is finished.")]
            self._finished.add(name)
            took = time.time() - self.started.get(name, time.time())
            if name in self.unresolved:
                self._print(name, self.unresolved[name])
                return
            how = "cached" if name in self.cached else "skipped" if name in self.skipped else "done"
            self._print(name, f"{how} in {took:.1f}s")


def _known_harmless(record: logging.LogRecord) -> bool:
    return record.getMessage() not in HARMLESS_WARNINGS


def route_absl(log: LibraryLog) -> ComponentProgress:
    """absl records: INFO and up to the progress handler, WARNING and up to the log file and,
    with ``log.verbose``, to the console. Returns the progress handler (``unroute_absl`` undoes it)."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO)
    absl_logging.get_absl_handler().setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.setLevel(max(handler.level, logging.WARNING))
    progress = ComponentProgress(echo=log.write)
    absl_logger = logging.getLogger("absl")
    absl_logger.propagate = False
    to_file = logging.StreamHandler(log.file)
    to_file.setLevel(logging.WARNING)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handlers = [to_file]
    if log.verbose:
        to_console = logging.StreamHandler(sys.stderr)
        to_console.setLevel(logging.WARNING)
        to_console.addFilter(_known_harmless)
        handlers.append(to_console)
    for handler in [*handlers, progress]:
        absl_logger.addHandler(handler)
    progress.extra_handlers = handlers
    progress.start_heartbeat()
    return progress


def unroute_absl(progress: ComponentProgress) -> None:
    progress.stop_heartbeat()
    absl_logger = logging.getLogger("absl")
    for handler in [progress, *progress.extra_handlers]:
        absl_logger.removeHandler(handler)
    absl_logger.propagate = True
