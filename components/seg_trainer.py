"""SegTrainer: the TFX Trainer plus a ClassStats input, handed to ``run_fn``.

The stock Trainer cannot take a custom artifact, so ``SegTrainerSpec`` extends
``TrainerSpec.INPUTS`` with ``class_stats`` and the executor (a ``GenericExecutor``) adds
the artifact's URI to ``fn_args.custom_config["class_stats_uri"]``. Outputs are the
standard ``model`` (Model) and ``model_run`` (ModelRun) artifacts.

    trainer = SegTrainer(examples=example_gen.outputs["examples"],
                         transform_graph=transform.outputs["transform_graph"],
                         class_stats=class_stats_gen.outputs["class_stats"],
                         run_fn="segbalance.trainer.task.run_fn", custom_config={...})
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from tfx import types
from tfx.components.trainer import executor as trainer_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.proto import trainer_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter
from tfx.utils import json_utils

from segbalance.components.artifacts import ClassStats


class SegTrainerSpec(standard_component_specs.TrainerSpec):
    INPUTS = {**standard_component_specs.TrainerSpec.INPUTS, "class_stats": ChannelParameter(type=ClassStats)}


class SegTrainerExecutor(trainer_executor.GenericExecutor):
    def _GetFnArgs(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
                   exec_properties: Dict[str, Any]):
        fn_args = super()._GetFnArgs(input_dict, output_dict, exec_properties)
        fn_args.custom_config = dict(fn_args.custom_config or {})
        fn_args.custom_config["class_stats_uri"] = artifact_utils.get_single_uri(input_dict["class_stats"])
        return fn_args


class SegTrainer(base_component.BaseComponent):
    """Trainer with a ``class_stats`` input (see module docstring)."""

    SPEC_CLASS = SegTrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(SegTrainerExecutor)

    def __init__(self, examples: types.BaseChannel, class_stats: types.BaseChannel,
                 transform_graph: Optional[types.BaseChannel] = None, schema: Optional[types.BaseChannel] = None,
                 base_model: Optional[types.BaseChannel] = None, run_fn: str = "segbalance.trainer.task.run_fn",
                 train_args: Optional[trainer_pb2.TrainArgs] = None, eval_args: Optional[trainer_pb2.EvalArgs] = None,
                 custom_config: Optional[Dict[str, Any]] = None):
        spec = SegTrainerSpec(
            examples=examples, transform_graph=transform_graph, schema=schema, base_model=base_model,
            class_stats=class_stats, train_args=train_args or trainer_pb2.TrainArgs(),
            eval_args=eval_args or trainer_pb2.EvalArgs(), run_fn=run_fn,
            custom_config=json_utils.dumps(custom_config or {}),
            model=types.Channel(type=standard_artifacts.Model),
            model_run=types.Channel(type=standard_artifacts.ModelRun))
        super().__init__(spec=spec)
