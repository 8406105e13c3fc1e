"""Exact valid-row evaluation of the four heads (pure tensor code, no IO).

The heads' outputs are only used at valid pixels: the masked training loss ignores the other
rows and the scoring sets every distance map to 0 there. So training and inference evaluate the
heads through two entry points, with the architecture's arithmetic (float32 rounding aside):

- :func:`head_rows` — packed outputs ``(n_valid, C_out)`` of a token batch ``(B, N, C)``; with
  autograd (training) or in eval mode. The training step uses it.
- :func:`iter_head_rows` — eval-mode outputs of ONE sample read from a token source
  (:mod:`cmdr_iad.model.tokens`), as consecutive chunks of valid rows, so that no
  ``(n_valid, C)`` output is held. Inference uses it.

What is skipped, per head:

- ``CrossModalMLP`` and Decoder2D's ``reconstruct`` are token-wise: valid rows only, in chunks
  without autograd (:func:`~cmdr_iad.model.fast.apply_rows`).
- Decoder2D (eval): projection + windowed attention only for the windows touching the valid
  pixels' bounding box grown by 3 pixels (the reach of three 3×3 convolutions), the convolutions
  (BatchNorm folded in, NHWC) only on that box, in bands of `BAND_ROWS` output rows. In training BatchNorm uses batch statistics over
  every pixel, so the trunk runs densely.
- Decoder3D: its token-axis Linear skips tokens that are exactly zero (missing 3D points), the
  transposed 1D convolutions run as matmuls in channels-last layout (BatchNorm folded in eval);
  in eval the last layer is computed twice in chunks — once for the channel-attention means over
  every row, once at the valid rows — instead of holding the ``(L, C)`` output.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .decoders import Decoder2D, Decoder3D
from .fast import (
    apply_rows,
    check_valid,
    chunk_rows,
    conv_transpose1d_k4s2p1_cl,
    conv_transpose2d_as_conv2d,
    fold_batchnorm,
    nonzero_rows,
)
from .mapping import CrossModalMLP
from .tokens import DenseRows, TokenRows

__all__ = ["head_rows", "iter_head_rows", "decoder3d_fast_forward"]

SKIP_BELOW = 0.9
"""Decoder3D's token-axis Linear skips zero tokens when fewer than 90 % of them are non-zero."""
SKIP_CHUNK = 2048
"""Tokens per matmul of the skipping Linear without autograd (≤ 13 MB of weights)."""
LAST_CHUNK = 2048
"""Output rows per matmul of Decoder3D's last layer in eval mode (≤ 10 MB)."""
BAND_ROWS = 64
"""Output rows per band of Decoder2D's convolutions in eval mode: ~3 % more convolution work (the
halo rows) for a working set of two (70 × W × r) maps instead of two box-sized ones (~80 MB each
on a 95 %-valid paper-size sample)."""


# --------------------------------------------------------------------------- entry points


def head_rows(head: nn.Module, x: torch.Tensor, valid: torch.Tensor,
              chunk: int | None = None) -> torch.Tensor:
    """Packed outputs of ``head`` at the valid tokens: ``(B, N, C)``, ``(B, N)`` bool →
    ``(n_valid, C_out)`` in the order of ``x[valid]``. Works with autograd (training)."""
    check_valid(valid, x.shape[:2])
    if isinstance(head, CrossModalMLP):
        head._check(x)
        return apply_rows(head._mlp, x[valid], head.out_features, chunk)
    if isinstance(head, Decoder2D):
        _check_source(head.num_tokens, head.dim, x.shape[1], x.shape[2], "Decoder2D")
        if head.training or torch.is_grad_enabled():
            return head.reconstruct(head._decode(x)[valid])
    elif isinstance(head, Decoder3D):
        _check_source(head.out_seq_len, head.feature_dim, x.shape[1], x.shape[2], "Decoder3D")
        _check_32(head)
        if head.training or torch.is_grad_enabled():
            return decoder3d_fast_forward(head, x)[valid]
    else:
        raise TypeError(f"head_rows: unknown head type {type(head).__name__}")
    parts = [p for i in range(x.shape[0])
             for p in iter_head_rows(head, DenseRows(x[i].t()), valid[i], chunk)]
    return torch.cat(parts, 0) if parts else x.new_empty(0, x.shape[2])


