"""Point-level pseudo-labels from unsupervised outlier detectors (paper §4.2, §5.5.3, Table 8).

scikit-learn's IsolationForest and LocalOutlierFactor, configured as in the authors'
`build_dataset.py`: a point is an outlier when `fit_predict(points) == -1`. The result of the
Isolation Forest depends on the scikit-learn version (the golden arrays use 1.9.1).
"""

from __future__ import annotations

import numpy as np

from ..errors import UserInputError
from .config import DETECTORS, LEVELS, check_contamination


def contamination_for(level: str) -> float:
    """Paper contamination of a level: "low" 0.0001, "high" 0.00015."""
    if level not in LEVELS:
        raise UserInputError(f"level must be one of {tuple(LEVELS)}, got {level!r}")
    return LEVELS[level]


def _as_points(points: np.ndarray) -> np.ndarray:
    p = np.asarray(points)
    if p.ndim != 2 or p.shape[1] != 3:
        raise UserInputError(f"points must have shape (N, 3), got {p.shape}")
    if len(p) < 2:
        raise UserInputError(f"outlier detection needs at least 2 points, got {len(p)}")
    p = p.astype(np.float32, copy=False)
    if not np.isfinite(p).all():
        raise UserInputError("points contain NaN or infinite coordinates")
    return p


def fit_isolation_forest(points: np.ndarray, contamination: float, *, n_estimators: int = 200,
                         random_state: int = 42):
    """IsolationForest(contamination, n_estimators, random_state, max_samples='auto') fitted on
    the float32 points (N, 3); its `offset_` is the contamination-quantile of the scores."""
    from sklearn.ensemble import IsolationForest

    c = check_contamination(contamination)
    iso = IsolationForest(contamination=c, random_state=random_state, n_estimators=n_estimators,
                          max_samples="auto")
    return iso.fit(_as_points(points))


def isolation_forest_mask(points: np.ndarray, contamination: float, *, n_estimators: int = 200,
                          random_state: int = 42) -> np.ndarray:
    """(N, 3) → (N,) bool: `fit_predict(points float32) == -1` (score_samples < offset_)."""
    iso = fit_isolation_forest(points, contamination, n_estimators=n_estimators,
                               random_state=random_state)
    return iso.predict(_as_points(points)) == -1


def lof_mask(points: np.ndarray, contamination: float, *, n_neighbors: int = 30) -> np.ndarray:
    """(N, 3) → (N,) bool: LocalOutlierFactor(n_neighbors, contamination).fit_predict == -1."""
    import warnings

    from sklearn.neighbors import LocalOutlierFactor

    c = check_contamination(contamination)
    p = _as_points(points)
    lof = LocalOutlierFactor(n_neighbors=n_neighbors, contamination=c, novelty=False)
    with warnings.catch_warnings():  # n_neighbors > N is clipped by sklearn, with a warning
        warnings.simplefilter("ignore", UserWarning)
        return lof.fit_predict(p) == -1


def outlier_mask(points: np.ndarray, detector: str, contamination: float, *, seed: int = 42,
                 n_estimators: int = 200, n_neighbors: int = 30) -> np.ndarray:
    """Pseudo-label mask of one scan: "iso", "lof", or "hybrid" (their union, LOF ∪ ISO)."""
    if detector not in DETECTORS:
        raise UserInputError(f"detector must be one of {DETECTORS}, got {detector!r}")
    check_contamination(contamination)
    mask = np.zeros(len(points), dtype=bool)
    if detector in ("iso", "hybrid"):
        mask |= isolation_forest_mask(points, contamination, n_estimators=n_estimators,
                                      random_state=seed)
    if detector in ("lof", "hybrid"):
        mask |= lof_mask(points, contamination, n_neighbors=n_neighbors)
    return mask
