"""`Result`: the prediction for one sample, and how it is built from the inference output."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Result", "build_result", "display_map"]


@dataclass
class Result:
    """Prediction for one sample.

    anomaly_map: (H, W) float32 at the original resolution, Ψ / sqrt(mean of non-zero Ψ) (the
      image-score normalisation, so its grid maximum is `score`), resized without the square pad;
    map_grid: (G, G) float32, the smoothed fused map Ψ before any normalisation;
    score: image score as the reference computes it; is_anomalous: score >= threshold (None
      when the model has no calibrated threshold); branch: "rgb+xyz", "rgb" or "xyz";
    missing_modality: "rgb" or "xyz" when that input was absent (not given, or a cloud without a
      valid point) and the model fell back to the other branch; None otherwise — an input the
      model does not use is ignored, not missing (see `notes`);
    notes: missing/ignored-input and other remarks; valid_grid: (G, G) bool 3D support.
    """

    key: str
    anomaly_map: np.ndarray
    map_grid: np.ndarray
    score: float
    is_anomalous: bool | None
    threshold: float | None
    branch: str
    notes: list[str] = field(default_factory=list)
    valid_grid: np.ndarray | None = None
    label: int = -1
    gt_grid: np.ndarray | None = None
    orig_size: tuple[int, int] = (0, 0)
    missing_modality: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "score": float(self.score),
            "is_anomalous": self.is_anomalous,
            "threshold": None if self.threshold is None else float(self.threshold),
            "branch": self.branch,
            "missing_modality": self.missing_modality,
            "notes": list(self.notes),
            "grid_size": int(self.map_grid.shape[-1]),
            "image_size": [int(self.anomaly_map.shape[0]), int(self.anomaly_map.shape[1])],
            "map_max": float(np.max(self.anomaly_map)),
        }


def display_map(psi: Any) -> Any:
    """Ψ (B, G, G) → Ψ / sqrt(mean of the non-zero Ψ) per sample (the image-score scale)."""
    from .model.fusion import mean_nonzero

    return psi / mean_nonzero(psi).sqrt()[:, None, None]


def build_result(ts: Any, scores: Any, i: int, choice: Any, threshold: float | None,
                 transforms: str, grid: int) -> Result:
    """Sample ``i`` of an `inference.Scores` batch → `Result` (map at the original size).

    ts: the sample's `TransformedSample`; choice: its `inference.BranchChoice`; threshold: the
    branch's calibrated threshold or None; transforms: the preset's transform mode.
    """
    from .data.transforms import to_original

    psi = scores.map_grid[i:i + 1]
    size = ts.orig_size if ts.orig_size and ts.orig_size[0] > 0 else (grid, grid)
    amap = to_original(display_map(psi)[0].float().cpu(), size, transforms)
    score = float(scores.score[i])
    decision = None if threshold is None else bool(score >= threshold)
    return Result(key=ts.key, anomaly_map=amap.numpy().astype(np.float32),
                  map_grid=psi[0].float().cpu().numpy(), score=score, is_anomalous=decision,
                  threshold=None if threshold is None else float(threshold), branch=scores.branch,
                  notes=list(choice.notes), valid_grid=scores.valid[i].cpu().numpy().astype(bool),
                  label=int(ts.label),
                  gt_grid=None if ts.gt is None else ts.gt.cpu().numpy().astype(bool),
                  orig_size=tuple(size), missing_modality=choice.missing_modality)
