"""`segbalance ingest IMAGES_DIR MASKS_DIR --output DIR`: image/mask folders -> TFRecords.

Pairs files by stem (``a.jpg`` + ``a.png``; ``--image-stem-suffix`` / ``--mask-stem-suffix`` drop an ending
first: ``a_leftImg8bit.png`` + ``a_gtFine_labelIds.png``), checks every pair and writes
`tf.train.Example` records with the Model Garden keys (``trainer/example_codec.py``):

- images (PNG/JPEG kept byte-for-byte; other formats re-encoded to PNG as RGB or greyscale, a
  palette BMP/TIFF by its colours; an image with an EXIF orientation tag is turned upright, as
  viewers and annotation tools show it, and re-encoded to PNG);
- masks as single-channel PNG of class ids: greyscale masks as they are, palette
  ("P" mode) masks by palette index, RGB colour masks mapped to ids with ``--palette``
  (with colours in ``--palette``, palette masks are mapped by their pixels' colours too; with grey
  values, single-channel masks by their values, e.g. binary masks saved as 0/255);
- ``image/segmentation/class/labeled`` from ``--labeled FILE.json``
  (``{source_id: [class ids]}``) for the ids it lists; a stem there that matches no image
  file is a warning (counted in the report), an error with ``--strict``; a file none of whose
  keys matches an image is refused (exit 2, nothing written: its keys are likely file names).
- ``image/group_id`` from ``--groups FILE.json`` (``{source_id: group}``: the scene, scan or
  tile each image was cut from; ``data.split_by: group`` then keeps a group's images in one
  split, so validation crops do not overlap training crops). With ``--groups`` every image
  needs a group (else exit 2, nothing written); a stem there without image is a warning, an
  error with ``--strict``.

Output (``TARGET`` = ``DIR/Span-N`` with ``--span N``, else ``DIR``)::

    TARGET/data-00000-of-0000K.tfrecord   K = --shards, written in parallel when K > 1
    TARGET/ingest_report.json            counts, written records, bad pairs with reasons
    TARGET/classes.json                  the class names of a classes.json beside IMAGES_DIR (when there is
                                         one and it names --num-classes classes): a run of the span trains them

Masks must be lossless: PNG (or BMP/TIFF). JPEG data in a mask (a ``.jpg`` mask, or JPEG
bytes under a ``.png`` name) is a bad pair: JPEG changes class ids at region edges. 1-bit
masks are read as ids 0/1, 2- and 4-bit greyscale PNG masks by their stored values (0..3,
0..15); masks with an alpha channel (LA, PA, transparent RGBA) are bad pairs, named for what they are.
Every file must decode completely (a PNG with a bad chunk checksum or without its end chunk
is a bad pair). Each bad pair in the report has a ``code`` (e.g. ``class_ids_out_of_range``,
``size_mismatch``, ``no_mask``, ``no_image``, ``undecodable``, ``name_not_utf8``) beside its ``reason`` text.

Only files directly in IMAGES_DIR / MASKS_DIR with an image suffix are read; other files (in
sub-folders, other suffixes such as ``.webp``; not hidden ones) are named in a warning and
listed in the report (``skipped_files``). Stems are compared in Unicode NFC (a macOS NFD
``café`` pairs with an NFC ``café``), and so are the keys of ``--labeled`` / ``--groups``.

Output safety: TARGET is never, contains no, and is not inside IMAGES_DIR or MASKS_DIR, and
``--overwrite`` only replaces a folder an earlier ingest wrote (its marker ``.segbalance.json``
or ``ingest_report.json``, and nothing but ``data-*`` shards and the report); any other
non-empty TARGET, or a file, is refused before anything is written. Everything is written to
a hidden temporary sibling folder (``.segbalance-ingest-tmp-PID``, shards named
``shard-*.partial`` until complete, so no ``Span-*`` or ``*/data-*`` glob matches it) and renamed into place at
the end, so a crash never leaves a half-written span; the next ingest into the same folder
removes what a killed one left. Bad pairs are reported (console + report) and skipped; the exit
code is 0 when at least one record was written. With ``--strict`` any bad pair (or
``--labeled`` stem without image) stops the command (exit 2) and nothing is written.

When nothing is written (every pair bad, or ``--strict`` and a problem) the report goes
beside TARGET instead, as ``ingest_report.<TARGET name>.failed.json`` (e.g.
``DIR/ingest_report.Span-3.failed.json``): TARGET is not created, so no empty span appears
and the next run needs no ``--overwrite``; the error message gives the path. A later
successful ingest into the same TARGET deletes it.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import fnmatch
import io
import json
import os
import shutil
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from glob import escape as glob_escape
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from segbalance.components.evaluation_metrics import PREDICT_BUDGET_BYTES, request_bytes
from segbalance.contract import (CLASS_NAMES_FILE, IMAGE_SUFFIXES, MAX_BAD_ID_FRACTION, MAX_CLASSES, MAX_SPAN,
                                 REFERENCE_MASKS_FOLDER, UserError, counted, ignore_index_problem, source_id_of)
from segbalance.pipeline import output_guard
from segbalance.pipeline.ingest_reports import REPORT_NAME  # noqa: F401 (ingest writes it; re-exported)
from segbalance.pipeline.stem_pairing import (strip_stem_suffix, suggest_stem_suffixes, suggestion_options,
                                              suggestion_text)
from segbalance.trainer import example_codec as codec
from segbalance.trainer.png_chunks import png_damage

# Mask files are listed with every image suffix, so a .jpg mask is a bad pair that says why
# (masks must be lossless) instead of an image "without mask".
MASK_SUFFIXES = IMAGE_SUFFIXES
LOSSLESS_MASK_FORMATS = ("PNG", "BMP", "TIFF")  # PIL format names
# what ingest writes into TARGET (and the marker), and the class names `run` keeps beside a span's records
# (QA 59: `ingest --overwrite` refused every span run had ingested)
OWNED = ("data-*-of-*.tfrecord", REPORT_NAME, CLASS_NAMES_FILE, REFERENCE_MASKS_FOLDER, f".{REFERENCE_MASKS_FOLDER}.*")
TMP_PREFIX = output_guard.INGEST_TMP_PREFIX
OLD_PREFIX = output_guard.INGEST_OLD_PREFIX
NAMES_DIFFER = "names_differ_by_an_ending"  # an error's code: no file paired, stem endings would pair them
PARTIAL_SUFFIX = ".partial"  # shards in the temporary folder: shard-I-of-K.partial -> data-I-of-K.tfrecord
PROGRESS_MIN_FILES = 100
OUT_OF_RANGE = "class_ids_out_of_range"  # the bad-pair code `run` looks for (classes.names too short)


class IngestError(UserError):
    """A problem with the whole input (not one pair): the command stops with exit code 2. ``codes``:
    the bad pairs' codes when nothing was written for them, ``ungrouped_images`` or ``NAMES_DIFFER`` (what a
    caller may add advice for; ``pairing_options``: the ingest options that would pair the files)."""

    codes: frozenset = frozenset()
    pairing_options: str = ""
    problem: str = ""  # the problem without the advice (what a caller that can go on says in a note)


class LabeledRangeError(IngestError):
    """labeled.json lists class ids outside [0, num_classes) (too few class names, or a typo)."""


class PairError(ValueError):
    """One pair cannot be written: ``code`` (machine-readable, in the report) and the reason text."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code


