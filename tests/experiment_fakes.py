"""Stand-ins for `segbalance experiment` tests: a run_fn that records the training config it gets."""
import json


def recording_run_fn(cell_dir, seen: list):
    """A run_fn that appends the TrainerConfig's training section to ``seen`` and writes the summary
    train_cell reads (two epochs, the second best) to ``cell_dir/run``, as run_fn does."""
    from segbalance.trainer import task

    def run_fn(fn_args):
        seen.append(task.trainer_config(fn_args.custom_config)[0].training)
        (cell_dir / "run").mkdir(parents=True)
        (cell_dir / "run" / task.SUMMARY_FILE).write_text(json.dumps(
            {"history": {"val_miou": [0.1, 0.2]}, "class_weights": None}))

    return run_fn
