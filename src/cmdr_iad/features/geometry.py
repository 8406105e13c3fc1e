"""Point-cloud geometry of the 3D feature path: farthest point sampling, k-NN grouping and
3-NN inverse-distance interpolation.

Everything is batched over padded point sets: `points (B, N, 3)` holds sample b's points in
rows `0 .. lengths[b]-1`; rows past the length are padding and are never selected, grouped or
used. FPS and the interpolation distances follow the reference operation by operation
(float32), so indices and distances match it bit for bit; memory stays bounded because
distances are computed in chunks and only the k smallest are kept (top-k selection, never a
full sort of an N×G matrix). Exact distance ties are resolved deterministically: FPS takes the
first index (reference), k-NN the lower index, and 3-NN re-sorts the rare tied rows in full,
exactly as the reference does.

FPS path choice (measured with `benchmarks/bench_point_mae.py`, 29k points → 1024 centres, one
core): the torch loop below takes ≈0.19 s; `fpsample.fps_sampling` (C++) ≈0.23-0.3 s and, while
it returns the reference indices on generic clouds, it breaks exact ties towards another index
than the reference's first one, which changes the centres on regular grids such as the raw-scan
pseudo-images. The torch loop is exact, batched, and runs unchanged on CUDA, so it is the only
path (no extra dependency).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import UserInputError
from ..precision import full_precision

__all__ = [
    "GroupedPoints",
    "farthest_point_sample",
    "gather_points",
    "group_points",
    "interpolate_features",
    "inverse_distance_weights",
    "knn",
    "smallest_k",
    "square_distance",
    "three_nn",
    "valid_mask",
]

_FPS_INIT = 1e10  # the reference's initial "infinite" distance
_CHUNK_ELEMENTS = 1 << 22  # elements per distance chunk (16 MiB float32)


def valid_mask(lengths: Tensor | None, batch: int, n: int, device: torch.device) -> Tensor:
    """`(B, N)` bool, True for the real (non-padding) rows of a padded point set."""
    if lengths is None:
        return torch.ones(batch, n, dtype=torch.bool, device=device)
    lengths = lengths.to(device=device, dtype=torch.long)
    return torch.arange(n, device=device)[None, :] < lengths[:, None]


def _check_points(points: Tensor, name: str = "points") -> None:
    if not isinstance(points, Tensor) or points.dim() != 3 or points.shape[-1] != 3:
        shape = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
        raise UserInputError(f"{name} must be a (B, N, 3) tensor, got {shape}")
    if not points.is_floating_point():
        raise UserInputError(f"{name} must be floating point, got {points.dtype}")


def _check_count(lengths: Tensor | None, n: int, need: int, what: str) -> None:
    smallest = n if lengths is None else int(lengths.min())
    if smallest < need:
        raise UserInputError(f"{what}: need at least {need} points per sample, "
                             f"but a sample has only {smallest}")


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run tiny element-wise loops single-threaded on CPU.

    The FPS loop issues ~6 ops on 1e5-element tensors per step; with intra-op threads each op
    pays a fork/join, which is 3-10x slower than one thread (and far worse on a busy machine).
    """
    if device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
@full_precision
def farthest_point_sample(points: Tensor, num_samples: int, lengths: Tensor | None = None) -> Tensor:
    """Farthest point sampling starting at index 0, as the (patched) reference.

    points: `(B, N, 3)`; lengths: `(B,)` valid rows per sample (None: all).
    Returns `(B, S)` long indices in selection order. Per step: `d = Σ_c (p_c − q_c)²` in float32
    (x, y then z), `dist = min(dist, d)`, next = first index of `max(dist)`. Padding rows start at
    −1 and can never win.
    """
    _check_points(points)
    b, n, _ = points.shape
    if num_samples < 1:
        raise UserInputError(f"num_samples must be >= 1, got {num_samples}")
    _check_count(lengths, n, num_samples, "farthest point sampling")
    planar = points.float().transpose(1, 2).contiguous()  # (B, 3, N): each coordinate contiguous
    device = planar.device
    dist = torch.full((b, n), _FPS_INIT, dtype=torch.float32, device=device)
    if lengths is not None:
        dist.masked_fill_(~valid_mask(lengths, b, n, device), -1.0)
    out = torch.empty(b, num_samples, dtype=torch.long, device=device)
    far = torch.zeros(b, dtype=torch.long, device=device)
    rows = torch.arange(b, device=device)
    diff = torch.empty_like(planar)
    d = torch.empty(b, n, dtype=torch.float32, device=device)
    with _one_cpu_thread(device):
        for i in range(num_samples):
            out[:, i] = far
            centre = planar[rows, :, far].unsqueeze(-1)  # (B, 3, 1)
            torch.sub(planar, centre, out=diff)
            diff.mul_(diff)
            torch.add(diff[:, 0], diff[:, 1], out=d)
            d.add_(diff[:, 2])
            torch.minimum(dist, d, out=dist)
            far = dist.argmax(dim=1)
    return out


