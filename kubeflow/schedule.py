"""`segbalance schedule --cron "0 3 * * 1"`: scheduled retraining.

With ``--kfp-host URL``: creates a recurring run of the compiled pipeline
(``--package pipeline.yaml`` from ``segbalance compile-kfp --output pipeline.yaml``) through
``kfp.Client(host=URL).create_recurring_run`` (KFP wants 6-field cron, seconds first: the
5-field expression given here gets a leading ``0``, and a day of week 7 becomes 0). Each run reads the latest span, so
new data is picked up by ``segbalance ingest --span N`` into the pipeline's data folder;
the drift gate and the evaluator's blessing decide whether the new model is pushed.

Without a host: prints the recurring-run request it would send, plus a crontab line and a
systemd service/timer pair that run ``segbalance run --data DIR`` locally on the same
schedule.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shlex
import sys
from typing import Callable, List, Optional

from segbalance.contract import UserError, message_excerpt
from segbalance.trainer.remote_files import is_remote

FIELD = re.compile(r"^(\*|\d+(-\d+)?(,\d+(-\d+)?)*)(/\d+)?$")
DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
KFP_CLIENT_SUFFIXES = (".yaml", ".yml")  # kfp.Client's package names, case-sensitive (compile-kfp takes any case)


class ScheduleError(UserError, ValueError):
    pass


def check_cron(cron: str) -> list:
    fields = cron.split()
    if len(fields) != 5:
        raise ScheduleError(f"--cron {cron!r}: give 5 fields (minute hour day-of-month month day-of-week), "
                            f"e.g. '0 3 * * 1' for Mondays at 03:00")
    for field, (lo, hi), name in zip(fields, RANGES, ["minute", "hour", "day of month", "month", "day of week"]):
        if not FIELD.match(field):
            raise ScheduleError(f"--cron {cron!r}: the {name} field {field!r} is not a number, range, list or '*'")
        for number in map(int, re.findall(r"\d+", field.split("/")[0])):
            if not lo <= number <= hi:
                raise ScheduleError(f"--cron {cron!r}: {name} {number} is outside {lo}-{hi}")
        for first, last in re.findall(r"(\d+)-(\d+)", field.split("/")[0]):
            if int(first) > int(last):
                raise ScheduleError(f"--cron {cron!r}: the {name} range {first}-{last} runs backwards; cron "
                                    f"rejects it (write {last}-{first}, or a list)")
        if "/" in field and int(field.split("/")[1]) == 0:
            raise ScheduleError(f"--cron {cron!r}: the {name} step /0 never advances; cron rejects it (use /1 or more)")
        stepped = field.split("/")[0].split(",")[-1]
        if "/" in field and stepped != "*" and "-" not in stepped:  # Debian's cron: "bad minute", the file ignored
            raise ScheduleError(f"--cron {cron!r}: the {name} field {field!r} steps from a single number, which cron "
                                f"rejects; write {stepped}-{hi}/{field.split('/')[1]} for every "
                                f"{field.split('/')[1]} from {stepped}")
    return fields


def kfp_cron(cron: str) -> str:
    """5-field cron -> the 6-field form (seconds first) that KFP expects. KFP's scheduler (robfig/cron)
    takes day of week 0-6 only: a 7 (Sunday, as crontab also writes it) becomes 0."""
    fields = check_cron(cron)
    fields[4] = kfp_day_of_week(fields[4])
    return "0 " + " ".join(fields)


def kfp_day_of_week(field: str) -> str:
    """A day-of-week field with 7 in it, as the list of days 0-6 it means ('1-7' -> '0,1,2,3,4,5,6');
    without a 7, unchanged."""
    if "7" not in re.findall(r"\d+", field.partition("/")[0]):
        return field
    return ",".join(str(d) for d in sorted({d % 7 for d in cron_values(field, *RANGES[4])}))


def cron_values(field: str, lo: int, hi: int) -> List[int]:
    """The numbers a cron field (checked by ``check_cron``: a step follows '*' or a range) matches, in ``lo..hi``.
    A step binds to the last element of a list ('1-10,20-30/5': 1 to 10, 20, 25, 30)."""
    base, _, step = field.partition("/")
    parts, values = base.split(","), set()
    for i, part in enumerate(parts):
        every = int(step) if step and i == len(parts) - 1 else 1
        first, _, last = (f"{lo}-{hi}" if part == "*" else part).partition("-")
        values.update(range(int(first), int(last or first) + 1, every))
    return sorted(values)


def systemd_on_calendar(cron: str) -> List[str]:
    """The timer's ``OnCalendar=`` values for a cron expression (a timer fires on any of them): each field
    as the list of numbers it matches (systemd has no cron steps; its own ranges and lists read alike), days
    of week by name. Cron (Vixie's, Debian's) runs on a day that matches the day of month **or** the day of
    week when both fields are restricted (neither starts with '*'), and one calendar event needs both: such
    an expression gives two events, one per field."""
    fields = check_cron(cron)

    def listed(index: int, width: int = 1) -> str:
        values = cron_values(fields[index], *RANGES[index])
        whole = set(range(RANGES[index][0], RANGES[index][1] + 1))
        return "*" if fields[index] == "*" or set(values) >= whole else ",".join(str(v).zfill(width) for v in values)

    minute, hour, dom, month = listed(0, 2), listed(1, 2), listed(2), listed(3)
    days = list(dict.fromkeys(DAYS[d % 7] for d in cron_values(fields[4], *RANGES[4])))
    days_of_week = "" if len(days) == 7 else ",".join(days) + " "
    time_of_day = f"{hour}:{minute}:00"
    if not fields[2].startswith("*") and not fields[4].startswith("*"):
        return [f"*-{month}-{dom} {time_of_day}", f"{days_of_week}*-{month}-* {time_of_day}"]
    return [f"{days_of_week}*-{month}-{dom} {time_of_day}"]


def crontab_command(command: str) -> str:
    """``command`` as a crontab line's command: cron ends the command at an unescaped ``%`` (the rest
    becomes its standard input), so a ``%`` in a path is written ``\\%``."""
    return command.replace("%", "\\%")


def systemd_exec_arg(arg: str) -> str:
    """``arg`` as one literal argument of an ``Exec*=`` line: double-quoted with ``\\`` and ``"`` escaped
    (systemd's C-style escapes), ``%`` (its specifiers) and ``$`` (its environment variables) doubled."""
    quoted = '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return quoted.replace("%", "%%").replace("$", "$$")


def recurring_run_request(package: str, cron: str, experiment_id: str, job_name: str,
                          pipeline_root: Optional[str] = None) -> dict:
    request = {"experiment_id": experiment_id, "job_name": job_name, "cron_expression": kfp_cron(cron),
               "pipeline_package_path": package, "max_concurrency": 1, "no_catchup": True, "enabled": True,
               "description": "segbalance scheduled retraining (latest span, drift gate, blessing)"}
    if pipeline_root:
        request["pipeline_root"] = pipeline_root
    return request


def check_package(package: str) -> None:
    """``--package`` must be the KFP package that ``segbalance compile-kfp --output NAME.yaml`` writes:
    kfp.Client refuses other names, and the PipelineJob JSON (for Vertex AI) is not a PipelineSpec."""
    from segbalance.kubeflow.runner import is_kfp_package

    stem, suffix = os.path.splitext(package)
    yaml_name = package if is_kfp_package(package) else stem + ".yaml"
    if not os.path.isfile(package):
        raise ScheduleError(f"--package {package} does not exist or is not a file: run `segbalance compile-kfp "
                            f"--output {yaml_name}`")
    if not is_kfp_package(package):
        what = "a .json file is the Vertex AI PipelineJob" if suffix.lower() == ".json" else ".yaml or .yml"
        raise ScheduleError(f"--package {package}: Kubeflow Pipelines takes the YAML package ({what}): run "
                            f"`segbalance compile-kfp --output {yaml_name}` with the same options and give that")
    if not package.endswith(KFP_CLIENT_SUFFIXES):
        raise ScheduleError(f"--package {package}: kfp.Client reads only names ending in "
                            f"{' or '.join(KFP_CLIENT_SUFFIXES)} (lower case): rename it to {stem + '.yaml'}")
    import yaml

    try:
        with open(package, encoding="utf-8") as f:
            spec = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ScheduleError(f"--package {package} is not YAML ({' '.join(str(exc).split())[:120]}): give the file "
                            f"`segbalance compile-kfp --output {package}` writes") from None
    if not isinstance(spec, dict) or not {"pipelineInfo", "root", "deploymentSpec"} <= set(spec):
        raise ScheduleError(f"--package {package} is not a compiled pipeline (no pipelineInfo / root / "
                            f"deploymentSpec): give the file `segbalance compile-kfp --output {package}` writes")


def create_recurring_run(client, package: str, cron: str, experiment: str, job_name: str,
                         pipeline_root: Optional[str] = None):
    """Through a ``kfp.Client``-like object: get or create the experiment, then the recurring run."""
    check_package(package)
    try:
        found = client.get_experiment(experiment_name=experiment)
    except Exception:  # kfp raises when the experiment does not exist
        found = client.create_experiment(name=experiment)
    experiment_id = getattr(found, "experiment_id", None) or getattr(found, "id")
    return client.create_recurring_run(**recurring_run_request(package, cron, experiment_id, job_name, pipeline_root))


def local_schedule(cron: str, data_dir: str, output_dir: str, workdir: str, config: Optional[str] = None) -> str:
    """A crontab line and a systemd service + timer running ``segbalance run`` in ``workdir``, with
    ``--config config`` (absolute) when given: every scheduled run trains with the same options."""
    with_config = f" --config {shlex.quote(os.path.abspath(config))}" if config else ""
    # this installation's own command, absolute: cron and systemd start in another folder and PATH
    program = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "segbalance")
    command = (f"cd {shlex.quote(workdir)} && {shlex.quote(program)} run{with_config} --data {shlex.quote(data_dir)} "
               f"--output-dir {shlex.quote(output_dir)}")
    # the console output beside the run folder, by absolute path ("out/" or "." named ".log" inside it, which
    # made the folder one `run` refuses)
    log = os.path.normpath(os.path.join(workdir, output_dir)) + ".log"
    lines = [] if config else ["# no --config: each scheduled run uses the default configuration "
                               "(give --config FILE, the file of your first run)"]
    lines += ["# exit status of each run: 0 done, 2 a mistake in the config or data (one line says what), 3 the "
              "drift gate blocked the new span (run_summary.json: drift), so systemd marks that run failed; "
              "130 / 143 stopped by Ctrl-C / SIGTERM (systemctl stop): the next run resumes",
              "# crontab (crontab -e):",
              f"{' '.join(check_cron(cron))} {crontab_command(f'{command} >> {shlex.quote(log)} 2>&1')}"]
    lines += ["", "# systemd: ~/.config/systemd/user/segbalance.service", "[Unit]",
              "Description=segbalance retraining on the latest span", "[Service]", "Type=oneshot",
              f"ExecStart=/bin/sh -c {systemd_exec_arg(command)}", "",
              "# ~/.config/systemd/user/segbalance.timer (systemctl --user enable --now segbalance.timer)",
              "[Unit]", "Description=segbalance retraining schedule", "[Timer]",
              *(f"OnCalendar={calendar}" for calendar in systemd_on_calendar(cron)), "Persistent=true", "[Install]",
              "WantedBy=timers.target"]
    return "\n".join(lines)


