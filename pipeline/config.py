"""The one configuration of a run: a typed dataclass tree, loadable from YAML or JSON.

Every field has a default that runs the bundled shapes sample (``segbalance run`` with no
flags); the defaults live in these dataclasses and nowhere else. A config file only lists
what it changes, e.g.::

    data:
      dir: /data/my-set           # folder with images/ and masks/ (or Span-N/ sub-folders)
    classes:
      names: [background, road, car, person]
    stats:
      clip: [0.5, 5.0]            # class-weight options (trainer/class_weights.py)
    training:
      epochs: 20
      loss: {terms: [{type: ce, weight: 1}], class_weights: median_frequency}

Sections (each field is described once, beside its definition):

- ``data``, ``stats``, ``evaluation``, ``drift``, ``name``, ``output_dir``, ``beam_args``: below;
- ``classes`` and ``training``: ``trainer/training_config.py`` (what the trainer receives);
- ``training.loss``: ``trainer/loss_config.py`` (the loss-term registry).

``segbalance config show [--config FILE]`` prints the effective configuration (YAML);
``segbalance config validate FILE`` checks one. ``load_config`` rejects unknown fields,
wrong types and bad values with a ``ConfigError`` that names the field
(``training.epochs: must be >= 1``). The DAG (``pipeline/dag.py``) hands each component its
section serialised; the component rebuilds the same typed object.

No TensorFlow / TFX imports: a config check and ``segbalance --help`` stay under a second.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Literal, Optional

from segbalance.components.component_config import DriftConfig, EvaluationConfig, StatsConfig
from segbalance.contract import DRIFT_ACTIONS, UserError  # noqa: F401 (DRIFT_ACTIONS re-exported beside DriftConfig)
from segbalance.contract import pattern_characters_problem
from segbalance.trainer.loss_config import LossConfig
from segbalance.trainer.remote_files import is_remote
from segbalance.trainer.training_config import ClassesConfig, TrainerConfig, TrainingConfig
from segbalance.trainer.typed_config import ConfigError, from_dict, require, to_dict, validate_tree

PIPELINE_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,127}$"
# Beam options when ``beam_args`` is null: a local run (one in-memory worker, the CI machine's 2 cores
# shared with TensorFlow), and a compiled Kubeflow task (a worker process per core of its container)
LOCAL_BEAM_ARGS = ("--direct_running_mode=in_memory", "--direct_num_workers=1")
KUBEFLOW_BEAM_ARGS = ("--direct_running_mode=multi_processing", "--direct_num_workers=0")
# `segbalance sample-data` kinds (pipeline/sample_data.py reads this list)
SAMPLE_KINDS = ("shapes", "voc", "arc2017", "nuclei", "buildings", "lesions", "labelme")


# the side of a sample image, smallest and largest: below 16 the shapes do not fit (sample-data refused what
# data.sample accepted from 8); above 4096 an image is 50 MB and more (QA 69: --size 100000, a MemoryError)
SAMPLE_SIZES = (16, 4096)


@dataclass
class SampleConfig:
    """Sample data generated when ``data.dir`` is not set (``segbalance sample-data``)."""

    kind: Literal[SAMPLE_KINDS] = "shapes"  # buildings / lesions / labelme need their package archive
    num_images: int = 240
    size: int = 64
    seed: int = 0
    drop_fraction: float = 0.3  # fraction of the images with a foreground class whose annotation drops one

    def validate(self, where: str) -> None:
        require(self.num_images >= 1, f"{where}.num_images", "must be >= 1")
        require(SAMPLE_SIZES[0] <= self.size <= SAMPLE_SIZES[1], f"{where}.size",
                f"must be from {SAMPLE_SIZES[0]} to {SAMPLE_SIZES[1]} pixels")
        require(0.0 <= self.drop_fraction <= 1.0, f"{where}.drop_fraction", "must be in [0, 1]")
        # NumPy's seed range (QA 27: -1 passed `config validate`, and run named sample-data's --seed)
        require(0 <= self.seed < 2 ** 32, f"{where}.seed", "must be from 0 to 2**32 - 1")


@dataclass
class DataConfig:
    MOVED: ClassVar[Dict[str, str]] = {"labeled_policy": "set stats.labeled_policy instead"}

    dir: Optional[str] = None  # images/ + masks/ (+ labeled.json, masks_full/), or Span-N/; None: sample data
    eval_fraction: float = 0.2  # hash split of each span into train/eval: a multiple of 0.1 (10 hash buckets)
    # what the split hashes: each image on its own ("record", by image/source_id), or each group of images
    # ("group", by image/group_id: groups.json beside images/, `segbalance ingest --groups`), so crops of one
    # scene are never on both sides and validation measures held-out scenes
    split_by: Literal["record", "group"] = "record"
    num_spans: int = 1  # local runs on Span-N/ data: train on the last K spans (pipeline/spans.py)
    reference_masks_dir: Optional[str] = None  # complete masks for evaluation (default: masks_full/)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def validate(self, where: str) -> None:
        require(0.0 < self.eval_fraction < 1.0, f"{where}.eval_fraction", "must be between 0 and 1")
        # ImportExampleGen hashes records into 10 buckets (dag.py): another fraction would be rounded, silently
        if abs(self.eval_fraction * 10 - round(self.eval_fraction * 10)) > 1e-6:
            low = min(9, max(1, int(self.eval_fraction * 10)))
            near = " or ".join(str(t / 10) for t in dict.fromkeys((low, min(9, low + 1))))
            raise ConfigError(f"{where}.eval_fraction: {self.eval_fraction} is not a multiple of 0.1 (the split "
                              f"hashes records into 10 buckets): use {near}")
        require(self.num_spans >= 1, f"{where}.num_spans", "give the number of latest spans to train on, >= 1")
        ref = self.reference_masks_dir
        if ref is not None and not is_remote(ref):  # without it scoring would fall back to the partial masks
            require(Path(ref).is_dir(), f"{where}.reference_masks_dir",
                    f"{ref} is not a folder; point it at the complete masks (one per image, same stems) or remove it")
        if self.dir is not None and not is_remote(self.dir):  # remote URIs are read by the cluster
            path = Path(self.dir)
            require(path.is_dir(), f"{where}.dir",
                    f"{path} is not a folder; point it at a folder with images/ and masks/")
            require((path / "images").is_dir() or any(path.glob("Span-*")) or moved_aside_span(path), f"{where}.dir",
                    no_data_hint(path))
            problem = spans_folder_problem(path)
            require(problem is None, f"{where}.dir", f"{path}: {problem}")


def spans_folder_problem(path: Path) -> Optional[str]:
    """Why ImportExampleGen cannot read the spans of a local data folder (``pattern_characters_problem`` of the
    folder a link leads to: `run` reads it resolved), or None; a folder of images/ + masks/ is ingested into the
    run folder first, and read from there."""
    if (path / "images").is_dir():
        return None
    return pattern_characters_problem(str(path.resolve()), str(path))


def moved_aside_span(path: Path) -> bool:
    """Whether ``path`` holds a span a killed `ingest --overwrite` moved aside (its only one, say): the run puts it
    back before it chooses the latest span (``ingest.clean_stale``). QA 91 M3: the folder was refused as
    holding nothing to train on, and the span stayed hidden."""
    from segbalance.pipeline.output_guard import INGEST_OLD_PREFIX, left_by_dead_process

    return any(left_by_dead_process(p.name, INGEST_OLD_PREFIX) and p.is_dir() for p in path.iterdir())


def no_data_hint(path: Path) -> str:
    """Why a data folder with neither images/ nor Span-N/ cannot be read, and what to give instead."""
    if re.fullmatch(r"Span-\d+", path.name) and any(path.glob("*.tfrecord*")):
        return (f"{path} is one span's folder; give the folder that holds it, --data {path.parent} "
                f"(the run reads its latest span, or the last data.num_spans)")
    if any(path.glob("data-*.tfrecord*")):
        return (f"{path} holds TFRecords that `segbalance ingest` wrote without --span, and a run reads Span-N/ "
                f"folders: ingest again with --span 0 (or move the files into {path / 'Span-0'}/)")
    return (f"{path} has no images/ folder and no Span-N/ folders: nothing to train on; give a folder with "
            f"images/ and masks/, or the --output of `segbalance ingest ... --span N`")


@dataclass
class PipelineConfig:
    name: str = "segbalance"  # pipeline name (ML Metadata, KFP): lower-case letters, digits, '-'
    output_dir: str = "segbalance_output"  # local runs: metadata, artifacts, report, pushed model
    data: DataConfig = field(default_factory=DataConfig)
    classes: ClassesConfig = field(default_factory=ClassesConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    # Beam options of the Beam components (ClassStatsGen, Transform, ...), e.g. ["--runner=DataflowRunner",
    # "--project=...", ...]; null: LOCAL_BEAM_ARGS on a local run, KUBEFLOW_BEAM_ARGS in `compile-kfp`
    beam_args: Optional[List[str]] = None

    def beam_args_for(self, kubeflow: bool) -> List[str]:
        """The Beam options a local run (``kubeflow=False``) or a compiled pipeline passes."""
        if self.beam_args is not None:
            return list(self.beam_args)
        return list(KUBEFLOW_BEAM_ARGS if kubeflow else LOCAL_BEAM_ARGS)

    @property
    def num_classes(self) -> int:
        return len(self.classes.names)

    def trainer_config(self) -> TrainerConfig:
        """The sections Transform and SegTrainer receive."""
        return TrainerConfig(classes=self.classes, training=self.training)

    def to_dict(self) -> dict:
        return to_dict(self)

    def validate(self, where: str) -> None:
        require(re.match(PIPELINE_NAME_PATTERN, self.name) is not None and not self.name.endswith("\n"), "name",
                f"{self.name!r} is not a valid pipeline name: use lower-case letters, digits and '-' (KFP rule)")
        # '' was the current folder, refused by run as "--output-dir ... is not empty" (QA 27)
        require(bool(self.output_dir.strip()), "output_dir", "is empty: name the folder a run writes into "
                "(default segbalance_output)")
        self.trainer_config().validate(where)
        if self.beam_args is not None:  # Beam drops a flag it does not know unread (the direct runner)
            from segbalance.pipeline.beam_options import beam_args_problem

            problem = beam_args_problem(self.beam_args)
            require(problem is None, "beam_args", str(problem))


def validate(config: PipelineConfig) -> PipelineConfig:
    """Check every section's values (not only types); ConfigError naming the field."""
    validate_tree(config)
    return config


