"""Data report render time and page size as the data set grows.

    .venv/bin/python benchmarks/report_render.py [--num-images 1000 10000] [--size 160] [--repeats 2]

For each size: shape images (``sample_data.draw_shapes_image``, JPEG) and PNG masks with some
ignore pixels, labelled fields (two thirds of the records leave a class unlabelled) and 1 %
quarantined records (undecodable masks), written to one TFRecord; ClassStats from the Beam job
(DirectRunner, in memory: setup, not timed); an evaluation artifact with ``per_image.json``
written by SegEvaluator's ``PerImageResults`` over the records (prediction: the mask with
class 2 turned into 1 on every other image) and a training summary. Timed: ``render_report``
(reading the ClassStats tables and the records for the thumbnails, drawing charts and
thumbnails, writing the page), median of ``--repeats`` runs. Printed: seconds, the HTML size
and the number of ``<img>`` tags.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

NAMES = ["background", "ellipse", "rectangle", "circle"]


def write_inputs(folder: Path, num_images: int, size: int):
    import tensorflow as tf
    from PIL import Image

    from segbalance.components import class_stats_beam as csb
    from segbalance.components import evaluation_metrics as em
    from segbalance.components.seg_evaluator import PerImageResults
    from segbalance.pipeline.report_sources import ReportSources
    from segbalance.pipeline.sample_data import draw_shapes_image
    from segbalance.trainer import example_codec as codec

    labeled_of = {}
    recorder = PerImageResults(len(NAMES), 255, labeled_of)
    cm = np.zeros((len(NAMES), len(NAMES)), np.int64)
    with tf.io.TFRecordWriter(str(folder / "data.tfrecord")) as writer:
        for i in range(num_images):
            image, mask = draw_shapes_image(0, i, size)
            mask[:3, :] = 255
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=90)
            labeled = [0, 1] if i % 3 == 0 else ([0, 1, 2] if i % 3 == 1 else None)
            mask_bytes = b"broken" if i % 100 == 99 else codec.encode_png(mask)
            writer.write(codec.build_example(buffer.getvalue(), mask_bytes, f"img{i:05d}", size, size,
                                             labeled).SerializeToString())
            if i % 100 != 99:
                labeled_of[f"img{i:05d}"] = labeled
                prediction = np.where((mask == 2) & (i % 2 == 0), 1, np.where(mask == 255, 0, mask))
                image_cm = em.confusion_matrix(mask, prediction, len(NAMES), 255)
                cm += image_cm
                recorder(f"img{i:05d}", buffer.getvalue(), mask, prediction, image_cm)
    csb.run_class_stats({"train": str(folder / "data.tfrecord")}, str(folder / "stats"),
                        csb.StatsOptions(num_classes=len(NAMES), class_names=NAMES),
                        beam_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"])
    (folder / "evaluation").mkdir()
    recorder.write(str(folder / "evaluation"))
    (folder / "evaluation" / "evaluation.json").write_text(json.dumps({
        "class_names": NAMES, **em.summarize(cm), "num_images": len(recorder.rows),
        "blessed": True, "reason": "benchmark", "split": "train"}))
    (folder / "model_run").mkdir()
    (folder / "model_run" / "training_summary.json").write_text(json.dumps({
        "history": {"loss": [1.0, 0.7, 0.5], "val_loss": [1.1, 0.8, 0.7], "miou": [0.3, 0.5, 0.6],
                    "val_miou": [0.25, 0.4, 0.5]}, "num_train_records": num_images}))
    return ReportSources(class_stats_dir=str(folder / "stats"), evaluation_dir=str(folder / "evaluation"),
                         model_run_dir=str(folder / "model_run"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from segbalance.pipeline.report import render_report

    for num_images in args.num_images:
        folder = Path(tempfile.mkdtemp(prefix=f"report_bench_{num_images}_"))
        try:
            started = time.perf_counter()
            sources = write_inputs(folder, num_images, args.size)
            setup = time.perf_counter() - started
            records_mb = (folder / "data.tfrecord").stat().st_size / 1e6
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                render_report(sources, str(folder / "report.html"))
                times.append(time.perf_counter() - started)
            page = (folder / "report.html").read_text()
            print(f"{num_images} images ({args.size} px, {records_mb:.1f} MB of records; setup {setup:.0f} s): "
                  f"render {statistics.median(times):.2f} s (runs {', '.join(f'{t:.2f}' for t in times)}), "
                  f"HTML {len(page.encode()) / 1e6:.2f} MB, {page.count('<img ')} <img> tags", flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
