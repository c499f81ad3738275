"""Stand-ins for `segbalance experiment` tests: a run_fn that records the training config it gets."""
import dataclasses
import json


def recording_run_fn(cell_dir, seen: list):
    """A run_fn that appends the TrainerConfig's training section to ``seen`` and writes the summary
    train_cell reads (two epochs, the second best) to ``cell_dir/run``, as run_fn does."""
    from segbalance.trainer import task

    def run_fn(fn_args):
        config = task.trainer_config(fn_args.custom_config)[0]
        # backup_dir: the folder run_fn would back up into
        seen.append(dataclasses.replace(config.training, backup_dir=task.backup_dir_for(
            config, fn_args.train_files, fn_args.model_run_dir)))
        (cell_dir / "run").mkdir(parents=True)
        (cell_dir / "run" / task.SUMMARY_FILE).write_text(json.dumps(
            {"history": {"val_miou": [0.1, 0.2]}, "class_weights": None}))

    return run_fn


def fake_cells(monkeypatch, trained: list, miou: float = 0.5, num_classes: int = 4):
    """``experiment.run_group`` without a pipeline run or a training: each cell trained appends its seed
    to ``trained`` and scores ``miou`` (every class too)."""
    from segbalance.pipeline import experiment

    monkeypatch.setattr(experiment, "pipeline_artifacts",
                        lambda config: {"examples": "E", "transform_graph": "T", "class_stats": "S"})

    def train_cell(artifacts, base_cfg, loss, seed, workdir, plan, pixel_weights="none"):
        trained.append(seed)
        return {"serving_dir": str(workdir / "serving"), "seconds": 1.0, "history": {"val_miou": [miou], "loss": [1.0]},
                "class_weights": None, "epochs_run": 1, "best_epoch": 0, "stopped_epoch": None}

    monkeypatch.setattr(experiment, "train_cell", train_cell)
    monkeypatch.setattr(experiment, "evaluate", lambda *a: {"miou": miou, "per_class_iou": [miou] * num_classes})
