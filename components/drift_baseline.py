"""What the drift gate compares new ClassStats with: the last accepted distribution.

Each gate decision (``drift.json``) records ``accepted``: the ClassStats it judged when it did
not block, its own baseline when it blocked, and ``accepted_counts``, a copy of their class
counts (``drift_metrics.drift_fields``), so a deleted artifact can still be compared with.
``accepted_baseline`` reads the previous decision (handed over by the latest-artifact resolver):

- the ClassStats it accepted, or the copy of their counts when the artifact is gone;
- the same ClassStats as this run's (unchanged data, ClassStatsGen cached): the previous
  decision is repeated against its own baseline, with its status (the data was accepted then);
- without a readable decision (a first run, reports gone): the latest ClassStats, unless they
  are this run's own; with the accepted ones gone and no copy: ``lost`` (nothing accepted to
  compare with: the gate blocks rather than judge against unaccepted data).

``new_images`` handles ``data.num_spans`` windows: a window shares images with the accepted
one, and compared whole, a shift that arrives span by span is diluted by the overlap and passes
run after run. The images the accepted ClassStats did not count are judged alone. A blocked
decision lists the images it did not accept (``held_back``); while a window still holds them the
gate blocks again, and the new images beside them are judged without them (judged together, a
new normal span halved the blocked span's shift and let it be trained on).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Collection, Dict, List, Optional, Tuple

from tfx import types
from tfx.dsl.io import fileio

from segbalance.contract import BLOCKED_IMAGES_FILE, DRIFT_FILE, STATS_FILE


@dataclass
class Baseline:
    """What the gate compares with: the ClassStats URI, their content (None: nothing to compare
    with), a note; ``lost``: the accepted ones are gone with no copy; ``repeat``: the status of the
    decision that accepted these same ClassStats (unchanged data)."""

    uri: Optional[str]
    stats: Optional[dict]
    note: Optional[str] = None
    lost: bool = False
    repeat: Optional[str] = None
    from_artifact: bool = False  # stats read from the artifact (its per-image table is there too)
    _rows: Any = field(default=None, repr=False, compare=False)

    def per_image(self):
        """The per-image table of the ClassStats at ``uri``, read once: the gate matches the new images
        against it and draws its bootstrap from it (it read the table twice)."""
        if self._rows is None:
            from segbalance.trainer.class_stats_io import read_per_image

            self._rows = read_per_image(self.uri)
        return self._rows


def accepted_by(judged: Dict[str, Any]) -> Optional[str]:
    """The ClassStats URI a gate decision (a ``drift.json``) accepted: its ``accepted`` field; for
    reports written before it existed, the baseline when it blocked, else the ClassStats it judged."""
    if "accepted" in judged:
        return judged["accepted"]
    return judged.get("baseline") if judged.get("status") == "blocked" else judged.get("current")


def _stats_at(uri: Optional[str]) -> Optional[dict]:
    from segbalance.trainer.class_stats_io import read_class_stats

    if not uri or not fileio.exists(os.path.join(uri, STATS_FILE)):
        return None
    return read_class_stats(uri)


def accepted_baseline(current_uri: str, latest_uri: Optional[str], previous_reports: List[types.Artifact]) -> Baseline:
    """The baseline of this run (see the module docstring); ``latest_uri``: the resolver's latest
    ClassStats (None on a first run)."""
    for report in previous_reports:
        path = os.path.join(report.uri, DRIFT_FILE)
        if not fileio.exists(path):
            continue
        with fileio.open(path) as f:
            judged = json.loads(f.read())
        accepted = accepted_by(judged)
        if not accepted:
            return Baseline(None, None, f"the last gate ({report.uri}) accepted no ClassStats yet: nothing to "
                                        f"compare with")
        if accepted == current_uri and judged.get("current") == current_uri:
            # unchanged data the last gate accepted: its decision again, against its baseline
            earlier = judged.get("baseline")
            from_artifact = _stats_at(earlier)
            stats = from_artifact if from_artifact is not None else (judged.get("baseline_counts") if earlier else None)
            if not earlier or stats is not None:
                then = "" if earlier else ", with nothing to compare them with then"
                return Baseline(earlier, stats, f"the same ClassStats the last gate accepted ({report.uri}, "
                                                f"{judged.get('status')}{then}): its decision, repeated",
                                repeat=judged.get("status"), from_artifact=from_artifact is not None)
        stats = _stats_at(accepted)
        if stats is not None:
            if accepted == current_uri:
                return Baseline(accepted, stats, f"these ClassStats were accepted by the last gate ({report.uri}): "
                                                 f"the data is unchanged", from_artifact=True)
            if accepted != latest_uri:
                whose = ("these ClassStats (the same data)" if latest_uri == current_uri
                         else f"the latest ones ({latest_uri})")
                return Baseline(accepted, stats, f"compared with the ClassStats the last gate accepted ({report.uri}), "
                                                 f"not {whose}: those were blocked, or their run stopped before "
                                                 f"the gate", from_artifact=True)
            return Baseline(accepted, stats, from_artifact=True)
        if judged.get("accepted_counts"):
            return Baseline(accepted, judged["accepted_counts"],
                            f"the ClassStats the last gate accepted ({accepted}) are gone: compared with the copy "
                            f"of their counts in {path}")
        return Baseline(None, None, f"the ClassStats the last gate accepted ({accepted}) are gone and {path} keeps "
                                    f"no copy of them: nothing accepted to compare with", lost=True)
    if latest_uri is None:
        return Baseline(None, None)  # a first run: compare() says so
    if latest_uri == current_uri:
        return Baseline(None, None, "no gate decision was recorded: nothing to compare with")
    stats = _stats_at(latest_uri)
    if stats is None:
        return Baseline(None, None, f"the latest ClassStats ({latest_uri}) are gone and no gate decision was "
                                    f"recorded: nothing to compare with", lost=True)
    return Baseline(latest_uri, stats, from_artifact=True)


def accepted_images(base: Baseline) -> Optional[Tuple[Any, Any, Optional[list]]]:
    """(pixel counts [B, classes] in the accepted ClassStats' class order, has-missing flags [B], group ids
    [B] (None for an image without one; the list None for a table written before they were recorded)) of
    the images the accepted ClassStats counted, from their per-image table; None when only the copy of
    their counts is left or the table is missing or does not fit the class list."""
    import numpy as np

    if base.stats is None or not base.from_artifact:
        return None
    try:
        rows = base.per_image()
        counts = np.array([list(c) for c in rows["pixel_counts"]], np.float64)
        missing = np.array([len(m) > 0 for m in rows["missing"]], bool)
    except (OSError, ValueError, KeyError):
        return None
    if len(rows) == 0 or counts.ndim != 2 or counts.shape[1] != len(base.stats["class_names"]):
        return None
    return counts, missing, group_ids(rows)


def group_ids(rows) -> Optional[list]:
    """The ``group_id`` column of a per-image table as a list (None for images without one); None when
    the table has no such column (written before session 26)."""
    if "group_id" not in rows:
        return None
    return [g if isinstance(g, str) else None for g in rows["group_id"]]


def group_count(rows) -> Optional[int]:
    """How many groups the images of a per-image table come from, an image without ``group_id`` being
    one of its own; None without the column."""
    from segbalance.components.drift_metrics import group_index

    ids = group_ids(rows)
    return None if ids is None else group_index(ids)[1]


@dataclass
class Window:
    """What the gate judges: ``judged`` (class counts of the images the accepted ClassStats did not
    count, or ``current`` whole), ``shared`` (images counted before), ``held`` (images an earlier gate
    blocked that are still in the data), ``judged_images`` (the judged images; None without per-image
    tables). Images are ``{"source_id", "pixel_counts"}``: a blocked image is held back only while its
    counts are the same (a corrected mask re-delivered under the same name is judged anew)."""

    judged: dict
    shared: int = 0
    held: List[dict] = field(default_factory=list)
    judged_images: Optional[List[dict]] = None
    judged_groups: Optional[int] = None  # how many groups the judged images come from (``group_count``)
    judged_table: Any = None  # the judged images' per-image rows (a DataFrame; None without per-image tables)


def _image(source_id, pixel_counts, class_names, content=None) -> dict:
    """An image as a blocked decision records it: its counts by class name, classes without pixels left
    out, so a class added to classes.names later (a 0 at the end of every row) changes no image; and the
    CRC-32 of its bytes (``content_crc32``) where the per-image table has it (from session 26)."""
    image = {"source_id": str(source_id),
             "pixel_counts": {name: int(n) for name, n in zip(class_names, pixel_counts) if int(n)}}
    if content is not None and content == content:  # not None / NaN (a table without the column)
        image["content_crc32"] = int(content)
    return image


def _images(rows, class_names) -> List[dict]:
    """``_image`` of every row of a per-image table."""
    contents = rows["content_crc32"] if "content_crc32" in rows else [None] * len(rows)
    return [_image(sid, counts, class_names, content)
            for sid, counts, content in zip(rows["source_id"], rows["pixel_counts"], contents)]


def _without_content(image: dict) -> dict:
    return {k: v for k, v in image.items() if k != "content_crc32"}


def _known(image: dict, keys: Collection[str]) -> bool:
    """Whether ``image`` is among ``keys`` (``_key``s): with its content, or by id and counts where the
    recorded image has no content (recorded before session 26)."""
    return _key(image) in keys or _key(_without_content(image)) in keys


def _key(image: dict) -> str:
    return json.dumps([image["source_id"], sorted(image["pixel_counts"].items())]
                      + ([image["content_crc32"]] if "content_crc32" in image else []))


def held_back(previous_reports: List[types.Artifact]) -> Tuple[Dict[str, dict], Optional[str]]:
    """({``_key``: image} of every image a gate blocked and no run has accepted since; the last report's
    URI). Each decision carries the list forward in ``BLOCKED_IMAGES_FILE`` (JSON lines of ``{"source_id",
    "pixel_counts": {class name: count}}``), a passing one too: a blocked span that a later window of
    another size takes in again is still known (QA: it came back diluted and was trained on)."""
    for report in previous_reports:
        path = os.path.join(report.uri, BLOCKED_IMAGES_FILE)
        if fileio.exists(path):
            with fileio.open(path) as f:
                images = [json.loads(line) for line in f.read().splitlines() if line]
            return {_key(image): image for image in images}, report.uri
        blocked = blocked_by_old_report(report.uri)
        if blocked:
            return blocked, report.uri
    return {}, None


def blocked_by_old_report(uri: str) -> Dict[str, dict]:
    """{``_key``: image} of the images a blocked decision written before ``BLOCKED_IMAGES_FILE`` existed
    (before 2026-12-05) judged: those of the ClassStats it judged (``current``) that its baseline's did
    not count; {} for a decision that passed, or whose tables are gone. QA 61: the list was read from
    the file only, so a span an older version blocked was trained on, pushed and accepted by the first
    run after an upgrade (judged beside a normal span of its window, its shift diluted)."""
    from segbalance.trainer.class_stats_io import read_class_stats, read_per_image

    path = os.path.join(uri, DRIFT_FILE)
    if not fileio.exists(path):
        return {}
    with fileio.open(path) as f:
        judged = json.loads(f.read())
    current, baseline = judged.get("current"), judged.get("baseline")
    # a decision since the file came (with the vanished-class rule, 322ba35) wrote it when it held any image
    written_since = "vanished_class_chance" in (judged.get("thresholds") or {})
    if judged.get("status") != "blocked" or not current or written_since:
        return {}
    try:
        of = lambda uri: _images(read_per_image(uri), read_class_stats(uri)["class_names"])  # noqa: E731
        before = {_key(image) for image in of(baseline)} if baseline else set()
        images = of(current)
    except (OSError, ValueError, KeyError):  # tables deleted or unreadable: nothing known to hold back
        return {}
    return {_key(image): image for image in images if not _known(image, before)}


def still_blocked(before: Dict[str, dict], held: List[dict], judged: List[dict], blocked: bool) -> Dict[str, dict]:
    """{``_key``: image} of the images no run has accepted after this decision: ``before``'s, plus the
    judged ones when it blocked them; a decision that passes (or warns) accepts the ``held`` images its
    data holds."""
    remaining = dict(before)
    if blocked:
        for image in held:  # recorded before session 26 without its content: now with it, once
            remaining.pop(_key(_without_content(image)), None)
        remaining.update({_key(image): image for image in held + judged})
    else:
        for image in held:  # accepted: recorded with its content, or (before session 26) without
            remaining.pop(_key(image), None)
            remaining.pop(_key(_without_content(image)), None)
    return remaining


def blocked_lines(images: Dict[str, dict]) -> str:
    """``BLOCKED_IMAGES_FILE``'s content for ``images`` ({``_key``: image}, as ``still_blocked`` gives)."""
    return "".join(json.dumps(images[key]) + "\n" for key in sorted(images))


