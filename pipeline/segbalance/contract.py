"""The data and artifact contract shared by every layer: record keys, the ignore index,
artifact file names and type names.

This module imports neither TensorFlow nor TFX (nor anything else of ours), so any module,
a Beam worker included, can use it for the price of a plain Python import. It is the bottom
of the import order checked by ``python -m segbalance.pipeline.import_check``:
``kubeflow, pipeline -> components -> trainer -> contract``.
"""
from __future__ import annotations

import os
import re
from typing import List, Optional, Sequence, Tuple

# --- tf.train.Example keys (TF Model Garden segmentation keys; README "Data format") ---------
IMAGE_KEY = "image/encoded"
IMAGE_FORMAT_KEY = "image/format"
HEIGHT_KEY = "image/height"
WIDTH_KEY = "image/width"
SOURCE_ID_KEY = "image/source_id"
MASK_KEY = "image/segmentation/class/encoded"
MASK_FORMAT_KEY = "image/segmentation/class/format"
LABELED_KEY = "image/segmentation/class/labeled"  # int64 list: classes the annotator labelled
GROUP_KEY = "image/group_id"  # bytes, optional: the scene / scan / tile an image was cut from (data.split_by)
# in a data folder beside images/ (sample-data, a user's) and in each Span-N/ that `run` ingested:
# {"class_names": [...]}
CLASS_NAMES_FILE = "classes.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # the image files ingest reads
REFERENCE_MASKS_FOLDER = "reference_masks"  # in a Span-N/: the complete masks of its records, for evaluation
# span numbers (Span-N folders): TFX's RangeConfig holds them as int32, so 0..2**31 - 1
MAX_SPAN = 2 ** 31 - 1
GROUPS_FILE = "groups.json"  # in a data folder, beside images/: {image stem: group}, ingested as GROUP_KEY
# what Beam's and TensorFlow's file matching read as a pattern (a backslash: TensorFlow's escape), and the regular
# expression characters TFX's ImportExampleGen leaves unescaped when it turns the folder it reads into a regular
# expression (example_gen.utils._glob_to_regex escapes only . + ( ) and the glob's * ?): a folder whose path holds
# one is not found again (`run --output-dir 'out[1]'`: "Cannot find matching for split"; 'out$1': "Glob pattern
# does not match regex pattern"; stats: Beam's write failed, or left its temporary folders behind)
PATTERN_CHARACTERS = ("*", "?", "[", "\\", "$", "^", "|")
REGEX_REPEAT = re.compile(r"\{\d+(,\d*)?\}")  # {2} or {1,3}: a repeat in a regular expression ('b{x' is literal)


def pattern_characters_problem(path: str, given: Optional[str] = None) -> Optional[str]:
    """Why a folder cannot hold or be the pipeline's files (its path, absolute when local, holds a pattern or
    regular-expression character: ``PATTERN_CHARACTERS``, ``REGEX_REPEAT``), or None. ``given``: how the user
    named it (a link to ``path``, a relative path); the message shows ``path`` where the two differ."""
    full = path if "://" in path else os.path.abspath(path)
    path = path if given is None else given
    found = [repr(c) for c in PATTERN_CHARACTERS if c in full] + [repr(m.group(0)) for m in REGEX_REPEAT.finditer(full)]
    if not found:
        return None
    where = f"its path ({full})" if full.rstrip("/") != str(path).rstrip("/") else "its path"
    return (f"{where} holds {' and '.join(found)}, which Beam and TFX read as a file-name pattern (their reads and "
            f"writes there fail or leave files behind): rename the folder, or give a path without * ? [ \\ $ ^ | or "
            f"{{n}}")


def source_id_of(stem: str) -> str:
    """The ``image/source_id`` of a file stem: Unicode NFC (macOS file systems hand out names in NFD,
    ``cafe`` + a combining accent), so an image, its mask, its reference mask and its entry in
    labeled.json / groups.json match however each name was written."""
    import unicodedata

    return unicodedata.normalize("NFC", stem)


# Mask value meaning "no label here" unless the configuration says otherwise (classes.ignore_index).
DEFAULT_IGNORE_INDEX = 255
MAX_CLASSES = 255  # masks are 8-bit PNG: class ids 0..254, and one value (255 by default) for "no label"


def binary_masks_advice(ignore_index: int) -> str:
    """What to do with binary masks saved as 0/``ignore_index`` (their foreground reads as 'no label')."""
    return (f"binary masks saved as 0/{ignore_index} mark their foreground 'no label': ingest them again with "
            f"--palette holding {{\"0\": 0, \"1\": {ignore_index}}}")