def shown(text: str) -> str:
    """``text`` as one printable line: a newline, another control character or a byte of a name that is not
    UTF-8 (a lone surrogate) as its Python escape (QA 94 L8: a file name with a newline split a skip line)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)


def _bad(stem: str, code: str, reason: str, image: Optional[Path] = None, mask: Optional[Path] = None) -> dict:
    """A bad-pair entry of the report."""
    entry = {"source_id": stem}
    if image is not None:
        entry["image"] = str(image)
    if mask is not None:
        entry["mask"] = str(mask)
    entry.update(code=code, reason=reason)
    return entry


def _nfc_keys(mapping: Optional[dict], what: str) -> Optional[dict]:
    """``mapping`` with NFC keys; IngestError when two keys differ only in their Unicode form."""
    if mapping is None:
        return None
    out, original = {}, {}
    for key, value in mapping.items():
        norm = source_id_of(key)
        if norm in out and original[norm] != key:
            raise IngestError(f"{what}: keys {original[norm]!r} and {key!r} are the same name in different Unicode "
                              f"forms (NFC / NFD); keep one")
        out[norm], original[norm] = value, key
    return out


@dataclass
class IngestOptions:
    num_classes: Optional[int] = None
    ignore_index: int = codec.DEFAULT_IGNORE_INDEX
    palette: Optional[Dict[Union[Tuple[int, int, int], int], int]] = None  # colours and grey values -> ids
    palette_source: str = "--palette"  # what messages call the mapping (--value-map: grey values only)
    labeled: Optional[Dict[str, List[int]]] = None
    groups: Optional[Dict[str, str]] = None  # source_id -> group (image/group_id)
    groups_source: str = "--groups"  # what messages call the groups (`segbalance run`: DIR/groups.json)
    labeled_source: str = "--labeled"  # what messages call the labelled sets (`segbalance run`: DIR/labeled.json)
    reference_masks: Optional[Path] = None  # complete masks (<stem>.png), kept in TARGET/reference_masks/
    # the classes' names (classes.json beside IMAGES_DIR), kept in TARGET/classes.json: a run of the span trains
    # them (QA 84 H1: a span ingest wrote had none, and a later run trained the four default names)
    class_names: Optional[List[str]] = None
    # endings dropped from the file stems before pairing (pipeline/stem_pairing.py): Cityscapes' _leftImg8bit /
    # _gtFine_labelIds; the reference masks' stems lose the mask ending too
    image_stem_suffix: str = ""
    mask_stem_suffix: str = ""


@dataclass
class IngestResult:
    target: Path
    written: List[str] = field(default_factory=list)
    bad: List[dict] = field(default_factory=list)
    num_pairs: int = 0
    labeled_unmatched: List[str] = field(default_factory=list)  # --labeled stems with no image file
    groups_unmatched: List[str] = field(default_factory=list)  # --groups stems with no image file
    num_groups: int = 0  # groups among the written records (0: no --groups)
    skipped_files: List[str] = field(default_factory=list)  # files in the folders that ingest does not read
    exif_rotated: List[str] = field(default_factory=list)  # written images turned upright by their EXIF tag
    num_classes: Optional[int] = None  # the class count ids were checked against (None: not checked)
    ignore_index: int = codec.DEFAULT_IGNORE_INDEX
    max_class_id: int = -1  # the largest class id in the written masks (ignore_index not counted; -1: none)
    masks_with_ignore: int = 0  # written masks holding ignore_index pixels
    num_reference_masks: int = 0  # complete masks kept for evaluation (--reference-masks)
    # written images too large for one evaluation request ({source_id, height, width}; ``large_image_note``)
    large_images: List[dict] = field(default_factory=list)

    def report(self) -> dict:
        return {
            "output": str(self.target),
            "num_pairs_found": self.num_pairs,
            "num_written": len(self.written),
            "num_bad": len(self.bad),
            "num_labeled_unmatched": len(self.labeled_unmatched),
            "num_groups": self.num_groups,
            "num_groups_unmatched": len(self.groups_unmatched),
            "num_skipped_files": len(self.skipped_files),
            "exif_rotated": len(self.exif_rotated),
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "max_class_id": self.max_class_id,
            "masks_with_ignore": self.masks_with_ignore,
            "num_reference_masks": self.num_reference_masks,
            "num_large_images": len(self.large_images),
            "bad": self.bad,
            "written": self.written,
            "labeled_unmatched": self.labeled_unmatched,
            "groups_unmatched": self.groups_unmatched,
            "skipped_files": self.skipped_files,
            "exif_rotated_source_ids": self.exif_rotated,
            "large_images": self.large_images,
        }

    def failed_report(self, error: str) -> dict:
        """The report when nothing was written: the pairs that were good are listed as not written."""
        report = self.report()
        report.update(error=error, num_written=0, written=[], good_not_written=self.written)
        return report

    def write_failed_report(self, error: str) -> str:
        """``failed_report`` written beside the target (``failed_report_path``); its path, for the error (or why it
        was not written: a file of that name that is not an earlier failure's report is left as it is)."""
        path = failed_report_path(self.target)
        if (path.exists() or path.is_symlink()) and not is_failed_report(path):  # (QA 94 L11: a user's file)
            return f"not written ({path} is a file ingest did not write)"
        path.parent.mkdir(parents=True, exist_ok=True)
        output_guard.write_text_atomic(path, json.dumps(self.failed_report(error), indent=1))
        return str(path)


def is_failed_report(path: Path) -> bool:
    """Whether ``path`` is a report an ingest that wrote nothing left (``write_failed_report``): a file, not a
    link, of JSON with its ``error`` and ``num_written`` 0. Only such a file is replaced or removed."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and "error" in report and report.get("num_written") == 0


def failed_report_path(target: Path) -> Path:
    """Where the report goes when nothing is written: beside TARGET (never inside it, so no empty
    span is created), under a name that does not start with ``Span-`` (not taken for a span). TARGET's name is cut
    to fit one file name (QA 80 L1: a 245-character TARGET failed with a traceback after its data was written)."""
    from segbalance.pipeline.ingest_reports import FAILED_PREFIX, FAILED_SUFFIX

    name = output_guard.cut_name(target.name, output_guard.NAME_MAX - len(FAILED_PREFIX) - len(FAILED_SUFFIX))
    return target.parent / f"{FAILED_PREFIX}{name}{FAILED_SUFFIX}"


def _sample(names: Sequence[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _no_key_matches(source: str, keys: List[str], images: Dict[str, Path], images_dir: Path) -> IngestError:
    """A labelled-sets file none of whose keys is an image's stem (QA 68: keys written as file names
    left every image 'complete'; the run trained and pushed as if nothing were missing)."""
    stem = sorted(images)[0]
    as_names = [key for key in keys if Path(key).stem in images and Path(key).suffix]
    hint = f"; they look like file names: drop the suffixes ({as_names[0]!r} -> {Path(as_names[0]).stem!r})" \
        if as_names else ""
    error = IngestError(f"{source}: none of its {len(keys)} keys is the stem of an image file in {images_dir} "
                        f"(first: {_sample(keys, 3)}){hint}; keys are file stems, e.g. {stem!r} for "
                        f"{images[stem].name}; nothing was written")
    error.codes = frozenset({"labeled_unmatched"})
    return error


GREY_LEVELS = "grey levels"  # in a reason: the mask may hold its classes as grey levels (run's advice names it)


def _grey_level_hint(mask: np.ndarray, options: IngestOptions) -> str:
    """For a single-channel mask with ids out of range and no more values than classes (a mask saved for
    viewing, 0/85/170/255): the --palette that maps its values in order (QA 68: the advice was to add 171
    class names; the 255 pixels would have been 'no label')."""
    values = np.unique(mask).tolist()
    classes = options.num_classes or 255
    # a value among the class ids 1..C-1 says the mask holds ids (one more class, or a broken pixel: QA 71, the
    # palette would have renumbered them), not grey levels
    if options.palette is not None or len(values) > classes or any(0 < v < classes for v in values):
        return ""
    palette = json.dumps({str(i): v for i, v in enumerate(values)})
    ignored = (f"; {options.ignore_index} is the ignore index: unmapped, its pixels are 'no label'"
               if options.ignore_index in values else "")
    return f"; if it holds its classes as {GREY_LEVELS} ({', '.join(map(str, values))}), map them with --palette " \
           f"FILE holding {palette} (in class order){ignored}"


# --------------------------------------------------------------------------- inputs
@dataclass
class Listing:
    """One input folder: the files ingest reads, by (NFC) stem, and those it does not read."""

    files: Dict[str, Path]
    other_suffix: Dict[str, Path]  # non-hidden files directly in the folder with another suffix, by stem
    subfolders: List[Path]  # non-hidden sub-folders (ingest does not recurse)
    broken: Dict[str, Path] = field(default_factory=dict)  # links to nothing, with a suffix ingest reads, by stem
    # with a stem ending to drop (--image/--mask-stem-suffix): the files whose names lack it (Cityscapes' gtFine
    # folder holds _color, _instanceIds and _labelIds masks of each image: the others are not this data's masks)
    without_ending: List[Path] = field(default_factory=list)
    # folders and special files (FIFO, socket, device) named like a file ingest reads, by stem (QA 80 L3: their
    # partner was told it had no image / mask, and a FIFO was in no list)
    not_files: Dict[str, Path] = field(default_factory=dict)
    other_special: List[Path] = field(default_factory=list)  # special files of other suffixes (skipped, listed)

    def skipped(self) -> List[Path]:
        """Every non-hidden file ingest does not read: other suffixes, names without the stem ending, and files in
        sub-folders."""
        inside = []
        for sub in self.subfolders:
            for root, dirs, names in os.walk(sub):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                inside += [Path(root, n) for n in sorted(names) if not n.startswith(".")]
        special = [p for p in self.not_files.values() if not p.is_dir()]  # a folder's files are listed instead
        return sorted([*self.other_suffix.values(), *self.without_ending, *special, *self.other_special, *inside])

    def whole_stems(self) -> Dict[str, Path]:
        """The files ingest reads and those left out for lacking the stem ending, by their whole (NFC) stems."""
        return {source_id_of(p.stem): p for p in [*self.files.values(), *self.without_ending]}


def list_folder(folder: Path, suffixes: Sequence[str], what: str, stem_suffix: str = "") -> Listing:
    """The files of ``folder`` (not recursive; hidden names skipped) by NFC stem, ``stem_suffix`` dropped
    (``stem_pairing``); IngestError for a missing folder or two files with one stem."""
    if not folder.is_dir():
        raise IngestError(f"{what} folder {folder} does not exist or is not a folder")
    listing, twins = Listing({}, {}, []), {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        stem = strip_stem_suffix(source_id_of(path.stem), stem_suffix)
        read = path.suffix.lower() in suffixes
        if path.is_dir() or (path.exists() and not path.is_file()):  # a folder, a FIFO, ... or a link to one
            if path.is_dir():
                listing.subfolders.append(path)
            if read:
                listing.not_files.setdefault(stem, path)
            elif not path.is_dir():  # QA 82 L3: a FIFO of another suffix was in no list; not one to convert (QA 83)
                listing.other_special.append(path)
        elif path.is_symlink() and not path.exists():  # a dangling link: named as one, never "has no image"
            (listing.broken if read else listing.other_suffix).setdefault(stem, path)
        elif path.is_file():
            if stem_suffix and stem == source_id_of(path.stem) and read:
                listing.without_ending.append(path)  # not ending in it: not one of the files meant (skipped, said)
            elif not read:
                listing.other_suffix.setdefault(stem, path)
            elif stem in listing.files:
                twins.setdefault(stem, [listing.files[stem].name]).append(path.name)
            else:
                listing.files[stem] = path
    if twins:  # every stem named at once (QA 89 L4: one per run)
        def shown(stem: str) -> str:
            names = twins[stem]
            forms = (" (the same name in different Unicode forms, NFC / NFD)"  # QA 80 L4: names looked alike
                     if len({source_id_of(n) for n in names}) < len(names) else "")
            return f"{stem!r}: {', '.join(names)}{forms}"

        if len(twins) == 1:
            (stem, names), = twins.items()
            raise IngestError(f"{'two' if len(names) == 2 else len(names)} {what} files share the stem {shown(stem)}; "
                              f"keep one")
        more = f"; and {len(twins) - 3} more" if len(twins) > 3 else ""
        raise IngestError(f"{len(twins)} stems are each shared by several {what} files: "
                          f"{'; '.join(shown(s) for s in sorted(twins)[:3])}{more}; keep one file of each")
    for stem in sorted(set(listing.broken) & set(listing.files)):  # as for two files: not one left out unsaid
        raise IngestError(f"two {what} files share the stem {stem!r}: {listing.files[stem].name}, "
                          f"{listing.broken[stem].name} (a link to nothing); keep one")
    return listing


def _files_by_stem(folder: Path, suffixes: Sequence[str], what: str) -> Dict[str, Path]:
    return list_folder(folder, suffixes, what).files


def _read_json(path: Path, what: str):
    """JSON from ``path``; IngestError naming the file and, for a syntax error, line and column."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IngestError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise IngestError(f"{what} {path} is a folder, not a JSON file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise IngestError(f"{what} {path} cannot be read: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise IngestError(f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno}, "
                          f"column {exc.colno}") from exc


