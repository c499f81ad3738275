"""The Beam pipeline of the ClassStats job: local multi-process runs start lighter workers.

:func:`make_pipeline` builds ``beam.Pipeline`` from the job's Beam arguments. For the DirectRunner
(named, or by default) in ``multi_processing`` mode it runs on :class:`LightWorkerRunner`, Beam's
FnApiRunner with one change: its worker processes start with ``python -m
segbalance.components.beam_worker`` instead of Beam's ``sdk_worker_main`` (see that module for
what this saves). Every other runner and mode (in_memory, multi_threading, Dataflow, Flink, the
portable runner) runs exactly as Beam builds it.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.portability import python_urns
from apache_beam.runners.portability.fn_api_runner import fn_runner

STOCK_WORKER = "-m apache_beam.runners.worker.sdk_worker_main"
LIGHT_WORKER = "-m segbalance.components.beam_worker"


class LightWorkerRunner(fn_runner.FnApiRunner):
    """FnApiRunner whose subprocess workers start with ``segbalance.components.beam_worker``."""

    def run_via_runner_api(self, pipeline_proto, options=None):
        for environment in pipeline_proto.components.environments.values():
            command = environment.payload.decode("utf-8", "replace")
            if environment.urn == python_urns.SUBPROCESS_SDK and command.endswith(STOCK_WORKER):
                environment.payload = (command[: -len(STOCK_WORKER)] + LIGHT_WORKER).encode("utf-8")
        return super().run_via_runner_api(pipeline_proto, options)


# The names Beam accepts for its local runner (``--runner``, any case; none given means the DirectRunner).
DIRECT_RUNNERS = frozenset({"direct", "directrunner", "switchingdirectrunner", "bundlebaseddirectrunner"})
# Of those, the ones that run Beam's FnApiRunner (and its ``direct_running_mode``) on this machine.
FN_API_DIRECT_RUNNERS = frozenset({"direct", "directrunner"})


def _runner(beam_args: Sequence[str]) -> Optional[str]:
    runner = PipelineOptions(flags=list(beam_args)).view_as(StandardOptions).runner
    return None if runner is None else str(runner).lower()


def runs_on_this_machine(beam_args: Sequence[str]) -> bool:
    """True when these Beam options run the pipeline with the DirectRunner (named, or by default)."""
    runner = _runner(beam_args)
    return runner is None or runner in DIRECT_RUNNERS


def light_workers_apply(beam_args: Sequence[str]) -> bool:
    """True for the DirectRunner (named or by default) in ``multi_processing`` mode."""
    runner = _runner(beam_args)
    return ((runner is None or runner in FN_API_DIRECT_RUNNERS)
            and PipelineOptions(list(beam_args)).view_as(DirectOptions).direct_running_mode == "multi_processing")


def make_pipeline(beam_args: Optional[List[str]] = None) -> beam.Pipeline:
    """``beam.Pipeline`` for ``beam_args``; local multi-process runs use :class:`LightWorkerRunner`."""
    args = list(beam_args or [])
    if light_workers_apply(args):
        return beam.Pipeline(runner=LightWorkerRunner(), options=PipelineOptions(args))
    return beam.Pipeline(options=PipelineOptions(args))