def ignore_index_problem(num_classes: Optional[int], ignore_index: int) -> Optional[str]:
    """Why ``ignore_index`` cannot mean "no label" in 8-bit masks of class ids ``0..num_classes-1``
    (None: it can; ``num_classes`` None: not known yet). One rule for the config, ingest and stats:
    an ignore index inside the class range silently turned every pixel of that class into "no label"."""
    if not 0 <= ignore_index <= 255:
        return f"{ignore_index} is not an 8-bit mask value (masks are stored as 8-bit PNG); use e.g. 255"
    if num_classes is not None and num_classes > 255:
        return (f"{ignore_index}: 8-bit masks have no value left for 'no label' beside {num_classes} classes; "
                f"at most 255 classes (ids 0..254, 'no label' 255)")
    if num_classes is not None and ignore_index < num_classes:
        return (f"{ignore_index} collides with a class id (< {num_classes}): every pixel of class {ignore_index} "
                f"would be taken as 'no label'; use a value from {num_classes} to 255, e.g. 255")
    return None

# --- ClassStats artifact layout (components/class_stats_beam.py writes it) -----------------
STATS_FILE = "class_stats.json"
PER_IMAGE_PREFIX = "per_image"  # per_image-*.parquet: one row per image of the counted splits
# uncounted_per_image-*.parquet: the same rows for the splits checked but not counted (e.g. eval), so
# validation knows each eval image's labelled classes; not part of any count or weight.
UNCOUNTED_PER_IMAGE_PREFIX = "uncounted_per_image"
QUARANTINE_FILE = "quarantine.jsonl"
# more than this fraction of the records quarantined for class ids >= C: the trainer refuses the data
# (the config lacks class names), `segbalance stats` points at --num-classes
MAX_BAD_ID_FRACTION = 0.1

# --- other artifacts' files -----------------------------------------------------------------
DRIFT_FILE = "drift.json"  # DriftReport
# DriftReport of a blocked run: the images it did not accept, JSON lines {"source_id", "pixel_counts"}
BLOCKED_IMAGES_FILE = "blocked_images.jsonl"
EVALUATION_FILE = "evaluation.json"  # SegEvaluator's evaluation artifact
REPORT_FILE = "report.html"  # HtmlReport
TRAINING_SUMMARY_FILE = "training_summary.json"  # in the Model run directory
KERAS_FILE = "model.keras"  # beside the SavedModel in the serving model
# written by the Pusher into each pushed version folder, beside the model: where the model came from and how it
# scored (SegEvaluator's evaluation.json inside); not part of the model (seg_evaluator.pushed_copy skips it)
PUSH_RECORD_FILE = "push_record.json"


def is_version_folder(name: str) -> bool:
    """A pushed version's folder name in the push destination (what a model server loads): digits only, no
    staging folder."""
    return name.rstrip("/").isdigit()

# --- artifact type names (MLMD / KFP; the `segbalance` root package exports each class) -----
CLASS_STATS_TYPE = "segbalance.ClassStats"
DRIFT_REPORT_TYPE = "segbalance.DriftReport"
HTML_REPORT_TYPE = "segbalance.HtmlReport"
# the node id of the report of a run the drift gate blocked (drift.action: block_training; pipeline/dag.py)
BLOCKED_REPORT_ID = "DataReportBlocked"

# --- drift gate -----------------------------------------------------------------------------
DRIFT_ACTIONS = ("warn", "block", "block_training")


# --- errors ---------------------------------------------------------------------------------
def message_excerpt(text, limit: int) -> str:
    """A library's message (``text``: a string or an exception) for our one-line errors: on one line, and
    past ``limit`` characters cut at a word and ended with " ..." (Keras lists every layer, kfp its retries)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def same_class_names(names: Sequence[str]) -> List[Tuple[str, str]]:
    """(earlier name, later name) for each class name that names, ignoring case and surrounding spaces, a
    class an earlier name already named: the one rule for classes.names and `segbalance stats --class-names`."""
    seen, pairs = {}, []
    for name in names:
        key = str(name).strip().casefold()
        if key in seen:
            pairs.append((seen[key], name))
        else:
            seen[key] = name
    return pairs


def counted(n: int, noun: str) -> str:
    """``1 epoch``, ``3 epochs``: a count and its noun (plural with an s)."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def class_names_problem(names: Sequence[str]) -> Optional[str]:
    """What makes ``names`` unusable as class names (an empty one, two that name one class), or None."""
    empty = [i for i, name in enumerate(names) if not str(name).strip()]
    if empty:
        return f"class name {empty[0]} is empty: give every class a name"
    repeated = sorted({name for pair in same_class_names(names) for name in pair})
    if repeated:
        return f"class names must be unique (ignoring case): {', '.join(map(repr, repeated))} name the same class"
    return None


def names_listed(names: Sequence[str]) -> str:
    """Class names for a line, comma-separated; each quoted when one holds a comma (QA 89 L6: 'Gebäude, Haus'
    read as two names)."""
    return ", ".join(map(repr, names) if any("," in n for n in names) else names)


class UserError(Exception):
    """A user's mistake (a bad path, option, file or value), not a bug.

    ``segbalance`` (pipeline/cli.py) prints its message as ONE line on stderr and exits with
    code 2 (``segbalance --debug ...`` adds the traceback). The message names the input and
    says what to do. ConfigError, IngestError, ClassStatsError, ... derive from it; any other
    exception is a bug and keeps its traceback.
    """