def load_palette(path: os.PathLike) -> Dict[Union[Tuple[int, int, int], int], int]:
    """A palette file: JSON list of [r, g, b] indexed by class id, or {"id": [r, g, b]}; a grey value
    instead of [r, g, b] maps that value of single-channel masks (e.g. {"0": 0, "1": 255} for binary
    masks saved as 0/255). Keys of the result: (r, g, b) tuples and grey-value ints."""
    raw = _read_json(Path(path), "--palette")
    if not isinstance(raw, (list, dict)):
        raise IngestError(f"--palette {path}: cannot read it as a JSON list of [r, g, b] (or grey values) per class, "
                          f"or an object {{\"id\": [r, g, b]}}; it holds {json.dumps(raw)[:40]}")
    items = []
    for key, value in (enumerate(raw) if isinstance(raw, list) else raw.items()):
        if not (_is_int(key) or (isinstance(key, str) and key.strip().isascii() and key.strip().isdigit())):
            raise IngestError(f"--palette {path}: key {json.dumps(key)} is not a class id (0, 1, 2, ...)")
        if _is_int(value):
            items.append((int(key), value))
        elif isinstance(value, list) and all(_is_int(x) for x in value):
            items.append((int(key), tuple(value)))
        else:  # (a bool is no grey value, a colour name no colour: say which entry)
            raise IngestError(f"--palette {path}: class {int(key)}: {json.dumps(value)[:40]} is neither a colour "
                              f"[r, g, b] of integers nor a grey value")
    palette: Dict[Union[Tuple[int, int, int], int], int] = {}
    for class_id, rgb in items:
        if isinstance(rgb, int):  # a grey value of single-channel (8- or 16-bit) masks
            if not 0 <= rgb <= 65535:
                raise IngestError(f"--palette {path}: class {class_id} grey value {rgb} is outside 0..65535")
            if rgb in palette:
                raise IngestError(f"--palette {path}: grey value {rgb} is given to class {palette[rgb]} and class "
                                  f"{class_id}; give each class its own value")
            palette[rgb] = class_id
            continue
        if len(rgb) != 3:
            raise IngestError(f"--palette {path}: class {class_id} colour {list(rgb)}: every colour must have 3 "
                              f"components [r, g, b]")
        if not all(0 <= x <= 255 for x in rgb):
            raise IngestError(f"--palette {path}: class {class_id} colour {list(rgb)} has values outside 0..255")
        if rgb in palette:  # a dict would keep the last: the first class's pixels would silently change id
            raise IngestError(f"--palette {path}: colour {list(rgb)} is given to class {palette[rgb]} and class "
                              f"{class_id}; give each class its own colour")
        palette[rgb] = class_id
    return palette


def load_value_map(path: os.PathLike, ignore_index: int, num_classes: Optional[int] = None) -> Dict[int, int]:
    """A ``--value-map`` file: JSON ``{"mask value": class id}`` for single-channel masks whose values are not
    the class ids, several values to one id allowed (Cityscapes' labelIds -> trainIds: 34 values to 19 classes
    and ``ignore_index``); every value in the masks must be listed. The same mapping as grey values in
    ``--palette``, which gives each class one value."""
    raw = _json_object(Path(path), "--value-map", 'write {"mask value": class id, ...}, e.g. {"7": 0, "0": 255}')
    mapping: Dict[int, int] = {}
    classes = MAX_CLASSES if num_classes is None else num_classes
    for key, value in raw.items():
        digits = key.strip() if isinstance(key, str) else ""
        if not (digits.isascii() and digits.isdigit() and int(digits) <= 65535):  # (QA 78: "²" was a traceback)
            raise IngestError(f"--value-map {path}: key {json.dumps(key)} is not a mask value (0..65535)")
        if not (_is_int(value) and (0 <= value < classes or value == ignore_index)):
            raise IngestError(f"--value-map {path}: value {json.dumps(key)} maps to {json.dumps(value)[:40]}, not a "
                              f"class id 0..{classes - 1} or the ignore index {ignore_index}")
        if int(digits) in mapping and mapping[int(digits)] != value:  # (QA 78: "7" and "007": the last one won)
            raise IngestError(f"--value-map {path}: value {int(digits)} is given twice, to class "
                              f"{mapping[int(digits)]} and class {value}; keep one")
        mapping[int(digits)] = int(value)
    if not mapping:
        raise IngestError(f"--value-map {path} maps no value; give every mask value its class id")
    return mapping


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_object(path: Path, what: str, expected: str) -> dict:
    """The JSON object in ``path``; IngestError naming the file when it is not an object."""
    raw = _read_json(path, what)
    if not isinstance(raw, dict):
        raise IngestError(f"{what} {path}: the top level must be an object, got a JSON {_json_type(raw)}; {expected}")
    return raw


def load_labeled(path: os.PathLike, num_classes: Optional[int]) -> Dict[str, List[int]]:
    """``{source_id: [class ids]}``: every value a JSON list of integers (no strings, floats or
    booleans: ``"13"`` is not ``[1, 3]``), ids in ``[0, num_classes)``. IngestError names the file,
    the key and what is wrong; ids out of range raise LabeledRangeError."""
    path = Path(path)
    expected = 'expected {"source_id": [class ids], ...}, e.g. {"img1": [0, 2]}'
    raw = _json_object(path, "labeled file", expected)
    for key, value in raw.items():
        if not isinstance(value, list):
            raise IngestError(f"labeled file {path}: key {key!r} is a JSON {_json_type(value)} ({value!r}), "
                              f"not a list of class ids; {expected}")
        wrong = [v for v in value if not _is_int(v)]
        if wrong:
            raise IngestError(f"labeled file {path}: key {key!r} lists {wrong[0]!r} ({_json_type(wrong[0])}); "
                              f"class ids must be integers; {expected}")
        if any(v < 0 for v in value):
            raise IngestError(f"labeled file {path}: key {key!r} lists negative class ids {[v for v in value if v < 0]}")
    labeled = _nfc_keys({str(k): list(v) for k, v in raw.items()}, f"labeled file {path}")
    if num_classes is not None:
        bad = {k: [c for c in v if not 0 <= c < num_classes] for k, v in labeled.items()}
        bad = {k: v for k, v in bad.items() if v}
        if bad:
            sample = ", ".join(f"{k}: {v}" for k, v in list(bad.items())[:5])
            raise LabeledRangeError(f"labeled file {path}: class ids outside [0, {num_classes}) for {len(bad)} "
                                    f"entries ({sample})")
    return labeled


def load_groups(path: os.PathLike) -> Dict[str, str]:
    """``{source_id: group}``: each group a non-empty string or an integer (kept as its text).
    IngestError names the file, the key and what is wrong."""
    path = Path(path)
    expected = 'expected {"source_id": "group", ...}, e.g. {"tile3_crop07": "tile3"}'
    raw = _json_object(path, "groups file", expected)
    for key, value in raw.items():
        if not ((isinstance(value, str) and value.strip()) or _is_int(value)):
            raise IngestError(f"groups file {path}: key {key!r} is a JSON {_json_type(value)} ({value!r}), not a "
                              f"group name; {expected}")
    return _nfc_keys({str(k): str(v) for k, v in raw.items()}, f"groups file {path}")


def _json_type(value) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)


# what `run` and `config` say instead of "pass --num-classes", an option they do not have
CONFIG_CLASSES_HINT = "remove it and list the classes in the config's classes.names"


