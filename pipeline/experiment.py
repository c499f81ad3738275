"""`segbalance experiment [--quick] [--output docs/results] [options]`: which loss, at convergence?

For each data set and annotation drop rate the pipeline runs once (sample data -> ingest ->
ImportExampleGen -> ClassStatsGen -> Transform -> SegTrainer for 1 epoch -> SegEvaluator, with
LocalDagRunner) to produce the artifacts; then every cell of the grid **terms x class weighting x
missing-label handling** (crossed, not one at a time; ``--pixel-weights`` adds weight maps as a fourth
axis) trains, per seed, with the same ``segbalance.trainer.task.run_fn`` on them, until its
validation mIoU has not improved for ``--patience`` epochs (counted from ``--min-epochs`` on) or
``--max-epochs`` is reached (``training.early_stopping_patience``, ``min_epochs``, the ``plateau``
rate schedule, ``restore_best``: the best epoch is the model scored). Each is scored on a held-out
test set with **complete** masks (``components.seg_evaluator``).

Data sets (``segbalance sample-data`` kinds): ``shapes`` (synthetic, test = other seeds),
``nuclei`` (stardist), and the real package kinds ``buildings`` (SpaceNet tile from solaris),
``lesions`` (pyradiomics scans), ``labelme`` (3 VOC photos); the real kinds train on
``--part train`` and are tested on ``--part test``. Annotation drop: ``--drops`` (default
0, 0.3, 0.6; masks lose classes, ``labeled.json`` says which were annotated).

``results.json`` keeps every row with its per-epoch curves (``history``), best and stopping
epoch; ``results.md`` has per-data-set tables, the mean rank of each cell over data sets x drop
rates, the curves (PNG) and which cells hit the epoch cap before the plateau. Every finished
training is appended to ``WORK/results.jsonl``, so a stopped run resumes where it stopped, and
a later run in the same ``--work-dir`` (more seeds for some cells, another data set) adds to it:
the report covers every row there. A row counts as done only for a run with the values it was
trained with (``--config`` digest, the code's training defaults (rows from before session 31 do
not record them), epochs, patience, size, batch, crops, split, test crops); a
cell trained otherwise trains again, and a report of rows trained with several sets of values
reports each set on its own (ranks within a set, never across).
``--quick``: shapes, drop 0.3, 2 cells, 1 seed, 2 epochs (the test suite's version).
``--config FILE``: the model, optimizer, augmentation and the rest of the recipe from a
``run`` config; the fields the experiment sets itself are not used (a note says which;
``pipeline/experiment_config.py``).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import platform
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from segbalance.contract import counted
from segbalance.pipeline.experiment_config import PROTOCOL, source_commit, trained_with
from segbalance.trainer.class_weights import DEFAULT_CLIP
from segbalance.trainer.loss_config import default_training_loss

CE = {"type": "ce", "weight": 1.0}
DICE = {"type": "dice", "weight": 1.0}
FOCAL = {"type": "focal", "weight": 1.0, "gamma": 2.0}
EXCLUSION = {"type": "exclusion", "weight": 1.0}  # form ce: a pixel annotated as a labelled class is no unlabelled one
CLIP = DEFAULT_CLIP  # raw-weight clipping range of the "_clipped" variants (before normalisation): stats.clip's
IMBALANCE_LOSSES = {
    "unweighted": {"terms": [CE]},
    "inverse_frequency": {"terms": [CE], "class_weights": "inverse_frequency"},
    "inverse_frequency_clipped": {"terms": [CE], "class_weights": "inverse_frequency"},
    "median_frequency": {"terms": [CE], "class_weights": "median_frequency"},
    "median_frequency_clipped": {"terms": [CE], "class_weights": "median_frequency"},
    "enet": {"terms": [CE], "class_weights": "enet"},
    "effective_number": {"terms": [CE], "class_weights": "effective_number"},
    "focal": {"terms": [FOCAL]},
    "ce_dice": {"terms": [CE, DICE]},
}
# Cells whose class weights use other `stats` options than the pipeline run's (fields of
# pipeline/config.py StatsConfig): their weight vector is computed from the ClassStats counts.
STATS_CHANGES = {"inverse_frequency_clipped": {"clip": CLIP}, "median_frequency_clipped": {"clip": CLIP},
                 "median_frequency_clipped_decay": {"clip": CLIP}}

# The crossed grid: a cell is (terms, weighting, missing-label handling).
TERMS = {"ce": [CE], "ce_dice": [CE, DICE], "focal": [FOCAL]}
WEIGHTINGS = {"none": None, "inverse_frequency": "inverse_frequency", "inverse_frequency_clipped": "inverse_frequency",
              "median_frequency": "median_frequency", "median_frequency_clipped": "median_frequency",
              "median_frequency_clipped_decay": "median_frequency",
              "enet": "enet", "effective_number": "effective_number"}
# Weightings whose class weights decay to 1 over this many epochs (loss.class_weight_decay_epochs):
# the weights' early rare-class learning, then convergence on the unweighted loss.
DECAY_EPOCHS = {"median_frequency_clipped_decay": default_training_loss().class_weight_decay_epochs}  # the default's
MISSING = {"none": None, "ignore_predicted": "ignore_predicted", "marginal": "marginal",
           "marginal_dice": "marginal", "marginal_exclusion": "marginal"}
# Missing-label handlings that also make the Dice terms marginal (loss_config.Dice.marginal).
MARGINAL_DICE = ("marginal_dice",)
# Missing-label handlings that add loss terms: marginal + exclusion (issue 9's "marginal + exclusion", Shi et al.
# 2021's pair: the merged background, and a labelled pixel pushed away from the image's unlabelled classes).
EXTRA_TERMS = {"marginal_exclusion": [EXCLUSION]}
# How the cells' validation mIoU (best epoch, early stop, plateau) treats partial annotations, recorded in each
# row. Rows without the field were trained before 2026-12-03 (session 6), when a background pixel predicted as
# a class the image left unlabelled counted as a miss; identical to this rule where every class is labelled.
VALIDATION = "unlabelled-predictions-not-scored"
# Pixel weight maps (training.pixel_weights, trainer/weight_maps.py) a cell can train with, at their defaults; "none"
# (no map) keeps the three-part cell name, a map is its fourth part (ce_dice/none/marginal/unet_border).
PIXEL_WEIGHTS = {"none": None, "unet_border": {"type": "unet_border"}, "edge": {"type": "edge"}}
DATASETS = ("shapes", "nuclei", "buildings", "lesions", "labelme")
SCHEDULES = ("constant", "cosine", "polynomial", "plateau")  # training.lr_schedule.type
SPLITS = ("record", "group")  # data.split_by


def cell_name(terms: str, weighting: str, missing: str, pixel_weights: str = "none") -> str:
    return f"{terms}/{weighting}/{missing}" + ("" if pixel_weights == "none" else f"/{pixel_weights}")


def cell_pixel_weights(cell: tuple) -> str:
    """The weight map of a cell: (terms, weighting, missing) has none, a fourth part names it."""
    return cell[3] if len(cell) > 3 else "none"


def cell_loss(terms: str, weighting: str, missing: str) -> dict:
    loss = {"terms": copy.deepcopy(TERMS[terms])}
    if WEIGHTINGS[weighting]:
        loss["class_weights"] = WEIGHTINGS[weighting]
    if weighting in DECAY_EPOCHS:
        loss["class_weight_decay_epochs"] = DECAY_EPOCHS[weighting]
    if MISSING[missing]:
        loss["missing_labels"] = MISSING[missing]
    if missing in MARGINAL_DICE:
        for term in loss["terms"]:
            if term["type"] == "dice":
                term["marginal"] = True
    loss["terms"] += copy.deepcopy(EXTRA_TERMS.get(missing, []))
    return loss


@dataclass
class Plan:
    datasets: List[str] = field(default_factory=lambda: ["shapes", "nuclei", "buildings", "lesions"])
    drop_fractions: List[float] = field(default_factory=lambda: [0.0, 0.3, 0.6])
    terms: List[str] = field(default_factory=lambda: ["ce", "ce_dice"])
    weightings: List[str] = field(
        default_factory=lambda: ["none", "median_frequency_clipped", "median_frequency_clipped_decay"])
    missing: List[str] = field(default_factory=lambda: ["none", "marginal"])
    # One seed over the grid (4 data sets x 3 drops x 12 cells = 144 trainings); add seeds for the
    # cells a conclusion depends on with a second run in the same --work-dir (rows accumulate).
    seeds: List[int] = field(default_factory=lambda: [0])
    # of PIXEL_WEIGHTS, crossed with the other axes
    pixel_weights: List[str] = field(default_factory=lambda: ["none"])
    num_images: int = 200
    test_images: int = 60
    size: int = 64
    # cap; a cell stops earlier when val mIoU has not improved for `patience` epochs. The session-7 rows
    # (docs/results/long_budget) chose 150 / 20 / 50 over 100 / 10 / 25: with patience 10 after epoch 25
    # lesions under plain CE stopped at 0.555 +- 0.166 (0.754 +- 0.045 with this budget), shapes at 0.691
    # (0.738), and all 48 of the longer trainings stopped on their plateau before the cap
    max_epochs: int = 150
    patience: int = 20
    batch_size: int = 16
    # training.lr_schedule.type of every cell; plateau halves the rate after 3 epochs without a better
    # val mIoU, so a training that stops early has settled at a lower rate rather than stopped on a
    # noisy curve at the peak rate (constant 3e-3 swung +-0.05 between epochs on shapes)
    lr_schedule: str = "plateau"
    # no stop or rate cut before this many epochs (training.min_epochs): lesions under plain CE sat on
    # background (val mIoU flat at 0.23) for 16 epochs and was stopped there; another cell broke out at 16
    min_epochs: int = 50
    # data.split_by of every group's pipeline: "group" keeps overlapping crops of one source block on one side
    # of the train / eval split (the sample data's groups.json), so validation does not score training crops
    split_by: str = "record"
    # --config: the file, and its values the cells use (pipeline/experiment_config.py: the fields the
    # experiment owns left out); empty: the defaults
    config: Optional[str] = None
    config_values: dict = field(default_factory=dict)

    @classmethod
    def quick(cls) -> "Plan":
        return cls(datasets=["shapes"], drop_fractions=[0.3], terms=["ce"], weightings=["none"],
                   missing=["none", "marginal"], seeds=[0], num_images=32, test_images=8, size=32, max_epochs=2,
                   patience=1, batch_size=8, min_epochs=2)  # min_epochs: what min(50, max_epochs) trained

    def cells(self) -> List[tuple]:
        """(terms, weighting, missing), with the weight map as a fourth part where there is one."""
        return [(t, w, m, *([p] if p != "none" else [])) for t in self.terms for w in self.weightings
                for m in self.missing for p in self.pixel_weights]

    def check(self) -> None:
        """Every name known and every cell's loss a valid LossConfig, before the first training."""
        from segbalance.contract import UserError
        from segbalance.trainer.loss_config import loss_config
        from segbalance.trainer.typed_config import ConfigError

        for option, values, known in (("--datasets", self.datasets, DATASETS), ("--terms", self.terms, TERMS),
                                      ("--weightings", self.weightings, WEIGHTINGS),
                                      ("--missing", self.missing, MISSING),
                                      ("--pixel-weights", self.pixel_weights, PIXEL_WEIGHTS)):
            unknown = [v for v in values if v not in known]
            if unknown or not values:
                raise UserError(f"{option}: {', '.join(unknown) or 'nothing given'}; choose from {', '.join(known)}")
            twice = sorted({v for v in values if values.count(v) > 1})
            if twice:  # (QA 25: each cell of such a name trained twice, two rows)
                raise UserError(f"{option}: {', '.join(twice)} given twice; name each once")
        bad = [d for d in self.drop_fractions if not 0.0 <= d < 1.0]
        if bad or not self.drop_fractions:
            raise UserError(f"--drops: {bad or 'nothing given'}; each must be in [0, 1)")
        if len(set(self.drop_fractions)) != len(self.drop_fractions):
            raise UserError(f"--drops: {self.drop_fractions}: a drop rate given twice; name each once")
        if self.max_epochs < 1 or self.patience < 1 or self.min_epochs < 0 or not self.seeds:
            raise UserError("--max-epochs and --patience must be >= 1, --min-epochs >= 0 and --seeds must name at "
                            "least one seed")
        from segbalance.trainer.training_config import SEED_RANGE

        bad_seeds = [s for s in self.seeds if not SEED_RANGE[0] <= s <= SEED_RANGE[1]]
        if bad_seeds or len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"--seeds: {bad_seeds or self.seeds}: give distinct seeds from 0 to 2**32 - 1 (a seed "
                            f"twice would train the same cell twice)")
        if self.num_images < 1 or self.test_images < 1:
            raise UserError(f"--num-images and --test-images must be >= 1, got {self.num_images} and "
                            f"{self.test_images}")
        if self.split_by not in SPLITS:
            raise UserError(f"--split-by: {self.split_by}; choose from {', '.join(SPLITS)}")
        if self.lr_schedule not in SCHEDULES:
            raise UserError(f"--lr-schedule: {self.lr_schedule}; choose from {', '.join(SCHEDULES)}")
        # as a cell trains: the --config file's values (if any) under this plan's protocol; without a file
        # --size and --batch-size are checked here too (a bad one failed in the first group's pipeline)
        from segbalance.pipeline.config import config_from_dict
        from segbalance.pipeline.experiment_config import merged

        try:
            config_from_dict(merged(self.config_values, {"training": {**cell_training(self), **unet_depth(self)}}))
        except ConfigError as exc:
            where = (f"--config {self.config} under this experiment's options" if self.config or self.config_values
                     else "--size / --batch-size")
            raise UserError(f"{where}: {exc}") from None
        seen = {}
        for cell in self.cells():
            loss = cell_loss(*cell[:3])
            try:
                loss_config(loss)
            except ConfigError as exc:
                raise UserError(f"cell {cell_name(*cell)}: {exc}") from None
            same = seen.setdefault(json.dumps([loss, cell_pixel_weights(cell)], sort_keys=True), cell)
            if same != cell:  # e.g. marginal_dice with terms that have no Dice term: marginal's loss
                raise UserError(f"cells {cell_name(*same)} and {cell_name(*cell)} are the same loss and would "
                                f"train twice: leave one of {same[2]} / {cell[2]} out of --missing, or give "
                                f"--terms with a dice term")


