"""Exact DBSCAN for dense 3D scans in bounded memory.

`sklearn.cluster.DBSCAN` (and Open3D's `cluster_dbscan`) first materialise every point's
ε-neighbourhood. On an MVTec 3D-AD object (~150k points, ~0.2 mm apart) an ε of 6 mm holds
~3,500 neighbours per point: ~5·10⁸ indices, several GB. This module computes the same clustering
without ever listing neighbourhoods:

1. **Core points** — a point is core iff at least `min_samples` points (itself included) lie
   within ε, i.e. iff its `min_samples`-th nearest neighbour is at distance ≤ ε. Points are binned
   in a grid of cells with side ε/√3 (cell diagonal < ε): every point of a cell holding
   ≥ `min_samples` points is core. The others get one k-NN query (scipy `cKDTree`,
   k = min_samples): O(N) memory.
2. **Clusters** = connected components of the core points under "distance ≤ ε". In the same grid
   two points of one cell are always within ε, so a cell's core points are connected. Two cells
   can only be linked if their offset lies in {-2..2}³; for each such pair of occupied cells the
   question "is some pair of their core points within ε?" is answered with a nearest-neighbour
   query, skipping pairs whose cells are already in one component (union-find) or whose bounding
   boxes are more than ε apart.
3. **Border points** (non-core within ε of a core point) take the cluster of their nearest core
   point; the rest is noise (-1).

Steps 1–2 give exactly DBSCAN's core points and clusters (the definition, not an approximation).
DBSCAN itself leaves a border point within ε of two clusters to whichever cluster reaches it
first (sklearn: by index order); here it goes to the nearest core point's cluster, which is one of
DBSCAN's valid outcomes. Clusters are numbered by their lowest core-point index, as sklearn does.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

__all__ = ["dbscan", "largest_cluster_mask"]

# Offsets between grid cells that can hold two points within ε (cell side ε/√3): |o_i| ≤ 2.
# One of each ± pair is enough for unordered cell pairs.
_HALF_OFFSETS = np.array(
    [o for o in itertools.product(range(-2, 3), repeat=3) if o > (0, 0, 0)], dtype=np.int64
)


def _cell_keys(pts: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Grid cell of every point (N,) int64 key, and the key stride (3,): cells have side ε/√3."""
    side = eps / math.sqrt(3.0) * (1.0 - 1e-9)  # keep the cell diagonal strictly below ε
    cell = np.floor((pts - pts.min(axis=0)) / side).astype(np.int64) + 2  # margin for offsets ±2
    dims = cell.max(axis=0) + 3
    if float(dims[0]) * float(dims[1]) * float(dims[2]) >= 2.0**62:
        raise ValueError(f"point extent too large for eps={eps} (grid of {dims.tolist()} cells)")
    stride = np.array([dims[1] * dims[2], dims[2], 1], dtype=np.int64)
    return cell @ stride, stride


