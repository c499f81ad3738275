"""`segbalance run [--config FILE] [--data DIR] [--output-dir DIR]`: the pipeline, locally.

With no flags: writes the shapes sample data (annotations dropped in 30% of the images),
ingests it, runs the whole DAG with LocalDagRunner (SQLite ML Metadata in the output
directory, caching on) and prints where the report, the class statistics and the pushed
model are, and the model's mIoU on the complete masks.

``--data DIR`` takes either a folder with ``images/`` and ``masks/`` (plus optional
``labeled.json``, ``classes.json``, ``masks_full/``), ingested into ``OUTPUT/data/Span-0``
when it changed, or a folder of ``Span-N/`` TFRecords written by ``segbalance ingest
--span N`` (the latest span is read; the last K with ``data.num_spans: K``). Re-running with unchanged data and config reuses
every cached result.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Optional, Tuple

from segbalance.pipeline.config import ConfigError, PipelineConfig, load_config

FINGERPRINT_FILE = "source_fingerprint.json"


# --------------------------------------------------------------------------- data
def _fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for sub in ("images", "masks", "labeled.json"):
        path = folder / sub
        files = sorted(path.iterdir()) if path.is_dir() else ([path] if path.is_file() else [])
        for f in files:
            st = f.stat()
            digest.update(f"{sub}/{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _ensure_sample(config: PipelineConfig, sample_dir: Path) -> Path:
    from segbalance.pipeline import sample_data

    wanted = {"sample": vars(config.data.sample)}
    marker = sample_dir / "sample_config.json"
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        print(f"sample data: reusing {sample_dir}", flush=True)
        return sample_dir
    shutil.rmtree(sample_dir, ignore_errors=True)
    s = config.data.sample
    sample_data.write_sample_data(s.kind, sample_dir, s.num_images, s.size, s.seed,
                                  s.drop_fraction if s.kind == "shapes" else 0.0)
    marker.write_text(json.dumps(wanted))
    print(f"sample data: wrote {s.num_images} {s.kind} images to {sample_dir}", flush=True)
    return sample_dir


def _ingest_if_changed(config: PipelineConfig, source: Path, examples_dir: Path) -> None:
    from segbalance.pipeline import ingest

    fingerprint = _fingerprint(source)
    stamp = examples_dir / FINGERPRINT_FILE
    if stamp.is_file() and json.loads(stamp.read_text()).get("fingerprint") == fingerprint \
            and (examples_dir / "Span-0").is_dir():
        print(f"ingest: {source} unchanged, reusing {examples_dir / 'Span-0'}", flush=True)
        return
    labeled_file = source / "labeled.json"
    try:
        labeled = ingest.load_labeled(labeled_file, config.num_classes) if labeled_file.is_file() else None
    except ingest.IngestError as exc:
        raise ConfigError(f"classes.names lists {config.num_classes} classes, but {exc}; add the missing class "
                          f"names to classes.names in the config (or fix {labeled_file})") from exc
    options = ingest.IngestOptions(num_classes=config.num_classes, ignore_index=config.classes.ignore_index,
                                   labeled=labeled)
    result = ingest.ingest(source / "images", source / "masks", examples_dir, span=0, options=options,
                           overwrite=True)
    out_of_range = [b for b in result.bad if "outside" in b["reason"]]
    if out_of_range:
        raise ConfigError(
            f"classes.names lists {config.num_classes} classes but {len(out_of_range)} masks have larger class ids "
            f"(first: {out_of_range[0]['source_id']}: {out_of_range[0]['reason']}); add the missing class names "
            f"to classes.names in the config")
    stamp.write_text(json.dumps({"fingerprint": fingerprint, "source": str(source)}))
    print(f"ingest: {len(result.written)} records to {result.target} ({len(result.bad)} bad)", flush=True)


def prepare_data(config: PipelineConfig, paths: dict) -> Tuple[str, Optional[str]]:
    """(examples_dir with Span-N/, reference masks dir or None); generates/ingests as needed."""
    if config.data.dir is None:
        source = _ensure_sample(config, Path(paths["sample_dir"]))
        if config.data.sample.kind != "shapes":
            names = json.loads((source / "classes.json").read_text())["class_names"]
            if names != config.classes.names:
                config.classes.names = names
    else:
        source = Path(config.data.dir).resolve()
    if any(source.glob("Span-*")):
        if config.data.num_spans == 1:
            return str(source), config.data.reference_masks_dir
        from segbalance.pipeline.spans import span_window

        window = Path(paths["output_dir"]) / "span_window"
        used = span_window(source, config.data.num_spans, window)
        print(f"data: training on spans {used} of {source} (data.num_spans = {config.data.num_spans}), "
              f"linked in {window}", flush=True)
        return str(window), config.data.reference_masks_dir
    _ingest_if_changed(config, source, Path(paths["examples_dir"]))
    reference = config.data.reference_masks_dir
    if reference is None and (source / "masks_full").is_dir():
        reference = str(source / "masks_full")
    return paths["examples_dir"], reference


# --------------------------------------------------------------------------- progress
class ComponentProgress(logging.Handler):
    """Turns LocalDagRunner's log records into one line per component start / end."""

    def __init__(self):
        super().__init__(level=logging.INFO)
        self.started = {}
        self.cached = set()
        self.skipped = set()
        self.current = None
        self.extra_handlers = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Component ") and message.endswith(" is running."):
            self.current = message[len("Component "):-len(" is running.")]
            self.started[self.current] = time.time()
            print(f"[{time.strftime('%H:%M:%S')}] {self.current}: started", flush=True)
        elif message.startswith("A cached execution") and self.current:
            self.cached.add(self.current)
        elif message.startswith("Skipping execution for ") and self.current:  # a tfx.dsl.Cond was false
            self.skipped.add(self.current)
        elif message.startswith("Component ") and message.endswith(" is finished."):
            name = message[len("Component "):-len(" is finished.")]
            took = time.time() - self.started.get(name, time.time())
            how = "cached" if name in self.cached else "skipped" if name in self.skipped else "done"
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {how} in {took:.1f}s", flush=True)


