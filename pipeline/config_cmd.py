"""`segbalance config show [--config FILE]` / `segbalance config validate FILE`.

``show`` prints the effective configuration of a run as YAML: every field of every section
(``pipeline/config.py``), the defaults filled in, a config file's values applied. Save it,
edit it, and pass it back with ``--config``. ``validate`` checks a file without running
anything: unknown fields, wrong types and bad values (``training.image_size`` that the
model cannot divide, duplicate class names, an unknown loss term, ...) and, as ``run`` does, the
class names against a ``classes.json`` in ``data.dir`` (a config that leaves ``classes.names``
at its default takes the data's; other names are an error). A bad file exits
with code 2 and one line on stderr that names the field; neither command imports
TensorFlow or TFX. A ``training.backbone_weights`` or ``training.pixel_weights.model`` file that is
not on this machine is a note (``run`` refuses it; a pipeline compiled for a cluster reads it there).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segbalance.trainer.remote_files import is_remote

PROG = "segbalance config"


def effective_yaml(config) -> str:
    import yaml

    from segbalance.trainer.typed_config import to_dict

    return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=False, allow_unicode=True)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "config", help="show the effective configuration, or validate a config file",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION")
    show = actions.add_parser("show", help="print the effective configuration (YAML)")
    show.add_argument("--config", metavar="FILE", help="YAML/JSON config applied over the defaults")
    check = actions.add_parser("validate", help="check a config file (exit 2 and the field on an error)")
    check.add_argument("file", metavar="FILE")
    parser.set_defaults(func=_main, config_parser=parser)


def _main(args) -> int:
    from segbalance.pipeline.config import ConfigError, load_config
    from segbalance.pipeline.run import adopt_class_names, data_class_names
    from segbalance.pipeline.sample_data import sample_class_names
    from segbalance.trainer.training_config import pixel_weights_file_problem, weights_file_problem

    action = getattr(args, "config_action", None)
    if action is None:
        args.config_parser.print_help(sys.stderr)
        return 2
    path = args.config if action == "show" else args.file
    try:
        notes: list = []
        # a local run's: data.sample names the classes; names unlike the sample's are a note (the file may be for
        # --data, compile-kfp or schedule: QA 65)
        config = load_config(path, notes, sample_class_names, sample_check="note")
        found = data_class_names(config)  # what a run does: the data's classes.json names the classes
        if found is not None:
            adopt_class_names(config, *found, announce=False)
        if config.data.dir and not is_remote(config.data.dir):  # the spans' ingest reports, as `run` checks them
            from segbalance.pipeline.span_records import SpanRecordError, check_declared_classes

            try:
                check_declared_classes(Path(config.data.dir).resolve(), config)
            except SpanRecordError as exc:
                if action == "validate":
                    raise ConfigError(str(exc)) from None
                notes.append(f"`segbalance run` refuses this data: {exc}")  # `show` still shows the config
        missing = [problem for problem in (
            weights_file_problem(config.training.backbone, config.training.backbone_weights),
            pixel_weights_file_problem(config.training.pixel_weights)) if problem]
        for problem in missing if action == "validate" else ():  # `run` here refuses it; a cluster reads it there
            notes.append(f"{problem} (not on this machine: `segbalance run` here refuses it; a pipeline compiled "
                         f"for a cluster reads it there)")
    except ConfigError as exc:
        from segbalance.pipeline.cli import error_line

        message = " ".join(str(exc).split())
        return error_line(f"{PROG} {action}", message + (f" (in {path})" if path and str(path) not in message else ""),
                          args)
    for note in notes:  # stderr: `config show` output stays YAML
        print(f"{PROG} {action}: note: {note}", file=sys.stderr)
    if action == "show":
        sys.stdout.write(effective_yaml(config))
    else:
        origin = f" from {found[1]}" if found is not None and config.classes.names == found[0] else ""
        print(f"{path}: valid ({config.num_classes} classes{origin}, {config.training.epochs} epochs, "
              f"{len(config.training.loss.terms)} loss term(s))")
    return 0
