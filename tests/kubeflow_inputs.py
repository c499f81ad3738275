"""Shared inputs of the Kubeflow tests: a tiny Span-0 folder and a compile helper."""
from pathlib import Path

from segbalance.pipeline import ingest, sample_data
from segbalance.pipeline.config import config_from_dict

IMAGE = "gcr.io/example/segbalance:0.1"
TINY = {"data": {"sample": {"size": 32}},
        # class weights from the artifact, so the launcher test can check they reach the trainer
        "training": {"image_size": [32, 32], "epochs": 1, "batch_size": 8, "depth": 2, "base_filters": 8,
                     "loss": {"terms": [{"type": "ce"}, {"type": "dice"}], "class_weights": "median_frequency",
                              "missing_labels": "marginal"}}}


def write_span_data(root: Path, num_images: int = 24) -> Path:
    """``root/data/Span-0`` written by `segbalance ingest` from shapes sample data; returns root."""
    raw = sample_data.write_sample_data("shapes", root / "raw", num_images=num_images, size=32, drop_fraction=0.3)
    ingest.ingest(raw / "images", raw / "masks", root / "data", span=0,
                  options=ingest.IngestOptions(num_classes=4, labeled=ingest.load_labeled(raw / "labeled.json", 4)))
    return root


def compile_into(root: Path, image=IMAGE, pipeline_root=None, span=None, name="pipeline.json", drift=None):
    """Compile the TINY config over ``root/data`` (``drift``: fields that replace TINY's drift section)."""
    from segbalance.kubeflow.runner import compile_pipeline

    config = config_from_dict({**TINY, "data": {"dir": str(root / "data")},
                               "drift": {**TINY.get("drift", {}), **(drift or {})}})
    out = root / name
    spec = compile_pipeline(config, str(out), image, pipeline_root or str(root / "root"), span=span)
    return out, spec