RESULTS_LOG = "results.jsonl"


def is_results_file(path: Path) -> bool:
    """Whether ``path`` is an experiment's results.json (the sign of an --output from before markers): a JSON
    object with its plan, rows and command. A results.json of another tool's is not (QA 56: it was overwritten)."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and {"plan", "results", "command"} <= set(report)


def is_results_log(path: Path) -> bool:
    """Whether ``path`` is an experiment's results.jsonl (a --work-dir from before markers): its first row is a
    training's."""
    try:
        with open(path, encoding="utf-8") as f:
            row = json.loads(next((line for line in f if line.strip()), "null"))
    except (OSError, ValueError):
        return False
    return isinstance(row, dict) and {"group", "dataset", "loss", "miou"} <= set(row)


def load_results(work: Path, report_only: bool = False) -> list:
    """The rows of WORK/results.jsonl (the last one of a cell trained twice with the same values,
    ``trained_with``; a cell trained with other values has a row for each). A damaged last line (the
    run was stopped while appending it) is moved to results.jsonl.partial, so that cell trains again
    and the next row is not glued to it; with ``report_only`` it is left out with a note and nothing is
    written (a report may read while a training appends). A damaged line before the last is a UserError
    naming it."""
    from segbalance.contract import UserError

    path = work / RESULTS_LOG
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    rows = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if any(rest.strip() for rest in lines[number:]):
                raise UserError(f"{path} line {number} is not a JSON row (the file was edited or damaged); "
                                f"repair or remove that line") from None
            if report_only:
                print(f"experiment: the last line of {path} is not a whole row (a training appending it, or a run "
                      f"stopped while it did); left out of this report, the file is not changed", flush=True)
                break
            with open(path.with_name(RESULTS_LOG + ".partial"), "a") as kept:
                kept.write(line + "\n")
            path.write_text("".join(f"{ok}\n" for ok in lines[:number - 1]))
            print(f"experiment: the last row of {path} was cut short (a stopped run); moved to "
                  f"{path.name}.partial, its cell trains again", flush=True)
            break
        rows[row_key(row)] = row
    return list(rows.values())


