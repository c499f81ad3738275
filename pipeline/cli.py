"""`segbalance` command line: one sub-command per module, registered below.

Each command module exposes ``add_parser(subparsers)``, which adds its parser and sets
``func`` (called with the parsed args, returns the exit code). Modules are imported only
when listed here; heavy imports (TensorFlow, Beam, TFX) happen inside the commands, so
``segbalance --help`` is fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# (module path) in the order they appear in --help.
COMMAND_MODULES = [
    "segbalance.pipeline.sample_data",
    "segbalance.pipeline.ingest",
    "segbalance.pipeline.stats",
    "segbalance.pipeline.run",
    "segbalance.pipeline.report",
    "segbalance.pipeline.experiment",
    "segbalance.kubeflow.compile_cmd",
    "segbalance.kubeflow.schedule",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segbalance",
        description="Semantic segmentation on imbalanced and partially annotated data, as a TFX pipeline.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
