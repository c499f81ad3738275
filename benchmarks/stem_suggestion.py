"""Time of ingest's ending suggestion (``stem_pairing.suggest_stem_suffixes``) against recounting each ending's
pairs, as a ratio (QA 90 L4).

    .venv/bin/python benchmarks/stem_suggestion.py [--files 5000] [--repeats 3]

Since session 35 the suggestion runs whenever files are left without a partner (before: only when nothing
paired). The endings found after a base (``endings_after``) now carry the bases they pair, so an ending's pairs
are counted once; the baseline is the former loop, which stripped every mask stem again for each ending (kept
here as ``recount``). Both run on the same stems, interleaved, ``--repeats`` times; ratio = median of ``recount``
/ median of ``shipped``; both must give the same suggestion. Cases: masks with one odd ending each (a time
stamp: ``img_00001_731234``, no useful ending, every ending a candidate), and masks named ``STEM_mask``.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segbalance.pipeline.stem_pairing import (MAX_SUGGESTION_FILES, _candidates, endings_after,  # noqa: E402
                                              strip_stem_suffix, suggest_stem_suffixes)


def recount(image_stems, mask_stems):
    """The loop as it was before session 35: every ending's pairs counted by stripping every mask stem."""
    images = sorted(image_stems)[:MAX_SUGGESTION_FILES]
    masks = sorted(mask_stems)[:MAX_SUGGESTION_FILES]
    best, best_paired = None, set()
    for image_end in _candidates(images):
        stripped = {strip_stem_suffix(s, image_end) for s in images}
        endings = set(_candidates(masks)) | set(endings_after(masks, stripped))
        for mask_end in sorted(endings, key=lambda e: (len(e), e)):
            if not image_end and not mask_end:
                continue
            paired = stripped & {strip_stem_suffix(s, mask_end) for s in masks}
            if paired and (best is None or len(paired) > best[2]):
                best, best_paired = (image_end, (mask_end,), len(paired)), paired
            elif (best is not None and paired == best_paired and image_end == best[0] and mask_end and all(best[1])
                  and len(paired) > 1):
                best = (image_end, (*best[1], mask_end), len(paired))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=5000, help="leftover images and masks, each")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(0)
    images = [f"img_{i:05d}" for i in range(args.files)]
    cases = {"odd endings": [f"img_{i:05d}_{rng.randrange(10 ** 9)}" for i in range(args.files)],
             "_mask": [f"img_{i:05d}_mask" for i in range(args.files)]}
    print(f"{args.files} images and masks, {args.repeats} repeats; {platform.machine()}, {os.cpu_count()} CPU cores\n")
    print("| masks | shipped (s) | recount (s) | ratio | suggestion |")
    print("|---|---|---|---|---|")
    for name, masks in cases.items():
        times, found = {"shipped": [], "recount": []}, {}
        for _ in range(args.repeats):
            for label, function in (("shipped", suggest_stem_suffixes), ("recount", recount)):
                start = time.perf_counter()
                found[label] = function(images, masks)
                times[label].append(time.perf_counter() - start)
        assert found["shipped"] == found["recount"], found
        shipped, old = statistics.median(times["shipped"]), statistics.median(times["recount"])
        _, endings, pairs = found["shipped"]
        print(f"| {name} | {shipped:.3f} | {old:.3f} | {old / shipped:.0f}x | {endings[0]!r} pairs {pairs} |")


if __name__ == "__main__":
    main()