# --------------------------------------------------------------------------- data
def _sample(folder: Path, **options) -> Path:
    from segbalance.pipeline.sample_data import cached_sample

    cached_sample(folder, **options)
    return folder


def dataset_folders(dataset: str, plan: Plan, drop: float, work: Path) -> tuple:
    """(training folder with ``drop`` applied, held-out test folder with complete masks). Shapes:
    the test images come from another seed; real kinds: from ``--part test`` of their images."""
    part = {} if dataset == "shapes" else {"part": "train"}
    train = _sample(work / f"{dataset}_drop{drop}", kind=dataset, size=plan.size, num_images=plan.num_images, seed=0,
                    drop_fraction=drop, **part)
    return train, test_folder(dataset, plan, work)


def test_folder(dataset: str, plan: Plan, work: Path) -> Path:
    """``work/<dataset>_test``: ``plan.test_images`` held-out crops with complete masks (see dataset_folders)."""
    held_out = {"seed": 1000} if dataset == "shapes" else {"seed": 1, "part": "test"}
    return _sample(work / f"{dataset}_test", kind=dataset, size=plan.size, num_images=plan.test_images, **held_out)


def reported_test_folder(dataset: str, plan: Plan, work: Path) -> Path:
    """The test set whose pictures a ``--report-only`` report shows: the work folder's own, as the
    run of the rows left it, whatever plan wrote it (a report never rewrites the work folder: a
    plain call on a ``--quick`` work folder used to replace its test set with the full plan's);
    without one, a new one in ``work/report_test``."""
    from segbalance.pipeline.sample_data import SAMPLE_MARKER

    own = work / f"{dataset}_test"
    if (own / SAMPLE_MARKER).is_file():
        return own
    return test_folder(dataset, plan, work / "report_test")


def load_test_items(folder: Path, mask_sub: str = "masks"):
    from segbalance.trainer.example_codec import decode_array

    items = []
    for path in sorted((folder / "images").glob("*.png")):
        mask = decode_array((folder / mask_sub / path.name).read_bytes())
        items.append((path.stem, path.read_bytes(), mask))
    return items


# --------------------------------------------------------------------------- runs
def pipeline_artifacts(config) -> dict:
    """Run the pipeline for ``config``; return the URIs the trainer cells reuse."""
    from segbalance.contract import CLASS_STATS_TYPE
    from segbalance.pipeline.run import run_local
    from segbalance.pipeline.run_summary import latest_artifact, open_store

    summary = run_local(config, with_report=False)
    store = open_store(summary["metadata"])
    return {
        "examples": latest_artifact(store, "Examples").uri,
        "transform_graph": latest_artifact(store, "TransformGraph").uri,
        "class_stats": latest_artifact(store, CLASS_STATS_TYPE).uri,
        "pipeline_miou": summary.get("miou"),
    }


def resolve_loss(loss: dict, class_stats_uri: str, stats_changes: Optional[dict] = None, base_stats=None) -> dict:
    """The cell's loss config; with ``stats_changes`` (StatsConfig fields over ``base_stats``) its
    class-weight scheme becomes the explicit vector computed from the ClassStats counts with them."""
    from segbalance.pipeline.config import StatsConfig
    from segbalance.trainer.class_stats_io import read_class_stats
    from segbalance.trainer.class_weights import compute_class_weights
    from segbalance.trainer.typed_config import from_dict, to_dict

    loss = copy.deepcopy(loss)
    scheme = loss.get("class_weights")
    if stats_changes and isinstance(scheme, str):
        stats_config = from_dict(StatsConfig, {**to_dict(base_stats or StatsConfig()), **stats_changes}, "stats")
        stats = read_class_stats(class_stats_uri)
        loss["class_weights"] = compute_class_weights(stats["pixel_counts"], scheme,
                                                      present_image_pixels=stats.get("present_image_pixels"),
                                                      **stats_config.weight_options()).tolist()
    return loss


