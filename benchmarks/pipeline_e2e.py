"""Wall time of `make run`'s pipeline and the ratio of a cached re-run.

    .venv/bin/python benchmarks/pipeline_e2e.py [--output-dir DIR]

Runs `segbalance run` (default config: shapes sample data, whole DAG on CPU) into a fresh
output directory, then runs it again unchanged: every component should be served from the
ML Metadata cache. Prints both wall times (sample-data + ingest + DAG, in a subprocess,
including Python/TensorFlow start-up) and their ratio (target: re-run <= 0.3x), and what
each run wrote to the console (stdout / stderr lines) and to its log file
(``OUTPUT/logs/run-*.log``, the library output kept off the console).
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed_run(output_dir: Path) -> tuple:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "segbalance.pipeline.cli", "run", "--output-dir", str(output_dir)],
                            capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"segbalance run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    log = re.search(r"^  log:\s+(\S+)", result.stdout, re.M)
    log_lines = len(Path(log.group(1)).read_text().splitlines()) if log else 0
    console = f"{len(result.stdout.splitlines())} / {len(result.stderr.splitlines())}"
    return elapsed, result.stdout, console, log_lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", help="keep the run here (default: a temporary folder, removed)")
    args = parser.parse_args()
    output = Path(args.output_dir or tempfile.mkdtemp(prefix="segbalance-bench-e2e-")) / "run"
    try:
        first, out1, console1, log1 = timed_run(output)
        second, out2, console2, log2 = timed_run(output)
        cached = sorted(set(re.findall(r"\] (\S+): cached", out2)))
        miou = re.search(r"mIoU:\s+([0-9.]+)", out1)
        print("| run | wall s | ratio | console lines (stdout / stderr) | log file lines |")
        print("|---|---|---|---|---|")
        print(f"| first (fresh output dir) | {first:.1f} | 1.00x | {console1} | {log1} |")
        print(f"| re-run, unchanged | {second:.1f} | {second / first:.2f}x | {console2} | {log2} |")
        print(f"cached on re-run: {', '.join(cached)}")
        print(f"mIoU of the pushed model: {miou.group(1) if miou else 'n/a'}")
    finally:
        if not args.output_dir:
            shutil.rmtree(output.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
