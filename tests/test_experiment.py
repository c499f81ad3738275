"""`segbalance experiment --quick`: the table's structure, and its numbers come from the run."""
import json
import re

import pytest

from segbalance.pipeline import cli
from segbalance.pipeline.experiment import Plan, load_results

pytestmark = pytest.mark.slow


def test_quick_experiment_writes_tables_and_plots_from_the_run(tmp_path):
    out, work = tmp_path / "results", tmp_path / "work"
    assert cli.main(["experiment", "--quick", "--output", str(out), "--work-dir", str(work)]) == 0
    report = json.loads((out / "results.json").read_text())
    plan = Plan.quick()
    rows = report["results"]
    assert {(r["loss"], r["seed"]) for r in rows} == {(loss, 0) for loss in plan.missing_losses}
    assert all(0.0 <= r["miou"] <= 1.0 and len(r["per_class_iou"]) == 4 for r in rows)
    table = (out / "results.md").read_text()
    assert "| loss | mIoU, drop 0.3 |" in table
    for row in rows:  # every mIoU in the table is one the run measured
        assert re.search(rf"\| {row['loss']} \| {row['miou']:.3f} \|", table), row["loss"]
    seed004 = report["seed004"]["ours"]
    assert f"{seed004['plain_ce_missing']:.3f}" in table and seed004["plain_ce_missing"] > seed004["marginal_ce"]
    for plot in ("miou_vs_drop.png", "per_class_iou_missing.png", "training_curves.png", "examples.png"):
        assert (out / plot).stat().st_size > 5_000, plot
    # A second run resumes: every training is reused from results.jsonl (except those kept for the plots).
    logged = load_results(work)
    assert len(logged) == len(rows)
