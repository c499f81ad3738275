"""`segbalance experiment --config FILE`: the user's configuration under the experiment's protocol.

The experiment compares losses, so it sets per data set and cell what the comparison varies or
holds fixed (``OWNED``: the data, the classes, the loss, the seed, the epoch budget, early
stopping, the rate schedule, the image and batch size, the weight map ...), each from one of its
own options. Everything else a ``run`` config can set comes from ``--config``: the model (depth,
base filters, a keras.applications backbone and its weights, encoder freezing), the optimizer,
learning rate and weight decay, augmentation, the ``stats`` weighting options, mixed precision,
Beam arguments. A field the file gives that the experiment owns is not used, and
``owned_notes`` says which and which option sets it instead.

Rows record ``config_digest`` (of the values used, as the schema types them), so a later run in
the same ``--work-dir`` with another file trains those cells again instead of reusing rows
trained otherwise, as it does for the other protocol options, and a report of both ranks each
set of rows on its own.
"""
from __future__ import annotations

import copy
import hashlib
import json
from typing import Dict, List, Optional, Tuple

# dotted config field -> the experiment option (or rule) that sets it instead
OWNED: Dict[str, str] = {
    "name": "the experiment's own",
    "output_dir": "--work-dir",
    "data": "--datasets, --num-images, --split-by",
    "classes": "the data set's classes",
    "evaluation": "every cell is scored on the held-out test set",
    "drift": "each group's pipeline runs once",
    "beam_args": "the experiment's pipelines run locally",
    "stats.clip": "the *_clipped weightings (--weightings)",
    "training.loss": "--terms, --weightings, --missing",
    "training.pixel_weights": "--pixel-weights",
    "training.seed": "--seeds",
    "training.epochs": "--max-epochs",
    "training.early_stopping_patience": "--patience",
    "training.min_epochs": "--min-epochs",
    "training.lr_schedule": "--lr-schedule",
    "training.restore_best": "always on: the best epoch is scored",
    "training.image_size": "--size",
    "training.batch_size": "--batch-size",
    "training.backup_dir": "each cell's own, in --work-dir",
    "training.warm_start": "every cell starts from the same initial weights",
}


def split_owned(values: dict) -> Tuple[dict, List[str]]:
    """(``values`` without the fields the experiment owns and without sections left empty, the
    dotted names of those left out)."""
    kept, dropped = copy.deepcopy(values), []
    for dotted in OWNED:
        *parents, leaf = dotted.split(".")
        node = kept
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            del node[leaf]
            dropped.append(dotted)
    return _pruned(kept, lambda path, value: value == {}), dropped


def _pruned(values: dict, drop, path: Tuple[str, ...] = ()) -> dict:
    """``values`` without the entries ``drop(path, value)`` is true for, sections first pruned inside
    (a section left empty goes too)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            value = _pruned(value, drop, (*path, key))
        if not drop((*path, key), value) and value != {}:
            out[key] = value
    return out


def differences_from_defaults(values: dict) -> dict:
    """The entries of ``values`` whose value is not the default's (a file that writes a default out
    trains what one that leaves it out does). Both sides are the typed values (``typed_values``), so
    ``learning_rate: 1`` and ``1.0`` are one value."""
    from segbalance.pipeline.config import PipelineConfig
    from segbalance.trainer.typed_config import build, to_dict

    defaults = to_dict(build(PipelineConfig, {}))

    def default_of(path):
        node = defaults
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return _MISSING
            node = node[key]
        return node

    return _pruned(typed_values(values), lambda path, value: not isinstance(value, dict) and value == default_of(path))


def typed_values(values: dict) -> dict:
    """The whole configuration ``values`` gives, as the schema types it (an int given for a float
    field is that float), every other field at its default; ConfigError on a wrong type. Its checks
    (``validate``) run in ``Plan.check``, under the experiment's options."""
    from segbalance.pipeline.config import PipelineConfig
    from segbalance.trainer.typed_config import build, to_dict

    return to_dict(build(PipelineConfig, values or {}))


_MISSING = object()


def owned_notes(dropped: List[str], path: str) -> List[str]:
    return [f"{path}: {dotted} is not used by the experiment ({OWNED[dotted]} sets it)" for dotted in dropped]


def merged(base: dict, over: dict) -> dict:
    """``base`` updated by ``over``, section by section (``over`` wins; neither is changed)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def json_digest(value, length: int) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``value`` as sorted-key JSON (the experiment's
    names for a --config's values and for a cell's training values)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]


def config_digest(values: Optional[dict]) -> Optional[str]:
    """A short digest of the config values the experiment used that are not the defaults, as the
    schema types them (None without ``--config``, or when the file changes no default)."""
    effective = differences_from_defaults(values or {})
    if not effective:
        return None
    return json_digest(effective, 12)


# the training protocol a row records: each a row field, the Plan field and (dashed) the option
PROTOCOL = ("max_epochs", "patience", "min_epochs", "lr_schedule", "size", "batch_size", "num_images", "split_by",
            "test_images")


def trained_with(row: dict) -> tuple:
    """What a row was trained (and scored) with: its ``config_digest`` (rows from before the field: None,
    the defaults), its ``defaults_digest`` and the PROTOCOL fields it records. Rows of one cell with other
    values are other rows."""
    return (("config_digest", row.get("config_digest")),
            *((key, row[key]) for key in ("defaults_digest", *PROTOCOL) if key in row))


def defaults_digest() -> str:
    """A digest of the schema's defaults for what a cell trains with (the ``training`` and ``stats`` sections),
    which ``config_digest`` takes for granted: rows record it, so a row trained by code with other defaults (an
    optimizer, a clip, an augmentation) is not reused or ranked as this code's (QA 72; rows from before session 31
    do not record it and count as any value)."""
    from segbalance.pipeline.config import PipelineConfig
    from segbalance.trainer.typed_config import build, to_dict

    defaults = to_dict(build(PipelineConfig, {}))
    return json_digest({section: defaults[section] for section in ("training", "stats")}, 12)


def source_commit() -> Optional[str]:
    """The git commit of the code that runs (its checkout's HEAD, "+changes" when files differ from it), or None
    outside a git checkout; rows record it (QA 72: no row said which code trained it)."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]  # the checkout (pipeline/ is one of its folders), or site-packages
    if not (root / "pyproject.toml").is_file():  # an installed copy: git would find whatever project holds the venv
        return None
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True,
                             timeout=10)
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root:  # (QA 75: the user's project's)
            return None
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+changes" if dirty else "")
