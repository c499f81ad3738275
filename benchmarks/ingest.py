"""Ingest throughput as a ratio against plain PIL decode + encode of the same files.

    .venv/bin/python benchmarks/ingest.py [--num-images 400] [--size 128] [--repeats 3]

Baseline (one process): read each image and mask, decode both with PIL, encode both to
PNG again. That is the least work any ingest must do to check a pair. The ingest runs are
`segbalance.pipeline.ingest.ingest` with 1 and 2 shards (2 shards = 2 processes). Each variant is run
``--repeats`` times, interleaved, and the median wall time is used; ratios are
baseline time / ingest time, so > 1 means ingest is faster than the baseline.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from segbalance.pipeline import ingest, sample_data  # noqa: E402


def pil_baseline(images_dir: Path, masks_dir: Path) -> int:
    n = 0
    for image_path in sorted(images_dir.glob("*.png")):
        for path in (image_path, masks_dir / image_path.name):
            with Image.open(io.BytesIO(path.read_bytes())) as img:
                img.load()
                Image.fromarray(__import__("numpy").asarray(img)).save(io.BytesIO(), format="PNG")
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=400)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="segbalance-bench-ingest-"))
    try:
        data = sample_data.write_sample_data("shapes", work / "data", args.num_images, args.size, seed=0)
        images, masks = data / "images", data / "masks"
        options = ingest.IngestOptions(num_classes=len(sample_data.SHAPES_CLASSES))
        times = {"pil_baseline": [], "ingest_1_shard": [], "ingest_2_shards": []}
        ingest.ingest(images, masks, work / "warmup", options=options)  # imports TF once
        for r in range(args.repeats):
            start = time.perf_counter()
            pil_baseline(images, masks)
            times["pil_baseline"].append(time.perf_counter() - start)
            for shards, key in ((1, "ingest_1_shard"), (2, "ingest_2_shards")):
                start = time.perf_counter()
                ingest.ingest(images, masks, work / f"out-{key}-{r}", options=options, shards=shards)
                times[key].append(time.perf_counter() - start)
        base = statistics.median(times["pil_baseline"])
        print(f"{args.num_images} pairs of {args.size}x{args.size}, median of {args.repeats}, {os.cpu_count()} cores")
        print("| variant | median s | pairs/s | ratio vs PIL baseline |")
        print("|---|---|---|---|")
        for key, values in times.items():
            t = statistics.median(values)
            print(f"| {key} | {t:.2f} | {args.num_images / t:.0f} | {base / t:.2f}x |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