def config_from_dict(values: Optional[dict]) -> PipelineConfig:
    return from_dict(PipelineConfig, values or {})


def _unique(pairs, lines=None) -> dict:
    """A mapping from (key, value) pairs; a key given twice is an error (YAML and JSON would keep the
    last one without a word: `epochs: 2` ... `epochs: 3` trained 3 epochs)."""
    mapping: dict = {}
    for i, (key, value) in enumerate(pairs):
        if key in mapping:
            where = f" (line {lines[i]})" if lines else ""
            raise ConfigError(f"{key!r} is given twice{where}: keep one")
        mapping[key] = value
    return mapping


def _parse(text: str, json_file: bool):
    if json_file:
        return json.loads(text, object_pairs_hook=_unique)
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            self.flatten_mapping(node)
            pairs = [(self.construct_object(k, deep=deep), self.construct_object(v, deep=deep)) for k, v in node.value]
            return _unique(pairs, [k.start_mark.line + 1 for k, _ in node.value])

    return yaml.load(text, Loader=UniqueKeyLoader) or {}


def names_from_data(values: dict, sample_names: Optional[Callable[[str], List[str]]] = None,
                    sample_check: str = "error", notes: Optional[List[str]] = None) -> None:
    """A config that names no classes takes those of its local ``data.dir``'s ``classes.json``, or
    without a ``data.dir`` those of its ``data.sample.kind`` (``sample_names(kind)``, given for a local
    run: ``sample_data.sample_class_names``), as a run does, *before* it is checked: per-class lists
    (``training.loss.class_weights``, ``fn_weights``, ...) are then checked against the data's classes,
    not the default four. ``sample_check``: what other ``classes.names`` than the sample data's are, in a
    config without ``data.dir`` (``check_sample_names``): "error" (`run`, which trains on the sample),
    "note" (`config validate` / `show`: the config may be for --data, compile-kfp or schedule), "off"."""
    classes, data = values.get("classes", {}), values.get("data", {})
    if not isinstance(classes, dict) or not isinstance(data, dict):
        return
    directory = data.get("dir")
    if "names" in classes:
        problem = (check_sample_names(classes["names"], data.get("sample", {}), sample_names)
                   if directory is None and sample_names is not None and sample_check != "off" else None)
        if problem and sample_check == "error":
            raise ConfigError(problem)
        if problem and notes is not None:
            notes.append(f"{problem} (a local run without data.dir or --data refuses it)")
        return
    if isinstance(directory, str) and not is_remote(directory):
        from segbalance.pipeline.ingest import CONFIG_CLASSES_HINT, read_class_names

        from segbalance.pipeline.spans import class_names_file

        names = read_class_names(class_names_file(Path(directory).resolve()), instead=CONFIG_CLASSES_HINT)
    elif directory is None and sample_names is not None and isinstance(data.get("sample"), dict):
        kind = data["sample"].get("kind")
        if not isinstance(kind, str) or kind not in SAMPLE_KINDS or kind == "shapes":
            return  # shapes: the default names; another value is the schema's error
        try:
            names = sample_names(kind)
        except UserError as exc:  # its package archive is not in the cache: what to run
            raise ConfigError(f"data.sample.kind: {kind}: {exc}") from None
    else:
        return
    if names is not None:
        values["classes"] = {**classes, "names": names}


