"""Compile the pipeline for Kubeflow Pipelines v2 / Vertex AI Pipelines (KubeflowV2DagRunner).

The compiled PipelineJob JSON runs every component in one container image built from
``kubeflow/Dockerfile`` (this package + ``constraints.txt``), so the custom components'
executors (``segbalance.components.*``) and the module code (``segbalance.trainer.task.run_fn``,
``segbalance.trainer.preprocessing.preprocessing_fn``) import from the installed package.

Paths: ``pipeline_root`` (a ``gs://`` / ``s3://`` URI, or an absolute path the cluster
mounts) holds the artifacts; the examples are read from ``config.data.dir`` (a folder of
``Span-N/`` TFRecords written by ``segbalance ingest --span N``) or, when it is not set,
``<pipeline_root>/data``; blessed models are pushed to ``<pipeline_root>/serving_model``.
"""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import List, Optional, Tuple

from segbalance.contract import MAX_SPAN, UserError, pattern_characters_problem
from segbalance.pipeline.output_guard import write_text_atomic
from segbalance.pipeline.config import PIPELINE_NAME_PATTERN, PipelineConfig
from segbalance.trainer.remote_files import is_remote

URI_PATTERN = re.compile(r"^[a-z][a-z0-9+.-]*://[^\s]+$")
# Docker's reference grammar (distribution/reference): [registry[:port]/]path[:tag][@digest]; the
# path's components are lower-case, a tag is at most 128 word characters, dots and dashes
_DOMAIN = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_PATTERN = re.compile(rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::\w[\w.-]{{0,127}})?"
                           rf"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{{32,}})?$")
# --output FILE.yaml: the PipelineSpec package kfp.Client takes; any other name: the PipelineJob JSON
KFP_PACKAGE_SUFFIXES = (".yaml", ".yml")


def is_kfp_package(path: str) -> bool:
    """Whether ``path`` names the KFP package (YAML) rather than the PipelineJob JSON."""
    return path.lower().endswith(KFP_PACKAGE_SUFFIXES)

PACKAGE_HEADER = "# Kubeflow Pipelines v2 package (PipelineSpec) written by segbalance compile-kfp\n"


def is_compiled_pipeline(text: str) -> bool:
    """Whether a file's text is what `compile-kfp` writes, which it may replace: the YAML package under
    ``PACKAGE_HEADER``, or the PipelineJob JSON whose executors run segbalance's components. Another
    pipeline's job (any KFP JSON has a "pipelineSpec") is not (QA 56: it was overwritten)."""
    if text.startswith(PACKAGE_HEADER):
        return True
    try:
        job = json.loads(text)
    except ValueError:
        return False
    return isinstance(job, dict) and "pipelineSpec" in job and '"segbalance.components.' in text


class CompileError(UserError, ValueError):
    """Bad input for compilation; raised before anything is compiled."""


def check_inputs(config: PipelineConfig, image: Optional[str], pipeline_root: Optional[str]) -> None:
    if not re.match(PIPELINE_NAME_PATTERN, config.name) or config.name.endswith("\n"):
        raise CompileError(f"pipeline name {config.name!r} is not valid for KFP: use lower-case letters, digits "
                           f"and '-', starting with a letter or digit (set `name:` in the config)")
    if not image:
        raise CompileError("no container image: pass --image REGISTRY/segbalance:TAG or set $SEGBALANCE_IMAGE "
                           "(build it from kubeflow/Dockerfile, see README 'Deploy to Kubeflow')")
    if not IMAGE_PATTERN.match(image):
        raise CompileError(f"{image!r} does not look like a container image reference (e.g. "
                           f"gcr.io/my-project/segbalance:0.1)")
    if config.data.num_spans != 1:  # the window is a folder of symlinks made by the local run (pipeline/spans.py)
        raise CompileError(f"data.num_spans is {config.data.num_spans}, but a compiled pipeline trains on one span "
                           f"(the latest, or --span N): set data.num_spans: 1 for compile-kfp, or merge the spans "
                           f"into one with `segbalance ingest`")
    if not pipeline_root:
        raise CompileError("no --pipeline-root: give a bucket URI such as gs://my-bucket/segbalance, or set "
                           "$SEGBALANCE_PIPELINE_ROOT")
    check_pipeline_root(pipeline_root)
    problem = config.data.dir and is_remote(config.data.dir) and pattern_characters_problem(config.data.dir)
    if problem:  # (a local data.dir is checked with the config)
        raise CompileError(f"data.dir {config.data.dir}: {problem}")


