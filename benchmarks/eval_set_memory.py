"""SegEvaluator's evaluation set: peak memory and time with truth masks kept encoded (``EncodedMask``, decoded
again per scored batch) against holding every decoded mask, as before QA 80 M1. A ratio from one run.

    .venv/bin/python benchmarks/eval_set_memory.py [--num-images 80] [--size 2000] [--repeats 2]

Each variant runs in its own process (``ru_maxrss`` is a process's peak): ``load_eval_set`` over ``--num-images``
records whose masks are ``--size`` squared, then ``confusion_over`` with a stand-in model that returns zeros (the
serving model's own memory and time are the same for both and left out). ``decoded`` holds ``np.asarray`` of each
mask, as the set did. The variants alternate ``--repeats`` times; the table gives the median peak RSS growth and
time of each and their ratio. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import io
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def one(variant: str, num_images: int, size: int) -> dict:
    """Peak RSS growth (MiB) and seconds of one variant in this process."""
    import numpy as np
    from PIL import Image

    from segbalance.components.seg_evaluator import confusion_over, load_eval_set
    from segbalance.trainer.example_codec import build_example

    def png(array):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "PNG")
        return buffer.getvalue()

    image = png(np.zeros((8, 8, 3), np.uint8))  # the stand-in model does not read it
    records = []
    for i in range(num_images):
        mask = np.zeros((size, size), np.uint8)
        mask[i % size:, : size // 3] = 1 + i % 3
        records.append(build_example(image, png(mask), source_id=f"r{i}", height=size, width=size).SerializeToString())
    base, started = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    items, _ = load_eval_set(records, None, num_classes=4)
    if variant == "decoded":
        items = [(source_id, data, np.asarray(truth)) for source_id, data, truth in items]
    confusion_over(lambda images: np.zeros((len(images), size, size), np.int64), items, 4, 255)
    return {"mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024,
            "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=80)
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: run this variant, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.num_images, args.size)))
        return
    runs = {"encoded": [], "decoded": []}
    for _ in range(args.repeats):
        for variant in runs:
            out = subprocess.run([sys.executable, __file__, "--one", variant, "--num-images", str(args.num_images),
                                  "--size", str(args.size)], check=True, capture_output=True, text=True).stdout
            runs[variant].append(json.loads(out.strip().splitlines()[-1]))
    median = {v: {k: statistics.median(r[k] for r in rs) for k in ("mib", "seconds")} for v, rs in runs.items()}
    print(f"{args.num_images} masks of {args.size}x{args.size}, {args.repeats} runs each, {platform.machine()}, "
          f"Python {platform.python_version()}\n")
    print("| variant | peak RSS growth (MiB) | seconds |\n|---|---|---|")
    for variant, m in median.items():
        print(f"| {variant} | {m['mib']:.0f} | {m['seconds']:.1f} |")
    print(f"\nmemory: decoded / encoded = {median['decoded']['mib'] / median['encoded']['mib']:.2f}x; "
          f"time: encoded / decoded = {median['encoded']['seconds'] / median['decoded']['seconds']:.2f}x")


if __name__ == "__main__":
    main()
