"""Class-distribution drift between two ClassStats (pure NumPy, no TFX).

Inputs are ``class_stats.json`` dicts (see contracts: ``class_names``, ``pixel_counts``,
``num_records``, ``images_with_missing``). Classes are matched by name, so a class list
that grew or was reordered between runs is compared class by class; a class the baseline
did not have (or had no pixels of) is a *new class*.

- frequencies: pixel count / all labelled pixels (ignored pixels are not counted);
- Jensen-Shannon divergence in bits, ``0.5 KL(p||m) + 0.5 KL(q||m)``, ``m = (p+q)/2``
  (0 = identical, 1 = disjoint supports);
- largest absolute change of one class's frequency;
- missing-annotation rate: images with at least one class not labelled / records;
- vanished classes: classes the baseline had and the new data has no pixel of. Each gets the
  chance of that if nothing had changed, ``(1 - f) ** n`` with ``f`` the baseline's fraction of
  images holding the class and ``n`` the new records: a rare class absent from a small span is
  likely (no anomaly), one absent from a span where it would have shown in several images is not;
- new classes: classes the baseline had no pixel of, each with the chance that all the new images
  holding it would be new ones had nothing changed (``new_class_chances``; session 26: before, every
  new class was an anomaly).

Where the images carry group ids (``image/group_id``: crops of one tile, slices of one scan) both
chances and the bootstrap below count groups, not images (``class_presence``, ``sampling_limits``).

What sampling alone gives (``sampling_limits``): n new images drawn from the accepted distribution
differ from it by chance, and by how much depends on n and on the data (QA, session 19: the null
99th percentile of JS at n = 10 was 0.005 on nuclei and 0.21 on labelme's photos; fixed thresholds
blocked 85 % of normal 10-image labelme spans and missed shifts 3 to 5 times the noise on nuclei).
The gate therefore also requires a measure to exceed its ``1 - significance`` quantile between
bootstrap draws of the accepted images and the accepted totals; the configured thresholds stay the
smallest change that blocks.

A class that fewer than ``MIN_HOLDING`` (2) accepted units hold is left out of the sampled measures, on both
sides (``unsampled_classes``): the bootstrap learns a class's spread from the units holding it, and one unit
(or none) shows none, as ``small_sample_factor`` says of the units as a whole. Such a class is judged by its
presence instead (``new_class_chances``, ``rare_class_chances``; session 28: on lesions, where 11 of 175 scan
groups hold all lesion pixels, these classes caused most of the 10-14 % false blocks of normal spans).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from segbalance.contract import DRIFT_ACTIONS, counted

THRESHOLD_KEYS = ("js_divergence", "max_abs_change", "missing_rate_change", "vanished_class_chance", "new_class_chance")


def js_divergence(p, q) -> float:
    """Jensen-Shannon divergence (base 2) of two frequency vectors that each sum to 1."""
    return float(js_rows(np.asarray(p, np.float64)[None], q)[0])


def js_rows(p: np.ndarray, q) -> np.ndarray:
    """``js_divergence`` of each row of ``p`` ([d, K], rows summing to 1) with ``q`` ([K])."""
    q = np.asarray(q, np.float64)
    m = 0.5 * (p + q)

    def kl(a, b):  # a > 0 implies b = m > 0
        return np.where(a > 0, a * np.log2(np.where(a > 0, a, 1.0) / np.where(a > 0, b, 1.0)), 0.0).sum(-1)

    return np.maximum(0.0, 0.5 * kl(p, m) + 0.5 * kl(np.broadcast_to(q, p.shape), m))


def aligned_counts(current: dict, baseline: dict):
    """(names, current counts, baseline counts) over the union of both class lists, by name."""
    names: List[str] = list(current["class_names"])
    names += [n for n in baseline["class_names"] if n not in names]

    def counts(stats):
        if len(stats["class_names"]) != len(stats["pixel_counts"]) \
                or len(set(stats["class_names"])) != len(stats["class_names"]):
            raise ValueError(f"ClassStats has {len(stats['class_names'])} class names for "
                             f"{len(stats['pixel_counts'])} pixel counts (names must be distinct)")
        by_name = dict(zip(stats["class_names"], stats["pixel_counts"]))
        return np.array([float(by_name.get(n, 0)) for n in names])

    return names, counts(current), counts(baseline)


DRIFT_FIELDS = ("class_names", "pixel_counts", "image_counts", "num_records", "images_with_missing")  # compare() reads


def drift_fields(stats: dict) -> dict:
    """The part of a class_stats.json that ``compare`` reads (a DriftReport keeps it for the
    accepted ClassStats, so a deleted artifact can still be compared with)."""
    return {key: stats[key] for key in DRIFT_FIELDS if key in stats}


def frequencies(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total > 0 else np.zeros_like(counts)


def missing_rate(stats: dict) -> Optional[float]:
    """Fraction of records with a class not labelled; None when the stats do not record it."""
    if "images_with_missing" not in stats:
        return None
    return stats["images_with_missing"] / max(1, stats["num_records"])


def vanished_chances(names, current_counts, base_counts, current: dict,
                     baseline: dict, presence: Optional[dict] = None) -> Dict[str, Optional[float]]:
    """Classes with baseline pixels and none now (``aligned_counts``' names and counts), each with the
    chance that none of the new records holds it if its image frequency were unchanged:
    ``(1 - image_counts / num_records) ** new records`` (None when the baseline does not record
    image counts). With ``presence`` (``class_presence`` of both sides) in its units: groups where the
    images have them (``(1 - f_g) ** m``, f_g the fraction of accepted groups holding the class, m the
    new groups: crops of one tile hold the same classes, so n of them are not n chances)."""
    images = dict(zip(baseline["class_names"], baseline.get("image_counts") or [None] * len(baseline["class_names"])))
    records = int(current.get("num_records", 0))
    chances: Dict[str, Optional[float]] = {}
    for i, (name, before, now) in enumerate(zip(names, base_counts, current_counts)):
        if before > 0 and now == 0:
            if presence is not None:
                held, units = presence["accepted"][0][i], presence["accepted"][1]
                chances[name] = float((1.0 - min(1.0, held / max(1, units))) ** presence["new"][1])
                continue
            held = images.get(name)
            frequency = min(1.0, held / max(1, baseline["num_records"])) if held is not None else None
            chances[name] = None if frequency is None else float((1.0 - frequency) ** records)
    return chances


def new_class_chances(names, current_counts, base_counts, presence: dict) -> Dict[str, float]:
    """Classes without baseline pixels that have pixels now, each with the chance that every unit
    (image, or group) holding it falls among the new ones when accepted and new units are drawn from one
    population (exchangeable): with k of the m new units holding it and none of the G accepted ones,
    ``C(m, k) / C(m + G, k) = prod_i (m - i) / (m + G - i)``. A rare class in one new image of a big
    span is likely (0.04 for one of 26 new images beside 600); one that fills a span is not."""
    (new_held, new_units), (_, accepted_units) = presence["new"], presence["accepted"]
    return {name: held_by_new_chance(0, int(new_held[i]), new_units, accepted_units)
            for i, (name, before, now) in enumerate(zip(names, base_counts, current_counts)) if before == 0 and now > 0}


def held_by_new_chance(h: int, k: int, new_units: int, accepted_units: int) -> float:
    """The chance that at least ``k`` of the ``h + k`` units holding a class are among the ``new_units`` when
    they and the ``accepted_units`` are drawn from one population: the hypergeometric tail
    ``sum_{j >= k} C(h + k, j) C(G + m - h - k, m - j) / C(G + m, m)`` (G accepted, m new units); with h = 0,
    ``C(m, k) / C(m + G, k)``."""
    holders, total = h + k, new_units + accepted_units
    tail = sum(math.comb(holders, j) * math.comb(total - holders, new_units - j)
               for j in range(k, min(new_units, holders) + 1))
    return float(tail / math.comb(total, new_units))


def rare_class_chances(names, current_counts, presence: dict, unsampled) -> Dict[str, float]:
    """Classes the sampled measures leave out (``unsampled``: indices, ``sampling_limits``' ``unsampled_classes``)
    that some accepted units hold and that have pixels now, each with the chance that at least k of the h + k
    units holding it fall among the m new ones when accepted (G) and new units are drawn from one population:
    ``held_by_new_chance`` (h accepted units hold it, k new ones). Classes no accepted unit holds are left to
    ``new_class_chances``."""
    (new_held, new_units), (accepted_held, accepted_units) = presence["new"], presence["accepted"]
    return {names[i]: held_by_new_chance(int(accepted_held[i]), int(new_held[i]), new_units, accepted_units)
            for i in unsampled if accepted_held[i] > 0 and new_held[i] > 0 and current_counts[i] > 0}


def group_index(groups) -> Tuple[np.ndarray, int]:
    """(each image's group number [N], number of groups) of group labels, numbered in first-seen order; an
    image without a group (None) is a group of its own."""
    index: Dict[Any, int] = {}
    of = [index.setdefault(g if g is not None else ("", i), len(index)) for i, g in enumerate(groups)]
    return np.array(of, dtype=np.int64), len(index)


def class_presence(rows: np.ndarray, groups=None) -> Tuple[np.ndarray, int, str]:
    """(units holding each class [C], units, "groups" or "images") of per-image pixel counts ``rows`` [N, C]:
    the units are the images' groups (an image without one is its own) or, without ``groups``, the images."""
    rows = np.asarray(rows, np.float64).reshape(len(rows), -1)
    if groups is None:
        return (rows > 0).sum(0), len(rows), "images"
    of, count = group_index(groups)
    held = np.zeros((count, rows.shape[1]), bool)
    np.logical_or.at(held, of, rows > 0)
    return held.sum(0), count, "groups"


SAMPLED = ("js_divergence", "max_abs_change", "missing_rate_change")  # the measures sampling_limits bounds
MIN_HOLDING = 2  # accepted units that must hold a class for the sampled frequency measures to count it
DRAWS = 2000  # bootstrap draws: the 99.5th percentile of 2,000 lies within about 10 % of its limit
_GATHER = 4_000_000  # values gathered at once (draws x images x classes), to bound the memory of one step


def aligned_rows(names: List[str], class_names: List[str], rows) -> np.ndarray:
    """Per-image pixel counts ([B, len(class_names)], a per-image table's order) in ``aligned_counts``'
    ``names`` order, with zeros for classes the table does not have."""
    rows = np.asarray(rows, np.float64).reshape(len(rows), len(class_names))
    out = np.zeros((len(rows), len(names)))
    out[:, [names.index(n) for n in class_names]] = rows
    return out


def sampling_limits(rows: np.ndarray, missing, n: int, significance: float, draws: int = DRAWS,
                    seed: int = 0, groups=None, new_groups: Optional[int] = None) -> Optional[dict]:
    """How far n new images drawn from the accepted distribution lie from it by chance: the
    ``1 - significance`` quantile of each ``SAMPLED`` measure between ``draws`` bootstrap samples of the
    accepted images (``rows``: their per-image pixel counts, aligned; ``missing``: whether each has a
    class not labelled) and the accepted totals. A sample holds ``n_eff = n B / (n + B)`` images (B
    accepted): the variance of a new span's frequencies about the accepted ones is that of a sample
    of n plus the accepted ones' own, sigma^2 (1/n + 1/B) = sigma^2 / n_eff. A fixed ``seed`` makes a
    re-run's decision the same. None when there is nothing to draw from or ``significance`` is 0.

    ``groups`` (one label per accepted image; None: an image of its own) and ``new_groups`` (how many
    groups the n new images come from): images of one group (crops of one tile, slices of one scan) are
    alike, so a span of n images from m groups varies like m draws, not n. The bootstrap then draws
    whole groups, ``m_eff = m G / (m + G)`` of the G accepted ones (a cluster bootstrap). With every
    group a single image this is the image bootstrap above, draw for draw.

    The quantiles are widened by ``small_sample_factor`` of the units drawn from (``small_sample_factor``
    in the result; JS by its square).

    Classes that fewer than ``MIN_HOLDING`` of those units hold are left out of the frequencies (their pixels
    dropped; ``unsampled_classes`` in the result: their indices, which ``compare`` leaves out of the new span's
    measures too): the draws cannot show how much such a class varies between the units that hold it (session
    28: lesions' normal spans were blocked 10-14 % of the time, mostly by a lesion class no accepted scan group
    or one held)."""
    rows = np.asarray(rows, np.float64)
    missing = np.asarray(missing, np.float64)
    accepted = len(rows)
    if accepted == 0 or n <= 0 or significance <= 0 or rows.sum() == 0:
        return None
    sizes = np.ones(accepted)
    grouped = {}
    if groups is not None:
        of, count = group_index(groups)
        m = int(new_groups) if new_groups is not None else n
        if count < accepted or m < n:
            grouped = {"groups": count, "new_groups": m}
            sizes = np.bincount(of, minlength=count).astype(np.float64)
            rows = np.stack([np.bincount(of, weights=rows[:, c], minlength=count) for c in range(rows.shape[1])],
                            axis=1)
            missing = np.bincount(of, weights=missing, minlength=count)
    units = len(rows)  # images, or groups
    unsampled = np.flatnonzero((rows > 0).sum(0) < MIN_HOLDING)
    if len(unsampled):
        rows = rows.copy()
        rows[:, unsampled] = 0.0
    drawn = grouped.get("new_groups", n)
    n_eff = max(1, int(round(drawn * units / (drawn + units))))
    base, base_missing = frequencies(rows.sum(0)), float(missing.sum() / sizes.sum() if grouped else missing.mean())
    rng = np.random.default_rng(seed)
    step = max(1, _GATHER // (n_eff * max(1, rows.shape[1])))
    measures: Dict[str, list] = {k: [] for k in SAMPLED}
    for start in range(0, draws, step):
        picks = rng.integers(0, units, size=(min(step, draws - start), n_eff))
        counts = rows[picks].sum(1)
        p = counts / np.maximum(counts.sum(1, keepdims=True), 1.0)
        measures["js_divergence"].append(js_rows(p, base))
        measures["max_abs_change"].append(np.abs(p - base).max(1))
        rate = missing[picks].sum(1) / sizes[picks].sum(1) if grouped else missing[picks].mean(1)
        measures["missing_rate_change"].append(np.abs(rate - base_missing))
    factor = small_sample_factor(units, significance)

    left = rows.sum() > 0  # some class is held by enough units to be compared

    def widened(measure: str, quantile: float) -> float:  # each measure lies in [0, 1]: no change exceeds 1
        if not math.isfinite(factor) or (not left and measure != "missing_rate_change"):
            return 1.0
        return min(1.0, quantile * (factor ** 2 if measure == "js_divergence" else factor))

    limits = {k: widened(k, float(np.quantile(np.concatenate(v), 1.0 - significance))) for k, v in measures.items()}
    return {**limits, "significance": float(significance), "new_images": int(n), "accepted_images": accepted,
            "n_eff": n_eff, "draws": int(draws), "small_sample_factor": factor if math.isfinite(factor) else None,
            "unsampled_classes": [int(i) for i in unsampled], **grouped}


def too_few_units(limits: Optional[dict]) -> Optional[str]:
    """A note when every sampled limit is 1 (no change exceeds it): the accepted units were too few to tell
    how much units differ (``small_sample_factor``), so only the class rules could block; else None."""
    if not limits or any(limits[k] < 1.0 for k in SAMPLED):
        return None
    unit = "group" if "groups" in limits else "image"
    count = limits.get("groups", limits["accepted_images"])
    return (f"the accepted images are {counted(count, unit)}: too few to tell how much {unit}s differ, so the "
            f"frequency and missing-rate changes could not block (new and vanished classes still could); accept "
            f"more {unit}s")


def small_sample_factor(units: int, significance: float) -> float:
    """How much wider than the bootstrap's quantile a limit drawn from ``units`` accepted units (images, or
    groups) must be to hold ``significance``: ``t(U - 1) / z`` at ``1 - significance / 2`` times
    ``sqrt(U / (U - 1))``. The bootstrap draws from the U units it has, so it takes their spread for the
    spread of all units (the plug-in variance is (U - 1) / U of the unbiased one) and knows no
    uncertainty in it (a Student t with U - 1 degrees of freedom, not a normal). It matters for a few
    units only: 3 groups 6.1, 16 groups 1.21, 50 1.06, 600 images 1.005 at 0.005 (session 27: with the
    crops of 3 nuclei tiles accepted, a normal new tile was blocked 42 % of the time, 2 % with it;
    ``benchmarks/drift_groups.py``). The JS divergence, quadratic in the frequency changes, is widened
    by its square. Infinite for fewer than 2 units (t with no degree of freedom: one unit shows no spread,
    so no change can be told from chance; the limits are then 1, which no change exceeds)."""
    if units < 2:
        return math.inf
    from scipy.stats import norm, t

    q = 1.0 - significance / 2
    return float(t.ppf(q, units - 1) / norm.ppf(q) * np.sqrt(units / (units - 1)))


# "warn": recorded only; "block": the model is trained but not blessed, so not pushed;
# "block_training": SegTrainer, SegEvaluator and Pusher do not run (a tfx.dsl.Cond in pipeline/dag.py)
ACTIONS = DRIFT_ACTIONS


def compare(current: dict, baseline: Optional[dict], thresholds: Dict[str, float], action: str = "block",
            limits: Optional[dict] = None, presence: Optional[dict] = None) -> dict:
    """drift.json content: measures, anomalies and the status. A ``SAMPLED`` measure is an anomaly above
    its threshold and, with ``limits`` (``sampling_limits`` for these images), above what sampling alone
    gives too. ``presence``: {"new": (units holding each class, units), "accepted": (the same), "unit":
    "groups" | "images"} (``class_presence``, classes in ``aligned_counts``' order), from the per-image
    tables: a vanished class's chance is then counted in those units, and a new class is an anomaly only
    where its chance (``new_class_chances``) is below ``new_class_chance``; without it every new class is.
    With ``limits``, the JS divergence and the largest change leave out its ``unsampled_classes`` (held by
    fewer than ``MIN_HOLDING`` accepted units) on both sides; with ``presence`` too, such a class that some
    accepted units hold is an anomaly where its ``rare_class_chances`` is below ``new_class_chance``."""
    unknown = set(THRESHOLD_KEYS) - set(thresholds)
    if unknown:
        raise ValueError(f"drift thresholds miss {sorted(unknown)}")
    if action not in ACTIONS:
        raise ValueError(f"drift action must be one of {', '.join(ACTIONS)}, got {action!r}")
    result = {"thresholds": {k: float(thresholds[k]) for k in THRESHOLD_KEYS}, "action": action,
              "anomalies": [], "new_classes": [], "sampling": limits if baseline is not None else None}

    def beyond(measure: str) -> bool:
        value = result[measure]
        return value > result["thresholds"][measure] and (limits is None or value > limits[measure])

    def limit(measure: str) -> str:
        if limits is None:
            return ""
        groups = lambda key: f" ({limits[key]} groups)" if "groups" in limits else ""  # noqa: E731
        return (f"; sampling alone exceeds {limits[measure]:.4g} with chance {limits['significance']:g} for "
                f"{limits['new_images']} new images{groups('new_groups')} against {limits['accepted_images']} "
                f"accepted{groups('groups')}")
    anomalies = result["anomalies"]
    if sum(current["pixel_counts"]) == 0:
        anomalies.append("the new data has no labelled pixels")
    if baseline is None:
        result.update(note="no earlier ClassStats to compare with (first run)",
                      js_divergence=0.0, max_abs_change=0.0, missing_rate_change=0.0, vanished_classes={},
                      vanished_class_chance=None)
    else:
        names, current_counts, base_counts = aligned_counts(current, baseline)
        p, q = frequencies(current_counts), frequencies(base_counts)
        # the sampled measures leave out the classes the limits could not sample (too few accepted units hold
        # them), on both sides: they are judged by their presence (new_class_chances, rare_class_chances)
        unsampled = [i for i in (limits or {}).get("unsampled_classes", []) if i < len(names)]
        kept = np.ones(len(names), bool)
        kept[unsampled] = False
        sampled_now, sampled_before = current_counts * kept, base_counts * kept
        ps, qs = frequencies(sampled_now), frequencies(sampled_before)
        change = ps - qs
        worst = int(np.argmax(np.abs(change)))
        result.update(
            js_divergence=js_divergence(ps, qs) if sampled_before.sum() > 0 and sampled_now.sum() > 0 else 0.0,
            max_abs_change=float(np.abs(change).max()),
            max_change_class=names[worst],
            frequency={n: float(v) for n, v in zip(names, p)},
            baseline_frequency={n: float(v) for n, v in zip(names, q)},
            frequency_change={n: float(v) for n, v in zip(names, p - q)},
            new_classes=[n for n, b, c in zip(names, base_counts, current_counts) if b == 0 and c > 0],
            missing_rate=missing_rate(current), baseline_missing_rate=missing_rate(baseline),
            vanished_classes=vanished_chances(names, current_counts, base_counts, current, baseline, presence),
        )
        if unsampled:
            result["unsampled_classes"] = [names[i] for i in unsampled]
        if presence is not None:
            result["new_class_chances"] = new_class_chances(names, current_counts, base_counts, presence)
            result["presence_unit"] = presence["unit"]
            if unsampled:
                result["rare_class_chances"] = rare_class_chances(names, current_counts, presence, unsampled)
        judged = [c for c in result["vanished_classes"].values() if c is not None]
        result["vanished_class_chance"] = min(judged) if judged else None
        if result["missing_rate"] is None or result["baseline_missing_rate"] is None:
            result["missing_rate_change"] = None
            result["note"] = "missing-annotation rate not recorded in one of the ClassStats (not compared)"
        else:
            result["missing_rate_change"] = abs(result["missing_rate"] - result["baseline_missing_rate"])
        without = (f"; without {', '.join(result['unsampled_classes'])}, too rare in the accepted data to sample"
                   if unsampled else "")
        annotation_moved = result["missing_rate_change"] is not None and beyond("missing_rate_change")
        # said once, of the first frequency anomaly: the frequencies moved with the annotation, perhaps not the
        # data (QA 70; QA 71: not of other anomalies). Only when background (class 0) moved the way the
        # annotation moves it: up when more images miss classes, down when fewer (QA 92 L2: a delivery without
        # its labeled.json counts as complete, and the remark was put beside a rise it could not have caused)
        explains = annotation_moved and change[0] * (result["missing_rate"] - result["baseline_missing_rate"]) > 0
        remark = (" (the annotation changed too: a class an annotator left out counts as background, so pixel "
                  "frequencies move with the fraction of images missing classes)" if explains else "")
        if beyond("js_divergence"):
            anomalies.append(f"Jensen-Shannon divergence of class pixel frequencies {result['js_divergence']:.4f} "
                             f"> {thresholds['js_divergence']}{limit('js_divergence')}{without}{remark}")
            remark = ""
        if beyond("max_abs_change"):
            anomalies.append(f"pixel frequency of {names[worst]} changed by {change[worst]:+.4f} "
                             f"({qs[worst]:.4f} -> {ps[worst]:.4f}; limit {thresholds['max_abs_change']}"
                             f"{limit('max_abs_change')}{without}){remark}")
        if presence is None and result["new_classes"]:
            anomalies.append(f"classes absent before appear now: {', '.join(result['new_classes'])}")
        elif presence is not None:  # a class new now, or held by one accepted unit: judged by how many hold it
            for key, title in (("new_class_chances", "classes absent before appear now"),
                               ("rare_class_chances", "classes rare before are in more units now")):
                unlikely_now = {n: c for n, c in result.get(key, {}).items()
                                if c < result["thresholds"]["new_class_chance"]}
                if unlikely_now:
                    anomalies.append(f"{title}: " + ", ".join(
                        f"{n} (in {int(presence['new'][0][names.index(n)])} of {presence['new'][1]} new "
                        f"{presence['unit']}, {int(presence['accepted'][0][names.index(n)]) or 'none'} of "
                        f"{presence['accepted'][1]} before; chance {c:.2g} if unchanged)"
                        for n, c in unlikely_now.items()))
        unlikely = {n: c for n, c in result["vanished_classes"].items()
                    if c is not None and c < result["thresholds"]["vanished_class_chance"]}
        if unlikely and presence is not None:
            unit = presence["unit"]
            anomalies.append("classes present before have no pixels now: " + ", ".join(
                f"{n} (in {int(presence['accepted'][0][names.index(n)])} of {presence['accepted'][1]} {unit} before, "
                f"none of {presence['new'][1]} now; chance {c:.2g} if unchanged)" for n, c in unlikely.items()))
        elif unlikely:
            baseline_images = dict(zip(baseline["class_names"], baseline["image_counts"]))
            anomalies.append("classes present before have no pixels now: " + ", ".join(
                f"{n} (in {baseline_images[n]} of {baseline['num_records']} images before, none of "
                f"{current['num_records']} now; chance {c:.2g} if unchanged)" for n, c in unlikely.items()))
        if annotation_moved:
            # a fall blocks too: more complete annotations, or a labelled-sets file missing from this delivery
            # (QA 71: every image then counts as complete; passing a fall let such data through)
            fell = result["missing_rate"] < result["baseline_missing_rate"]
            fall = ("; if the annotations are complete now, accept it (drift.action: warn once); if this delivery "
                    "lacks its labeled.json, add it" if fell else "")
            anomalies.append(f"fraction of images with missing annotations changed from "
                             f"{result['baseline_missing_rate']:.3f} to {result['missing_rate']:.3f} (limit "
                             f"{thresholds['missing_rate_change']}{limit('missing_rate_change')}){fall}")
    result["status"] = "ok" if not anomalies else ("warned" if action == "warn" else "blocked")
    return result
