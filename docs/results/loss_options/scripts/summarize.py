"""Tables from results.jsonl: test per-class P/R/IoU, and the training curves (val loss per epoch)."""
import json, sys
rows = [json.loads(l) for l in open("/tmp/qa_85/results.jsonl") if l.strip() and not l.startswith('{"name": "probe')]
out = []
out.append("| run | epochs (best) | mIoU | precision per class | recall per class | IoU per class | boundary-px acc | mean top p | pred frac |")
out.append("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    t = r["test"]
    f = lambda v: " / ".join(f"{x:.3f}" for x in v)
    out.append(f"| {r['name']} | {r['epochs_run']} ({r['best_epoch']}) | {t['miou']:.3f} | {f(t['precision'])} | {f(t['recall'])} | "
               f"{f(t['iou'])} | {t['boundary_acc']:.3f} | {t['mean_top_prob']:.3f} | {f(t['pred_frac'])} |")
out.append("")
out.append("Training curves: val_loss per epoch (and own val mIoU on the val crops' complete masks every 5th epoch); "
           "early stop on val_loss, patience 6 counted from epoch 10, best weights restored.")
out.append("")
out.append("| run | val_loss by epoch 1.. (best marked *) | val mIoU (full masks) at epochs 5,10,15,... and best |")
out.append("|---|---|---|")
for r in rows:
    c = r["curve"]; b = r["best_epoch"]
    vl = " ".join(("*" if e["epoch"] == b else "") + f"{e['val_loss']:.4g}" for e in c)
    vm = " ".join(f"{e['epoch']}:{e['val_miou_full']:.3f}" for e in c if e["epoch"] % 5 == 0)
    vm += f" best {b}:{c[b-1]['val_miou_full']:.3f}"
    out.append(f"| {r['name']} | {vl} | {vm} |")
open("/tmp/qa_85/tables.md", "w").write("\n".join(out) + "\n")
print("\n".join(out[:len(rows) + 2]))
