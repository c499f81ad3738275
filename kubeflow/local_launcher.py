"""Run compiled KFP v2 tasks locally, the way the KFP launcher would (our stand-in for a cluster).

For each task, in dependency order: build the ``ExecutorInput`` JSON from the compiled spec
(constant parameters, both as ``parameters`` Value messages and as ``parameterValues``;
input artifacts from the producer tasks' outputs; output artifact URIs under a local
pipeline root, created beforehand), run the task's ``lifecycle.preCacheCheck`` driver if it
has one (file-based ExampleGen: resolves the span and fingerprint) and merge its output,
then run the container command (``python -m
tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor ...``) with ``{{$}}``
replaced, and read the artifacts back from its ``outputFile``. A task whose
``triggerPolicy.condition`` is false (a ``tfx.dsl.Cond``, e.g. ``drift.action:
block_training``) is skipped, and so is every task that needs its outputs.

What it proves: the compiled JSON is complete and consistent (executor class paths import
from the installed package, parameters and artifact types round-trip through the KFP
entrypoint, artifacts flow from task to task). What it does not: that the image builds and
pulls, cluster permissions and storage (GCS) work, caching, and resolver tasks (KFP answers
their queries from its metadata store; here their outputs are passed in as ``resolved``).
"""
from __future__ import annotations

import json
import operator
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, Iterable, List, Optional

import yaml

from segbalance.contract import UserError
from segbalance.pipeline.config import LOCAL_BEAM_ARGS

PROG = "python -m segbalance.kubeflow.local_launcher"


class LauncherError(UserError, ValueError):
    """A request the compiled pipeline cannot satisfy (unknown task, missing dependency, a resolver
    task, an unreadable spec file): one line from the command line, exit code 2."""


class TaskFailed(RuntimeError):
    """A task's command exited non-zero; ``log_path`` holds its whole output."""

    def __init__(self, task: str, returncode: int, log_path: str, tail: str):
        last = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
        super().__init__(f"task {task} failed (exit code {returncode}): see {log_path}\n{tail}")
        self.task, self.returncode, self.log_path, self.last_line = task, returncode, log_path, last.strip()


def _schema_title(definition: dict) -> str:
    artifact_type = definition["artifactType"]
    if "schemaTitle" in artifact_type:
        return artifact_type["schemaTitle"]
    return yaml.safe_load(artifact_type["instanceSchema"])["title"]


def _plain(value: dict):
    """A compiled constant Value message -> a plain JSON value."""
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    return value


def _as_value_message(value) -> dict:
    if isinstance(value, bool):
        return {"intValue": str(int(value))}
    if isinstance(value, (int, float)) and float(value).is_integer():
        return {"intValue": str(int(value))}
    if isinstance(value, float):
        return {"doubleValue": value}
    return {"stringValue": str(value)}


# The form TFX compiles ``tfx.dsl.Cond(channel.future()[0].custom_property(P) OP V)`` into.
_CONDITION = re.compile(r"""^\(?\s*inputs\.artifacts\['(?P<key>[^']+)'\]\.artifacts\[0\]\.metadata\['(?P<prop>[^']+)'\]"""
                        r"""\s*(?P<op>==|!=|<=|>=|<|>)\s*(?P<value>-?[0-9.]+|'[^']*'|"[^"]*")\s*\)?$""")
_OPERATORS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
              ">=": operator.ge}


def condition_holds(condition: str, artifacts: Dict[str, dict]) -> bool:
    """Evaluate a compiled ``triggerPolicy.condition`` against the task's input artifacts
    ({input key: artifact JSON}); only the one-comparison form TFX's Cond on an artifact
    property compiles to is understood, anything else is an error (never guessed)."""
    match = _CONDITION.match(condition.strip())
    if not match:
        raise ValueError(f"unsupported triggerPolicy condition (the local launcher evaluates "
                         f"inputs.artifacts['K'].artifacts[0].metadata['P'] OP VALUE only): {condition}")
    key, prop, op, literal = match.group("key", "prop", "op", "value")
    if key not in artifacts:
        raise ValueError(f"condition {condition!r} reads input {key!r}, which the task does not have")
    metadata = artifacts[key].get("metadata", {})
    if prop not in metadata:
        raise ValueError(f"condition {condition!r}: artifact {artifacts[key].get('uri')} has no metadata {prop!r}")
    expected = literal[1:-1] if literal[0] in "'\"" else float(literal)
    actual = metadata[prop] if isinstance(expected, str) else float(metadata[prop])
    return _OPERATORS[op](actual, expected)