def train_cell(artifacts: dict, base_cfg: dict, loss: dict, seed: int, workdir: Path, plan: Plan,
               pixel_weights: str = "none") -> dict:
    """One training with segbalance.trainer.task.run_fn on the pipeline's artifacts (``base_cfg``: the
    pipeline's trainer custom_config; the cell changes its loss, weight map (a PIXEL_WEIGHTS name) and
    seed, trains up to ``max_epochs`` with early stopping after ``patience`` epochs without a better val
    mIoU, best epoch restored)."""
    from tfx.components.trainer.fn_args_utils import FnArgs

    from segbalance.trainer.task import SUMMARY_FILE, run_fn

    shutil.rmtree(workdir, ignore_errors=True)
    cfg = copy.deepcopy(base_cfg)
    cfg["training"].update({**cell_training(plan), "loss": loss, "seed": seed,
                            "pixel_weights": copy.deepcopy(PIXEL_WEIGHTS[pixel_weights])})
    freeze = plan.config_values.get("training", {}).get("freeze_encoder_epochs")
    if freeze is not None:  # the group's 1-epoch pipeline run held it to 1
        cfg["training"]["freeze_encoder_epochs"] = freeze
    train_files = [os.path.join(artifacts["examples"], "Split-train", "*")]
    # the trainer's backup (keyed by config and training files) beside the cell folder, which a retry clears:
    # a stopped cell resumes from its last epoch, never from another configuration's
    cfg["training"]["backup_dir"] = str(workdir.parent)
    cfg["class_stats_uri"] = artifacts["class_stats"]
    fn_args = FnArgs(
        train_files=train_files,
        eval_files=[os.path.join(artifacts["examples"], "Split-eval", "*")],
        transform_output=artifacts["transform_graph"], serving_model_dir=str(workdir / "serving"),
        model_run_dir=str(workdir / "run"), custom_config=cfg)
    started = time.time()
    run_fn(fn_args)
    summary = json.loads((workdir / "run" / SUMMARY_FILE).read_text())
    curve = summary["history"].get("val_miou", [])
    return {"serving_dir": str(workdir / "serving"), "seconds": round(time.time() - started, 1),
            "history": summary["history"], "class_weights": summary["class_weights"],
            "epochs_run": len(summary.get("epochs_run", curve)),
            # 0-based; from run_fn's summary when it reports them, else from the curve
            "best_epoch": summary.get("best_epoch", int(np.argmax(curve)) if curve else None),
            "stopped_epoch": summary.get("stopped_epoch")}


def train_and_score(logs_dir: Path, train: Callable[[], dict], score: Callable[[str], dict]):
    """(train(), score(its serving_dir)) with library output (TensorFlow's C++ log lines, grappler's
    "Error in PredictCost()", Keras warnings) in ``logs_dir/run-<time>.log``, as `segbalance run`
    keeps it off the console; Keras progress and our lines (stdout) still show."""
    from segbalance.pipeline.run_log import LibraryLog

    with LibraryLog(logs_dir):
        outcome = train()
        return outcome, score(outcome["serving_dir"])


def evaluate(serving_dir: str, items, num_classes: int, ignore_index: int) -> dict:
    from segbalance.components import evaluation_metrics
    from segbalance.components.seg_evaluator import confusion_over, load_predictor

    cm = confusion_over(load_predictor(serving_dir), items, num_classes, ignore_index)
    return evaluation_metrics.summarize(cm)


def cell_training(plan: Plan) -> dict:
    """The training fields the experiment's protocol sets for every cell (the loss, seed and weight
    map are the cell's own)."""
    return {"image_size": [plan.size, plan.size], "batch_size": plan.batch_size, "epochs": plan.max_epochs,
            "early_stopping_patience": plan.patience, "restore_best": True, "lr_schedule": {"type": plan.lr_schedule},
            "min_epochs": min(plan.min_epochs, plan.max_epochs)}


def unet_depth(plan: Plan) -> dict:
    """The U-Net's depth for the crop size, unless the --config file sets one."""
    if "depth" in plan.config_values.get("training", {}):
        return {}
    return {"depth": 3 if plan.size % 8 == 0 else 2}


def experiment_config(plan: Plan, data_dir: Path, output_dir: Path, class_names: List[str], seed: int = 0):
    """The pipeline run that makes a group's artifacts (its own SegTrainer trains 1 epoch: the cells train)."""
    from segbalance.pipeline.config import config_from_dict
    from segbalance.pipeline.experiment_config import merged

    training = {"image_size": [plan.size, plan.size], "epochs": 1, "batch_size": plan.batch_size,
                "loss": {"terms": [CE]}, "seed": seed, **unet_depth(plan)}
    freeze = plan.config_values.get("training", {}).get("freeze_encoder_epochs")
    if freeze:  # this pipeline's own SegTrainer trains 1 epoch (the cells train); train_cell puts it back
        training["freeze_encoder_epochs"] = min(int(freeze), 1)
    return config_from_dict(merged(plan.config_values, {
        "name": "segbalance-experiment", "output_dir": str(output_dir),
        "data": {"dir": str(data_dir), "split_by": plan.split_by},
        "classes": {"names": list(class_names)},
        # unclipped weights in the artifact: a "_clipped" cell clips its own (STATS_CHANGES), the others must not
        "stats": {"clip": None},
        "training": training,
        "evaluation": {"miou_threshold": 0.0, "tolerance": 1.0},
    }))


def row_key(row: dict) -> tuple:
    return row["group"], row["loss"], row["seed"], trained_with(row)


def plan_values(plan: Plan, test_images: Optional[int] = None) -> dict:
    """The values a row trained under ``plan`` records (``trained_with``); ``test_images``: the size
    of the test set its group is scored on (default the plan's)."""
    from segbalance.pipeline.experiment_config import config_digest, defaults_digest

    return {"config_digest": config_digest(plan.config_values), "defaults_digest": defaults_digest(),
            **{key: getattr(plan, key) for key in PROTOCOL}, "min_epochs": min(plan.min_epochs, plan.max_epochs),
            **({} if test_images is None else {"test_images": test_images})}


def values_digest(values: dict) -> str:
    """8 hex digits naming ``plan_values``: a cell's folder per set of values it is trained with."""
    from segbalance.pipeline.experiment_config import json_digest

    return json_digest(values, 8)


def describe_values(values: dict) -> List[str]:
    """``{"max_epochs": 100, "config_digest": None}`` as the options: ["no --config", "--max-epochs 100"]."""
    out = []
    for key, value in values.items():
        if key == "config_digest":
            out.append(f"--config values of digest {value}" if value else "no --config")
        elif key == "defaults_digest":
            out.append(f"code whose training defaults have digest {value}")
        else:
            out.append(f"--{key.replace('_', '-')} {value}")
    return out


def protocol_differences(row: dict, plan: Plan, test_images: Optional[int] = None) -> str:
    """The options a row was trained with that differ from ``plan`` ("--max-epochs 100"), "" when it
    was trained as ``plan`` trains; rows from before a field was recorded are not compared on it (a row
    without ``config_digest`` was trained before --config existed: with the defaults)."""
    return value_differences(row, plan_values(plan, test_images))


def value_differences(row: dict, wanted: dict) -> str:
    """``protocol_differences`` against ``wanted`` (``plan_values``)."""
    return ", ".join(describe_values({key: value for key, value in trained_with(row) if value != wanted[key]}))


