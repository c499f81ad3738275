"""Class-statistics throughput: the Beam job (1 and 2 workers) against a one-process NumPy bound.

    .venv/bin/python benchmarks/class_stats_throughput.py [--num-masks 2000] [--size 512]
        [--num-classes 8] [--shards 8] [--repeats 3] [--sizes 128,256,512] [--size-masks 1000]

Data: ``--num-masks`` generated masks (rectangles of random classes on background, 2 %
ignore pixels), written as gzip TFRecord shards of the data contract (each record also
carries a flat grey image of the same size, so records are realistic to parse), the way
ImportExampleGen writes them.

Bound (one process, no Beam): for every serialized record, already read into memory,
``parse_record`` + ``decode_array`` of the mask + ``np.bincount``. File reading is left out
of the bound on purpose, so it is an upper bound for any job that must read the files.
(The job does more per record than the bound: it also checks the image, a PNG chunk-CRC
pass, and builds the label sets, co-occurrence and Parquet rows; it counts 8-bit masks with
Pillow's C histogram where the bound uses ``np.bincount``, which first copies the mask to
int64, so a steady ratio above 1.0x is possible.)

Beam variants: ``segbalance.components.class_stats_beam.run_class_stats`` end to end (read, decode,
count, quarantine check, CombineFn, co-occurrence, suspect_missing, Parquet + JSON
output) with the DirectRunner: ``in_memory`` 1 worker, ``multi_processing`` 1 and 2
workers. Each variant runs ``--repeats`` times, interleaved; medians are reported.

Two figures per variant: end-to-end masks/s (wall time of the whole job, including the
runner's start-up and worker-process spawn), and steady-state masks/s, from the
difference between the full run and a run on ``--small`` masks (removes the fixed cost).
Ratios are against the bound, so 1.0x means "as fast as the bare decode loop". The CPU
seconds of the run (this process + the finished worker processes) show the work done,
which, unlike wall time, does not depend on how busy a shared machine is.

Worker start-up: wall time of a fresh interpreter that imports what a Beam worker of this
job imports (Beam, the job module, tfx_bsl's decoder), median of 3, next to a fresh
``import tensorflow`` (what the worker path cost before it stopped parsing with TF).

Mask sizes (``--sizes``): ``--size-masks`` masks per size, in_memory runner, one repeat
(+ the fixed-cost run): CPU ms per mask for the bound and the job, the job's fixed CPU
cost, and MB of records, to size a job from.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from segbalance.trainer import example_codec as codec  # noqa: E402

VARIANTS = {
    "beam_in_memory_1": ["--direct_running_mode=in_memory", "--direct_num_workers=1"],
    "beam_multi_processing_1": ["--direct_running_mode=multi_processing", "--direct_num_workers=1"],
    "beam_multi_processing_2": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    # the same with Beam's own worker processes (``sdk_worker_main``, all of Beam's optional IO
    # imported) instead of segbalance.components.beam_worker
    "beam_multi_processing_1_stock": ["--direct_running_mode=multi_processing", "--direct_num_workers=1"],
    "beam_multi_processing_2_stock": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    # threads in this process: no worker start-up; parallel only where the decoders release the GIL
    "beam_multi_threading_2": ["--direct_running_mode=multi_threading", "--direct_num_workers=2"],
}


def make_mask(rng: np.random.Generator, size: int, num_classes: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(1, 7))):
        c = int(rng.integers(1, num_classes))
        y, x = rng.integers(0, size - 8, size=2)
        h, w = rng.integers(4, size // 2, size=2)
        mask[y:y + h, x:x + w] = c
    mask[rng.random((size, size)) < 0.02] = 255
    return mask


def write_data(directory: Path, num_masks: int, size: int, num_classes: int, shards: int, seed: int = 0):
    """Gzip TFRecord shards; returns the serialized records (for the bound) and the glob."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    image = codec.encode_png(np.full((size, size), 128, np.uint8))
    records = [codec.build_example(image, codec.encode_png(make_mask(rng, size, num_classes)), f"m{i:06d}",
                                   size, size).SerializeToString() for i in range(num_masks)]
    directory.mkdir(parents=True, exist_ok=True)
    shards = max(1, min(shards, num_masks))
    for s in range(shards):
        with tf.io.TFRecordWriter(str(directory / f"data_tfrecord-{s:05d}-of-{shards:05d}.gz"), "GZIP") as writer:
            for record in records[s::shards]:
                writer.write(record)
    return records, str(directory / "data_tfrecord-*.gz")


