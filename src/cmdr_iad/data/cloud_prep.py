"""MVTec 3D-AD preprocessing of one cloud: the protocol of the paper's baselines (M3DM / CFM).

Per organised cloud (H, W, 3), as in the baselines' `preprocessing.py`:
1. fit the table plane with RANSAC on the valid points of a `border`-pixel frame of the image
   (RANSAC inlier distance 0.004, like Open3D's `segment_plane` call there);
2. remove every point closer than `plane_distance` (0.005) to that plane;
3. keep the largest DBSCAN cluster (ε 0.006, min 30 points) of what is left;
4. set removed points to (0, 0, 0) and zero-pad the cloud to a square (S, S, 3), S = max(H, W),
   centred like the loader's RGB square pad: top = (S−H)//2, left = (S−W)//2 (see
   `transforms.square_pad_geometry`), so that pixel (i, j) of the padded RGB and the padded cloud
   still describe the same point.

Differences from the baselines, all deliberate:
- RANSAC is scikit-learn's `RANSACRegressor` around a total-least-squares plane (orthogonal
  point-to-plane residuals, 3-point samples, final refit on all inliers, fixed seed), not Open3D:
  a well-kept library we already depend on, deterministic, and no 300 MB dependency.
- DBSCAN is `data.dbscan.dbscan`, exact w.r.t. DBSCAN's definition but in O(N·k) memory instead of
  materialising ~3,500 neighbours per point (sklearn / Open3D need several GB on an 800×800 scan).
- The largest *cluster* is kept. The baselines take the largest label including DBSCAN's noise
  label, so a scan with more noise points than its largest cluster would keep the noise; with no
  cluster at all both keep every point.
- The pad goes to S = max(H, W) (`pad_multiple=1`); the baselines first round each side up to a
  multiple of 100 (`pad_multiple=100` reproduces that; identical for MVTec 3D-AD, whose sides are
  multiples of 100). RGB and GT files are copied unchanged, exactly as the baselines leave them: the
  loader pads them to the same square on the fly.
- A point is "missing" when all three coordinates are 0 (the baselines: when any one is 0).

The dataset walk (resumable, atomic, parallel) is `data.preprocess`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import DatasetError
from .dbscan import largest_cluster_mask

__all__ = [
    "PreprocessConfig",
    "border_points",
    "fit_plane",
    "remove_plane",
    "keep_largest_cluster",
    "pad_to_square",
    "crop_to_source",
    "preprocess_cloud",
]


@dataclass(frozen=True)
class PreprocessConfig:
    """Parameters of the protocol; defaults are the baselines' values (metres)."""

    border: int = 10  # width in pixels of the image frame whose points define the table plane
    ransac_threshold: float = 0.004  # RANSAC inlier distance for the plane fit
    ransac_trials: int = 1000
    plane_distance: float = 0.005  # points closer than this to the plane are removed
    dbscan_eps: float = 0.006
    dbscan_min_samples: int = 30
    pad_multiple: int = 1  # 100 reproduces the baselines' round-up before squaring
    seed: int = 0  # RANSAC sampling seed (the result is deterministic)

    def to_dict(self) -> dict:
        return asdict(self)


def _valid(xyz: np.ndarray) -> np.ndarray:
    return np.any(xyz != 0, axis=-1)


def border_points(xyz: np.ndarray, width: int) -> np.ndarray:
    """Valid points (M, 3) of the `width`-pixel frame around an organised cloud (H, W, 3)."""
    h, w = xyz.shape[:2]
    frame = np.zeros((h, w), dtype=bool)
    frame[:width], frame[-width:], frame[:, :width], frame[:, -width:] = True, True, True, True
    pts = xyz[frame]
    return pts[_valid(pts)]


def _plane_estimator():
    from sklearn.base import BaseEstimator, RegressorMixin

    class PlaneTLS(RegressorMixin, BaseEstimator):
        """Total-least-squares plane; `predict` is the signed point-to-plane distance."""

        def fit(self, X, y=None):  # noqa: N803 (sklearn API)
            c = X.mean(axis=0)
            _, _, vt = np.linalg.svd(X - c, full_matrices=False)
            self.normal_ = vt[-1]
            self.offset_ = -float(self.normal_ @ c)
            return self

        def predict(self, X):  # noqa: N803
            return X @ self.normal_ + self.offset_

        def score(self, X, y=None):  # noqa: N803 (higher is better: RANSAC's tie-break)
            return -float(np.mean(np.abs(self.predict(X))))

    return PlaneTLS()