def read_class_names(classes: Path, instead: str = "pass --num-classes") -> Optional[List[str]]:
    """The names in a ``classes.json`` (``{"class_names": [...]}``, as ``sample-data`` writes); None
    without the file; IngestError naming it when malformed (``instead``: what else the user can do)."""
    classes = Path(classes)
    if not classes.exists():
        return None
    raw = _read_json(classes, "classes file")
    names = raw.get("class_names") if isinstance(raw, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        problem = (f"classes file {classes}: expected {{\"class_names\": [\"background\", ...]}} with at least one "
                   f"name (strings)")
        error = IngestError(f"{problem}; fix it, or {instead}")
        error.problem = problem
        raise error
    if len(names) > MAX_CLASSES:
        raise IngestError(f"classes file {classes}: {len(names)} class names; masks are 8-bit, at most {MAX_CLASSES}")
    return names


# --------------------------------------------------------------------------- one pair
# PIL modes of masks that cannot hold class ids, and what they are (for the message).
_MASK_MODE_NAMES = {
    "LA": "greyscale with an alpha channel (LA)",
    "PA": "palette with an alpha channel (PA)",
    "La": "greyscale with premultiplied alpha (La)",
    "RGBa": "RGB with premultiplied alpha (RGBa)",
    "CMYK": "CMYK colour",
    "YCbCr": "YCbCr colour",
    "LAB": "L*a*b* colour",
    "HSV": "HSV colour",
    "F": "32-bit floating point",
}


@contextlib.contextmanager
def _decoding(what: str, expected: str, data: bytes):
    """Any decoding failure of PIL inside the block becomes PairError("undecodable") naming ``what``
    (PIL raises many types for truncated or corrupt data); a PairError passes through. An empty file (``data``)
    is said to be empty (QA 89 L2: "not an image PIL can read" hid a copy that failed)."""
    if not data:
        raise PairError("undecodable", f"{what} is an empty file (0 bytes): copy it again from its source")
    try:
        yield
    except UnidentifiedImageError:
        raise PairError("undecodable", f"{what} is not an image PIL can read ({expected})") from None
    except PairError:
        raise
    except Exception as exc:
        raise PairError("undecodable", f"cannot decode {what}: {exc}") from exc


def read_mask(data: bytes, name: str, colours: bool = False) -> np.ndarray:
    """Decode mask bytes to ids [H, W] (or colours [H, W, 3] for --palette); ValueError says what the
    file is when it cannot be a mask: lossy (JPEG) data, an alpha channel, an unreadable file.
    ``colours`` (a --palette was given): a palette ("P") PNG gives its pixels' colours, which --palette
    maps, not its palette indices (whose order need not be the --palette's). A mask with an EXIF orientation tag
    is turned as shown, like its image (``read_image``; QA 80 M2: it was stored as written, 90 degrees off its
    turned image)."""
    if codec.image_format(data) == b"jpeg":
        under = f" under a {Path(name).suffix} name" if Path(name).suffix.lower() not in (".jpg", ".jpeg") else ""
        raise PairError("lossy_mask", f"mask {name} is JPEG data{under}: JPEG is lossy and changes class ids at "
                                      f"region edges; masks must be lossless PNG")
    _check_png_chunks(data, f"mask {name}")
    with _decoding(f"mask {name}", "expected PNG data", data):
        with Image.open(io.BytesIO(data)) as stored:
            turned = codec.exif_orientation(stored) in range(2, 9)  # from the header, as for images
            stored.load()
            fmt, mode = stored.format, stored.mode
            img = ImageOps.exif_transpose(stored) if turned else stored  # flips and quarter turns: ids kept
            if fmt not in LOSSLESS_MASK_FORMATS:
                raise PairError("lossy_mask", f"mask {name} is {fmt} data; masks must be lossless PNG")
            if fmt == "TIFF" and "jpeg" in str(img.info.get("compression", "")).lower():
                raise PairError("lossy_mask", f"mask {name} is a JPEG-compressed TIFF (lossy); masks must be "
                                              f"lossless PNG")
            if mode in _MASK_MODE_NAMES:
                raise PairError("mask_mode", f"mask {name} is {_MASK_MODE_NAMES[mode]}; class-id masks must be "
                                             f"single-channel (greyscale, palette or 1-bit PNG), or RGB colours "
                                             f"with --palette")
            _check_complete(data, f"mask {name}")
            if mode == "1":  # 1-bit: ids 0 and 1
                return np.asarray(img).astype(np.uint8)
            if mode == "P" and colours:
                return np.asarray(img.convert("RGB"))
            if mode == "L" and fmt == "PNG" and _png_grey_depth(data) in (2, 4):
                # PIL scales 2/4-bit grey to 0..255 (id 3 of a 2-bit mask would read 255, the ignore index)
                return np.asarray(img) // (255 // (2 ** _png_grey_depth(data) - 1))
            if mode == "RGBA":
                alpha = np.asarray(img.getchannel("A"))
                if (alpha != 255).any():
                    raise PairError("mask_mode", f"mask {name} is RGBA with {int((alpha != 255).sum())} (partly) "
                                                 f"transparent pixels; class-id masks must be single-channel or "
                                                 f"opaque RGB with --palette")
                # opaque: mapped by its RGB colours like an RGB mask (``_mask_ids``), named RGBA in its errors
            return np.asarray(img)


def _png_grey_depth(data: bytes) -> Optional[int]:
    """The bit depth of a greyscale PNG (IHDR: byte 24 bit depth, byte 25 colour type 0); None otherwise."""
    if codec.image_format(data) == b"png" and len(data) > 26 and data[25] == 0:
        return data[24]
    return None


def _check_png_chunks(data: bytes, what: str) -> None:
    """PairError for a PNG libpng (TensorFlow's decoder) refuses, checked before Pillow opens it: Pillow reads a
    PNG cut in its IEND chunk or with a wrong IEND CRC or an unknown critical chunk (QA 80 H1: the run then
    stopped with a traceback), and called a wrong checksum before the pixels "not an image PIL can read" (L5)."""
    damage = png_damage(data, pixels=True)  # the pixel stream too (QA 82 M1: rows cut short passed Pillow)
    if damage:
        raise PairError("undecodable", f"{what} is a damaged PNG ({damage}): TensorFlow cannot decode it; export "
                                       f"or copy the file again")


def _check_complete(data: bytes, what: str) -> None:
    """PairError unless the file is complete: Pillow decodes a PNG with a bad chunk checksum or
    without its end chunk, TensorFlow does not (the pipeline would then stop on the record).
    ``verify`` (on a fresh open: it consumes the file) checks what ``_check_png_chunks`` left to it."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except Exception as exc:
        raise PairError("undecodable", f"{what} is damaged ({exc}): TensorFlow cannot decode it; export the "
                                       f"file again") from None


def _as_served(data: bytes) -> Optional[np.ndarray]:
    """A JPEG's pixels as the served model sees the original bytes: TensorFlow's decoder, turned upright
    by its EXIF tag in the same graph ops (PIL's decoder differs by up to 14 grey levels; QA, session 18).
    None when TensorFlow cannot decode it (PIL's pixels are stored then)."""
    import tensorflow as tf

    from segbalance.trainer import exif_orientation

    try:
        decoded = tf.io.decode_image(data, channels=3, expand_animations=False)
        return exif_orientation.upright(decoded, exif_orientation.orientation(tf.constant(data))).numpy()
    except (tf.errors.InvalidArgumentError, ValueError):
        return None


def read_image(data: bytes, name: str) -> Tuple[bytes, Tuple[int, int], bool]:
    """The bytes to store for an image, its (height, width) and whether it was turned upright.

    PNG/JPEG bytes are kept as they are. Other formats (BMP, TIFF) are re-encoded to PNG from
    their pixels: a palette image by its colours (not its indices), modes other than greyscale and
    RGB as RGB (an alpha channel dropped, as TensorFlow's 3-channel decode of a PNG drops it). An
    image with an EXIF orientation tag is turned as viewers (and annotation tools) show it and
    re-encoded to PNG: masks are drawn on the image as shown. PairError says what is wrong."""
    what = f"image {name}"
    _check_png_chunks(data, what)
    with _decoding(what, "PNG, JPEG, BMP or TIFF", data):
        with Image.open(io.BytesIO(data)) as img:
            rotated = codec.exif_orientation(img) in range(2, 9)  # from the header, as the trainer reads it
            img.load()
            if img.mode.startswith("I") or img.mode == "F":
                raise PairError("image_not_8bit", f"{what} is {img.mode} ({'16' if ';16' in img.mode else '32'}-bit); "
                                                  f"expected 8-bit RGB or greyscale: convert it to 8 bits (scale its "
                                                  f"values to 0-255) before ingest")
            kept = codec.image_format(data) in (b"png", b"jpeg") and not rotated
            _check_complete(data, what)
            if kept:
                return data, (img.height, img.width), False
            if rotated and codec.image_format(data) == b"jpeg":
                served = _as_served(data)
                if served is not None:
                    return codec.encode_png(served), served.shape[:2], True
            out = ImageOps.exif_transpose(img) if rotated else img
            if out.mode not in ("L", "RGB"):
                with warnings.catch_warnings():  # "palette images with transparency": dropped on purpose
                    warnings.simplefilter("ignore")
                    out = out.convert("RGB")
            return codec.encode_png(np.asarray(out)), (out.height, out.width), rotated


def _mask_ids(mask: np.ndarray, options: IngestOptions, name: str = "") -> np.ndarray:
    if mask.ndim == 3:
        rgb = mask[..., :3]
        if options.palette is None:
            channels = "RGBA, 4" if mask.shape[-1] == 4 else f"RGB colour, {mask.shape[-1]}"
            if (rgb == rgb[..., :1]).all():  # grey ids written as RGB: say so, and what to do
                raise PairError("rgb_mask_without_palette", f"mask {name} is {channels} channels, all equal: class "
                                                            f"ids saved as RGB; save the masks single-channel (8-bit "
                                                            f"greyscale), or map them with --palette "
                                                            f"'{{\"0\": [0, 0, 0], \"1\": [1, 1, 1], ...}}'")
            raise PairError("rgb_mask_without_palette", f"mask {name} is {channels} channels, and no --palette "
                                                        f"was given to map colours to class ids")
        if not _has_colours(options.palette):  # --value-map (or grey values in --palette): no colour to map
            raise PairError("rgb_mask_without_palette", f"mask {name} is RGB, and {options.palette_source} maps "
                                                        f"the values of single-channel masks: map colours with "
                                                        f"--palette")
        colours, inverse = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
        lookup = np.empty(len(colours), dtype=np.int64)
        for i, colour in enumerate(colours):
            key = tuple(int(x) for x in colour)
            if key not in options.palette:
                raise PairError("colour_not_in_palette", f"mask {name} colour {key} is not in --palette: give it its "
                                                         f"class, or 'no label' with \"{options.ignore_index}\": "
                                                         f"{list(key)} (e.g. a VOC border)")
            lookup[i] = options.palette[key]
        mask = lookup[inverse.reshape(-1)].reshape(mask.shape[:2])
    elif mask.ndim == 2 and options.palette is not None and any(isinstance(k, int) for k in options.palette):
        values, inverse = np.unique(mask, return_inverse=True)  # grey values of single-channel masks -> ids
        lookup = np.empty(len(values), dtype=np.int64)
        for i, value in enumerate(values.tolist()):
            if value not in options.palette:
                no_label = (f'"{value}": {options.ignore_index}' if options.palette_source == "--value-map" else
                            f'"{options.ignore_index}": {value}')
                raise PairError("value_not_in_palette", f"mask {name} value {value} is not in {options.palette_source},"
                                                        f" which maps single-channel masks by their grey values: give "
                                                        f"every value its class ({no_label} for 'no label')")
            lookup[i] = options.palette[value]
        mask = lookup[inverse.reshape(-1)].reshape(mask.shape)
    if mask.ndim != 2:
        raise PairError("mask_shape", f"mask {name} has shape {mask.shape}; expected [H, W] or [H, W, 3]")
    limit = options.num_classes if options.num_classes is not None else 255
    bad = (mask != options.ignore_index) & ((mask >= limit) | (mask < 0))  # negatives: int32 TIFF masks
    if bad.any():
        ids = np.unique(mask[bad]).tolist()
        shown = ids if len(ids) <= 10 else ids[:5] + ids[-5:]  # the smallest (negatives) and the largest
        limit_text = f"num_classes={options.num_classes}" if options.num_classes else "255 values"
        raise PairError(OUT_OF_RANGE, f"mask {name} has class ids {shown} outside [0, {limit_text}) that are not "
                                      f"ignore_index={options.ignore_index}{_grey_level_hint(mask, options)}")
    return mask.astype(np.uint8)


def encode_pair(stem: str, image_path: Path, mask_path: Path, options: IngestOptions,
                notes: Optional[List[str]] = None) -> bytes:
    """Check one pair and return its serialized Example; PairError (a ValueError) says what is
    wrong. ``notes`` gets "exif_rotated" when the image was turned upright by its EXIF tag,
    ``MAX_ID_NOTE`` + the mask's largest class id (ignore_index not counted), and ``LARGE_NOTE`` + HxW for an
    image too large for one evaluation request (``large_image_note``)."""
    try:
        stem.encode("utf-8")
    except UnicodeEncodeError:  # (QA 94 L8: the reason was Python's codec error)
        raise PairError("name_not_utf8", f"its file name is not UTF-8 text ({shown(stem)}), which a record's "
                                         f"image/source_id must be: rename the image and its mask") from None
    image_bytes, (height, width), rotated = read_image(image_path.read_bytes(), image_path.name)
    mask_bytes = mask_path.read_bytes()
    mask = read_mask(mask_bytes, mask_path.name, colours=_has_colours(options.palette))
    mask_turned = _exif_turned(mask_bytes)
    if (height, width) != mask.shape[:2]:
        upright = " (turned upright by its EXIF orientation tag)"
        raise PairError("size_mismatch", f"image{upright * rotated} is {width}x{height} but "
                                         f"mask{upright * mask_turned} is {mask.shape[1]}x{mask.shape[0]} (WxH)")
    ids = _mask_ids(mask, options, mask_path.name)
    if options.palette is not None or mask_turned or not (mask.ndim == 2 and mask.dtype == np.uint8 and
                                                          codec.image_format(mask_bytes) == b"png"
                                                          and _is_grey_png(mask_bytes)):
        mask_bytes = codec.encode_png(ids)
    labeled = options.labeled.get(stem) if options.labeled is not None else None
    group = options.groups[stem] if options.groups is not None else None
    example = codec.build_example(image_bytes, mask_bytes, stem, height, width, labeled, group)
    if notes is not None:
        if rotated:
            notes.append("exif_rotated")
        # a candidate at the most classes it may have; ``large_images`` keeps those over the budget at the data's
        if request_bytes((height, width), options.num_classes or MAX_CLASSES) > PREDICT_BUDGET_BYTES:
            notes.append(f"{LARGE_NOTE}{height}x{width}")
        labelled = ids[ids != options.ignore_index]
        if labelled.size:
            notes.append(f"{MAX_ID_NOTE}{int(labelled.max())}")
        if labelled.size < ids.size:
            notes.append("has_ignore")
    return example.SerializeToString()


MAX_ID_NOTE = "max_class_id="  # encode_pair's note of a mask's largest class id
LARGE_NOTE = "large="  # encode_pair's note of an image too large for one evaluation request: large=HxW


def large_images(candidates: List[dict], classes: int) -> List[dict]:
    """The candidates (``LARGE_NOTE``) whose one evaluation request at ``classes`` exceeds SegEvaluator's budget."""
    return [e for e in candidates if request_bytes((e["height"], e["width"]), classes) > PREDICT_BUDGET_BYTES]


def large_image_note(large: List[dict], classes: int, given: bool) -> str:
    """The warning for images whose one evaluation request exceeds SegEvaluator's budget at ``classes`` (``given``:
    --num-classes; else the masks' largest id + 1, and the data may have more) (QA 80 M1: three 13000x13000 PNGs
    of 569 KB took a run past 12 GB): every component decodes them whole, and SegEvaluator predicts at the input
    size (2 x H x W x C float32), however small the training size."""
    shown = ", ".join(f"{e['source_id']} ({e['width']}x{e['height']}, about "
                      f"{request_bytes((e['height'], e['width']), classes) / 2 ** 30:.1f} GiB)" for e in large[:3])
    more = f" and {len(large) - 3} more" if len(large) > 3 else ""
    images = "1 image is" if len(large) == 1 else f"{len(large)} images are"
    more_classes = "" if given or classes >= MAX_CLASSES else " or more"
    return (f"ingest: warning: {images} too large for one evaluation request "
            f"({PREDICT_BUDGET_BYTES / 2 ** 30:.0f} GiB at {classes}{more_classes} classes): "
            f"{shown}{more}. Every component decodes them at full size and the evaluation predicts at that size, "
            f"whatever training.image_size is; if memory is short, downscale them with their masks "
            f"(nearest-neighbour) before ingest (listed in {REPORT_NAME}: large_images)")


def _exif_turned(data: bytes) -> bool:
    """Whether a file's EXIF orientation tag (header only) turns or flips it as shown."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return codec.exif_orientation(img) in range(2, 9)
    except Exception:  # read_mask has named an unreadable file already
        return False


def _has_colours(palette: Optional[dict]) -> bool:
    return palette is not None and any(isinstance(key, tuple) for key in palette)


def _is_grey_png(data: bytes) -> bool:
    # PNG IHDR colour type (byte 25): 0 = greyscale. Bit depth (byte 24) must be 8.
    return len(data) > 26 and data[24] == 8 and data[25] == 0


# --------------------------------------------------------------------------- shards
def die_with_parent(parent: int) -> None:
    """A shard worker's start: it ends when the ingest that started it (pid ``parent``) does (QA 27: a killed
    `ingest --shards K` left its K workers writing on, then idle, about 0.5 GiB each, for good). Linux's
    PR_SET_PDEATHSIG; elsewhere nothing. A parent gone before the call ends the worker at once."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != parent:
        os._exit(1)


def _write_shards(jobs: list) -> list:
    """``_write_shard`` of each job in worker processes. A stop (Ctrl-C, SIGTERM) or a failure ends the workers
    at once: leaving the pool's block waited for every shard to be written (QA 91 L6: SIGTERM to `ingest
    --shards K` stopped it only when the shards were done), and the next ingest writes them again anyway."""
    pool = ProcessPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1), initializer=die_with_parent,
                               initargs=(os.getpid(),))
    try:
        outcomes = list(pool.map(_write_shard, jobs))
    except BaseException:
        workers = list((getattr(pool, "_processes", None) or {}).values())  # (the executor names them nowhere else)
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in workers:
            worker.kill()
        for worker in workers:
            worker.join()
        raise
    pool.shutdown()
    return outcomes


