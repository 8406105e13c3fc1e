"""Building blocks of the exact fast paths of the heads (pure tensor code, no IO).

The heads' outputs are only ever used at *valid* pixels (the masked loss ignores the others and
the scoring sets every distance map to 0 there), so the fast paths compute as little as the
architecture allows and stay exact (same arithmetic, only the summation order of some matmuls
changes, i.e. differences at float32 rounding level):

- token-wise layers (the mapping MLPs, Decoder2D's ``reconstruct``) run on the valid rows only,
  in chunks of :data:`CHUNK_ROWS` rows when no gradient is recorded, so that peak memory does not
  grow with the grid;
- Decoder3D's token-axis Linear skips the input tokens that are exactly zero (their weight
  columns multiply zeros), and its transposed 1D convolutions run as two matmuls per layer in a
  channels-last layout (:func:`conv_transpose1d_k4s2p1_cl`) instead of torch's col2im kernel;
- in eval mode, BatchNorm is folded into the preceding (transposed) convolution
  (:func:`fold_batchnorm`), and Decoder2D computes its windowed attention and convolutions only on
  the region that can influence a valid pixel.

Row order convention: "packed rows" of a ``(B, N, C)`` tensor and a ``(B, N)`` bool mask are
``x[valid]``, i.e. sample-major, then token order (the order of ``valid.nonzero()``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CHUNK_ROWS",
    "check_valid",
    "chunk_rows",
    "apply_rows",
    "nonzero_rows",
    "fold_batchnorm",
    "conv_transpose1d_k4s2p1_cl",
    "conv_transpose2d_as_conv2d",
]

CHUNK_ROWS = 512
"""Rows per chunk of a token-wise layer without autograd (CPU): 512 × 1536 × 4 B ≈ 3 MB for the
widest intermediate, so a chunk's working set stays in the caches and the allocator's heap does
not fragment into large free blocks. Measured on the paper preset at 95 % valid pixels (one run,
fresh processes, 2 threads, `benchmarks/bench_pipeline.py`): the heads take 16.4-17.6 s with 512
rows, 18.9 s with 1024 and 18.0-19.7 s with 2048, and the peak RSS is 1845-1868 / 1879 /
1912-1925 MB."""

_CUDA_CHUNK_ROWS = 65536


def check_valid(valid: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> None:
    """Raise :class:`ValueError` unless ``valid`` is a bool tensor of exactly ``shape``."""
    if not isinstance(valid, torch.Tensor):
        raise ValueError(f"valid must be a bool tensor of shape {tuple(shape)}, "
                             f"got {type(valid).__name__}")
    if valid.dtype != torch.bool or tuple(valid.shape) != tuple(shape):
        raise ValueError(f"valid must be a bool mask of shape {tuple(shape)}, got "
                             f"{tuple(valid.shape)} ({valid.dtype})")


def chunk_rows(device: torch.device, rows: int | None = None) -> int:
    """Chunk size for token-wise layers on ``device`` (``rows`` overrides; must be >= 1)."""
    if rows is not None:
        return max(1, int(rows))
    return _CUDA_CHUNK_ROWS if device.type == "cuda" else CHUNK_ROWS


def apply_rows(fn: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, out_features: int,
               chunk: int | None = None) -> torch.Tensor:
    """``fn`` applied to packed rows ``(n, C) → (n, out_features)``.

    ``fn`` must act row by row (no interaction between rows). Without autograd the rows are
    processed in chunks (bounded memory, cache-friendly); with autograd in one call (every
    intermediate is kept for the backward pass anyway).
    """
    n = rows.shape[0]
    step = chunk_rows(rows.device, chunk)
    if torch.is_grad_enabled() or n <= step:
        return fn(rows)
    out = rows.new_empty(n, out_features)
    for i in range(0, n, step):
        out[i:i + step] = fn(rows[i:i + step])
    return out


def nonzero_rows(x: torch.Tensor) -> torch.Tensor:
    """``(..., N, C) → (..., N)`` bool: the row has an entry that is not exactly 0 (NaN counts).

    Two reductions instead of ``(x != 0).any(-1)``, so no temporary of the size of ``x``.
    """
    return (x.amax(-1) != 0) | (x.amin(-1) != 0)


def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm,
                   out_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm into the layer before it (exact algebra, float32 rounding).

    ``weight`` has its output channels on axis ``out_dim``; returns ``(weight·s, (bias − μ)·s + β)``
    with ``s = γ / sqrt(σ² + eps)`` (running statistics).
    """
    s = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    shape = [1] * weight.dim()
    shape[out_dim] = -1
    b = bias if bias is not None else torch.zeros_like(bn.running_mean)
    return weight * s.view(shape), (b - bn.running_mean) * s + bn.bias


def conv_transpose1d_k4s2p1_cl(x: torch.Tensor, weight: torch.Tensor,
                               bias: torch.Tensor | None = None) -> torch.Tensor:
    """``ConvTranspose1d(kernel 4, stride 2, padding 1)`` in channels-last layout.

    ``x``: ``(B, L, Cin)``; ``weight``: ``(Cin, Cout, 4)`` (torch layout); returns ``(B, 2L, Cout)``.
    From y[t] = b + Σ_k Wₖᵀ x[s] over t = 2s − 1 + k:
    y[2m] = W₁ᵀx[m] + W₃ᵀx[m−1] + b and y[2m+1] = W₂ᵀx[m] + W₀ᵀx[m+1] + b (x outside [0, L) = 0).
    Without autograd: one matmul ``x @ [W₁ | W₂]`` fills the interleaved output (viewed as
    ``(L, 2·Cout)``), two in-place ``addmm_`` on strided views add the shifted terms — plain GEMMs,
    no im2col/col2im buffers.
    """
    b, n, cin = x.shape
    cout = weight.shape[1]
    w1, w2 = weight[:, :, 1], weight[:, :, 2]
    if torch.is_grad_enabled():
        y_even = torch.matmul(x, w1) + F.pad(torch.matmul(x[:, :-1], weight[:, :, 3]), (0, 0, 1, 0))
        y_odd = torch.matmul(x, w2) + F.pad(torch.matmul(x[:, 1:], weight[:, :, 0]), (0, 0, 0, 1))
        y = torch.stack([y_even, y_odd], 2).reshape(b, 2 * n, cout)
        return y if bias is None else y + bias
    weight = weight.to(x.dtype)  # under autocast x may already be in reduced precision
    bias = None if bias is None else bias.to(x.dtype)
    w12 = torch.cat([weight[:, :, 1], weight[:, :, 2]], 1)  # (Cin, 2Cout)
    y = x.new_empty(b, n, 2, cout)
    for i in range(b):
        xi, yi = x[i], y[i]
        if bias is None:
            torch.mm(xi, w12, out=yi.view(n, 2 * cout))
        else:
            torch.addmm(bias.repeat(2), xi, w12, out=yi.view(n, 2 * cout))
        if n > 1:
            yi[1:, 0].addmm_(xi[:-1], weight[:, :, 3])
            yi[:-1, 1].addmm_(xi[1:], weight[:, :, 0])
    return y.view(b, 2 * n, cout)


def conv_transpose2d_as_conv2d(weight: torch.Tensor) -> torch.Tensor:
    """Weight of the ordinary convolution equal to a stride-1 ``ConvTranspose2d``.

    ``(Cin, Cout, kH, kW)`` → ``(Cout, Cin, kH, kW)`` flipped in space: with padding p = (k−1)/2 on
    both sides, ``conv_transpose2d(x, W, padding=p) == conv2d(x, W', padding=p)``.
    """
    return weight.flip(2, 3).transpose(0, 1)