def _core_mask(pts: np.ndarray, key: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    """Core points: ≥ min_samples points (itself included) within ε."""
    n = len(pts)
    if min_samples <= 1:
        return np.ones(n, dtype=bool)
    if n < min_samples:
        return np.zeros(n, dtype=bool)
    # A cell holding ≥ min_samples points makes all of them core (the cell diagonal is < ε):
    # on dense scans this settles almost every point without a neighbour query.
    _, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
    core = counts[inv] >= min_samples
    rest = np.flatnonzero(~core)
    tree = cKDTree(pts) if len(rest) else None
    step = 65536  # bounded memory: (step, 1) distances per chunk
    for s in range(0, len(rest), step):
        idx = rest[s:s + step]
        d, _ = tree.query(pts[idx], k=[min_samples], distance_upper_bound=_upper(eps))
        core[idx] = d[:, 0] <= eps
    return core


def _upper(eps: float) -> float:
    """A bound just above ε for cKDTree queries (which keep distances strictly below it)."""
    return float(np.nextafter(eps, np.inf)) * (1.0 + 1e-12)


def _find(parent: np.ndarray, i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        parent[i], i = root, parent[i]
    return root


def _core_components(cp: np.ndarray, key: np.ndarray, stride: np.ndarray,
                     eps: float) -> np.ndarray:
    """Connected components of core points (M, 3) under distance ≤ ε → component id per point.

    `key` (M,) are their grid cells and `stride` the key layout, from `_cell_keys`.
    """
    m = len(cp)
    order = np.argsort(key, kind="stable")
    ukeys, start, counts = np.unique(key[order], return_index=True, return_counts=True)
    ncell = len(ukeys)
    cell_of = np.empty(m, dtype=np.int64)
    cell_of[order] = np.repeat(np.arange(ncell), counts)
    sorted_pts = cp[order]
    lo = np.minimum.reduceat(sorted_pts, start, axis=0)
    hi = np.maximum.reduceat(sorted_pts, start, axis=0)
    first = sorted_pts[start]  # one representative point per cell

    # Candidate cell pairs: occupied neighbours whose bounding boxes come within ε.
    pa, pb = [], []
    for off in _HALF_OFFSETS:
        nb = ukeys + off @ stride
        pos = np.searchsorted(ukeys, nb)
        ok = pos < ncell
        ok[ok] = ukeys[pos[ok]] == nb[ok]
        a, b = np.flatnonzero(ok), pos[ok]
        gap = np.maximum(0.0, np.maximum(lo[b] - hi[a], lo[a] - hi[b]))
        near = np.einsum("ij,ij->i", gap, gap) <= eps * eps
        pa.append(a[near])
        pb.append(b[near])
    a = np.concatenate(pa) if pa else np.empty(0, np.int64)
    b = np.concatenate(pb) if pb else np.empty(0, np.int64)

    # Cheap certain links: the cells' representatives are already within ε.
    rep_d = np.linalg.norm(first[a] - first[b], axis=1)
    sure = rep_d <= eps
    g = coo_matrix((np.ones(int(sure.sum()), dtype=np.int8), (a[sure], b[sure])), shape=(ncell, ncell))
    ncomp, comp = connected_components(g, directed=False)
    uf = np.arange(ncomp, dtype=np.int64)  # union-find over those components

    # Undecided pairs: exact nearest-neighbour test, skipping pairs already joined.
    ua, ub = a[~sure], b[~sure]
    trees: dict[int, cKDTree] = {}
    for k in np.argsort(rep_d[~sure], kind="stable"):  # likeliest links first
        ca, cb = int(ua[k]), int(ub[k])
        ra, rb = _find(uf, int(comp[ca])), _find(uf, int(comp[cb]))
        if ra == rb:
            continue
        if counts[ca] > counts[cb]:  # query the smaller cell against the larger one's tree
            ca, cb = cb, ca
        tree = trees.get(cb)
        if tree is None:
            tree = trees[cb] = cKDTree(sorted_pts[start[cb]:start[cb] + counts[cb]])
        d, _ = tree.query(sorted_pts[start[ca]:start[ca] + counts[ca]], k=1,
                          distance_upper_bound=_upper(eps))
        if np.any(d <= eps):
            uf[ra] = rb
    roots = np.array([_find(uf, c) for c in range(ncomp)], dtype=np.int64)
    return roots[comp][cell_of]


def dbscan(points: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    """DBSCAN labels of `points` (N, 3): clusters 0..K-1, -1 = noise.

    Clusters are numbered by their lowest core-point index, as sklearn does.

    Same core points and clusters as `sklearn.cluster.DBSCAN(eps, min_samples=min_samples)`
    (distances ≤ ε count; a point is its own neighbour); see the module docstring for border points.
    """
    pts = np.ascontiguousarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {pts.shape}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    n = len(pts)
    labels = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return labels
    key, stride = _cell_keys(pts, eps)
    core = _core_mask(pts, key, eps, min_samples)
    cidx = np.flatnonzero(core)
    if len(cidx) == 0:
        return labels
    comp = _core_components(pts[cidx], key[cidx], stride, eps)
    # Number clusters by their lowest core index (sklearn's order: seeds are visited by index).
    _, first_idx, inv = np.unique(comp, return_index=True, return_inverse=True)
    rank = np.empty(len(first_idx), dtype=np.int64)
    rank[np.argsort(first_idx, kind="stable")] = np.arange(len(first_idx))
    labels[cidx] = rank[inv]
    # Border points: the cluster of the nearest core point within ε.
    other = np.flatnonzero(~core)
    if len(other):
        ctree = cKDTree(pts[cidx])
        d, j = ctree.query(pts[other], k=1, distance_upper_bound=_upper(eps))
        hit = d <= eps
        labels[other[hit]] = labels[cidx[j[hit]]]
    return labels


def largest_cluster_mask(points: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    """Boolean (N,) mask of the largest DBSCAN cluster (ties: lowest cluster id).

    With no cluster at all (every point is noise) every point is kept, as the reference does.
    """
    labels = dbscan(points, eps, min_samples)
    if labels.max(initial=-1) < 0:
        return np.ones(len(labels), dtype=bool)
    sizes = np.bincount(labels[labels >= 0])
    return labels == int(np.argmax(sizes))