def numpy_bound(records, num_classes: int) -> np.ndarray:
    total = np.zeros(256, np.int64)
    for serialized in records:
        mask = codec.decode_array(codec.parse_record(serialized).mask_bytes, what="mask")
        total += np.bincount(mask.ravel(), minlength=256)
    return total[:num_classes]


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished child processes (Beam workers)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def startup_seconds(code: str, repeats: int = 3) -> float:
    """Median wall time of ``python -c code`` in a fresh interpreter."""
    import subprocess

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


JOB_IMPORTS = ("import sys; from segbalance.components import class_stats_beam as c; c.RecordDecoder(); "
               "assert 'tensorflow' not in sys.modules")
# what a worker process of this job imports: segbalance.components.beam_worker, and Beam's own worker main
WORKER_IMPORTS = ("from segbalance.components.beam_worker import keep_out_unused_modules; keep_out_unused_modules(); "
                  "import apache_beam.runners.worker.sdk_worker_main; " + JOB_IMPORTS)
STOCK_WORKER_IMPORTS = "import apache_beam.runners.worker.sdk_worker_main; " + JOB_IMPORTS


def size_table(work: Path, sizes, num_masks: int, num_classes: int, shards: int, small: int) -> None:
    """Per mask size: CPU ms per mask of the bound and of the job (in_memory runner, so the whole
    job runs in this process and its CPU time is this process's), the job's fixed CPU cost, and
    wall times. CPU time, unlike wall time, hardly depends on how busy a shared machine is."""
    print(f"\nmask sizes: {num_masks} masks each (+ {small} for the fixed cost), in_memory runner, 1 repeat; "
          f"CPU time of this process\n")
    print("| mask size | MB of records | bound CPU ms/mask | job CPU ms/mask (steady) | job fixed CPU s "
          "| steady ratio vs bound (CPU) | job wall s end to end |")
    print("|---|---|---|---|---|---|---|")
    for size in sizes:
        records, pattern = write_data(work / f"size{size}", num_masks, size, num_classes, shards)
        _, small_pattern = write_data(work / f"size{size}_small", small, size, num_classes, shards, seed=1)
        megabytes = sum(len(r) for r in records) / 1e6
        start = cpu_seconds()
        expected = numpy_bound(records, num_classes)
        bound = cpu_seconds() - start
        start, start_wall = cpu_seconds(), time.perf_counter()
        stats = run_beam(pattern, work / "out_size", num_classes, "beam_in_memory_1")
        full, wall = cpu_seconds() - start, time.perf_counter() - start_wall
        if stats["pixel_counts"] != expected.tolist():
            raise SystemExit(f"size {size}: counts differ from the NumPy bound's")
        start = cpu_seconds()
        run_beam(small_pattern, work / "out_size_small", num_classes, "beam_in_memory_1")
        fixed = cpu_seconds() - start
        steady = (full - fixed) / (num_masks - small) * 1000
        bound_ms = bound / num_masks * 1000
        print(f"| {size}x{size} | {megabytes:.1f} | {bound_ms:.2f} | {steady:.2f} | {fixed:.2f} "
              f"| {bound_ms / steady:.2f}x | {wall:.2f} |", flush=True)