def _reason(exc: Exception, limit: int = 200) -> str:
    return f"{type(exc).__name__}: {message_excerpt(exc, limit)}"


@contextlib.contextmanager
def kfp_logging_off():
    """No log records while kfp talks to the host (``Client`` logs every failed health check with its
    traceback, five times, before it raises): the command's one line says what failed."""
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "schedule", help="scheduled retraining: a KFP recurring run, or a local crontab/systemd timer",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cron", required=True, help="5-field cron expression, e.g. '0 3 * * 1'")
    parser.add_argument("--kfp-host", help="Kubeflow Pipelines endpoint; without it, print the definitions")
    parser.add_argument("--package", default="pipeline.yaml",
                        help="the KFP package: segbalance compile-kfp --output pipeline.yaml")
    parser.add_argument("--experiment", default="segbalance")
    parser.add_argument("--job-name", default="segbalance-retraining")
    parser.add_argument("--pipeline-root", help="override the compiled pipeline root")
    parser.add_argument("--config", metavar="FILE",
                        help="local runs: the config every scheduled run uses (checked now); a KFP recurring run "
                             "uses the config compiled into --package")
    parser.add_argument("--data", help="local runs: the Span-N folder (default: the config's data.dir, else "
                                       "OUTPUT_DIR/data)")
    parser.add_argument("--output-dir", help="local runs: the run directory (default: the config's output_dir)")
    parser.set_defaults(func=_main)