def _write_shard(args) -> Tuple[List[str], List[dict], List[str], int, int, List[dict]]:
    """(written stems, bad-pair entries, written stems whose image was turned upright, the largest class id,
    the number of written masks holding the ignore index, the large images: ``large_image_note``)."""
    import tensorflow as tf

    # name: the shard's final name; strict: a bad pair fails the whole ingest, whose one error line and failed
    # report name every bad pair (QA 96 L4: a 'skipped' line each came before it)
    shard_path, name, pairs, options, progress_every, strict = args
    written, bad, rotated, max_id, with_ignore, large = [], [], [], -1, 0, []
    # Pillow's warning above 89 megapixels names no file and shows once; large_image_note names every such image
    with warnings.catch_warnings(), tf.io.TFRecordWriter(str(shard_path)) as writer:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for n, (stem, image_path, mask_path) in enumerate(pairs, start=1):
            notes: List[str] = []
            try:
                writer.write(encode_pair(stem, image_path, mask_path, options, notes))
                written.append(stem)
                if "exif_rotated" in notes:
                    rotated.append(stem)
                max_id = max([max_id] + [int(n[len(MAX_ID_NOTE):]) for n in notes if n.startswith(MAX_ID_NOTE)])
                with_ignore += "has_ignore" in notes
                for note in notes:
                    if note.startswith(LARGE_NOTE):
                        height, width = note[len(LARGE_NOTE):].split("x")
                        large.append({"source_id": stem, "height": int(height), "width": int(width)})
            except (ValueError, OSError) as exc:
                code = getattr(exc, "code", "undecodable" if isinstance(exc, ValueError) else "unreadable")
                bad.append(_bad(stem, code, str(exc), image_path, mask_path))
                if not strict:
                    print(f"ingest: skipped {shown(stem)}: {shown(str(exc))}", file=sys.stderr, flush=True)
            if progress_every and n % progress_every == 0:
                # one write per line: shard worker processes share stdout, and print() writes
                # the text and the newline separately, so lines of two workers could merge
                sys.stdout.write(f"ingest: {name}: {n}/{len(pairs)} pairs\n")
                sys.stdout.flush()
    return written, bad, rotated, max_id, with_ignore, large


def clean_stale(parent: Path) -> List[Path]:
    """Remove what a killed ingest left in ``parent``: its temporary folders, and restore a previous
    TARGET moved aside by a replacement that was killed before it finished. Only folders of a
    process that is no longer running, named by ingest, holding nothing but ingest's files. A
    symbolic link (an older version renamed a symlinked --output aside) is renamed back when its
    name is free, else left alone with a warning: never deleted, nor the folder it points to."""
    removed = []
    if not parent.is_dir():
        return removed
    for path in sorted(parent.iterdir()):
        prefix = next((p for p in (TMP_PREFIX, OLD_PREFIX) if output_guard.left_by_dead_process(path.name, p)), None)
        if prefix is None or not path.is_dir() or output_guard.foreign_entries(path, (*OWNED, "*" + PARTIAL_SUFFIX)):
            continue
        if prefix == OLD_PREFIX:
            marker = output_guard.read_marker(path) or {}
            name = marker.get("target")
            if isinstance(name, str) and name and "/" not in name and not (parent / name).exists():
                path.rename(parent / name)  # the replacement was killed between the two renames
                print(f"ingest: restored {parent / name} (a killed ingest had moved it aside)", file=sys.stderr)
                continue
        if path.is_symlink():
            print(f"ingest: warning: left {path} alone: a symbolic link (to {os.path.realpath(path)}) that an "
                  f"earlier ingest moved aside; rename it back or remove it yourself", file=sys.stderr)
            continue
        shutil.rmtree(path)
        removed.append(path)
    return removed


