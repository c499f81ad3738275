"""`segbalance experiment`: the crossed grid, mean ranks, data folders, and the --quick run end to end."""
import dataclasses
import json
import os
from pathlib import Path
import re
import shutil

import numpy as np
import pytest

from segbalance.contract import UserError
from segbalance.pipeline import cli, experiment_report
from segbalance.pipeline.experiment import VALIDATION, Plan, cell_loss, dataset_folders, load_results, load_test_items
from tests.experiment_fakes import fake_cells, recording_run_fn


def test_cells_cross_terms_weightings_and_missing_label_handling():
    plan = Plan(terms=["ce", "ce_dice"], weightings=["none", "median_frequency_clipped"],
                missing=["none", "marginal"])
    assert len(plan.cells()) == 8 and len(set(plan.cells())) == 8
    assert cell_loss("ce_dice", "median_frequency_clipped", "marginal") == {
        "terms": [{"type": "ce", "weight": 1.0}, {"type": "dice", "weight": 1.0}],
        "class_weights": "median_frequency", "missing_labels": "marginal"}
    assert cell_loss("ce", "none", "none") == {"terms": [{"type": "ce", "weight": 1.0}]}
    decaying = cell_loss("ce", "median_frequency_clipped_decay", "none")
    assert decaying["class_weights"] == "median_frequency" and decaying["class_weight_decay_epochs"] == 20
    Plan(weightings=["median_frequency_clipped_decay"]).check()
    Plan().check()  # the default grid is valid as a whole
    # marginal_dice: marginal CE and a marginal Dice term (a valid LossConfig)
    assert cell_loss("ce_dice", "none", "marginal_dice") == {
        "terms": [{"type": "ce", "weight": 1.0}, {"type": "dice", "weight": 1.0, "marginal": True}],
        "missing_labels": "marginal"}
    assert cell_loss("ce_dice", "none", "marginal")["terms"][1] == {"type": "dice", "weight": 1.0}  # unchanged
    Plan(missing=["marginal_dice"]).check()
    # marginal_exclusion (issue 9's "marginal + exclusion"; QA 86 M1: no option reached it): marginal CE and an
    # exclusion term, after the cell's own terms
    assert cell_loss("ce", "median_frequency", "marginal_exclusion") == {
        "terms": [{"type": "ce", "weight": 1.0}, {"type": "exclusion", "weight": 1.0}],
        "class_weights": "median_frequency", "missing_labels": "marginal"}
    assert [t["type"] for t in cell_loss("ce_dice", "none", "marginal_exclusion")["terms"]] == ["ce", "dice",
                                                                                                  "exclusion"]
    Plan(terms=["ce", "ce_dice"], missing=["none", "marginal", "marginal_exclusion"]).check()


@pytest.mark.parametrize("change, message", [
    ({"datasets": ["shapes", "cats"]}, "--datasets: cats; choose from shapes, nuclei, buildings, lesions, labelme"),
    ({"weightings": []}, "--weightings: nothing given"),
    ({"drop_fractions": [0.3, 1.0]}, "--drops: [1.0]; each must be in [0, 1)"),
    ({"patience": 0}, "--max-epochs and --patience must be >= 1"),
    ({"min_epochs": -1}, "--min-epochs >= 0"),
    ({"lr_schedule": "step"}, "--lr-schedule: step; choose from constant, cosine, polynomial, plateau"),
    # focal has no CE term, so marginal would change nothing: the cell is refused, not trained as focal/none/none
    ({"terms": ["focal"], "missing": ["marginal"]},
     "cell focal/none/marginal: loss.missing_labels: no term of this loss uses it (only ce terms do)"),
    ({"terms": ["focal"], "missing": ["none"]}, None),
    # marginal_dice without a Dice term is marginal's loss: it would train the same cell twice
    ({"terms": ["ce", "ce_dice"], "weightings": ["none"], "missing": ["marginal", "marginal_dice"]},
     "cells ce/none/marginal and ce/none/marginal_dice are the same loss and would train twice"),
    ({"terms": ["ce_dice"], "missing": ["marginal", "marginal_dice"]}, None),
    # these ran the first group's pipeline (minutes) before failing, or trained a cell twice
    ({"seeds": [-1]}, "--seeds: [-1]: give distinct seeds from 0 to 2**32 - 1"),
    ({"seeds": [1, 1]}, "--seeds: [1, 1]: give distinct seeds"),
    ({"test_images": 0}, "--num-images and --test-images must be >= 1, got 200 and 0"),
    # checked without --config too (they failed in the first group's pipeline run)
    ({"size": 0}, "--size / --batch-size: training.image_size: give [height, width], each from 8 to 8192 pixels"),
    ({"size": 30}, "--size / --batch-size: training.image_size: [30, 30] must be divisible by 4"),
    ({"batch_size": 0}, "--size / --batch-size: training.batch_size: must be >= 1"),
])
def test_plan_check_names_the_bad_option(change, message):
    plan = Plan(**change)
    if message is None:
        plan.check()
        return
    with pytest.raises(UserError, match=re.escape(message)):
        plan.check()


def test_pixel_weights_are_a_fourth_axis_named_only_where_a_map_is_used():
    from segbalance.pipeline.experiment import cell_name, example_cells

    plan = Plan(terms=["ce"], weightings=["none"], missing=["none", "marginal"], pixel_weights=["none", "unet_border"])
    plan.check()
    assert plan.cells() == [("ce", "none", "none"), ("ce", "none", "none", "unet_border"),
                            ("ce", "none", "marginal"), ("ce", "none", "marginal", "unet_border")]
    # rows of runs without maps keep their names; a map is the name's fourth part
    assert [cell_name(*c) for c in plan.cells()] == ["ce/none/none", "ce/none/none/unet_border", "ce/none/marginal",
                                                     "ce/none/marginal/unet_border"]
    assert Plan().cells() == [c[:3] for c in Plan().cells()]
    # the example cells carry the first map, so their models are kept when every cell trains with one
    assert example_cells(Plan(terms=["ce"], weightings=["none"], missing=["none"], pixel_weights=["edge"])) == {
        (("ce", "none", "none", "edge"), 0)}
    with pytest.raises(UserError, match=re.escape("--pixel-weights: nothing given")):
        Plan(pixel_weights=[]).check()


def test_a_cell_with_a_weight_map_trains_with_it_and_its_row_says_so(tmp_path, monkeypatch):
    """train_cell puts the map in run_fn's custom_config (a valid TrainerConfig with that map); the
    row records it; a twin for a fully annotated set must have the same map; --pixel-weights selects
    rows, old rows (no field) count as "none"."""
    import argparse

    from segbalance.pipeline import experiment
    from segbalance.pipeline.dag import trainer_custom_config
    from segbalance.trainer import task
    from segbalance.trainer.training_config import UnetBorderWeights

    plan = Plan(datasets=["shapes"], drop_fractions=[0.0], terms=["ce"], weightings=["none"],
                missing=["none", "marginal"], pixel_weights=["unet_border"], num_images=8, test_images=4, size=32,
                max_epochs=2, patience=1, min_epochs=0)
    work = tmp_path / "work"
    train, _ = dataset_folders("shapes", plan, 0.0, work)
    names = json.loads((train / "classes.json").read_text())["class_names"]
    config = experiment.experiment_config(plan, train, work / "run", names)

    seen = []
    monkeypatch.setattr(task, "run_fn", recording_run_fn(work / "cell", seen))
    artifacts = {"examples": "E", "transform_graph": "T", "class_stats": "S"}
    plain_ce = experiment.cell_loss("ce", "none", "none")
    outcome = experiment.train_cell(artifacts, trainer_custom_config(config), plain_ce, 0, work / "cell", plan,
                                    "unet_border")
    assert seen[0].pixel_weights == UnetBorderWeights() and seen[0].epochs == 2 and outcome["best_epoch"] == 1
    shutil.rmtree(work / "cell")
    experiment.train_cell(artifacts, trainer_custom_config(config), plain_ce, 0, work / "cell", plan)
    assert seen[1].pixel_weights is None
    # the backup lies beside the cell folder (a retry clears the cell folder: it restarted from epoch 0),
    # the same for a retry of the same training, another for another configuration
    backups = [Path(t.backup_dir) for t in seen]
    assert all(b.parent == work and b.name.startswith("backup-") for b in backups)
    assert backups[0] != backups[1]
    shutil.rmtree(work / "cell")
    experiment.train_cell(artifacts, trainer_custom_config(config), plain_ce, 0, work / "cell", plan)
    assert Path(seen[2].backup_dir) == backups[1]

    trained = []
    monkeypatch.setattr(experiment, "pipeline_artifacts", lambda config: artifacts)
    monkeypatch.setattr(experiment, "train_cell", lambda *a: trained.append(a[-1]) or {
        "serving_dir": "M", "seconds": 1.0, "history": {}, "class_weights": None, "epochs_run": 2, "best_epoch": 1,
        "stopped_epoch": None})
    monkeypatch.setattr(experiment, "evaluate", lambda *a: {"miou": 0.5, "per_class_iou": [0.5] * 4})
    # a fully annotated set: the row without the map is not this cell's twin
    results = [{**_row("shapes", 0.0, "ce/none/none", 0, 0.9), "terms": "ce", "weighting": "none", "missing": "none"}]
    experiment.run_group("shapes", 0.0, plan, config, [], work, results)
    assert trained == ["unet_border"]
    rows = {r["loss"]: r for r in results}
    assert rows["ce/none/none/unet_border"]["pixel_weights"] == "unet_border"
    assert rows["ce/none/none/unet_border"]["split_by"] == "record"  # the plan's data.split_by, recorded
    assert "same_training_as" not in rows["ce/none/none/unet_border"]
    assert rows["ce/none/marginal/unet_border"]["same_training_as"] == "ce/none/none/unet_border"
    select = experiment.row_selector(argparse.Namespace(pixel_weights=["none"]))
    assert [r["loss"] for r in results if select(r)] == ["ce/none/none"]


