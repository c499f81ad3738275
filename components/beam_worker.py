"""``python -m segbalance.components.beam_worker``: a Beam SDK worker process without unused cloud clients.

Beam's DirectRunner with ``--direct_running_mode=multi_processing`` starts each worker process
with ``python -m apache_beam.runners.worker.sdk_worker_main``. Its ``import apache_beam`` loads
every optional IO whose client library is installed, and ``apache-beam[gcp]`` (a TFX
requirement) installs the BigQuery, BigQuery Storage and Pub/Sub clients: about half of a
worker's start-up (docs/benchmarks.md). The ClassStats job reads and writes files only, so its
local multi-process runs (``components/local_runner.py``) start their workers with this module:
it marks the modules in ``UNUSED_MODULES`` as not installed (``sys.modules[name] = None``, which
Beam's ``apache_beam.io`` treats like a missing optional dependency) and then runs Beam's own
worker main. File systems (local, GCS, S3) are left alone. When the harness returns (the runner
closed it after the last bundle) the process exits at once, without the interpreter's teardown.

This module imports nothing of Beam before that, so it must stay free of module-level imports
beyond the standard library.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import List, Optional

# What ``import apache_beam`` loads when installed and the ClassStats job never uses: Beam's BigQuery
# and Pub/Sub IO, the notebook widgets that tqdm's notebook bar imports (through BigQuery), and pandas
# (Beam's optional DataFrame type support; the job's Parquet rows go through pyarrow alone).
UNUSED_MODULES = ("google.cloud.bigquery", "google.cloud.bigquery_storage_v1", "google.cloud.pubsub",
                  "google.pubsub_v1", "ipywidgets", "pandas")


def keep_out_unused_modules() -> None:
    """Make ``import`` of each module in ``UNUSED_MODULES`` raise ImportError (unless already imported)."""
    for name in UNUSED_MODULES:
        sys.modules.setdefault(name, None)


def main(argv: Optional[List[str]] = None) -> None:
    keep_out_unused_modules()
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main(list(sys.argv if argv is None else argv))
    # The harness has returned: the runner closed its control stream after the last bundle, whose
    # outputs are written, and the log handler is closed. Skip the interpreter's teardown (about 0.2 s
    # with gRPC and Beam loaded), which the runner waits for worker by worker when it closes them.
    # An exception above exits the normal way (traceback, non-zero code).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
