"""Pixel-aligned Point-MAE features of organised point clouds (the reference's
`get_features_maps`, batched).

Per sample: keep the pixels whose three coordinates are all non-zero → FPS + k-NN groups →
Point-MAE → 3-NN inverse-distance interpolation of the group features to every kept point →
scatter to the H×W grid (zeros elsewhere) → 3×3 average pooling (stride 1, no padding) →
adaptive average pooling back to H×W. A grid cell is valid when its feature channels do not sum
to exactly 0 (the reference's `xyz_patch.sum(-1) == 0` rule, inverted).

Samples with different numbers of valid points are padded and masked, so a batch gives the same
features as single calls. Memory stays bounded: distances are chunked (no N×G matrix, no dense
N×G×3 difference), and interpolation, scatter and pooling run per sample on blocks of channels
written straight into the output (no full-size intermediate grid).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import UserInputError
from ..memory import release_memory
from ..model.tokens import PackedRows
from ..precision import to_float32
from .geometry import (
    GroupedPoints,
    farthest_point_sample,
    gather_points,
    inverse_distance_weights,
    knn,
    three_nn,
)
from .point_mae import BN_MODES, PointMAE

__all__ = [
    "Interpolation",
    "PointFeatures",
    "apply_interpolation",
    "check_organized",
    "interpolation_weights",
    "interpolate_pool",
    "interpolate_pool_packed",
    "pool_interpolation",
    "pool_interpolation_packed",
    "pooled_support",
    "interpolate_to_grid",
    "organized_points",
    "point_features",
    "pool_grid",
    "xyz_feature_map",
    "xyz_feature_rows",
]

_POINT_CHUNK = 4096  # points per interpolation chunk (x 1152 x 4 B x ~3 live ≈ 57 MiB)
_POOL_ELEMENTS = 1 << 21  # grid elements per pooling block (8 MiB)


def check_organized(xyz: Tensor, name: str = "xyz") -> Tensor:
    """Validate an organised cloud `(B, 3, H, W)` and return it as float32.

    Raises `UserInputError` for a non-tensor, wrong shape, non-float dtype or NaN/inf values.
    """
    if not isinstance(xyz, Tensor):
        raise UserInputError(f"{name} must be a torch.Tensor (B, 3, H, W), got {type(xyz).__name__}")
    if xyz.dim() != 4 or xyz.shape[1] != 3 or xyz.shape[0] < 1 or min(xyz.shape[2:]) < 3:
        raise UserInputError(f"{name} must have shape (B, 3, H, W) with H, W >= 3, "
                             f"got {tuple(xyz.shape)}")
    if not xyz.is_floating_point():
        raise UserInputError(f"{name} must be a floating-point tensor, got {xyz.dtype}")
    xyz = xyz.float()
    finite = torch.isfinite(xyz).flatten(1).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten().tolist()
        raise UserInputError(f"{name} has NaN or infinite coordinates in sample(s) {bad}")
    return xyz


def organized_points(xyz: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Valid points of organised clouds, padded.

    xyz `(B, 3, H, W)` → points `(B, Nmax, 3)` in ascending pixel order, lengths `(B,)` long,
    pix `(B, Nmax)` long flat pixel indices `row·W + col`. A point is missing when ANY coordinate
    is exactly 0 (reference rule). Padding rows hold zeros and pixel index 0.
    """
    xyz = check_organized(xyz)
    b = xyz.shape[0]
    flat = xyz.flatten(2).transpose(1, 2)  # (B, HW, 3)
    keep = (flat != 0).all(dim=-1)  # (B, HW)
    lengths = keep.sum(dim=1)
    nmax = int(lengths.max()) if b else 0
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :nmax]  # valid first
    pad = torch.arange(nmax, device=xyz.device)[None, :] >= lengths[:, None]
    pix = order.masked_fill(pad, 0)
    points = torch.gather(flat, 1, pix.unsqueeze(-1).expand(-1, -1, 3)).masked_fill(pad[..., None], 0)
    return points, lengths, pix


@dataclass
class PointFeatures:
    """Point-MAE output of padded point sets: features `(B, C, G)` (token order = FPS order) and
    the grouping used (`GroupedPoints`)."""

    features: Tensor
    groups: GroupedPoints


