"""A / B timing of ``run_fn`` between two checkouts, interleaved in one session (A B A B).

    .venv/bin/python benchmarks/run_fn_ab.py prepare WORK
    SEG_ROOT=/path/to/checkout .venv/bin/python benchmarks/run_fn_ab.py time WORK   # per checkout, alternated

``prepare`` runs the tests' tiny pipeline (``tests/trainer_inputs.run_tiny_pipeline``) once into
``WORK`` and records its artifact URIs; ``time`` trains ``run_fn`` three times on them (2 epochs,
seeds 0-2, ``{**CONFIG, "epochs": 2, "steps_per_epoch": None}``) in a fresh process and prints the
seconds of each. ``SEG_ROOT`` picks the checkout whose ``tests`` helpers are imported; the
``segbalance`` package is whatever the interpreter imports (an editable install of that checkout, or
its ``PYTHONPATH``). Run the two checkouts alternately, twice each, on an otherwise quiet machine,
and compare within a round: the host's speed drifts between rounds (docs/benchmarks.md, session 22).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time


def main(argv) -> int:
    if len(argv) != 2 or argv[0] not in ("prepare", "time"):
        print(__doc__, file=sys.stderr)
        return 2
    action, work = argv[0], os.path.abspath(argv[1])
    sys.path.insert(0, os.environ.get("SEG_ROOT", os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from tests import trainer_inputs

    uris_file = os.path.join(work, "uris.json")
    if action == "prepare":
        os.makedirs(work, exist_ok=True)
        uris = trainer_inputs.run_tiny_pipeline(os.path.join(work, "tiny"))
        with open(uris_file, "w") as f:
            json.dump(uris, f)
        return 0
    from segbalance.trainer import task

    with open(uris_file) as f:
        uris = json.load(f)
    times = []
    for seed in range(3):
        config = {**trainer_inputs.CONFIG, "epochs": 2, "steps_per_epoch": None, "seed": seed}
        args = trainer_inputs.fn_args_for(uris, tempfile.mkdtemp(dir=work), config)
        started = time.perf_counter()
        task.run_fn(args)
        times.append(round(time.perf_counter() - started, 2))
    print("run_fn seconds", times, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
