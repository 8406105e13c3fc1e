"""Per-region overlap (PRO) curve and its normalised area AUPRO, in two protocols.

* ``num_thresholds=T`` (default 99): the protocol of the paper's code (``calculate_au_pro``, from
  the MVTec 3D-AD "Back to the Feature" utilities). The normal ("ok") pixel scores of the whole
  set are sorted; thresholds are the scores at positions ``pos_j = int(linspace(0, n-1, T))``
  and the false-positive rate is taken from the position alone, ``fpr_j = 1 - (pos_j+1)/n``
  (not the true FPR when scores tie). A region pixel counts as detected when its score is
  **strictly greater** than the threshold. The point (fpr=1, pro=1, thr=0) is prepended and the
  curve reversed so that fpr ascends (T+1 points).
* ``num_thresholds=None``: the exact protocol of the official MVTec 3D-AD evaluation
  (``pro_curve_util.compute_pro``): one point per distinct score t of the whole set, a pixel is
  positive when its score is ``>= t``, fpr and pro are the true rates, and (0,0) / (1,1) are
  added at the ends. The official code stores fpr in float32; here it stays float64.

Both curves are integrated with the same trapezoid rule (:func:`area_under_curve`) up to each
FPR limit and divided by the limit. Every ground-truth component (8-connected, over all images)
has equal weight. Each threshold costs O(#components), not O(#pixels): the scores are sorted once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ..errors import EvaluationError
from ._inputs import collect_pixels, label_components

__all__ = ["DEFAULT_LIMITS", "ProCurve", "area_under_curve", "au_pro", "pro_curve"]

DEFAULT_LIMITS: tuple[float, ...] = (0.3, 0.1, 0.05, 0.01)

# Largest (regions x thresholds) table for the bit-exact region-by-region sum (sampled protocol).
_TABLE_ELEMENTS = 1 << 22


class ProCurve(NamedTuple):
    """A PRO curve, fpr ascending. ``fprs``, ``pros``, ``thresholds`` are ``(K,)`` float64.

    Sampled protocol: region pixels with score ``> thresholds[k]`` are detected; the artificial
    last point (1, 1) has threshold 0.0, as in the paper's code. Exact protocol: pixels with
    score ``>= thresholds[k]`` are positive; the artificial end points (0, 0) and (1, 1) have
    thresholds +inf and -inf.
    """

    fprs: np.ndarray
    pros: np.ndarray
    thresholds: np.ndarray


def pro_curve(anomaly_maps: Any, gt_masks: Any, num_thresholds: int | None = 99) -> ProCurve:
    """PRO curve of a set of ``(H, W)`` anomaly maps against their ground-truth masks.

    ``anomaly_maps`` / ``gt_masks``: an ``(N, H, W)`` array or tensor, or lists of ``(H, W)``
    maps (sizes may differ between images). A mask pixel is anomalous iff non-zero.
    ``num_thresholds``: T for the paper's T-threshold protocol (T+1 points), ``None`` for the
    exact all-threshold protocol.
    """
    steps = _check_num_thresholds(num_thresholds)
    scores, labels, n_regions = _prepare(anomaly_maps, gt_masks)
    if steps is None:
        return _exact_curve(scores, labels, n_regions)
    return _sampled_curve(scores, labels, n_regions, steps)


def au_pro(
    anomaly_maps: Any,
    gt_masks: Any,
    limits: float | Sequence[float] | np.ndarray = DEFAULT_LIMITS,
    num_thresholds: int | None = 99,
) -> np.ndarray | float:
    """Normalised area under the PRO curve up to each FPR limit, in the order of ``limits``.

    Returns a float64 array ``(len(limits),)`` (a float when ``limits`` is a single number).
    ``num_thresholds=99`` reproduces the paper's numbers; ``None`` is the exact protocol.
    Raises :class:`EvaluationError` when there is no anomalous region or no normal pixel.
    """
    lims, scalar = _check_limits(limits)
    steps = _check_num_thresholds(num_thresholds)
    scores, labels, n_regions = _prepare(anomaly_maps, gt_masks)
    if steps is None:
        curve = _exact_curve(scores, labels, n_regions, max_fpr=float(lims.max()))
    else:
        curve = _sampled_curve(scores, labels, n_regions, steps)
    values = np.array([area_under_curve(curve.fprs, curve.pros, lim) / lim for lim in lims])
    return float(values[0]) if scalar else values


def area_under_curve(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under ``y(x)`` for ``x <= x_max`` (x ascending), as the official ``trapezoid``.

    When ``x_max`` is not one of the ``x``, y is linearly interpolated at ``x_max`` between the
    points around it (``bisect_right``) and the partial trapezoid is added.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    correction = 0.0
    if not np.any(x == x_max):
        ins = int(np.searchsorted(x, x_max, side="right"))  # == bisect.bisect_right
        if not 0 < ins < x.size:
            raise EvaluationError(f"FPR limit {x_max} lies outside the curve [{x[0]}, {x[-1]}]")
        x0, x1, y0, y1 = x[ins - 1], x[ins], y[ins - 1], y[ins]
        y_at = y0 + ((y1 - y0) * (x_max - x0) / (x1 - x0))
        correction = 0.5 * (y_at + y0) * (x_max - x0)
    keep = x <= x_max
    x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


# --------------------------------------------------------------------------------------------
def _check_limits(limits: Any) -> tuple[np.ndarray, bool]:
    scalar = np.ndim(limits) == 0
    try:
        lims = np.atleast_1d(np.asarray(limits, dtype=np.float64)).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise EvaluationError(f"FPR limits must be numbers, got {limits!r}") from exc
    if lims.size == 0:
        raise EvaluationError("no FPR limit given")
    bad = ~(np.isfinite(lims) & (lims > 0) & (lims <= 1))
    if bad.any():
        raise EvaluationError(f"FPR limits must lie in (0, 1], got {lims[bad].tolist()}")
    return lims, bool(scalar)


def _check_num_thresholds(num_thresholds: Any) -> int | None:
    if num_thresholds is None:
        return None
    if isinstance(num_thresholds, (bool, np.bool_)) or not isinstance(
        num_thresholds, (int, np.integer)
    ):
        raise EvaluationError(f"num_thresholds must be an integer or None, got {num_thresholds!r}")
    if num_thresholds < 1:
        raise EvaluationError(f"num_thresholds must be >= 1, got {num_thresholds}")
    return int(num_thresholds)


def _prepare(anomaly_maps: Any, gt_masks: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """Flattened scores (P,), component labels (P,) (0 = normal) and the number of regions."""
    pixels = collect_pixels(anomaly_maps, gt_masks)
    labels, n_regions = label_components(pixels)
    if n_regions == 0:
        raise EvaluationError(
            "no anomalous region: every ground-truth mask is empty, so the PRO curve is undefined"
        )
    if not (labels == 0).any():
        raise EvaluationError(
            "no normal pixel: every ground-truth pixel is anomalous, so the FPR is undefined"
        )
    return pixels.scores, labels, n_regions


def _sampled_curve(scores: np.ndarray, labels: np.ndarray, n_regions: int, steps: int) -> ProCurve:
    """The paper code's T-threshold PRO curve (T+1 points, fpr ascending)."""
    normal = labels == 0
    ok_sorted = np.sort(scores[normal])
    n_ok = ok_sorted.size
    positions = np.linspace(0, n_ok - 1, num=steps, dtype=int)
    thresholds = ok_sorted[positions].astype(np.float64)
    fprs = 1.0 - (positions + 1) / n_ok
    pros = _region_overlaps(scores[~normal], labels[~normal] - 1, n_regions, thresholds)
    return ProCurve(
        fprs=np.concatenate(([1.0], fprs))[::-1].copy(),
        pros=np.concatenate(([1.0], pros))[::-1].copy(),
        thresholds=np.concatenate(([0.0], thresholds))[::-1].copy(),
    )