def ingest(
    images_dir: os.PathLike,
    masks_dir: os.PathLike,
    output: os.PathLike,
    span: Optional[int] = None,
    options: Optional[IngestOptions] = None,
    shards: int = 1,
    overwrite: bool = False,
    strict: bool = False,
    marker_extra: Optional[dict] = None,
) -> IngestResult:
    """Ingest a folder pair (see module docstring). Raises IngestError for whole-input problems,
    output_guard.OutputError for an output that must not be written (both UserErrors).
    ``marker_extra``: more fields for the target's marker, written with the records in one rename
    (`segbalance run` records there which source folder the span holds)."""
    options = options or IngestOptions()
    options = replace(options, labeled=_nfc_keys(options.labeled, options.labeled_source),
                      groups=_nfc_keys(options.groups, "--groups"))
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    # absolute ("." has no name to rename and no parent to hold the temporary folder) ...
    output = Path(os.path.abspath(output))
    if shards < 1:
        raise IngestError(f"--shards must be >= 1, got {shards}")
    if span is not None and not 0 <= span <= MAX_SPAN:  # (QA 69: Span-10**20 was written; TFX takes int32 spans)
        raise IngestError(f"--span must be from 0 to {MAX_SPAN}, got {span}")
    if options.num_classes is not None and not 1 <= options.num_classes <= MAX_CLASSES:
        raise IngestError(f"--num-classes must be between 1 and {MAX_CLASSES} (masks are 8-bit), "
                          f"got {options.num_classes}")
    problem = ignore_index_problem(options.num_classes, options.ignore_index)
    if problem:
        raise IngestError(f"--ignore-index {problem}")
    if options.class_names is not None and len(options.class_names) != options.num_classes:
        raise IngestError(f"{len(options.class_names)} class names for --num-classes {options.num_classes}: give "
                          f"as many names as classes")
    target = output / f"Span-{span}" if span is not None else output
    clean_stale(target.parent)  # first: a span it restores needs --overwrite like any other
    if target.is_symlink() and target.exists():  # ... and the real folder: renaming the link aside would replace
        # the link (a link to nothing is refused below, as with --span: QA 69, it made the folders it named)
        target = target.resolve()
        clean_stale(target.parent)
    # (QA 94 L2: the reference masks are an input too; an output inside them was written there)
    inputs = (images_dir, masks_dir, *([Path(options.reference_masks)] if options.reference_masks else []))
    if span is not None:  # OUTPUT itself must be a folder (or not exist yet) and not an input
        output_guard.check_not_inputs(output, "--output", inputs)
    elif target.is_dir() and any(p.name.startswith("Span-") and p.is_dir() for p in target.iterdir()):
        spans = sorted(p.name for p in target.iterdir() if p.name.startswith("Span-"))
        raise IngestError(f"--output {target} holds spans ({', '.join(spans[:5])}): add --span N to write another "
                          f"span there, or choose another --output")
    holds_data = output_guard.check_output_folder(
        target, command="ingest", option="--output",
        owned=owned_names(target), key_file=REPORT_NAME, inputs=inputs)
    if holds_data and not overwrite:
        raise IngestError(f"{target} already holds data; pass --overwrite to replace it, or choose another --span/--output")

    image_list = list_folder(images_dir, IMAGE_SUFFIXES, "image", options.image_stem_suffix)
    mask_list = list_folder(masks_dir, MASK_SUFFIXES, "mask", options.mask_stem_suffix)
    images, masks = image_list.files, mask_list.files
    if images_dir.resolve() == masks_dir.resolve():
        raise IngestError(f"IMAGES_DIR and MASKS_DIR are the same folder ({images_dir}): keep masks in their own folder")
    if not images and not masks and not image_list.without_ending and not mask_list.without_ending:
        raise IngestError(_no_files_message(images_dir, masks_dir, image_list, mask_list))
    # a file without the given ending whose whole stem names a file of the other folder pairs as it did without the
    # option (QA 79: its image was told it had no mask); the others without it stay skipped
    def take_whole(mine: Listing, others: set) -> None:
        for path in list(mine.without_ending):
            stem = source_id_of(path.stem)
            if stem in others and stem not in mine.files:
                mine.files[stem] = path
                mine.without_ending.remove(path)

    take_whole(image_list, {source_id_of(p.stem) for p in mask_list.without_ending} | set(masks))
    take_whole(mask_list, set(images))
    paired = set(images) & set(masks)

    def refuse_or_warn(problem: str, pairs: int, suggestion=None, skipped: str = "they are skipped") -> None:
        """Names that differ (by an ending: ``suggestion``; by letter case) would pair ``pairs`` more files: an
        error when they outnumber those that pair as they are (most of the data would be left out: all of it
        when nothing pairs), else a warning before the skipped pairs."""
        if pairs > len(paired) or strict:  # --strict: the pairs left out fail it, and this is why (QA 98: a
            # warning said they were "listed below", then the error line listed nothing of the names)
            raise _names_differ(problem, suggestion, target, options, images_dir, masks_dir, image_list, mask_list)
        print(f"ingest: warning: {problem}; {skipped} (listed below)", file=sys.stderr)

    if not paired:  # nothing pairs: endings that would (Cityscapes, ISIC, ...), before anything
        # else is said of the files (QA 78: run's labeled.json check spoke first); from the whole stems, not those
        # the given endings shortened (the suggestion then names the whole endings)
        whole_images, whole_masks = image_list.whole_stems(), mask_list.whole_stems()
        suggestion = suggest_stem_suffixes(whole_images, whole_masks) if whole_images and whole_masks else None
        if suggestion:
            text = suggestion_text(suggestion, whole_images[min(whole_images)].name, whole_masks[min(whole_masks)].name)
            refuse_or_warn(f"no image file pairs with a mask file of the same stem in {images_dir} and {masks_dir}: "
                           f"{text}", suggestion[2], suggestion)
    else:  # some pair: do the files left without a partner differ by an ending? (QA 89 M1: 3 of 40 written, exit 0)
        whole_images = {source_id_of(p.stem): p for stem, p in images.items() if stem not in paired}
        whole_masks = {source_id_of(p.stem): p for stem, p in masks.items() if stem not in paired}
        suggestion = suggest_stem_suffixes(whole_images, whole_masks) if whole_images and whole_masks else None
        if suggestion and (suggestion[2] < 2 or _takes_paired(suggestion, whole_images, whole_masks, paired)):
            suggestion = None  # one file: any two names "differ by an ending" (frame_0100 / frame_0007, QA 90 M3);
            # an ending of files of images that pair already: another kind of mask (s0.png / s0_color.png), whose
            # option would take their class-id masks away (QA 90 M2)
        if suggestion:
            text = suggestion_text(suggestion, whole_images[min(whole_images)].name, whole_masks[min(whole_masks)].name)
            refuse_or_warn(f"{len(paired)} image file(s) pair with a mask file of the same stem in {images_dir} and "
                           f"{masks_dir}, and {suggestion[2]} more of those without a partner once an ending is "
                           f"dropped: {text} (the files that pair as they are still pair)", suggestion[2], suggestion,
                           "without it they are skipped")
    # stems that differ in letter case only (B000.png / b000.png, a delivery from Windows or macOS): ingest pairs
    # stems exactly; said as for an ending (QA 89 L3: "image has no mask" 40 times)
    folded = {}
    for stem, path in masks.items():
        if stem not in paired:
            folded.setdefault(stem.casefold(), path)
    by_case = {}  # one pair per stem as case-folded, however many files of one folder fold to it (QA 90 L3)
    for stem, path in sorted(images.items()):
        if stem not in paired and stem.casefold() in folded:
            by_case.setdefault(stem.casefold(), (path, folded[stem.casefold()]))
    if by_case:
        first = next(iter(by_case.values()))
        refuse_or_warn(f"{len(by_case)} image file(s) in {images_dir} pair with a mask in {masks_dir} only when "
                       f"letter case is ignored ({first[0].name} / {first[1].name}): ingest pairs stems exactly; "
                       f"rename the files of one folder so that the stems match", len(by_case))
    result = IngestResult(target=target, num_classes=options.num_classes, ignore_index=options.ignore_index)
    result.bad = _unpaired(images_dir, masks_dir, image_list, mask_list)
    for item in result.bad if not strict else []:  # with --strict: in the error line and the failed report
        print(f"ingest: skipped {shown(item['source_id'])}: {shown(item['reason'])}", file=sys.stderr)
    named = {item.get("image") for item in result.bad} | {item.get("mask") for item in result.bad}
    result.skipped_files = [str(f) for f in image_list.skipped() + mask_list.skipped() if str(f) not in named]
    for listing, what, ending in ((image_list, "image", options.image_stem_suffix),
                                  (mask_list, "mask", options.mask_stem_suffix)):
        if listing.without_ending:
            print(f"ingest: warning: skipped {len(listing.without_ending)} {what} files whose names do not end in "
                  f"{ending!r} ({_sample([p.name for p in listing.without_ending], 3)}): not read; they are listed "
                  f"in the report (skipped_files)", file=sys.stderr)
    without_ending = {str(p) for p in image_list.without_ending + mask_list.without_ending}
    unread = sorted(set(result.skipped_files) - without_ending)  # (those without the ending: said above)
    if unread:
        print(f"ingest: warning: skipped {len(unread)} files that ingest does not read ({_sample(unread, 3)}): it "
              f"reads only files directly in {images_dir} and {masks_dir} "
              f"(not in sub-folders) ending in {', '.join(IMAGE_SUFFIXES)}", file=sys.stderr)
    if options.labeled is not None:
        result.labeled_unmatched = sorted(set(options.labeled) - set(images))
        if options.labeled and images and len(result.labeled_unmatched) == len(options.labeled):
            raise _no_key_matches(options.labeled_source, result.labeled_unmatched, images, images_dir)
        if result.labeled_unmatched and not strict:
            print(f"ingest: warning: {len(result.labeled_unmatched)} {options.labeled_source} stems match no image "
                  f"file in {images_dir}: {_sample(result.labeled_unmatched)}", file=sys.stderr)
    pairs = [(stem, images[stem], masks[stem]) for stem in sorted(set(images) & set(masks))]
    result.num_pairs = len(pairs)
    if 0 < len(pairs) < shards:  # (QA 69: --shards 100000 wrote 99,994 empty files beside 6 records)
        print(f"ingest: note: --shards {shards} is more than the {counted(len(pairs), 'image pair')}: writing "
              f"{counted(len(pairs), 'shard')}, at most one pair each", file=sys.stderr)
        shards = len(pairs)
    if options.groups is not None:
        ungrouped = [stem for stem, _, _ in pairs if stem not in options.groups]
        if ungrouped:
            error = IngestError(f"{options.groups_source}: {len(ungrouped)} of {len(pairs)} images have no group "
                                f"({_sample(ungrouped)}); give every image one (its scene, scan or tile); nothing "
                                f"was written")
            error.codes = frozenset({"ungrouped_images"})
            raise error
        result.groups_unmatched = sorted(set(options.groups) - set(images))
        if result.groups_unmatched and not strict:
            print(f"ingest: warning: {len(result.groups_unmatched)} {options.groups_source} stems match no image file "
                  f"in {images_dir}: {_sample(result.groups_unmatched)}", file=sys.stderr)

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f"{TMP_PREFIX}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        chunks = [pairs[i::shards] for i in range(shards)]
        progress = max(1, len(pairs) // shards // 10) if len(pairs) > PROGRESS_MIN_FILES else 0
        jobs = [(tmp / f"shard-{i:05d}-of-{shards:05d}{PARTIAL_SUFFIX}", f"data-{i:05d}-of-{shards:05d}.tfrecord",
                 chunk, options, progress, strict) for i, chunk in enumerate(chunks)]
        outcomes = _write_shards(jobs) if shards > 1 else [_write_shard(jobs[0])]
        for written, bad, rotated, max_id, with_ignore, large in outcomes:
            result.large_images.extend(large)
            result.written.extend(written)
            result.bad.extend(bad)
            result.exif_rotated.extend(rotated)
            result.max_class_id = max(result.max_class_id, max_id)
            result.masks_with_ignore += with_ignore
        result.written.sort()
        result.exif_rotated.sort()
        classes = options.num_classes or max(result.max_class_id + 1, 2)  # QA 82 M3: not 2 without --num-classes
        result.large_images = sorted(large_images(result.large_images, classes), key=lambda e: e["source_id"])
        if result.large_images:
            print(large_image_note(result.large_images, classes, options.num_classes is not None), file=sys.stderr,
                  flush=True)
        if result.exif_rotated:
            print(f"ingest: {len(result.exif_rotated)} images had an EXIF orientation tag: stored turned upright, as "
                  f"viewers and annotation tools show them ({_sample(result.exif_rotated, 3)})", flush=True)
        if result.written and result.max_class_id <= 0 and result.masks_with_ignore:
            ii = options.ignore_index  # 0/255 binary masks: the foreground would be 'no label', never learnt
            print(f"ingest: warning: no mask holds a class id other than 0, and {result.masks_with_ignore} of "
                  f"{len(result.written)} hold the ignore index {ii}: if these are binary masks saved as 0/{ii}, "
                  f"their foreground is ignored, not learnt; map it with --palette FILE holding "
                  f'{{"0": 0, "1": {ii}}}', file=sys.stderr, flush=True)
        if options.groups is not None:
            result.num_groups = len({options.groups[stem] for stem in result.written})
        problem = _nothing_written_reason(result, images_dir, masks_dir, strict)
        if problem:
            report_path = result.write_failed_report(problem)
            error = IngestError(f"{problem}; report: {report_path}")
            error.codes = frozenset(b["code"] for b in result.bad)
            raise error
        if options.reference_masks is not None:  # unusable ones are named before anything is in place (after
            # the masks' own checks, which say more: a class count too small shows in both)
            from segbalance.pipeline.reference_masks import check_reference_masks, copy_reference_masks

            def to_ids(data: bytes, name: str) -> np.ndarray:  # mapped as the masks are (--palette / --value-map)
                return _mask_ids(read_mask(data, name, colours=_has_colours(options.palette)), options, name)

            mapped = to_ids if options.palette is not None else None
            check_reference_masks(Path(options.reference_masks), options.num_classes or MAX_CLASSES + 1,
                                  options.ignore_index, images_dir, options.image_stem_suffix,
                                  options.mask_stem_suffix, to_ids=mapped)
            result.num_reference_masks = copy_reference_masks(Path(options.reference_masks), result.written,
                                                              tmp / REFERENCE_MASKS_FOLDER, options.mask_stem_suffix,
                                                              to_ids=mapped)
        (tmp / REPORT_NAME).write_text(json.dumps(result.report(), indent=1))
        if options.class_names is not None:  # (`run --data` reads them: ``spans.class_names_file``)
            (tmp / CLASS_NAMES_FILE).write_text(json.dumps({"class_names": list(options.class_names)}, indent=1))
        output_guard.write_marker(tmp, "ingest", target=target.name, shards=[job[1] for job in jobs],
                                  **(marker_extra or {}))
        if not overwrite and target.is_dir() and any(target.iterdir()):  # another command wrote it meanwhile
            raise IngestError(f"{target} was written by another command while this ingest ran; nothing was "
                              f"replaced: pass --overwrite to replace it, or choose another --span/--output")
        for job in jobs:  # complete: give the shards their data-* names (still inside the hidden folder)
            job[0].rename(tmp / job[1])
        if target.exists():
            old = target.parent / f"{OLD_PREFIX}{os.getpid()}"
            in_it = _cwd_inside(target)
            kept = {k: v for k, v in (output_guard.read_marker(target) or {}).items() if k != "written_by"}
            output_guard.write_marker(target, "ingest", **{**kept, "target": target.name})  # clean_stale restores it
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old)
            if in_it:
                print(f"ingest: note: {target} was replaced by a new folder; a shell that is in it still shows the "
                      f"old, deleted one: run `cd {target}`", file=sys.stderr)
        else:
            tmp.rename(target)
        earlier = failed_report_path(target)
        if is_failed_report(earlier):  # an earlier failure's report is out of date
            earlier.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def owned_names(target: Path) -> Sequence[str]:
    """What ``--overwrite`` may replace in ``target``: ``OWNED``, with the shards the marker names instead of any
    ``data-*-of-*`` name where it names them (QA 80 L2: a user's own ``data-00003-of-00004.tfrecord`` put in a
    folder ingest wrote was deleted for its name; folders of earlier versions have no list)."""
    shards = (output_guard.read_marker(target) or {}).get("shards") if target.is_dir() else None
    # only shard names count (QA 82 L4: a marker edited to list notes.txt had it deleted)
    names = [n for n in shards if isinstance(n, str) and fnmatch.fnmatchcase(n, OWNED[0])] if isinstance(
        shards, list) else []
    return (*(glob_escape(name) for name in names), *OWNED[1:]) if names else OWNED


