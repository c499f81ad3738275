"""What the mask check's PNG verification costs (session 26): ``class_stats_beam.decode_mask_counts``
(mode and bit-depth checks, ``verify`` of every chunk's CRC, then decode + histogram) against the same
decode without the verification (the check until session 26), in the same run, interleaved.

    .venv/bin/python benchmarks/mask_check_ab.py [--num-masks 200] [--size 512] [--repeats 5]

Masks: rectangles of random classes on background (as ``class_stats_throughput.py`` draws them), 8-bit
grey PNGs. Reports the median seconds per pass over all masks and the ratio to the baseline.
"""
from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np


def baseline_counts(data: bytes):
    """The mask decode before session 26: open, load, histogram (no CRC verification)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return np.asarray(img.histogram(), np.int64), (img.size[1], img.size[0])


def masks(num: int, size: int, seed: int = 0) -> list:
    from segbalance.trainer.example_codec import encode_png

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num):
        mask = np.zeros((size, size), np.uint8)
        for _ in range(6):
            top, left = rng.integers(0, size - 16, 2)
            h, w = rng.integers(8, size // 3, 2)
            mask[top:top + h, left:left + w] = rng.integers(1, 8)
        out.append(encode_png(mask))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-masks", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from segbalance.components.class_stats_beam import decode_mask_counts

    data = masks(args.num_masks, args.size)
    for blob in data:  # the same counts either way
        assert decode_mask_counts(blob)[0].tolist() == baseline_counts(blob)[0].tolist()
    times = {"without verification (until session 26)": [], "decode_mask_counts (with verification)": []}
    for _ in range(args.repeats):
        for name, fn in (("without verification (until session 26)", baseline_counts),
                         ("decode_mask_counts (with verification)", decode_mask_counts)):
            tick = time.perf_counter()
            for blob in data:
                fn(blob)
            times[name].append(time.perf_counter() - tick)
    base = statistics.median(times["without verification (until session 26)"])
    print(f"{args.num_masks} masks of {args.size}x{args.size}, {args.repeats} interleaved repeats, median s per pass")
    print("| variant | median s | ratio |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.3f} | {statistics.median(values) / base:.2f}x |")


if __name__ == "__main__":
    main()
