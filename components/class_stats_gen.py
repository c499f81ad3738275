"""ClassStatsGen: the Beam class statistics (components/class_stats_beam.py) as a TFX component.

    class_stats_gen = ClassStatsGen(
        examples=example_gen.outputs["examples"], num_classes=4,
        class_names=["background", "ellipse", "rectangle", "circle"],
        labeled_policy="complete", weight_clip=(0.1, 10.0), splits=["train"])
    class_stats_gen.outputs["class_stats"]   # ClassStats artifact
    class_stats_gen.outputs["clean_examples"]  # the records that passed the checks

Every split of the input is checked; the counts and weights come from ``splits`` only.
The ``clean_examples`` output (standard Examples: the same split names, span and version, gzip
TFRecords ``Split-<name>/data_tfrecord-*.gz`` as ExampleGen writes them, each record's bytes
unchanged) holds only the records that passed: Transform, SegTrainer and SegEvaluator read
it, so a quarantined record reaches none of them. ``class_stats.json`` ``split_counts`` says,
per split, how many records were read, kept and quarantined (by kind); ``quarantine.jsonl``
lists each quarantined record with its split and reason.

Runs with the pipeline's ``beam_pipeline_args`` (DirectRunner locally, Dataflow / Flink /
Spark with their usual flags).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from tfx import types
from tfx.dsl.components.base import base_beam_component, base_beam_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from segbalance.components.artifacts import ClassStats
from segbalance.components.class_stats_beam import StatsOptions, run_class_stats
from segbalance.components.component_config import StatsConfig
from segbalance.components.local_runner import light_workers_apply, make_pipeline
from segbalance.contract import DEFAULT_IGNORE_INDEX


class ClassStatsGenSpec(ComponentSpec):
    PARAMETERS = {
        "num_classes": ExecutionParameter(type=int),
        "class_names": ExecutionParameter(type=str),  # JSON list
        "ignore_index": ExecutionParameter(type=int),
        "labeled_policy": ExecutionParameter(type=str),
        "suspect_threshold": ExecutionParameter(type=float),
        "weight_options": ExecutionParameter(type=str),  # JSON dict for compute_class_weights
        "splits": ExecutionParameter(type=str),  # JSON list
    }
    INPUTS = {"examples": ChannelParameter(type=standard_artifacts.Examples)}
    OUTPUTS = {"class_stats": ChannelParameter(type=ClassStats),
               # not "examples": a ComponentSpec key is either an input or an output
               "clean_examples": ChannelParameter(type=standard_artifacts.Examples)}


def stats_options(exec_properties: Dict[str, Any]) -> StatsOptions:
    """The typed options the executor runs with, rebuilt from the execution properties."""
    weight_options = json.loads(exec_properties["weight_options"])
    if weight_options.get("clip") is not None:
        weight_options["clip"] = tuple(weight_options["clip"])
    return StatsOptions(
        num_classes=int(exec_properties["num_classes"]),
        class_names=json.loads(exec_properties["class_names"]),
        ignore_index=int(exec_properties["ignore_index"]),
        labeled_policy=exec_properties["labeled_policy"],
        suspect_threshold=float(exec_properties["suspect_threshold"]),
        weight_options=weight_options,
    )


class ClassStatsGenExecutor(base_beam_executor.BaseBeamExecutor):
    def _pipeline(self):
        """TFX's Beam pipeline, with lighter worker processes for local multi-process runs."""
        if self._make_beam_pipeline_fn is None and light_workers_apply(self._beam_pipeline_args):
            return make_pipeline(self._beam_pipeline_args)
        return self._make_beam_pipeline()

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        output = artifact_utils.get_single_instance(output_dict["class_stats"])
        clean = artifact_utils.get_single_instance(output_dict["clean_examples"])
        splits = json.loads(exec_properties["splits"])
        available = artifact_utils.decode_split_names(examples.split_names)
        unknown = [s for s in splits if s not in available]
        if unknown:
            raise ValueError(f"ClassStatsGen: splits {unknown} not in {examples.uri} (has {available})")
        options = stats_options(exec_properties)
        patterns = {s: os.path.join(artifact_utils.get_split_uri([examples], s), "*") for s in available}
        print(f"ClassStatsGen: checking splits {available} of {examples.uri}, counting classes in splits {splits}",
              flush=True)
        stats = run_class_stats(patterns, output.uri, options, pipeline=self._pipeline(),
                                count_splits=splits, examples_dir=clean.uri)
        copy_examples_properties(examples, clean)
        for key in ("num_records", "quarantined_records"):
            output.set_int_custom_property(key, stats[key])
        for split, counts in stats["split_counts"].items():
            clean.set_int_custom_property(f"kept_{split}", counts["kept"])
            clean.set_int_custom_property(f"quarantined_{split}", counts["quarantined"])
        msg = (f"ClassStatsGen: {stats['num_records']} records, {stats['quarantined_records']} quarantined in the "
               f"counted split(s) {', '.join(splits)}, pixel counts {stats['pixel_counts']}")
        logging.info(msg)
        print(msg, flush=True)
        quarantined = sum(c["quarantined"] for c in stats["split_counts"].values())
        print("ClassStatsGen: records passed on (kept / read): " + ", ".join(
            f"{s} {c['kept']}/{c['read']}" for s, c in stats["split_counts"].items())
            + (f"; {quarantined} quarantined in all, each with its reason in "
               f"{os.path.join(output.uri, 'quarantine.jsonl')}" if quarantined else ""), flush=True)
        if stats["zero_count_note"]:
            logging.warning("ClassStatsGen: %s", stats["zero_count_note"])
            print(f"ClassStatsGen: {stats['zero_count_note']}", flush=True)