def rows_plan(plan: dict, results: list) -> dict:
    """``results.json``'s ``plan`` for a ``--report-only`` call: the values its rows were trained with,
    not the call's own options (its default ``--max-epochs`` is not what rows trained with 150 had).
    A PROTOCOL field every row records takes their value, None where they differ (``training_sets``
    lists the sets); data sets, drop rates and seeds are the rows'; the rest stay the call's."""
    plan = dict(plan)
    if not results:
        return plan
    for key in PROTOCOL:
        if all(key in row for row in results):
            values = {row[key] for row in results}
            plan[key] = values.pop() if len(values) == 1 else None
    plan["datasets"] = list(dict.fromkeys(row["dataset"] for row in results))
    plan["drop_fractions"] = sorted({row["drop"] for row in results})
    plan["seeds"] = sorted({row["seed"] for row in results})
    return plan


def complete_twin(done: dict, group: str, cell: tuple, seed: int) -> Optional[dict]:
    """The row in ``done`` that is ``cell``'s training when every class is annotated in every image:
    the same terms, weighting and weight map with another missing-label handling (all of them are then the plain
    loss), the "none" cell first; None for a "none" cell or when there is no such row."""
    if cell[2] == "none":
        return None
    for missing in ("none", *(m for m in MISSING if m not in ("none", cell[2]))):
        row = done.get((group, cell_name(cell[0], cell[1], missing, *cell[3:]), seed))
        if row:
            return row
    return None


def run_group(dataset: str, drop: float, plan: Plan, config, items, work: Path, results: list,
              keep: set = frozenset(), commit: Optional[str] = "") -> None:
    """Every (cell, seed) of one data set at one drop rate; rows go to ``results`` and results.jsonl.
    Cells in ``keep`` keep their serving model (for the example pictures). ``commit``: the code's
    ``source_commit()`` when the experiment started (default: taken now), recorded as each row's
    ``code_commit``."""
    from segbalance.pipeline.dag import trainer_custom_config

    # the code that trains: taken before the first training, not when a row is written (session 35: a checkout
    # moved on during a 49-minute training, and the row named the new commit)
    commit = source_commit() if commit == "" else commit
    name = f"{dataset}_drop{drop}"
    # only rows trained with this run's values count as done (and as a fully annotated cell's twin); a row
    # trained with other values (another --config, --max-epochs, ...) stays in results.jsonl beside the new one
    done, other, wanted = {}, {}, plan_values(plan, len(items))
    for r in results:
        if r["group"] == name:
            differences = value_differences(r, wanted)
            (other if differences else done)[(r["group"], r["loss"], r["seed"])] = differences or r
    todo = []
    for cell in plan.cells():
        for seed in plan.seeds:
            # a row without its kept model (a resumed run on another machine) is reused all the same: the
            # example pictures then show the cells whose models are there
            key = (name, cell_name(*cell), seed)
            if key in done:
                print(f"experiment: [{name}] {cell_name(*cell)} seed {seed}: done earlier, reused", flush=True)
                continue
            if key in other:
                print(f"experiment: [{name}] {cell_name(*cell)} seed {seed}: its row in {RESULTS_LOG} was trained "
                      f"with {other[key]}: trained again with this run's values (that row stays)", flush=True)
            todo.append((cell, seed))
    if not todo:
        return
    complete = fully_annotated(Path(config.data.dir), config.num_classes)
    artifacts = None
    for cell, seed in todo:
        loss_name, kept = cell_name(*cell), (cell, seed) in keep
        twin = complete_twin(done, name, cell, seed) if complete else None
        if twin:
            # Every class annotated in every image: each missing-label handling is the plain loss (losses.py),
            # so this cell's training is the twin's; its row is the trained one's, marked as such (with its
            # model for the example pictures when this cell is one of them and the twin kept it).
            trained = twin.get("same_training_as") or twin["loss"]
            row = {**{k: v for k, v in twin.items() if k != "serving_dir" or kept}, "loss": loss_name,
                   "missing": cell[2], "same_training_as": trained}
            _record(row, results, work)
            print(f"experiment: [{name}] {loss_name} seed {seed}: every image fully annotated, the same training "
                  f"as {trained} (test mIoU {row['miou']:.4f})", flush=True)
            continue
        if artifacts is None:
            print(f"experiment: [{name}] pipeline for {config.data.dir}", flush=True)
            artifacts = pipeline_artifacts(config)
            base_cfg = trainer_custom_config(config)
        # the values it trains with in the name: a cell trained again with others in the same --work-dir wrote
        # over the model the earlier row kept (QA 25: its examples and --rescore then showed the new model)
        cell_dir = work / "cells" / f"{name}-{loss_name.replace('/', '-')}-{seed}-{values_digest(wanted)}"
        loss = resolve_loss(cell_loss(*cell[:3]), artifacts["class_stats"], STATS_CHANGES.get(cell[1]), config.stats)
        outcome, scores = train_and_score(work / "logs", lambda: train_cell(
            artifacts, base_cfg, loss, seed, cell_dir, plan, cell_pixel_weights(cell)),
            lambda served: evaluate(served, items, config.num_classes, config.classes.ignore_index))
        row = {"group": name, "dataset": dataset, "drop": drop, "loss": loss_name, "terms": cell[0],
               "weighting": cell[1], "missing": cell[2], "pixel_weights": cell_pixel_weights(cell), "seed": seed,
               "miou": scores["miou"], "per_class_iou": scores["per_class_iou"],
               "class_names": list(config.classes.names), "max_epochs": plan.max_epochs, "patience": plan.patience,
               "lr_schedule": plan.lr_schedule, "min_epochs": min(plan.min_epochs, plan.max_epochs),
               "num_images": plan.num_images,
               "test_images": len(items), "size": plan.size, "batch_size": plan.batch_size, "validation": VALIDATION,
               "split_by": plan.split_by, "config_digest": wanted["config_digest"],
               "defaults_digest": wanted["defaults_digest"], "code_commit": commit, "machine": machine_name(),
               **({"config": plan.config} if wanted["config_digest"] else {}),  # the file, for the report
               **{k: outcome[k] for k in ("seconds", "history", "class_weights", "epochs_run", "best_epoch",
                                          "stopped_epoch")}}
        if kept:
            row["serving_dir"] = outcome["serving_dir"]
        else:
            shutil.rmtree(cell_dir, ignore_errors=True)
        _record(row, results, work)
        done[(name, loss_name, seed)] = row
        print(f"experiment: [{name}] {loss_name} seed {seed}: test mIoU {scores['miou']:.4f}, "
              f"{counted(outcome['epochs_run'], 'epoch')}, best epoch {(outcome['best_epoch'] or 0) + 1} "
              f"({outcome['seconds']}s)", flush=True)


def _record(row: dict, results: list, work: Path) -> None:
    key = row_key(row)
    results[:] = [r for r in results if row_key(r) != key]
    results.append(row)
    with open(work / RESULTS_LOG, "a") as log:  # a crashed or stopped run resumes from here
        log.write(json.dumps(row) + "\n")


