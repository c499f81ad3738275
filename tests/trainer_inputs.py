"""Tiny real trainer inputs shared by the trainer tests.

`tiny_pipeline()` runs ImportExampleGen -> ClassStatsGen -> Transform -> SegTrainer in a
LocalDagRunner once per test process (cached) on 24 generated 32x32 images with 3 classes,
and returns the artifact URIs. `fn_args_for()` builds the FnArgs that the SegTrainer
executor would give `run_fn`, so tests can call `run_fn` directly on those artifacts.
"""
from __future__ import annotations

import atexit
import glob
import os
import shutil
import tempfile
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from segbalance.pipeline.local_dag import run_dag_locally
from segbalance.trainer import example_codec as codec

NUM_CLASSES = 3
NAMES = ["background", "square", "bar"]
SIZE = 32
NUM_RECORDS = 24
# A schema for the raw examples (what SchemaGen(infer_feature_shape=True) gives: dense bytes).
SCHEMA = """
feature { name: "image/encoded" type: BYTES presence { min_fraction: 1 } shape { dim { size: 1 } } }
feature { name: "image/format" type: BYTES presence { min_fraction: 1 } shape { dim { size: 1 } } }
feature { name: "image/height" type: INT presence { min_fraction: 1 } shape { dim { size: 1 } } }
feature { name: "image/width" type: INT presence { min_fraction: 1 } shape { dim { size: 1 } } }
feature { name: "image/source_id" type: BYTES presence { min_fraction: 1 } shape { dim { size: 1 } } }
feature { name: "image/segmentation/class/encoded" type: BYTES presence { min_fraction: 1 } shape { dim { size: 1 } } }
feature { name: "image/segmentation/class/format" type: BYTES presence { min_fraction: 1 } shape { dim { size: 1 } } }
feature { name: "image/segmentation/class/labeled" type: INT }
"""
# Shorthand of the trainer config used by these tests: the `training` fields, plus `class_names` and
# `ignore_index` (the `classes` section). `custom_config()` turns it into what SegTrainer receives.
CONFIG = {
    "class_names": NAMES, "ignore_index": 255, "image_size": [16, 16],
    "epochs": 1, "batch_size": 4, "learning_rate": 1e-2, "depth": 2, "base_filters": 4, "steps_per_epoch": 2,
    "loss": {"terms": [{"type": "ce", "weight": 1.0}], "class_weights": "inverse_frequency",
             "missing_labels": "marginal"},
    "seed": 1,
}


def custom_config(flat: Optional[dict] = None, **changes) -> dict:
    """SegTrainer's custom_config ({"classes", "training"} + runtime keys) from CONFIG-style ``flat``
    shorthand updated with ``changes``; a dict that already has "training" is returned as it is."""
    if flat is not None and "training" in flat:
        return {**flat, **changes}
    training = {**CONFIG, **(flat or {}), **changes}
    out = {"classes": {"names": training.pop("class_names"), "ignore_index": training.pop("ignore_index")}}
    for key in [k for k in training if k.startswith("_") or k == "class_stats_uri"]:
        out[key] = training.pop(key)
    out["training"] = training
    return out


