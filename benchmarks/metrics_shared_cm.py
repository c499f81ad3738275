"""Cost of the validation metrics in one evaluation step, shared confusion matrix vs one per class.

    .venv/bin/python benchmarks/metrics_shared_cm.py [--classes 21 150 255] [--repeats 5]

``model.evaluate`` steps (forward pass + metric updates; no XLA, the trainer's default) of a
1x1-convolution "model" on a batch of 4 images of 128x128 with C classes and 5 % ignore pixels, so
that the metrics are most of the step, with two metric lists:

- ``per_class``: what ``segmentation_metrics`` built before QA 76 M4: ``MeanIoU`` plus one
  ``ClassIoU`` per class, each with its own C x C confusion matrix and its own arg-max;
- ``shared``: ``segmentation_metrics`` (``MeanIoU`` plus ``SharedClassIoU`` views of its matrix);
- ``none``: no metric, so that what the metrics cost is the step minus this one's.

Both models get the same weights and data, are compiled and warmed up first, and are timed in turn,
interleaved, ``--repeats`` times (each the mean CPU time of this process over 10 steps); the ratios are
per_class / shared of the medians of the step and of the metrics' cost (step - none), measured in the same
run. The metric values of both lists are checked equal first.
Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from segbalance.trainer.metrics import ClassIoU, MeanIoU, metric_names, segmentation_metrics  # noqa: E402

IGNORE, BATCH, SIZE, STEPS = 255, 4, 128, 10


def per_class_metrics(names):
    """The metric list of segbalance before the shared matrix (one ClassIoU per class)."""
    c = len(names)
    return [MeanIoU(c, name="miou", ignore_class=IGNORE)] + [
        ClassIoU(c, [i], name=n, ignore_class=IGNORE) for i, n in enumerate(metric_names(names))]


def model_with(metrics, num_classes):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(num_classes, 1)(inputs))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE),
                  metrics=metrics)
    return model


def time_steps(model, batches) -> float:
    """CPU seconds of this process (all its threads) per step: less disturbed than the wall clock by other
    processes on a shared machine."""
    start = time.process_time()
    model.evaluate(batches, steps=STEPS, verbose=0)  # one traced step function, kept between calls
    return (time.process_time() - start) / STEPS


def measure(num_classes: int, repeats: int):
    rng = np.random.default_rng(num_classes)
    images = rng.normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)
    mask = rng.integers(0, num_classes, (BATCH, SIZE, SIZE))
    mask[rng.random(mask.shape) < 0.05] = IGNORE
    names = [f"class {i}" for i in range(num_classes)]
    models = {"per_class": model_with(per_class_metrics(names), num_classes),
              "shared": model_with(segmentation_metrics(names, IGNORE), num_classes),
              "none": model_with([], num_classes)}
    batches = tf.data.Dataset.from_tensors((images, mask)).repeat()
    values = {k: m.evaluate(batches, steps=2, verbose=0, return_dict=True) for k, m in models.items()}  # warm-up
    for key, value in values["per_class"].items():  # the same values
        assert abs(value - values["shared"][key]) <= 1e-6 * max(1.0, abs(value)), (key, value, values["shared"][key])
    times = {k: [] for k in models}
    for _ in range(repeats):
        for key, model in models.items():
            times[key].append(time_steps(model, batches))
    return {key: statistics.median(values) for key, values in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[21, 150, 255])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; batch {BATCH}x{SIZE}x{SIZE}, "
          f"median of {args.repeats} x {STEPS} steps")
    print("| classes | step, per-class matrices (CPU ms) | step, shared matrix (CPU ms) | step ratio "
          "| step without metrics (CPU ms) | metrics' share, per-class / shared | metric-cost ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for c in args.classes:
        t = measure(c, args.repeats)
        cost = {k: max(t[k] - t["none"], 1e-9) for k in ("per_class", "shared")}
        print(f"| {c} | {t['per_class'] * 1e3:.1f} | {t['shared'] * 1e3:.1f} | {t['per_class'] / t['shared']:.2f}x "
              f"| {t['none'] * 1e3:.1f} "
              f"| {cost['per_class'] / t['per_class']:.0%} / {cost['shared'] / t['shared']:.0%} "
              f"| {cost['per_class'] / cost['shared']:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
