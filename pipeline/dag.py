"""`create_pipeline`: the one TFX DAG shared by the local and the Kubeflow runners.

    ImportExampleGen (Span-N TFRecords from `segbalance ingest`)
      -> StatisticsGen -> SchemaGen -> ExampleValidator              (TFDV record checks)
      -> ClassStatsGen      (Beam: checks every split, class stats, weights; outputs the clean examples)
      -> ClassDistributionValidator vs the last accepted ClassStats  (drift gate; optional)
      -> Transform (segbalance.trainer.preprocessing.preprocessing_fn; Transform, SegTrainer and
                    SegEvaluator read ClassStatsGen's clean examples: no quarantined record)
      -> SegTrainer (segbalance.trainer.task.run_fn, loss from the ClassStats artifact;
                     warm start from the latest blessed model with training.warm_start)
      -> SegEvaluator (vs the latest blessed model) -> Pusher (blessed models only)
      -> DataReport (offline HTML)

With ``drift.action: block_training`` SegTrainer, SegEvaluator and Pusher sit in a
``tfx.dsl.Cond`` on the DriftReport's ``blocked`` mark: a blocked run skips them, and its
report comes from a second DataReport node (``DataReportBlocked``, under the opposite
condition) that takes no input of a skipped node: Kubeflow's driver fails on an input artifact
whose producer was skipped, optional or not. With ``block`` the model is trained but not
blessed; with ``warn`` the drift is only recorded.

Module code is referenced by import path (``segbalance.trainer.task.run_fn``), never by file, so the
same pipeline runs from the installed package locally and in the Kubeflow image.
"""
from __future__ import annotations

import contextlib
import os
from typing import List, Optional

from segbalance.contract import BLOCKED_REPORT_ID
from segbalance.pipeline.config import PipelineConfig
from segbalance.trainer.typed_config import to_dict

SPAN_PATTERN = "Span-{SPAN}/data-*"


def component_ids(with_drift: bool = True) -> List[str]:
    """Node ids of the DAG in execution order (used for progress lines and tests); with
    ``drift.action: block_training`` a ``BLOCKED_REPORT_ID`` node follows DataReport."""
    ids = ["ImportExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "ClassStatsGen"]
    if with_drift:
        ids += ["latest_class_stats_resolver", "ClassDistributionValidator"]
    ids += ["Transform", "SegTrainer", "latest_blessed_model_resolver", "SegEvaluator", "Pusher", "DataReport"]
    return ids


def trainer_custom_config(config: PipelineConfig) -> dict:
    """Transform's and SegTrainer's ``custom_config``: the ``classes`` and ``training`` sections,
    serialised; ``preprocessing_fn`` and ``run_fn`` rebuild the typed ``TrainerConfig``."""
    return config.trainer_config().to_custom_config()


def transform_custom_config(config: PipelineConfig) -> dict:
    """Transform's ``custom_config``: only what ``preprocessing_fn`` reads (the image size, whether
    a backbone takes 0..255 pixels, the ignore index; ``depth`` so the size check is the trainer's).
    A changed loss, seed or epoch count leaves Transform cached."""
    t = config.training
    return {"classes": to_dict(config.classes),
            "training": {"image_size": list(t.image_size), "backbone": t.backbone, "depth": t.depth}}


def class_stats_options(config: PipelineConfig) -> dict:
    """ClassStatsGen's options from the ``classes`` and ``stats`` sections."""
    s = config.stats
    return {"num_classes": config.num_classes, "class_names": list(config.classes.names),
            "ignore_index": config.classes.ignore_index, "labeled_policy": s.labeled_policy,
            "suspect_threshold": s.suspect_threshold, "weight_damping": s.damping, "weight_clip": s.clip,
            "zero_count_weight": s.zero_count_weight, "weight_beta": s.beta, "weight_enet_k": s.enet_k}


def split_feature(config: PipelineConfig) -> str:
    """The record feature ImportExampleGen hashes into train / eval (``data.split_by``)."""
    from segbalance.contract import GROUP_KEY, SOURCE_ID_KEY

    return GROUP_KEY if config.data.split_by == "group" else SOURCE_ID_KEY


def eval_buckets(config: PipelineConfig) -> int:
    """Of ImportExampleGen's 10 hash buckets, how many are the eval split (``data.eval_fraction``)."""
    return max(1, round(10 * config.data.eval_fraction))


def split_of(value: str, config: PipelineConfig) -> str:
    """"train" or "eval": the split ImportExampleGen gives a record whose split feature holds ``value``
    (its partition function: the sha256 of the serialized bytes feature, modulo the 10 buckets)."""
    from tensorflow.core.example import feature_pb2

    return split_of_feature(feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[value.encode("utf-8")])),
                            config)


