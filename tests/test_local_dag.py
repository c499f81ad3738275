"""run_dag_locally: TFX's worker package is built for remote Beam runners only, never left in /tmp."""
import tempfile

import pytest

from segbalance.pipeline.config import KUBEFLOW_BEAM_ARGS, LOCAL_BEAM_ARGS
from segbalance.pipeline.local_dag import no_worker_package_for_direct_runs, run_dag_locally, runs_on_this_machine


@pytest.mark.parametrize("args, local", [
    ([], True),
    (list(LOCAL_BEAM_ARGS), True),
    (list(KUBEFLOW_BEAM_ARGS), True),
    (["--runner=DirectRunner"], True),
    (["--runner", "direct", "--direct_num_workers=2"], True),
    (["--runner=DataflowRunner", "--project=p", "--region=europe-west1"], False),
    (["--runner=FlinkRunner"], False),
    (["--runner=PortableRunner", "--job_endpoint=localhost:8099"], False),
])
def test_runs_on_this_machine_reads_the_runner_option(args, local):
    assert runs_on_this_machine(args) is local


def test_only_remote_runs_get_tfx_package_and_the_patch_is_undone(monkeypatch):
    from tfx.utils import dependency_utils

    built = []
    monkeypatch.setattr(dependency_utils, "build_ephemeral_package",
                        lambda: built.append(1) or "/pkg/tfx_ephemeral-1.16.0.tar.gz")
    original = dependency_utils.make_beam_dependency_flags
    dataflow = ["--runner=DataflowRunner", "--project=p"]
    with no_worker_package_for_direct_runs():
        assert dependency_utils.make_beam_dependency_flags(list(LOCAL_BEAM_ARGS)) == list(LOCAL_BEAM_ARGS)
        assert not built
        assert dependency_utils.make_beam_dependency_flags(dataflow) == \
            dataflow + ["--extra_package=/pkg/tfx_ephemeral-1.16.0.tar.gz"]
        assert built == [1]
        # a user's own package is TFX's business, as before
        assert dependency_utils.make_beam_dependency_flags(dataflow + ["--setup_file=setup.py"]) == \
            dataflow + ["--setup_file=setup.py"]
    assert dependency_utils.make_beam_dependency_flags is original
    with pytest.raises(RuntimeError):
        with no_worker_package_for_direct_runs():
            raise RuntimeError("a component failed")
    assert dependency_utils.make_beam_dependency_flags is original


def _example_gen_pipeline(root):
    """ImportExampleGen (a TFX Beam executor) on four tiny records."""
    import tensorflow as tf
    from tfx import v1 as tfx

    (root / "data").mkdir(parents=True)
    with tf.io.TFRecordWriter(str(root / "data" / "data.tfrecord")) as writer:
        for i in range(4):
            feature = {"id": tf.train.Feature(int64_list=tf.train.Int64List(value=[i]))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return tfx.dsl.Pipeline(
        pipeline_name="local-dag", pipeline_root=str(root / "pipeline_root"),
        components=[tfx.components.ImportExampleGen(input_base=str(root / "data"))],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(root / "metadata.sqlite")),
        beam_pipeline_args=list(LOCAL_BEAM_ARGS))


@pytest.mark.slow
def test_a_local_run_leaves_no_tfx_package_in_the_temp_folder(tmp_path, monkeypatch):
    from tfx import v1 as tfx

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    # TFX 1.16 on its own: a copy of itself (~50 MB) per Beam component, never removed
    tfx.orchestration.LocalDagRunner().run(_example_gen_pipeline(tmp_path / "plain"))
    assert len(list(temp.glob("*/build/tfx/dist/tfx_ephemeral-*"))) == 1
    before = set(temp.iterdir())
    run_dag_locally(_example_gen_pipeline(tmp_path / "ours"))
    assert not [p for p in temp.iterdir() if p not in before and (p / "build").exists()]
    assert list((tmp_path / "ours" / "pipeline_root" / "ImportExampleGen" / "examples").glob("*/Split-train/*"))


def test_the_local_class_stats_resolver_resolves_each_channel_and_kubeflow_keeps_tfx_s_strategy(tmp_path):
    """TFX's LatestArtifactStrategy returns None when one channel is empty (a first run): the local
    orchestrator then records the resolver's execution as FAILED in ML Metadata, with a traceback. The
    local DAG's strategy resolves each channel on its own, as Kubeflow's metadata queries do; Kubeflow's
    compiler takes TFX's class only, so its DAG keeps it."""
    from tfx import v1 as tfx
    from tfx.dsl.input_resolution.strategies.latest_artifact_strategy import LatestArtifactStrategy

    from segbalance.components.artifacts import ClassStats, DriftReport
    from segbalance.components.latest_artifacts import LatestEachStrategy
    from segbalance.pipeline.config import config_from_dict
    from segbalance.pipeline.dag import create_pipeline

    def artifact(cls, artifact_id):
        made = cls()
        made.id = artifact_id
        return made

    older, newer = artifact(ClassStats, 4), artifact(ClassStats, 9)
    inputs = {"class_stats": [older, newer], "drift_report": []}
    assert LatestArtifactStrategy().resolve_artifacts(None, inputs) is None  # what failed the first run
    resolved = LatestEachStrategy().resolve_artifacts(None, inputs)
    assert resolved == {"class_stats": [newer], "drift_report": []}
    assert LatestEachStrategy().resolve_artifacts(None, {"class_stats": [], "drift_report": []}) == \
        {"class_stats": [], "drift_report": []}
    report = artifact(DriftReport, 10)
    assert LatestEachStrategy().resolve_artifacts(None, {"class_stats": [newer, older], "drift_report": [report]}) \
        == {"class_stats": [newer], "drift_report": [report]}

    config = config_from_dict({"classes": {"names": ["background", "a"]}})
    for for_kubeflow, strategy in ((False, LatestEachStrategy), (True, LatestArtifactStrategy)):
        pipeline = create_pipeline(config, str(tmp_path / "data"), str(tmp_path / "root"), str(tmp_path / "serving"),
                                   for_kubeflow=for_kubeflow)
        resolver, = [node for node in pipeline.components if node.id == "latest_class_stats_resolver"]
        assert isinstance(resolver, tfx.dsl.Resolver)
        assert resolver._strategy_class is strategy, for_kubeflow  # (TFX keeps it in no public attribute)


def test_every_drift_field_reaches_the_local_gate(tmp_path):
    """The drift section's every field, set off its default, is an execution property of the local DAG's
    ClassDistributionValidator (the Kubeflow spec: test_kubeflow_compile)."""
    import dataclasses

    from segbalance.pipeline.config import DriftConfig, config_from_dict
    from segbalance.pipeline.dag import create_pipeline

    values = {"js_divergence": 0.07, "max_abs_change": 0.15, "missing_rate_change": 0.3, "vanished_class_chance": 0.002,
              "significance": 0.02, "action": "warn", "new_class_chance": 0.003, "baseline_min_share": 0.25}
    assert set(values) == {f.name for f in dataclasses.fields(DriftConfig)}
    assert all(values[k] != v for k, v in dataclasses.asdict(DriftConfig()).items())
    config = config_from_dict({"classes": {"names": ["background", "a"]}, "drift": values})
    pipeline = create_pipeline(config, str(tmp_path / "data"), str(tmp_path / "root"), str(tmp_path / "serving"))
    gate, = [node for node in pipeline.components if node.id == "ClassDistributionValidator"]
    assert {k: gate.exec_properties[k] for k in values} == values