def test_split_by_reaches_the_pipeline_config_and_a_reused_row_says_it_was_split_otherwise(tmp_path):
    from segbalance.pipeline.experiment import experiment_config, protocol_differences

    plan = Plan(datasets=["shapes"], split_by="group", num_images=8, size=32)
    plan.check()
    folder = tmp_path / "d"
    (folder / "images").mkdir(parents=True)
    assert experiment_config(plan, folder, tmp_path / "o", ["a", "b"]).data.split_by == "group"
    assert experiment_config(Plan(), folder, tmp_path / "o", ["a", "b"]).data.split_by == "record"
    assert protocol_differences({"split_by": "record"}, plan) == "--split-by record"
    assert protocol_differences({}, plan) == ""  # rows from before the field: not compared
    with pytest.raises(UserError, match=re.escape("--split-by: scene; choose from record, group")):
        Plan(split_by="scene").check()


def test_bad_option_is_one_line_before_anything_runs(tmp_path, capsys):
    assert cli.main(["experiment", "--output", str(tmp_path / "o"), "--weightings", "none,squared"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--weightings: squared; choose from none," in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("options, message", [
    (["--rescore"], "--rescore and --cells work on the rows of an earlier run: add --report-only"),
    (["--cells", "ce/none/none"], "--rescore and --cells work on the rows of an earlier run: add --report-only"),
    (["--report-only", "--work-dir", "W", "--cells", "ce/none"], "--cells: ce/none is not a cell; write "
     "TERMS/WEIGHTING/MISSING[/PIXEL_WEIGHTS], e.g. ce_dice/none/marginal or ce_dice/none/marginal/unet_border"),
    (["--report-only", "--work-dir", "W", "--cells", "ce/none/squared"], "--cells: ce/none/squared is not a cell"),
    (["--report-only", "--work-dir", "W", "--cells", "ce/none/none/none"], "--cells: ce/none/none/none is not a cell"),
    (["--report-only", "--work-dir", "W", "--cells", "ce/none/none/blur"], "--cells: ce/none/none/blur is not a cell"),
    (["--pixel-weights", "none,blur"], "--pixel-weights: blur; choose from none, unet_border, edge"),
    (["--terms", "ce,ce"], "--terms: ce given twice; name each once"),  # QA 25: trained twice, two rows
    (["--datasets", "shapes,nuclei,shapes"], "--datasets: shapes given twice"),
    (["--drops", "0.3,0.3"], "--drops: [0.3, 0.3]: a drop rate given twice"),
    # QA 69: trained on without a word (the default 50 is held to a lower --max-epochs; a given one is a mistake)
    (["--min-epochs", "50", "--max-epochs", "10"], "--min-epochs 50 is more than --max-epochs 10: no training could "
     "stop before the cap; give a --min-epochs of at most 10"),
    (["--quick", "--min-epochs", "3"], "--min-epochs 3 is more than --max-epochs 2"),
])
def test_rescore_and_cells_options_are_checked_before_anything_runs(options, message, tmp_path, capsys):
    assert cli.main(["experiment", "--output", str(tmp_path / "o"), *options]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "o").exists()


def _row(dataset, drop, loss, seed, miou, epochs_run=10, stopped=None, best=4, max_epochs=10):
    return {"group": f"{dataset}_drop{drop}", "dataset": dataset, "drop": drop, "loss": loss, "seed": seed,
            "miou": miou, "epochs_run": epochs_run, "stopped_epoch": stopped, "best_epoch": best,
            "max_epochs": max_epochs}


def test_validation_table_against_a_hand_computed_case():
    """Validation at the best epoch beside test: cell A (two seeds) val 0.8 / 0.6 at their best epochs,
    test 0.5 / 0.4; cell B val 0.7, test 0.7; a twin row is counted once (left out); the rarest class
    (id 2, "c z": metric val_iou_c_z) val 0.5 / 0.3 / 0.1 against test 0.0 / 0.1 / 0.2."""
    names = ["bg", "b", "c z"]

    def row(loss, seed, val, best, test, rare_val, rare_test, **extra):
        return {**_row("x", 0.0, loss, seed, test, best=best), "class_names": names,
                "per_class_iou": [0.9, 0.5, rare_test], **extra,
                "history": {"val_miou": val, "val_iou_c_z": [rare_val] * len(val)}}

    rows = [row("A", 0, [0.1, 0.8, 0.3], 1, 0.5, 0.5, 0.0), row("A", 1, [0.6], 0, 0.4, 0.3, 0.1),
            row("B", 0, [0.2, 0.7], 1, 0.7, 0.1, 0.2),
            row("C", 0, [0.2, 0.7], 1, 0.7, 0.1, 0.2, same_training_as="B")]
    lines = experiment_report.validation_table(rows, {"x": 2})
    assert len(lines) == 3
    # val mean (0.8 + 0.6 + 0.7) / 3 = 0.7, test (0.5 + 0.4 + 0.7) / 3 = 0.533; gaps A +0.25, B 0.0
    assert lines[2] == "| x_drop0.0 | 3 | 0.700 | 0.533 | +0.167 (+0.000 to +0.250) | c z 0.300 / 0.100 |"
    # no rarest class known, or rows without curves: n/a, or no line
    assert lines[2].replace("c z 0.300 / 0.100", "n/a") == experiment_report.validation_table(rows, {})[2]
    assert experiment_report.validation_table([{**rows[0], "history": {}}], {"x": 2})[2:] == []


def test_mean_ranks_against_a_hand_computed_case():
    # group a: A 0.8 (mean of 0.7/0.9), B 0.6, C 0.6 -> ranks 1, 2.5, 2.5
    # group b: A 0.5, B 0.7, C 0.1 -> ranks 2, 1, 3;  D is missing from group b: left out
    rows = [_row("x", 0.0, "A", 0, 0.7), _row("x", 0.0, "A", 1, 0.9), _row("x", 0.0, "B", 0, 0.6),
            _row("x", 0.0, "C", 0, 0.6), _row("x", 0.0, "D", 0, 0.99),
            _row("y", 0.3, "A", 0, 0.5), _row("y", 0.3, "B", 0, 0.7), _row("y", 0.3, "C", 0, 0.1)]
    ranked = experiment_report.mean_ranks(rows)
    assert [d["loss"] for d in ranked] == ["A", "B", "C"]
    assert [d["mean_rank"] for d in ranked] == [1.5, 1.75, 2.75]
    assert [d["worst_rank"] for d in ranked] == [2.0, 2.5, 3.0]
    np.testing.assert_allclose([d["mean_miou"] for d in ranked], [0.65, 0.65, 0.35])
    assert all(d["groups"] == 2 for d in ranked)
    table = experiment_report.rank_table(rows)
    assert "| A | 1.50 | 2.0 | 0.650 | 2 |" in table and not any("| D |" in line for line in table)


def test_retention_table_against_a_hand_computed_case():
    rows = [_row("x", 0.0, "A", 0, 0.8), _row("x", 0.6, "A", 0, 0.76), _row("x", 0.0, "B", 0, 0.5),
            _row("x", 0.6, "B", 0, 0.3), _row("y", 0.0, "A", 0, 0.4), _row("y", 0.6, "A", 0, 0.2),
            _row("y", 0.6, "A", 1, 0.4),  # seeds averaged: 0.3 at drop 0.6
            _row("y", 0.0, "B", 0, 0.6), _row("y", 0.6, "B", 0, 0.6)]
    table = experiment_report.retention_table(rows)
    assert table[0] == "| cell | x: kept at drop 0.6 (points lost) | y: kept at drop 0.6 (points lost) | min kept |"
    assert "| A | 95 % (+4.0) | 75 % (+10.0) | 75 % |" in table
    assert "| B | 60 % (+20.0) | 100 % (+0.0) | 60 % |" in table
    one_drop = experiment_report.retention_table([r for r in rows if r["drop"] == 0.0])
    assert len(one_drop) == 1 and "Not measured" in one_drop[0]


def test_rarest_class_and_its_gain_over_plain_ce():
    mask = np.zeros((4, 4), np.uint8)
    mask[0, :3] = 1  # 3 pixels of class 1
    mask[1, :2] = 2  # 2 pixels of class 2 (the rarest present)
    mask[3, 3] = 255  # ignored; class 3 is absent: not a candidate
    names = ["bg", "a", "b", "c"]
    assert experiment_report.rarest_classes({"x": [("s", b"", mask)]}, {"x": names}) == {"x": 2}

    def row(drop, loss, iou2):
        return {**_row("x", drop, loss, 0, 0.5), "class_names": names, "per_class_iou": [0.9, 0.5, iou2, None]}
    rows = [row(0.0, "ce/none/none", 0.1), row(0.6, "ce/none/none", 0.0), row(0.0, "W", 0.4), row(0.6, "W", 0.2)]
    table = experiment_report.rarest_class_table(rows, {"x": 2})
    assert table[0] == "| cell | x (b) |"
    assert "| W | +0.250 (0.300) |" in table and "| ce/none/none | +0.000 (0.050) |" in table
    no_plain = experiment_report.rarest_class_table([row(0.0, "W", 0.4)], {"x": 2})  # no plain CE to compare
    assert len(no_plain) == 1 and "Not measured" in no_plain[0] and "ce/none/none" in no_plain[0]