def check_sample_names(names, sample, sample_names: Callable[[str], List[str]]) -> Optional[str]:
    """What is wrong with ``classes.names`` for the sample data a local run without ``data.dir`` trains on
    (the sample kind's classes), or None (QA 63: `config validate` said valid, and `run` wrote the sample
    data, then blamed the sample's own classes.json). Names that are not a list of strings: the schema's
    error (None here)."""
    kind = sample.get("kind", "shapes") if isinstance(sample, dict) else None
    if not isinstance(kind, str) or kind not in SAMPLE_KINDS:
        return None  # the schema's error
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None  # the schema's error (QA 65: a number here was a TypeError traceback)
    try:
        expected = sample_names(kind)
    except UserError:  # its package archive is not in the cache: the run says what to fetch
        return None
    # shapes' names are the defaults: a user may rename them, not change their number (`run` adopts
    # another kind's names and refuses different ones, after writing the sample: refused here first)
    if (len(names) != len(expected)) if kind == "shapes" else (names != expected):
        return (f"classes.names: {names} are not the classes of the {kind} sample data {expected}, which a run "
                f"without data.dir trains on: remove classes.names, or set data.dir to your own data")
    return None


def replaced_loss_defaults(values: dict, config: PipelineConfig) -> List[str]:
    """A note when ``training.loss`` (given as a whole, unlike the other sections, which merge
    field by field) leaves out default-loss fields whose value it thereby changes; [] otherwise."""
    from segbalance.trainer.loss_config import TERMS, default_training_loss, unread_fields

    training = values.get("training")
    loss = training.get("loss") if isinstance(training, dict) else None
    if not isinstance(loss, dict):
        return []
    default, yours = to_dict(default_training_loss()), to_dict(config.training.loss)
    term_types = [type(term) for term in config.training.loss.terms]
    shown = lambda value: "null" if value is None else value  # noqa: E731 (as YAML writes it)
    dropped, keepable = [], []
    for key in default:
        if key == "terms" or key in loss or yours.get(key) == default[key]:
            continue
        # a default this loss cannot take is not one to give (QA 63: validation then refused it)
        if unread_fields({key: default[key]}, term_types):
            readers = ", ".join(t.TYPE for t in TERMS.values() if key in t.USES)
            dice = [t for t in config.training.loss.terms if getattr(t, "TYPE", "") == "dice"]
            hint = key == "missing_labels" and dice and not any(getattr(t, "marginal", False) for t in dice)
            why = f"only {readers} terms read it" + ("; a dice term takes marginal: true" if hint else "")
        elif key == "class_weight_decay_epochs" and (
                unread_fields({"class_weights": default["class_weights"]}, term_types)
                or ("class_weights" in loss and yours.get("class_weights") in (None, "uniform"))):
            why = "it decays class weights, which this loss has none of"
        else:
            why = None
            keepable.append(key)
        dropped.append(f"{key}: {shown(yours[key])} (default {shown(default[key])}{': ' + why if why else ''})")
    if not dropped:
        return []
    keep = (f"; give {' and '.join(keepable)} in training.loss to keep the default" if keepable else "")
    return [f"training.loss replaces the default loss as a whole: {'; '.join(dropped)}{keep}"]