@torch.no_grad()
def iter_head_rows(head: nn.Module, src: TokenRows, valid: torch.Tensor,
                   chunk: int | None = None) -> Iterator[torch.Tensor]:
    """Eval-mode outputs of one sample at its valid tokens, as consecutive chunks of at most
    ``chunk`` rows (CPU default `fast.CHUNK_ROWS`), in token order. src: the sample's input tokens; valid
    ``(N,)`` bool."""
    if head.training:
        raise ValueError(f"{type(head).__name__}: iter_head_rows is the eval-mode path; call .eval() first")
    check_valid(valid, (src.n,))
    step = chunk_rows(valid.device, chunk)
    if isinstance(head, CrossModalMLP):
        if src.dim != head.in_features:
            raise ValueError(f"CrossModalMLP: the source has {src.dim} channels, expected {head.in_features}")
        idx = valid.nonzero().squeeze(1)
        for i in range(0, idx.numel(), step):
            yield head._mlp(src.rows(idx[i:i + step]))
    elif isinstance(head, Decoder2D):
        _check_source(head.num_tokens, head.dim, src.n, src.dim, "Decoder2D")
        yield from _decoder2d_rows(head, src, valid, step)
    elif isinstance(head, Decoder3D):
        _check_source(head.out_seq_len, head.feature_dim, src.n, src.dim, "Decoder3D")
        _check_32(head)
        cols, idx = src.columns()
        h = _trunk_from(head, _token_linear_cols(head, cols, idx)[None])[0]
        yield from _decoder3d_tail(head, h, valid, step)
    else:
        raise TypeError(f"iter_head_rows: unknown head type {type(head).__name__}")


def _check_source(n_want: int, c_want: int, n: int, c: int, who: str) -> None:
    if n != n_want or c != c_want:
        raise ValueError(f"{who}: the input has {n} tokens of {c} channels, expected {n_want} of {c_want}")


def _check_32(dec: Decoder3D) -> None:
    if dec.output_len != dec.out_seq_len:
        raise ValueError(f"Decoder3D: valid rows need 32 | L (L = {dec.out_seq_len} gives "
                         f"{dec.output_len} output tokens)")


# --------------------------------------------------------------------------- Decoder2D


