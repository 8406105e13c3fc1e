"""Dual-branch reconstruction decoders D_2D and D_3D (paper §3.3).

Module names follow the official ``Dec2d.py`` / ``Dec3d.py`` so that the state-dict keys (and
therefore the authors' checkpoints) match exactly, e.g. ``attn.attn.qkv.weight`` or
``decoder.12.weight``. Dropout layers (p = 0.1 in the reference) sit where the reference has
them; they only act in training mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WindowAttention", "AttentionBlock", "Decoder2D", "Decoder3D", "reduced_length"]


def _check_tokens(x: torch.Tensor, n: int, c: int, who: str, why: str) -> None:
    if x.dim() != 3:
        raise ValueError(f"{who} expects a (B, N, C) tensor, got shape {tuple(x.shape)}")
    if x.shape[1] != n:
        raise ValueError(f"{who} expects N = {n} tokens ({why}), got {x.shape[1]}")
    if x.shape[2] != c:
        raise ValueError(f"{who} expects C = {c} channels, got {x.shape[2]}")


class WindowAttention(nn.Module):
    """Multi-head self-attention inside consecutive windows of ``window_size`` tokens.

    ``(B, N, C) → (B, N, C)``. Like the reference ``SparseAttention1D``: q, k, v come from one
    Linear (channel ``s·C + head·D + d``); zero rows are appended *after* the projection until N is
    a multiple of the window, and these padded keys are **not masked** (each enters the softmax
    with logit 0 and value 0, so queries of the last, partly padded window are damped).
    """

    def __init__(self, dim: int, num_heads: int = 8, window_size: int = 128, dropout: float = 0.1):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        self.dim, self.num_heads, self.window_size = dim, num_heads, window_size
        self.head_dim = dim // num_heads
        self.attn_dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h, d, w = self.num_heads, self.head_dim, self.window_size
        qkv = self.qkv(x)  # (B, N, 3C)
        pad = (-n) % w
        if pad:
            qkv = F.pad(qkv, (0, 0, 0, pad))  # exact zero rows, no bias
        nw = (n + pad) // w
        # (B, nW, w, 3, H, D) → (3, B·nW, H, w, D)
        qkv = qkv.view(b, nw, w, 3, h, d).permute(3, 0, 1, 4, 2, 5).reshape(3, b * nw, h, w, d)
        p = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], dropout_p=p)  # scale D^-0.5
        out = out.view(b, nw, h, w, d).permute(0, 1, 3, 2, 4).reshape(b, nw * w, c)[:, :n]
        return self.proj_drop(self.proj(out))


class AttentionBlock(nn.Module):
    """Pre-norm block ``t += SA(LN(t)); t += MLP(LN(t))`` on ``(B, N, C)`` (``TunedSparseAttention1D``)."""

    def __init__(self, dim: int, num_heads: int = 8, window_size: int = 128, mlp_ratio: float = 2.0,
                 dropout: float = 0.1):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),  # mlp.0
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),  # mlp.3
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Decoder2D(nn.Module):
    """2D reconstruction branch D_2D: ``(B, S·S, dim) → (B, S·S, dim)`` with S = ``img_size``.

    projection (Linear dim→r, GELU, LN, Dropout, Linear r→r, GELU, LN; r = dim/2) → windowed
    attention block → tokens placed row-major on the S×S grid → three ConvTranspose2d(k3, s1, p1)
    + BatchNorm + GELU stages (r→256→128→r) → back to tokens → reconstruct (Linear r→2·dim, GELU,
    Dropout, Linear 2·dim→dim, LN). The grid side comes from ``img_size``, so N must be S².
    """

    def __init__(self, dim: int, img_size: int = 224, num_heads: int = 8, window_size: int = 128,
                 dropout: float = 0.1):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"Decoder2D needs an even feature size, got dim={dim}")
        if img_size < 1:
            raise ValueError(f"Decoder2D needs img_size >= 1, got {img_size}")
        self.dim, self.img_size = int(dim), int(img_size)
        self.reduced_dim = r = self.dim // 2
        self.projection = nn.Sequential(
            nn.Linear(dim, r), nn.GELU(), nn.LayerNorm(r), nn.Dropout(dropout),
            nn.Linear(r, r), nn.GELU(), nn.LayerNorm(r),
        )
        self.attn = AttentionBlock(r, num_heads, window_size, 2.0, dropout)
        self.conv_decoder = nn.Sequential(
            nn.ConvTranspose2d(r, 256, kernel_size=3, stride=1, padding=1), nn.BatchNorm2d(256), nn.GELU(),
            nn.ConvTranspose2d(256, 128, kernel_size=3, stride=1, padding=1), nn.BatchNorm2d(128), nn.GELU(),
            nn.ConvTranspose2d(128, r, kernel_size=3, stride=1, padding=1), nn.BatchNorm2d(r), nn.GELU(),
        )
        self.reconstruct = nn.Sequential(
            nn.Linear(r, 2 * dim), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(2 * dim, dim), nn.LayerNorm(dim),
        )

    @property
    def num_tokens(self) -> int:
        return self.img_size * self.img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, S·S, dim) → (B, S·S, dim)``, every token (the reference computation).

        The exact valid-rows evaluation used for training and inference is
        :func:`cmdr_iad.model.rows.head_rows` / :func:`~cmdr_iad.model.rows.iter_head_rows`.
        """
        s = self.img_size
        _check_tokens(x, s * s, self.dim, "Decoder2D", f"a {s}×{s} grid")
        return self.reconstruct(self._decode(x))

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before ``reconstruct``, on every token: ``(B, N, dim) → (B, N, r)``."""
        b, s = x.shape[0], self.img_size
        t = self.attn(self.projection(x))  # (B, N, r)
        grid = t.transpose(1, 2).reshape(b, self.reduced_dim, s, s)  # token n → (n // S, n % S)
        return self.conv_decoder(grid).flatten(2).transpose(1, 2)  # (B, N, r), row-major again


def reduced_length(out_seq_len: int) -> int:
    """Lr of Decoder3D: L // 32, or L itself when L < 32 (the ``FeatureDecoder_9216`` rule).

    For L >= 32 both official decoders agree; for L < 32 the MVTec ``Decoder3D`` would build
    zero-width layers, so the polyurethane rule is the only working one and is used everywhere.
    """
    return out_seq_len // 32 if out_seq_len >= 32 else out_seq_len


class Decoder3D(nn.Module):
    """3D reconstruction branch D_3D: ``(B, L, C) → (B, 32·Lr, C)`` (= L when 32 divides L).

    Permute to (B, C, L); projection along the **token axis** (Linear L→Lr, GELU, LN(Lr), Dropout,
    Linear Lr→Lr, GELU, LN(Lr)), Lr = :func:`reduced_length`; five ConvTranspose1d(k4, s2, p1)
    (C→768→512→256→128→C, BN + GELU after the first four, Tanh after the last); squeeze-excitation
    channel attention (mean over length → 1×1 conv C→C/8 → ReLU → 1×1 conv → sigmoid) multiplies
    the decoder output. The input must have exactly L = ``out_seq_len`` tokens.
    """

    def __init__(self, out_seq_len: int = 50176, feature_dim: int = 1152, dropout: float = 0.1):
        super().__init__()
        if out_seq_len < 1:
            raise ValueError(f"Decoder3D needs out_seq_len >= 1, got {out_seq_len}")
        if feature_dim < 8:
            raise ValueError(f"Decoder3D needs feature_dim >= 8, got {feature_dim}")
        self.out_seq_len, self.feature_dim = int(out_seq_len), int(feature_dim)
        self.reduced_len = lr = reduced_length(self.out_seq_len)
        c = self.feature_dim
        self.projection = nn.Sequential(
            nn.Linear(self.out_seq_len, lr), nn.GELU(), nn.LayerNorm(lr), nn.Dropout(dropout),
            nn.Linear(lr, lr), nn.GELU(), nn.LayerNorm(lr),
        )

        def up(cin: int, cout: int) -> nn.ConvTranspose1d:
            return nn.ConvTranspose1d(cin, cout, kernel_size=4, stride=2, padding=1)

        self.decoder = nn.Sequential(
            up(c, 768), nn.BatchNorm1d(768), nn.GELU(),
            up(768, 512), nn.BatchNorm1d(512), nn.GELU(),
            up(512, 256), nn.BatchNorm1d(256), nn.GELU(),
            up(256, 128), nn.BatchNorm1d(128), nn.GELU(),
            up(128, c), nn.Tanh(),
        )
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool1d(1),
            nn.Conv1d(c, c // 8, kernel_size=1),  # attention.1
            nn.ReLU(),
            nn.Conv1d(c // 8, c, kernel_size=1),  # attention.3
            nn.Sigmoid(),
        )

    @property
    def output_len(self) -> int:
        """Number of output tokens, 32·Lr."""
        return 32 * self.reduced_len

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, C) → (B, 32·Lr, C)``, every token (the reference computation).

        The exact fast evaluations (zero-token skip, matmul transposed convolutions, valid rows
        only) are :func:`cmdr_iad.model.rows.decoder3d_fast_forward`, ``head_rows`` and
        ``iter_head_rows``.
        """
        _check_tokens(x, self.out_seq_len, self.feature_dim, "Decoder3D",
                      "its token-axis projection is built for exactly out_seq_len tokens")
        y = self.decoder(self.projection(x.permute(0, 2, 1)))  # (B, C, 32·Lr)
        return (y * self.attention(y)).permute(0, 2, 1)