def _region_overlaps(
    values: np.ndarray, regions: np.ndarray, n_regions: int, thresholds: np.ndarray
) -> np.ndarray:
    """Mean over regions of the fraction of region pixels with score > each threshold, ``(T,)``.

    ``values``/``regions`` (M,): scores and 0-based region ids of the anomalous pixels;
    ``thresholds`` (T,) ascending. A pixel is above thresholds[0..k-1], where k is the number of
    thresholds below its score, so one histogram over (region, k) gives every count. The
    fractions ``1 - at_or_below/size`` are summed over regions in order, as the reference does,
    which is bit-identical to it. When that (regions x thresholds) table would be large (tens of
    thousands of regions, e.g. noise masks), regions of equal size are pooled instead: the counts
    stay exact integers and only the sum over distinct sizes is rounded (~1e-16 relative).
    """
    steps = thresholds.size
    regions = regions.astype(np.int64, copy=False)
    sizes = np.bincount(regions, minlength=n_regions)
    below = np.searchsorted(thresholds, values.astype(np.float64, copy=False), side="left")
    if n_regions * (steps + 1) <= _TABLE_ELEMENTS:
        table = np.bincount(regions * (steps + 1) + below, minlength=n_regions * (steps + 1))
        at_or_below = np.cumsum(table.reshape(n_regions, steps + 1)[:, :steps], axis=1)
        fractions = 1.0 - at_or_below / sizes[:, None]
        return np.add.reduce(fractions, axis=0) / n_regions  # row by row, in region order
    distinct_sizes, group = np.unique(sizes, return_inverse=True)
    n_groups = distinct_sizes.size
    table = np.bincount(group[regions] * (steps + 1) + below, minlength=n_groups * (steps + 1))
    table = table.reshape(n_groups, steps + 1)
    above = np.cumsum(table[:, :0:-1], axis=1)[:, ::-1]  # above[g, j]: pixels with k > j
    return np.add.reduce(above / distinct_sizes[:, None], axis=0) / n_regions


