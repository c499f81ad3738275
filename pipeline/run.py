"""`segbalance run [--config FILE] [--data DIR] [--output-dir DIR] [--verbose]`: the pipeline, locally.

With no flags: writes the shapes sample data (annotations dropped in 30% of the images with a foreground class),
ingests it, runs the whole DAG with LocalDagRunner (SQLite ML Metadata in the output
directory, caching on) and prints where the report, the class statistics and the pushed
model are, the span(s) ExampleGen read, and the model's mIoU on the complete masks.

``--data DIR`` takes either a folder with ``images/`` and ``masks/`` (plus optional
``labeled.json``, ``groups.json`` (each image's scene: the drift gate counts in groups, and
``data.split_by: group`` splits on them), ``classes.json``,
``masks_full/``), or a folder of ``Span-N/`` TFRecords written by ``segbalance ingest --span
N``. ImportExampleGen reads the latest span (the last K with ``data.num_spans: K``), so an
images/ + masks/ folder is ingested into OUTPUT/data as its next span: ``Span-0`` the first
time, one above the highest ``Span-N`` when OUTPUT/data already holds spans; unchanged data is
not ingested again. The summary (console and run_summary.json) names the span(s) read, as ML
Metadata records them. Re-running with unchanged data and config reuses every cached result.

TensorFlow, Beam, TFX and Keras messages go to OUTPUT/logs/run-<time>.log, not the console
(``--verbose`` shows them on the console instead).

Exit status: 0 the run finished (its model pushed, or not blessed and the summary says why); 2 a
mistake in the options, the config or the data (one line says what to do); 3 the drift gate blocked
the new data (nothing trained on it was pushed; run_summary.json ``drift`` and its drift.json say why
and how to accept it), so a scheduler (cron, a systemd timer) sees the run that needs a person;
130 interrupted (Ctrl-C), 143 stopped by SIGTERM (`systemctl stop`, `timeout`); after either,
run_summary.json says ``interrupted`` and the same command resumes.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import time
from pathlib import Path
from typing import Optional, Tuple

from segbalance.contract import CLASS_NAMES_FILE, GROUPS_FILE, UserError, names_listed
from segbalance.pipeline import stop_signals
from segbalance.pipeline.config import ConfigError, PipelineConfig, load_config, read_values
from segbalance.trainer.remote_files import is_remote
from segbalance.trainer.training_config import ClassesConfig

FINGERPRINT_FILE = "source_fingerprint.json"  # read only: where versions before the span's marker recorded it
SOURCE_KEY = "run_source"  # a span's marker: the folder `run` ingested into it (fingerprints)
# the drift gate blocked the new data: not a failure of the run, but one a person must look at; a 0 made a
# blocked scheduled run look like a good one to cron and systemd (only run_summary.json told)
EXIT_DRIFT_BLOCKED = 3


# --------------------------------------------------------------------------- data
def _fingerprint(folder: Path, options: dict) -> str:
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())  # what ingest checks masks against
    grouped = [GROUPS_FILE] if options.get("split_by") == "group" else []
    for sub in ("images", "masks", "labeled.json", *grouped):
        path = folder / sub
        files = sorted(path.iterdir()) if path.is_dir() else ([path] if os.path.lexists(path) else [])
        for f in files:
            st = f.stat() if f.exists() else f.lstat()  # a link to nothing: ingest names it (QA 69: a traceback)
            digest.update(f"{sub}/{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def check_data_folder(source: Path) -> None:
    """Refuse a data folder that `run` cannot train on, before anything is written: IngestError
    naming the folder and what to put there."""
    from segbalance.pipeline.ingest import IMAGE_SUFFIXES, MASK_SUFFIXES, IngestError
    from segbalance.pipeline.spans import list_spans, next_span

    if not source.is_dir():
        raise IngestError(f"data folder {source} does not exist or is not a folder; point --data at a folder "
                          f"with images/ and masks/, or at Span-N/ folders written by `segbalance ingest`")
    if any(p.is_dir() for p in source.glob("Span-*")):
        if not list_spans(source):
            raise IngestError(f"data folder {source}: its Span-N/ folders hold no data-* files; write a span with "
                              f"`segbalance ingest IMAGES MASKS --output {source} --span N`")
        pairs = [sub for sub in ("images", "masks") if (source / sub).is_dir()]
        if pairs:  # which would it train on? Span-N/ (read as they are) and images/ (ingested) are two data sets
            # (ingest refuses an --output that holds its inputs: the advice moves them out first, QA 63)
            raise IngestError(f"data folder {source} holds both Span-N/ folders and {' and '.join(pairs)}/: run would "
                              f"read the spans and leave the image files unused; move images/ and masks/ out of it "
                              f"(to NEW/, say) and ingest them as its next span (`segbalance ingest NEW/images "
                              f"NEW/masks --output {source} --span {next_span(source)}`), or point --data at a folder "
                              f"with only one of the two")
        return
    for sub, suffixes, what in (("images", IMAGE_SUFFIXES, "image"), ("masks", MASK_SUFFIXES, "mask")):
        folder = source / sub
        if not folder.is_dir():
            raise IngestError(f"data folder {source} has no {sub}/ folder: put the {what} files in {folder} "
                              f"(one per image, same file stem), or point --data at Span-N/ folders written by "
                              f"`segbalance ingest`")
        if not any(p.is_file() and p.suffix.lower() in suffixes for p in folder.iterdir()):
            subs = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                          and any(f.is_file() and f.suffix.lower() in suffixes for f in p.iterdir()))
            inside = (f"; its sub-folders {', '.join(subs[:3])}{', ...' if len(subs) > 3 else ''} hold some, and run "
                      f"reads only the files directly in {sub}/: give one data set's files there (a train / val "
                      f"split is made by the pipeline, data.split_by)" if subs else "")  # (QA 89 L3)
            raise IngestError(f"data folder {source}: {folder} holds no {what} files ({', '.join(suffixes)}){inside}")


def _ensure_sample(config: PipelineConfig, sample_dir: Path) -> Path:
    from segbalance.pipeline import sample_data

    s = config.data.sample
    if sample_data.cached_sample(sample_dir, **vars(s)):
        print(f"sample data: reusing {sample_dir}", flush=True)
    else:
        print(f"sample data: wrote {s.num_images} {s.kind} images to {sample_dir}", flush=True)
    return sample_dir


def _read_stamp(stamp: Path) -> dict:
    try:
        return json.loads(stamp.read_text())
    except (OSError, ValueError):
        return {}


def _recorded_source(examples_dir: Path, span: int) -> dict:
    """What `run` recorded of the folder it ingested as ``Span-<span>`` (fingerprints, ``with_groups``):
    the span's marker, else ``source_fingerprint.json`` (spans written before the marker held it) when
    it names that span; {} for a span `run` did not ingest."""
    from segbalance.pipeline import output_guard

    marker = examples_dir / f"Span-{span}" / output_guard.MARKER
    recorded = (output_guard.read_marker(marker.parent) or {}).get(SOURCE_KEY)
    if isinstance(recorded, dict):
        return recorded
    stamp_path = examples_dir / FINGERPRINT_FILE
    stamp = _read_stamp(stamp_path)
    if stamp.get("span", 0) != span:
        return {}
    with contextlib.suppress(OSError):  # the span written again after the stamp (`ingest --overwrite`): not that data
        if marker.stat().st_mtime_ns > stamp_path.stat().st_mtime_ns:
            return {}
    # a stamp older than plain_fingerprint (4984419 and before): its fingerprint is the plain one where that
    # run read no groups (else the grouped one, which `fingerprint` matches); QA 61: such a folder with a
    # groups.json was ingested again as a new span, and a window trained on every image twice
    return {"plain_fingerprint": stamp.get("fingerprint"), **stamp}


def ingest_as_next_span(config: PipelineConfig, source: Path, examples_dir: Path) -> int:
    """Ingest an images/ + masks/ folder into ``examples_dir`` as the span ImportExampleGen will read.

    ImportExampleGen reads the latest ``Span-N/``, so fresh data becomes the next span: Span-0
    in a new folder, one above the highest ``Span-N/`` when the folder already holds spans (from
    earlier runs or `segbalance ingest --span N`). Unchanged data (same files, sizes, times,
    class count and ignore index) whose span is still the latest is reused. ``source/groups.json``,
    when there, gives the records their ``image/group_id`` whatever ``data.split_by`` (the drift
    gate counts in groups; ``split_by: group`` also splits on them). Returns the span.
    """
    from segbalance.pipeline import ingest
    from segbalance.pipeline.spans import list_spans, next_span

    groups_file = source / GROUPS_FILE
    # there in any form (a folder, a link to nothing): read, so that it is refused by name (QA 69: a folder
    # named labeled.json was passed over, the images trained as complete)
    groups = ingest.load_groups(groups_file) if os.path.lexists(groups_file) else None
    if config.data.split_by == "group":
        check_group_split(config, groups, groups_file)
    # "split_by": "group" means "with group ids" (the key of earlier versions, kept: their spans stay reused)
    options = {"num_classes": config.num_classes, "ignore_index": config.classes.ignore_index,
               **({"split_by": "group"} if groups is not None else {})}
    fingerprint = _fingerprint(source, options)
    plain = {k: v for k, v in options.items() if k != "split_by"}
    plain_fingerprint = _fingerprint(source, plain) if plain != options else fingerprint
    spans = list_spans(examples_dir)
    recorded = _recorded_source(examples_dir, spans[-1]) if spans else {}
    # unchanged data is reused, also when only its groups changed and the split does not use them: ingesting
    # the same images again made a window train on them twice (a split by group needs the new group ids)
    regrouped = recorded.get("fingerprint") != fingerprint
    full = source / "masks_full"  # complete masks: kept with the span, so later runs over it score against them
    full = full if config.data.reference_masks_dir is None and full.is_dir() else None
    if spans and (not regrouped or (recorded.get("plain_fingerprint") == plain_fingerprint
                                    and (groups is None or config.data.split_by == "record"))):
        print(f"ingest: {source} unchanged, reusing {examples_dir / f'Span-{spans[-1]}'}", flush=True)
        if full is not None:  # they may have changed (or be new: spans of earlier versions kept none)
            keep_references(examples_dir / f"Span-{spans[-1]}", full, config, source / "images")
        if regrouped and groups is not None:  # the span keeps its records: a window must not train on them twice
            earlier = recorded.get("with_groups")
            print(f"ingest: note: {examples_dir / f'Span-{spans[-1]}'} was ingested before {groups_file} "
                  f"{'changed' if earlier else 'was read'}: its records keep {'the earlier' if earlier else 'no'} "
                  f"group ids, which the drift gate counts in; the next span ingested from this folder takes the "
                  f"file's", flush=True)
        return spans[-1]
    if config.data.split_by == "group" and config.data.num_spans > 1 and spans:
        # the earlier spans the new one joins in the window: refused before the new span is written
        check_span_groups(examples_dir, num_spans=config.data.num_spans - 1)
    labeled_file = source / "labeled.json"
    labeled = ingest.load_labeled(labeled_file, None) if os.path.lexists(labeled_file) else None  # names the file
    too_large = sorted({c for ids in (labeled or {}).values() for c in ids if c >= config.num_classes})
    names_file = source / CLASS_NAMES_FILE
    add_names = (f"add the missing class names to {names_file}" if names_file.is_file() else
                 "add the missing class names to classes.names in the config")
    if too_large:
        raise ConfigError(f"classes.names lists {config.num_classes} classes, but {labeled_file} lists class ids "
                          f"{too_large[:10]}; {add_names} (or fix {labeled_file})")
    span = next_span(examples_dir)

    def ingest_once(options: str) -> str:
        """The ingest to run once for what `run` takes no option for, with everything the folder holds (QA 78: the
        advice left out labeled.json, groups.json and masks_full/, so following it lost the partial annotations)."""
        extra = [f"--{flag} {shlex.quote(str(source / name))}" for flag, name in (
            ("labeled", "labeled.json"), ("groups", GROUPS_FILE), ("reference-masks", "masks_full"))
            if os.path.lexists(source / name)]
        command = " ".join(["segbalance ingest", shlex.quote(str(source / "images")),
                            shlex.quote(str(source / "masks")), options, *extra, "--output",
                            shlex.quote(str(examples_dir)), "--span", str(span)])
        return (f"ingest them once with `{command}`, then `segbalance run --data {shlex.quote(str(examples_dir))}` "
                f"(with the same --config and --output-dir)")

    palette = ingest_once("--palette PALETTE.json")
    palette_hint = f"colour (RGB) masks need a palette, which `run` does not take: {palette}"
    grey_hint = f"masks that hold their classes as grey levels need a palette, which `run` does not take: {palette}"
    recorded = {"fingerprint": fingerprint, "source": str(source), "span": span,
                "plain_fingerprint": plain_fingerprint, "with_groups": groups is not None}
    try:  # what run ingested is recorded in the span's own marker, renamed into place with its records
        result = ingest.ingest(source / "images", source / "masks", examples_dir, span=span,
                               options=ingest.IngestOptions(num_classes=config.num_classes,
                                                            ignore_index=config.classes.ignore_index,
                                                            labeled=labeled, groups=groups,
                                                            groups_source=str(groups_file),
                                                            labeled_source=str(labeled_file)),
                               marker_extra={SOURCE_KEY: recorded})
    except ingest.IngestError as exc:
        if "ungrouped_images" in exc.codes and config.data.split_by == "record":
            raise ingest.IngestError(f"{exc}; or remove {groups_file} (with data.split_by: record it only lets "
                                     f"the drift gate count in groups)") from None
        if ingest.NAMES_DIFFER in exc.codes:  # (Cityscapes-like names: a_leftImg8bit.png / a_gtFine_labelIds.png)
            named = " and ".join(n for n, there in ((labeled_file.name, labeled is not None),
                                                     (GROUPS_FILE, groups is not None)) if there)
            keys = f" (the keys of {named} are then the stems without the endings)" if named else ""
            raise ingest.IngestError(f"{exc}; `run` does not take these options: "
                                     f"{ingest_once(exc.pairing_options)}{keys}") from None
        if "rgb_mask_without_palette" in exc.codes:  # nothing written, pairs refused for want of a palette
            raise ingest.IngestError(f"{exc}; {palette_hint}") from None
        if ingest.GREY_LEVELS in str(exc):  # (the first bad pair's reason offers a --palette of grey levels)
            raise ingest.IngestError(f"{exc}; {grey_hint}") from None
        raise
    # a few such masks are broken files, skipped and listed like any bad pair; more, and the config lacks class
    # names, as the trainer judges it (said here in the config's terms, so ingested first and removed)
    out_of_range, readable = ingest.unnamed_ids(result.bad, result.written)
    few = not ingest.too_many_unnamed_ids(out_of_range, readable)
    if out_of_range and few:
        print(f"ingest: warning: {ingest.unnamed_ids_problem(out_of_range, readable, config.num_classes)}: skipped as "
              f"bad pairs; if the data has more classes, {add_names}", flush=True)
    elif out_of_range:
        shutil.rmtree(result.target)  # written by this call a moment ago; it must not become the latest span
        grey = f"; {grey_hint}" if ingest.GREY_LEVELS in out_of_range[0]["reason"] else ""
        raise ConfigError(
            f"classes.names lists {config.num_classes} classes but {len(out_of_range)} masks have larger class ids "
            f"(first: {out_of_range[0]['source_id']}: {out_of_range[0]['reason']}); {add_names} (or fix those "
            f"masks){grey}")
    if config.num_classes > 1 and result.written and result.max_class_id <= 0 and result.masks_with_ignore:
        shutil.rmtree(result.target)  # written by this call a moment ago: a span that trains no class is not kept
        raise ConfigError(binary_masks_message(result, source, config, palette))
    if full is not None:  # checked after the masks' own ids, which say more (a class count too small shows in both)
        try:
            keep_references(result.target, full, config, source / "images")
        except UserError:
            shutil.rmtree(result.target)  # written by this call a moment ago: not a span of unusable references
            raise
    held = (f"; {examples_dir} already held span{'s' if len(spans) > 1 else ''} {', '.join(map(str, spans))}, "
            f"so this data is the next span, the one this run reads") if spans else ""
    bad = f", {len(result.bad)} bad pairs skipped (listed in {result.target / ingest.REPORT_NAME})" if result.bad else ""
    print(f"ingest: {len(result.written)} records from {source} to {result.target}{bad}{held}", flush=True)
    if any(b.get("code") == "rgb_mask_without_palette" for b in result.bad):
        print(f"ingest: warning: {palette_hint}", flush=True)
    for unmatched, name in ((result.labeled_unmatched, "labeled.json"), (result.groups_unmatched, GROUPS_FILE)):
        if unmatched:  # on the console, not only in the log: their labelled sets / groups are not used
            print(f"ingest: warning: {len(unmatched)} keys of {source / name} match no image file (first: "
                  f"{', '.join(unmatched[:3])}); keys are image file stems (e.g. 'img_001' for images/img_001.png)",
                  flush=True)
    return span


def binary_masks_message(result, source: Path, config: PipelineConfig, ingest_once: str) -> str:
    """Why a run refuses masks that hold only class 0 and the ignore index: binary masks saved as 0/255
    (QA 68: their foreground was ignored, never learnt; a model with IoU 0 on it was blessed and pushed, and
    `ingest`'s warning reached only the log)."""
    ii = config.classes.ignore_index
    return (f"no mask in {source / 'masks'} holds a class id other than 0 (background), and "
            f"{result.masks_with_ignore} of {len(result.written)} hold {ii}, the ignore index: binary masks saved as "
            f"0/{ii} would train no {config.classes.names[1]!r}. Save the foreground as 1, or {ingest_once} "
            f"(PALETTE.json: {{\"0\": 0, \"1\": {ii}}})")


def keep_references(span_dir: Path, full: Path, config: PipelineConfig, images: Path) -> None:
    """Copy ``full``'s complete masks of the span's records into ``span_dir/reference_masks`` (checked
    first: ReferenceMaskError naming the unusable ones). A run killed before this reuses the span and
    copies them then."""
    from segbalance.pipeline.reference_masks import check_reference_masks, sync_span_references

    check_reference_masks(full, config.num_classes, config.classes.ignore_index, images)
    sync_span_references(span_dir, full)


def adopt_class_names(config: PipelineConfig, names: list, origin: str, binding: bool = True,
                      announce: bool = True) -> None:
    """The data's own class names (a sample kind's, or DATA/classes.json) for a config that left
    ``classes.names`` at its default; names the user gave that differ are a ConfigError, unless not
    ``binding`` (an earlier span's names, ``data_class_names``: the user's own are kept, QA 87 M1). The config
    is checked again with the new class count (per-class vectors, ignore index)."""
    from segbalance.pipeline.config import validate

    if config.classes.names != names:
        if config.classes.names != ClassesConfig().names:  # the user's own names: never replaced
            if not binding:  # an earlier span's names: the user's own stay, unrefused
                return
            raise ConfigError(f"classes.names {config.classes.names} are not {origin} {names}: remove classes.names "
                              f"(the data names its classes), or make the two agree")
        config.classes.names = list(names)
        validate(config)
    if announce:
        print(f"classes: {len(names)} from {origin}: {names_listed(names)}", flush=True)


def data_class_names(config: PipelineConfig) -> Optional[Tuple[list, str, bool]]:
    """(names, where, binding) from the ``classes.json`` of a local ``data.dir`` (of its latest ``Span-N/`` where
    run ingested it, ``class_names_file``); ``binding`` is False for an earlier span's names, which a config's
    own names overrule (``adopt_class_names``); None without one (or for sample data, or a remote folder). A
    malformed file is an IngestError naming it."""
    if config.data.dir is None or is_remote(config.data.dir):
        return None
    from segbalance.pipeline.ingest import CONFIG_CLASSES_HINT, read_class_names
    from segbalance.pipeline.spans import class_names_file

    folder = Path(config.data.dir).resolve()
    classes = class_names_file(folder)
    names = read_class_names(classes, instead=CONFIG_CLASSES_HINT)
    return None if names is None else (names, f"the classes of {classes}", classes == class_names_file(
        folder, older_spans=False))


def keep_class_names(span_dir: Path, names: list) -> None:
    """``Span-N/classes.json``: the class names a span run ingested was written with (ImportExampleGen
    reads ``data-*`` only), so that a later `run --data OUTPUT/data` (the command `segbalance schedule`
    prints) trains the same classes: ``data_class_names`` reads the latest span's. QA 27: it fell back to
    the four default names (a voc sample config's scheduled run was refused, a nuclei one would train
    three classes under the shapes' names); one file for the whole folder went stale when a later span
    had other classes."""
    target = span_dir / CLASS_NAMES_FILE
    text = json.dumps({"class_names": list(names)}, indent=1)
    if target.is_file() and target.read_text() == text:
        return
    from segbalance.pipeline.output_guard import write_text_atomic

    write_text_atomic(target, text)


def check_report_page(path: Path, option: str) -> None:
    """OUTPUT/report.html, which a run replaces with the run's page at its end, must be absent or a page segbalance
    wrote (through a link too: a link to one is written through). QA 73: a user's file there, or behind a link
    there (outside the run folder), was overwritten; a folder there was a traceback after the whole pipeline."""
    from segbalance.pipeline.output_guard import OutputError, link_loops
    from segbalance.pipeline.report_html import is_report

    if not (path.exists() or path.is_symlink()):
        return
    if path.is_symlink() and not path.exists():
        what = "a link that loops" if link_loops(path) else f"a link to nothing ({os.readlink(path)})"
    elif not path.is_file():
        what = "a folder" if path.is_dir() else "not a regular file"
    else:
        with open(path, "rb") as f:
            if is_report(f.read(4096).decode("utf-8", errors="replace")):
                return
        what = (f"a link to {os.path.realpath(path)}, a file" if path.is_symlink() else "a file") + \
            " segbalance did not write"
    raise OutputError(f"{option} {path.parent}: its report.html, which a run replaces with its data report, is {what}: "
                      f"move it out of the folder and run again (nothing was written)")


def check_output_beside_data(output: Path, data: Path, examples_dir: Path, option: str = "--output-dir") -> None:
    """The run directory must not be, or lie inside, the data folder (the run would write into the
    user's data); an images/ + masks/ folder must not lie in OUTPUT/data, where run writes spans.
    (A Span-N folder there, OUTPUT/data itself, is the documented retraining layout.)"""
    from segbalance.pipeline.output_guard import OutputError

    output, spans_dir = output.resolve(), examples_dir.resolve()  # (QA 94 L5: OUTPUT/data a link to the data)
    if output == data or data in output.parents:
        raise OutputError(f"{option} {output} {'is' if output == data else 'is inside'} the data folder {data}: "
                          f"choose an output folder outside the data (nothing was written)")
    spans = any(data.glob("Span-*"))
    if not spans and (data == spans_dir or spans_dir in data.parents):
        # named as a folder, not as --data: it may come from data.dir in the config (QA 65, L1)
        raise OutputError(f"the data folder {data} lies in {examples_dir}, where run writes the spans it ingests: move "
                          f"images/ and masks/ out of it, or give another {option} (nothing was written)")


def check_group_split(config: PipelineConfig, groups: Optional[dict], groups_file: Path) -> None:
    """``data.split_by: group`` needs a group per image, and groups on both sides of the split:
    ConfigError (exit 2) naming the file and what to do, before anything is ingested."""
    from segbalance.pipeline import ingest
    from segbalance.pipeline.dag import split_of

    if groups is None:
        raise ConfigError(f"data.split_by: group needs {groups_file} ({{image stem: group}}, the scene, scan or "
                          f"tile of each image): write it, or set data.split_by: record")
    # the image stems ingest will read (its own lister: image suffixes only)
    images = set(ingest._files_by_stem(groups_file.parent / "images", ingest.IMAGE_SUFFIXES, "image"))
    names = sorted({groups[stem] for stem in images if stem in groups})
    sides = {name: split_of(name, config) for name in names}
    for split in ("train", "eval"):
        if split not in sides.values():
            raise ConfigError(f"data.split_by: group: none of the {len(names)} groups in {groups_file} hashes into "
                              f"the {split} split (data.eval_fraction {config.data.eval_fraction}); give more, "
                              f"smaller groups, or set data.split_by: record")
    evaluated = sum(1 for stem in images if sides.get(groups.get(stem)) == "eval")
    print(f"data: split by group: {sum(v == 'eval' for v in sides.values())} of {len(names)} groups "
          f"({evaluated} of {len(images)} images) in the eval split", flush=True)


def check_span_groups(spans_dir: Path, span: Optional[int] = None, num_spans: int = 1) -> None:
    """``data.split_by: group`` on Span-N/ folders: the records of ``span``, else of the latest
    ``num_spans`` spans (what ImportExampleGen reads), must carry image/group_id (ImportExampleGen
    fails on the first record without it). One record per span: a span is one ingest."""
    import tensorflow as tf

    from segbalance.contract import GROUP_KEY
    from segbalance.pipeline.spans import list_spans

    spans = [span] if span is not None else list_spans(spans_dir)[-num_spans:]
    for folder in (spans_dir / f"Span-{n}" for n in spans):
        for record in tf.data.TFRecordDataset(sorted(str(p) for p in folder.glob("data-*"))).take(1):
            if GROUP_KEY not in tf.train.Example.FromString(record.numpy()).features.feature:
                raise ConfigError(f"data.split_by: group: the records in {folder} have no {GROUP_KEY}; ingest them "
                                  f"again with `segbalance ingest ... --groups FILE.json`, or set data.split_by: "
                                  f"record")


def prepare_data(config: PipelineConfig, paths: dict) -> Tuple[str, Optional[str]]:
    """(folder of Span-N/ for ImportExampleGen, reference masks dir or None); generates/ingests as needed.

    A Span-N/ folder is read as it is (its latest span; the last K with data.num_spans: K). An
    images/ + masks/ folder is ingested into OUTPUT/data as its next span (``ingest_as_next_span``)
    and then read the same way, so what `run` says it ingested is the span ExampleGen reads."""
    reference = config.data.reference_masks_dir
    if config.data.dir is None:
        source = _ensure_sample(config, Path(paths["sample_dir"]))
        if config.data.sample.kind != "shapes":
            names = json.loads((source / CLASS_NAMES_FILE).read_text())["class_names"]
            adopt_class_names(config, names, f"the {config.data.sample.kind} sample's classes")
    else:
        source = Path(config.data.dir).resolve()
        found = data_class_names(config)
        if found is not None:
            adopt_class_names(config, *found)
    from segbalance.pipeline.ingest import clean_stale

    for folder in (source, Path(paths["examples_dir"])):  # a span a killed `ingest --overwrite` moved aside
        clean_stale(folder)  # is put back before the latest span is chosen (else an older one was read)
    spans = any(source.glob("Span-*"))
    if spans:
        spans_dir = source
    else:
        spans_dir = Path(paths["examples_dir"])
        span = ingest_as_next_span(config, source, spans_dir)  # first: its checks of the masks' ids say more
        keep_class_names(spans_dir / f"Span-{span}", config.classes.names)
    if config.data.split_by == "group":  # every span read, also earlier spans of OUTPUT/data
        check_span_groups(spans_dir, num_spans=config.data.num_spans)
    read_dir = spans_dir
    if config.data.num_spans > 1:
        from segbalance.pipeline.spans import span_window

        read_dir = Path(paths["output_dir"]) / "span_window"
        used = span_window(spans_dir, config.data.num_spans, read_dir)
        print(f"data: training on spans {used} of {spans_dir} (data.num_spans = {config.data.num_spans}), "
              f"linked in {read_dir}", flush=True)
    if reference is None:  # the complete masks the spans read keep (ingest --reference-masks, run of masks_full/)
        reference = span_references(read_dir)
    if reference is not None and not is_remote(reference):  # before any component runs
        from segbalance.pipeline.reference_masks import check_reference_masks
        from segbalance.pipeline.span_records import check_declared_classes

        # the spans' own ids first (their ingest reports): reference masks holding a class the config lacks mostly
        # mean the spans hold it too, and the advice is to name it, not to drop the masks (QA 92 M2)
        check_declared_classes(spans_dir, config)

        # sizes against the images where they are here (a config's folder beside images/ + masks/; QA 65: lost
        # in 6ee0e25); a span's copies were checked so when they were made
        images = source / "images" if not spans and config.data.reference_masks_dir is not None else None
        count = check_reference_masks(Path(reference), config.num_classes, config.classes.ignore_index, images)
        print(f"reference masks: {count} in {reference} (eval images with one are scored against it)", flush=True)
    return str(read_dir), reference


def span_references(spans_dir: Path) -> Optional[str]:
    """The reference masks kept with the latest span of ``spans_dir`` (a span window links those of
    its spans there), or None."""
    from segbalance.contract import REFERENCE_MASKS_FOLDER
    from segbalance.pipeline.spans import list_spans

    latest = list_spans(spans_dir)[-1:]
    folder = spans_dir / f"Span-{latest[0]}" / REFERENCE_MASKS_FOLDER if latest else None
    return str(folder) if folder is not None and folder.is_dir() else None


def check_records_to_read(config: PipelineConfig, examples_dir: Path) -> None:
    """What ImportExampleGen will read (the latest ``Span-N`` of ``examples_dir``; a span window is one
    such folder) parses and fills both splits: SpanRecordError (one line, exit 2) before any component."""
    from segbalance.pipeline.span_records import check_span_records
    from segbalance.pipeline.spans import list_spans

    latest = list_spans(examples_dir)[-1:]
    split = check_span_records(examples_dir, latest, config)
    print(f"data: {split['train']} training and {split['eval']} eval records in {examples_dir}/Span-{latest[0]}",
          flush=True)
    repeated = split["repeated"]
    if repeated:  # QA 25: a drop folder ingested whole each time put its old images in every span of a window
        names = ", ".join(sorted(repeated)[:3]) + (", ..." if len(repeated) > 3 else "")
        where, advice = (("of another span", "give a new span only its new images, or set data.num_spans: 1")
                         if config.data.num_spans > 1 else  # (QA 94 L10: one span's copies were said another's)
                         ("in the span", "remove the copies from the data and ingest it again as a new span"))
        print(f"data: note: {sum(repeated.values())} records repeat an identical record {where} ({len(repeated)} "
              f"images: {names}): each copy is counted and trained on; {advice}", flush=True)


# --------------------------------------------------------------------------- run
def run_local(config: PipelineConfig, with_drift: bool = True, verbose: bool = False, announce: bool = False,
              output_option: str = "--output-dir", **pipeline_options) -> dict:
    """Run the DAG locally; returns the summary that `segbalance run` prints.

    Library output goes to OUTPUT/logs/run-<time>.log (``run_log``; on the console too with
    ``verbose``). A data folder run cannot use is refused before anything is written. ``announce``:
    print where the output goes once every check has passed and the pipeline starts (a refused run
    prints its one error line only). ``output_option``: how messages name the output folder (the
    option or config field it came from)."""
    from segbalance.pipeline.dag import local_paths
    from segbalance.pipeline.run_lock import cancel_abandoned, exclusive_run
    from segbalance.pipeline.run_log import LibraryLog, route_absl, unroute_absl

    paths = local_paths(config.output_dir)
    if config.data.dir is not None:
        check_data_folder(Path(config.data.dir).resolve())
    if config.training.backbone and config.training.backbone_weights is not None:  # (imports Keras: only then)
        from segbalance.trainer.model import check_backbone_weights

        check_backbone_weights(config.training)  # offline without cached ImageNet weights: now, not at SegTrainer
    if config.training.devices:  # (imports TensorFlow: only then)
        from segbalance.trainer.task import check_devices

        check_devices(config.training.devices)  # now, not at SegTrainer's first step
    if getattr(config.training.pixel_weights, "model", None):  # a feature extractor (imports Keras: only then)
        from segbalance.trainer.data import feature_extractor

        feature_extractor(config.training.pixel_weights.model, config.training.pixel_weights.layer)  # loads or refuses
    from segbalance.pipeline import output_guard

    if config.data.dir is not None and not is_remote(config.data.dir):  # (first: it says more of a data folder in
        check_output_beside_data(Path(paths["output_dir"]), Path(config.data.dir).resolve(),  # OUTPUT/data)
                                  Path(paths["examples_dir"]), output_option)
    output_guard.check_run_dir(paths["output_dir"], output_option)  # new, empty or an earlier run's: never a user's folder
    check_report_page(Path(paths["report"]), output_option)
    # made by this call or found; one that cannot be made is one line (QA 69: /proc/x, a traceback)
    created = output_guard.make_folder(Path(paths["output_dir"]), output_option)
    output_guard.write_marker(paths["output_dir"], "run")  # a later run may write here again; nothing else is ours
    pipeline_started = False  # from then on the folder holds a run's artifacts and metadata: kept
    with exclusive_run(paths["output_dir"], output_option):  # one run per folder; a second is refused (exit 2)
        from segbalance.pipeline import run_summary

        killed = run_summary.take_killed_run(paths["output_dir"])  # its stub: the summary before it stays previous
        previous = run_summary.set_aside_summary(paths["output_dir"])  # never read as this run's
        if killed:  # the one before the killed run, still in place
            previous = run_summary.kept_previous_summary(paths["output_dir"])
        killed_note = {"killed_run": killed} if killed else {}  # recorded in whatever summary this run leaves
        log_path = None
        try:
            run_summary.write_summary(paths["output_dir"], {**run_summary.running_summary(previous), **killed_note})
            abandoned = cancel_abandoned(paths["metadata"])
            if abandoned:
                print(f"metadata: {abandoned} execution(s) an earlier run left unfinished (it was stopped) marked "
                      f"CANCELED", flush=True)
            with LibraryLog(os.path.join(paths["output_dir"], "logs"), verbose=verbose) as log:
                log_path = str(log.path)
                # (inside the log: the import brings TFX and TensorFlow, whose start-up lines belong there)
                from segbalance.components.staged_pusher import remove_stale_staging

                for stale in remove_stale_staging(paths["serving_model_dir"]):  # under the lock: no push under way
                    print(f"Pusher: removed {stale}, the unfinished copy of a push that was stopped (never served)",
                          flush=True)
                examples_dir, reference = prepare_data(config, paths)
                check_records_to_read(config, Path(examples_dir))
                if announce:
                    print(f"segbalance run: output in {os.path.abspath(config.output_dir)}", flush=True)
                from tfx import v1 as tfx

                from segbalance.pipeline.dag import create_pipeline
                from segbalance.pipeline.local_dag import run_dag_locally
                from segbalance.pipeline.undecodable_records import name_undecodable_records

                pipeline = create_pipeline(
                    config, examples_dir=examples_dir, pipeline_root=paths["pipeline_root"],
                    serving_model_dir=paths["serving_model_dir"],
                    metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
                        paths["metadata"]),
                    reference_masks_dir=reference, with_drift=with_drift, **pipeline_options)
                progress = route_absl(log)
                started = time.time()
                try:
                    pipeline_started = True
                    run_dag_locally(pipeline)
                except BaseException as exc:
                    if stop_signals.stopped(exc) is None:  # a stop says so in one line (cli), not two
                        print(f"segbalance run: the pipeline stopped; library messages are in {log.path}", flush=True)
                        name_undecodable_records(exc, Path(examples_dir))  # (QA 80 H1: Transform names no record)
                    raise
                finally:
                    unroute_absl(progress)
                summary = run_summary.summarize(paths)
            summary = {"status": "blocked" if exit_status(summary) == EXIT_DRIFT_BLOCKED else "done", **summary,
                       "log": log_path, "previous_summary": previous,
                       **({"canceled_executions": abandoned} if abandoned else {}), **killed_note}
            summary["seconds"] = round(time.time() - started, 1)
            summary["cached_components"] = sorted(progress.cached)
            if summary.get("report_artifact"):  # in one rename (a link to a page: the page, as report --output)
                from segbalance.pipeline.output_guard import write_text_atomic

                write_text_atomic(paths["report"], Path(summary["report_artifact"]).read_text(encoding="utf-8"))
                summary["report"] = paths["report"]
            run_summary.write_summary(paths["output_dir"], summary)
            return summary
        except BaseException as exc:
            with stop_signals.deferred():  # a second Ctrl-C does not cut the clean-up short
                clean_up_stopped_run(exc, paths, created=created, pipeline_started=pipeline_started,
                                     log_path=log_path, previous=previous, killed_note=killed_note)
            raise