def make_image_and_mask(rng: np.random.Generator, height: int, width: int):
    """A square (class 1) and a bar (class 2) on background; colours tell the classes apart."""
    mask = np.zeros((height, width), np.uint8)
    s = int(rng.integers(height // 4, height // 2))
    y, x = rng.integers(0, height - s), rng.integers(0, width - s)
    mask[y:y + s, x:x + s] = 1
    if rng.random() < 0.6:
        col = int(rng.integers(0, width - 3))
        mask[:, col:col + 3] = 2
    colours = np.array([[30, 30, 30], [200, 60, 60], [60, 60, 220]], np.float64)
    image = colours[mask] + rng.normal(0, 20, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8), mask


def make_examples(n: int = NUM_RECORDS, seed: int = 0, height: int = SIZE, width: int = SIZE,
                  partial_every: int = 4) -> List[bytes]:
    """Serialized records; every `partial_every`-th one records only {0, 1} as labelled."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        image, mask = make_image_and_mask(rng, height, width)
        labeled = [0, 1] if partial_every and i % partial_every == 0 else None
        if labeled is not None:
            mask[mask == 2] = 0  # the bar was not annotated
        example = codec.build_example(codec.encode_png(image), codec.encode_png(mask), f"img{i:03d}",
                                      height, width, labeled=labeled)
        records.append(example.SerializeToString())
    return records


def write_tfrecord(path: str, records: List[bytes], compression: Optional[str] = None) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path, options=compression) as writer:
        for record in records:
            writer.write(record)
    return path


def write_schema(folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "schema.pbtxt"), "w") as f:
        f.write(SCHEMA)
    return os.path.join(folder, "schema.pbtxt")


def run_tiny_pipeline(root: str, config: dict = CONFIG, records: Optional[List[bytes]] = None) -> Dict[str, str]:
    """Run the four components; return {"examples", "class_stats", "transform_graph", "model", "model_run"} URIs."""
    from tfx import v1 as tfx

    from segbalance.components.class_stats_gen import ClassStatsGen
    from segbalance.components.seg_trainer import SegTrainer

    trainer_config = custom_config(config)
    write_tfrecord(os.path.join(root, "data", "data.tfrecord"), records or make_examples())
    schema_dir = os.path.dirname(write_schema(os.path.join(root, "schema")))
    example_gen = tfx.components.ImportExampleGen(input_base=os.path.join(root, "data"))
    schema = tfx.components.ImportSchemaGen(schema_file=os.path.join(schema_dir, "schema.pbtxt"))
    examples = example_gen.outputs["examples"]
    class_stats = ClassStatsGen(examples=examples, num_classes=NUM_CLASSES, class_names=NAMES)
    transform = tfx.components.Transform(
        examples=examples, schema=schema.outputs["schema"], preprocessing_fn="segbalance.trainer.preprocessing.preprocessing_fn",
        custom_config=trainer_config, materialize=False, disable_statistics=True)
    trainer = SegTrainer(examples=examples, transform_graph=transform.outputs["transform_graph"],
                         class_stats=class_stats.outputs["class_stats"], run_fn="segbalance.trainer.task.run_fn",
                         train_args=tfx.proto.TrainArgs(num_steps=0), eval_args=tfx.proto.EvalArgs(num_steps=0),
                         custom_config=trainer_config)
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="seg-trainer-test", pipeline_root=os.path.join(root, "pipeline_root"),
        components=[example_gen, schema, class_stats, transform, trainer], enable_cache=False,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.join(root, "metadata.sqlite")),
        beam_pipeline_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"])
    run_dag_locally(pipeline)

    def one(pattern):
        found = sorted(glob.glob(os.path.join(root, "pipeline_root", pattern)))
        assert len(found) == 1, (pattern, found)
        return found[0]

    return {
        "examples": one("ImportExampleGen/examples/*"),
        "class_stats": one("ClassStatsGen/class_stats/*"),
        "transform_graph": one("Transform/transform_graph/*"),
        "model": one("SegTrainer/model/*"),
        "model_run": one("SegTrainer/model_run/*"),
    }


_CACHE: Dict[str, Dict[str, str]] = {}


def tiny_pipeline() -> Dict[str, str]:
    """The pipeline's artifact URIs, run once per process (in a temporary folder)."""
    if "uris" not in _CACHE:
        root = tempfile.mkdtemp(prefix="seg-trainer-")
        atexit.register(shutil.rmtree, root, ignore_errors=True)  # the test process's own folder
        _CACHE["uris"] = run_tiny_pipeline(root)
    return _CACHE["uris"]


def fn_args_for(uris: Dict[str, str], out_dir: str, config: dict, class_stats_uri: Optional[str] = None,
                train_files: Optional[List[str]] = None):
    """FnArgs as the SegTrainer executor builds them (``config``: CONFIG-style shorthand or a
    custom_config), writing into `out_dir`."""
    from tfx.components.trainer.fn_args_utils import FnArgs

    cfg = custom_config(config)
    cfg["class_stats_uri"] = class_stats_uri or uris["class_stats"]
    return FnArgs(
        train_files=train_files or [os.path.join(uris["examples"], "Split-train", "*")],
        eval_files=[os.path.join(uris["examples"], "Split-eval", "*")],
        transform_output=uris["transform_graph"], transform_graph_path=uris["transform_graph"],
        serving_model_dir=os.path.join(out_dir, "model", "Format-Serving"),
        model_run_dir=os.path.join(out_dir, "model_run"),
        custom_config=cfg)


def run_executor(uris: Dict[str, str], out_dir: str, config: dict, class_stats_uri: Optional[str] = None):
    """Run the SegTrainer executor (not the whole pipeline) on the tiny pipeline's artifacts."""
    import json

    from google.protobuf import json_format
    from tfx.proto import trainer_pb2
    from tfx.types import artifact_utils, standard_artifacts

    from segbalance.components.artifacts import ClassStats
    from segbalance.components.seg_trainer import SegTrainerExecutor

    def artifact(cls, uri):
        a = cls()
        a.uri = uri
        return a

    examples = artifact(standard_artifacts.Examples, uris["examples"])
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    inputs = {"examples": [examples],
              "transform_graph": [artifact(standard_artifacts.TransformGraph, uris["transform_graph"])],
              "class_stats": [artifact(ClassStats, class_stats_uri or uris["class_stats"])]}
    outputs = {"model": [artifact(standard_artifacts.Model, os.path.join(out_dir, "model"))],
               "model_run": [artifact(standard_artifacts.ModelRun, os.path.join(out_dir, "model_run"))]}
    properties = {"train_args": json_format.MessageToJson(trainer_pb2.TrainArgs(num_steps=0)),
                  "eval_args": json_format.MessageToJson(trainer_pb2.EvalArgs(num_steps=0)),
                  "custom_config": json.dumps(custom_config(config)), "run_fn": "segbalance.trainer.task.run_fn"}
    SegTrainerExecutor().Do(inputs, outputs, properties)
    with open(os.path.join(out_dir, "model_run", "training_summary.json")) as f:
        return json.load(f)


def serve_like_tf_serving(path: str, images) -> dict:
    """The serving signature's outputs as TF Serving computes them: a v1 Session on the SavedModel's 'serve'
    MetaGraph (C++ LoadSavedModel), fed and fetched by the SignatureDef's tensor names (QA 74)."""
    import tensorflow as tf

    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
        signature = tf.compat.v1.saved_model.loader.load(session, ["serve"], path).signature_def["serving_default"]
        names = sorted(signature.outputs)
        values = session.run([signature.outputs[n].name for n in names], {signature.inputs["images"].name: images})
    return dict(zip(names, values))