def run_beam(pattern: str, out: Path, num_classes: int, variant: str) -> dict:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from segbalance.components.class_stats_beam import StatsOptions, run_class_stats

    shutil.rmtree(out, ignore_errors=True)
    args = VARIANTS[variant]
    # "_stock": Beam's DirectRunner as Beam builds it; otherwise the job's own choice (components/local_runner.py)
    pipeline = beam.Pipeline(options=PipelineOptions(args)) if variant.endswith("_stock") else None
    return run_class_stats({"train": pattern}, str(out), StatsOptions(num_classes=num_classes), pipeline=pipeline,
                           beam_args=args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-masks", type=int, default=2000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--num-classes", type=int, default=8)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--small", type=int, default=16, help="masks in the run that measures the fixed cost")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    parser.add_argument("--sizes", default="", help="comma-separated mask sizes for the size table (e.g. 128,256,512)")
    parser.add_argument("--size-masks", type=int, default=1000, help="masks per size in the size table")
    parser.add_argument("--skip-startup", action="store_true", help="do not time fresh-interpreter imports")
    parser.add_argument("--startup-only", action="store_true", help="only time fresh-interpreter imports")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")

    if not args.skip_startup:  # before this process imports anything heavy
        worker = startup_seconds(WORKER_IMPORTS)
        stock = startup_seconds(STOCK_WORKER_IMPORTS)
        beam = startup_seconds("import apache_beam")
        tensorflow = startup_seconds("import tensorflow")
        print(f"worker start-up (fresh interpreter: segbalance's beam_worker + Beam's worker main + class_stats_beam + "
              f"tfx_bsl decoder, no TensorFlow): {worker:.2f} s; the same with Beam's stock worker (all optional IO): "
              f"{stock:.2f} s; `import apache_beam` alone: {beam:.2f} s; `import tensorflow` alone (what the "
              f"worker path added before): {tensorflow:.2f} s (medians of 3)", flush=True)
        if args.startup_only:
            return
    import segbalance.components.class_stats_beam  # noqa: F401  (import Beam before any timing)

    work = Path(tempfile.mkdtemp(prefix="segbalance-bench-classstats-"))
    try:
        records, pattern = write_data(work / "full", args.num_masks, args.size, args.num_classes, args.shards)
        _, small_pattern = write_data(work / "small", args.small, args.size, args.num_classes, args.shards, seed=1)
        expected = numpy_bound(records, args.num_classes)  # warm-up and reference counts

        times = {"numpy_bound": []}
        times.update({v: [] for v in variants})
        cpu = {k: [] for k in times}
        small_times = {v: [] for v in variants}
        for repeat in range(args.repeats):
            start, start_cpu = time.perf_counter(), cpu_seconds()
            numpy_bound(records, args.num_classes)
            times["numpy_bound"].append(time.perf_counter() - start)
            cpu["numpy_bound"].append(cpu_seconds() - start_cpu)
            for name in variants:
                start, start_cpu = time.perf_counter(), cpu_seconds()
                stats = run_beam(pattern, work / "out", args.num_classes, name)
                times[name].append(time.perf_counter() - start)
                cpu[name].append(cpu_seconds() - start_cpu)
                if stats["pixel_counts"] != expected.tolist() or stats["num_records"] != args.num_masks:
                    raise SystemExit(f"{name}: counts differ from the NumPy bound's")
                start = time.perf_counter()
                run_beam(small_pattern, work / "out_small", args.num_classes, name)
                small_times[name].append(time.perf_counter() - start)
            print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    bound = statistics.median(times["numpy_bound"])
    bound_rate = args.num_masks / bound
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"\n{args.num_masks} masks {args.size}x{args.size}, C={args.num_classes}, {args.shards} gzip shards, "
          f"median of {args.repeats}; {datetime.date.today()}; {os.cpu_count()} CPUs, "
          f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}\n")
    print("| variant | workers | median s | masks/s end to end | ratio vs bound | fixed cost s "
          "| steady masks/s | steady ratio | steady ratio per worker | CPU s (all processes) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| numpy_bound | 1 | {bound:.2f} | {bound_rate:.0f} | 1.00x | - | {bound_rate:.0f} | 1.00x | 1.00x "
          f"| {statistics.median(cpu['numpy_bound']):.1f} |")
    steady = {}
    for name in variants:
        t = statistics.median(times[name])
        t_small = statistics.median(small_times[name])
        workers = int(VARIANTS[name][1].split("=")[1])
        # The fixed cost is noisy on a shared machine; a difference below 5 % of the run is not a measurement.
        steady_rate = (args.num_masks - args.small) / (t - t_small) if t - t_small > 0.05 * t else float("nan")
        steady[name] = steady_rate
        print(f"| {name} | {workers} | {t:.2f} | {args.num_masks / t:.0f} | {bound / t:.2f}x | {t_small:.2f} "
              f"| {steady_rate:.0f} | {steady_rate / bound_rate:.2f}x | {steady_rate / bound_rate / workers:.2f}x "
              f"| {statistics.median(cpu[name]):.1f} |")
    if "beam_multi_processing_1" in times and "beam_multi_processing_2" in times:
        mp1 = statistics.median(times["beam_multi_processing_1"])
        mp2 = statistics.median(times["beam_multi_processing_2"])
        print(f"\nspeed-up 2 vs 1 worker (multi_processing): end to end {mp1 / mp2:.2f}x, steady state "
              f"{steady['beam_multi_processing_2'] / steady['beam_multi_processing_1']:.2f}x")
    if "beam_multi_processing_1_stock" in times and "beam_multi_processing_2_stock" in times:
        mp1 = statistics.median(times["beam_multi_processing_1_stock"])
        mp2 = statistics.median(times["beam_multi_processing_2_stock"])
        print(f"speed-up 2 vs 1 worker, Beam's stock workers: end to end {mp1 / mp2:.2f}x, steady state "
              f"{steady['beam_multi_processing_2_stock'] / steady['beam_multi_processing_1_stock']:.2f}x")
    print("raw times (s): " + "; ".join(f"{k} {[round(x, 2) for x in v]}" for k, v in times.items()))
    print("fixed-cost runs (s): " + "; ".join(f"{k} {[round(x, 2) for x in v]}" for k, v in small_times.items()))
    if args.sizes:
        work = Path(tempfile.mkdtemp(prefix="segbalance-bench-classstats-sizes-"))
        try:
            size_table(work, [int(v) for v in args.sizes.split(",")], args.size_masks, args.num_classes,
                       args.shards, args.small)
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
