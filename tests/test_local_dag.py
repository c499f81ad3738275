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