def test_per_class_plot_has_a_panel_per_drop_with_each_drops_own_cells(tmp_path, monkeypatch):
    names = ["bg", "a"]

    def row(drop, loss, seed, iou):
        return {**_row("x", drop, loss, seed, 0.5), "class_names": names, "per_class_iou": [0.9, iou]}
    rows = [row(0.0, "A", 0, 0.2), row(0.0, "A", 1, 0.4), row(0.0, "B", 0, 0.1),  # B only at drop 0
            row(0.6, "A", 0, 0.3)]
    saved = []
    monkeypatch.setattr(experiment_report, "_save", lambda fig, plt, path: saved.append(fig))
    experiment_report.plot_per_class(rows, ["x_drop0.0", "x_drop0.6", "x_drop0.6"], tmp_path / "p.png", "x")
    (fig,) = saved
    panels = fig.axes
    assert [ax.get_title() for ax in panels] == ["per-class test IoU, x, drop 0.0", "per-class test IoU, x, drop 0.6"]
    assert [t.get_text() for t in panels[0].get_xticklabels()] == ["A", "B"]
    assert [t.get_text() for t in panels[1].get_xticklabels()] == ["A"]
    heights = [bar.get_height() for bar in panels[0].patches]  # class bg for A, B, then class a
    np.testing.assert_allclose(heights, [0.9, 0.9, 0.3, 0.1])  # the cells' seed means
    saved.clear()
    experiment_report.plot_per_class(rows, ["x_drop0.3"], tmp_path / "q.png", "x")  # no rows: no plot
    assert saved == []


def test_budget_ranks_use_the_best_validation_miou_within_the_budget():
    fast = {**_row("x", 0.0, "fast", 0, 0.6), "history": {"val_miou": [0.5, 0.55, 0.56, 0.6]}}
    slow = {**_row("x", 0.0, "slow", 0, 0.8), "history": {"val_miou": [0.1, 0.2, 0.7, 0.8]}}
    assert experiment_report.budget_score(2)(fast) == 0.55 and experiment_report.budget_score(3)(slow) == 0.7
    assert [d["loss"] for d in experiment_report.mean_ranks([fast, slow], experiment_report.budget_score(2))] \
        == ["fast", "slow"]
    assert [d["loss"] for d in experiment_report.mean_ranks([fast, slow])] == ["slow", "fast"]
    # QA 75: rows trained by several versions of the code say so
    assert experiment_report.commits_note([fast, slow]) == ""
    assert experiment_report.commits_note([{**fast, "code_commit": "a1"}, slow]) == (
        "The rows were trained by 2 versions of the code (a1, not recorded; `code_commit`), ranked together here "
        "where their recorded values agree. ")
    # QA 72: a ranking "within the first 10 epochs" of trainings that ran 4 says so
    assert experiment_report.shorter_note([fast, slow], 4) == ""
    assert experiment_report.shorter_note([fast, slow], 10) == \
        "; every training ran fewer than 10 epochs, so for them this is the best of the whole run"
    longer = {**slow, "history": {"val_miou": [0.1] * 12}}
    assert experiment_report.shorter_note([fast, longer], 10) == \
        "; 1 training of 2 ran fewer than 10 epochs, so for it this is the best of the whole run"


def test_convergence_table_counts_early_stops_and_capped_trainings():
    rows = [_row("x", 0.0, "A", 0, 0.5, epochs_run=7, stopped=6, best=2),
            _row("x", 0.0, "B", 0, 0.5, epochs_run=10, stopped=None, best=9),  # ran to the cap: not converged
            _row("x", 0.0, "C", 0, 0.5, epochs_run=10, stopped=9, best=5)]  # stopped at the last epoch
    assert experiment_report.convergence_table(rows)[2] == "| x_drop0.0 | 3 | 2 | 1 | 10, 10 | 6 |"


def test_real_data_set_folders_train_on_one_part_and_test_on_the_other(tmp_path):
    from segbalance.pipeline import package_data

    try:
        package_data.archive_path("solaris")
    except UserError as exc:
        pytest.skip(f"package archive not fetched: {exc}")
    plan = Plan(num_images=6, test_images=4, size=32)
    train, test = dataset_folders("buildings", plan, 0.5, tmp_path)
    assert json.loads((train / "classes.json").read_text())["part"] == "train"
    assert json.loads((test / "classes.json").read_text())["part"] == "test"
    assert len(list((train / "images").iterdir())) == 6 and len(list((test / "images").iterdir())) == 4
    labeled = json.loads((train / "labeled.json").read_text())
    from segbalance.trainer.example_codec import decode_array

    full = [decode_array(f.read_bytes()) for f in sorted((train / "masks_full").glob("*.png"))]
    with_buildings = sum(bool(np.any((m > 0) & (m < 4))) for m in full)
    assert sum(len(v) < 4 for v in labeled.values()) == round(0.5 * with_buildings) > 0  # drop 0.5 of those crops
    assert all(len(v) == 4 for v in json.loads((test / "labeled.json").read_text()).values())
    before = {p: p.stat().st_mtime_ns for p in sorted(train.rglob("*.png"))}
    assert dataset_folders("buildings", plan, 0.5, tmp_path)[0] == train  # resumed: reused, not rewritten
    assert {p: p.stat().st_mtime_ns for p in sorted(train.rglob("*.png"))} == before


