"""Decision thresholds per scoring branch, calibrated through the one inference path.

Rule: with a labelled validation set (good and defective samples), the threshold maximising F1
of ``score >= threshold``; with normal samples only, the ``quantile`` (default 1.0 = the largest)
of their image scores, so no normal validation sample is flagged. Each branch (rgb+xyz, rgb,
xyz) has its own threshold because their scores live on different scales. The calibration
record also keeps the normal-score statistics and a typical normal map level (for colouring
heatmaps: :func:`heatmap_range`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from .inference import InferencePath, fuse
from .result import display_map

__all__ = ["threshold_from_scores", "calibrate", "heatmap_range"]


def threshold_from_scores(scores: Sequence[float], labels: Sequence[int], quantile: float = 1.0
                          ) -> tuple[float, str]:
    """Threshold and the rule used: F1-optimal with both labels, else a quantile of normal scores."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if (y == 1).any() and (y != 1).any():
        best, best_t = -1.0, float(s.max())
        for t in np.unique(s):
            pred = s >= t
            tp = float(np.sum(pred & (y == 1)))
            fp = float(np.sum(pred & (y != 1)))
            fn = float(np.sum(~pred & (y == 1)))
            f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
            if f1 >= best:
                best, best_t = f1, float(t)
        return best_t, f"f1-optimal (F1 {best:.3f} on the labelled validation samples)"
    normal = s[y != 1] if (y != 1).any() else s
    q = min(max(float(quantile), 0.0), 1.0)
    return float(np.quantile(normal, q)), f"quantile {q:g} of the normal validation scores"


@torch.no_grad()
def calibrate(path: InferencePath, items: Iterable[tuple[Any, int]], branches: Sequence[str],
              quantile: float = 1.0, source: str = "validation samples"
              ) -> tuple[dict[str, float], dict[str, Any]]:
    """Thresholds and the calibration record from ``items``: (``SampleRows``, label) pairs.

    Every sample is scored by every branch it can feed: the model's own branch, and for an
    RGB+3D model also the RGB branch (Dec2D on every pixel) and the 3D branch (its d_rec3d,
    fused alone). A sample without a valid 3D point feeds only the RGB branch.
    """
    scores: dict[str, list[float]] = {b: [] for b in branches}
    lows: dict[str, list[float]] = {b: [] for b in branches}
    labels: dict[str, list[int]] = {b: [] for b in branches}

    def add(b: str, amap: torch.Tensor, s: torch.Tensor, lab: int) -> None:
        scores[b].append(float(s[0]))
        labels[b].append(int(lab))
        lows[b].append(float(display_map(amap).median()))

    for rows, lab in items:
        has3d = rows.f3d is not None and bool(rows.valid.any())
        has2d = rows.f2d is not None
        own = None
        if "rgb+xyz" in branches and has3d and has2d:
            own = path.score(branch="rgb+xyz", features=[rows])
            add("rgb+xyz", own.map_grid, own.score, lab)
        if "xyz" in branches and has3d:
            if own is not None:  # the same d_rec3d, fused alone
                add("xyz", *fuse({"d_rec3d": own.distances["d_rec3d"]}, own.valid, "xyz",
                                 path.score_cfg), lab)
            else:
                sc = path.score(branch="xyz", features=[rows])
                add("xyz", sc.map_grid, sc.score, lab)
        if "rgb" in branches and has2d:
            sc = path.score(branch="rgb", features=[rows])
            add("rgb", sc.map_grid, sc.score, lab)
    thresholds: dict[str, float] = {}
    cal: dict[str, Any] = {"source": source, "quantile": quantile, "branches": {}}
    for b in branches:
        if not scores[b]:
            continue
        t, rule = threshold_from_scores(scores[b], labels[b], quantile)
        normal = [s for s, lab in zip(scores[b], labels[b], strict=True) if lab != 1]
        thresholds[b] = t
        cal["branches"][b] = {
            "threshold": t, "rule": rule, "n": len(scores[b]), "n_normal": len(normal),
            "normal_mean": float(np.mean(normal)) if normal else None,
            "normal_std": float(np.std(normal)) if normal else None,
            "normal_max": float(np.max(normal)) if normal else None,
            "map_low": float(np.median(lows[b])),
        }
    return thresholds, cal


def heatmap_range(calibration: dict[str, Any], branch: str) -> tuple[float | None, float | None]:
    """(lo, hi) for colouring `Result.anomaly_map`: typical normal level → threshold."""
    b = (calibration.get("branches") or {}).get(branch)
    if not b:
        return None, None
    lo, hi = b["map_low"], b["threshold"]
    return (lo, hi) if hi > lo else (None, None)