def fully_annotated(folder: Path, num_classes: int) -> bool:
    """True when ``folder/labeled.json`` (or its absence) says every image has every class annotated."""
    path = folder / "labeled.json"
    if not path.is_file():
        return True
    return all(set(range(num_classes)) <= set(ids) for ids in json.loads(path.read_text()).values())


def example_cells(plan: Plan) -> set:
    """At most 4 cells whose models are kept for the example pictures: the first terms, with and
    without the first weighting and missing-label handling, first seed."""
    weightings = list(dict.fromkeys([plan.weightings[0], plan.weightings[-1]]))
    missing = list(dict.fromkeys([plan.missing[0], plan.missing[-1]]))
    maps = [] if plan.pixel_weights[0] == "none" else [plan.pixel_weights[0]]
    return {((plan.terms[0], w, m, *maps), plan.seeds[0]) for w in weightings for m in missing}


# option of `segbalance experiment` -> the row field it selects on with --report-only
ROW_FIELDS = {"datasets": "dataset", "drops": "drop", "terms": "terms", "weightings": "weighting",
              "missing": "missing", "pixel_weights": "pixel_weights", "seeds": "seed", "cells": "loss"}
# the value of a row field that rows written before it was recorded had
ROW_DEFAULTS = {"pixel_weights": "none"}


def row_selector(args, plan: Optional[Plan] = None) -> Callable[[dict], bool]:
    """The rows a report covers: those matching every one of these options the user gave (a
    report of seed 0 only, or of the leading cells over three seeds, from one work folder); with
    ``--config`` (``plan.config``), those trained with its values."""
    from segbalance.pipeline.experiment_config import config_digest

    chosen = {field_: getattr(args, option) for option, field_ in ROW_FIELDS.items()
              if getattr(args, option, None) is not None}
    if plan is not None and plan.config:
        chosen["config_digest"] = [config_digest(plan.config_values)]
    return lambda row: all(row.get(field_, ROW_DEFAULTS.get(field_)) in values for field_, values in chosen.items())


def rescore_rows(rows: list, tests: dict) -> list:
    """Each row whose serving model is still in its folder, scored again on ``tests[dataset]`` (a
    test folder, e.g. one with more crops than the run's); its earlier score kept under
    ``earlier_score``. Rows without their model are left out (printed)."""
    scored, items = [], {}
    for row in rows:
        serving_dir = row.get("serving_dir")
        if not serving_dir or not Path(serving_dir).is_dir():
            continue
        folder = tests[row["dataset"]]
        if row["dataset"] not in items:
            items[row["dataset"]] = load_test_items(folder)
        ignore = json.loads((folder / "classes.json").read_text()).get("ignore_index", 255)
        scores = evaluate(serving_dir, items[row["dataset"]], len(row["class_names"]), ignore)
        scored.append({**row, "miou": scores["miou"], "per_class_iou": scores["per_class_iou"],
                       "test_images": len(items[row["dataset"]]),
                       "earlier_score": {k: row[k] for k in ("miou", "per_class_iou")}})
        print(f"experiment: [{row['group']}] {row['loss']} seed {row['seed']}: test mIoU {row['miou']:.4f} on the "
              f"run's test set, {scores['miou']:.4f} on {len(items[row['dataset']])} crops", flush=True)
    if len(scored) < len(rows):
        print(f"experiment: --rescore: {len(rows) - len(scored)} of {counted(len(rows), 'row')} left out, their models are "
              f"gone (the experiment keeps the models of its example cells only)", flush=True)
    return scored


def rescore_plan(plan: Plan, results: list, dataset: str) -> Plan:
    """``plan`` with the crop size the rows of ``dataset`` were trained on: ``--rescore`` scores them on new
    crops of that size (QA 25: rows of 32x32 were scored on the default 64x64 crops). Rows of several sizes:
    UserError (select rows of one size)."""
    import dataclasses

    from segbalance.contract import UserError

    sizes = sorted({row.get("size", plan.size) for row in results if row["dataset"] == dataset})
    if len(sizes) > 1:
        raise UserError(f"--rescore: the selected {dataset} rows were trained on crops of "
                        f"{' and '.join(f'{s}x{s}' for s in sizes)}: rescore rows of one size at a time (select "
                        f"them with --cells / --seeds, or report them from separate work folders)")
    return dataclasses.replace(plan, size=sizes[0]) if sizes else plan


def run_experiment(output: Path, plan: Plan, work: Optional[Path] = None, command: str = "segbalance experiment",
                   report_only: bool = False, select: Optional[Callable[[dict], bool]] = None,
                   rescore: bool = False, mark: bool = False, scratch: bool = False) -> dict:
    """Train what WORK/results.jsonl lacks for this plan's values, then write the report over every
    row there; with ``report_only``, train nothing (a report of the rows so far, e.g. while other runs
    go on) and report only the rows ``select`` keeps (all when None); ``rescore`` (with
    ``report_only``) scores the rows whose models are still there again on this plan's test sets
    (``rescore_rows``). The rows in WORK/results.jsonl are never changed. ``mark``: put the
    experiment's marker in ``output`` and ``work`` where they have none (after the work folder's lock
    is taken: a run the lock refuses writes nothing); ``scratch``: the work folder's marker says it is
    the default scratch folder, which the command removes at the end (a run that stops leaves it to resume)."""
    import contextlib

    from segbalance.pipeline.output_guard import MARKER, check_is_folder, make_folder, write_marker
    from segbalance.pipeline.run_lock import exclusive_run

    plan.check()
    work = Path(work or output / "_work")
    check_is_folder(output, "--output")  # a link to nothing was mkdir's FileExistsError, a traceback (QA 25)
    check_is_folder(work, "--work-dir")
    make_folder(work, "--work-dir")
    # two trainings on one work folder would train the same cells and append the same rows; a
    # report reads the rows while a training goes on, so it takes no lock
    with contextlib.nullcontext() if report_only else exclusive_run(str(work), option="--work-dir"):
        make_folder(output, "--output")
        # before anything else is written (a stopped run resumes here); an existing marker is left as it is, and
        # a report marks no work folder (it holds results.jsonl already)
        for folder in ((output, *(() if report_only else (work,))) if mark else ()):
            if not (folder / MARKER).exists():
                write_marker(folder, "experiment", **({"scratch": True} if scratch and folder == work else {}))
        return _train_and_report(output, plan, work, command, report_only, select, rescore)