@pytest.mark.slow
def test_quick_experiment_writes_tables_and_plots_from_the_run(tmp_path, capsys):
    out, work = tmp_path / "results", tmp_path / "work"
    assert cli.main(["experiment", "--quick", "--output", str(out), "--work-dir", str(work)]) == 0
    report = json.loads((out / "results.json").read_text())
    plan = Plan.quick()
    rows = report["results"]
    assert {(r["loss"], r["seed"]) for r in rows} == {(f"ce/none/{m}", 0) for m in plan.missing}
    assert report["command"] == f"segbalance experiment --quick --output {out} --work-dir {work}"  # runs again
    for row in rows:
        assert 0.0 <= row["miou"] <= 1.0 and len(row["per_class_iou"]) == 4
        assert row["test_images"] == plan.test_images  # the size of the test set it was scored on
        assert row["num_images"] == plan.num_images  # and of the training set
        assert (row["size"], row["batch_size"]) == (plan.size, plan.batch_size)  # crop size and batch
        assert row.get("validation") == VALIDATION or row.get("same_training_as")  # how validation scored it
        curve = row["history"]["val_miou"]  # every curve kept, one value per epoch run
        assert len(curve) == row["epochs_run"] <= plan.max_epochs and len(row["history"]["loss"]) == len(curve)
        # the plan's schedule reached run_fn: ReduceLROnPlateau logs the rate of every epoch
        assert row["lr_schedule"] == plan.lr_schedule == "plateau" and len(row["history"]["learning_rate"]) == len(curve)
        assert row["best_epoch"] == int(np.argmax(curve))
    table = (out / "results.md").read_text()
    assert "| cell | mIoU, drop 0.3 |" in table
    for row in rows:  # every mIoU in the table is one the run measured
        assert re.search(rf"\| {re.escape(row['loss'])} \| {row['miou']:.3f} \|", table), row["loss"]
    best = max(rows, key=lambda r: r["miou"])
    assert f"| {best['loss']} | 1.00 |" in table or rows[0]["miou"] == rows[1]["miou"]  # the rank table
    assert "train / eval split by record (`data.split_by`)" in table
    # the validation-vs-test line of the group, from the rows' own curves
    val = np.mean([r["history"]["val_miou"][r["best_epoch"]] for r in rows])
    assert f"| shapes_drop0.3 | {len(rows)} | {val:.3f} | {np.mean([r['miou'] for r in rows]):.3f} |" in table
    seed004 = report["seed004"]["ours"]
    assert f"{seed004['plain_ce_missing']:.3f}" in table and seed004["plain_ce_missing"] > seed004["marginal_ce"]
    for plot in ("miou_vs_drop.png", "per_class_iou_shapes.png", "training_curves_shapes.png",
                 "examples_shapes.png"):
        assert (out / plot).stat().st_size > 5_000, plot
    assert len(load_results(work)) == len(rows)
    # A second run resumes: nothing is trained again (the kept models are still in the work folder).
    capsys.readouterr()
    assert cli.main(["experiment", "--quick", "--output", str(out), "--work-dir", str(work)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("done earlier, reused") == len(rows) and "pipeline for" not in printed
    assert [r["miou"] for r in json.loads((out / "results.json").read_text())["results"]] == [r["miou"] for r in rows]
    # --rescore: the kept models scored again on a larger test set; the run's own rows stay as they were
    log_before = (work / "results.jsonl").read_bytes()
    again = tmp_path / "rescored"
    assert cli.main(["experiment", "--quick", "--report-only", "--rescore", "--test-images", "12",
                     "--output", str(again), "--work-dir", str(work)]) == 0
    assert (work / "results.jsonl").read_bytes() == log_before
    rescored = json.loads((again / "results.json").read_text())
    assert "--rescore" in rescored["command"] and "--test-images 12" in rescored["command"]
    items = load_test_items(work / "rescore_test12" / "shapes_test")
    assert len(items) == 12
    assert len(load_test_items(work / "shapes_test")) == plan.test_images  # the run's own test set untouched
    by_loss = {r["loss"]: r for r in rows}
    models = {r["loss"]: r["serving_dir"] for r in load_results(work)}  # results.json leaves the paths out
    for row in rescored["results"]:
        assert row["test_images"] == 12
        assert row["earlier_score"]["miou"] == by_loss[row["loss"]]["miou"]
        # independent reference: the model's class ids against the 12 masks, IoU per class with NumPy
        from segbalance.components.seg_evaluator import load_predictor
        pred = load_predictor(models[row["loss"]])([image for _, image, _ in items])
        truth = np.stack([mask for _, _, mask in items])
        ious = []
        for c in range(4):
            inter, union = np.sum((pred == c) & (truth == c)), np.sum((pred == c) | (truth == c))
            if union:
                ious.append(inter / union)
        assert row["miou"] == pytest.approx(np.mean(ious), abs=1e-6)
    assert len(rescored["results"]) == len(rows)  # the quick run keeps both models (its example cells)
    table = (again / "results.md").read_text()
    assert "## Rescored" in table and "scored on 12 held-out crops" in table
    for row in rescored["results"]:
        assert (f"| {row['group']} | {row['loss']} | 0 | {row['earlier_score']['miou']:.3f} | {row['miou']:.3f} |"
                in table), row["loss"]


def test_report_only_reports_the_rows_so_far_and_trains_nothing(tmp_path, capsys):
    from segbalance.pipeline import cli

    work = tmp_path / "work"
    work.mkdir()
    names = ["background", "ellipse", "rectangle", "circle"]
    rows = []
    for loss, miou in (("ce/none/none", 0.5), ("ce/none/marginal", 0.6)):
        row = {**_row("shapes", 0.3, loss, 0, miou, epochs_run=3, best=1, max_epochs=2), "terms": "ce",
               "weighting": "none", "missing": loss.rsplit("/", 1)[1], "class_names": names,
               "per_class_iou": [0.9, 0.5, 0.4, 0.2], "history": {"loss": [1.0, 0.8, 0.7], "val_miou": [0.3, 0.5, 0.4]},
               "class_weights": None, "seconds": 1800.0, "min_epochs": 50, "patience": 20, "size": 128,
               "batch_size": 16}
        rows.append(row)
    (work / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert cli.main(["experiment", "--quick", "--report-only", "--output", str(out), "--work-dir", str(work)]) == 0
    assert not (work / "cells").exists() and not list(work.glob("run_*"))  # nothing trained
    table = (out / "results.md").read_text()
    assert "| ce/none/marginal | 1.00 |" in table and "(2 trainings, 1.0 h of training time" in table
    # the header states the protocol the rows were trained under, not the --quick plan of this call
    assert "runs at least 50 epochs" in table and "not improved for 20 epochs (at most 2)" in table
    assert "training crops of 128x128 per data set and drop (batch 16)" in table  # not --quick's 32 / 8
    plan = json.loads((out / "results.json").read_text())["plan"]  # it held the --quick call's options
    assert {key: plan[key] for key in ("max_epochs", "min_epochs", "patience", "size", "batch_size", "datasets",
                                       "drop_fractions", "seeds")} == {
        "max_epochs": 2, "min_epochs": 50, "patience": 20, "size": 128, "batch_size": 16, "datasets": ["shapes"],
        "drop_fractions": [0.3], "seeds": [0]}
    assert "report of 2 trainings" in capsys.readouterr().out
    assert cli.main(["experiment", "--quick", "--report-only", "--output", str(out)]) == 2  # needs --work-dir
    # only the rows' data set has a test set, written beside the work folder's own (there is none here)
    assert [p.name for p in (work / "report_test").iterdir()] == ["shapes_test"] and not (work / "shapes_test").exists()


def test_one_training_per_work_folder_but_a_report_may_read_it_meanwhile(tmp_path, capsys):
    """A refused training writes nothing (QA D7: it created and marked its --output), and neither it nor
    a report rewrites the work folder's marker."""
    from segbalance.pipeline import cli
    from segbalance.pipeline.output_guard import MARKER, write_marker
    from segbalance.pipeline.run_lock import exclusive_run

    work = tmp_path / "work"
    work.mkdir()
    row = {**_row("shapes", 0.3, "ce/none/none", 0, 0.5, epochs_run=3, best=1, max_epochs=2), "terms": "ce",
           "weighting": "none", "missing": "none", "class_names": ["background", "ellipse", "rectangle", "circle"],
           "per_class_iou": [0.9, 0.5, 0.4, 0.2], "history": {"loss": [1.0, 0.8], "val_miou": [0.3, 0.5]},
           "class_weights": None, "seconds": 60.0}
    (work / "results.jsonl").write_text(json.dumps(row) + "\n")
    write_marker(work, "experiment", started="by the training in progress")
    marker = (work / MARKER).read_bytes()
    with exclusive_run(str(work), option="--work-dir"):  # a training in progress
        assert cli.main(["experiment", "--quick", "--output", str(tmp_path / "second"), "--work-dir", str(work)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--work-dir" in err and "is in use by another segbalance run" in err
        assert not list(work.glob("shapes_drop*"))  # refused before any data or training
        assert not (tmp_path / "second").exists()  # nor an --output folder
        assert cli.main(["experiment", "--quick", "--report-only", "--output", str(tmp_path / "report"),
                         "--work-dir", str(work)]) == 0
    assert (tmp_path / "report" / "results.md").is_file()
    assert (work / MARKER).read_bytes() == marker
    (tmp_path / "report" / MARKER).write_text(json.dumps({"written_by": "experiment", "first": "report"}))
    assert cli.main(["experiment", "--quick", "--report-only", "--output", str(tmp_path / "report"),
                     "--work-dir", str(work)]) == 0  # into its own earlier --output: the marker stays
    assert json.loads((tmp_path / "report" / MARKER).read_text())["first"] == "report"
    assert (work / MARKER).read_bytes() == marker


def test_a_report_never_rewrites_the_work_folder_s_test_set(tmp_path):
    """A plain `--report-only` on a `--quick` work folder wrote the full plan's test set (other size,
    other count, every data set of the plan) over the one the rows were scored on."""
    from segbalance.pipeline import cli
    from segbalance.pipeline.experiment import Plan, test_folder
    from segbalance.pipeline.sample_data import SAMPLE_MARKER

    work = tmp_path / "work"
    own = test_folder("shapes", Plan.quick(), work)
    before = {p.relative_to(own): p.read_bytes() for p in own.rglob("*") if p.is_file()}
    row = {**_row("shapes", 0.3, "ce/none/none", 0, 0.5, epochs_run=3, best=1, max_epochs=2), "terms": "ce",
           "weighting": "none", "missing": "none", "class_names": ["background", "ellipse", "rectangle", "circle"],
           "per_class_iou": [0.9, 0.5, 0.4, 0.2], "history": {"loss": [1.0, 0.8], "val_miou": [0.3, 0.5]},
           "class_weights": None, "seconds": 60.0}
    (work / "results.jsonl").write_text(json.dumps(row) + "\n")
    assert cli.main(["experiment", "--report-only", "--output", str(tmp_path / "out"), "--work-dir", str(work)]) == 0
    assert {p.relative_to(own): p.read_bytes() for p in own.rglob("*") if p.is_file()} == before
    assert json.loads((own / SAMPLE_MARKER).read_text())["size"] == Plan.quick().size != Plan().size
    from segbalance.pipeline.output_guard import MARKER

    # no other data set's test set written (the plan's default lists several)
    assert sorted(p.name for p in work.iterdir() if p.name != MARKER) == ["results.jsonl", "shapes_test"]


def test_report_only_covers_the_rows_the_given_options_select(tmp_path):
    """One work folder holds a seed-0 grid and more seeds for some cells: --seeds / --weightings /
    --drops pick the rows of one report (ranks over equal seed sets), options not given select all."""
    from segbalance.pipeline import cli

    work = tmp_path / "work"
    work.mkdir()
    names = ["background", "ellipse", "rectangle", "circle"]
    rows = []
    for drop, weighting, seed, miou in ((0.0, "none", 0, 0.50), (0.0, "median_frequency_clipped", 0, 0.70),
                                       (0.0, "none", 1, 0.90), (0.6, "none", 0, 0.40)):
        loss = f"ce/{weighting}/none"
        rows.append({**_row("shapes", drop, loss, seed, miou, epochs_run=3, best=1, max_epochs=2), "terms": "ce",
                     "weighting": weighting, "missing": "none", "class_names": names,
                     "per_class_iou": [0.9, 0.5, 0.4, 0.2], "history": {"loss": [1.0, 0.8, 0.7],
                                                                        "val_miou": [0.3, 0.5, 0.4]},
                     "class_weights": None, "seconds": 60.0})
    (work / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def report(*options):
        out = tmp_path / ("report_" + "_".join(o.strip("-") for o in options))
        assert cli.main(["experiment", "--quick", "--report-only", "--output", str(out), "--work-dir", str(work),
                         *options]) == 0
        return json.loads((out / "results.json").read_text())

    assert len(report()["results"]) == 4
    seed0 = report("--seeds", "0", "--drops", "0")["results"]
    assert sorted(r["miou"] for r in seed0) == [0.50, 0.70]
    # over seed 0 the weighted cell ranks first; the unweighted one's seed 1 is not mixed in
    table = (tmp_path / "report_seeds_0_drops_0" / "results.md").read_text()
    assert "| ce/median_frequency_clipped/none | 1.00 |" in table
    plain = report("--weightings", "none")
    assert sorted(r["miou"] for r in plain["results"]) == [0.40, 0.50, 0.90]
    # --cells picks whole cells (a cell with 3 seeds next to one with 1, without the others)
    cells = report("--cells", "ce/median_frequency_clipped/none", "--drops", "0")
    assert [r["miou"] for r in cells["results"]] == [0.70] and "--cells ce/median_frequency_clipped/none" in \
        cells["command"]
    assert "--report-only" in plain["command"] and "--weightings none" in plain["command"]


def test_a_report_holding_trainings_this_run_lacks_is_not_replaced_without_overwrite(tmp_path, capsys):
    """QA 72: `experiment --quick` in the repository replaced the published 96-row report in docs/results (the
    default --output) with 2 rows, and left that report's plots of other data sets beside the new one."""
    from segbalance.pipeline import cli

    work = tmp_path / "work"
    work.mkdir()
    names = ["background", "ellipse", "rectangle", "circle"]
    rows = [{**_row("shapes", drop, "ce/none/none", seed, miou, epochs_run=3, best=1, max_epochs=2), "terms": "ce",
             "weighting": "none", "missing": "none", "class_names": names, "per_class_iou": [0.9, 0.5, 0.4, 0.2],
             "history": {"loss": [1.0, 0.8, 0.7], "val_miou": [0.3, 0.5, 0.4]}, "class_weights": None,
             "seconds": 60.0} for drop, seed, miou in ((0.0, 0, 0.5), (0.0, 1, 0.6), (0.6, 0, 0.4))]
    (work / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    report = ["experiment", "--quick", "--report-only", "--output", str(out), "--work-dir", str(work)]
    assert cli.main(report) == 0
    assert cli.main(report) == 0  # the same rows again: nothing lost
    before = (out / "results.json").read_bytes()
    capsys.readouterr()
    assert cli.main([*report, "--seeds", "1"]) == 2  # a report of one of the three rows
    err = capsys.readouterr().err
    assert f"--output {out} holds a report of 3 trainings, 2 of them neither in {work / 'results.jsonl'} nor " \
           f"trained by this run (e.g. shapes_drop0.0 ce/none/none seed 0)" in err and "--overwrite" in err
    assert (out / "results.json").read_bytes() == before
    # a training run with another plan (--quick: other epochs than these rows') is refused before it trains
    assert cli.main(["experiment", "--quick", "--output", str(out)]) == 2
    assert not (out / "_work").exists() and (out / "results.json").read_bytes() == before
    (out / "per_class_iou_nuclei.png").write_bytes(b"an earlier report's plot")
    (out / "miou_vs_drop_set2.png").write_bytes(b"an earlier report's plot of its second set")
    (out / "notes.png").write_bytes(b"not a plot the report writes")
    assert cli.main([*report, "--seeds", "1", "--overwrite"]) == 0
    assert [r["seed"] for r in json.loads((out / "results.json").read_text())["results"]] == [1]
    assert not (out / "per_class_iou_nuclei.png").exists() and (out / "notes.png").exists()
    assert not (out / "miou_vs_drop_set2.png").exists()
    assert (out / "per_class_iou_shapes.png").exists() and (out / "miou_vs_drop.png").exists()
    # QA 75: a --rescore report's rows record the rescore's test set; its own command, run again, was refused
    report_json = json.loads((out / "results.json").read_text())
    for row in report_json["results"]:
        row["test_images"] = 12
    (out / "results.json").write_text(json.dumps(report_json))
    assert cli.main([*report, "--seeds", "1"]) == 0


def test_a_training_run_scored_on_another_test_set_does_not_replace_a_report_silently(tmp_path):
    """QA 75: the check compared an earlier row's test set size with itself, so a training run with another
    --test-images replaced the rows of a report without --overwrite."""
    import dataclasses

    from segbalance.pipeline.experiment import cell_name, check_report_kept, plan_values

    plan = Plan.quick()
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    rows = [{**_row("shapes", drop, cell_name(*cell), seed, 0.5), **plan_values(plan, plan.test_images)}
            for drop in plan.drop_fractions for cell in plan.cells() for seed in plan.seeds]
    (out / "results.json").write_text(json.dumps({"plan": {}, "command": "x", "results": rows}))
    check_report_kept(out, work, plan)  # the same cells, values and test set: trained again, nothing lost
    with pytest.raises(UserError, match=r"holds a report of 2 trainings, 2 of them neither in"):
        check_report_kept(out, work, dataclasses.replace(plan, test_images=plan.test_images + 1))


def test_fully_annotated_cells_reuse_the_plain_training_instead_of_repeating_it(tmp_path, capsys):
    """At drop 0 every class is annotated everywhere: marginal CE == CE, so the marginal cell's row is
    the "none" cell's (marked), and nothing trains; with dropped annotations it would train."""
    from segbalance.pipeline.experiment import experiment_config, fully_annotated, run_group

    plan = Plan(datasets=["shapes"], drop_fractions=[0.0], terms=["ce"], weightings=["none"],
                missing=["none", "marginal"], num_images=8, test_images=4, size=32, max_epochs=10)  # as _row's
    work = tmp_path / "work"
    train, _ = dataset_folders("shapes", plan, 0.0, work)
    partial, _ = dataset_folders("shapes", plan, 0.5, work)
    assert fully_annotated(train, 4) and not fully_annotated(partial, 4)
    names = json.loads((train / "classes.json").read_text())["class_names"]
    plain = {**_row("shapes", 0.0, "ce/none/none", 0, 0.42), "terms": "ce", "weighting": "none", "missing": "none",
             "per_class_iou": [0.9, 0.4, 0.3, 0.1]}
    results = [plain]
    run_group("shapes", 0.0, plan, experiment_config(plan, train, work / "run", names), [], work, results)
    twin = [r for r in results if r["loss"] == "ce/none/marginal"]
    assert len(twin) == 1 and twin[0]["miou"] == 0.42 and twin[0]["missing"] == "marginal"
    assert twin[0]["same_training_as"] == "ce/none/none" and twin[0]["per_class_iou"] == plain["per_class_iou"]
    assert "pipeline for" not in capsys.readouterr().out and not (work / "run").exists()  # nothing trained
    assert [r["loss"] for r in load_results(work)] == ["ce/none/marginal"]  # logged for a resumed run
    note = experiment_report.twins_note(results)
    assert note.startswith("1 row (shapes_drop0.0: every class annotated in every image) is the training") and \
        experiment_report.twins_note([plain]) == ""
    assert note.endswith("equals Dice): ce/none/marginal = ce/none/none. ")


@pytest.mark.parametrize("terms, weighting", [("ce", "none"), ("ce_dice", "median_frequency_clipped")])
def test_every_missing_label_handling_is_the_plain_loss_when_every_class_is_labelled(terms, weighting):
    """What the fully-annotated twins rest on: with every class in every image's labelled set, each
    cell's loss and its gradient equal the "none" cell's; with a class unlabelled they differ."""
    import tensorflow as tf

    from segbalance.pipeline.experiment import MISSING
    from segbalance.trainer.segmentation_loss import SegmentationLoss

    rng = np.random.default_rng(3)
    mask = rng.integers(0, 4, size=(2, 8, 8)).astype(np.int32)
    mask[0, :2] = 255
    logits = tf.constant(rng.normal(0, 2, size=(2, 8, 8, 4)).astype(np.float32))
    weights = [0.4, 1.0, 2.5, 5.0]

    def value_and_grad(missing, labeled):
        config = cell_loss(terms, weighting, missing)
        loss = SegmentationLoss(config, class_weights=weights if config.get("class_weights") else None, num_classes=4)
        with tf.GradientTape() as tape:
            tape.watch(logits)
            value = loss({"mask": mask, "labeled": labeled}, logits)
        return float(value), tape.gradient(value, logits).numpy()

    complete, partial = np.ones((2, 4), np.float32), np.array([[1, 1, 0, 1], [1, 1, 1, 1]], np.float32)
    plain, plain_grad = value_and_grad("none", complete)
    for missing in MISSING:
        value, grad = value_and_grad(missing, complete)
        assert value == pytest.approx(plain, rel=1e-5), missing
        np.testing.assert_allclose(grad, plain_grad, rtol=1e-4, atol=1e-7, err_msg=missing)
    mask[0][mask[0] == 2] = 0  # the unlabelled class is background in that image's mask
    changed = {m for m in MISSING if m != "none"
               and value_and_grad(m, partial)[0] != pytest.approx(value_and_grad("none", partial)[0], rel=1e-4)}
    assert changed == {"ignore_predicted", "marginal", "marginal_dice", "marginal_exclusion"}


def test_a_fully_annotated_twin_is_found_under_any_missing_label_handling(tmp_path, capsys):
    """With no "none" row, another handling's row of the same terms and weighting is the training
    (marginal Dice == Dice and marginal CE == CE when everything is labelled); a twin of a twin names
    the row that trained; an example cell takes the twin's kept model; another weighting is never a
    twin (dropped annotations: the test above)."""
    from segbalance.pipeline.experiment import complete_twin, experiment_config, run_group

    plan = Plan(datasets=["shapes"], drop_fractions=[0.0], terms=["ce_dice"], weightings=["none"],
                missing=["marginal_dice"], num_images=8, test_images=4, size=32, max_epochs=10)  # as _row's
    work = tmp_path / "work"
    train, _ = dataset_folders("shapes", plan, 0.0, work)
    names = json.loads((train / "classes.json").read_text())["class_names"]
    trained = {**_row("shapes", 0.0, "ce_dice/none/marginal", 0, 0.61), "terms": "ce_dice", "weighting": "none",
               "missing": "marginal", "per_class_iou": [0.9, 0.6, 0.5, 0.4]}
    other = {**_row("shapes", 0.0, "ce_dice/median_frequency_clipped/none", 0, 0.7)}
    results = [trained, other]
    run_group("shapes", 0.0, plan, experiment_config(plan, train, work / "run", names), [], work, results)
    twin = [r for r in results if r["loss"] == "ce_dice/none/marginal_dice"]
    assert len(twin) == 1 and twin[0]["miou"] == 0.61 and twin[0]["missing"] == "marginal_dice"
    assert twin[0]["same_training_as"] == "ce_dice/none/marginal" and not (work / "run").exists()
    assert "the same training as ce_dice/none/marginal" in capsys.readouterr().out

    # a twin of a twin names the row that trained
    results.remove(trained)
    plan.missing = ["ignore_predicted"]
    run_group("shapes", 0.0, plan, experiment_config(plan, train, work / "run", names), [], work, results)
    chained = [r for r in results if r["loss"] == "ce_dice/none/ignore_predicted"]
    assert len(chained) == 1 and chained[0]["same_training_as"] == "ce_dice/none/marginal"
    assert chained[0]["miou"] == 0.61 and not (work / "run").exists()
    # an example cell (model kept for the pictures) is not trained again either: it gets the twin's model
    plan.missing = ["marginal"]
    results.append({**trained, "loss": "ce_dice/none/none", "missing": "none", "serving_dir": "/kept/model"})
    run_group("shapes", 0.0, plan, experiment_config(plan, train, work / "run", names), [], work, results,
              keep={(("ce_dice", "none", "marginal"), 0)})
    example = [r for r in results if r["loss"] == "ce_dice/none/marginal"]
    assert len(example) == 1 and example[0]["serving_dir"] == "/kept/model" and not (work / "run").exists()
    assert example[0]["same_training_as"] == "ce_dice/none/none"
    assert "serving_dir" not in chained[0]  # not an example cell: no model named
    # the "none" row is preferred when it is there
    done = {(r["group"], r["loss"], r["seed"]): r for r in results}
    plain = {**trained, "loss": "ce_dice/none/none", "missing": "none", "miou": 0.62}
    done[("shapes_drop0.0", "ce_dice/none/none", 0)] = plain
    assert complete_twin(done, "shapes_drop0.0", ("ce_dice", "none", "marginal_dice"), 0) is plain
    # a plain cell, another weighting, terms or seed: no twin
    assert complete_twin(done, "shapes_drop0.0", ("ce_dice", "none", "none"), 0) is None
    assert complete_twin(done, "shapes_drop0.0", ("ce_dice", "median_frequency_clipped", "marginal"), 0) is other
    assert complete_twin(done, "shapes_drop0.0", ("ce_dice", "median_frequency", "marginal"), 0) is None
    assert complete_twin(done, "shapes_drop0.0", ("ce", "none", "marginal"), 0) is None
    assert complete_twin(done, "shapes_drop0.0", ("ce_dice", "none", "marginal"), 1) is None


def test_a_resumed_row_is_reused_even_where_its_kept_model_is_gone(tmp_path, capsys):
    """Rows copied from another machine (docs/results/runs) have no serving model: reused, not retrained."""
    from segbalance.pipeline.experiment import experiment_config, run_group

    plan = Plan(datasets=["shapes"], drop_fractions=[0.6], terms=["ce"], weightings=["none"], missing=["none"],
                num_images=8, test_images=4, size=32)
    work = tmp_path / "work"
    train, _ = dataset_folders("shapes", plan, 0.6, work)
    row = {**_row("shapes", 0.6, "ce/none/none", 0, 0.3, max_epochs=plan.max_epochs), "size": plan.size,
           "num_images": plan.num_images, "serving_dir": str(tmp_path / "elsewhere" / "serving")}
    results = [row]
    run_group("shapes", 0.6, plan, experiment_config(plan, train, work / "run", ["a", "b", "c", "d"]), [], work,
              results, keep={(("ce", "none", "none"), 0)})
    printed = capsys.readouterr().out
    assert printed.strip().endswith("seed 0: done earlier, reused") and "pipeline for" not in printed
    assert results == [row]


def test_example_pictures_show_the_crops_with_the_most_classes():
    masks = [np.zeros((2, 2), np.uint8) for _ in range(4)]
    masks[1][0, 0], masks[3][0, 0], masks[3][1, 1], masks[2][0, 1] = 1, 1, 2, 255
    items = [(f"i{k}", b"", m) for k, m in enumerate(masks)]
    assert [name for name, _, _ in experiment_report.example_items(items, 2)] == ["i3", "i1"]


def test_rescored_table_lists_each_rescored_row_with_both_scores():
    rows = [{**_row("shapes", 0.0, "ce/none/none", 0, 0.86), "test_images": 600,
             "earlier_score": {"miou": 0.81, "per_class_iou": []}},
            _row("shapes", 0.0, "ce/none/marginal", 0, 0.5)]  # not rescored: not listed
    lines = experiment_report.rescored_table(rows)
    assert "on 600 held-out crops" in lines[2]
    assert "| shapes_drop0.0 | ce/none/none | 0 | 0.810 | 0.860 | +0.050 |" in lines
    assert not any("ce/none/marginal" in line for line in lines)
    assert experiment_report.rescored_table([rows[1]]) == []


def test_header_names_the_test_set_sizes_the_rows_were_scored_on():
    rows = [{**_row("shapes", 0.0, "a", 0, 0.5), "test_images": 600}, _row("shapes", 0.0, "b", 0, 0.5)]
    assert experiment_report.test_sizes(rows, 60) == "60 or 600"
    assert experiment_report.test_sizes(rows[:1], 60) == "600"
    assert experiment_report.test_sizes([], 60) == "60"
    mixed = [{**rows[0], "patience": 20}, {**rows[1], "patience": 10}]
    assert experiment_report.row_values(mixed, "patience", 5) == "10 or 20"
    assert experiment_report.row_values(rows, "patience", 5) == "5"  # rows from before the field


def test_an_output_or_work_folder_the_experiment_did_not_write_is_refused(tmp_path, capsys):
    """--output was only checked for being a folder: the run replaced a user's results.md and deleted
    OUTPUT/_work with the user's file in it."""
    from segbalance.pipeline import cli

    mine = tmp_path / "mine"
    (mine / "_work").mkdir(parents=True)
    (mine / "_work" / "precious.txt").write_text("keep")
    (mine / "results.md").write_text("my notes")
    assert cli.main(["experiment", "--quick", "--output", str(mine)]) == 2
    assert "is not empty and was not written by segbalance experiment" in capsys.readouterr().err
    assert (mine / "_work" / "precious.txt").read_text() == "keep" and (mine / "results.md").read_text() == "my notes"
    assert cli.main(["experiment", "--quick", "--output", str(tmp_path / "o"), "--work-dir", str(mine)]) == 2
    assert "--work-dir" in capsys.readouterr().err
    # QA 94 L4: an earlier experiment's output holding a user's folder named _work: used as it was, and marked
    from segbalance.pipeline.output_guard import write_marker

    (mine / "results.md").unlink()
    write_marker(mine, "experiment")
    assert cli.main(["experiment", "--quick", "--output", str(mine)]) == 2
    err = capsys.readouterr().err
    assert f"--output (its _work folder) {mine / '_work'} is not empty and was not written by segbalance" in err
    assert sorted(p.name for p in (mine / "_work").iterdir()) == ["precious.txt"]


@pytest.mark.parametrize("option", ["--output", "--work-dir"])
def test_a_link_to_nothing_or_an_uncreatable_folder_is_one_line(tmp_path, capsys, option):
    """QA 25: --output or --work-dir a dangling link was mkdir's FileExistsError traceback (exit 1), and
    --output /proc/x its FileNotFoundError."""
    from segbalance.pipeline import cli

    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    paths = {"--output": str(tmp_path / "o"), "--work-dir": str(tmp_path / "w"), option: str(tmp_path / "link")}
    assert cli.main(["experiment", "--quick", *(x for item in paths.items() for x in item)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{option} {tmp_path / 'link'} is a link to a folder that does not exist" in err
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "o").exists()
    if option == "--output" and os.path.isdir("/proc/self"):
        assert cli.main(["experiment", "--quick", "--output", "/proc/segbalance_test", "--work-dir",
                         str(tmp_path / "w")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--output /proc/segbalance_test: cannot create the folder" in err


def test_report_only_without_rows_is_one_line(tmp_path, capsys):
    from segbalance.pipeline import cli

    assert cli.main(["experiment", "--report-only", "--work-dir", str(tmp_path / "typo"), "--output",
                     str(tmp_path / "o")]) == 2
    assert "holds no results.jsonl; give the --work-dir of an earlier run" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()  # a mistyped --work-dir is not created
    work = tmp_path / "work"
    work.mkdir()
    (work / "results.jsonl").write_text(json.dumps(_row("shapes", 0.3, "ce/none/none", 0, 0.5)) + "\n")
    assert cli.main(["experiment", "--quick", "--report-only", "--work-dir", str(work), "--output",
                     str(tmp_path / "o"), "--seeds", "7"]) == 2
    assert "no rows to report" in capsys.readouterr().err


def test_a_row_cut_short_by_a_stop_is_set_aside_and_its_cell_trains_again(tmp_path, capsys):
    from segbalance.pipeline.experiment import RESULTS_LOG, load_results

    rows = [_row("shapes", 0.3, loss, 0, 0.5) for loss in ("ce/none/none", "ce/none/marginal")]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / RESULTS_LOG).write_text(text[:-20])  # stopped while appending the second row
    assert [r["loss"] for r in load_results(tmp_path)] == ["ce/none/none"]
    assert "cut short" in capsys.readouterr().out
    assert (tmp_path / RESULTS_LOG).read_text() == json.dumps(rows[0]) + "\n"  # the next append starts clean
    assert (tmp_path / (RESULTS_LOG + ".partial")).read_text() == text[:-20].splitlines()[1] + "\n"
    (tmp_path / RESULTS_LOG).write_text("{broken\n" + json.dumps(rows[1]) + "\n")  # damage before the end
    with pytest.raises(UserError, match="line 1 is not a JSON row"):
        load_results(tmp_path)


NAMES = ["background", "ellipse", "rectangle", "circle"]


def _report_row(loss, seed, miou, drop=0.3, **changes):
    """A whole row of a --quick training (what a report needs), trained with the values ``changes`` alters."""
    return {**_row("shapes", drop, loss, seed, miou, epochs_run=3, best=1, max_epochs=2), "terms": "ce",
            "weighting": "none", "missing": loss.split("/")[2], "class_names": NAMES,
            "per_class_iou": [0.9, 0.5, 0.4, 0.2], "history": {"loss": [1.0, 0.8, 0.7], "val_miou": [0.3, 0.5, 0.4]},
            "class_weights": None, "seconds": 60.0, "patience": 1, "min_epochs": 2, "size": 32, "batch_size": 8,
            "num_images": 32, "test_images": 8, "lr_schedule": "plateau", "split_by": "record", "config_digest": None,
            **changes}


def test_a_row_trained_with_other_values_is_trained_again_and_stays_beside_the_new_one(tmp_path, monkeypatch,
                                                                                       capsys):
    """QA D2: rows were reused by (group, cell, seed) only, so a run with another --config, --max-epochs
    or test set counted rows trained otherwise as its own (a note on the console only), and a fully
    annotated cell copied such a row as its twin. Now such a cell trains again; the old row stays."""
    from segbalance.pipeline import experiment
    from segbalance.pipeline.experiment import RESULTS_LOG, run_group

    plan = Plan(datasets=["shapes"], drop_fractions=[0.0], terms=["ce"], weightings=["none"],
                missing=["none", "marginal"], seeds=[0, 1, 2, 3, 4], num_images=8, test_images=4, size=32,
                max_epochs=10)
    work = tmp_path / "work"
    train, _ = dataset_folders("shapes", plan, 0.0, work)
    config = experiment.experiment_config(plan, train, work / "run", NAMES)
    ours = experiment.plan_values(plan)  # what a row trained by this plan records
    from segbalance.pipeline.experiment_config import defaults_digest

    assert ours == {"config_digest": None, "defaults_digest": defaults_digest(), "max_epochs": 10, "patience": 20,
                    "min_epochs": 10, "lr_schedule": "plateau", "size": 32, "batch_size": 16, "num_images": 8,
                    "split_by": "record", "test_images": 4}

    def row(seed, miou, **changes):
        return {**_row("shapes", 0.0, "ce/none/none", seed, miou), "terms": "ce", "weighting": "none",
                "missing": "none", **ours, **changes}

    earlier = [row(0, 0.9, config_digest="0123456789ab", config="b.yaml"),  # another --config
               row(1, 0.8, max_epochs=150),  # another --max-epochs
               row(2, 0.7, test_images=60),  # scored on another test set
               row(3, 0.6),  # this plan's values: its row
               row(4, 0.55, defaults_digest="0123456789ab")]  # code with other defaults (QA 72)
    (work / RESULTS_LOG).write_text("".join(json.dumps(r) + "\n" for r in earlier))
    results = load_results(work)
    trained = []
    fake_cells(monkeypatch, trained, miou=0.5)
    run_group("shapes", 0.0, plan, config, [None] * 4, work, results)
    assert trained == [0, 1, 2, 4]
    printed = capsys.readouterr().out
    for seed, other in ((0, "--config values of digest 0123456789ab"), (1, "--max-epochs 150"),
                        (2, "--test-images 60"), (4, "code whose training defaults have digest 0123456789ab")):
        assert (f"ce/none/none seed {seed}: its row in results.jsonl was trained with {other}: trained again with "
                f"this run's values (that row stays)") in printed
    assert "ce/none/none seed 3: done earlier, reused" in printed
    rows = load_results(work)  # the earlier rows stay, each new row beside them
    assert [r for r in rows if r in earlier] == earlier and len(rows) == 5 + 4 + 5
    new = {(r["loss"], r["seed"]): r for r in rows if r not in earlier}
    assert all(experiment.protocol_differences(r, plan, 4) == "" for r in new.values())
    # the fully annotated marginal cell is the twin of this run's row, never of one trained otherwise
    assert [new[("ce/none/marginal", s)]["miou"] for s in range(5)] == [0.5, 0.5, 0.5, 0.6, 0.5]
    assert all(new[("ce/none/marginal", s)]["same_training_as"] == "ce/none/none" for s in range(5))
    assert {r.get("code_commit") for r in new.values() if "same_training_as" not in r} == {
        experiment.source_commit()}  # the code that trained each row (None outside a git checkout)
    # a second run reuses this run's rows and trains nothing
    run_group("shapes", 0.0, plan, config, [None] * 4, work, load_results(work))
    assert trained == [0, 1, 2, 4] and capsys.readouterr().out.count("done earlier, reused") == 10
    # a kept model per set of values: another --max-epochs trained into the earlier row's folder (QA 25)
    import dataclasses

    cell = ("ce", "none", "none")
    for values in (dataclasses.replace(plan, max_epochs=20), dataclasses.replace(plan, max_epochs=30)):
        run_group("shapes", 0.0, values, config, [None] * 4, work, load_results(work), keep={(cell, 0)})
    kept = [r["serving_dir"] for r in load_results(work) if r.get("serving_dir") and r["seed"] == 0]
    assert len(kept) == 2 and len(set(kept)) == 2


def test_a_report_of_rows_trained_with_other_values_ranks_each_set_on_its_own(tmp_path, capsys):
    """QA D2: `--report-only` (and a training's report) ranked rows of another --config with the
    defaults' rows (one of a cell's rows replaced the other, silently). Each set of values is now
    listed, and its cells are ranked within it."""
    import yaml

    from segbalance.pipeline.experiment_config import config_digest

    recipe = {"training": {"optimizer": "sgd", "learning_rate": 0.01}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(recipe))
    digest = config_digest(recipe)
    work = tmp_path / "work"
    work.mkdir()
    rows = [_report_row("ce/none/none", 0, 0.5), _report_row("ce/none/marginal", 0, 0.6),
            _report_row("ce/none/none", 0, 0.9, config_digest=digest, config="b.yaml"),
            _report_row("ce/none/marginal", 0, 0.4, config_digest=digest, config="b.yaml")]
    (work / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert cli.main(["experiment", "--report-only", "--output", str(out), "--work-dir", str(work)]) == 0
    report = json.loads((out / "results.json").read_text())
    assert [r["miou"] for r in report["results"]] == [0.5, 0.6, 0.9, 0.4]
    sets = report["training_sets"]
    assert [(s["set"], s["values"], s["rows"]) for s in sets] == [(1, {"config_digest": None}, 2),
                                                                 (2, {"config_digest": digest}, 2)]
    assert [[(d["loss"], d["mean_rank"], d["mean_miou"]) for d in s["mean_ranks"]] for s in sets] == [
        [("ce/none/marginal", 1.0, 0.6), ("ce/none/none", 2.0, 0.5)],
        [("ce/none/none", 1.0, 0.9), ("ce/none/marginal", 2.0, 0.4)]]
    table = (out / "results.md").read_text()
    assert "**The rows were trained with 2 sets of values**" in table
    assert "- set 1 (2 rows): no --config (the defaults)" in table
    assert f"- set 2 (2 rows): --config b.yaml (values of digest {digest})" in table
    first, second = table.split(f"## Set 2: --config b.yaml (values of digest {digest})")
    assert "## Set 1: no --config (the defaults)" in first
    assert "| ce/none/marginal | 1.00 |" in first and "| ce/none/none | 2.00 |" in first
    assert "| ce/none/none | 1.00 |" in second and "| ce/none/marginal | 2.00 |" in second
    second = second.split("## Seed 004")[0]
    assert "(4 trainings" in first  # the run as a whole
    # each set's tables hold its own rows only (the data set table: the cell's mIoU)
    assert "| ce/none/none | 0.500 |" in first and "| ce/none/none | 0.900 |" not in first
    assert "| ce/none/none | 0.900 |" in second and "| ce/none/none | 0.500 |" not in second
    assert "### Mean rank over data sets and drop rates" in second  # a set's sections sit under its heading
    assert "![mIoU vs drop](miou_vs_drop_set2.png)" in second
    assert (out / "miou_vs_drop_set1.png").is_file() and (out / "training_curves_shapes_set2.png").is_file()
    assert "trained with 2 sets of values (no --config (the defaults); --config b.yaml" in capsys.readouterr().out
    # --config selects the rows trained with the file's values: one set, the usual report
    one = tmp_path / "one"
    assert cli.main(["experiment", "--report-only", "--config", str(tmp_path / "b.yaml"), "--output", str(one),
                     "--work-dir", str(work)]) == 0
    report = json.loads((one / "results.json").read_text())
    assert [r["miou"] for r in report["results"]] == [0.9, 0.4] and "training_sets" not in report
    assert "sets of values" not in (one / "results.md").read_text()


def test_training_sets_split_on_the_recorded_values_that_differ():
    """Rows from before a field was recorded are not split off while the recorded values agree (the
    published reports mix them); where they differ, a row without the field is its own set."""
    from segbalance.pipeline.experiment_report import training_sets

    legacy = _report_row("ce/none/none", 0, 0.5)
    del legacy["size"], legacy["config_digest"]
    rows = [legacy, _report_row("ce/none/none", 1, 0.6)]
    assert training_sets(rows) == [({}, rows)]
    wide = _report_row("ce/none/none", 2, 0.7, size=64, config_digest=None)
    (a, a_rows), (b, b_rows), (c, c_rows) = training_sets([*rows, wide])
    assert (a, b, c) == ({"size": "not recorded"}, {"size": 32}, {"size": 64})
    assert (a_rows, b_rows, c_rows) == ([legacy], [rows[1]], [wide])


def test_a_report_skips_a_cut_short_last_row_and_writes_nothing_in_the_work_folder(tmp_path, capsys):
    """QA D3: --report-only moved a half-written last line (a training appending it) to
    results.jsonl.partial and rewrote results.jsonl: it now leaves that line out with a note."""
    from segbalance.pipeline.experiment import RESULTS_LOG

    work = tmp_path / "work"
    work.mkdir()
    rows = [_report_row("ce/none/none", 0, 0.5), _report_row("ce/none/marginal", 0, 0.6)]
    text = "".join(json.dumps(r) + "\n" for r in rows)[:-20]  # the second row half written
    (work / RESULTS_LOG).write_text(text)
    assert [r["loss"] for r in load_results(work, report_only=True)] == ["ce/none/none"]
    assert "left out of this report, the file is not changed" in capsys.readouterr().out
    out = tmp_path / "out"
    assert cli.main(["experiment", "--report-only", "--output", str(out), "--work-dir", str(work)]) == 0
    assert (work / RESULTS_LOG).read_text() == text and not (work / (RESULTS_LOG + ".partial")).exists()
    assert [r["miou"] for r in json.loads((out / "results.json").read_text())["results"]] == [0.5]


def test_the_recorded_command_runs_again(tmp_path):
    """QA D6: the command in results.md / results.json left out --work-dir and --output, so a recorded
    `--report-only` could not be run again."""
    import shlex

    work = tmp_path / "my work"  # a path that needs quoting
    work.mkdir()
    rows = [_report_row("ce/none/none", 0, 0.5), _report_row("ce/none/marginal", 0, 0.6)]
    (work / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert cli.main(["experiment", "--report-only", "--seeds", "0", "--output", str(out), "--work-dir", str(work)]) == 0
    first = json.loads((out / "results.json").read_text())
    command = first["command"]
    assert command == (f"segbalance experiment --report-only --output {shlex.quote(str(out))} "
                       f"--work-dir {shlex.quote(str(work))} --seeds 0")
    assert f"`{command}`" in (out / "results.md").read_text()
    shutil.rmtree(out)
    argv = shlex.split(command)
    assert argv[:2] == ["segbalance", "experiment"] and cli.main(argv[1:]) == 0
    assert json.loads((out / "results.json").read_text())["results"] == first["results"]


@pytest.mark.parametrize("option, value, message", [
    ("--seeds", "0,x", "argument --seeds: 'x' is not an integer; give comma-separated integers, e.g. 0,1,2"),
    ("--drops", "0.3,abc", "argument --drops: 'abc' is not a number; give comma-separated numbers, e.g. 0,0.3,0.6"),
])
def test_a_list_option_that_does_not_parse_names_the_value(option, value, message, tmp_path, capsys):
    """QA D9: argparse said "invalid <lambda> value" and "invalid _floats value"."""
    with pytest.raises(SystemExit) as stop:
        cli.main(["experiment", "--output", str(tmp_path / "o"), option, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "invalid" not in err
    assert not (tmp_path / "o").exists()


def test_a_report_s_plan_is_what_its_rows_were_trained_with():
    """results.json's plan held the --report-only call's own options (max 100 epochs, patience 10) over rows
    trained with 150 / 20; fields whose rows differ are None (training_sets lists them), unrecorded ones stay."""
    from dataclasses import asdict

    from segbalance.pipeline.experiment import Plan, rows_plan

    rows = [{"dataset": "nuclei", "drop": 0.6, "seed": 2, "max_epochs": 150, "patience": 20, "size": 64},
            {"dataset": "shapes", "drop": 0.0, "seed": 0, "max_epochs": 150, "patience": 10, "size": 64},
            {"dataset": "nuclei", "drop": 0.0, "seed": 0, "max_epochs": 150, "patience": 20}]
    call = asdict(Plan(max_epochs=100, patience=5, size=32))
    plan = rows_plan(call, rows)
    assert (plan["max_epochs"], plan["patience"], plan["size"]) == (150, None, 32)  # size: not every row says
    assert (plan["datasets"], plan["drop_fractions"], plan["seeds"]) == (["nuclei", "shapes"], [0.0, 0.6], [0, 2])
    assert plan["terms"] == call["terms"] and call["max_epochs"] == 100  # the rest stays; the input is not changed
    assert rows_plan(call, []) == call


def test_only_the_default_scratch_work_folder_is_removed_at_the_end(tmp_path, monkeypatch, capsys):
    """QA 25: a run without --work-dir resumed from an OUTPUT/_work that an earlier run had been given as its
    --work-dir (rows, kept models) and then deleted it."""
    from segbalance.pipeline.output_guard import read_marker, write_marker

    trained = []
    fake_cells(monkeypatch, trained)
    out = tmp_path / "R"
    assert cli.main(["experiment", "--quick", "--output", str(out), "--work-dir", str(out / "_work")]) == 0
    rows = (out / "_work" / "results.jsonl").read_text()
    assert cli.main(["experiment", "--quick", "--output", str(out)]) == 0
    assert (out / "_work" / "results.jsonl").read_text() == rows and len(trained) == 2  # resumed from, and kept
    assert f"experiment: kept {out / '_work'} (it was there before this run" in capsys.readouterr().out
    scratch = tmp_path / "S"  # the default: this run's scratch folder goes at its end
    assert cli.main(["experiment", "--quick", "--output", str(scratch)]) == 0
    assert not (scratch / "_work").exists() and (scratch / "results.md").is_file()
    stopped = tmp_path / "T"  # a stopped default run's scratch folder: resumed, then removed too
    (stopped / "_work").mkdir(parents=True)
    write_marker(stopped / "_work", "experiment", scratch=True)
    write_marker(stopped, "experiment")
    assert read_marker(stopped / "_work")["scratch"] is True
    assert cli.main(["experiment", "--quick", "--output", str(stopped)]) == 0
    assert not (stopped / "_work").exists()


def test_rescoring_uses_the_crop_size_the_rows_were_trained_on():
    """QA 25: `--report-only --rescore` without --size scored rows trained on 32x32 crops on new 64x64 ones
    (the plan's default) while results.md said 32x32."""
    from segbalance.pipeline.experiment import rescore_plan

    rows = [{**_row("shapes", 0.3, "ce/none/none", seed, 0.5), "size": 32} for seed in (0, 1)]
    rows.append({**_row("nuclei", 0.3, "ce/none/none", 0, 0.5), "size": 48})
    assert Plan().size == 64 and rescore_plan(Plan(), rows, "shapes").size == 32
    assert rescore_plan(Plan(), rows, "nuclei").size == 48
    assert rescore_plan(Plan(), [_row("shapes", 0.3, "ce/none/none", 0, 0.5)], "shapes").size == 64  # unrecorded
    with pytest.raises(UserError, match="--rescore: the selected shapes rows were trained on crops of 32x32 and "
                                        "64x64: rescore rows of one size at a time"):
        rescore_plan(Plan(), rows + [{**_row("shapes", 0.3, "ce/none/marginal", 0, 0.5), "size": 64}], "shapes")


def test_counts_and_training_time_read_as_words():
    """Cosmetic (QA 25): "1 epochs", "1 rows" and "0.0 h of training time" after a quick run."""
    from segbalance.contract import counted
    from segbalance.pipeline.experiment_report import training_time

    assert [counted(n, "epoch") for n in (0, 1, 2)] == ["0 epochs", "1 epoch", "2 epochs"]
    assert [training_time(s) for s in (20, 90, 359, 360, 3600, 9000)] == \
        ["1 min", "2 min", "6 min", "0.1 h", "1.0 h", "2.5 h"]


def test_each_row_records_the_commit_of_the_code_that_trained_it(tmp_path, monkeypatch):
    """Session 35: the commit was read when a row was written, after its training (49 minutes), so a checkout
    that moved on meanwhile was named as the code that trained it."""
    from segbalance.pipeline import experiment
    from segbalance.pipeline.experiment import run_group

    plan = Plan(datasets=["shapes"], drop_fractions=[0.0], terms=["ce"], weightings=["none"], missing=["none"],
                seeds=[0, 1, 2], num_images=8, test_images=4, size=32, max_epochs=10)
    work = tmp_path / "work"
    train, _ = dataset_folders("shapes", plan, 0.0, work)
    config = experiment.experiment_config(plan, train, work / "run", NAMES)
    checkout = iter(["aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc", "dddddddddddd"])  # HEAD moves at each look
    monkeypatch.setattr(experiment, "source_commit", lambda: next(checkout))
    fake_cells(monkeypatch, [], miou=0.5)
    results = []
    run_group("shapes", 0.0, plan, config, [None] * 4, work, results)
    assert [r["code_commit"] for r in results] == ["aaaaaaaaaaaa"] * 3
    run_group("shapes", 0.0, dataclasses.replace(plan, seeds=[3]), config, [None] * 4, work, results,
              commit="eeeeeeeeeeee")  # the experiment's own, taken when it started
    assert results[-1]["code_commit"] == "eeeeeeeeeeee"
    # and the machine, with its CPU model (QA 93: the Intel and AMD machines train other numbers, unrecorded)
    models = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
    assert {r["machine"] for r in results} == {experiment.machine_name()}
    assert models[0] in results[0]["machine"] and f"{os.cpu_count()} CPU cores" in results[0]["machine"]