def clean_up_stopped_run(exc: BaseException, paths: dict, *, created: bool, pipeline_started: bool,
                         log_path: Optional[str], previous: Optional[str], killed_note: dict) -> None:
    """What a run that did not finish leaves: no folder of its own when refused before any component, its
    unfinished executions CANCELED, and a run summary that says how it ended."""
    if isinstance(exc, UserError) and created and not pipeline_started:  # refused before any component,
        remove_scaffolding(Path(paths["output_dir"]))  # in a folder this run made: none left behind (QA)
    if pipeline_started:  # still under the lock: its own unfinished steps are not left RUNNING (QA 77)
        from segbalance.pipeline.run_lock import cancel_abandoned

        signum = stop_signals.stopped(exc)
        why = (f"stopped by {signal.Signals(signum).name}" if signum is not None else
               f"the run failed ({type(exc).__name__})")
        with contextlib.suppress(Exception):  # (a full disk may refuse the store too: the next run marks them)
            cancel_abandoned(paths["metadata"], note=f"{why} before this execution ended; marked CANCELED by "
                                                     f"the same run, {time.strftime('%Y-%m-%d %H:%M:%S')}")
    if os.path.isdir(paths["output_dir"]):
        from segbalance.pipeline import run_summary

        with contextlib.suppress(OSError):  # (a full disk): the run's own error is the one to show
            run_summary.write_summary(paths["output_dir"], {**run_summary.unfinished_summary(exc, log_path, previous),
                                                            **killed_note})