# the object stores Kubeflow Pipelines keeps artifacts in (its Go CDK): GCS, S3 and its own MinIO
PIPELINE_ROOT_SCHEMES = ("gs", "s3", "minio")


def check_pipeline_root(pipeline_root: str) -> None:
    if not (URI_PATTERN.match(pipeline_root) or os.path.isabs(pipeline_root)):
        raise CompileError(f"--pipeline-root {pipeline_root!r} is neither a URI (gs://..., s3://...) nor an "
                           f"absolute path")
    scheme = pipeline_root.split("://", 1)[0] if URI_PATTERN.match(pipeline_root) else None
    if scheme is not None and scheme not in PIPELINE_ROOT_SCHEMES:  # (QA 69: ftp://... compiled)
        raise CompileError(f"--pipeline-root {pipeline_root!r}: Kubeflow Pipelines keeps artifacts in "
                           f"{', '.join(s + '://' for s in PIPELINE_ROOT_SCHEMES)} buckets (or an absolute path "
                           f"its pods mount), not {scheme}://")
    problem = pattern_characters_problem(pipeline_root)  # its data/ is read by ImportExampleGen (QA 97)
    if problem:
        raise CompileError(f"--pipeline-root {pipeline_root}: {problem}")


def _is_local_relative(path: Optional[str]) -> bool:
    return bool(path) and not URI_PATTERN.match(path) and not os.path.isabs(path)


def with_absolute_paths(config: PipelineConfig) -> Tuple[PipelineConfig, List[str]]:
    """A copy of ``config`` whose relative local paths are absolute (from this working folder), and
    'field: old -> new' for each. The compiled tasks run elsewhere, in another working folder: a
    relative data.dir found no spans there, and a relative reference_masks_dir was not found, so
    the model was scored against the partial masks without a word."""
    config = copy.deepcopy(config)
    changed = []
    fields = [(config.data, "dir", "data.dir"), (config.data, "reference_masks_dir", "data.reference_masks_dir"),
              (config.training, "backup_dir", "training.backup_dir")]
    if config.training.backbone_weights not in (None, "imagenet"):
        fields.append((config.training, "backbone_weights", "training.backbone_weights"))
    if getattr(config.training.pixel_weights, "model", None):
        fields.append((config.training.pixel_weights, "model", "training.pixel_weights.model"))
    for section, name, where in fields:
        value = getattr(section, name)
        if _is_local_relative(value):
            setattr(section, name, os.path.abspath(value))
            changed.append(f"{where}: {value} -> {getattr(section, name)}")
    return config, changed


def examples_root(config: PipelineConfig, pipeline_root: str) -> str:
    return config.data.dir or pipeline_root.rstrip("/") + "/data"


def check_span_number(span: Optional[int]) -> None:
    if span is not None and not 0 <= span <= MAX_SPAN:  # (QA 69: with remote data a range of span -1 was compiled)
        raise CompileError(f"--span {span}: spans are numbered from 0 to {MAX_SPAN} (segbalance ingest --span N)")


def check_span(examples_dir: str, span: Optional[int]) -> None:
    """A local examples folder must hold the requested span (or any span); remote ones are not listed."""
    check_span_number(span)
    if URI_PATTERN.match(examples_dir) and not examples_dir.startswith("file://"):
        return
    import glob

    spans = sorted(int(p.rsplit("-", 1)[1]) for p in glob.glob(os.path.join(examples_dir, "Span-*"))
                   if p.rsplit("-", 1)[1].isdigit())
    if span is not None and span not in spans:
        raise CompileError(f"span {span} does not exist in {examples_dir} (spans there: {spans or 'none'}); "
                           f"ingest it with `segbalance ingest ... --output {examples_dir} --span {span}`")
    if span is None and not spans and os.path.isdir(examples_dir):
        raise CompileError(f"{examples_dir} has no Span-N folders: ingest data with `segbalance ingest --span 0`")


