"""A local Beam job service and an external SDK worker pool, each in its own process.

This is the portability framework that Flink, Spark and Dataflow Runner v2 drive: the
pipeline is submitted as a Runner API proto over gRPC to a job service, which asks a worker
pool (here `apache_beam.runners.worker.worker_pool_main`) for SDK harness processes and
talks to them over the Fn API (data, state, side inputs, tagged outputs).
"""
import contextlib
import os
import socket
import subprocess
import sys
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, log_path: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Beam service exited with {proc.returncode}; see {log_path}")
        with socket.socket() as s:
            if s.connect_ex(("localhost", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"Beam service did not listen on port {port} within {timeout} s; see {log_path}")


@contextlib.contextmanager
def portable_beam_args(log_dir):
    """Start a job service and a worker pool; yield the Beam args that use them."""
    env = dict(os.environ)
    # the worker pool starts SDK harnesses as `python -c ...`: this interpreter must be that python
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    job_port, pool_port = _free_port(), _free_port()
    commands = {
        "job_service": [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                        "--port", str(job_port)],
        "worker_pool": [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                        "--service_port", str(pool_port)],
    }
    procs = []
    try:
        for name, port in (("job_service", job_port), ("worker_pool", pool_port)):
            log_path = os.path.join(str(log_dir), f"{name}.log")
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(commands[name], env=env, stdout=log, stderr=subprocess.STDOUT)
            procs.append(proc)
            _wait_for_port(port, proc, log_path)
        yield ["--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
               "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}"]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