def new_images(current_uri: str, current: dict, baseline: Optional[Baseline],
               blocked: Collection[str] = frozenset()) -> Window:
    """Split ``current`` by ``image/source_id`` and class counts in the per-image tables: the images
    ``baseline``'s ClassStats (read from their artifact) counted (the same id and counts: a ``data.num_spans`` window shares them
    with the accepted window), those an earlier gate ``blocked`` (the same id and counts, still
    unaccepted), and the rest, which are judged alone: a shift that arrives span by span is not diluted by
    the overlap, and a blocked span is not diluted by a new normal one beside it. An image under an earlier
    image's name with other counts is new (deliveries that number their files from 1 each time: until
    session 26 the gate took them for the accepted images and judged only the rest). With nothing new
    besides blocked images those are judged; with nothing new at all (the same data) ``current`` is judged
    whole."""
    from segbalance.trainer.class_stats_io import read_per_image

    try:
        rows = read_per_image(current_uri)
        before = set()
        if baseline is not None:
            before = {_key(image) for image in _images(baseline.per_image(), baseline.stats["class_names"])}
    except (OSError, ValueError, KeyError):
        return Window(current)
    if len(rows) == 0:
        return Window(current)
    every = _images(rows, current["class_names"])
    is_new = [not _known(image, before) for image in every]
    new = rows[is_new]
    images = [image for image, unseen in zip(every, is_new) if unseen]
    is_held = [_known(image, blocked) for image in images]
    held = [image for image, h in zip(images, is_held) if h]
    fresh = new[[not h for h in is_held]]
    judged = fresh if len(fresh) else new
    judged_images = [image for image, h in zip(images, is_held) if not h] if len(fresh) else images
    window = Window(current, len(rows) - len(new), held, judged_images)
    if len(judged) in (0, len(rows)):  # the same data, or every image is new: compared whole
        window.judged_groups, window.judged_table = group_count(rows), rows
        return window
    window.judged_groups, window.judged_table = group_count(judged), judged
    counts = [0] * len(current["class_names"])
    for pixel_counts in judged["pixel_counts"]:
        for i, n in enumerate(pixel_counts):
            counts[i] += int(n)
    window.judged = {"class_names": list(current["class_names"]), "pixel_counts": counts,
                     "num_records": len(judged),
                     "images_with_missing": int(sum(bool(len(m)) for m in judged["missing"]))}
    return window


def judged_presence(window: Window, names: List[str], class_names: List[str], accepted_rows, accepted_groups):
    """``drift_metrics.compare``'s ``presence`` for the judged images of ``window`` against the accepted ones
    (``accepted_rows`` aligned to ``names``): in groups when both sides' tables record group ids, else in
    images; None without the judged images' per-image table."""
    from segbalance.components.drift_metrics import aligned_rows, class_presence

    table = window.judged_table
    if table is None or len(table) == 0:
        return None
    rows = aligned_rows(names, class_names, [list(c) for c in table["pixel_counts"]])
    new_groups = group_ids(table)
    if accepted_groups is None or new_groups is None or \
            all(g is None for g in [*accepted_groups, *new_groups]):  # no image has a group: images (QA 26)
        accepted_groups = new_groups = None
    new_held, new_units, unit = class_presence(rows, new_groups)
    accepted_held, accepted_units, _ = class_presence(accepted_rows, accepted_groups)
    return {"new": (new_held, new_units), "accepted": (accepted_held, accepted_units), "unit": unit}