def build_pipeline(config: PipelineConfig, pipeline_root: str, with_drift: bool = True, span: Optional[int] = None):
    from segbalance.pipeline.dag import create_pipeline

    examples_dir = examples_root(config, pipeline_root)
    check_span(examples_dir, span)
    if os.path.isdir(examples_dir):  # local spans: their ingest reports' class counts and ids, as `run` checks
        from segbalance.pipeline.span_records import SpanRecordError, check_declared_classes

        try:
            check_declared_classes(Path(examples_dir), config, span)
        except SpanRecordError as exc:
            raise CompileError(str(exc)) from None
    if config.data.split_by == "group" and os.path.isdir(examples_dir):  # local spans: their records are read
        from segbalance.pipeline.run import check_span_groups

        check_span_groups(Path(examples_dir), span)
    return create_pipeline(
        config, examples_dir=examples_dir, pipeline_root=pipeline_root,
        serving_model_dir=pipeline_root.rstrip("/") + "/serving_model",
        reference_masks_dir=config.data.reference_masks_dir, with_drift=with_drift, span=span,
        beam_pipeline_args=config.beam_args_for(kubeflow=True), for_kubeflow=True)


def compile_pipeline(config: PipelineConfig, output: str, image: Optional[str], pipeline_root: Optional[str],
                     with_drift: bool = True, span: Optional[int] = None) -> dict:
    """Compile; write ``output`` (``.yaml`` / ``.yml``: the KFP package, ``kfp_package``; otherwise
    the Vertex AI PipelineJob JSON) and return the PipelineJob as a dict."""
    import tempfile

    check_inputs(config, image, pipeline_root)
    check_span_number(span)  # before the notes: a refusal prints one line only
    check_writable(output)
    config, changed = with_absolute_paths(config)
    for change in changed:
        print(f"compile-kfp: {change} (relative to this folder; the cluster must see that path)", flush=True)
    if config.data.dir is None:  # said without a data.sample too (QA 63: where it read was nowhere said)
        sample = ("data.sample is for local runs and not compiled; " if config.data.sample != type(config.data.sample)()
                  else "no data.dir in the config: ")
        print(f"compile-kfp: {sample}the pipeline reads the spans in {examples_root(config, pipeline_root)} "
              f"(segbalance ingest --span N)", flush=True)
    if config.output_dir != type(config)().output_dir:  # QA 67: accepted and ignored without a word
        print(f"compile-kfp: note: output_dir ({config.output_dir}) is for local runs and not compiled: the pipeline "
              f"writes under --pipeline-root, its pushed models in {pipeline_root.rstrip('/')}/serving_model",
              flush=True)
    if config.data.dir is None and config.data.sample.kind != "shapes" and \
            config.classes.names == type(config.classes)().names:  # QA 27: said of the data only
        print(f"compile-kfp: note: nor are the {config.data.sample.kind} sample's class names: the pipeline trains "
              f"classes.names, here the {config.num_classes} defaults ({', '.join(config.classes.names)}); set "
              f"classes.names to your data's classes", flush=True)
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    pipeline = build_pipeline(config, pipeline_root, with_drift, span)
    with tempfile.TemporaryDirectory(prefix="segbalance-compile-") as folder:
        runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
            config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=image, display_name=config.name),
            output_dir=folder, output_filename="pipeline.json")
        runner.run(pipeline, write_out=True)
        with open(os.path.join(folder, "pipeline.json")) as f:
            job = json.load(f)
    fix_custom_type_resolver_queries(job["pipelineSpec"])
    fix_condition_input_keys(job["pipelineSpec"])
    write_compiled(job, output)
    return job


