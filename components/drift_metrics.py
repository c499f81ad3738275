"""Class-distribution drift between two ClassStats (pure NumPy)."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np


def frequencies(counts, size: int) -> np.ndarray:
    counts = np.zeros(size) if counts is None else np.asarray(counts, dtype=np.float64)
    padded = np.zeros(size)
    padded[:len(counts)] = counts
    total = padded.sum()
    return padded / total if total > 0 else padded


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (0 = identical, 1 = disjoint)."""
    m = 0.5 * (p + q)

    def kl(a, b):
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / b[mask])))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def missing_rate(stats: dict) -> float:
    return stats.get("images_with_missing", 0) / max(1, stats["num_records"])


def compare(current: dict, baseline: Optional[dict], thresholds: Dict[str, float], action: str = "block") -> dict:
    """drift.json content: measures, anomalies above ``thresholds`` and the status."""
    result = {"thresholds": dict(thresholds), "action": action, "anomalies": [], "new_classes": []}
    if baseline is None:
        result.update(status="ok", note="no earlier ClassStats to compare with (first run)",
                      js_divergence=0.0, max_abs_change=0.0, missing_rate_change=0.0)
        return result
    names = current["class_names"]
    size = max(len(current["pixel_counts"]), len(baseline["pixel_counts"]))
    p = frequencies(current["pixel_counts"], size)
    q = frequencies(baseline["pixel_counts"], size)
    base_counts = np.zeros(size)
    base_counts[:len(baseline["pixel_counts"])] = baseline["pixel_counts"]
    change = p - q
    worst = int(np.argmax(np.abs(change)))
    name = lambda c: names[c] if c < len(names) else f"class {c}"  # noqa: E731
    result.update(
        js_divergence=js_divergence(p, q),
        max_abs_change=float(np.abs(change).max()),
        max_change_class=name(worst),
        frequency_change={name(c): float(change[c]) for c in range(size)},
        new_classes=[name(c) for c in range(size) if base_counts[c] == 0 and p[c] > 0],
        missing_rate=missing_rate(current), baseline_missing_rate=missing_rate(baseline),
    )
    result["missing_rate_change"] = abs(result["missing_rate"] - result["baseline_missing_rate"])
    anomalies = result["anomalies"]
    if result["js_divergence"] > thresholds["js_divergence"]:
        anomalies.append(f"Jensen-Shannon divergence of class pixel frequencies {result['js_divergence']:.4f} > "
                         f"{thresholds['js_divergence']}")
    if result["max_abs_change"] > thresholds["max_abs_change"]:
        anomalies.append(f"pixel frequency of {name(worst)} changed by {change[worst]:+.4f} (limit "
                         f"{thresholds['max_abs_change']})")
    if result["new_classes"]:
        anomalies.append(f"classes absent before appear now: {', '.join(result['new_classes'])}")
    if result["missing_rate_change"] > thresholds["missing_rate_change"]:
        anomalies.append(f"fraction of images with missing annotations changed from "
                         f"{result['baseline_missing_rate']:.3f} to {result['missing_rate']:.3f}")
    result["status"] = "ok" if not anomalies else ("blocked" if action == "block" else "warned")
    return result
