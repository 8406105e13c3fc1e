"""Row access to one sample's feature map without materialising it (pure tensor code, no IO).

The heads only read the feature tokens they need: the valid pixels (mapping MLPs, distance
targets), Decoder2D's windows around them and Decoder3D's non-zero tokens. A paper-size sample's
dense maps are 385 MB (F2D 768×224×224 + F3D 1152×224×224, float32), but F2D is a bilinear
upsampling of a 28×28 ViT map and F3D is zero away from the object, so inference keeps them in a
compact form and computes rows on request:

- :class:`DenseRows` — a dense ``(C, G, G)`` map (training, the cache, the plain path);
- :class:`UpsampledRows` — a low-resolution ``(C, h, w)`` map and the bilinear upsampling
  (``align_corners=False``, torch's index and weight arithmetic) evaluated at the requested pixels;
- :class:`PackedRows` — the columns ``(C, k)`` of the tokens in a support set (every other token
  is exactly zero).

All three give the same rows as the dense map: bit-identical for Dense/Packed, within float32
rounding for Upsampled (same indices, weights and order as torch's kernel, which may fuse the
multiply-adds: ≤ 2 ulp).
Tokens are numbered row-major: token ``t`` is pixel ``(t // G, t % G)``.
"""

from __future__ import annotations

from typing import Protocol

import torch

__all__ = ["TokenRows", "DenseRows", "UpsampledRows", "PackedRows", "linear_source_weights"]


class TokenRows(Protocol):
    """Read-only token access of one sample: ``n`` tokens of ``dim`` channels."""

    n: int
    dim: int

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Tokens ``idx`` (long, ``(m,)``) → ``(m, dim)`` float32."""

    def span(self, t0: int, t1: int) -> torch.Tensor:
        """Tokens ``t0 … t1-1`` → ``(t1 - t0, dim)``."""

    def columns(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every token that may be non-zero: ``(cols (dim, k), idx (k,))``, ``idx`` ascending."""


class DenseRows:
    """A dense map ``(C, G, G)`` (or ``(C, N)``) seen as tokens (no copy)."""

    def __init__(self, fmap: torch.Tensor) -> None:
        if fmap.dim() not in (2, 3):
            raise ValueError(f"DenseRows needs a (C, G, G) or (C, N) map, got {tuple(fmap.shape)}")
        self.cn = fmap.reshape(fmap.shape[0], -1)  # (C, N)
        self.dim, self.n = self.cn.shape
        self.device = fmap.device

    def tokens(self) -> torch.Tensor:
        """``(N, C)`` view (not contiguous)."""
        return self.cn.t()

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        return self.cn.index_select(1, idx).t()

    def span(self, t0: int, t1: int) -> torch.Tensor:
        return self.cn[:, t0:t1].t()

    def columns(self) -> tuple[torch.Tensor, torch.Tensor]:
        keep = (self.cn.amax(0) != 0) | (self.cn.amin(0) != 0)
        idx = keep.nonzero().squeeze(1)
        return self.cn.index_select(1, idx), idx


def linear_source_weights(n_in: int, n_out: int, device: torch.device | str = "cpu"
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights of 1D linear resampling ``n_in → n_out`` (align_corners=False)
    as torch's CPU/CUDA kernels compute them in float32: ``src = max(0, s·(d + ½) − ½)`` with
    ``s = n_in / n_out``; ``i0 = ⌊src⌋``, ``i1 = i0 + 1`` (``i0`` at the last input), ``λ1 = src − i0``,
    ``λ0 = 1 − λ1``. Returns ``(i0, i1, λ0, λ1)``, each ``(n_out,)``."""
    scale = torch.tensor(float(n_in), dtype=torch.float32) / n_out
    d = torch.arange(n_out, dtype=torch.float32)
    src = (scale * (d + 0.5) - 0.5).clamp_min(0.0)
    i0 = src.long()
    i1 = torch.where(i0 < n_in - 1, i0 + 1, i0)
    lam1 = src - i0.float()
    lam0 = 1.0 - lam1
    return i0.to(device), i1.to(device), lam0.to(device), lam1.to(device)


class UpsampledRows:
    """Rows of ``F.interpolate(low[None], (G, G), mode="bilinear", align_corners=False)[0]``
    computed at the requested pixels only.

    low ``(C, h, w)``. The width pass is done once for every source row (``(h, G, C)``, 19 MB for
    the paper's 768×28 map); a requested pixel ``(y, x)`` is then ``λ0(y)·R[i0(y), x] +
    λ1(y)·R[i1(y), x]`` — the order of torch's kernel (width first, then height).
    """

    def __init__(self, low: torch.Tensor, grid: int) -> None:
        if low.dim() != 3:
            raise ValueError(f"UpsampledRows needs a (C, h, w) map, got {tuple(low.shape)}")
        c, h, w = low.shape
        self.dim, self.grid, self.n = c, int(grid), int(grid) * int(grid)
        self.device = low.device
        low = low.float()
        if w == self.grid:
            wide = low.permute(1, 2, 0)  # (h, G, C)
        else:
            j0, j1, m0, m1 = linear_source_weights(w, self.grid, low.device)
            wide = low[:, :, j0] * m0 + low[:, :, j1] * m1  # (C, h, G)
            wide = wide.permute(1, 2, 0)
        self.wide = wide.contiguous()  # (h, G, C)
        if h == self.grid:
            self.hw = None
        else:
            self.hw = linear_source_weights(h, self.grid, low.device)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        y, x = idx // self.grid, idx % self.grid
        if self.hw is None:
            return self.wide[y, x]
        i0, i1, l0, l1 = self.hw
        return self.wide[i0[y], x] * l0[y, None] + self.wide[i1[y], x] * l1[y, None]

    def span(self, t0: int, t1: int) -> torch.Tensor:
        return self.rows(torch.arange(t0, t1, device=self.device))

    def columns(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.arange(self.n, device=self.device)
        return self.rows(idx).t(), idx

    def dense(self) -> torch.Tensor:
        """The whole upsampled map ``(C, G, G)`` (for checks; 154 MB at paper size)."""
        return self.span(0, self.n).t().reshape(self.dim, self.grid, self.grid)


class PackedRows:
    """Tokens of a map that is exactly zero outside ``support``: ``cols (C, k)`` holds the
    support's tokens in ascending order (``support_idx (k,)``)."""

    def __init__(self, cols: torch.Tensor, support_idx: torch.Tensor, n: int) -> None:
        if cols.dim() != 2 or cols.shape[1] != support_idx.numel():
            raise ValueError(f"PackedRows: cols {tuple(cols.shape)} do not fit "
                                 f"{support_idx.numel()} support tokens")
        self.cols, self.idx = cols, support_idx
        self.dim, self.n = cols.shape[0], int(n)
        self.device = cols.device
        self.pos = torch.full((self.n,), -1, dtype=torch.long, device=cols.device)
        self.pos[support_idx] = torch.arange(support_idx.numel(), device=cols.device)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        p = self.pos[idx]
        inside = p >= 0
        if bool(inside.all()):
            return self.cols.index_select(1, p).t()
        out = self.cols.new_zeros(idx.numel(), self.dim)
        out[inside] = self.cols.index_select(1, p[inside]).t()
        return out

    def span(self, t0: int, t1: int) -> torch.Tensor:
        return self.rows(torch.arange(t0, t1, device=self.device))

    def columns(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cols, self.idx

    def dense(self) -> torch.Tensor:
        """``(C, N)`` with zeros outside the support (for checks)."""
        out = self.cols.new_zeros(self.dim, self.n)
        out[:, self.idx] = self.cols
        return out
