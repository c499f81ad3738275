"""Test-session set-up shared by every test module.

- Quiet TensorFlow logs.
- Split the host CPU into 2 logical devices before TensorFlow initialises, so tests can
  run `tf.distribute.MirroredStrategy` on ["/cpu:0", "/cpu:1"] without a GPU. Code that
  does not ask for a strategy keeps using /cpu:0 as usual.
- Beam runs in memory with one worker unless a test asks otherwise.
- Test files with slow tests run first (``make test`` spreads whole files over two worker
  processes: a long file started last would leave the other worker idle at the end).
- The session fails if it leaves a TFX worker package (~50 MB each, never removed by TFX) in
  the temp folder: a local run goes through ``run_dag_locally`` (a full /tmp once failed CI).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("UNSUPPORTED_DO_NOT_PACKAGE_USER_MODULES", "1")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
if _cpus and not tf.config.get_logical_device_configuration(_cpus[0]):
    try:
        tf.config.set_logical_device_configuration(
            _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
        )
    except RuntimeError:  # TF already initialised by a plugin; tests needing 2 devices skip
        pass

BEAM_TEST_ARGS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def mirrored_strategy():
    """One MirroredStrategy over /cpu:0 and /cpu:1 for the whole session.

    Collective instance keys restart with every new strategy object, so several strategies
    in one process can collide ("Shape mismatch in the collective instance"): share this one.
    """
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < 2:
        pytest.skip("needs 2 logical CPU devices")
    return tf.distribute.MirroredStrategy([d.name for d in devices[:2]])


def _tfx_packages() -> set:
    import glob
    import tempfile

    return set(glob.glob(os.path.join(tempfile.gettempdir(), "*", "build", "tfx")))


@pytest.fixture(scope="session", autouse=True)
def no_tfx_package_left_in_temp():
    before = _tfx_packages()
    yield
    left = sorted(_tfx_packages() - before)
    assert not left, (f"{len(left)} TFX worker package(s) left in the temp folder, e.g. {left[0]}: run local "
                      f"pipelines with segbalance.pipeline.local_dag.run_dag_locally")


def pytest_collection_modifyitems(session, config, items):
    """Files that hold a test marked ``slow`` first, each file's tests in their own order (stable sort)."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