def _conv_layers(dec: Decoder2D) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of the three convolutions as ordinary conv2d, eval BatchNorm folded in."""
    cd = dec.conv_decoder
    return [fold_batchnorm(conv_transpose2d_as_conv2d(cd[i].weight), cd[i].bias, cd[i + 1], 0)
            for i in (0, 3, 6)]


def _decoder2d_rows(dec: Decoder2D, src: TokenRows, valid: torch.Tensor, step: int
                    ) -> Iterator[torch.Tensor]:
    """Decoder2D at the valid tokens of one sample, eval mode (see the module docstring)."""
    s, r, ws = dec.img_size, dec.reduced_dim, dec.attn.attn.window_size
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
    win_step = max(1, step // ws)
    k = 0
    while k < len(wins):  # runs of consecutive windows, at most `win_step` windows per call
        e = k
        while e + 1 < len(wins) and wins[e + 1] == wins[e] + 1 and e + 1 - k < win_step:
            e += 1
        t0, t1 = wins[k] * ws, min((wins[e] + 1) * ws, n)
        out = dec.attn(dec.projection(src.span(t0, t1)[None]))[0]  # (t1 - t0, r)
        for y in range(max(t0 // s, i0), min((t1 - 1) // s, i1) + 1):  # box rows in the run
            a, b = max(t0, y * s + j0), min(t1, y * s + j1 + 1)
            if a < b:
                x0 = a - y * s - j0 + pad[1]
                box[y - i0 + pad[0], x0:x0 + b - a] = out[a - t0:b - t0]
        del out
        k = e + 1

    layers = [(w.contiguous(memory_format=torch.channels_last), b) for w, b in _conv_layers(dec)]
    # the convolutions in bands of output rows (each band reads its rows of the box plus the
    # 3-row halo): the working set is two band-sized maps instead of two box-sized ones
    for y0 in range(r0, r1 + 1, BAND_ROWS):
        y1 = min(y0 + BAND_ROWS, r1 + 1)  # output rows [y0, y1) = box rows [y0-R0-3, y1-R0+3)
        g = box[y0 - r0:y1 - r0 + 2 * halo].permute(2, 0, 1)[None]  # (1, r, h, W) channels-last
        for depth, (w, b) in enumerate(layers, start=1):
            g = torch.ops.aten.gelu_(F.conv2d(g, w, b))
            top = max(0, -(y0 - halo + depth))  # rows above the image: the next layer sees zeros
            bottom = max(0, (y1 - 1 + halo - depth) - (s - 1))
            left, right = max(0, -(C0 + depth)), max(0, C1 - depth - (s - 1))
            if top or left or bottom or right:
                g[..., :top, :] = 0
                g[..., g.shape[-2] - bottom:, :] = 0
                g[..., :, :left] = 0
                g[..., :, g.shape[-1] - right:] = 0
        rows = g[0].permute(1, 2, 0)[m[y0:y1, c0:c1 + 1]]  # (n_valid of the band, r), row-major
        del g
        for i in range(0, rows.shape[0], step):
            yield dec.reconstruct(rows[i:i + step])
        del rows


# --------------------------------------------------------------------------- Decoder3D


def decoder3d_fast_forward(dec: Decoder3D, x: torch.Tensor) -> torch.Tensor:
    """``dec(x)`` computed faster, channels-last: ``(B, L, C) → (B, 32·Lr, C)``, contiguous.

    The token-axis Linear skips the tokens whose features are exactly zero, the transposed
    convolutions run as matmuls (eval BatchNorm folded in); without autograd samples go one at a
    time. Works in training mode (batch statistics) and with autograd.
    """
    _check_source(dec.out_seq_len, dec.feature_dim, x.shape[1], x.shape[2], "Decoder3D")
    if not dec.training and not torch.is_grad_enabled() and x.shape[0] > 1:
        return torch.cat([decoder3d_fast_forward(dec, x[i:i + 1]) for i in range(x.shape[0])], 0)
    h = _trunk_from(dec, _token_linear(dec, x))  # (B, L/2, 128)
    last = dec.decoder[12]
    h = conv_transpose1d_k4s2p1_cl(h, last.weight, last.bias)
    h = torch.tanh(h) if torch.is_grad_enabled() else h.tanh_()
    a = _channel_attention(dec, h.mean(1))  # AdaptiveAvgPool1d(1)
    if torch.is_grad_enabled():
        return h * a[:, None, :]
    return h.mul_(a[:, None, :])


def _trunk_from(dec: Decoder3D, z: torch.Tensor) -> torch.Tensor:
    """The trunk after the token-axis Linear: ``(B, C, Lr) → (B, 16·Lr, 128)``."""
    z = dec.projection[1:](z)  # (B, C, Lr)
    h = z.transpose(1, 2)  # (B, Lr, C)
    d = dec.decoder
    for i in (0, 3, 6, 9):
        conv = d[i]
        if dec.training:
            h = conv_transpose1d_k4s2p1_cl(h, conv.weight, conv.bias)
            h = d[i + 1](h.transpose(1, 2)).transpose(1, 2)  # BatchNorm (batch statistics)
        else:
            w, b = fold_batchnorm(conv.weight, conv.bias, d[i + 1], 1)
            h = conv_transpose1d_k4s2p1_cl(h, w, b)
        h = F.gelu(h)
    return h


def _channel_attention(dec: Decoder3D, s: torch.Tensor) -> torch.Tensor:
    """Squeeze-excitation weights ``(B, C) → (B, C)`` from the per-channel means ``s``."""
    att = dec.attention
    return torch.sigmoid(F.linear(torch.relu(F.linear(s, att[1].weight[..., 0], att[1].bias)),
                                  att[3].weight[..., 0], att[3].bias))


def _decoder3d_tail(dec: Decoder3D, h: torch.Tensor, valid: torch.Tensor,
                    step: int) -> Iterator[torch.Tensor]:
    """The last layer and the channel attention at the valid rows, from the trunk ``(L/2, 128)``:
    pass 1 computes the last transposed convolution in chunks and keeps only the column sums (the
    attention averages over every row); pass 2 recomputes it at the valid rows only."""
    conv = dec.decoder[12]
    w, bias = conv.weight, conv.bias
    half = h.shape[0]
    colsum = torch.zeros(dec.feature_dim, dtype=torch.float64, device=h.device)
    half_step = max(1, LAST_CHUNK // 2)
    for m0 in range(0, half, half_step):
        m1 = min(m0 + half_step, half)
        lo, hi = max(m0 - 1, 0), min(m1 + 1, half)
        y = conv_transpose1d_k4s2p1_cl(h[None, lo:hi], w, bias)[0]  # rows of [lo, hi)
        y = y[2 * (m0 - lo):2 * (m1 - lo)].tanh_()
        colsum += y.sum(0)  # float32 chunk sums, accumulated in float64
        del y
    a = _channel_attention(dec, (colsum / (2 * half)).to(h.dtype)[None])[0]
    idx = valid.nonzero().squeeze(1)
    hp = F.pad(h, (0, 0, 1, 1))  # hp[m + 1] = h[m], zero rows at both ends
    # y[2m] = b + W1ᵀx[m] + W3ᵀx[m−1]; y[2m+1] = b + W2ᵀx[m] + W0ᵀx[m+1]
    kinds = ((torch.cat([w[:, :, 1], w[:, :, 3]], 0), 0), (torch.cat([w[:, :, 2], w[:, :, 0]], 0), 2))
    for j in range(0, idx.numel(), step):
        t = idx[j:j + step]
        out = h.new_empty(t.numel(), dec.feature_dim)
        for parity, (w_cat, shift) in enumerate(kinds):
            sel = (t % 2 == parity).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            mm = t[sel] // 2
            xin = torch.cat([hp[mm + 1], hp[mm + shift]], 1)  # [x[m], x[m∓1]]
            out[sel] = torch.addmm(bias, xin, w_cat).tanh_().mul_(a)
        yield out


def _token_linear_cols(dec: Decoder3D, cols: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``projection[0]`` from the columns of the tokens that may be non-zero (the others are zero
    and add nothing): cols ``(C, k)``, idx ``(k,)`` → ``(C, Lr)`` (no autograd)."""
    lin = dec.projection[0]
    z = None
    for j in range(0, idx.numel(), SKIP_CHUNK):
        w = lin.weight.index_select(1, idx[j:j + SKIP_CHUNK])  # (Lr, k)
        part = torch.matmul(cols[:, j:j + SKIP_CHUNK], w.t())
        z = part if z is None else z.add_(part)
    if z is None:
        return lin.bias.expand(cols.shape[0], -1).clone()
    return z.add_(lin.bias)


def _token_linear(dec: Decoder3D, x: torch.Tensor) -> torch.Tensor:
    """``projection[0]`` along the token axis, skipping all-zero tokens: ``(B, L, C) → (B, C, Lr)``."""
    lin = dec.projection[0]
    xt = x.transpose(1, 2)  # (B, C, L); contiguous when x is a token view of (B, C, G, G) maps
    cols = xt.is_contiguous()
    keep = (nonzero_rows(x) if not cols else (xt.amax(1) != 0) | (xt.amin(1) != 0)).any(0)
    n = int(keep.sum())  # a token that is zero in every sample of the batch adds nothing
    if n > SKIP_BELOW * dec.out_seq_len:
        return lin(xt)
    b, c = x.shape[0], x.shape[2]
    if n == 0:
        return lin.bias.expand(b, c, -1)
    idx = keep.nonzero().squeeze(1)
    grad = torch.is_grad_enabled()
    step = n if grad else SKIP_CHUNK
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