def _train_and_report(output: Path, plan: Plan, work: Path, command: str, report_only: bool,
                      select: Optional[Callable[[dict], bool]], rescore: bool) -> dict:
    from segbalance.pipeline import experiment_report, seed004

    started = time.time()
    results: list = load_results(work, report_only=report_only)
    if report_only and select is not None:
        results = [row for row in results if select(row)]
    if report_only and not results:
        from segbalance.contract import UserError

        raise UserError(f"--report-only: no rows to report in {work / RESULTS_LOG}"
                        f"{' match the selection' if select is not None else ''}; check --work-dir and the "
                        f"--datasets / --seeds / --cells given")
    if results or report_only:
        print(f"experiment: {'report of' if report_only else 'resuming,'} {len(results)} trainings already done in "
              f"{work}", flush=True)
    # the pictures' drop: the plan's highest, or on a report the rows' (they may come from another plan)
    example_drop = max(row["drop"] for row in results) if report_only else max(plan.drop_fractions)
    tests = {}
    if report_only:  # no training folders; the test sets of the data sets the rows cover
        for dataset in dict.fromkeys(row["dataset"] for row in results):
            tests[dataset] = (test_folder(dataset, rescore_plan(plan, results, dataset),
                                          work / f"rescore_test{plan.test_images}") if rescore
                              else reported_test_folder(dataset, plan, work))
    else:
        commit = source_commit()  # the code imported now trains every row (a checkout may move on meanwhile)
        for dataset in plan.datasets:
            for drop in plan.drop_fractions:
                train_dir, test_dir = dataset_folders(dataset, plan, drop, work)
                tests[dataset] = test_dir
                names = json.loads((train_dir / "classes.json").read_text())["class_names"]
                config = experiment_config(plan, train_dir, work / f"run_{dataset}_drop{drop}", names)
                keep = example_cells(plan) if drop == example_drop else set()
                run_group(dataset, drop, plan, config, load_test_items(test_dir), work, results, keep, commit)
    if rescore:
        results = rescore_rows(results, tests)
    report = {
        "plan": rows_plan(asdict(plan), results) if report_only else asdict(plan), "results": results,
        "seed004": seed004.revisit(),
        "seconds": round(time.time() - started, 1), "date": time.strftime("%Y-%m-%d"), "command": command,
        "machine": machine_name(),
    }
    experiment_report.write(report, output, {d: load_test_items(t) for d, t in tests.items()}, example_drop)
    if report.get("training_sets"):
        print(f"experiment: the rows were trained with {len(report['training_sets'])} sets of values ("
              f"{'; '.join(s['label'] for s in report['training_sets'])}): results.md reports each set on its own",
              flush=True)
    return report


def machine_name() -> str:
    """The machine, with its CPU model where Linux names it: one commit trains other numbers on the Intel and on
    the AMD machine (QA 93: "x86_64, 2 CPU cores, Linux" told them apart nowhere)."""
    model = None
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    return ", ".join(filter(None, [platform.machine(), model, f"{os.cpu_count()} CPU cores", platform.system()]))


def check_report_kept(output: Path, work: Path, plan: Plan, select: Optional[Callable[[dict], bool]] = None) -> None:
    """Refuse (UserError) to write a report over ``output``'s results.json when it holds trainings that this run's
    report would not: rows neither in ``work``'s results.jsonl (those ``select`` keeps, on a report) nor, on a
    training run (``select`` None), cells of ``plan`` trained with its values. QA 72: `experiment --quick` run in
    the repository replaced the published 96-row report (its default --output is docs/results) with 2 rows."""
    from segbalance.contract import UserError

    path = output / "results.json"
    if not is_results_file(path):
        return
    earlier = json.loads(path.read_text(encoding="utf-8"))["results"]

    def training(row: dict) -> tuple:  # ``row_key`` but the test set: --rescore rewrites it (QA 75)
        return row["group"], row["loss"], row["seed"], tuple(v for v in trained_with(row) if v[0] != "test_images")

    with contextlib.redirect_stdout(io.StringIO()):  # (its note on a cut last row is load_results' to print)
        kept = {training(row) for row in load_results(work, report_only=True) if select is None or select(row)}
    planned = set() if select is not None else {
        (f"{dataset}_drop{drop}", cell_name(*cell), seed)
        for dataset in plan.datasets for drop in plan.drop_fractions for cell in plan.cells() for seed in plan.seeds}

    # scored on this plan's test set too (QA 75: the row's own was compared)
    wanted = plan_values(plan, plan.test_images)

    def trained_again(row: dict) -> bool:
        return (row["group"], row["loss"], row["seed"]) in planned and not value_differences(row, wanted)

    lost = [row for row in earlier if training(row) not in kept and not trained_again(row)]
    if lost:
        example = lost[0]
        raise UserError(f"--output {output} holds a report of {counted(len(earlier), 'training')}, "
                        f"{len(lost)} of them neither in {work / RESULTS_LOG} nor trained by this run (e.g. "
                        f"{example['group']} {example['loss']} seed {example['seed']}), which its report would "
                        f"replace: give another --output, the --work-dir that holds them, or --overwrite")