def _distinct_starts(sorted_values: np.ndarray) -> np.ndarray:
    """Index of the first element of each run of equal values in a sorted array."""
    if sorted_values.size == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.empty(sorted_values.size, dtype=bool)
    change[0] = True
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=change[1:])
    return np.flatnonzero(change)


def _exact_curve(
    scores: np.ndarray, labels: np.ndarray, n_regions: int, max_fpr: float | None = None
) -> ProCurve:
    """Official all-threshold PRO curve: one point per distinct score, fpr ascending.

    With ``max_fpr`` < 1 the curve stops at the first point whose fpr exceeds ``max_fpr``
    (enough for integration up to ``max_fpr``; saves memory on large sets).
    """
    normal = labels == 0
    ok_sorted = np.sort(scores[normal])
    n_ok = ok_sorted.size
    start = 0
    if max_fpr is not None and max_fpr < 1.0:
        keep = int(np.floor(max_fpr * n_ok)) + 2  # leaves >= 1 point with fpr > max_fpr
        if keep < n_ok:
            start = int(np.searchsorted(ok_sorted, ok_sorted[n_ok - keep], side="left"))
    first = start + _distinct_starts(ok_sorted[start:])
    ok_values = ok_sorted[first]
    ok_at_or_above = n_ok - first
    del ok_sorted

    values = scores[~normal]
    regions = (labels[~normal] - 1).astype(np.int64, copy=False)
    sizes = np.bincount(regions, minlength=n_regions)
    if start > 0:
        sel = values >= ok_values[0]
        values, regions = values[sel], regions[sel]
    order = np.argsort(values, kind="stable")
    values = values[order]
    weights = 1.0 / sizes[regions[order]]
    a_first = _distinct_starts(values)
    a_values = values[a_first]
    a_mass = np.add.reduceat(weights, a_first) if a_first.size else np.zeros(0)

    # Merge the region scores into the distinct normal scores (both ascending).
    ins = np.searchsorted(ok_values, a_values, side="left")
    shared = ins < ok_values.size
    shared[shared] = ok_values[ins[shared]] == a_values[shared]
    only = ~shared
    thresholds = np.insert(ok_values, ins[only], a_values[only])
    first_ext = np.append(first, n_ok)
    fp_counts = np.insert(ok_at_or_above, ins[only], n_ok - first_ext[ins[only]])
    mass = np.zeros(thresholds.size)
    mass[ins + np.cumsum(only) - only] = a_mass
    pro_mass = np.cumsum(mass[::-1])  # descending thresholds: region mass at or above each

    fprs = fp_counts[::-1] / n_ok
    pros = np.minimum(pro_mass / n_regions, 1.0)
    thr = thresholds[::-1].astype(np.float64)
    head_f, head_p, head_t = [0.0], [0.0], [np.inf]
    if start == 0:
        return ProCurve(
            fprs=np.concatenate((head_f, fprs, [1.0])),
            pros=np.concatenate((head_p, pros, [1.0])),
            thresholds=np.concatenate((head_t, thr, [-np.inf])),
        )
    return ProCurve(
        fprs=np.concatenate((head_f, fprs)),
        pros=np.concatenate((head_p, pros)),
        thresholds=np.concatenate((head_t, thr)),
    )