def quiet_library_output() -> None:
    """Keep TensorFlow / Google client start-up chatter out of the console (call before importing TF)."""
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


# TFX's channel resolver warns on every resolver input under LocalDagRunner although the
# query still resolves (the latest-artifact and blessed-model resolvers are tested).
HARMLESS_WARNINGS = ("ArtifactQuery.property_predicate is not supported.",)


def _known_harmless(record: logging.LogRecord) -> bool:
    return record.getMessage() not in HARMLESS_WARNINGS


def _quiet_logs() -> ComponentProgress:
    """absl INFO records go only to the progress handler; warnings and errors still print."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO)
    absl_logging.get_absl_handler().setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.setLevel(max(handler.level, logging.WARNING))
    progress = ComponentProgress()
    absl_logger = logging.getLogger("absl")
    absl_logger.propagate = False
    warnings_out = logging.StreamHandler(sys.stderr)
    warnings_out.setLevel(logging.WARNING)
    warnings_out.addFilter(_known_harmless)
    absl_logger.addHandler(warnings_out)
    absl_logger.addHandler(progress)
    progress.extra_handlers = [warnings_out]
    return progress


# --------------------------------------------------------------------------- run
def run_local(config: PipelineConfig, with_drift: bool = True, **pipeline_options) -> dict:
    """Run the DAG locally; returns the summary that `segbalance run` prints."""
    from tfx import v1 as tfx

    from segbalance.pipeline.dag import create_pipeline, local_paths
    from segbalance.pipeline.run_summary import summarize

    paths = local_paths(config.output_dir)
    os.makedirs(paths["output_dir"], exist_ok=True)
    examples_dir, reference = prepare_data(config, paths)
    pipeline = create_pipeline(
        config, examples_dir=examples_dir, pipeline_root=paths["pipeline_root"],
        serving_model_dir=paths["serving_model_dir"],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(paths["metadata"]),
        reference_masks_dir=reference, with_drift=with_drift, **pipeline_options)
    progress = _quiet_logs()
    started = time.time()
    try:
        tfx.orchestration.LocalDagRunner().run(pipeline)
    finally:
        absl_logger = logging.getLogger("absl")
        for handler in [progress, *progress.extra_handlers]:
            absl_logger.removeHandler(handler)
        absl_logger.propagate = True
    summary = summarize(paths)
    summary["seconds"] = round(time.time() - started, 1)
    summary["cached_components"] = sorted(progress.cached)
    if summary.get("report_artifact"):
        shutil.copyfile(summary["report_artifact"], paths["report"])
        summary["report"] = paths["report"]
    with open(os.path.join(paths["output_dir"], "run_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def print_summary(summary: dict) -> None:
    print("")
    print(f"pipeline finished in {summary['seconds']}s (output: {summary['output_dir']})")
    print(f"  report:           {summary.get('report', 'not written')}")
    print(f"  class statistics: {summary.get('class_stats', 'not written')}")
    if summary.get("pushed_model") and summary.get("pushed_this_run"):
        print(f"  pushed model:     {summary['pushed_model']}")
    elif summary.get("pushed_model"):
        print(f"  pushed model:     {summary['pushed_model']} (earlier run; this run: "
              f"{summary.get('blessing_reason', 'not blessed')})")
    else:
        print(f"  pushed model:     none ({summary.get('blessing_reason', 'model not blessed')})")
    if summary.get("miou") is not None:
        print(f"  mIoU:             {summary['miou']:.4f} on {summary.get('num_eval_images')} eval images "
              f"({summary.get('truth', 'annotation masks')})")
    print(f"  ML Metadata:      {summary['metadata']}")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="run the whole pipeline locally (sample data when no --data)",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="YAML/JSON config (see pipeline/config.py)")
    parser.add_argument("--data", metavar="DIR", help="images/ + masks/ folder, or a folder of Span-N/ TFRecords")
    parser.add_argument("--output-dir", metavar="DIR", help="where metadata, artifacts, report and model go")
    parser.set_defaults(func=_main)


def _main(args) -> int:
    quiet_library_output()
    try:
        config = load_config(args.config, **{"data.dir": args.data, "output_dir": args.output_dir})
    except ConfigError as exc:
        print(f"segbalance run: config error: {exc}", file=sys.stderr)
        return 2
    print(f"segbalance run: output in {os.path.abspath(config.output_dir)}", flush=True)
    try:
        summary = run_local(config)
    except ConfigError as exc:
        print(f"segbalance run: config error: {exc}", file=sys.stderr)
        return 2
    print_summary(summary)
    return 0
