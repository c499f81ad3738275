"""Does the trainer's input pipeline keep up with its train step? And what does the loss cost?

    .venv/bin/python benchmarks/training_throughput.py [--size 64] [--batch 16] [--records 256]
        [--depth 3] [--filters 16] [--repeats 3] [--steps 20]

Set-up, all in this process: ``--records`` generated shapes images (``segbalance sample-data shapes``'s generator,
``--source-size`` px, PNG, 4 classes, every 4th image partially labelled) written as a GZIP
TFRecord like ExampleGen's; the project's ``preprocessing_fn`` analysed with tf.Transform
(Beam, in memory) into a transform graph; a ClassStats-like label-set table for the join.

Measured (median of ``--repeats`` interleaved repeats of ``3 * --steps`` input batches and
``--steps`` train steps, after a warm-up that excludes compilation):

- ``input``: examples/s of ``segbalance.trainer.data.make_dataset(training=True)`` alone: read, parse,
  the transform graph (decode, resize, normalise), label-set join, joint flip/crop
  augmentation, prefetch. Nothing consumes the batches but the timer.
- ``step (configured loss)``: examples/s of ``model.fit`` on the U-Net of ``build_unet`` with
  the pipeline's default loss (``pipeline/config.py``; when docs/benchmarks.md was
  written: marginal CE with median-frequency weights) on ``y = {"mask", "labeled"}``, fed from one batch cached in memory, so the
  input costs nothing.
- ``step (built-in CE)``: the same with ``keras.losses.SparseCategoricalCrossentropy(
  from_logits=True, ignore_class=255)`` on the mask.

Reported: input/step ratio (target >= 2: the input never starves the accelerator the step
runs on; on this CPU the two share the same cores, so the figure is a lower bound) and the
step-time ratio configured loss / built-in CE (1.00x = free). Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from segbalance.pipeline.config import TrainingConfig  # noqa: E402
from segbalance.trainer import data, preprocessing  # noqa: E402
from segbalance.pipeline.sample_data import SHAPES_CLASSES, draw_shapes_image  # noqa: E402
from segbalance.trainer import example_codec as codec  # noqa: E402
from segbalance.trainer.model import build_unet  # noqa: E402
from segbalance.trainer.segmentation_loss import SegmentationLoss  # noqa: E402

NUM_CLASSES = len(SHAPES_CLASSES)


def shapes_records(n: int, size: int) -> list:
    """``n`` serialized shapes examples (the sample data's generator); every 4th records {0, 1} as labelled."""
    records = []
    for i in range(n):
        image, mask = draw_shapes_image(0, i, size)
        labeled = [0, 1] if i % 4 == 0 else None
        example = codec.build_example(codec.encode_png(image), codec.encode_png(mask), f"img{i:03d}", size, size,
                                      labeled=labeled)
        records.append(example.SerializeToString())
    return records


def write_tfrecord(path: str, records: list, compression=None) -> str:
    with tf.io.TFRecordWriter(path, options=compression) as writer:
        for record in records:
            writer.write(record)
    return path


def write_transform_graph(records, out_dir: str, image_size) -> str:
    """Analyse ``preprocessing_fn`` over the records with tf.Transform (Beam in memory)."""
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam
    from tfx_bsl.public import tfxio

    feature_spec = {
        codec.IMAGE_KEY: tf.io.FixedLenFeature([1], tf.string),
        codec.MASK_KEY: tf.io.FixedLenFeature([1], tf.string),
        codec.SOURCE_ID_KEY: tf.io.FixedLenFeature([1], tf.string),
    }
    from tensorflow_transform.tf_metadata import schema_utils

    schema = schema_utils.schema_from_feature_spec(feature_spec)
    path = os.path.join(out_dir, "raw.tfrecord")
    write_tfrecord(path, records)
    cfg = {"training": {"image_size": list(image_size)}}  # a TrainerConfig custom_config
    with beam.Pipeline(argv=["--direct_running_mode=in_memory", "--direct_num_workers=1"]) as pipeline:
        with tft_beam.Context(temp_dir=os.path.join(out_dir, "tmp")):
            source = tfxio.TFExampleRecord(file_pattern=path, schema=schema)
            raw = pipeline | source.BeamSource()
            transform_fn = (raw, source.TensorAdapterConfig()) | tft_beam.AnalyzeDataset(
                lambda inputs: preprocessing.preprocessing_fn(inputs, cfg))
            _ = transform_fn | tft_beam.WriteTransformFn(os.path.join(out_dir, "graph"))
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io

    # the raw schema, as the Transform component writes it (the trainer parses records with it)
    metadata_io.write_metadata(dataset_metadata.DatasetMetadata(schema), os.path.join(out_dir, "graph", "metadata"))
    return os.path.join(out_dir, "graph")


def time_input(dataset, batches: int, batch_size: int) -> float:
    iterator = iter(dataset)
    for _ in range(3):  # warm-up: tracing, first file open, prefetch fill
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


class StepTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._t)


