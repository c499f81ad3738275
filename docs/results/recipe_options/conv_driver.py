"""QA 81 part 4: convergence of each optimizer x schedule through `segbalance run --config` (one output folder:
ingest / statistics cached). Writes conv_results.jsonl: config, wall time, history, best/last val mIoU, SegEvaluator mIoU."""
import glob, json, os, subprocess, sys, time
OUT = "/tmp/qa_81/conv/out"
SEG = "/work/main/.venv/bin/segbalance"
runs = [l.split(None, 1) for l in open(sys.argv[1]).read().strip().splitlines() if l.strip() and not l.startswith("#")]
for name, training in runs:
    cfg = f"/tmp/qa_81/conv/cfg_{name}.yaml"
    open(cfg, "w").write(f"output_dir: {OUT}\ntraining: {training}\n")
    t0 = time.time()
    p = subprocess.run([SEG, "run", "--config", cfg], capture_output=True, text=True)
    wall = time.time() - t0
    open(f"/tmp/qa_81/conv/log_{name}.txt", "w").write(p.stdout + p.stderr)
    row = {"name": name, "training": training, "rc": p.returncode, "wall_s": round(wall, 1)}
    try:
        s = json.load(open(os.path.join(OUT, "run_summary.json")))
        row.update(miou=s.get("miou"), blessed=s.get("blessed"), reason=s.get("blessing_reason"), model=s.get("model"))
        runs_dirs = sorted(glob.glob(os.path.join(OUT, "pipeline_root/SegTrainer/model_run/*/training_summary.json")),
                           key=os.path.getmtime)
        ts = json.load(open(runs_dirs[-1]))
        h = ts["history"]
        row.update(summary=runs_dirs[-1], val_miou=h.get("val_miou"), loss=h.get("loss"), best_epoch=ts["best_epoch"],
                   best_val_miou=ts["best_val_miou"], last_val_miou=h.get("val_miou", [None])[-1],
                   initial_loss=ts["initial_loss"], cfg_training=ts["config"]["training"],
                   mixed_precision=ts.get("mixed_precision"))
    except Exception as exc:
        row["error"] = repr(exc)
    row["tail"] = (p.stdout + p.stderr)[-600:] if p.returncode else ""
    with open("/tmp/qa_81/conv/conv_results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(name, row.get("rc"), row.get("wall_s"), row.get("best_val_miou"), row.get("last_val_miou"), row.get("miou"), flush=True)
