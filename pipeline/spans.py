"""Spans of a ``Span-N/`` folder for local runs: which span fresh data takes (``next_span``)
and the last K spans as one span (``span_window``, ``data.num_spans``).

ImportExampleGen reads one span per execution (the latest, ``Span-{SPAN}`` in its
pattern). To train on the last K spans locally, ``span_window`` builds
``WINDOW/Span-<latest>/`` holding symbolic links ``data-span<M>-<file>`` to the
``data-*`` files of spans latest-K+1 .. latest; ExampleGen then reads that folder and its
Examples artifact carries the latest span number and every record of the window. The
links point at the ingested files, so nothing is copied, and ExampleGen's fingerprint
(paths, sizes, modification times of the targets) changes exactly when the window's
spans or their files change: an unchanged window is a cache hit.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import List

from segbalance.contract import CLASS_NAMES_FILE, REFERENCE_MASKS_FOLDER

SPAN_DIR = re.compile(r"^Span-(\d+)$")
WINDOW_LINK = re.compile(r"^data-span(\d+)-")  # a window link's name: data-span<M>-<file of span M>


def class_names_file(folder: Path, older_spans: bool = True) -> Path:
    """Where a data folder's class names are: its latest ``Span-N/classes.json`` (`run` writes it with each
    span it ingests, `ingest` from a classes.json beside its images), else ``folder/classes.json`` (the
    user's, or a folder of images/ and masks/), else, with ``older_spans``, the ``classes.json`` of the newest
    earlier span that has one, unless it names another count than the latest span was ingested for (QA 88).
    QA 84 H1: after a span ingested by hand without names a run took the four default names; it now takes the
    names of the spans before it (QA 87 M1: after the folder's own file, and only for a config that names no
    classes; a span whose ids go past them is refused by the record check, ``span_records.check_class_ids``)."""
    spans = list_spans(folder)
    latest = Path(folder) / f"Span-{spans[-1]}" / CLASS_NAMES_FILE if spans else None
    own = Path(folder) / CLASS_NAMES_FILE
    if latest is not None and latest.is_file():
        return latest
    if own.is_file() or not older_spans:
        return own
    from segbalance.pipeline.ingest_reports import current_ingest_report

    report = current_ingest_report(latest.parent) if latest is not None else None
    declared = report.get("num_classes") if report else None
    for span in reversed(spans[:-1]):
        names = Path(folder) / f"Span-{span}" / CLASS_NAMES_FILE
        if names.is_file():  # not names of another count than the latest span was ingested for (QA 88: a 3-class
            # span was trained under an earlier span's 4 names)
            return names if not isinstance(declared, int) or _name_count(names) in (declared, None) else own
    return own


def _name_count(path: Path):
    """How many names a classes.json holds; None when it cannot be read (its reader then names the problem)."""
    try:
        return len(json.loads(path.read_text(encoding="utf-8"))["class_names"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_spans(examples_dir: Path) -> List[int]:
    """Span numbers of ``examples_dir/Span-N/`` folders that hold ``data-*`` files, ascending
    (ImportExampleGen's ``Span-{SPAN}/data-*`` pattern matches these and only these)."""
    spans = []
    if not Path(examples_dir).is_dir():
        return spans
    for child in Path(examples_dir).iterdir():
        match = SPAN_DIR.match(child.name)
        if match and child.is_dir() and any(child.glob("data-*")):
            spans.append(int(match.group(1)))
    return sorted(spans)


def next_span(examples_dir: Path) -> int:
    """The span number a fresh ingest into ``examples_dir`` takes: one above every ``Span-N/``
    folder there (with data or not, so it never collides with one), 0 for a new folder."""
    examples_dir = Path(examples_dir)
    numbers = [int(m.group(1)) for m in (SPAN_DIR.match(c.name) for c in examples_dir.iterdir()) if m] \
        if examples_dir.is_dir() else []
    return max(numbers) + 1 if numbers else 0


def check_only_links(folder: Path) -> None:
    """OutputError unless ``folder`` (a span window, or its staging or set-aside copy, which ``span_window``
    replaces) is absent or holds links and folders only: QA 94 L7, a user's files there were deleted with it."""
    from segbalance.pipeline.output_guard import OutputError

    if not (folder.exists() or folder.is_symlink()):
        return
    theirs = ([folder] if folder.is_symlink() or not folder.is_dir() else
              [p for p in sorted(folder.rglob("*")) if not (p.is_symlink() or p.is_dir())])
    if theirs:
        raise OutputError(f"{folder} holds {theirs[0]}, which a run does not write (it keeps links to the spans "
                          f"there): move it out of the run folder and run again (nothing was deleted)")


def span_window(examples_dir: Path, num_spans: int, window_dir: Path) -> List[int]:
    """Rebuild ``window_dir`` as the last ``num_spans`` spans of ``examples_dir``; the spans used."""
    if num_spans < 1:
        raise ValueError(f"num_spans must be >= 1, got {num_spans}")
    examples_dir, window_dir = Path(examples_dir).resolve(), Path(window_dir)
    spans = list_spans(examples_dir)
    if not spans:
        raise ValueError(f"{examples_dir} has no Span-N/ folder with data-* files: run `segbalance ingest "
                         f"IMAGES MASKS --output {examples_dir} --span N` first")
    chosen = spans[-num_spans:]
    staging, old = (window_dir.with_name(window_dir.name + end) for end in (".tmp", ".old"))
    for folder in (staging, old, window_dir):
        check_only_links(folder)
    shutil.rmtree(staging, ignore_errors=True)
    target = staging / f"Span-{chosen[-1]}"
    target.mkdir(parents=True)
    for span in chosen:
        for data_file in sorted((examples_dir / f"Span-{span}").glob("data-*")):
            os.symlink(data_file, target / f"data-span{span}-{data_file.name[len('data-'):]}")
        # the spans' reference masks, in the window's latest span as run reads them (a later span's wins)
        for reference in sorted((examples_dir / f"Span-{span}" / REFERENCE_MASKS_FOLDER).glob("*.png")):
            link = target / REFERENCE_MASKS_FOLDER / reference.name
            link.parent.mkdir(exist_ok=True)
            if link.is_symlink():
                link.unlink()
            os.symlink(reference, link)
    # Swap in the complete window only: a crash before this leaves the previous window intact.
    shutil.rmtree(old, ignore_errors=True)
    if window_dir.exists():
        window_dir.rename(old)
    staging.rename(window_dir)
    shutil.rmtree(old, ignore_errors=True)
    return chosen