def _names(text: str) -> List[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _numbers(kind: type, one: str, many: str, example: str) -> Callable[[str], list]:
    """An argparse type: comma-separated ``kind`` values; ArgumentTypeError naming the one that is not
    (argparse said "invalid <lambda> value")."""
    def parse(text: str) -> list:
        values = []
        for item in _names(text):
            try:
                values.append(kind(item))
            except ValueError:
                raise argparse.ArgumentTypeError(f"{item!r} is not {one}; give comma-separated {many}, e.g. "
                                                 f"{example}") from None
        return values
    return parse


_floats = _numbers(float, "a number", "numbers", "0,0.3,0.6")
_ints = _numbers(int, "an integer", "integers", "0,1,2")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "experiment", help="train to convergence and compare losses across data sets (tables and plots)",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Plan()
    parser.add_argument("--output", default="docs/results", help="where results.md and the plots go")
    parser.add_argument("--quick", action="store_true", help="shapes, 2 cells, 1 seed, 2 epochs (a few minutes)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: tables and plots of the rows in WORK/results.jsonl so far (needs "
                             "--work-dir); --datasets, --drops, --terms, --weightings, --missing, --pixel-weights, "
                             "--seeds and --cells, when given, select the rows")
    parser.add_argument("--rescore", action="store_true",
                        help="with --report-only: score the selected rows whose models are still in the work "
                             "folder again on --test-images held-out crops, written to WORK/rescore_testN (rows "
                             "without their model are left out)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a report in --output that holds trainings this run's work folder does not "
                             "(refused otherwise)")
    parser.add_argument("--work-dir", help="scratch folder (default OUTPUT/_work, removed at the end); "
                        "give one to resume a stopped run")
    parser.add_argument("--datasets", type=_names, help=f"comma-separated, of {', '.join(DATASETS)} "
                        f"(default {','.join(default.datasets)})")
    parser.add_argument("--drops", type=_floats, help="annotation drop fractions (default 0,0.3,0.6)")
    parser.add_argument("--terms", type=_names, help=f"of {', '.join(TERMS)} (default {','.join(default.terms)})")
    parser.add_argument("--weightings", type=_names, help=f"of {', '.join(WEIGHTINGS)} "
                        f"(default {','.join(default.weightings)})")
    parser.add_argument("--missing", type=_names, help=f"of {', '.join(MISSING)} (default {','.join(default.missing)})")
    parser.add_argument("--pixel-weights", type=_names,
                        help=f"weight maps (training.pixel_weights at their defaults), of {', '.join(PIXEL_WEIGHTS)} "
                             f"(default none)")
    parser.add_argument("--seeds", type=_ints, help="default 0")
    parser.add_argument("--cells", type=_names,
                        help="with --report-only: report only these cells (TERMS/WEIGHTING/MISSING[/PIXEL_WEIGHTS], "
                             "comma-separated)")
    parser.add_argument("--config", metavar="FILE",
                        help="a segbalance config (YAML/JSON, as for `run --config`): the model, optimizer, "
                             "augmentation, stats options and the rest of training the cells use; the fields the "
                             "experiment sets itself (data, classes, loss, seed, epochs, patience, rate schedule, "
                             "image and batch size, ...) are not used, and a note says which")
    parser.add_argument("--lr-schedule", choices=SCHEDULES, help=f"default {default.lr_schedule}")
    parser.add_argument("--split-by", choices=SPLITS,
                        help=f"data.split_by of the pipeline runs (default {default.split_by}; group: the sample "
                             f"data's crop blocks stay on one side of train / eval)")
    for option, kind in (("--max-epochs", int), ("--patience", int), ("--min-epochs", int), ("--num-images", int),
                         ("--test-images", int), ("--size", int), ("--batch-size", int)):
        attr = option[2:].replace("-", "_")
        parser.add_argument(option, type=kind, help=f"default {getattr(default, attr)}")
    parser.set_defaults(func=_main)


# the options the recorded command names (with --quick, --report-only and --rescore): all, so it runs again as written
ARG_NAMES = ("output", "work_dir", "config", "datasets", "drops", "terms", "weightings", "missing", "pixel_weights",
             "seeds", "cells", "max_epochs", "patience", "num_images", "test_images", "size", "batch_size",
             "lr_schedule", "min_epochs", "split_by")


def plan_from_args(args) -> Plan:
    plan = Plan.quick() if args.quick else Plan()
    for attr, value in (("datasets", args.datasets), ("drop_fractions", args.drops), ("terms", args.terms),
                        ("weightings", args.weightings), ("missing", args.missing),
                        ("pixel_weights", args.pixel_weights), ("seeds", args.seeds),
                        ("max_epochs", args.max_epochs), ("patience", args.patience),
                        ("num_images", args.num_images), ("test_images", args.test_images), ("size", args.size),
                        ("batch_size", args.batch_size), ("lr_schedule", args.lr_schedule),
                        ("min_epochs", args.min_epochs), ("split_by", args.split_by)):
        if value is not None:
            setattr(plan, attr, value)
    if args.min_epochs is not None and args.min_epochs > plan.max_epochs:  # (the default 50 is held to the cap)
        from segbalance.contract import UserError

        raise UserError(f"--min-epochs {args.min_epochs} is more than --max-epochs {plan.max_epochs}: no training "
                        f"could stop before the cap; give a --min-epochs of at most {plan.max_epochs}")
    if getattr(args, "config", None):
        from segbalance.pipeline.config import read_values
        from segbalance.pipeline.experiment_config import owned_notes, split_owned

        plan.config = args.config
        plan.config_values, dropped = split_owned(read_values(args.config))
        for note in owned_notes(dropped, args.config):
            print(f"note: {note}", flush=True)
    plan.check()
    return plan


def _main(args) -> int:
    plan = plan_from_args(args)  # a bad option: one line before anything is imported or written
    from segbalance.contract import UserError
    from segbalance.pipeline.output_guard import check_is_folder, check_literal_path, check_output_folder, read_marker

    if (args.rescore or args.cells) and not args.report_only:
        raise UserError("--rescore and --cells work on the rows of an earlier run: add --report-only and its "
                        "--work-dir")
    for name in args.cells or []:
        parts = name.split("/")
        if (len(parts) not in (3, 4) or parts[0] not in TERMS or parts[1] not in WEIGHTINGS or parts[2] not in MISSING
                or parts[3:] not in ([], *([m] for m in PIXEL_WEIGHTS if m != "none"))):
            raise UserError(f"--cells: {name} is not a cell; write TERMS/WEIGHTING/MISSING[/PIXEL_WEIGHTS], e.g. "
                            f"{cell_name('ce_dice', 'none', 'marginal')} or "
                            f"{cell_name('ce_dice', 'none', 'marginal', 'unet_border')}")

    output = Path(args.output)
    work = Path(args.work_dir) if args.work_dir else output / "_work"
    # removed at the end only when it is the default scratch folder (this run's, or a stopped default run's):
    # an OUTPUT/_work given as --work-dir before, with its rows and models, was resumed from and deleted (QA 25)
    scratch = not args.work_dir and (not work.exists() or (read_marker(work) or {}).get("scratch") is True)
    # it writes results.md, plots and (without --work-dir) deletes OUTPUT/_work at the end: only in a new or
    # empty folder or an earlier experiment's (its marker, or results.json / results.jsonl from before markers);
    # a file there: one line now, not a traceback after the first training
    check_output_folder(output, command="experiment", option="--output", owned=None, key_file="results.json",
                        key_check=is_results_file)
    work_option = "--work-dir" if args.work_dir else "--output (its _work folder)"
    check_literal_path(work, work_option)  # the trainings' run folders are in it
    check_is_folder(work, work_option)
    # OUTPUT/_work too: a user's folder of that name was used and marked (QA 94 L4)
    check_output_folder(work, command="experiment", option=work_option, owned=None, key_file=RESULTS_LOG,
                        key_check=is_results_log)
    if args.report_only and not (work / RESULTS_LOG).is_file():
        raise UserError(f"--report-only: {work} holds no {RESULTS_LOG}; give the --work-dir of an earlier run")
    # what this run was given, so the command in results.md / results.json runs again as it is
    given = [f"--{k.replace('_', '-')} {shlex.quote(','.join(map(str, v)) if isinstance(v, list) else str(v))}"
             for k, v in vars(args).items() if k in ARG_NAMES and v is not None]
    command = " ".join(["segbalance experiment", *(["--quick"] if args.quick else []),
                        *(["--report-only"] if args.report_only else []),
                        *(["--rescore"] if args.rescore else []), *given])
    if args.report_only and not args.work_dir:
        raise UserError("--report-only reports the rows of an earlier run: give its --work-dir")
    select = row_selector(args, plan)
    if not args.overwrite:
        check_report_kept(output, work, plan, select if args.report_only else None)
    report = run_experiment(output, plan, work, command=command, report_only=args.report_only,
                            select=select, rescore=args.rescore, mark=True, scratch=scratch)
    if scratch:
        shutil.rmtree(work, ignore_errors=True)
    elif not args.work_dir:
        print(f"experiment: kept {work} (it was there before this run: its rows and models)", flush=True)
    print(f"experiment: {len(report['results'])} trainings in {report['seconds']}s; "
          f"tables and plots in {output}", flush=True)
    return 0
