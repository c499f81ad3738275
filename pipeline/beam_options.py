"""Beam options a user gives (``beam_args`` in the config, ``segbalance stats --beam-args``), checked
before anything runs.

Beam drops a flag it does not know with a log line only ("Discarding unparseable args", in the run's
log file), so a typo such as ``--direct_num_worker=2`` ran with the default unseen; a runner name
Beam does not know, or a value its option does not take, failed when the first Beam component
started, with Beam's traceback. Only the direct runner's unknown flags are refused: a portable or
Dataflow runner hands the flags it does not know to its job server or service, which may read them.
"""
from __future__ import annotations

import contextlib
import difflib
import io
from typing import Optional, Sequence


def _runner_names() -> set:
    from apache_beam.options.pipeline_options import StandardOptions

    return {path.rsplit(".", 1)[-1].lower() for path in StandardOptions.ALL_KNOWN_RUNNERS}


def beam_args_problem(args: Sequence[str]) -> Optional[str]:
    """What makes ``args`` unusable for Beam (one sentence naming the flag), or None."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, _BeamArgumentParser

    not_text = [a for a in args if not isinstance(a, str)]
    if not_text:
        return f"{not_text[0]!r} is not text: give each option as a string, e.g. '--direct_num_workers=2'"
    # as Beam parses them (a unique prefix of a flag is that flag), but --help is no help here: Beam printed its
    # help and exited (QA 59)
    parser = _BeamArgumentParser(add_help=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)  # noqa: SLF001 (Beam's own way to collect every option)
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            known, unknown = parser.parse_known_args(list(args))
    except SystemExit:  # argparse's error: a value the option does not take
        lines = errors.getvalue().strip().splitlines()
        return lines[-1].split("error: ", 1)[-1] if lines else f"Beam cannot parse {' '.join(args)}"
    runner = known.runner
    names = _runner_names()
    if runner and "." not in runner and runner.lower() not in names and runner.lower() + "runner" not in names:
        return (f"--runner={runner} is not a Beam runner: use one of {', '.join(StandardOptions.KNOWN_RUNNER_NAMES)}, "
                f"or the full name of a PipelineRunner class")
    # a direct runner by name or by class path (QA 59: ...direct_runner.DirectRunner skipped the check)
    direct = runner is None or "direct" in runner.rsplit(".", 1)[-1].lower()
    if unknown and direct:
        first = unknown[0]
        name = first.split("=", 1)[0]
        options = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
        close = difflib.get_close_matches(name, options, n=1, cutoff=0.8)
        hint = f": did you mean {close[0]}?" if close else (
            ": write options as --name=value" if not name.startswith("-") else "")
        return (f"{first!r} is not an option of Beam's direct runner, which would drop it unread{hint}"
                f"{'' if len(unknown) == 1 else f' ({len(unknown)} such arguments: ' + ' '.join(unknown) + ')'}")
    return None