def remove_scaffolding(folder: Path) -> None:
    """Remove a run folder this run created when it holds nothing but the run's marker, lock file, log,
    span window (links) and empty folders (a refusal before any component ran). A failed ingest's
    report, which the error names, keeps the folder."""
    from segbalance.pipeline.output_guard import LOCK_FILE, MARKER, SUMMARY_FILE

    # span_window: links to the user's spans; the summary: this run's `running` one
    scaffolding = {MARKER, LOCK_FILE, SUMMARY_FILE, "logs", "span_window"}
    if any(p.is_file() and p.relative_to(folder).parts[0] not in scaffolding for p in folder.rglob("*")):
        return
    shutil.rmtree(folder, ignore_errors=True)


def describe_data(data: dict) -> str:
    """'span 3 of DIR (40 records)' from run_summary's ``data`` (what ML Metadata says ExampleGen read)."""
    spans = data["spans"]
    where = ", ".join(sorted({os.path.dirname(f) for f in data["span_folders"].values()}))
    text = f"span{'s' if len(spans) > 1 else ''} {', '.join(map(str, spans))} of {where}"
    records = data.get("records") or {}
    if records and len(records) == len(spans):
        text += f" ({' + '.join(str(records[str(s)]) for s in spans)} records)"
    if not data.get("files_unchanged", True):
        text += " (these files changed after ImportExampleGen read them)"
    return text


