"""How far a reduced precision moves the results from exact fp32, measured on a test set.

:func:`precision_deviation` scores the same samples twice through the one inference path
(`CMDRIAD.predict_many`), once in fp32 and once in the reduced precision, and reports what the
issue of record asks of a precision mode:

- ``map_max_rel``: the largest |ΔΨ| of a sample over that sample's max |Ψ| (grid maps);
- ``score_max_abs`` / ``score_max_rel``: the largest image-score difference, absolute and
  relative to the fp32 score;
- ``spearman``: the Spearman rank correlation of the image scores of both runs;
- ``delta_points``: the metric differences (reduced − fp32) in percentage points, for
  I-AUROC, P-AUROC and AUPRO@30 % (the paper protocol, `evaluation.compute_metrics`);
- ``valid_equal``: whether the 3D support masks are identical (the geometry stays fp32);
- ``score_min_rel_gap``: the smallest relative gap between two fp32 image scores. Spearman ≥
  0.999 allows no swapped pair below ~25 samples, so on a small test set two near-tied scores
  (gap below the relative score deviation) fail it whatever the precision of any one layer.

:data:`ACCEPT` holds the acceptance bounds (|Δ| ≤ 0.5 points on each metric, Spearman ≥ 0.999)
and :func:`within_bounds` checks a report against them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["ACCEPT", "DEVIATION_METRICS", "precision_deviation", "within_bounds"]

DEVIATION_METRICS = ("i_auroc", "p_auroc", "aupro_30")
ACCEPT = {"max_delta_points": 0.5, "min_spearman": 0.999}


def _run(det: Any, dataset: Sequence[Any], batch_size: int) -> dict[str, Any]:
    maps, gts, labels, scores, valids = [], [], [], [], []
    for r in det.predict_many((dataset[i] for i in range(len(dataset))), batch_size=batch_size):
        maps.append(r.map_grid)
        gts.append(r.gt_grid if r.gt_grid is not None else np.zeros_like(r.map_grid, dtype=bool))
        labels.append(r.label)
        scores.append(r.score)
        valids.append(r.valid_grid)
    return {"maps": np.stack(maps), "gts": np.stack(gts), "labels": np.asarray(labels),
            "scores": np.asarray(scores, dtype=np.float64), "valids": valids}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return 1.0 if np.array_equal(np.argsort(a), np.argsort(b)) else 0.0
    return float(spearmanr(a, b).statistic)


def _min_rel_gap(scores: np.ndarray) -> float:
    """Smallest gap between consecutive sorted scores, relative to the larger one: a score
    deviation above it can swap two samples (and lower the Spearman correlation)."""
    s = np.sort(np.abs(scores))
    return float((np.diff(s) / np.maximum(s[1:], 1e-12)).min()) if len(s) > 1 else float("inf")


def precision_deviation(det: Any, dataset: Sequence[Any], precision: str, *, emulate: bool = False,
                        batch_size: int = 1, say: Callable[[str], None] | None = None
                        ) -> dict[str, Any]:
    """Score ``dataset`` (samples with labels and GT) in fp32 and in ``precision``; the report
    described in the module docstring, plus ``precision`` (what ran: fp32 where the hardware has
    no native support and ``emulate`` is off, see `precision.resolve_precision`) and the
    metrics of both runs. ``det``'s precision is restored afterwards."""
    from .evaluation import compute_metrics

    before = det.precision
    try:
        det.set_precision("fp32")
        exact = _run(det, dataset, batch_size)
        ran = det.set_precision(precision, say, emulate=emulate)
        low = _run(det, dataset, batch_size)
    finally:
        det.precision = before
    m32, _ = compute_metrics(exact["maps"], exact["gts"], exact["labels"], exact["scores"])
    mlo, _ = compute_metrics(low["maps"], low["gts"], low["labels"], low["scores"])
    rel = [float(np.abs(a - b).max()) / (float(np.abs(b).max()) or 1.0)
           for a, b in zip(low["maps"], exact["maps"], strict=True)]
    ds = np.abs(low["scores"] - exact["scores"])
    deltas = {k: (None if m32[k] is None or mlo[k] is None else 100.0 * (mlo[k] - m32[k]))
              for k in DEVIATION_METRICS}
    return {
        "precision": ran, "n": len(dataset),
        "map_max_rel": max(rel),
        "score_max_abs": float(ds.max()),
        "score_max_rel": float((ds / np.maximum(np.abs(exact["scores"]), 1e-12)).max()),
        "spearman": _spearman(low["scores"], exact["scores"]),
        "delta_points": deltas,
        "valid_equal": all(np.array_equal(a, b) for a, b in zip(low["valids"], exact["valids"],
                                                                strict=True)),
        "score_min_rel_gap": _min_rel_gap(exact["scores"]),
        "scores_fp32": exact["scores"].tolist(), "scores_reduced": low["scores"].tolist(),
        "metrics_fp32": {k: m32[k] for k in DEVIATION_METRICS},
        "metrics_reduced": {k: mlo[k] for k in DEVIATION_METRICS},
    }


def within_bounds(report: dict[str, Any], accept: dict[str, float] = ACCEPT) -> list[str]:
    """The acceptance bounds a :func:`precision_deviation` report breaks (empty: within)."""
    broken = []
    for k, d in report["delta_points"].items():
        if d is not None and abs(d) > accept["max_delta_points"]:
            broken.append(f"{k} moved {d:+.2f} points (bound ±{accept['max_delta_points']})")
    if report["spearman"] < accept["min_spearman"]:
        broken.append(f"Spearman {report['spearman']:.5f} < {accept['min_spearman']}")
    if not report["valid_equal"]:
        broken.append("the 3D support masks differ (the geometry must stay fp32)")
    return broken
