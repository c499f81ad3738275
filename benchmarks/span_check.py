"""Cost of the record check `segbalance run` makes before ImportExampleGen (pipeline/span_records.py):
the duplicate-source_id check (per record: the image and mask lengths and a CRC-32 of the mask; the
bytes are hashed only for an id that repeats) against the same check without it, in the same run.

    .venv/bin/python benchmarks/span_check.py [--records 2000] [--size 128] [--repeats 3]

Data: ``--records`` records of random RGB images and 4-class masks (PNG, ``--size`` pixels square,
incompressible: the worst case for the hash per byte parsed) in one TFRecord file of a Span-0
folder without an ingest report, so every record is read (as for a ``data.num_spans`` window or a
user's own TFRecords). Prints the medians and their ratio.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import tensorflow as tf

    from segbalance.pipeline import span_records
    from segbalance.pipeline.config import config_from_dict
    from segbalance.trainer import example_codec as codec

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "Span-0"
        folder.mkdir()
        total = 0
        with tf.io.TFRecordWriter(str(folder / "data-00000-of-00001.tfrecord")) as writer:
            for i in range(args.records):
                image = codec.encode_png(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
                mask = codec.encode_png(rng.integers(0, 4, (args.size, args.size), dtype=np.uint8))
                record = codec.build_example(image, mask, f"img_{i}", args.size, args.size).SerializeToString()
                total += len(record)
                writer.write(record)
        config, real = config_from_dict({}), span_records._SourceIds.add
        times = {"with the duplicate check": [], "without it": []}
        for _ in range(args.repeats):  # interleaved: a busy machine slows both alike
            for name, check in (("with the duplicate check", real), ("without it", lambda *a: None)):
                span_records._SourceIds.add = check
                started = time.perf_counter()
                span_records.check_span_records(Path(tmp), [0], config)
                times[name].append(time.perf_counter() - started)
        span_records._SourceIds.add = real
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.records} records, {total / 1e6:.1f} MB")
    for name, value in medians.items():
        print(f"  {name}: {value:.3f} s (runs: {', '.join(f'{v:.3f}' for v in times[name])})")
    print(f"  ratio: {medians['with the duplicate check'] / medians['without it']:.2f}x")


if __name__ == "__main__":
    main()
