"""A latest-artifact resolver strategy that resolves what it finds, nothing included.

TFX's ``LatestArtifactStrategy`` returns None when any of its channels has no artifact yet (a
first run); the local orchestrator then raises ``InputResolutionError`` and records the
resolver's execution in ML Metadata as FAILED, with a traceback in the log, although nothing
went wrong. ``LatestEachStrategy`` resolves each channel on its own (the latest artifact, or
none), so a first run's resolver execution is COMPLETE with no output and the gate that reads
it says "first run". Each channel resolving on its own is also what Kubeflow does with the
compiled pipeline (one metadata query per output), so local and Kubeflow runs resolve the same.

Kubeflow's compiler only accepts TFX's own class (it turns it into those queries), so the
Kubeflow DAG keeps ``LatestArtifactStrategy`` (``dag.create_pipeline(for_kubeflow=True)``).
"""
from __future__ import annotations

from typing import Dict, List

from tfx import types
from tfx.dsl.input_resolution.strategies.latest_artifact_strategy import LatestArtifactStrategy


class LatestEachStrategy(LatestArtifactStrategy):
    """The latest artifact of each channel (highest id), an empty list where there is none."""

    def resolve_artifacts(self, store, input_dict: Dict[str, List[types.Artifact]]) -> Dict[str, List[types.Artifact]]:
        return self._resolve(input_dict)
