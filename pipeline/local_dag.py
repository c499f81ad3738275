"""Run a TFX pipeline on this machine without TFX's worker package piling up in the temp folder.

Before every Beam pipeline, TFX's Beam executors (ImportExampleGen, StatisticsGen, Transform,
Evaluator, ClassStatsGen, ...) call ``tfx.utils.dependency_utils.make_beam_dependency_flags``:
unless the Beam options already name a package or a container image, it copies the installed
``tfx`` (about 50 MB) into a new temporary folder, builds an sdist there, adds
``--extra_package`` and never removes the folder. Remote runners (Dataflow, Flink, Spark) ship
that package to their workers; the DirectRunner runs in this process (or in its children on this
machine) and never reads it. So each local run left ~50 MB per Beam component in the temp
folder, for good: 65 GB on one developer machine after two days, and a full disk stopped CI.

``run_dag_locally`` runs the pipeline with that step skipped for direct runs only; a pipeline
whose Beam options pick a remote runner still gets TFX's package, exactly as before.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List

from segbalance.components.local_runner import runs_on_this_machine


@contextlib.contextmanager
def no_worker_package_for_direct_runs() -> Iterator[None]:
    """Within this block, TFX's Beam executors build their worker package only for remote runners."""
    from tfx.utils import dependency_utils

    original = dependency_utils.make_beam_dependency_flags

    def dependency_flags(beam_pipeline_args: List[str]) -> List[str]:
        if runs_on_this_machine(beam_pipeline_args):
            return list(beam_pipeline_args)
        return original(beam_pipeline_args)

    dependency_utils.make_beam_dependency_flags = dependency_flags
    try:
        yield
    finally:
        dependency_utils.make_beam_dependency_flags = original


def run_dag_locally(pipeline) -> None:
    """``LocalDagRunner().run(pipeline)``, leaving nothing behind in the temp folder for direct Beam runs."""
    from tfx import v1 as tfx

    with no_worker_package_for_direct_runs():
        tfx.orchestration.LocalDagRunner().run(pipeline)
