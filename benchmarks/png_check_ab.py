"""Cost of checking each PNG's pixel stream at ingest (``png_damage(..., pixels=True)``, QA 82), as a ratio.

    .venv/bin/python benchmarks/png_check_ab.py [--num-images 200] [--size 512] [--repeats 3]

``segbalance.pipeline.ingest.ingest`` (one shard, one process) of the shapes sample, run with the check as
shipped (``pixels``: chunks and the inflated pixel stream of every image and mask) and with the pixel stream
left out (``chunks``: the chunk rules only, what ClassStatsGen applies to images), by swapping the function
ingest calls. The variants run ``--repeats`` times, interleaved; ratio = median time of ``pixels`` / median
of ``chunks`` (1.00x: free), measured in the same run. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segbalance.pipeline import ingest, sample_data  # noqa: E402
from segbalance.trainer.png_chunks import png_damage  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="segbalance-bench-png-"))
    variants = {"pixels": png_damage, "chunks": lambda data, pixels=False: png_damage(data)}
    try:
        data = sample_data.write_sample_data("shapes", work / "data", args.num_images, args.size, seed=0)
        options = ingest.IngestOptions(num_classes=len(sample_data.SHAPES_CLASSES))
        ingest.ingest(data / "images", data / "masks", work / "warmup", options=options)  # imports TF once
        times = {key: [] for key in variants}
        for r in range(args.repeats):
            for key, check in variants.items():
                ingest.png_damage = check
                start = time.perf_counter()
                ingest.ingest(data / "images", data / "masks", work / f"{key}{r}", options=options)
                times[key].append(time.perf_counter() - start)
        ingest.png_damage = png_damage
        median = {key: statistics.median(values) for key, values in times.items()}
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.num_images} shapes pairs "
              f"of {args.size}x{args.size}, median of {args.repeats}")
        print("| variant | median s | pairs/s | ratio vs chunks only |\n|---|---:|---:|---:|")
        for key in variants:
            print(f"| {key} | {median[key]:.2f} | {args.num_images / median[key]:.0f} | "
                  f"{median[key] / median['chunks']:.2f}x |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
