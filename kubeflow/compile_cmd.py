"""`segbalance compile-kfp --output pipeline.yaml [--image IMAGE] [--pipeline-root URI] [--config FILE]`.

Compiles the pipeline (the same ``create_pipeline`` as ``segbalance run``, with the drift
gate). ``--output NAME.yaml`` (or ``.yml``) writes the Kubeflow Pipelines v2 package that
``kfp.Client`` submits and ``segbalance schedule --kfp-host`` makes recurring; any other name
(``pipeline.json``) writes the Vertex AI PipelineJob JSON (``aiplatform.PipelineJob``). Relative
local paths in the config are made absolute (printed). See README, "Deploy to Kubeflow".
"""
from __future__ import annotations

import argparse
import os

DEFAULT_IMAGE_ENV = "SEGBALANCE_IMAGE"
DEFAULT_PIPELINE_ROOT_ENV = "SEGBALANCE_PIPELINE_ROOT"  # as the image: one per deployment, so the shell may hold it


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compile-kfp", help="compile the pipeline for Kubeflow Pipelines v2 / Vertex AI",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, metavar="pipeline.yaml",
                        help="NAME.yaml: the KFP package (kfp.Client, schedule); NAME.json: Vertex AI PipelineJob")
    parser.add_argument("--image", default=os.environ.get(DEFAULT_IMAGE_ENV),
                        help=f"container image with this package (default: ${DEFAULT_IMAGE_ENV})")
    parser.add_argument("--pipeline-root", metavar="URI", default=os.environ.get(DEFAULT_PIPELINE_ROOT_ENV),
                        help=f"artifact root, e.g. gs://bucket/segbalance (an absolute path for a local run; "
                             f"default: ${DEFAULT_PIPELINE_ROOT_ENV})")
    parser.add_argument("--config", metavar="FILE", help="pipeline config (YAML/JSON); data.dir = the Span-N folder")
    parser.add_argument("--span", type=int, help="read this span instead of the latest")
    parser.set_defaults(func=_main)


def _main(args) -> int:
    from segbalance.pipeline.config import ConfigError, load_config
    from segbalance.kubeflow.runner import CompileError, compile_pipeline, is_compiled_pipeline
    from segbalance.pipeline.output_guard import check_output_file

    # a folder, or a file that is not a compiled pipeline, is refused before the slow compile
    check_output_file(args.output, "--output", is_compiled_pipeline, example="pipeline.yaml", read=None)
    os.environ.setdefault("UNSUPPORTED_DO_NOT_PACKAGE_USER_MODULES", "1")  # module code is in the image

    try:
        config = load_config(args.config)  # data.sample is not compiled: the config names the classes
        spec = compile_pipeline(config, args.output, args.image, args.pipeline_root, span=args.span)
    except (ConfigError, CompileError) as exc:
        from segbalance.pipeline.cli import error_line

        return error_line("segbalance compile-kfp", str(exc), args)
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    print(f"compile-kfp: wrote {args.output} ({len(tasks)} tasks, image {args.image})")
    return 0