class _Timer:
    def __init__(self, timings: dict[str, float] | None, device: torch.device) -> None:
        self.timings, self.device = timings, device

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.timings is None:
            yield
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0


def _check_counts(lengths: Tensor, model: PointMAE) -> None:
    need = max(model.num_group, model.group_size)
    for i, n in enumerate(lengths.tolist()):
        if n == 0:
            raise UserInputError(f"sample {i}: the point cloud is empty (every point has a zero "
                                 "coordinate)")
        if n < need:
            raise UserInputError(
                f"sample {i}: only {n} valid points, but Point-MAE needs at least {need} "
                f"(num_group={model.num_group}, group_size={model.group_size}); "
                "use a smaller grouping preset or a denser cloud")


@torch.no_grad()
def point_features(model: PointMAE, points: Tensor, lengths: Tensor | None = None,
                   bn: str = "sample", timings: dict[str, float] | None = None) -> PointFeatures:
    """Group padded points `(B, N, 3)` (FPS + k-NN with the model's sizes, as
    `geometry.group_points`) and run Point-MAE. timings: seconds added under "fps", "knn",
    "point_mae"."""
    if bn not in BN_MODES:
        raise UserInputError(f"bn must be one of {BN_MODES}, got {bn!r}")
    if lengths is None:
        lengths = torch.full((points.shape[0],), points.shape[1], dtype=torch.long)
    _check_counts(lengths, model)
    timer = _Timer(timings, points.device)
    lengths = lengths.to(points.device)
    pts = points.float()
    with timer("fps"):
        center_idx = farthest_point_sample(pts, model.num_group, lengths)
    with timer("knn"):
        centres = gather_points(pts, center_idx)
        knn_idx = knn(pts, centres, model.group_size, lengths)
        groups = GroupedPoints(center_idx, centres, knn_idx,
                               gather_points(pts, knn_idx) - centres.unsqueeze(2))
    with timer("point_mae"):
        feats = to_float32(model(groups.neighbourhoods, groups.centres, bn=bn))  # autocast → fp32
    return PointFeatures(feats, groups)


