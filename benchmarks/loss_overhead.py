"""Cost of the segbalance losses and weight maps in one training step, as ratios.

    .venv/bin/python benchmarks/loss_overhead.py [--quick] [--repeats 7] [--no-weight-maps]

One train step (``model.train_on_batch``, forward + backward + Adam update, XLA
``jit_compile=True``) of the project's U-Net (``trainer/model.build_unet``, depth 3) on a
batch of 8 images of 256x256 with C=10 classes and 5 % ignore pixels, with:

- ``builtin``: ``keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)``
  on the plain mask (the baseline),
- ``weighted_ce``: ``SegmentationLoss`` ``ce`` with class weights, ``y = {"mask"}``,
- ``marginal_ce``: ``ce`` with ``missing_labels="marginal"``, ``y = {"mask", "labeled"}``,
- ``ce_dice``: class-weighted ``ce`` + 0.5 ``dice``.

Each variant has its own model (same initial weights) compiled once and warmed up (XLA
compilation excluded); then the variants are timed in turn, interleaved, ``--repeats``
times, and the median step time is compared with the baseline's median: ratio =
variant / builtin, so 1.00x is free and the target is <= 1.10x for weighted/marginal CE.
The ratio of the fastest steps is printed too: on a shared machine the minimum is the
least disturbed measurement.

The loss alone (value and gradient w.r.t. fixed logits, XLA, 5x as many repeats) is timed
too, as a ratio against the built-in loss: the train-step ratios are close to 1 because the
U-Net dominates, and the loss-alone ratios show what the loss itself costs.

Weight maps (``trainer/weight_maps.py``) are timed on the same batch, as a fraction of the
baseline train step: edge (Sobel + mask boundaries) and intensity ranges (``tf.function``
with XLA, as in a compiled step or a tf.data map), a feature extractor (a 2-layer conv
net at half resolution) and U-Net border weights (NumPy/SciPy, offline).

``--quick``: U-Net ``base_filters=8`` (instead of 16) and 3 repeats, for a 2-core CPU in
about two minutes. Prints a Markdown table.
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

from segbalance.trainer import weight_maps  # noqa: E402
from segbalance.trainer.model import build_unet  # noqa: E402
from segbalance.trainer.segmentation_loss import SegmentationLoss  # noqa: E402

NUM_CLASSES = 10


def make_batch(batch: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 1, size=(batch, size, size, 3)).astype(np.float32)
    # blocky masks with a skewed class frequency, 5 % ignore pixels
    coarse = rng.choice(NUM_CLASSES, size=(batch, size // 16, size // 16),
                        p=np.array([40, 20, 10, 8, 6, 5, 4, 3, 2, 2]) / 100.0)
    masks = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2).astype(np.int32)
    masks[rng.random(masks.shape) < 0.05] = 255
    labeled = (rng.random((batch, NUM_CLASSES)) < 0.7).astype(np.float32)
    labeled[:, 0] = 1.0
    counts = np.bincount(masks[masks != 255].ravel(), minlength=NUM_CLASSES)
    return images, masks, labeled, counts


def variants(masks, labeled, counts):
    scheme = {"class_weights": "median_frequency"}
    return {
        "builtin": (keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255), masks),
        "weighted_ce": (SegmentationLoss({"terms": [{"type": "ce"}], **scheme}, pixel_counts=counts),
                        {"mask": masks}),
        "marginal_ce": (SegmentationLoss({"terms": [{"type": "ce"}], "missing_labels": "marginal", **scheme},
                                         pixel_counts=counts), {"mask": masks, "labeled": labeled}),
        "ce_dice": (SegmentationLoss({"terms": [{"type": "ce"}, {"type": "dice", "weight": 0.5}], **scheme},
                                     pixel_counts=counts), {"mask": masks}),
    }


def time_call(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="base_filters=8, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per variant (default 7, quick 3)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--base-filters", type=int, default=None)
    parser.add_argument("--no-weight-maps", action="store_true")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    filters = args.base_filters or (8 if args.quick else 16)

    images, masks, labeled, counts = make_batch(args.batch, args.size)
    models, ys = {}, {}
    for name, (loss, y) in variants(masks, labeled, counts).items():
        keras.utils.set_random_seed(0)
        model = build_unet((args.size, args.size), NUM_CLASSES, depth=3, base_filters=filters)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, jit_compile=True)
        compile_s = time_call(lambda: model.train_on_batch(images, y))
        time_call(lambda: model.train_on_batch(images, y))  # second warm-up step
        models[name], ys[name] = model, y
        print(f"# {name}: first step (XLA compile) {compile_s:.1f} s", file=sys.stderr, flush=True)

    steps = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            steps[name].append(time_call(lambda: model.train_on_batch(images, ys[name])))
    base = statistics.median(steps["builtin"])

    print(f"U-Net depth 3, base_filters {filters}, batch {args.batch}, {args.size}x{args.size}, "
          f"C={NUM_CLASSES}, XLA, median of {repeats} interleaved steps, "
          f"{platform.machine()} with {os.cpu_count()} CPUs, TF {tf.__version__}, Keras {keras.__version__}")
    print()
    print("| loss | median step s | min-max s | ratio vs builtin (medians) | ratio vs builtin (minima) |")
    print("|---|---|---|---|---|")
    for name, times in steps.items():
        median = statistics.median(times)
        print(f"| {name} | {median:.3f} | {min(times):.2f}-{max(times):.2f} | {median / base:.2f}x "
              f"| {min(times) / min(steps['builtin']):.2f}x |")

    # The loss alone: value + gradient w.r.t. fixed logits [B,H,W,C], XLA, no model around it.
    logits = tf.Variable(np.random.default_rng(1).standard_normal(
        (args.batch, args.size, args.size, NUM_CLASSES)).astype(np.float32))

    def loss_and_grad(loss, y):
        @tf.function(jit_compile=True)
        def step():
            with tf.GradientTape() as tape:
                value = loss(y, logits)
            return value, tape.gradient(value, logits)
        return lambda: [t.numpy() for t in step()]

    loss_fns = {name: loss_and_grad(loss, tf.nest.map_structure(tf.constant, y))
                for name, (loss, y) in variants(masks, labeled, counts).items()}
    for fn in loss_fns.values():
        fn()
    loss_times = {name: [] for name in loss_fns}
    for _ in range(repeats * 5):
        for name, fn in loss_fns.items():
            loss_times[name].append(time_call(fn))
    loss_base = statistics.median(loss_times["builtin"])
    print()
    print(f"| loss alone (value + gradient, median of {repeats * 5}) | median s | ratio vs builtin "
          f"| fraction of a builtin train step |")
    print("|---|---|---|---|")
    for name, times in loss_times.items():
        median = statistics.median(times)
        print(f"| {name} | {median:.4f} | {median / loss_base:.2f}x | {median / base:.3f} |")

    if not args.no_weight_maps:
        x, m = tf.constant(images), tf.constant(masks)
        edge = tf.function(lambda a, b: weight_maps.edge_weights(a, b, num_classes=NUM_CLASSES), jit_compile=True)
        intensity = tf.function(lambda a: weight_maps.intensity_range_weights(a, [(0.0, 0.2, 2.0), (0.8, 1.0, 2.0)]),
                                jit_compile=True)
        inputs = keras.Input((args.size, args.size, 3))
        hidden = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(inputs)
        extractor = keras.Model(inputs, keras.layers.Conv2D(16, 3, padding="same", activation="relu")(hidden))
        feature = tf.function(lambda a: weight_maps.feature_extractor_weights(a, extractor), jit_compile=True)
        maps = {
            "edge_weights (Sobel + boundaries, XLA)": lambda: edge(x, m).numpy(),
            "intensity_range_weights (XLA)": lambda: intensity(x).numpy(),
            "feature_extractor_weights (2-conv extractor, XLA)": lambda: feature(x).numpy(),
            "unet_border_weights (NumPy/SciPy, offline)": lambda: weight_maps.unet_border_weights(masks, w0=10,
                                                                                                  sigma=5),
        }
        for fn in maps.values():
            fn()  # compile / warm up
        map_times = {name: [] for name in maps}
        for _ in range(repeats):
            for name, fn in maps.items():
                map_times[name].append(time_call(fn))
        print()
        print(f"| weight map (batch of {args.batch}) | median s | fraction of a builtin train step |")
        print("|---|---|---|")
        for name, times in map_times.items():
            median = statistics.median(times)
            print(f"| {name} | {median:.3f} | {median / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