def _cwd_inside(folder: Path) -> bool:
    try:
        cwd = Path.cwd()
    except OSError:  # the current folder was deleted
        return False
    return cwd == folder or folder in cwd.parents


def _takes_paired(suggestion, images: Dict[str, Path], masks: Dict[str, Path], paired: set) -> bool:
    """Whether the endings of ``suggestion`` (found among the files without a partner, ``images`` / ``masks`` by
    whole stem) are those of files whose stem, the ending dropped, pairs already: then its option would pair
    those files instead (``take_whole`` keeps a file without the ending only when none with it has its stem)."""
    image_end, mask_ends, _ = suggestion
    return (any(strip_stem_suffix(stem, end) in paired for stem in masks for end in mask_ends if end)
            or bool(image_end) and any(strip_stem_suffix(stem, image_end) in paired for stem in images))


def _names_differ(problem: str, suggestion, target: Path, options: IngestOptions, images_dir: Path,
                  masks_dir: Path, image_list: Listing, mask_list: Listing) -> IngestError:
    """The error of an ingest refused because the files' names differ (by an ending: code ``NAMES_DIFFER`` and
    the ``suggestion``'s ``pairing_options``; by letter case: no suggestion); its failed report written, as for
    any ingest that writes nothing (QA 79)."""
    failed = IngestResult(target=target, num_classes=options.num_classes, ignore_index=options.ignore_index)
    failed.bad = _unpaired(images_dir, masks_dir, image_list, mask_list)
    failed.skipped_files = [str(f) for f in image_list.skipped() + mask_list.skipped()]
    report_path = failed.write_failed_report(problem)
    error = IngestError(f"{problem}; nothing was written; report: {report_path}")
    if suggestion is not None:
        error.codes = frozenset({NAMES_DIFFER})
        error.pairing_options = suggestion_options(suggestion)
    return error


def _unpaired(images_dir: Path, masks_dir: Path, image_list: Listing, mask_list: Listing) -> List[dict]:
    """Bad-pair entries for an image without mask and a mask without image (or whose partner has a
    suffix ingest does not read, e.g. ``.webp``: TensorFlow's decode_image cannot decode it)."""
    images, masks, bad = image_list.files, mask_list.files, []
    supported = ", ".join(IMAGE_SUFFIXES)

    def not_a_file(path: Path) -> str:
        kind = "a folder" if path.is_dir() else "not a regular file (a FIFO, socket or device)"
        return f"{path.name} in {path.parent} is {kind}"

    def dangling(link: Path) -> str:
        try:
            os.stat(link)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # QA 80 L3: a loop was called a link to a file "which does not exist"
                return f"{link.name} is a link to {os.readlink(link)}, which leads into a loop of links"
        return f"{link.name} is a link to {os.readlink(link)}, which does not exist"

    for stem in sorted((set(image_list.broken) | set(mask_list.broken)) - set(images) - set(masks)):
        image, mask = image_list.broken.get(stem), mask_list.broken.get(stem)
        bad.append(_bad(stem, "broken_link", "; ".join(f"{what} {dangling(link)}" for what, link in
                                                       (("image", image), ("mask", mask)) if link is not None),
                        image, mask))
    for stem in sorted(set(images) - set(masks)):
        other = mask_list.other_suffix.get(stem)
        if stem in mask_list.broken:
            bad.append(_bad(stem, "broken_link", f"mask {dangling(mask_list.broken[stem])}", images[stem],
                            mask_list.broken[stem]))
        elif other is not None:
            bad.append(_bad(stem, "unsupported_mask_extension", f"mask {other.name} has the suffix {other.suffix}, "
                            f"which ingest does not read ({supported}): save it as PNG", images[stem], other))
        elif stem in mask_list.not_files:
            bad.append(_bad(stem, "no_mask", f"image has no mask file: {not_a_file(mask_list.not_files[stem])}",
                            image=images[stem]))
        else:
            bad.append(_bad(stem, "no_mask", f"image has no mask {stem}.* in {masks_dir}", image=images[stem]))
    for stem in sorted(set(masks) - set(images)):
        other = image_list.other_suffix.get(stem)
        if stem in image_list.broken:
            bad.append(_bad(stem, "broken_link", f"image {dangling(image_list.broken[stem])}", image_list.broken[stem],
                            masks[stem]))
        elif other is not None:
            bad.append(_bad(stem, "unsupported_image_extension", f"image {other.name} has the suffix {other.suffix}, "
                            f"which ingest does not read ({supported}): convert it to PNG or JPEG", other, masks[stem]))
        elif stem in image_list.not_files:
            bad.append(_bad(stem, "no_image", f"mask has no image file: {not_a_file(image_list.not_files[stem])}",
                            mask=masks[stem]))
        else:
            bad.append(_bad(stem, "no_image", f"mask has no image {stem}.* in {images_dir}", mask=masks[stem]))
    return bad


