"""Sequential chunking, chunk labels, per-chunk normalisation and pseudo-images (paper §4.2).

A scan is a profilometer stream in acquisition order, so consecutive points are neighbours on
the surface: chunk k is `points[n·k : n·(k+1)]` and the tail that does not fill a chunk is
dropped (for prediction it is covered by one extra chunk aligned to the end of the scan).
A chunk of n = s² points becomes an s×s pseudo-image by a pure row-major reshape: pixel (r, c)
is point s·r + c, which is why per-point masks can be compared with the flattened map.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UserInputError
from .config import TAU, chunk_side


def chunk_starts(n_points: int, chunk_size: int, *, cover_tail: bool = False) -> np.ndarray:
    """Start offsets of the sequential chunks: 0, n, 2n, … (tail dropped).

    With `cover_tail`, one more chunk starting at `n_points - chunk_size` is appended when a
    tail remains, so that every point is covered.
    """
    if n_points < chunk_size:
        raise UserInputError(f"a scan needs at least one chunk of {chunk_size} points, got {n_points}")
    starts = list(range(0, n_points - chunk_size + 1, chunk_size))
    if cover_tail and starts[-1] + chunk_size < n_points:
        starts.append(n_points - chunk_size)
    return np.asarray(starts, dtype=np.int64)


def chunk_sequential(points: np.ndarray, chunk_size: int) -> np.ndarray:
    """(N, 3) → (K, n, 3) with K = N // n consecutive chunks; the tail is dropped."""
    k = len(points) // chunk_size
    if k == 0:
        raise UserInputError(f"a scan needs at least one chunk of {chunk_size} points, got {len(points)}")
    return np.ascontiguousarray(points[: k * chunk_size].reshape(k, chunk_size, *points.shape[1:]))


def chunk_labels(masks: np.ndarray, tau: float = TAU) -> np.ndarray:
    """(K, n) outlier masks → (K,) uint8 labels: 1 iff f_k = mean(mask_k) >= τ."""
    m = np.asarray(masks)
    return (m.astype(np.float64).mean(axis=1) >= tau).astype(np.uint8)


def normalize_chunks(chunks: np.ndarray) -> np.ndarray:
    """Per chunk and per coordinate min–max scaling to [-1, 1], in float32:
    2·(X − min)/(max − min) − 1, with the denominator set to 1e-12 when max == min.

    (..., n, 3) → same shape, float32.
    """
    x = np.asarray(chunks, dtype=np.float32)
    mn = x.min(axis=-2, keepdims=True)
    mx = x.max(axis=-2, keepdims=True)
    den = mx - mn
    den = np.where(den == 0, np.float32(1e-12), den).astype(np.float32)
    return (np.float32(2) * (x - mn) / den - np.float32(1)).astype(np.float32)


def to_pseudo_image(chunks: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(B, n, 3) normalised chunks → (B, 3, s, s) pseudo-images, s = √n (pure row-major reshape,
    as the reference `pointcloud_to_3ch_image` when n is a perfect square)."""
    x = torch.from_numpy(np.array(chunks, dtype=np.float32)) if isinstance(chunks, np.ndarray) else chunks
    if x.ndim != 3 or x.shape[-1] != 3:
        raise UserInputError(f"chunks must have shape (B, n, 3), got {tuple(x.shape)}")
    s = chunk_side(x.shape[1])
    return x.reshape(x.shape[0], s, s, 3).permute(0, 3, 1, 2).contiguous()