def print_summary(summary: dict) -> None:
    from segbalance.pipeline.ingest_reports import describe_unmatched_keys

    print("")
    print(f"pipeline finished in {summary['seconds']}s (output: {summary['output_dir']})")
    data = summary.get("data")
    if data:
        print(f"  data:             {describe_data(data)}")
        for span, skipped in sorted((data.get("not_ingested") or {}).items(), key=lambda item: int(item[0])):
            print(f"  not ingested:     {skipped['pairs']} image pair(s) of span {span} (each with its reason: "
                  f"{skipped['report']})")
        for span, unread in sorted((data.get("files_not_read") or {}).items(), key=lambda item: int(item[0])):
            print(f"  not read:         {unread['files']} file(s) in the data folders of span {span}, not images or "
                  f"masks ingest reads (listed in {unread['report']} skipped_files)")
        for span, keys in sorted((data.get("unmatched_keys") or {}).items(), key=lambda item: int(item[0])):
            print(f"  unmatched keys:   {describe_unmatched_keys(keys)} of span {span} name no image, so they are not "
                  f"used (keys are image file stems; listed in {keys['report']})")
    quarantined = summary.get("quarantined") or {}
    if quarantined.get("records"):
        print(f"  quarantined:      {quarantined['records']} of {quarantined['read']} records ("
              + ", ".join(f"{split} {n}" for split, n in quarantined["by_split"].items())
              + f"), kept out of training and evaluation (each with its reason: {quarantined['list']})")
    print(f"  report:           {summary.get('report', 'not written')}")
    print(f"  class statistics: {summary.get('class_stats', 'not written')}")
    if summary.get("push_unrecorded"):
        print(f"  pushed model:     {summary['pushed_model']} (the newest version there; pushed by a run that "
              f"stopped before ML Metadata recorded it)")
    elif summary.get("pushed_model") and summary.get("pushed_this_run"):
        print(f"  pushed model:     {summary['pushed_model']}")
    elif summary.get("pushed_model"):
        print(f"  pushed model:     {summary['pushed_model']} (earlier run; this run: "
              f"{summary.get('blessing_reason', 'not blessed')})")
    else:
        print(f"  pushed model:     none ({summary.get('blessing_reason', 'model not blessed')})")
    if summary.get("miou") is not None:
        print(f"  mIoU:             {summary['miou']:.4f} on {summary.get('num_eval_images')} eval images "
              f"({summary.get('truth', 'annotation masks')})")
    drift = summary.get("drift")
    if drift:
        print(f"  drift gate:       {drift_line(drift)}")
    print(f"  ML Metadata:      {summary['metadata']}")
    print(f"  log:              {summary['log']} (library messages; `segbalance run --verbose` shows them)")