def copy_examples_properties(source: types.Artifact, target: types.Artifact) -> None:
    """The output Examples describe the same data as the input: split names, span, version and
    the format properties Transform's TFXIO reads (``payload_format``; ``file_format`` is gzip
    TFRecords, as written)."""
    from tfx.components.util import examples_utils

    target.split_names = source.split_names
    for name in ("span", "version"):
        if source.has_property(name):
            setattr(target, name, getattr(source, name))
        if source.has_custom_property(name):  # KFP v2 carries the span as a custom property
            target.set_int_custom_property(name, int(source.get_custom_property(name)))
    examples_utils.set_payload_format(target, examples_utils.get_payload_format(source))
    examples_utils.set_file_format(target, "tfrecords_gzip")


class ClassStatsGen(base_beam_component.BaseBeamComponent):
    """Per-class pixel/image counts, class weights and per-image label sets (see module docstring)."""

    SPEC_CLASS = ClassStatsGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(ClassStatsGenExecutor)

    def __init__(self, examples: types.BaseChannel, num_classes: int, class_names: Optional[Sequence[str]] = None,
                 ignore_index: int = DEFAULT_IGNORE_INDEX, labeled_policy: str = StatsConfig.labeled_policy,
                 suspect_threshold: float = StatsConfig.suspect_threshold,
                 weight_damping: Optional[str] = StatsConfig.damping,
                 weight_clip: Optional[Tuple[float, float]] = StatsConfig.clip,
                 zero_count_weight: float = StatsConfig.zero_count_weight,
                 weight_beta: Optional[float] = StatsConfig.beta, weight_enet_k: float = StatsConfig.enet_k,
                 splits: Sequence[str] = ("train",)):
        """Args (all but ``examples`` become execution properties):
          examples: Examples channel (TFRecords of the data contract, trainer/example_codec.py).
          num_classes: C, class ids are ``0..C-1``.
          class_names: C names (default ``class_0..``).
          ignore_index: mask value meaning "no label" (default 255), counted as ``ignored_pixels``.
          labeled_policy: ``"complete"`` or ``"partial"``: what a record without
            ``image/segmentation/class/labeled`` means (see components/class_stats_beam.py).
          suspect_threshold: co-occurrence rate in (0, 1] for ``suspect_missing``.
          weight_damping, weight_clip, zero_count_weight, weight_beta, weight_enet_k: passed to
            ``segbalance.trainer.class_weights.compute_class_weights`` as damping, clip, zero_count_weight,
            beta (None = 1 - 1/N), enet_k, for every scheme.
          splits: the Examples splits to count together (default ``["train"]``); every split is checked.
        """
        if not splits:
            raise ValueError("ClassStatsGen: splits must name at least one split")
        # Validate now (at pipeline construction), not inside the executor.
        weight_options = {"damping": weight_damping, "clip": list(weight_clip) if weight_clip else None,
                          "zero_count_weight": float(zero_count_weight), "beta": weight_beta,
                          "enet_k": float(weight_enet_k)}
        options = StatsOptions(num_classes, list(class_names) if class_names else None, ignore_index,
                               labeled_policy, suspect_threshold, weight_options)
        spec = ClassStatsGenSpec(
            examples=examples, num_classes=num_classes, class_names=json.dumps(options.class_names),
            ignore_index=ignore_index, labeled_policy=labeled_policy, suspect_threshold=float(suspect_threshold),
            weight_options=json.dumps(weight_options), splits=json.dumps(list(splits)),
            class_stats=types.Channel(type=ClassStats),
            clean_examples=types.Channel(type=standard_artifacts.Examples))
        super().__init__(spec=spec)
