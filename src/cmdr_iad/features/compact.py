"""Compact per-sample features and the rebuild of the dense maps (pure tensor code, no IO).

What the extractors compute is small; the dense maps are derived from it:

- F2D = bilinear upsampling of the ViT token map ``(768, h, w)`` (28×28 for a 224 input) to
  ``G×G`` (:func:`~cmdr_iad.features.vit.upsample_feature_map`);
- F3D = the Point-MAE group features ``(1152, groups)`` interpolated to the valid points
  (3 neighbour indices and weights per point, :class:`~cmdr_iad.features.points3d.Interpolation`),
  scattered to their pixels and pooled (:func:`~cmdr_iad.features.points3d.pool_interpolation`).

:class:`Tokens2D` and :class:`Points3D` hold those parts (8 MB instead of 385 MB for a
paper-size sample at 60 % valid pixels); :func:`dense_f2d`, :func:`dense_f3d` and
:func:`packed_f3d` rebuild the maps with the extractor's own functions, so the result is
bit-identical in float32 to `FeatureExtractor.extract` (parts stored in float16 are rounded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .points3d import Interpolation, pool_interpolation, pool_interpolation_packed
from .vit import upsample_feature_map

__all__ = ["Tokens2D", "Points3D", "dense_f2d", "dense_f3d", "packed_f3d", "compact_nbytes"]


@dataclass
class Tokens2D:
    """The ViT token map of one sample: low ``(C, h, w)`` (C = 768)."""

    low: Tensor


@dataclass
class Points3D:
    """The Point-MAE part of one sample.

    features ``(C, groups)`` (C = 1152; ``(C, 0)`` for a cloud without a valid point),
    interp: neighbours ``(3, n)``, weights ``(3, n)`` and pixels ``(n,)`` of its n valid points,
    valid ``(H, W)`` bool (the dense map's rule: channels not summing to exactly 0).
    """

    features: Tensor
    interp: Interpolation
    valid: Tensor

    @property
    def size(self) -> tuple[int, int]:
        return int(self.valid.shape[0]), int(self.valid.shape[1])

    @property
    def empty(self) -> bool:
        return self.interp.num_points == 0


def _f32(t: Tensor, device: torch.device | str | None) -> Tensor:
    return t.to(device=device, dtype=torch.float32)


def dense_f2d(items: Sequence[Tokens2D], grid: int,
              device: torch.device | str | None = None) -> Tensor:
    """``(B, C, G, G)`` float32: the token maps stacked and upsampled (one call, as extraction)."""
    low = torch.stack([_f32(t.low, device) for t in items])
    return upsample_feature_map(low, grid)


@torch.no_grad()
def dense_f3d(items: Sequence[Points3D], device: torch.device | str | None = None) -> Tensor:
    """``(B, C, H, W)`` float32 F3D of the samples (zeros for an empty cloud)."""
    h, w = items[0].size
    c = items[0].features.shape[0]
    dev = items[0].features.device if device is None else torch.device(device)
    out = torch.empty(len(items), c, h, w, dtype=torch.float32, device=dev)
    for i, p in enumerate(items):
        pool_interpolation(_f32(p.features, dev), _interp_on(p.interp, dev), out[i])
    return out


@torch.no_grad()
def packed_f3d(item: Points3D, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """``(cols (C, k), support (k,))`` of one sample: F3D at the cells that can be non-zero."""
    dev = item.features.device if device is None else torch.device(device)
    return pool_interpolation_packed(_f32(item.features, dev), _interp_on(item.interp, dev),
                                     item.size)


def _interp_on(it: Interpolation, device: torch.device) -> Interpolation:
    return Interpolation(it.idx.to(device, torch.long), _f32(it.wts, device),
                         it.pix.to(device, torch.long))


def compact_nbytes(grid: int, *, tokens: int = 28, num_group: int = 1024, valid_fraction: float = 1.0,
                   uses_rgb: bool = True, uses_xyz: bool = True, float_bytes: int = 4) -> int:
    """Array bytes of one compact sample (``.npy`` headers excluded): 768·tokens² token map,
    1152·num_group group features, per valid point 3 neighbours (int16), 3 weights, 1 pixel
    (int32), and the G×G valid mask (bool)."""
    n = 0
    if uses_rgb:
        n += 768 * tokens * tokens * float_bytes
    if uses_xyz:
        points = int(round(valid_fraction * grid * grid))
        idx_bytes = 2 if num_group <= 32767 else 4
        n += 1152 * num_group * float_bytes + points * (3 * idx_bytes + 3 * float_bytes + 4) + grid * grid
    return n
