"""Key comparisons (expectation checks) from results.jsonl."""
import json
R = {}
for l in open("/tmp/qa_85/results.jsonl"):
    if l.strip():
        r = json.loads(l); R[r["name"]] = r["test"]
def g(n, k, c=None):
    if n not in R: return None
    v = R[n][k]; return v if c is None else v[c]
def row(label, names, key, c=None):
    vals = [g(n, key, c) for n in names]
    print(f"{label:55s} " + "  ".join(f"{n}={v:.3f}" for n, v in zip(names, vals) if v is not None))
fgp = lambda n, C: sum(R[n]["precision"][1:C]) / (C - 1)
fgr = lambda n, C: sum(R[n]["recall"][1:C]) / (C - 1)
print("== fn_weights / fp_weights (rare: nuclei boundary=2, buildings edge=2)")
for d, s in (("nuc", (0, 1)), ("bld", (0, 1))):
    for seed in s:
        names = [f"{d}_ce_s{seed}", f"{d}_fn4_s{seed}", f"{d}_fp4_s{seed}", f"{d}_fn0_s{seed}"]
        names = [n for n in names if n in R]
        row(f"{d} s{seed} recall(rare)", names, "recall", 2)
        row(f"{d} s{seed} precision(rare)", names, "precision", 2)
        row(f"{d} s{seed} recall(class1)", names, "recall", 1)
        row(f"{d} s{seed} pred frac(rare)", names, "pred_frac", 2)
print("== Tversky (mean over foreground classes)")
for d, C in (("nuc", 3), ("bld", 4)):
    for n in (f"{d}_tv37_s0", f"{d}_tv73_s0"):
        print(f"{n}: fg recall {fgr(n, C):.3f} fg precision {fgp(n, C):.3f} recall {R[n]['recall']} precision {R[n]['precision']} fg pred frac {1 - R[n]['pred_frac'][0]:.4f}")
print("== focal / label smoothing / top-k / low confidence / dice (nuclei)")
for n in ("nuc_ce_s0", "nuc_ce_s1", "nuc_focal2_s0", "nuc_focal2a_s0", "nuc_ls02_s0", "nuc_topk01_s0", "nuc_topk01_s1",
          "nuc_lowconf_s0", "nuc_lowconf_s1", "nuc_dice_s0", "nuc_gdice_s0"):
    t = R[n]; print(f"{n:16s} top p {t['mean_top_prob']:.3f} recall(bnd) {t['recall'][2]:.3f} prec(bnd) {t['precision'][2]:.3f} IoU(bnd) {t['iou'][2]:.3f} bnd-px acc {t['boundary_acc']:.3f} mIoU {t['miou']:.3f}")
print("== partial annotation (drop 0.6), complete test masks")
for n in sorted(k for k in R if "drop" in k or k.startswith(("nuc_ce", "bld_ce"))):
    t = R[n]; print(f"{n:22s} recall {t['recall']} IoU {t['iou']} mIoU {t['miou']:.3f}")
print("== weight maps: accuracy on own-NumPy boundary pixels (3x3 neighbourhood with 2 classes)")
for n in sorted(k for k in R if any(s in k for s in ("_ce_s", "edge4", "unet")) and "drop" not in k):
    t = R[n]; print(f"{n:16s} boundary acc {t['boundary_acc']:.3f} interior acc {t['interior_acc']:.4f} mIoU {t['miou']:.3f} IoU {t['iou']}")