def fit_plane(points: np.ndarray, threshold: float = 0.004, trials: int = 1000,
              seed: int = 0) -> tuple[np.ndarray, float]:
    """RANSAC plane through `points` (M, 3) → (unit normal (3,), offset d) with n·p + d = 0.

    scikit-learn `RANSACRegressor`: 3-point samples, orthogonal residual ≤ `threshold` = inlier,
    then a least-squares refit on the inliers of the best sample. The normal points towards the
    camera side (n·0 + d > 0), so "above the table" is n·p + d > 0 for a camera looking at it.
    """
    from sklearn.linear_model import RANSACRegressor

    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < 3:
        raise DatasetError(f"only {len(pts)} valid point(s) on the image border: "
                           "cannot fit the table plane")
    ransac = RANSACRegressor(estimator=_plane_estimator(), min_samples=3,
                             residual_threshold=threshold, max_trials=trials,
                             loss="absolute_error", random_state=seed)
    try:
        ransac.fit(pts, np.zeros(len(pts)))
    except ValueError as e:
        raise DatasetError(f"RANSAC found no table plane on the image border ({e})") from None
    n, d = ransac.estimator_.normal_.astype(np.float64), float(ransac.estimator_.offset_)
    if d < 0:
        n, d = -n, -d
    return n, d


def remove_plane(xyz: np.ndarray, normal: np.ndarray, offset: float,
                 distance: float = 0.005) -> np.ndarray:
    """Copy of `xyz` (H, W, 3) with the points within `distance` of the plane set to 0."""
    out = np.array(xyz, dtype=np.float32, copy=True)
    valid = _valid(out)
    dist = np.abs(out.astype(np.float64) @ normal + offset)
    out[valid & (dist < distance)] = 0
    return out


def keep_largest_cluster(xyz: np.ndarray, eps: float = 0.006, min_samples: int = 30) -> np.ndarray:
    """Copy of `xyz` (H, W, 3) keeping only the largest DBSCAN cluster of its valid points."""
    out = np.array(xyz, dtype=np.float32, copy=True)
    idx = np.flatnonzero(_valid(out).ravel())
    if len(idx) == 0:
        return out
    keep = largest_cluster_mask(out.reshape(-1, 3)[idx], eps, min_samples)
    out.reshape(-1, 3)[idx[~keep]] = 0
    return out


def pad_to_square(xyz: np.ndarray, multiple: int = 1) -> np.ndarray:
    """Zero-pad (H, W, C) to (S, S, C), S = max side rounded up to `multiple`; centred like the
    RGB square pad (top = (S−H)//2, left = (S−W)//2, remainder bottom/right)."""
    h, w = xyz.shape[:2]
    m = max(int(multiple), 1)
    s = max(-(-h // m) * m, -(-w // m) * m)
    top, left = (s - h) // 2, (s - w) // 2
    pads = [(top, s - h - top), (left, s - w - left)] + [(0, 0)] * (xyz.ndim - 2)
    return np.pad(xyz, pads, mode="constant", constant_values=0)


def crop_to_source(xyz: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Undo `pad_to_square`: the (H, W) = `size` centre of a padded (S, S, C) array."""
    h, w = int(size[0]), int(size[1])
    s_h, s_w = xyz.shape[:2]
    if h > s_h or w > s_w:
        raise ValueError(f"cannot crop {xyz.shape[:2]} to a larger size {(h, w)}")
    top, left = (s_h - h) // 2, (s_w - w) // 2
    return xyz[top:top + h, left:left + w]


def preprocess_cloud(xyz: np.ndarray, config: PreprocessConfig | None = None) -> np.ndarray:
    """The whole protocol on one organised cloud (H, W, 3) → float32 (S, S, 3)."""
    cfg = config or PreprocessConfig()
    xyz = np.asarray(xyz)
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise DatasetError(f"expected an organised cloud of shape (H, W, 3), got {xyz.shape}")
    if not _valid(xyz).any():
        raise DatasetError("the cloud has no valid point (all zeros)")
    normal, offset = fit_plane(border_points(xyz, cfg.border), cfg.ransac_threshold,
                               cfg.ransac_trials, cfg.seed)
    out = remove_plane(xyz, normal, offset, cfg.plane_distance)
    out = keep_largest_cluster(out, cfg.dbscan_eps, cfg.dbscan_min_samples)
    return pad_to_square(out, cfg.pad_multiple)
