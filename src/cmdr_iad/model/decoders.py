"""Dual-branch reconstruction decoders D_2D and D_3D (paper §3.3).

Module names follow the official ``Dec2d.py`` / ``Dec3d.py`` so that the state-dict keys (and
therefore the authors' checkpoints) match exactly, e.g. ``attn.attn.qkv.weight`` or
``decoder.12.weight``. Dropout layers (p = 0.1 in the reference) sit where the reference has
them; they only act in training mode.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserInputError
from .fast import (
    check_valid,
    chunk_rows,
    conv_transpose1d_k4s2p1_cl,
    conv_transpose2d_as_conv2d,
    fold_batchnorm,
    nonzero_rows,
    scatter_rows,
)
from .tokens import DenseRows, TokenRows

__all__ = ["WindowAttention", "AttentionBlock", "Decoder2D", "Decoder3D", "reduced_length"]


def _check_tokens(x: torch.Tensor, n: int, c: int, who: str, why: str) -> None:
    if x.dim() != 3:
        raise UserInputError(f"{who} expects a (B, N, C) tensor, got shape {tuple(x.shape)}")
    if x.shape[1] != n:
        raise UserInputError(f"{who} expects N = {n} tokens ({why}), got {x.shape[1]}")
    if x.shape[2] != c:
        raise UserInputError(f"{who} expects C = {c} channels, got {x.shape[2]}")


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
            raise UserInputError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        if window_size < 1:
            raise UserInputError(f"window_size must be >= 1, got {window_size}")
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
            raise UserInputError(f"Decoder2D needs an even feature size, got dim={dim}")
        if img_size < 1:
            raise UserInputError(f"Decoder2D needs img_size >= 1, got {img_size}")
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

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, S·S, dim) → (B, S·S, dim)``.

        ``valid``: optional ``(B, S·S)`` bool mask. When given, only the valid rows are computed
        exactly (see :meth:`forward_rows`) and the other rows are exact zeros.
        """
        s = self.img_size
        _check_tokens(x, s * s, self.dim, "Decoder2D", f"a {s}×{s} grid")
        if valid is not None:
            return scatter_rows(self.forward_rows(x, valid), valid)
        return self.reconstruct(self._decode(x))

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before ``reconstruct``, on every token: ``(B, N, dim) → (B, N, r)``."""
        b, s = x.shape[0], self.img_size
        t = self.attn(self.projection(x))  # (B, N, r)
        grid = t.transpose(1, 2).reshape(b, self.reduced_dim, s, s)  # token n → (n // S, n % S)
        return self.conv_decoder(grid).flatten(2).transpose(1, 2)  # (B, N, r), row-major again

    def forward_rows(self, x: torch.Tensor, valid: torch.Tensor,
                     chunk: int | None = None) -> torch.Tensor:
        """Outputs at the valid tokens only: ``(B, N, dim)``, ``(B, N)`` bool → ``(n_valid, dim)``
        in the order of ``x[valid]``.

        ``reconstruct`` (token-wise, a third of the FLOPs) always runs on the valid rows only.
        In eval mode without autograd, each sample additionally computes projection + windowed
        attention only for the windows that touch the valid pixels' bounding box grown by 3
        pixels (the reach of the three 3×3 convolutions), and the convolutions (BatchNorm folded
        in) only on that box; otherwise (training, or autograd on) the trunk runs densely,
        because BatchNorm then uses batch statistics over every pixel.
        """
        s = self.img_size
        _check_tokens(x, s * s, self.dim, "Decoder2D", f"a {s}×{s} grid")
        check_valid(valid, x.shape[:2])
        if self.training or torch.is_grad_enabled():
            return self.reconstruct(self._decode(x)[valid])
        return torch.cat([self.rows_from_source(DenseRows(x[i].t()), valid[i], chunk)
                          for i in range(x.shape[0])], 0)

    def _conv_layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(weight, bias) of the three convolutions as ordinary conv2d, eval BatchNorm folded in."""
        cd = self.conv_decoder
        return [fold_batchnorm(conv_transpose2d_as_conv2d(cd[i].weight), cd[i].bias, cd[i + 1], 0)
                for i in (0, 3, 6)]

    @torch.no_grad()
    def rows_from_source(self, src: TokenRows, valid: torch.Tensor, chunk: int | None = None
                         ) -> torch.Tensor:
        """Eval-mode outputs of one sample at its valid tokens: ``(n_valid, dim)``, row-major order.

        src: the sample's input tokens (:mod:`cmdr_iad.model.tokens`; only the windows that touch
        the valid pixels' bounding box grown by 3 pixels are read); valid ``(N,)`` bool. Projection
        + windowed attention run on those windows, the convolutions (BatchNorm folded in) on the
        box, ``reconstruct`` on the valid rows. See :meth:`iter_rows_from_source`.
        """
        parts = list(self.iter_rows_from_source(src, valid, chunk))
        return torch.cat(parts, 0) if parts else torch.empty(0, self.dim, device=valid.device)

    @torch.no_grad()
    def iter_rows_from_source(self, src: TokenRows, valid: torch.Tensor, chunk: int | None = None
                              ) -> Iterator[torch.Tensor]:
        """:meth:`rows_from_source` as consecutive chunks of rows (``chunk`` rows, CPU default
        2048), so a caller can use each chunk and drop it: no ``(n_valid, dim)`` output held."""
        if self.training:
            raise UserInputError("Decoder2D.rows_from_source is the eval-mode path; call .eval() first")
        s, r, ws = self.img_size, self.reduced_dim, self.attn.attn.window_size
        if src.n != s * s or src.dim != self.dim:
            raise UserInputError(f"Decoder2D: the source has {src.n} tokens of {src.dim} channels, "
                                 f"expected {s * s} of {self.dim}")
        check_valid(valid, (s * s,))
        m = valid.view(s, s)
        if not bool(m.any()):
            return
        rows_hit = m.any(1).nonzero().squeeze(1)
        cols_hit = m.any(0).nonzero().squeeze(1)
        r0, r1, c0, c1 = int(rows_hit[0]), int(rows_hit[-1]), int(cols_hit[0]), int(cols_hit[-1])
        halo = 3  # three 3×3 convolutions
        R0, R1, C0, C1 = r0 - halo, r1 + halo, c0 - halo, c1 + halo
        i0, i1, j0, j1 = max(R0, 0), min(R1, s - 1), max(C0, 0), min(C1, s - 1)

        # windows (consecutive runs of ws tokens, row-major) that touch the in-image box
        n = s * s
        n_win = -(-n // ws)
        need = torch.zeros(n_win * ws, dtype=torch.bool, device=valid.device)
        need[:n].view(s, s)[i0:i1 + 1, j0:j1 + 1] = True
        wins = need.view(n_win, ws).any(1).nonzero().squeeze(1).tolist()
        # projection + attention output on the box, zero-padded where the box leaves the image,
        # channels-last (the convolutions run in NHWC: less memory and faster on CPU)
        pad = (i0 - R0, j0 - C0)
        box = torch.zeros(R1 - R0 + 1, C1 - C0 + 1, r, device=valid.device)
        step = max(1, chunk_rows(valid.device, chunk) // ws)
        k = 0
        while k < len(wins):  # runs of consecutive windows, at most `step` windows per call
            e = k
            while e + 1 < len(wins) and wins[e + 1] == wins[e] + 1 and e + 1 - k < step:
                e += 1
            t0, t1 = wins[k] * ws, min((wins[e] + 1) * ws, n)
            out = self.attn(self.projection(src.span(t0, t1)[None]))[0]  # (t1 - t0, r)
            for y in range(max(t0 // s, i0), min((t1 - 1) // s, i1) + 1):  # box rows in the run
                a, b = max(t0, y * s + j0), min(t1, y * s + j1 + 1)
                if a < b:
                    x0 = a - y * s - j0 + pad[1]
                    box[y - i0 + pad[0], x0:x0 + b - a] = out[a - t0:b - t0]
            del out
            k = e + 1

        # three convolutions on the box
        g = box.permute(2, 0, 1)[None]  # (1, r, H, W) view, channels-last memory
        del box
        for depth, (w, b) in enumerate(self._conv_layers(), start=1):
            g = F.conv2d(g, w.contiguous(memory_format=torch.channels_last), b)
            g = torch.ops.aten.gelu_(g)
            top, left = max(0, -(R0 + depth)), max(0, -(C0 + depth))
            bottom, right = max(0, R1 - depth - (s - 1)), max(0, C1 - depth - (s - 1))
            if top or left or bottom or right:  # outside the image: the next layer sees zeros
                g[..., :top, :] = 0
                g[..., g.shape[-2] - bottom:, :] = 0
                g[..., :, :left] = 0
                g[..., :, g.shape[-1] - right:] = 0
        rows = g[0].permute(1, 2, 0)[m[r0:r1 + 1, c0:c1 + 1]]  # (n_valid, r), row-major
        del g
        step = chunk_rows(valid.device, chunk)
        for i in range(0, rows.shape[0], step):
            yield self.reconstruct(rows[i:i + step])


_SKIP_BELOW = 0.9  # skip zero tokens in Decoder3D's token-axis Linear when fewer than 90 % are non-zero
_SKIP_CHUNK = 2048  # tokens per matmul of the skipping Linear without autograd (≤ 13 MB of weights)
_LAST_CHUNK = 2048  # output rows per matmul of Decoder3D's last layer in forward_rows (≤ 10 MB)


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
            raise UserInputError(f"Decoder3D needs out_seq_len >= 1, got {out_seq_len}")
        if feature_dim < 8:
            raise UserInputError(f"Decoder3D needs feature_dim >= 8, got {feature_dim}")
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

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, L, C) → (B, 32·Lr, C)``.

        ``valid``: optional ``(B, L)`` bool mask (needs 32·Lr = L). When given, the exact fast
        path runs (see :meth:`forward_fast`) and rows outside ``valid`` are exact zeros. Every
        row is still computed: the channel attention averages over all of them.
        """
        _check_tokens(x, self.out_seq_len, self.feature_dim, "Decoder3D",
                      "its token-axis projection is built for exactly out_seq_len tokens")
        if valid is None:
            y = self.decoder(self.projection(x.permute(0, 2, 1)))  # (B, C, 32·Lr)
            return (y * self.attention(y)).permute(0, 2, 1)
        if self.output_len != self.out_seq_len:
            raise UserInputError(f"Decoder3D: a valid mask needs 32 | L (L = {self.out_seq_len} gives "
                                 f"{self.output_len} output tokens)")
        check_valid(valid, x.shape[:2])
        y = self.forward_fast(x)
        if torch.is_grad_enabled() and y.requires_grad:
            return torch.where(valid[..., None], y, y.new_zeros(()))
        return y.masked_fill_(~valid[..., None], 0)

    def forward_rows(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Packed outputs at the valid tokens: ``(B, L, C)``, ``(B, L)`` bool → ``(n_valid, C)``."""
        _check_tokens(x, self.out_seq_len, self.feature_dim, "Decoder3D",
                      "its token-axis projection is built for exactly out_seq_len tokens")
        if self.output_len != self.out_seq_len:
            raise UserInputError(f"Decoder3D: a valid mask needs 32 | L (L = {self.out_seq_len} gives "
                                 f"{self.output_len} output tokens)")
        check_valid(valid, x.shape[:2])
        if torch.is_grad_enabled() or self.training:
            return self.forward_fast(x)[valid]
        return torch.cat([self._rows_lowmem(x[i:i + 1], valid[i]) for i in range(x.shape[0])], 0)

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        """Same as ``forward(x)``, faster and channels-last: ``(B, L, C) → (B, 32·Lr, C)``, contiguous.

        The token-axis Linear skips the tokens whose features are exactly zero (missing 3D
        points), the transposed convolutions run as matmuls (:func:`conv_transpose1d_k4s2p1_cl`)
        with eval-mode BatchNorm folded in, and without autograd samples go one at a time.
        """
        if not self.training and not torch.is_grad_enabled() and x.shape[0] > 1:
            return torch.cat([self.forward_fast(x[i:i + 1]) for i in range(x.shape[0])], 0)
        h = self._trunk(x)  # (B, L/2, 128)
        last = self.decoder[12]
        h = conv_transpose1d_k4s2p1_cl(h, last.weight, last.bias)
        h = torch.tanh(h) if torch.is_grad_enabled() else h.tanh_()
        a = self._channel_attention(h.mean(1))  # AdaptiveAvgPool1d(1)
        if torch.is_grad_enabled():
            return h * a[:, None, :]
        return h.mul_(a[:, None, :])

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Projection and the first four transposed convolutions: ``(B, L, C) → (B, 16·Lr, 128)``."""
        return self._trunk_from(self._token_linear(x))

    def _trunk_from(self, z: torch.Tensor) -> torch.Tensor:
        """The trunk after the token-axis Linear: ``(B, C, Lr) → (B, 16·Lr, 128)``."""
        z = self.projection[1:](z)  # (B, C, Lr)
        h = z.transpose(1, 2)  # (B, Lr, C)
        dec = self.decoder
        for i in (0, 3, 6, 9):
            conv = dec[i]
            if self.training:
                h = conv_transpose1d_k4s2p1_cl(h, conv.weight, conv.bias)
                h = dec[i + 1](h.transpose(1, 2)).transpose(1, 2)  # BatchNorm (batch statistics)
            else:
                w, b = fold_batchnorm(conv.weight, conv.bias, dec[i + 1], 1)
                h = conv_transpose1d_k4s2p1_cl(h, w, b)
            h = F.gelu(h)
        return h

    def _channel_attention(self, s: torch.Tensor) -> torch.Tensor:
        """Squeeze-excitation weights ``(B, C) → (B, C)`` from the per-channel means ``s``."""
        att = self.attention
        return torch.sigmoid(F.linear(torch.relu(F.linear(s, att[1].weight[..., 0], att[1].bias)),
                                      att[3].weight[..., 0], att[3].bias))

    def _rows_lowmem(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Valid output rows of one sample without the full ``(L, C)`` output (no autograd).

        x ``(1, L, C)``, valid ``(L,)``. The channel attention needs the mean of tanh(last layer)
        over every row: pass 1 computes the last transposed convolution in chunks and keeps only
        the column sums; pass 2 recomputes it at the valid rows only (y[2m] from x[m], x[m−1];
        y[2m+1] from x[m], x[m+1]) → ``(n_valid, C)``.
        """
        return self._rows_tail(self._trunk(x)[0], valid)

    @torch.no_grad()
    def rows_from_source(self, src: TokenRows, valid: torch.Tensor) -> torch.Tensor:
        """Eval-mode outputs of one sample at its valid tokens: ``(n_valid, C)``.

        src: the sample's input tokens; only ``src.columns()`` (the tokens that may be non-zero)
        are read, e.g. the packed F3D of :class:`~cmdr_iad.model.tokens.PackedRows`.
        valid ``(L,)`` bool. Same computation as :meth:`forward_rows` (low-memory mode).
        """
        parts = list(self.iter_rows_from_source(src, valid))
        return torch.cat(parts, 0) if parts else torch.empty(0, self.feature_dim, device=valid.device)

    @torch.no_grad()
    def iter_rows_from_source(self, src: TokenRows, valid: torch.Tensor, chunk: int | None = None
                              ) -> Iterator[torch.Tensor]:
        """:meth:`rows_from_source` as consecutive chunks of valid rows (token order), so that
        no ``(n_valid, C)`` output is held."""
        if self.training:
            raise UserInputError("Decoder3D.rows_from_source is the eval-mode path; call .eval() first")
        if src.n != self.out_seq_len or src.dim != self.feature_dim:
            raise UserInputError(f"Decoder3D: the source has {src.n} tokens of {src.dim} channels, "
                                 f"expected {self.out_seq_len} of {self.feature_dim}")
        if self.output_len != self.out_seq_len:
            raise UserInputError(f"Decoder3D: a valid mask needs 32 | L (L = {self.out_seq_len} gives "
                                 f"{self.output_len} output tokens)")
        check_valid(valid, (self.out_seq_len,))
        cols, idx = src.columns()
        h = self._trunk_from(self._token_linear_cols(cols, idx)[None])[0]
        yield from self._iter_tail(h, valid, chunk_rows(valid.device, chunk))

    def _rows_tail(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The last layer and the channel attention at the valid rows: trunk ``(L/2, 128)`` →
        ``(n_valid, C)`` (two passes, see :meth:`_rows_lowmem`)."""
        parts = list(self._iter_tail(h, valid))
        return torch.cat(parts, 0) if parts else h.new_empty(0, self.feature_dim)

    def _iter_tail(self, h: torch.Tensor, valid: torch.Tensor,
                   step: int = _LAST_CHUNK) -> Iterator[torch.Tensor]:
        """:meth:`_rows_tail` as consecutive chunks of ``step`` valid rows (in token order)."""
        conv = self.decoder[12]
        w, bias = conv.weight, conv.bias
        half = h.shape[0]
        colsum = torch.zeros(self.feature_dim, dtype=torch.float64, device=h.device)
        half_step = max(1, _LAST_CHUNK // 2)
        for m0 in range(0, half, half_step):
            m1 = min(m0 + half_step, half)
            lo, hi = max(m0 - 1, 0), min(m1 + 1, half)
            y = conv_transpose1d_k4s2p1_cl(h[None, lo:hi], w, bias)[0]  # rows of [lo, hi)
            y = y[2 * (m0 - lo):2 * (m1 - lo)].tanh_()
            colsum += y.sum(0)  # float32 chunk sums, accumulated in float64
            del y
        a = self._channel_attention((colsum / (2 * half)).to(h.dtype)[None])[0]
        idx = valid.nonzero().squeeze(1)
        hp = F.pad(h, (0, 0, 1, 1))  # hp[m + 1] = h[m], zero rows at both ends
        # y[2m] = b + W1ᵀx[m] + W3ᵀx[m−1]; y[2m+1] = b + W2ᵀx[m] + W0ᵀx[m+1]
        kinds = ((torch.cat([w[:, :, 1], w[:, :, 3]], 0), 0), (torch.cat([w[:, :, 2], w[:, :, 0]], 0), 2))
        for j in range(0, idx.numel(), step):
            t = idx[j:j + step]
            out = h.new_empty(t.numel(), self.feature_dim)
            for parity, (w_cat, shift) in enumerate(kinds):
                sel = (t % 2 == parity).nonzero().squeeze(1)
                if sel.numel() == 0:
                    continue
                mm = t[sel] // 2
                xin = torch.cat([hp[mm + 1], hp[mm + shift]], 1)  # [x[m], x[m∓1]]
                out[sel] = torch.addmm(bias, xin, w_cat).tanh_().mul_(a)
            yield out

    def _token_linear_cols(self, cols: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``projection[0]`` from the columns of the tokens that may be non-zero (the others are
        zero and add nothing): cols ``(C, k)``, idx ``(k,)`` → ``(C, Lr)`` (no autograd)."""
        lin = self.projection[0]
        z = None
        for j in range(0, idx.numel(), _SKIP_CHUNK):
            w = lin.weight.index_select(1, idx[j:j + _SKIP_CHUNK])  # (Lr, k)
            part = torch.matmul(cols[:, j:j + _SKIP_CHUNK], w.t())
            z = part if z is None else z.add_(part)
        if z is None:
            return lin.bias.expand(cols.shape[0], -1).clone()
        return z.add_(lin.bias)

    def _token_linear(self, x: torch.Tensor) -> torch.Tensor:
        """``projection[0]`` along the token axis, skipping all-zero tokens: ``(B, L, C) → (B, C, Lr)``."""
        lin = self.projection[0]
        xt = x.transpose(1, 2)  # (B, C, L); contiguous when x is a token view of (B, C, G, G) maps
        cols = xt.is_contiguous()
        keep = (nonzero_rows(x) if not cols else (xt.amax(1) != 0) | (xt.amin(1) != 0)).any(0)
        n = int(keep.sum())  # a token that is zero in every sample of the batch adds nothing
        if n > _SKIP_BELOW * self.out_seq_len:
            return lin(xt)
        b, c = x.shape[0], x.shape[2]
        if n == 0:
            return lin.bias.expand(b, c, -1)
        idx = keep.nonzero().squeeze(1)
        grad = torch.is_grad_enabled()
        step = n if grad else _SKIP_CHUNK
        z = None
        for j in range(0, n, step):
            ii = idx[j:j + step]
            w = lin.weight.index_select(1, ii)  # (Lr, k)
            if cols:  # (B, C, k) @ (k, Lr)
                part = torch.matmul(xt.index_select(2, ii), w.t())
            else:  # (Lr, k) @ (B, k, C) → (B, Lr, C)
                part = torch.matmul(w, x.index_select(1, ii)).transpose(1, 2)
            z = part if z is None else (z + part if grad else z.add_(part))
        return z + lin.bias
