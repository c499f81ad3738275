"""False blocks of the drift gate on normal spans made of whole groups (new crops of new tiles, scans or
photos), with the bootstrap drawing images one by one (until session 26) or whole groups.

    .venv/bin/python benchmarks/drift_groups.py [--reps 200] [--seed 0] [--work-dir DIR] [--output FILE]

Data: the real sample kinds (nuclei, buildings, lesions, labelme), pools of ``segbalance sample-data`` crops
with their ``groups.json`` (the pools of ``benchmarks/drift_thresholds.py``, shared through ``--work-dir``).
A repetition splits the groups at random: the accepted ClassStats are the crops of groups taking about
``--accepted`` crops (200; 600 is half the pool), a normal span the crops of the next k groups (k = 1, 2, 4, 8); a shifted span is the same
span with its most frequent class relabelled as the second (detection). Every decision is the product's
``drift_metrics.compare`` at the default thresholds, as the gate makes it from the per-image tables:
image by image (the bootstrap's draws, the vanished and new classes' chances; the gate without group
ids, and until session 26) or by group.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drift_thresholds import POOL, pool, shifted, show, stats  # noqa: E402  (same pools, same counting)

KINDS = ("nuclei", "buildings", "lesions", "labelme")
SPAN_GROUPS = (1, 2, 4, 8)
ACCEPTED = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--accepted", type=int, default=ACCEPTED, help="crops of the accepted groups (about)")
    parser.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "segbalance_drift_thresholds"))
    parser.add_argument("--output", help="also write the table to this markdown file")
    args = parser.parse_args()

    from segbalance.components.component_config import DriftConfig
    from segbalance.components.drift_metrics import THRESHOLD_KEYS, class_presence, compare, sampling_limits

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    default = DriftConfig()
    thresholds = {k: getattr(default, k) for k in THRESHOLD_KEYS}
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    rows = []
    for kind in args.kinds.split(","):
        data = pool(work, kind, 0.0, "all", POOL, 1)
        names, counts, missing, groups = data["names"], data["counts"], data["missing"], data["groups"]
        labels, of = np.unique(groups, return_inverse=True)
        sizes = np.bincount(of)
        total = counts.sum(0)
        foreground = sorted((c for c in range(1, len(total)) if total[c] > 0), key=lambda c: -total[c])
        cells = {(how, k, case): [] for how in ("images", "groups") for k in SPAN_GROUPS
                 for case in ("normal", "relabelled")}
        why = {}  # what blocked the normal spans, by bootstrap: the first words of each anomaly
        span_images = {k: [] for k in SPAN_GROUPS}
        for _ in range(args.reps):
            order = rng.permutation(len(labels))
            taken = np.searchsorted(np.cumsum(sizes[order]), args.accepted) + 1  # groups holding ~that many crops
            accepted = np.isin(of, order[:taken])
            base = stats(names, counts[accepted], missing[accepted], True)
            seed = int(rng.integers(1 << 30))
            # what the gate passes compare() from the per-image tables: the classes each unit holds
            held = {"images": class_presence(counts[accepted])[:2],
                    "groups": class_presence(counts[accepted], groups[accepted])[:2]}
            for k in SPAN_GROUPS:
                new = np.isin(of, order[taken:taken + k])
                n = int(new.sum())
                span_images[k].append(n)
                limits = {"images": sampling_limits(counts[accepted], missing[accepted], n, default.significance,
                                                    seed=seed),
                          "groups": sampling_limits(counts[accepted], missing[accepted], n, default.significance,
                                                    seed=seed, groups=groups[accepted], new_groups=k)}
                new_groups = {"images": None, "groups": groups[new]}
                spans = {"normal": counts[new]}
                if len(foreground) > 1:
                    spans["relabelled"] = shifted(counts[new], "relabel", foreground[0], foreground[1])
                for case, span in spans.items():
                    current = stats(names, span, missing[new], False)
                    for how, limit in limits.items():
                        presence = {"new": class_presence(span, new_groups[how])[:2], "accepted": held[how],
                                    "unit": how}
                        result = compare(current, base, thresholds, "block", limit, presence)
                        cells[how, k, case].append(result["status"] == "blocked")
                        if case == "normal":
                            for anomaly in result["anomalies"]:
                                key = (how, " ".join(anomaly.split()[:2]))
                                why[key] = why.get(key, 0) + 1
        for case in ("normal", "relabelled"):
            row = [kind, case, f"{len(labels)} groups, median {int(np.median(sizes))} crops"]
            for k in SPAN_GROUPS:
                row.append(f"{np.mean(span_images[k]):.0f}")
                row += [f"{100 * np.mean(cells[how, k, case]):.0f}" if cells[how, k, case] else "-"
                        for how in ("images", "groups")]
            rows.append(row)
        print(f"{kind}: done at {time.perf_counter() - start:.0f} s; normal spans' anomalies "
              f"{dict(sorted(why.items()))}", flush=True)
    head = ["data set", "span", "pool"] + [f"{label} ({k} group{'s' * (k > 1)})" for k in SPAN_GROUPS
                                            for label in ("images", "% by image", "% by group")]
    lines = [f"{args.reps} repetitions; seed {args.seed}; accepted: the crops of groups holding about {args.accepted}; "
             f"default thresholds and significance {default.significance}. Cells: mean images in the span, % of "
             f"spans blocked with the bootstrap drawing images, and drawing whole groups.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    show(lines, start, args.output)


if __name__ == "__main__":
    main()