def drift_line(drift: dict) -> str:
    """The gate's decision as the summary prints it: status, what it stopped, where it is written."""
    status = drift.get("status") or "not recorded"
    if status == "blocked":
        stopped = "nothing was trained" if drift.get("action") == "block_training" else "the model was not pushed"
        status += f" ({stopped}; exit status {EXIT_DRIFT_BLOCKED})"
    elif status == "warned" and drift.get("action") in (None, "warn"):
        status += " (drift.action: warn; recorded only)"
    elif status == "warned":  # a gate that blocks repeats the decision on data a warn run accepted (QA 92 L1)
        status += " (the same data a run with drift.action: warn accepted; recorded only)"
    return f"{status}, {drift['report']}"


def exit_status(summary: dict) -> int:
    """0, or EXIT_DRIFT_BLOCKED when this run's drift gate blocked its data."""
    return EXIT_DRIFT_BLOCKED if (summary.get("drift") or {}).get("status") == "blocked" else 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="run the whole pipeline locally (sample data when no --data)",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="YAML/JSON config (see pipeline/config.py)")
    parser.add_argument("--data", metavar="DIR", help="images/ + masks/ folder, or a folder of Span-N/ TFRecords")
    parser.add_argument("--output-dir", metavar="DIR", help="where metadata, artifacts, report and model go")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow/Beam/TFX/Keras messages on the console (default: only in "
                             "OUTPUT/logs/run-<time>.log)")
    parser.set_defaults(func=_main)


def output_option(args) -> str:
    """How messages name the output folder: ``--output-dir``, or the config file's ``output_dir``
    when the folder came from there (a user told to "give another --output-dir" looked for a flag
    they never used)."""
    if args.output_dir is None and args.config is not None and "output_dir" in read_values(args.config):
        return f"output_dir (in {args.config})"
    return "--output-dir"


def _main(args) -> int:
    from segbalance.pipeline.cli import error_line

    notes: list = []
    try:
        from segbalance.pipeline.sample_data import sample_class_names

        if args.data == "":  # (QA 69: read as ".", this folder)
            raise ConfigError("--data is empty: give the data folder (with images/ and masks/, or Span-N/ folders)")
        config = load_config(args.config, notes, sample_class_names,
                             option_names={"data.dir": "--data", "output_dir": "--output-dir"},
                             **{"data.dir": args.data, "output_dir": args.output_dir})
    except ConfigError as exc:
        return error_line("segbalance run", str(exc), args)
    for note in notes:
        print(f"config: note: {note}", flush=True)
    try:
        summary = run_local(config, verbose=args.verbose, announce=True, output_option=output_option(args))
    except ConfigError as exc:
        return error_line("segbalance run", str(exc), args)
    print_summary(summary)
    return exit_status(summary)
