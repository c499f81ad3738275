"""A span folder's ``ingest_report.json`` (``segbalance ingest`` writes it beside the records), read only
while it describes the folder's records: written after every ``data-*`` file there and listing them."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

REPORT_NAME = "ingest_report.json"  # beside a span's records (ingest re-exports it; here: no import of ingest)
# the report of an ingest that wrote nothing, beside its target: FAILED_PREFIX + target name + FAILED_SUFFIX
FAILED_PREFIX, FAILED_SUFFIX = "ingest_report.", ".failed.json"


def ingest_report(folder: Path, files: List[Path]) -> Optional[dict]:
    """The ``ingest_report.json`` of a span folder when `segbalance ingest` wrote it after every one of
    the folder's ``files`` (nobody changed the records since) and it lists them; else None."""
    report_path = folder / REPORT_NAME
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        written = report["written"]
        newest = max(p.stat().st_mtime for p in files if p.parent == folder)
        fresh = report_path.stat().st_mtime >= newest
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not fresh or not isinstance(written, list) or len(written) != report.get("num_written"):
        return None
    return report


def current_ingest_report(folder: os.PathLike) -> Optional[dict]:
    """``ingest_report`` of a span folder over its own ``data-*`` files: None when there is none, or when
    files were added or changed after `segbalance ingest` wrote it (its counts are then not the span's)."""
    folder = Path(folder)
    files = sorted(p for p in folder.glob("data-*") if p.is_file())
    return ingest_report(folder, files) if files else None


UNMATCHED = (("labeled", "labelled-set"), ("groups", "group"))  # the report's num_<key>_unmatched, and its words


def unmatched_key_counts(report: dict) -> dict:
    """{"labeled": n, "groups": n}: the keys of the labelled sets and of the groups an ingest report says
    matched no image (their sets and groups are not used)."""
    return {key: int(report.get(f"num_{key}_unmatched") or 0) for key, _ in UNMATCHED}


def describe_unmatched_keys(counts: dict) -> str:
    """'2 labelled-set keys and 1 group keys' for the non-zero ``counts`` ('' when none)."""
    return " and ".join(f"{counts[key]} {words} keys" for key, words in UNMATCHED if counts.get(key))
