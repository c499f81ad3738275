"""Pairing image and mask files whose names differ by an ending: ``aachen_000000_000019_leftImg8bit.png`` with
``aachen_000000_000019_gtFine_labelIds.png`` (Cityscapes), ``ISIC_0000000.jpg`` with
``ISIC_0000000_segmentation.png``, ``car_01.jpg`` with ``car_01_mask.png``.

``segbalance ingest --image-stem-suffix S --mask-stem-suffix T`` drops those endings from the file stems
before pairing (``strip_stem_suffix``); the stem that is left is the record's ``image/source_id``. When no file
pairs at all, or some files are left without a partner, ``suggest_stem_suffixes`` looks for endings that would pair
them, so ingest says which options to pass instead of only "image has no mask" (an error when they would pair more
files than pair as they are, else a warning: QA 89 M1).
"""
from __future__ import annotations

import shlex
from typing import Dict, Iterable, List, Optional, Set, Tuple

from segbalance.contract import source_id_of

SEPARATORS = "_-. "  # an ending suggested starts at one of these (or is the whole common ending)
MAX_SUGGESTION_FILES = 5000  # the suggestion tries these many stems of each side (those without a partner)


def strip_stem_suffix(stem: str, suffix: str) -> str:
    """``stem`` without ``suffix`` at its end (compared in Unicode NFC, as stems are); a stem that does not end
    in it, or is nothing but it, is kept whole."""
    suffix = source_id_of(suffix)
    if suffix and stem.endswith(suffix) and len(stem) > len(suffix):
        return stem[:-len(suffix)]
    return stem


def common_ending(stems: List[str]) -> str:
    """The longest ending every stem shares."""
    if not stems:
        return ""
    first = stems[0]
    n = len(first)
    for stem in stems[1:]:
        k = 0
        while k < min(n, len(stem)) and first[len(first) - 1 - k] == stem[len(stem) - 1 - k]:
            k += 1
        n = k
    return first[len(first) - n:] if n else ""


def _candidates(stems: List[str]) -> List[str]:
    """Endings to try: "" and each tail of the common ending that starts at a separator, or the whole of it."""
    ending = common_ending(stems)
    tails = {ending[i:] for i in range(len(ending)) if ending[i] in SEPARATORS}
    return ["", *sorted(tails | ({ending} if ending else set()), key=len)]


def endings_after(stems: Iterable[str], bases: Set[str]) -> Dict[str, Set[str]]:
    """{ending: the bases it follows}: the endings that follow one of ``bases`` at a separator in ``stems``
    (``a_gtFine_color`` after ``a``), with the bases each would pair once dropped. A folder holding several kinds
    of mask per image has no ending common to all its names. (The bases are those ``strip_stem_suffix`` leaves:
    an ending starts at a separator, so each stem ending in it has one there.)"""
    found: Dict[str, Set[str]] = {}
    for stem in stems:
        for i in range(1, len(stem)):
            if stem[i] in SEPARATORS and stem[:i] in bases:
                found.setdefault(stem[i:], set()).add(stem[:i])
    return found


Suggestion = Tuple[str, Tuple[str, ...], int]  # (image ending, mask endings that pair as many, pairs)


def suggest_stem_suffixes(image_stems: Iterable[str], mask_stems: Iterable[str]) -> Optional[Suggestion]:
    """The image ending and the mask endings (several when the masks come in several kinds, each pairing as many
    files) that pair the most files once dropped, or None when no ending pairs any; asked of the stems that have
    no partner as they are."""
    images = sorted(image_stems)[:MAX_SUGGESTION_FILES]
    masks = sorted(mask_stems)[:MAX_SUGGESTION_FILES]
    best: Optional[Suggestion] = None
    best_paired: Set[str] = set()
    for image_end in _candidates(images):
        stripped = {strip_stem_suffix(s, image_end) for s in images}
        after = endings_after(masks, stripped)  # (their pairs counted once: QA 90 L4, 16 s for 5,000 odd endings)
        for mask_end in sorted(set(_candidates(masks)) | set(after), key=lambda e: (len(e), e)):
            if not image_end and not mask_end:
                continue
            paired = (after[mask_end] if mask_end in after
                      else stripped & {strip_stem_suffix(s, mask_end) for s in masks})
            if paired and (best is None or len(paired) > best[2]):
                best, best_paired = (image_end, (mask_end,), len(paired)), paired
            elif (best is not None and paired == best_paired and image_end == best[0] and mask_end and all(best[1])
                  and len(paired) > 1):  # another kind of mask of the same images (QA 79: not '', not other images)
                best = (image_end, (*best[1], mask_end), len(paired))
    return best


def suggestion_options(suggestion: Suggestion) -> str:
    """The ingest options of a suggestion, as a shell takes them (``=``: an ending may start with '-'); with
    several mask endings, ``--mask-stem-suffix=ENDING`` (the message lists them)."""
    image_end, mask_ends, _ = suggestion
    options = [f"--image-stem-suffix={shlex.quote(image_end)}"] if image_end else []
    if len(mask_ends) > 1 or mask_ends[0]:
        options.append(f"--mask-stem-suffix={shlex.quote(mask_ends[0]) if len(mask_ends) == 1 else 'ENDING'}")
    return " ".join(options)


def suggestion_text(suggestion: Suggestion, image_name: str, mask_name: str) -> str:
    """What to pass, for an ingest whose files (all or some) pair only once an ending is dropped."""
    image_end, mask_ends, pairs = suggestion
    if len(mask_ends) > 1:
        kinds = ", ".join(repr(e) for e in mask_ends)
        return (f"the file names differ by an ending (e.g. {image_name} / {mask_name}), and there are {len(mask_ends)} "
                f"kinds of mask per image ({kinds}): pass {suggestion_options(suggestion)} with the ending of the "
                f"masks that hold class ids (the others are then skipped); it pairs {pairs} files")
    more = "at least " if pairs >= MAX_SUGGESTION_FILES else ""
    return (f"the file names differ by an ending (e.g. {image_name} / {mask_name}): "
            f"{suggestion_options(suggestion)} drops it before pairing and pairs {more}{pairs} files")