def kfp_package(job: dict) -> dict:
    """The PipelineSpec of a compiled PipelineJob, as ``kfp.Client().create_run_from_pipeline_package``
    and ``create_recurring_run`` read it (a YAML file of the bare spec; they refuse the job JSON),
    with the job's pipeline root as its ``defaultPipelineRoot``."""
    spec = dict(job["pipelineSpec"])
    root = job.get("runtimeConfig", {}).get("gcsOutputDirectory")
    if root:
        spec["defaultPipelineRoot"] = root
    return spec


def check_writable(output: str) -> None:
    """Before the slow compile: the output's folder, where it exists, must be writable."""
    folder = Path(output).resolve().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK):
        raise CompileError(f"--output {output}: {folder} is not writable; choose a folder you can write")


def write_compiled(job: dict, output: str) -> None:
    import yaml

    if is_kfp_package(output):
        text = PACKAGE_HEADER + yaml.safe_dump(kfp_package(job), sort_keys=False, allow_unicode=True)
    else:
        text = json.dumps(job, sort_keys=True)
    try:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output, text)  # a killed write left a cut file the next compile refused as not ours
    except OSError as exc:
        raise CompileError(f"--output {output}: cannot write it ({exc.strerror or exc}); choose a folder you can "
                           f"write") from None


GENERIC_QUERY = 'schema_title="tfx.Artifact"'


def fix_custom_type_resolver_queries(spec: dict) -> list:
    """Make latest-artifact resolver queries for custom types ask for that type.

    TFX 1.16's KFP v2 step builder writes ``schema_title="tfx.Artifact"`` into the query of a
    latest-artifact resolver whose channel has a custom type (``compiler_utils.get_artifact_title``
    knows only the standard types), while the artifacts themselves are recorded under their
    schema title (``components.ClassStats``): the query would never find the previous run's
    ClassStats and the drift gate would always see a "first run". Returns the fixed queries.
    """
    import yaml

    executor_component = {c["executorLabel"]: c for c in spec["components"].values() if "executorLabel" in c}
    fixed = []
    for label, executor in spec["deploymentSpec"]["executors"].items():
        queries = executor.get("resolver", {}).get("outputArtifactQueries", {})
        for key, query in queries.items():
            if GENERIC_QUERY not in query.get("filter", ""):
                continue
            artifact_type = executor_component[label]["outputDefinitions"]["artifacts"][key]["artifactType"]
            title = artifact_type.get("schemaTitle") or yaml.safe_load(artifact_type["instanceSchema"])["title"]
            if title != "tfx.Artifact":
                query["filter"] = query["filter"].replace(GENERIC_QUERY, f'schema_title="{title}"')
                fixed.append((label, key, query["filter"]))
    return fixed


_CONDITION_INPUT = re.compile(r"inputs\.artifacts\['(_(?P<producer>[^'.]+)\.(?P<key>[^']+))'\]")


def fix_condition_input_keys(spec: dict) -> list:
    """Make each task's ``triggerPolicy`` condition read an input the task has.

    TFX 1.16 compiles ``tfx.dsl.Cond`` on a channel into a condition on the input
    ``_<producer>.<key>`` and adds that input to the task, unless the task already consumes the
    channel under its own name (SegEvaluator's ``drift_report``, DataReport's ``drift``): then it
    adds nothing but still writes ``_<producer>.<key>`` in the condition, which names no input of
    the task, so KFP could not evaluate it. Rewrites such references to the task's own input key;
    returns (task, old key, new key) for each."""
    fixed = []
    for name, task in spec["root"]["dag"]["tasks"].items():
        condition = task.get("triggerPolicy", {}).get("condition")
        if not condition:
            continue
        inputs = task.get("inputs", {}).get("artifacts", {})

        def own_key(match):
            implicit, producer, key = match.group(1, "producer", "key")
            if implicit in inputs:
                return match.group(0)
            for input_key, source in inputs.items():
                output = source.get("taskOutputArtifact", {})
                if output.get("producerTask") == producer and output.get("outputArtifactKey") == key:
                    fixed.append((name, implicit, input_key))
                    return f"inputs.artifacts['{input_key}']"
            return match.group(0)

        task["triggerPolicy"]["condition"] = _CONDITION_INPUT.sub(own_key, condition)
    return fixed
