"""Anomaly maps of the 3D-only mode (paper §3.6), exactly as the reference test loop.

Per chunk, with target = Point-MAE features and pred = Decoder3D(target), both (B, n, C):
1. mask = target row sums to exactly 0 (no point / no feature);
2. A_rec^3D = ‖pred/‖pred‖ − target/‖target‖‖₂ per pixel (`fusion.euclid`), 0 at the mask,
   reshaped row-major to s×s;
3. one 5×5 box pass (zero padding, exact zeros kept), no 7×7 pass;
4. norm = √mean(map[map ≠ 0]); anomaly_map = map / (norm + 1e-6); image score S = max.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.fusion import euclid, smooth_with_box_filters
from ..model.losses import valid_tokens

NORM_EPS = 1e-6


@dataclass
class ChunkScores:
    """Every stage of the scoring, batched. Maps are (B, s, s); norm and image_score (B,)."""

    mask: torch.Tensor
    distance: torch.Tensor
    smoothed: torch.Tensor
    norm: torch.Tensor
    anomaly_map: torch.Tensor
    image_score: torch.Tensor


def feature_zero_mask(target: torch.Tensor) -> torch.Tensor:
    """(B, n, C) → (B, n) bool, True where the feature row sums to exactly 0 (reference rule)."""
    return ~valid_tokens(target)


def distance_map(pred: torch.Tensor, target: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked normalised Euclidean distance A_rec^3D: (B, n, C) × 2 → ((B, s, s), mask (B, s, s))."""
    mask = feature_zero_mask(target)
    d = euclid(pred, target)
    d = torch.where(mask, torch.zeros_like(d), d)
    b = d.shape[0]
    return d.reshape(b, side, side), mask.reshape(b, side, side)


def normalise_map(smoothed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, s, s) → (map / (√mean(map[map ≠ 0]) + 1e-6), norm (B,)).

    A map with no non-zero pixel (nothing to score) gets norm 0 instead of the reference's NaN,
    so its anomaly map stays all zeros and finite.
    """
    flat = smoothed.reshape(smoothed.shape[0], -1)
    norms = []
    for row in flat:  # per sample, as the reference (torch mean of the non-zero values)
        nz = row[row != 0]
        norms.append(nz.mean().sqrt() if nz.numel() else row.new_zeros(()))
    norm = torch.stack(norms)
    return smoothed / (norm + NORM_EPS)[:, None, None], norm


def score_chunks(pred: torch.Tensor, target: torch.Tensor, side: int, *, box5_passes: int = 1,
                 box7_passes: int = 0) -> ChunkScores:
    """All stages for a batch of chunks: (B, n, C) pred/target → `ChunkScores`."""
    d, mask = distance_map(pred, target, side)
    sm = smooth_with_box_filters(d, 5, box5_passes)
    sm = smooth_with_box_filters(sm, 7, box7_passes)
    amap, norm = normalise_map(sm)
    return ChunkScores(mask=mask, distance=d, smoothed=sm, norm=norm, anomaly_map=amap,
                       image_score=amap.reshape(amap.shape[0], -1).amax(dim=1))