def _adaptive_runs(n_in: int, n_out: int) -> list[tuple[int, int, int, int]]:
    """Adaptive-average windows for upsampling (n_in ≤ n_out: each window holds 1 or 2 inputs;
    torch's window i spans ⌊i·n_in/n_out⌋ .. ⌈(i+1)·n_in/n_out⌉−1) as runs of outputs
    `(start, length, first-input offset, last-input offset)` with constant offsets, so the gather
    becomes a few slice operations."""
    runs: list[tuple[int, int, int, int]] = []
    for i in range(n_out):
        a = i - (i * n_in) // n_out
        b = i - (((i + 1) * n_in + n_out - 1) // n_out - 1)
        if runs and runs[-1][2:] == (a, b):
            s0, ln, _, _ = runs[-1]
            runs[-1] = (s0, ln + 1, a, b)
        else:
            runs.append((i, 1, a, b))
    return runs


def _adaptive_up(x: Tensor, dim: int, n_out: int, out: Tensor) -> Tensor:
    """`out` (size n_out ≥ x's along dim) = adaptive average pooling of x along `dim`: the mean
    of the first and last input of each window, as a few strided slice additions."""
    for start, length, a, b in _adaptive_runs(x.shape[dim], n_out):
        torch.add(x.narrow(dim, start - a, length), x.narrow(dim, start - b, length),
                  out=out.narrow(dim, start, length))
    return out.mul_(0.5)


def pool_grid(grid: Tensor, out: Tensor | None = None) -> Tensor:
    """The reference's `AdaptiveAvgPool2d((H, W))(AvgPool2d(3, stride=1)(grid))` on `(C, H, W)`.

    Returns `(C, H, W)` (written into `out` if given). The 3×3 mean (zeros counted, no padding)
    and the 1-or-2-wide adaptive windows are computed separably with slice additions on channel
    blocks of ≤ 4M elements, several times faster on CPU than torch's pooling kernels. Equal to
    the reference up to float32 rounding (the sums are grouped differently).
    """
    c, h, w = grid.shape
    if h < 3 or w < 3:
        raise UserInputError(f"the feature grid must be at least 3×3, got {h}×{w}")
    if out is None:
        out = grid.new_empty(c, h, w)
    step = max(1, _POOL_ELEMENTS // (h * w))
    for k in range(0, c, step):
        x = grid[k:k + step]
        rows = x[:, :-2] + x[:, 1:-1]
        rows += x[:, 2:]
        box = rows[..., :-2] + rows[..., 1:-1]
        box += rows[..., 2:]
        box /= 9.0  # (Cb, H-2, W-2)
        up = _adaptive_up(box, 1, h, box.new_empty(box.shape[0], h, w - 2))
        _adaptive_up(up, 2, w, out[k:k + step])
    return out


@torch.no_grad()
def interpolate_to_grid(features: Tensor, points: Tensor, centres: Tensor, pix: Tensor,
                        num_pixels: int) -> Tensor:
    """3-NN inverse-distance interpolation of one sample's group features to its points,
    scattered into a zero grid.

    features `(C, G)`, points `(n, 3)`, centres `(G, 3)`, pix `(n,)` flat pixel index of each
    point → `(C, num_pixels)`. Each point gets `(f0·w0 + f1·w1) + f2·w2` (reference order), in
    chunks of points, so no `(n, 3, C)` tensor is ever built.
    """
    c = features.shape[0]
    feats = features.contiguous()
    interp = interpolation_weights(points, centres, pix)
    idx, wts = interp.idx, interp.wts  # (3, n) each
    grid = torch.zeros(c, num_pixels, dtype=torch.float32, device=features.device)
    for p0 in range(0, points.shape[0], _POINT_CHUNK):
        sl = slice(p0, p0 + _POINT_CHUNK)
        ii, ww = idx[:, sl], wts[:, sl]
        val = feats.index_select(1, ii[0]) * ww[0]
        val += feats.index_select(1, ii[1]) * ww[1]
        val += feats.index_select(1, ii[2]) * ww[2]
        grid[:, pix[sl]] = val
    return grid


@dataclass
class Interpolation:
    """One sample's 3-NN inverse-distance interpolation from group centres to its points.

    idx ``(3, n)`` long: the 3 nearest centres of each point (nearest first); wts ``(3, n)``
    float32: their normalised inverse-distance weights; pix ``(n,)`` long: the flat grid cell
    ``row·W + col`` of each point. With the group features it determines the F3D map
    (:func:`apply_interpolation`), so the feature store keeps this instead of the dense map.
    """

    idx: Tensor
    wts: Tensor
    pix: Tensor

    @property
    def num_points(self) -> int:
        return int(self.pix.numel())


def interpolation_weights(points: Tensor, centres: Tensor, pix: Tensor) -> Interpolation:
    """The 3-NN neighbours and weights of one sample: points ``(n, 3)``, centres ``(G, 3)``,
    pix ``(n,)`` → :class:`Interpolation`."""
    sqd, idx = three_nn(points[None], centres[None])
    wts = inverse_distance_weights(sqd)[0].T  # (3, n)
    return Interpolation(idx[0].T, wts, pix)


def apply_interpolation(features: Tensor, interp: Interpolation, num_pixels: int,
                        timer: _Timer | None = None) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(first channel, grid block (Cb, num_pixels))``: features ``(C, G)`` interpolated
    to the points of ``interp`` as ``(f0·w0 + f1·w1) + f2·w2`` (reference order) and scattered
    into a zero grid, a block of channels at a time (≤ :data:`_POOL_ELEMENTS` elements).

    The one code path of extraction and of the feature store's rebuild: the same tensors in give
    the same bits out."""
    timer = timer or _Timer(None, features.device)
    idx, wts, pix = interp.idx, interp.wts, interp.pix
    c = features.shape[0]
    step = max(1, _POOL_ELEMENTS // num_pixels)
    for k in range(0, c, step):
        with timer("interpolation"):
            feats = features[k:k + step].contiguous()
            val = feats.index_select(1, idx[0]) * wts[0]
            val += feats.index_select(1, idx[1]) * wts[1]
            val += feats.index_select(1, idx[2]) * wts[2]
            grid = torch.zeros(feats.shape[0], num_pixels, dtype=torch.float32, device=features.device)
            grid[:, pix] = val
            del val
        yield k, grid
        del grid


@torch.no_grad()
def pool_interpolation(features: Tensor, interp: Interpolation, out: Tensor,
                       timer: _Timer | None = None) -> Tensor:
    """Pooled F3D map of one sample from its group features ``(C, G)`` and
    :class:`Interpolation`, written into out ``(C, H, W)``; see :func:`interpolate_pool`."""
    timer = timer or _Timer(None, out.device)
    c, h, w = out.shape
    if interp.num_points == 0:  # a cloud without valid points: all-zero features
        return out.zero_()
    for k, grid in apply_interpolation(features, interp, h * w, timer):
        with timer("assembly"):
            pool_grid(grid.view(-1, h, w), out=out[k:k + grid.shape[0]])
    return out


@torch.no_grad()
def pool_interpolation_packed(features: Tensor, interp: Interpolation, size: tuple[int, int],
                              timer: _Timer | None = None) -> tuple[Tensor, Tensor]:
    """Packed form of :func:`pool_interpolation`: ``(cols (C, k), support (k,))``, the pooled
    map's columns at `pooled_support(interp.pix, size)` (zero elsewhere), bit-equal to the
    dense map's."""
    timer = timer or _Timer(None, features.device)
    h, w = size
    with timer("assembly"):
        support = pooled_support(interp.pix, size)
    cols = torch.empty(features.shape[0], support.numel(), dtype=torch.float32, device=features.device)
    if support.numel() == 0:
        return cols, support
    for k, grid in apply_interpolation(features, interp, h * w, timer):
        with timer("assembly"):
            pooled = pool_grid(grid.view(-1, h, w))
            torch.index_select(pooled.view(pooled.shape[0], -1), 1, support,
                               out=cols[k:k + grid.shape[0]])
    return cols, support


@torch.no_grad()
def interpolate_pool(features: Tensor, points: Tensor, centres: Tensor, pix: Tensor, out: Tensor,
                     timer: _Timer | None = None) -> Tensor:
    """`pool_grid(interpolate_to_grid(...))` of one sample, written into out `(C, H, W)` one
    block of channels at a time, so no full-size `(C, H·W)` grid is ever held.

    features `(C, G)`, points `(n, 3)`, centres `(G, 3)`, pix `(n,)`. The values equal the
    two-step computation exactly (each channel is computed the same way, only fewer at once).
    timer, if given, books "interpolation" (3-NN + scatter) and "assembly" (pooling).
    """
    timer = timer or _Timer(None, out.device)
    with timer("interpolation"):
        interp = interpolation_weights(points, centres, pix)
    return pool_interpolation(features, interp, out, timer)


def pooled_support(pix: Tensor, size: tuple[int, int]) -> Tensor:
    """Flat indices ``(k,)`` (ascending) of the grid cells that `pool_grid` can make non-zero
    when only the pixels ``pix`` hold values: the 3×3 + adaptive windows that reach a point."""
    h, w = size
    mask = torch.zeros(1, h * w, dtype=torch.float32, device=pix.device)
    mask[0, pix] = 1.0
    return (pool_grid(mask.view(1, h, w)).view(-1) != 0).nonzero().squeeze(1)


@torch.no_grad()
def interpolate_pool_packed(features: Tensor, points: Tensor, centres: Tensor, pix: Tensor,
                            size: tuple[int, int], timer: _Timer | None = None
                            ) -> tuple[Tensor, Tensor]:
    """`interpolate_pool` of one sample kept only where it can be non-zero.

    Returns ``(cols (C, k), support (k,))``: the pooled map's columns at the flat grid cells
    `pooled_support(pix, size)`; every other cell of the map is exactly 0. The columns equal
    the dense map's bit for bit (same blocks, same arithmetic).
    """
    timer = timer or _Timer(None, features.device)
    with timer("interpolation"):
        interp = interpolation_weights(points, centres, pix)
    return pool_interpolation_packed(features, interp, size, timer)


def _run_point_mae(model: PointMAE, xyz: Tensor, bn: str, timings: dict[str, float] | None
                   ) -> tuple[Tensor, _Timer, tuple[Tensor, Tensor, Tensor], PointFeatures]:
    """Checked cloud on the model's device, the stage timer, its valid points
    ``(points, lengths, pix)`` and the Point-MAE features (working memory released on CPU)."""
    device = next(model.parameters()).device
    xyz = check_organized(xyz).to(device)
    timer = _Timer(timings, device)
    with timer("assembly"):
        organized = organized_points(xyz)
    pf = point_features(model, organized[0], organized[1], bn=bn, timings=timings)
    if device.type == "cpu":
        release_memory()  # Point-MAE's freed working memory, before the output is allocated
    return xyz, timer, organized, pf


@torch.no_grad()
def xyz_feature_map(model: PointMAE, xyz: Tensor, bn: str = "sample", *,
                    timings: dict[str, float] | None = None,
                    return_point_features: bool = False,
                    return_interpolations: bool = False,
                    ) -> tuple[Tensor, ...]:
    """Pixel-aligned Point-MAE features of organised clouds.

    model: `PointMAE` (its num_group / group_size set the grouping); xyz `(B, 3, H, W)` float, in
    the model's device (moved there otherwise); bn: "sample" or "running" (see `PointMAE`).
    Returns F3D `(B, C, H, W)` float32 (C = model.out_dim, 1152) and valid `(B, H, W)` bool.
    timings, if given, accumulates seconds per stage ("fps", "knn" (incl. gathering the groups),
    "point_mae", "interpolation" (3-NN + scatter), "assembly" (point selection, pooling, mask)). return_point_features adds the `PointFeatures` (groups, token features);
    return_interpolations adds the list of per-sample :class:`Interpolation` (what the feature
    store keeps with ``PointFeatures.features``; :func:`pool_interpolation` rebuilds F3D).
    Raises `UserInputError` for bad shapes/dtypes, NaN/inf, empty clouds or too few points.
    """
    xyz, timer, (points, lengths, pix), pf = _run_point_mae(model, xyz, bn, timings)
    device = xyz.device
    b, _, h, w = xyz.shape
    c = pf.features.shape[1]
    f3d = torch.empty(b, c, h, w, dtype=torch.float32, device=device)
    interps = []
    for i in range(b):
        n = int(lengths[i])
        with timer("interpolation"):
            interps.append(interpolation_weights(points[i, :n], pf.groups.centres[i], pix[i, :n]))
        pool_interpolation(pf.features[i], interps[-1], f3d[i], timer)
    with timer("assembly"):
        valid = f3d.sum(dim=1) != 0
    out: tuple[Tensor, ...] = (f3d, valid)
    if return_point_features:
        out += (pf,)
    if return_interpolations:
        out += (interps,)
    return out


@torch.no_grad()
def xyz_feature_rows(model: PointMAE, xyz: Tensor, bn: str = "sample", *,
                     timings: dict[str, float] | None = None) -> tuple[PackedRows, Tensor]:
    """`xyz_feature_map` of ONE organised cloud ``(1, 3, H, W)`` in packed form.

    Returns ``(rows, valid)``: a :class:`~cmdr_iad.model.tokens.PackedRows` holding the tokens
    of F3D that can be non-zero (the points' pooling windows, ~20 % of a paper-size grid instead
    of the dense 231 MB map), and valid ``(H, W)`` bool with the same rule as the dense map.
    Inference reads F3D through it (see `cmdr_iad.model.distances.sample_distance_maps`).
    """
    if isinstance(xyz, Tensor) and xyz.dim() == 4 and xyz.shape[0] != 1:
        raise UserInputError(f"xyz_feature_rows takes one cloud (1, 3, H, W), got {tuple(xyz.shape)}")
    xyz, timer, (points, lengths, pix), pf = _run_point_mae(model, xyz, bn, timings)
    device = xyz.device
    _, _, h, w = xyz.shape
    n = int(lengths[0])
    cols, support = interpolate_pool_packed(pf.features[0], points[0, :n], pf.groups.centres[0],
                                            pix[0, :n], (h, w), timer)
    del pf, points
    with timer("assembly"):
        valid = torch.zeros(h * w, dtype=torch.bool, device=device)
        valid[support] = cols.sum(dim=0) != 0
    return PackedRows(cols, support, h * w), valid.view(h, w)