def topological(tasks: Dict[str, dict], wanted: List[str], given: Iterable[str] = ()) -> List[str]:
    """``wanted`` in dependency order; ``given`` are tasks whose outputs are supplied (resolvers)."""
    missing = [t for t in list(wanted) + list(given) if t not in tasks]
    if missing:
        raise LauncherError(f"tasks {missing} are not in the compiled pipeline (has {sorted(tasks)})")
    order, done = [], set(given)

    def visit(name):
        if name in done:
            return
        for dep in tasks[name].get("dependentTasks", []):
            if dep not in wanted and dep not in done:
                raise LauncherError(f"task {name} needs {dep}: add it to the tasks to run (or pass its "
                                    f"outputs as resolved artifacts)")
            visit(dep)
        done.add(name)
        order.append(name)

    for name in wanted:
        visit(name)
    return order


def _run(task: str, command: List[str], executor_input: dict, extra_args: List[str], log_path: str,
         env: dict) -> None:
    args = [a if a != "{{$}}" else json.dumps(executor_input) for a in command]
    # A container's /tmp goes with the container; here each task gets a temporary folder of its own
    # (TFX's Beam executors build a ~50 MB worker package there on every run and never remove it).
    with open(log_path, "w") as log, tempfile.TemporaryDirectory(prefix="tmp-", dir=os.path.dirname(log_path)) as tmp:
        result = subprocess.run(args + extra_args, stdout=log, stderr=subprocess.STDOUT, env=dict(env, TMPDIR=tmp))
    if result.returncode != 0:
        with open(log_path) as log:
            tail = log.read()[-4000:]
        raise TaskFailed(task, result.returncode, log_path, tail)


