"""`segbalance stats GLOB --num-classes C --output DIR`: class statistics without TFX.

The same Beam code as the ClassStatsGen component, on TFRecord files matching GLOB
(plain or .gz), writing the same layout: DIR/class_stats.json (counts, weights of every
scheme, co-occurrence), DIR/per_image-*.parquet, DIR/quarantine.jsonl. The quickest way to
get class weights for a data set.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
from pathlib import Path

from segbalance.contract import CLASS_NAMES_FILE, class_names_problem, names_listed
from segbalance.trainer.remote_files import is_remote


def add_parser(subparsers) -> None:
    from segbalance.contract import DEFAULT_IGNORE_INDEX
    from segbalance.pipeline.config import LOCAL_BEAM_ARGS, StatsConfig

    default = StatsConfig()  # the pipeline's `stats` defaults: one place for both
    parser = subparsers.add_parser(
        "stats", help="class frequencies, class weights and per-image label sets (Beam)",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("glob", metavar="GLOB", help="TFRecord files, e.g. 'data/Span-0/data-*'")
    parser.add_argument("--num-classes", type=int, required=True, help="C: class ids are 0..C-1")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--ignore-index", type=int, default=DEFAULT_IGNORE_INDEX,
                        help=f"mask value meaning 'no label' (default {DEFAULT_IGNORE_INDEX}); must lie outside the "
                             f"classes, C..255")
    parser.add_argument("--labeled-policy", choices=("complete", "partial"), default=default.labeled_policy,
                        help="records without a labeled field: all classes labelled, or only the present ones")
    parser.add_argument("--class-names", help="comma-separated names, C of them (default: the classes.json beside "
                        "the records, as `segbalance ingest` writes it, when it names C)")
    parser.add_argument("--classes-file", metavar="FILE",
                        help='a classes.json ({"class_names": [...]}, C names) instead of --class-names: names '
                             'with commas')
    parser.add_argument("--suspect-threshold", type=float, default=default.suspect_threshold,
                        help="flag an absent class as suspect_missing when it co-occurs with each present "
                             "foreground class in at least this fraction of their images")
    parser.add_argument("--weight-damping", choices=("sqrt",), default=default.damping,
                        help="square-root damping of the weights")
    clip = ",".join(f"{v:g}" for v in default.clip) if default.clip else "none"
    parser.add_argument("--weight-clip", metavar="MIN,MAX", default=clip,
                        help=f"clip the raw weights to [MIN, MAX], then normalise; 'none': no clip (default {clip})")
    parser.add_argument("--zero-count-weight", type=float, default=default.zero_count_weight,
                        help=f"weight of classes with no pixel (default {default.zero_count_weight:g})")
    parser.add_argument("--weight-beta", type=float, default=default.beta,
                        help="effective_number beta in [0, 1) (default: 1 - 1/N, N the pixel count)")
    parser.add_argument("--enet-k", type=float, default=default.enet_k,
                        help=f"enet weights 1 / ln(k + f), k > 1 (default {default.enet_k:g})")
    parser.add_argument("--verbose", action="store_true",
                        help="log each quarantined record as it is found (they are all in DIR/quarantine.jsonl)")
    parser.add_argument("--beam-args", default=shlex.join(LOCAL_BEAM_ARGS),
                        help="Beam pipeline options, quoted (e.g. '--runner=DataflowRunner --project=...')")
    parser.set_defaults(func=_main)


# the fields the checks name (the pipeline's `stats` section, StatsOptions) -> this command's flags
FLAG_OF = {"stats.labeled_policy": "--labeled-policy", "stats.suspect_threshold": "--suspect-threshold",
           "stats.clip": "--weight-clip", "stats.damping": "--weight-damping",
           "stats.zero_count_weight": "--zero-count-weight", "stats.beta": "--weight-beta", "stats.enet_k": "--enet-k",
           "ignore_index": "--ignore-index", "num_classes": "--num-classes"}


# the config's words that have flags of their own here (review 27)
REWORDED = ((re.compile(r"^(\d+) class names for num_classes=(\d+)$"), r"--class-names gives \1 names for --num-classes \2"),
            (re.compile(r" or null \(1 - 1/N\)"), " (leave it out for 1 - 1/N)"),
            # (QA 69: these named no option)
            (re.compile(r"^(class names must be unique|class name \d+ is empty)"), r"--class-names: \1"))


def as_flags(message: str) -> str:
    """A check's message with the field it starts with named as the flag a user of this command typed
    (QA 27: `--weight-beta 1.5` was refused as "stats.beta: must be in [0, 1)", a name `--help` never shows)."""
    for pattern, words in REWORDED:
        message = pattern.sub(words, message)
    field = message.split(":", 1)[0].split(" ", 1)[0]
    return FLAG_OF[field] + message[len(field):] if field in FLAG_OF else message


def _main(args) -> int:
    import logging

    from segbalance.components.class_stats_beam import LOG, ClassStatsError, StatsOptions, run_class_stats
    from segbalance.contract import MAX_BAD_ID_FRACTION

    if not args.verbose:  # errors stay one line; the quarantine is summarised below and listed in the file
        LOG.setLevel(logging.ERROR)
    from segbalance.components import class_stats_beam as layout
    from segbalance.pipeline import output_guard
    from segbalance.pipeline.beam_options import beam_args_problem
    from segbalance.pipeline.config import StatsConfig

    local = not is_remote(args.output)
    created = local and not Path(args.output).exists()
    if local:  # new, empty, or an earlier `segbalance stats` output (its marker): never a user's folder
        owned = (layout.STATS_FILE, layout.QUARANTINE_FILE, layout.TOTALS_FILE, "beam-temp-*",
                 f"{layout.PER_IMAGE_PREFIX}-*.parquet", f"{layout.UNCOUNTED_PER_IMAGE_PREFIX}-*.parquet")
        import glob

        # (QA 94 L3: an output inside the records' folder, a span ingest wrote, was written there, and ingest
        # --overwrite then refused the span; a folder of the user's own records may hold it)
        inputs = sorted(folder for folder in {os.path.dirname(os.path.abspath(f)) for f in glob.glob(args.glob)}
                        if output_guard.written_by(folder) == "ingest")
        output_guard.check_literal_path(args.output, "--output")  # Beam writes it: its name is matched as a pattern
        output_guard.check_output_folder(args.output, command="stats", option="--output", owned=owned, inputs=inputs)
        Path(args.output).mkdir(parents=True, exist_ok=True)
        output_guard.write_marker(args.output, "stats")  # what the job writes next is ours
    try:
        names = class_names_of(args)
        # the pipeline's own `stats` section: the same checks (a bad value names its field)
        section = StatsConfig(labeled_policy=args.labeled_policy, suspect_threshold=args.suspect_threshold,
                              clip=_clip(args.weight_clip), damping=args.weight_damping,
                              zero_count_weight=args.zero_count_weight, beta=args.weight_beta, enet_k=args.enet_k)
        section.validate("stats")
        options = StatsOptions(args.num_classes, names, args.ignore_index, args.labeled_policy,
                               args.suspect_threshold, section.weight_options())
        # a local pattern is stored absolute (class_stats.json "inputs"): the report reads the records from
        # wherever it is run, and a relative pattern read elsewhere said the records had been moved
        pattern = args.glob if is_remote(args.glob) else os.path.abspath(args.glob)
        try:
            beam_args = shlex.split(args.beam_args)
        except ValueError as exc:  # (QA 69: "No closing quotation", naming no option)
            raise ValueError(f"--beam-args {args.beam_args!r}: {exc}; close the quote") from None
        problem = beam_args_problem(beam_args)
        if problem:
            raise ValueError(f"--beam-args: {problem}")
        stats = run_class_stats({"all": pattern}, args.output, options, beam_args=beam_args)
    except (ValueError, ClassStatsError) as exc:
        if local and Path(args.output).is_dir():  # (new, or ours: checked above) the failed job leaves nothing
            remove_empty_outputs(Path(args.output))  # empty (QA 64/65: files without records, every record quarantined)
        if created and [p.name for p in Path(args.output).iterdir()] == [output_guard.MARKER]:
            shutil.rmtree(args.output)  # nothing but our marker: the failed job leaves no folder behind
        from segbalance.pipeline.cli import error_line

        return error_line("segbalance stats", as_flags(str(exc)), args)
    print(f"stats: {stats['num_records']} records, {stats['quarantined_records']} quarantined -> {args.output}")
    print("pixel counts: " + json.dumps(stats["pixel_counts"]))
    print("median-frequency weights: " + json.dumps([round(w, 4) for w in stats["weights"]["median_frequency"]]))
    if stats["zero_count_note"]:
        print("note: " + stats["zero_count_note"])
    repeated = repeated_source_ids(args.output)
    if repeated:
        print(f"warning: {len(repeated)} image/source_id value(s) name more than one record (e.g. {repeated[0]!r}): "
              f"each was counted once per record; the trainer joins records by this id and refuses one id with "
              f"different labelled classes: give every image its own id")
    too_large = sum(c["quarantined_by_kind"].get("mask_ids", 0) for c in stats["split_counts"].values())
    read = sum(c["read"] for c in stats["split_counts"].values())
    if too_large and too_large > MAX_BAD_ID_FRACTION * read:  # the trainer refuses such data (run_fn, the same rule)
        print(f"warning: {too_large} of {read} records have mask class ids >= --num-classes {args.num_classes} "
              f"(listed in {args.output}/quarantine.jsonl): is --num-classes too small?")
    return 0


def class_names_of(args) -> "list | None":
    """The class names: ``--class-names``, ``--classes-file``, else those of the classes.json beside the records
    (in their folder, or a Span-N folder's parent), printed with where they came from; None (``class_0``, ...)
    without any (QA 89 M2: a span written by `segbalance ingest` was counted under placeholder names)."""
    from segbalance.pipeline.ingest import IngestError, read_class_names
    from segbalance.pipeline.spans import SPAN_DIR

    if args.class_names is not None and args.classes_file is not None:
        raise ValueError("--class-names and --classes-file both name the classes: give one")
    if args.class_names is not None:
        return [n.strip() for n in args.class_names.split(",")]
    if args.classes_file is not None:
        if not Path(args.classes_file).is_file():
            raise ValueError(f"--classes-file {args.classes_file} is not a file: give a classes.json")
        try:
            names = read_class_names(Path(args.classes_file), instead="pass --class-names")
        except IngestError as exc:
            raise ValueError(f"--classes-file: {exc}") from None
        if len(names) != args.num_classes:
            raise ValueError(f"--classes-file {args.classes_file} names {len(names)} classes for --num-classes "
                             f"{args.num_classes}: give {args.num_classes} names")
        problem = class_names_problem(names)
        if problem:  # (QA 90 M1: blamed on --class-names, the file not named)
            raise ValueError(f"--classes-file {args.classes_file}: {problem}")
        return names
    if is_remote(args.glob):
        return None
    from segbalance.components.class_stats_beam import match_input_files

    found = {}  # (the files the job reads: its own match, ~ expanded, folders left out)
    for folder in sorted({Path(f).parent for f in match_input_files(args.glob)}):
        for candidate in (folder / CLASS_NAMES_FILE, folder.parent / CLASS_NAMES_FILE):
            if candidate.is_file() and (candidate.parent == folder or SPAN_DIR.match(folder.name)):
                try:
                    found[candidate] = read_class_names(candidate, instead="give --class-names or --classes-file")
                except IngestError as exc:
                    print(f"note: {exc}; the classes are named class_0, class_1, ...")
                    return None
                problem = class_names_problem(found[candidate])
                if problem:  # (QA 90 M1: ingest keeps such a file; stats failed)
                    print(f"note: {candidate}: {problem}; the classes are named class_0, class_1, ...")
                    return None
                break
    kinds = {tuple(names) for names in found.values()}
    if len(kinds) > 1:
        print(f"note: the records' classes.json files name different classes ({', '.join(map(str, found))}): the "
              f"classes are named class_0, class_1, ...; give --class-names or --classes-file")
        return None
    if not kinds:
        return None
    names = list(kinds.pop())
    if len(names) != args.num_classes:
        print(f"note: {', '.join(map(str, found))} names {len(names)} classes, not --num-classes {args.num_classes}: "
              f"its names are not used (class_0, class_1, ...)")
        return None
    print(f"classes: {len(names)} from {', '.join(map(str, found))}: {names_listed(names)}")
    return names


def remove_empty_outputs(folder: Path) -> None:
    """Remove the per-image tables without rows and an empty quarantine list a failed job wrote in ``folder``
    (a quarantine list with records stays: the error names it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from segbalance.components import class_stats_beam as layout

    for pattern in (f"{layout.PER_IMAGE_PREFIX}-*.parquet", f"{layout.UNCOUNTED_PER_IMAGE_PREFIX}-*.parquet"):
        for table in folder.glob(pattern):
            try:
                empty = pq.ParquetFile(table).metadata.num_rows == 0
            except (OSError, pa.ArrowException):  # cut short by the failure: not known to be empty, kept (the
                continue  # error is reported, not replaced by this one's traceback)
            if empty:
                table.unlink()
    quarantine = folder / layout.QUARANTINE_FILE
    if quarantine.is_file() and quarantine.stat().st_size == 0:
        quarantine.unlink()


def repeated_source_ids(output: str) -> list:
    """The source ids of more than one usable record in a stats output (its per-image tables), sorted."""
    from segbalance.trainer.class_stats_io import read_every_per_image

    counts = read_every_per_image(output)["source_id"].value_counts()
    return sorted(counts[counts > 1].index.tolist())


def _clip(text):
    if not text or text.strip().lower() == "none":
        return None
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--weight-clip expects MIN,MAX (two numbers), got {text!r}") from None
    return [low, high]