def _main(args, client_factory: Optional[Callable] = None) -> int:
    try:
        check_cron(args.cron)
        if args.kfp_host and args.config:
            raise ScheduleError("--config is for local runs: a KFP recurring run uses the config compiled into "
                                f"--package; pass it to `segbalance compile-kfp --config {args.config}`")
        if args.pipeline_root:
            from segbalance.kubeflow.runner import check_pipeline_root

            check_pipeline_root(args.pipeline_root)
        if args.kfp_host:
            check_package(args.package)  # before connecting: a wrong file is the user's to fix first
            if client_factory is None:
                import kfp

                client_factory = kfp.Client
            with kfp_logging_off():  # its retries log each failure with a traceback; the reason is in our line
                try:
                    client = client_factory(host=args.kfp_host)
                except Exception as exc:  # kfp.Client checks the host at once: urllib3/requests errors
                    raise ScheduleError(f"--kfp-host {args.kfp_host}: cannot connect to Kubeflow Pipelines "
                                        f"({_reason(exc)}); check the URL and your access") from exc
                try:
                    run = create_recurring_run(client, args.package, args.cron, args.experiment,
                                               args.job_name, args.pipeline_root)
                except UserError:
                    raise
                except Exception as exc:  # the server's answer (kfp_server_api.ApiException: 403, 404, ...)
                    raise ScheduleError(f"--kfp-host {args.kfp_host} did not create the recurring run "
                                        f"({_reason(exc)}); check your access to experiment {args.experiment!r} "
                                        f"and the package") from exc
            print(f"schedule: recurring run created on {args.kfp_host}: {getattr(run, 'recurring_run_id', run)}")
            return 0
        from segbalance.pipeline.config import load_config
        from segbalance.pipeline.sample_data import sample_class_names

        # ConfigError (exit 2) names the file and field, before any output; checked as the local run will
        config = load_config(args.config, None, sample_class_names, sample_check="off")  # its run has --data
        output_dir = args.output_dir or config.output_dir
        data = args.data or config.data.dir or os.path.join(output_dir, "data")
        # what every scheduled run would refuse is refused now (QA 69: the lines were printed for them)
        from pathlib import Path

        from segbalance.pipeline.dag import local_paths
        from segbalance.pipeline.config import spans_folder_problem
        from segbalance.pipeline.output_guard import check_is_folder, check_run_dir
        from segbalance.pipeline.run import check_output_beside_data

        option = "--output-dir" if args.output_dir else "output_dir"
        check_is_folder(Path(output_dir), option)
        if not is_remote(data):
            data_option = "--data" if args.data else "the data folder"
            check_is_folder(Path(data), data_option)
            problem = spans_folder_problem(Path(data))
            if problem:
                raise ScheduleError(f"{data_option} {data}: {problem}")
            if os.path.isdir(data):  # (QA 94 L6: an output folder in the data, or a user's: refused every night)
                check_output_beside_data(Path(output_dir), Path(data).resolve(),
                                         Path(local_paths(output_dir)["examples_dir"]), option)
        check_run_dir(Path(output_dir), option)
        request = recurring_run_request(args.package, args.cron, "<experiment id of " + args.experiment + ">",
                                        args.job_name, args.pipeline_root)
        print("# Kubeflow: kfp.Client(host=...).create_recurring_run(**request) with")
        print(json.dumps(request, indent=1))
        print()
        print(local_schedule(args.cron, data, output_dir, os.getcwd(), args.config))
        if not is_remote(data) and not os.path.isdir(data):  # it may come later (a mount, the first ingest)
            print(f"# note: {data} does not exist now: each scheduled run stops with exit 2 until it holds images/ "
                  f"and masks/ or Span-N/ folders")
        return 0
    except UserError as exc:
        from segbalance.pipeline.cli import error_line

        return error_line("segbalance schedule", str(exc), args)
