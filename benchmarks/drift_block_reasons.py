"""Which rule of the drift gate blocks normal spans of whole groups (session 28's diagnosis).

    .venv/bin/python benchmarks/drift_block_reasons.py [--reps 200] [--accepted 200] [--kinds lesions]

The spans, seeds and pools of ``benchmarks/drift_groups.py`` (bootstrap by group), with, per span size, how many
blocked spans had each measure beyond its threshold and limit, the new- and vanished-class rules, classes no
accepted group held, the class that moved most, and the median measure / limit. docs/benchmarks.md "Drift
gate: classes too rare to sample" quotes its output on the gate before session 28's change (commit 884cd76 with
this file copied in) and after it.
"""
import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drift_thresholds import POOL, pool, stats  # noqa: E402  (same pools, same counting)

from segbalance.components.component_config import DriftConfig  # noqa: E402
from segbalance.components.drift_metrics import THRESHOLD_KEYS, SAMPLED, class_presence, compare, sampling_limits  # noqa: E402,E501

p = argparse.ArgumentParser(); p.add_argument("--reps", type=int, default=200); p.add_argument("--accepted", type=int, default=200)
p.add_argument("--kinds", default="nuclei,buildings,lesions,labelme"); p.add_argument("--seed", type=int, default=0)
p.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "segbalance_drift_thresholds"))
a = p.parse_args()
SPAN_GROUPS = (1, 2, 4, 8)
work = Path(a.work_dir)
d = DriftConfig(); th = {k: getattr(d, k) for k in THRESHOLD_KEYS}
rng = np.random.default_rng(a.seed)
for kind in a.kinds.split(","):
    data = pool(work, kind, 0.0, "all", POOL, 1)
    names, counts, missing, groups = data["names"], data["counts"], data["missing"], data["groups"]
    labels, of = np.unique(groups, return_inverse=True); sizes = np.bincount(of)
    total = counts.sum(0)
    foreground = sorted((c for c in range(1, len(total)) if total[c] > 0), key=lambda c: -total[c])
    rec = []
    for _ in range(a.reps):
        order = rng.permutation(len(labels))
        taken = np.searchsorted(np.cumsum(sizes[order]), a.accepted) + 1
        accepted = np.isin(of, order[:taken])
        base = stats(names, counts[accepted], missing[accepted], True)
        seed = int(rng.integers(1 << 30))
        heldg = class_presence(counts[accepted], groups[accepted])[:2]
        for k in SPAN_GROUPS:
            new = np.isin(of, order[taken:taken + k]); n = int(new.sum())
            lim = sampling_limits(counts[accepted], missing[accepted], n, d.significance, seed=seed, groups=groups[accepted], new_groups=k)
            span = counts[new]
            pres = {"new": class_presence(span, groups[new])[:2], "accepted": heldg, "unit": "groups"}
            r = compare(stats(names, span, missing[new], False), base, th, "block", lim, pres)
            beyond = {m: (r[m] is not None and r[m] > th[m] and r[m] > lim[m]) for m in SAMPLED}
            acc_tot = counts[accepted].sum(0); new_tot = span.sum(0)
            newcls = [c for c in range(len(names)) if acc_tot[c] == 0 and new_tot[c] > 0]
            rec.append(dict(k=k, blocked=r["status"] == "blocked", anomalies=r["anomalies"], beyond=beyond,
                            js=r["js_divergence"], mac=r["max_abs_change"], mcls=r["max_change_class"],
                            ljs=lim["js_divergence"], lmac=lim["max_abs_change"], factor=lim["small_sample_factor"],
                            G=heldg[1], newcls=[str(names[c]) for c in newcls],
                            acc_fg_groups=heldg[0].tolist(), new_fg_groups=pres["new"][0].tolist(),
                            zero_lim=lim["max_abs_change"] == 0.0,
                            vanished=[n_ for n_, c in r["vanished_classes"].items() if c is not None and c < th["vanished_class_chance"]],
                            newanom=any(x.startswith("classes absent") for x in r["anomalies"])))
    print(f"=== {kind} (accepted ~{a.accepted}) ===")
    for k in SPAN_GROUPS:
        R = [x for x in rec if x["k"] == k]; B = [x for x in R if x["blocked"]]
        def pct(f, S=R): return 100 * np.mean([bool(f(x)) for x in S]) if S else 0
        print(f" k={k}: blocked {pct(lambda x: x['blocked']):.1f}%  (n={len(R)})")
        if not B: continue
        print(f"   among blocked ({len(B)}): JS beyond {sum(x['beyond']['js_divergence'] for x in B)}, maxabs beyond {sum(x['beyond']['max_abs_change'] for x in B)}, "
              f"missing beyond {sum(x['beyond']['missing_rate_change'] for x in B)}, new-class anomaly {sum(x['newanom'] for x in B)}, vanished anomaly {sum(bool(x['vanished']) for x in B)}")
        print(f"   blocked spans holding a class the accepted groups lack: {sum(bool(x['newcls']) for x in B)} ; with a zero max_abs limit: {sum(x['zero_lim'] for x in B)}")
        print(f"   all spans holding a class the accepted lack: {sum(bool(x['newcls']) for x in R)} -> blocked {sum(bool(x['newcls']) and x['blocked'] for x in R)}; "
              f"spans without: {sum(not x['newcls'] for x in R)} -> blocked {sum((not x['newcls']) and x['blocked'] for x in R)}")
        print("   max-change class among blocked:", Counter(x["mcls"] for x in B), " new classes among blocked:", Counter(c for x in B for c in x["newcls"]))
        print("   median value/limit among blocked: js", np.median([x['js']/max(x['ljs'],1e-12) for x in B]).round(2), " mac", np.median([x['mac']/max(x['lmac'],1e-12) for x in B]).round(2))