def split_of_feature(feature, config: PipelineConfig) -> str:
    """``split_of`` for a record's own split Feature (every value, the bytes as they are)."""
    import hashlib

    bucket = int(hashlib.sha256(feature.SerializeToString(deterministic=True)).hexdigest(), 16) % 10
    return "train" if bucket < 10 - eval_buckets(config) else "eval"


def example_gen_component(config: PipelineConfig, examples_dir: str, span: Optional[int] = None):
    """ImportExampleGen over ``examples_dir/Span-N/data-*`` (the latest span, or ``span``), hashing
    ``split_feature(config)`` into train / eval (``data.eval_fraction``)."""
    from tfx import v1 as tfx
    from tfx.proto import example_gen_pb2, range_config_pb2

    evaluated = eval_buckets(config)
    return tfx.components.ImportExampleGen(
        input_base=examples_dir,
        input_config=example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name="single_split", pattern=SPAN_PATTERN)]),
        output_config=example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(
            splits=[example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=10 - evaluated),
                    example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=evaluated)],
            partition_feature_name=split_feature(config))),
        range_config=None if span is None else range_config_pb2.RangeConfig(
            static_range=range_config_pb2.StaticRange(start_span_number=span, end_span_number=span)),
    )


def create_pipeline(
    config: PipelineConfig,
    examples_dir: str,
    pipeline_root: str,
    serving_model_dir: str,
    metadata_connection_config=None,
    reference_masks_dir: Optional[str] = None,
    with_drift: bool = True,
    with_report: bool = True,
    span: Optional[int] = None,
    beam_pipeline_args: Optional[List[str]] = None,
    for_kubeflow: bool = False,
):
    """The TFX pipeline for ``config``, reading ``examples_dir/Span-N/data-*`` (latest span, or ``span``).

    ``for_kubeflow``: the ClassStats resolver uses TFX's ``LatestArtifactStrategy``, the only
    latest-artifact strategy Kubeflow's compiler takes (Kubeflow queries each output on its own);
    locally ``LatestEachStrategy``: each channel on its own too, so a first run's resolver completes
    instead of failing in ML Metadata, and with ClassStats but no DriftReport (a run stopped before
    its gate) the gate compares with the latest ClassStats instead of nothing (TFX's returned none)."""
    from tfx import v1 as tfx

    from segbalance.components.class_stats_gen import ClassStatsGen
    from segbalance.components.seg_evaluator import SegEvaluator
    from segbalance.components.seg_trainer import SegTrainer
    from segbalance.components.staged_pusher import Pusher as StagedPusher

    names = list(config.classes.names)
    example_gen = example_gen_component(config, examples_dir, span)
    examples = example_gen.outputs["examples"]
    statistics_gen = tfx.components.StatisticsGen(examples=examples)
    schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
    example_validator = tfx.components.ExampleValidator(statistics=statistics_gen.outputs["statistics"],
                                                        schema=schema_gen.outputs["schema"])
    class_stats_gen = ClassStatsGen(examples=examples, **class_stats_options(config))
    class_stats = class_stats_gen.outputs["class_stats"]
    clean_examples = class_stats_gen.outputs["clean_examples"]  # only the records that passed ClassStatsGen's checks

    components = [example_gen, statistics_gen, schema_gen, example_validator, class_stats_gen]
    drift_gate = None
    if with_drift:
        from segbalance.components.artifacts import DriftReport
        from segbalance.components.class_distribution_validator import ClassDistributionValidator

        from segbalance.components.latest_artifacts import LatestEachStrategy

        previous = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestArtifactStrategy if for_kubeflow else LatestEachStrategy,
            class_stats=tfx.dsl.Channel(type=class_stats.type),
            drift_report=tfx.dsl.Channel(type=DriftReport),
        ).with_id("latest_class_stats_resolver")
        drift_gate = ClassDistributionValidator(
            class_stats=class_stats, baseline_class_stats=previous.outputs["class_stats"],
            previous_report=previous.outputs["drift_report"],
            js_divergence=config.drift.js_divergence, max_abs_change=config.drift.max_abs_change,
            missing_rate_change=config.drift.missing_rate_change,
            vanished_class_chance=config.drift.vanished_class_chance, significance=config.drift.significance,
            new_class_chance=config.drift.new_class_chance, baseline_min_share=config.drift.baseline_min_share,
            action=config.drift.action)
        components += [previous, drift_gate]

    model_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    custom_config = trainer_custom_config(config)
    transform = tfx.components.Transform(
        examples=clean_examples, schema=schema_gen.outputs["schema"],
        preprocessing_fn="segbalance.trainer.preprocessing.preprocessing_fn",
        custom_config=transform_custom_config(config),
        materialize=False, disable_statistics=True)
    with training_gate(drift_gate, config.drift.action):  # nodes made in here run only when not blocked
        trainer = SegTrainer(
            examples=clean_examples, transform_graph=transform.outputs["transform_graph"],
            class_stats=class_stats, run_fn="segbalance.trainer.task.run_fn",
            base_model=model_resolver.outputs["model"] if config.training.warm_start else None,
            train_args=tfx.proto.TrainArgs(num_steps=0), eval_args=tfx.proto.EvalArgs(num_steps=0),
            custom_config=custom_config)
        evaluator_kwargs = {}
        if drift_gate is not None:  # drift above the thresholds: the model is not blessed, so not pushed
            evaluator_kwargs["drift_report"] = drift_gate.outputs["drift_report"]
        evaluator = SegEvaluator(
            examples=clean_examples, model=trainer.outputs["model"], baseline_model=model_resolver.outputs["model"],
            num_classes=config.num_classes, class_names=names, ignore_index=config.classes.ignore_index,
            miou_threshold=config.evaluation.miou_threshold, tolerance=config.evaluation.tolerance,
            reference_masks_dir=reference_masks_dir, push_destination=serving_model_dir, class_stats=class_stats,
            # a compiled pipeline learns its span at run time: the evaluator finds the span's complete masks
            span_references_root=examples_dir if for_kubeflow and reference_masks_dir is None else None,
            **evaluator_kwargs)
        pusher = StagedPusher(  # tfx.components.Pusher, its version folder appearing whole
            model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
            push_destination=tfx.proto.PushDestination(
                filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_model_dir)))
    components += [transform, model_resolver, trainer, evaluator, pusher]
    if with_report:
        from segbalance.pipeline.report_component import DataReport

        report_kwargs = {"statistics": statistics_gen.outputs["statistics"],
                         "anomalies": example_validator.outputs["anomalies"], "class_stats": class_stats}
        if drift_gate is not None:
            report_kwargs["drift"] = drift_gate.outputs["drift_report"]
        if metadata_connection_config is not None and metadata_connection_config.HasField("sqlite"):
            report_kwargs["metadata_path"] = metadata_connection_config.sqlite.filename_uri  # span history
        with training_gate(drift_gate, config.drift.action):
            components.append(DataReport(evaluation=evaluator.outputs["evaluation"],
                                         model_run=trainer.outputs["model_run"], **report_kwargs))
        if drift_gate is not None and config.drift.action == "block_training":
            # Kubeflow resolves no input of a skipped task (its driver fails on the missing artifact): a
            # blocked run's report is this node's, without the training's inputs
            with training_gate(drift_gate, config.drift.action, blocked=True):
                components.append(DataReport(**report_kwargs).with_id(BLOCKED_REPORT_ID))

    return tfx.dsl.Pipeline(
        pipeline_name=config.name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=True,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=(list(beam_pipeline_args) if beam_pipeline_args is not None
                            else config.beam_args_for(kubeflow=False)),
    )


def training_gate(drift_gate, action: str, blocked: bool = False):
    """``tfx.dsl.Cond`` on the DriftReport's ``blocked`` mark for ``action == "block_training"``
    (the nodes created inside it are skipped in a blocked run; with ``blocked``, they run only in
    a blocked run), otherwise a context that does nothing."""
    if drift_gate is None or action != "block_training":
        return contextlib.nullcontext()
    from tfx import v1 as tfx

    return tfx.dsl.Cond(drift_gate.outputs["drift_report"].future()[0].custom_property("blocked") == int(blocked))


def local_paths(output_dir: str) -> dict:
    """Where a local run keeps things (see README 'Run directory')."""
    output_dir = os.path.abspath(output_dir)
    return {
        "output_dir": output_dir,
        "metadata": os.path.join(output_dir, "metadata.sqlite"),
        "pipeline_root": os.path.join(output_dir, "pipeline_root"),
        "serving_model_dir": os.path.join(output_dir, "serving_model"),
        "examples_dir": os.path.join(output_dir, "data"),
        "sample_dir": os.path.join(output_dir, "sample_data"),
        "report": os.path.join(output_dir, "report.html"),
    }
