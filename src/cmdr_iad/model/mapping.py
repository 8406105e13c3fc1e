"""Cross-modal mapping networks M_2D→3D and M_3D→2D (paper §3.2).

State-dict layout is the official ``FeatureMappigMLP`` (``input``, ``projection.{0,2,4,6}``,
``output``), so the authors' per-class checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserInputError
from .fast import apply_rows, check_valid, scatter_rows

__all__ = ["CrossModalMLP"]


class CrossModalMLP(nn.Module):
    """Token-wise MLP that predicts the other modality's feature: ``(B, N, in) → (B, N, out)``.

    With r = (in + out) // 2:
    Linear(in→r) → GELU → [Linear(r→r) → GELU → LayerNorm → Dropout] → Linear(r→r) → GELU →
    LayerNorm → Linear(r→out). GELU is the exact (erf) form, LayerNorm eps 1e-5. ``dropout`` is
    active only in training mode (0.1 in the reference).
    """

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.1) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise UserInputError(
                f"CrossModalMLP needs positive feature sizes, got in={in_features}, out={out_features}"
            )
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.reduced_dim = (self.in_features + self.out_features) // 2
        r = self.reduced_dim
        self.act = nn.GELU()
        self.input = nn.Linear(self.in_features, r)
        self.projection = nn.Sequential(
            nn.Linear(r, r),  # projection.0
            nn.GELU(),
            nn.LayerNorm(r),  # projection.2
            nn.Dropout(dropout),
            nn.Linear(r, r),  # projection.4
            nn.GELU(),
            nn.LayerNorm(r),  # projection.6
        )
        self.output = nn.Linear(r, self.out_features)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() < 2 or x.shape[-1] != self.in_features:
            raise UserInputError(
                f"CrossModalMLP expects features of size {self.in_features} in the last axis, "
                f"got a tensor of shape {tuple(x.shape)}"
            )

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.projection(self.act(self.input(x))))

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``(B, N, in_features)`` (any leading dims) → ``(B, N, out_features)``.

        ``valid``: optional bool mask of the leading dims of ``x`` (e.g. ``(B, N)``). When given,
        the MLP runs only on the valid rows (in memory-bounded chunks without autograd) and the
        other rows of the output are exact zeros; valid rows equal the plain forward.
        """
        self._check(x)
        if valid is None:
            return self._mlp(x)
        check_valid(valid, x.shape[:-1])
        flat = valid.reshape(1, -1)
        rows = self.forward_rows(x.reshape(1, flat.shape[1], -1), flat)
        return scatter_rows(rows, flat).view(*x.shape[:-1], self.out_features)

    def forward_rows(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Packed outputs of the valid rows: ``(B, N, in)``, ``(B, N)`` bool → ``(n_valid, out)``
        in the order of ``x[valid]``."""
        self._check(x)
        check_valid(valid, x.shape[:-1])
        return self.apply_rows(x[valid])

    def apply_rows(self, rows: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """The MLP on packed rows ``(n, in) → (n, out)`` (chunked without autograd)."""
        self._check(rows)
        return apply_rows(self._mlp, rows, self.out_features, chunk)