def read_values(path) -> dict:
    """The fields a YAML/JSON config file gives (a nested dict, not yet checked against the schema);
    ConfigError naming the file when it is missing, not UTF-8, not YAML/JSON, gives a key twice or
    is not a mapping."""
    if not Path(path).is_file():
        what = "is a folder, not a file" if Path(path).is_dir() else "does not exist"
        raise ConfigError(f"config file {path} {what}")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                          f"position {exc.start}): save it as UTF-8") from None
    try:
        values = _parse(text, json_file=str(path).endswith(".json"))
    except ConfigError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    except Exception as exc:
        raise ConfigError(f"config file {path} is not valid YAML/JSON: {' '.join(str(exc).split())}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of fields")
    return values


def load_config(path: Optional[str] = None, notes: Optional[List[str]] = None,
                sample_names: Optional[Callable[[str], List[str]]] = None, sample_check: str = "error",
                option_names: Optional[Dict[str, str]] = None, **overrides: Any) -> PipelineConfig:
    """Defaults, updated from a YAML/JSON file, then from top-level ``overrides``; ``notes``, when
    given, receives what the user may not expect (``replaced_loss_defaults``); ``sample_names``: for
    a local run's config, whose ``data.sample`` names the classes (``names_from_data``).
    ``option_names``: {dotted field: the command-line option that gave it}, named in an error about that
    value instead of the field (QA 69: `run --data nope` said "data.dir: nope is not a folder")."""
    values: dict = read_values(path) if path is not None else {}
    given = []
    for dotted, value in overrides.items():
        if value is None:
            continue
        given.append(dotted)
        node = values
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        names_from_data(values, sample_names, sample_check, notes)
        config = config_from_dict(values)
        if notes is not None:
            notes.extend(replaced_loss_defaults(values, config))
        return config
    except ConfigError as exc:
        message = str(exc)
        from_file = path is not None and str(path) not in message and not any(
            message.startswith(name) for name in given)  # a command-line value is not in the file
        for name in given:
            option = (option_names or {}).get(name)
            if option and message.startswith(f"{name}:"):
                message = option + message[len(name):]
        raise ConfigError(f"{message} (in {path})" if from_file else message) from None