def load_spec(spec_path: str) -> dict:
    """The PipelineSpec of what ``compile-kfp`` wrote: the KFP package (``.yaml``) or the job JSON."""
    from segbalance.kubeflow.runner import is_kfp_package

    package = is_kfp_package(spec_path)
    what = "KFP package (YAML)" if package else "PipelineJob JSON"
    try:
        with open(spec_path) as f:
            spec = yaml.safe_load(f) if package else json.load(f)["pipelineSpec"]
    except (FileNotFoundError, IsADirectoryError):
        raise LauncherError(f"{spec_path}: no such file: pass the file `segbalance compile-kfp --output` wrote")
    except (ValueError, KeyError, TypeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise LauncherError(f"{spec_path}: not a {what} written by `segbalance compile-kfp` ({exc}): "
                            f"compile again and pass that file")
    if not isinstance(spec, dict) or not {"root", "components", "deploymentSpec"} <= set(spec):
        raise LauncherError(f"{spec_path}: not a {what} written by `segbalance compile-kfp` (no root, components "
                            f"and deploymentSpec): compile again and pass that file")
    return spec


def _produced(produced: Dict[str, Dict[str, dict]], output: dict, resolved: Dict[str, Dict[str, dict]]) -> list:
    """The artifact list a task input gets from its producer's output; a resolver output that
    ``resolved`` leaves out is a query that matched nothing (KFP passes an empty list)."""
    producer, key = output["producerTask"], output["outputArtifactKey"]
    if producer in resolved and key not in resolved[producer]:
        return []
    return [produced[producer][key]]


def run_compiled_tasks(spec_path: str, task_names: List[str], local_root: str,
                       beam_args: Optional[List[str]] = None,
                       resolved: Optional[Dict[str, Dict[str, dict]]] = None) -> Dict[str, Dict[str, dict]]:
    """Run ``task_names`` of the compiled pipeline; returns {task: {output key: artifact JSON}}
    for the tasks that ran (a task skipped by its trigger condition has no entry).

    ``resolved`` stands in for resolver tasks (KFP answers their queries from its metadata
    store): {resolver task: {output key: artifact JSON with uri, metadata, type}}; a key left out
    is a query that found nothing (an empty input, as on a first run).
    """
    spec = load_spec(spec_path)
    tasks, components = spec["root"]["dag"]["tasks"], spec["components"]
    executors = spec["deploymentSpec"]["executors"]
    produced: Dict[str, Dict[str, dict]] = {k: dict(v) for k, v in (resolved or {}).items()}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    skipped: List[str] = []
    for name in topological(tasks, task_names, given=produced):
        task, component = tasks[name], components[tasks[name]["componentRef"]["name"]]
        sources = [src["taskOutputArtifact"]["producerTask"] for src in task["inputs"].get("artifacts", {}).values()]
        if any(src in skipped for src in sources):
            print(f"local-launcher: {name} skipped (an input's producer was skipped)", flush=True)
            skipped.append(name)
            continue
        executor = executors[component["executorLabel"]]
        if "container" not in executor:
            raise LauncherError(f"task {name} runs no container ({', '.join(executor)}): KFP resolves it from its "
                                f"metadata store; pass its outputs as resolved={{'{name}': {{key: artifact}}}}")
        container = executor["container"]
        task_dir = os.path.join(local_root, "_tasks", name)
        os.makedirs(task_dir, exist_ok=True)
        output_file = os.path.join(task_dir, "executor_output.json")
        constants = {k: v["runtimeValue"]["constantValue"] for k, v in task["inputs"].get("parameters", {}).items()}
        inputs = {
            "parameters": dict(constants),
            "parameterValues": {k: _plain(v) for k, v in constants.items()},
            "artifacts": {key: {"artifacts": _produced(produced, src["taskOutputArtifact"], resolved or {})}
                          for key, src in task["inputs"].get("artifacts", {}).items()},
        }
        condition = task.get("triggerPolicy", {}).get("condition")
        if condition and not condition_holds(condition, {k: v["artifacts"][0] for k, v in inputs["artifacts"].items()
                                                         if v["artifacts"]}):
            print(f"local-launcher: {name} skipped (condition false: {condition})", flush=True)
            skipped.append(name)
            continue
        outputs = {}
        for key, definition in component.get("outputDefinitions", {}).get("artifacts", {}).items():
            uri = os.path.join(local_root, name, key)
            os.makedirs(uri, exist_ok=True)  # the KFP launcher creates output folders first
            outputs[key] = {"artifacts": [{"name": f"{name}-{key}", "uri": uri, "metadata": {},
                                           "type": {"schemaTitle": _schema_title(definition)}}]}
        executor_input = {"inputs": inputs, "outputs": {"artifacts": outputs, "outputFile": output_file}}
        extra = list(beam_args) if beam_args is not None else []
        strip_beam = beam_args is not None

        def command_of(part):
            args = part.get("args", [])
            if strip_beam:
                args = [a for a in args if not a.startswith("--direct_")]
            command = list(part["command"])
            if command and command[0] in ("python", "python3"):
                command[0] = sys.executable  # the image's python is this environment's
            return command + args

        driver = container.get("lifecycle", {}).get("preCacheCheck")
        if driver:
            if os.path.exists(output_file):
                os.remove(output_file)
            _run(name, command_of(driver), executor_input, extra, os.path.join(task_dir, "driver.log"), env)
            with open(output_file) as f:
                driver_output = json.load(f)
            for key, value in driver_output.get("parameterValues", {}).items():
                inputs["parameters"][key] = _as_value_message(value)
                inputs["parameterValues"][key] = int(value) if isinstance(value, float) and value.is_integer() \
                    else value
            for key, listed in driver_output.get("artifacts", {}).items():
                if key in outputs and listed.get("artifacts"):
                    outputs[key]["artifacts"][0]["metadata"].update(listed["artifacts"][0].get("metadata", {}))
        if os.path.exists(output_file):
            os.remove(output_file)
        print(f"local-launcher: {name}", flush=True)
        _run(name, command_of(container), executor_input, extra, os.path.join(task_dir, "executor.log"), env)
        with open(output_file) as f:
            result = json.load(f)
        produced[name] = {}
        for key, listed in result.get("artifacts", {}).items():
            artifact = dict(listed["artifacts"][0])
            artifact["type"] = outputs[key]["artifacts"][0]["type"]  # executor output omits the type
            artifact.setdefault("name", f"{name}-{key}")
            produced[name][key] = artifact
        for key, declared in outputs.items():  # outputs the executor did not rewrite
            produced[name].setdefault(key, declared["artifacts"][0])
    return {name: outputs for name, outputs in produced.items() if name not in (resolved or {})}


def main(argv=None) -> int:
    from segbalance.pipeline.cli import ArgumentParser, run_reporting_errors

    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="the file `segbalance compile-kfp --output` wrote (NAME.json or NAME.yaml)")
    parser.add_argument("--tasks", required=True, help="comma-separated task names")
    parser.add_argument("--root", required=True, help="local folder used as the pipeline root")
    parser.add_argument("--debug", action="store_true", help="on an error, print the Python traceback too")
    args = parser.parse_args(argv)

    def launch() -> int:
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        try:
            produced = run_compiled_tasks(args.spec, tasks, args.root, list(LOCAL_BEAM_ARGS))
        except TaskFailed as exc:  # the task's own output is in its log; one line says where
            if args.debug:
                raise
            print(f"{PROG}: error: task {exc.task} failed (exit code {exc.returncode}); its output: {exc.log_path}"
                  f"{'; last line: ' + exc.last_line if exc.last_line else ''}", file=sys.stderr, flush=True)
            return 1
        print(json.dumps({t: {k: a["uri"] for k, a in outs.items()} for t, outs in produced.items()}, indent=1))
        return 0

    return run_reporting_errors(launch, PROG, args.debug)


if __name__ == "__main__":
    sys.exit(main())
