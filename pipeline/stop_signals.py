"""Ctrl-C and SIGTERM during a command: what was received, so a stop is reported as a stop.

The handlers raise ``KeyboardInterrupt`` (SIGINT) or ``Terminated`` (SIGTERM) in the main thread, so
the commands' clean-up (``finally`` blocks, the run summary) runs. When the signal lands while
TensorFlow's C++ code is calling back into Python (loading a SavedModel, say), pybind11 replaces the
exception with a ``RuntimeError`` ("MISMATCH of original and normalized active exception types ...
REPLACED BY Terminated"), which looked like a crash: a traceback, exit 1, a run summary "failed".
``received()`` says which signal came, whatever exception carried it out.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator, Optional


class Terminated(KeyboardInterrupt):
    """SIGTERM: the command stops as on Ctrl-C (its ``finally`` blocks and summaries run), exit 143. Without
    a handler Python died at once: no message, and `run` left no run_summary.json (QA)."""


_received: Optional[int] = None


def _on_signal(signum, frame):
    global _received
    _received = signum
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def received() -> Optional[int]:
    """The stop signal (``signal.SIGINT`` / ``signal.SIGTERM``) received during the command, else None."""
    return _received


def stopped(exc: BaseException) -> Optional[int]:
    """The signal that ``exc`` carries out of the command: a KeyboardInterrupt is SIGINT (Terminated:
    SIGTERM); another exception after a stop signal arrived is that signal's, raised in TensorFlow's
    callbacks under another type; else None."""
    if isinstance(exc, Terminated):
        return signal.SIGTERM
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGINT
    return _received


@contextlib.contextmanager
def _installed(handler) -> Iterator[None]:
    """``handler`` for SIGINT and SIGTERM during the block (main thread only: elsewhere nothing changes), then
    the handlers before it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, before in previous.items():
            if before is not None:  # None: a handler not installed from Python (nothing to restore)
                signal.signal(signum, before)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Install the handlers for the block, then restore (main thread only: elsewhere nothing changes)."""
    global _received
    _received = None
    try:
        with _installed(_on_signal):
            yield
    finally:
        _received = None  # the next command (in this process: tests, an API user) starts clean


def _record(signum, frame):
    global _received
    _received = _received or signum


def deferred():
    """A clean-up that must finish (a stopped run's summary): a stop signal during the block is recorded, not
    raised, as the command is already stopping (QA 91 L2: a held-down Ctrl-C raised a second KeyboardInterrupt
    in the clean-up, and run_summary.json kept saying ``running``). Main thread only, as ``handled``."""
    return _installed(_record)