def _no_files_message(images_dir: Path, masks_dir: Path, image_list: Listing, mask_list: Listing) -> str:
    """The error when neither folder holds a file ingest reads: says why (sub-folders, other suffixes)."""
    message = f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {images_dir} and no masks in {masks_dir}"
    subs = [str(p) for p in image_list.subfolders + mask_list.subfolders]
    others = [p.name for p in [*image_list.other_suffix.values(), *mask_list.other_suffix.values()]]
    if subs:
        message += (f"; there are sub-folders ({_sample(subs, 3)}), and ingest does not look inside sub-folders: "
                    f"put the files directly in {images_dir} and {masks_dir}")
    if others:
        message += f"; files with other suffixes are not read ({_sample(others, 3)}): convert them to PNG"
    return message


def unnamed_ids(bad: Sequence, written: Sequence) -> Tuple[List[dict], int]:
    """(the bad pairs whose masks hold class ids the classes lack, the masks readable enough to tell: those and
    the written ones; QA 71: pairs broken otherwise do not count), from an ingest's ``bad`` and ``written``
    (an ``IngestResult``'s, or its ``ingest_report.json``'s)."""
    out_of_range = [b for b in bad if isinstance(b, dict) and b.get("code") == OUT_OF_RANGE]
    return out_of_range, len(written) + len(out_of_range)


def too_many_unnamed_ids(out_of_range: List[dict], readable: int) -> bool:
    """Whether so many masks hold ids the classes lack that the class list, not the masks, is wrong: more than
    ``MAX_BAD_ID_FRACTION`` of them (the trainer's rule; fewer are broken files, skipped as bad pairs: QA 70, one
    pixel of id 7 among 100 masks refused the delivery). QA 92 M4: `ingest --span N` with a classes.json a class
    short wrote 39 of 80 pairs and exited 0, where `run --data` refused the same folder."""
    return bool(out_of_range) and len(out_of_range) > MAX_BAD_ID_FRACTION * max(1, readable)


def unnamed_ids_problem(out_of_range: List[dict], readable: int, num_classes: Optional[int]) -> str:
    """"N of M masks hold class ids the C classes lack (first: ...)"."""
    return (f"{len(out_of_range)} of {readable} masks hold class ids the {num_classes} classes lack (first: "
            f"{out_of_range[0]['source_id']}: {out_of_range[0]['reason']})")


def _nothing_written_reason(result: IngestResult, images_dir: Path, masks_dir: Path, strict: bool) -> Optional[str]:
    """Why nothing may be written (None: write the span)."""
    first_bad = f"first: {result.bad[0]['source_id']}: {result.bad[0]['reason']}" if result.bad else ""
    if not result.written:
        if result.bad:
            return (f"no record was written from {images_dir} and {masks_dir}: "
                    f"all {len(result.bad)} pairs were bad ({first_bad})")
        return f"no image/mask pairs in {images_dir} and {masks_dir}"
    if strict and (result.bad or result.labeled_unmatched or result.groups_unmatched):
        problems = []
        if result.bad:
            problems.append(f"{len(result.bad)} of {len(result.bad) + len(result.written)} pairs are bad ({first_bad})")
        if result.labeled_unmatched:
            problems.append(f"{len(result.labeled_unmatched)} --labeled stems match no image file in {images_dir} "
                            f"({_sample(result.labeled_unmatched)})")
        if result.groups_unmatched:
            problems.append(f"{len(result.groups_unmatched)} --groups stems match no image file in {images_dir} "
                            f"({_sample(result.groups_unmatched)})")
        return "--strict: " + "; ".join(problems) + "; nothing was written"
    return None


# --------------------------------------------------------------------------- CLI
def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "ingest",
        help="pair images and masks by file stem and write TFRecords",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images_dir", metavar="IMAGES_DIR")
    parser.add_argument("masks_dir", metavar="MASKS_DIR")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--span", type=int, help="write under DIR/Span-N (for ImportExampleGen spans)")
    parser.add_argument("--labeled", metavar="FILE.json", help="{source_id: [labelled class ids]}")
    parser.add_argument("--groups", metavar="FILE.json",
                        help="{source_id: group}: the scene / scan / tile of each image (data.split_by: group)")
    parser.add_argument("--num-classes", type=int,
                        help="C: ids must be < C or ignore_index (default: from classes.json beside IMAGES_DIR)")
    parser.add_argument("--ignore-index", type=int, default=codec.DEFAULT_IGNORE_INDEX, help="'no label' id (default 255)")
    parser.add_argument("--palette", metavar="FILE",
                        help='JSON [[r,g,b], ...] per class id, for RGB colour masks, or {"id": [r,g,b] or grey value} '
                             '(e.g. {"0": 0, "1": 255} for binary 0/255 masks; {"255": [224,224,192]}: a VOC border '
                             'colour as ignore)')
    parser.add_argument("--value-map", metavar="FILE",
                        help='JSON {"mask value": class id} for single-channel masks whose values are not the class '
                             'ids, several values to one id allowed (Cityscapes labelIds -> trainIds: {"7": 0, '
                             '"8": 1, "0": 255, ...}); every value in the masks must be listed; not with --palette')
    parser.add_argument("--reference-masks", metavar="DIR",
                        help="complete masks (<stem>.png, e.g. masks_full/) kept with the records in "
                             "TARGET/reference_masks/: `segbalance run` scores the eval images against them")
    parser.add_argument("--image-stem-suffix", default="", metavar="TEXT",
                        help="an ending of the image file names, dropped before pairing: a_leftImg8bit.png pairs as "
                             "a (the record's source_id)")
    parser.add_argument("--mask-stem-suffix", default="", metavar="TEXT",
                        help="an ending of the mask (and --reference-masks) file names, dropped before pairing: "
                             "a_gtFine_labelIds.png, a_mask.png pair as a")
    parser.add_argument("--shards", type=int, default=1, help="output files, written in parallel (default 1)")
    parser.add_argument("--strict", action="store_true",
                        help="any bad pair, or a --labeled / --groups stem with no image, stops the command "
                             "(exit 2) and nothing is written")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output/span that an earlier ingest wrote (never anything else)")
    parser.set_defaults(func=_main)


def _main(args) -> int:
    started = time.time()
    if args.num_classes is not None and not 1 <= args.num_classes <= MAX_CLASSES:
        raise IngestError(f"--num-classes must be between 1 and {MAX_CLASSES} (masks are 8-bit), got "
                          f"{args.num_classes}; leave it out to read the class count from classes.json")
    if args.palette and args.value_map:
        raise IngestError("--palette and --value-map both map mask values to class ids: give one (--value-map for "
                          "several values per class, --palette for colours)")
    names_file, names_note = Path(args.images_dir).parent / CLASS_NAMES_FILE, None
    try:
        names = read_class_names(names_file)
    except IngestError as exc:  # with --num-classes the file is not needed (QA 87 M2: it was never read before)
        if args.num_classes is None:
            raise
        names, names_note = None, exc.problem or str(exc)
    num_classes = args.num_classes if args.num_classes is not None else None if names is None else len(names)
    if names is not None and len(names) != num_classes:
        names, names_note = None, f"{names_file} names {len(names)} classes, --num-classes is {num_classes}"
    if args.reference_masks is not None and not Path(args.reference_masks).is_dir():
        raise IngestError(f"--reference-masks {args.reference_masks} is not a folder: give the folder of complete "
                          f"masks (<stem>.png), or leave the option out")
    options = IngestOptions(
        num_classes=num_classes,
        ignore_index=args.ignore_index,
        palette=(load_palette(args.palette) if args.palette else
                 load_value_map(args.value_map, args.ignore_index, num_classes) if args.value_map else None),
        palette_source="--value-map" if args.value_map else "--palette",
        labeled=load_labeled(args.labeled, num_classes) if args.labeled else None,
        groups=load_groups(args.groups) if args.groups else None,
        reference_masks=Path(args.reference_masks) if args.reference_masks else None,
        class_names=names,
        image_stem_suffix=args.image_stem_suffix,
        mask_stem_suffix=args.mask_stem_suffix,
    )
    result = ingest(args.images_dir, args.masks_dir, args.output, args.span, options, args.shards,
                    args.overwrite, args.strict)
    out_of_range, readable = unnamed_ids(result.bad, result.written)
    if too_many_unnamed_ids(out_of_range, readable):  # the span is written (bad pairs are skipped), but a run
        # refuses it (``span_records.check_class_ids``), as `run --data` refuses the folder
        print(f"ingest: warning: {unnamed_ids_problem(out_of_range, readable, num_classes)}: if the data has more "
              f"classes, name them all in the classes.json beside IMAGES_DIR (or give --num-classes) and ingest "
              f"again with --overwrite; `segbalance run` refuses this span", file=sys.stderr, flush=True)
    unmatched = f", {len(result.labeled_unmatched)} --labeled stems without image" if result.labeled_unmatched else ""
    references = (f", {result.num_reference_masks} reference masks" if args.reference_masks is not None else "")
    if args.reference_masks is not None and result.written and not result.num_reference_masks:
        print(f"ingest: warning: --reference-masks {args.reference_masks} holds no <source_id>.png of the written "
              f"records: evaluation scores them against their own masks", file=sys.stderr)
    print(f"ingest: wrote {len(result.written)} records to {result.target} "
          f"({len(result.bad)} bad{unmatched}{references}, report {result.target / REPORT_NAME}, "
          f"{time.time() - started:.1f}s)")
    if names_note:  # (after the records are written: a refused command keeps nothing, and says one line)
        print(f"ingest: note: {names_note}: its names are not kept with the records; a run of them needs the "
              f"classes' names in its config", file=sys.stderr)
    if result.num_classes is None and result.written:  # F6 (QA session 18): say that nothing checked the ids
        print(f"ingest: note: class ids were not checked (no classes.json beside {args.images_dir}, no "
              f"--num-classes); the largest id in the masks is {result.max_class_id} (recorded in the report): "
              f"a run refuses the span if its classes.names are fewer", file=sys.stderr)
    return 0
