"""Local multi-process runs of the ClassStats job start their workers with segbalance.components.beam_worker."""
import json
import os
import subprocess
import sys

import apache_beam as beam
import pytest

from segbalance.components import beam_worker, local_runner


def test_only_the_local_multi_process_mode_gets_the_light_runner():
    light = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    assert local_runner.light_workers_apply(light)
    assert local_runner.light_workers_apply(["--runner=DirectRunner", *light])
    assert local_runner.light_workers_apply(["--runner", "direct", *light])  # Beam's alias, any case
    assert isinstance(local_runner.make_pipeline(light).runner, local_runner.LightWorkerRunner)
    for args in (["--direct_running_mode=in_memory", "--direct_num_workers=1"],
                 ["--direct_running_mode=multi_threading", "--direct_num_workers=2"],
                 ["--runner=PortableRunner", "--job_endpoint=localhost:1", *light],
                 ["--runner=BundleBasedDirectRunner", *light], []):
        assert not local_runner.light_workers_apply(args), args
        assert not isinstance(local_runner.make_pipeline(args).runner, local_runner.LightWorkerRunner), args


class _WhereAmI(beam.DoFn):
    def process(self, element):
        import sys as worker_sys

        from apache_beam.io.filesystems import FileSystems

        yield json.dumps({"pid": os.getpid(), "argv": worker_sys.argv,
                          "blocked": {m: m in worker_sys.modules and worker_sys.modules[m] is None
                                      for m in beam_worker.UNUSED_MODULES},
                          "gcs": type(FileSystems.get_filesystem("gs://bucket/x")).__name__})


@pytest.mark.slow  # starts a Beam worker process (~5 s)
def test_workers_run_the_light_entry_point_and_keep_file_systems(tmp_path):
    with local_runner.make_pipeline(["--direct_running_mode=multi_processing", "--direct_num_workers=1"]) as p:
        _ = (p | beam.Create([0]) | beam.ParDo(_WhereAmI())
             | beam.io.WriteToText(str(tmp_path / "where"), shard_name_template=""))
    seen = json.loads((tmp_path / "where").read_text())
    assert seen["pid"] != os.getpid()  # ran in a worker process
    assert seen["argv"][0].endswith(os.path.join("components", "beam_worker.py")), seen["argv"]
    assert all(seen["blocked"].values()), seen["blocked"]  # the unused clients never loaded there
    assert seen["gcs"] == "GCSFileSystem"  # file systems untouched


def test_the_entry_point_keeps_the_unused_modules_out_of_a_fresh_interpreter():
    """What a light worker imports (Beam's worker main, the job's module and decoder) loads none of them."""
    script = ("import sys\nfrom segbalance.components.beam_worker import UNUSED_MODULES, keep_out_unused_modules\n"
              "keep_out_unused_modules()\nimport apache_beam.runners.worker.sdk_worker_main\n"
              "from segbalance.components import class_stats_beam\nclass_stats_beam.RecordDecoder()\n"
              "print(sorted(m for m in sys.modules if sys.modules[m] is not None and any("
              "m == u or m.startswith(u + '.') for u in UNUSED_MODULES)))")
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    # and without the entry point they do load (so the check above can fail)
    plain = subprocess.run([sys.executable, "-W", "ignore", "-c", "import sys, apache_beam; print("
                            "sorted(u for u in " + repr(beam_worker.UNUSED_MODULES) + " if u in sys.modules))"],
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert "pandas" in plain.stdout and "google.cloud.bigquery" in plain.stdout


def test_the_tfx_executor_uses_the_light_runner_for_local_multi_process_runs():
    from tfx.dsl.components.base import base_beam_executor

    from segbalance.components.class_stats_gen import ClassStatsGenExecutor
    from segbalance.pipeline.local_dag import no_worker_package_for_direct_runs

    def executor(args, make=None):
        with no_worker_package_for_direct_runs():  # as run_dag_locally runs it (TFX leaves 50 MB in /tmp otherwise)
            return ClassStatsGenExecutor(base_beam_executor.BaseBeamExecutor.Context(
                beam_pipeline_args=args, make_beam_pipeline_fn=make))

    multi = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    assert isinstance(executor(multi)._pipeline().runner, local_runner.LightWorkerRunner)
    in_memory = executor(["--direct_running_mode=in_memory", "--direct_num_workers=1"])._pipeline()
    assert not isinstance(in_memory.runner, local_runner.LightWorkerRunner)
    own = beam.Pipeline()
    assert executor(multi, make=lambda: own)._pipeline() is own  # a pipeline factory given to TFX wins