def gather_points(points: Tensor, idx: Tensor) -> Tensor:
    """`points (B, N, C)`, `idx (B, ...)` long → `(B, ..., C)`."""
    b, _, c = points.shape
    flat = idx.reshape(b, -1)
    out = torch.gather(points, 1, flat.unsqueeze(-1).expand(-1, -1, c))
    return out.reshape(*idx.shape, c)


def _chunk_rows(total: int, per_row: int, limit: int = _CHUNK_ELEMENTS) -> int:
    return max(1, min(total, limit // max(1, per_row)))


def _order_keys(values: Tensor, index: Tensor) -> Tensor:
    """int64 keys ordered like (value, index): float32 values mapped to order-preserving int32
    (sign-magnitude → two's complement; −0.0 treated as +0.0) in the high half, index low."""
    bits = (values.float() + 0.0).view(torch.int32)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)
    return (bits << 32) | index


@full_precision
def smallest_k(d: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k smallest entries of float32 `d` along the last axis in (value, index) order: exact
    ties go to the lower index, so the result does not depend on padding, chunking or device
    (`topk` alone breaks ties in an implementation-defined way).

    A float `topk(k+1)` finds the candidates, which are then ordered by (value, index); rows
    whose k-th and (k+1)-th values tie (rare) are redone with keys over the whole row.
    Returns (values, indices), both `(..., k)`.
    """
    m = d.shape[-1]
    if k >= m:
        keys = _order_keys(d, torch.arange(m, device=d.device).expand_as(d)).sort(dim=-1).values
        idx = keys[..., :k] & 0xFFFFFFFF
        return torch.gather(d, -1, idx), idx
    cand = d.topk(k + 1, dim=-1, largest=False, sorted=False)
    idx = _order_keys(cand.values, cand.indices).sort(dim=-1).values & 0xFFFFFFFF
    vals = torch.gather(d, -1, idx)
    tied = vals[..., k - 1] == vals[..., k]
    if bool(tied.any()):
        rows = tied.nonzero(as_tuple=True)
        sub = d[rows]
        keys = _order_keys(sub, torch.arange(m, device=d.device).expand_as(sub))
        idx[rows] = keys.topk(k + 1, dim=-1, largest=False, sorted=True).values & 0xFFFFFFFF
        vals[rows] = torch.gather(sub, -1, idx[rows])
    return vals[..., :k], idx[..., :k]


@torch.no_grad()
@full_precision
def knn(points: Tensor, centres: Tensor, k: int, lengths: Tensor | None = None,
        chunk_elements: int = _CHUNK_ELEMENTS) -> Tensor:
    """The k nearest points of every centre, nearest first.

    points `(B, N, 3)`, centres `(B, S, 3)` → `(B, S, k)` long indices into points. Distance:
    Euclidean norm of the float32 difference (the reference's `torch.norm` fuses multiply-adds,
    so a value may differ in the last bit; sets differ only for neighbours tied to that bit).
    Chunked over centres, each row selected with `smallest_k` (exact ties → lower index; the
    reference's `topk` leaves that order implementation-defined, and so does its README).
    """
    _check_points(points)
    _check_points(centres, "centres")
    b, n, _ = points.shape
    s = centres.shape[1]
    if k < 1:
        raise UserInputError(f"k must be >= 1, got {k}")
    _check_count(lengths, n, k, f"k-NN with k={k}")
    p = points.float().transpose(1, 2).contiguous()  # (B, 3, N)
    c = centres.float()
    pad = None if lengths is None else ~valid_mask(lengths, b, n, p.device)  # (B, N)
    out = torch.empty(b, s, k, dtype=torch.long, device=p.device)
    step = _chunk_rows(s, b * n * 2, chunk_elements)
    for s0 in range(0, s, step):
        cc = c[:, s0:s0 + step]  # (B, Sc, 3)
        d = (p[:, None, 0, :] - cc[..., 0:1]).square_()
        d += (p[:, None, 1, :] - cc[..., 1:2]).square_()
        d += (p[:, None, 2, :] - cc[..., 2:3]).square_()
        d.sqrt_()
        if pad is not None:
            d.masked_fill_(pad[:, None, :], float("inf"))
        out[:, s0:s0 + step] = smallest_k(d, k)[1]
    return out


@dataclass
class GroupedPoints:
    """FPS centres and their centred k-NN neighbourhoods.

    center_idx `(B, S)`, centres `(B, S, 3)`, knn_idx `(B, S, k)` (indices into the points, nearest
    first), neighbourhoods `(B, S, k, 3)` = neighbour − centre.
    """

    center_idx: Tensor
    centres: Tensor
    knn_idx: Tensor
    neighbourhoods: Tensor


@torch.no_grad()
@full_precision
def group_points(points: Tensor, num_group: int, group_size: int,
                 lengths: Tensor | None = None) -> GroupedPoints:
    """FPS (start 0) → k-NN → centred neighbourhoods, as Point-MAE's `Group` (batched)."""
    center_idx = farthest_point_sample(points, num_group, lengths)
    centres = gather_points(points.float(), center_idx)
    knn_idx = knn(points, centres, group_size, lengths)
    neighbourhoods = gather_points(points.float(), knn_idx) - centres.unsqueeze(2)
    return GroupedPoints(center_idx, centres, knn_idx, neighbourhoods)


@full_precision
def square_distance(src: Tensor, dst: Tensor) -> Tensor:
    """Squared distances `(B, N, M)` in the reference's operation order (float32):
    `(−2·(src·dst) + |src|²) + |dst|²`. src `(B, N, 3)`, dst `(B, M, 3)`."""
    d = -2 * torch.matmul(src, dst.transpose(1, 2))
    d += torch.sum(src**2, -1).unsqueeze(-1)
    d += torch.sum(dst**2, -1).unsqueeze(-2)
    return d


@torch.no_grad()
@full_precision
def three_nn(points: Tensor, centres: Tensor, chunk_elements: int = _CHUNK_ELEMENTS
             ) -> tuple[Tensor, Tensor]:
    """The 3 nearest centres of every point, nearest first (reference distance formula).

    points `(B, N, 3)`, centres `(B, S, 3)` with S ≥ 3 → (sqdist `(B, N, 3)` float32, idx `(B, N, 3)`
    long). Padding rows get meaningless values; callers ignore them. Chunked over points with a
    top-4 selection instead of the reference's full sort of the N×S matrix; the rare rows with
    exact ties among their 4 nearest are sorted in full like the reference, so tie order (which
    changes the 3rd neighbour on regular grids) is the reference's on the same device.
    """
    _check_points(points)
    _check_points(centres, "centres")
    b, n, _ = points.shape
    s = centres.shape[1]
    if s < 3:
        raise UserInputError(f"3-NN interpolation needs at least 3 centres, got {s}")
    p = points.float()
    c = centres.float()
    sqd = torch.empty(b, n, 3, dtype=torch.float32, device=p.device)
    idx = torch.empty(b, n, 3, dtype=torch.long, device=p.device)
    step = _chunk_rows(n, b * s, chunk_elements)
    for n0 in range(0, n, step):
        d = square_distance(p[:, n0:n0 + step], c)  # (B, Nc, S)
        vals, ids = smallest_k(d, min(4, s))
        # Exact ties among the first 4: the set (3rd vs 4th) or the order of the 3 depends on
        # the reference's full-row `sort`; redo those (rare) rows with it.
        tied = (vals[..., 1:] == vals[..., :-1]).any(dim=-1)
        if bool(tied.any()):
            rows = tied.nonzero(as_tuple=True)
            ids[rows] = d[rows].sort(dim=-1).indices[:, : ids.shape[-1]]
            vals[rows] = torch.gather(d[rows], -1, ids[rows])
        sqd[:, n0:n0 + step] = vals[..., :3]
        idx[:, n0:n0 + step] = ids[..., :3]
    return sqd, idx


@full_precision
def inverse_distance_weights(sqdist: Tensor) -> Tensor:
    """`w = 1/(d + 1e-8)`, normalised over the last axis (reference; d is the squared distance)."""
    recip = 1.0 / (sqdist + 1e-8)
    return recip / torch.sum(recip, dim=-1, keepdim=True)


@full_precision
def interpolate_features(features: Tensor, idx: Tensor, weights: Tensor) -> Tensor:
    """Weighted sum of 3 neighbour features: features `(B, C, S)`, idx/weights `(B, N, 3)` →
    `(B, N, C)`; summed as `(f0·w0 + f1·w1) + f2·w2` like the reference's sum over the 3 axis."""
    tokens = features.transpose(1, 2)  # (B, S, C)
    out = gather_points(tokens, idx[..., 0]) * weights[..., 0:1]
    out += gather_points(tokens, idx[..., 1]) * weights[..., 1:2]
    out += gather_points(tokens, idx[..., 2]) * weights[..., 2:3]
    return out
