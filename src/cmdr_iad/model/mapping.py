"""Cross-modal mapping networks M_2D→3D and M_3D→2D (paper §3.2).

State-dict layout is the official ``FeatureMappigMLP`` (``input``, ``projection.{0,2,4,6}``,
``output``), so the authors' per-class checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import torch
from torch import nn

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
            raise ValueError(
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
            raise ValueError(
                f"CrossModalMLP expects features of size {self.in_features} in the last axis, "
                f"got a tensor of shape {tuple(x.shape)}"
            )

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.projection(self.act(self.input(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, N, in_features)`` (any leading dims) → ``(B, N, out_features)``.

        Valid rows only: :func:`cmdr_iad.model.rows.head_rows` / ``iter_head_rows``.
        """
        self._check(x)
        return self._mlp(x)