def time_steps(model, dataset, steps: int, batch_size: int) -> float:
    timer = StepTimer()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer])
    return batch_size / statistics.median(timer.times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="image size the model sees")
    parser.add_argument("--source-size", type=int, default=96, help="size of the stored PNGs")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="train steps per timing")
    args = parser.parse_args(argv)
    import tensorflow_transform as tft

    keras.utils.set_random_seed(0)
    work = tempfile.mkdtemp(prefix="train-throughput-")
    records = shapes_records(args.records, args.source_size)
    t0 = time.perf_counter()
    graph = write_transform_graph(records, work, (args.size, args.size))
    print(f"transform analysis: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    gz = write_tfrecord(os.path.join(work, "train.gz"), records, compression="GZIP")
    output = tft.TFTransformOutput(graph)
    labeled = {f"img{i:03d}": [0, 1] for i in range(0, args.records, 4)}
    input_ds = data.make_dataset([gz], output, args.batch, NUM_CLASSES, labeled, training=True, repeat=True)

    loss_config = dict(TrainingConfig().loss)
    rng = np.random.default_rng(0)
    weights = (rng.random(NUM_CLASSES) + 0.5).tolist()  # stands for the artifact's median-frequency vector
    image, y = next(iter(input_ds))
    configured_ds = tf.data.Dataset.from_tensors((image, y)).repeat()
    builtin_ds = tf.data.Dataset.from_tensors((image, y["mask"])).repeat()
    models = {}
    for name in ("configured", "builtin"):
        model = build_unet((args.size, args.size), NUM_CLASSES, args.depth, args.filters)
        loss = (SegmentationLoss(loss_config, class_weights=weights) if name == "configured" else
                keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255))
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
        ds = configured_ds if name == "configured" else builtin_ds
        model.fit(ds, epochs=1, steps_per_epoch=3, verbose=0)  # compile + warm-up
        models[name] = (model, ds)

    rates = {"input": [], "configured": [], "builtin": []}
    for _ in range(args.repeats):
        rates["input"].append(time_input(input_ds, 3 * args.steps, args.batch))
        for name, (model, ds) in models.items():
            rates[name].append(time_steps(model, ds, args.steps, args.batch))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\n{args.records} records {args.source_size}px -> {args.size}x{args.size}, batch {args.batch}, "
          f"U-Net depth {args.depth} filters {args.filters}, loss {loss_config}, {args.repeats} repeats of "
          f"{args.steps} batches; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| measurement | median examples/s | runs | ratio |")
    print("|---|---|---|---|")
    print(f"| input pipeline (make_dataset, training) | {med['input']:.0f} | "
          f"{', '.join(f'{r:.0f}' for r in rates['input'])} | {med['input'] / med['configured']:.2f}x the configured step |")
    print(f"| train step, configured loss | {med['configured']:.0f} | "
          f"{', '.join(f'{r:.0f}' for r in rates['configured'])} | step time {med['builtin'] / med['configured']:.2f}x built-in |")
    print(f"| train step, built-in CE | {med['builtin']:.0f} | "
          f"{', '.join(f'{r:.0f}' for r in rates['builtin'])} | 1.00x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
