"""Point-MAE encoder (PointTransformer of the reference), written for inference on grouped points.

State-dict keys are the official ones after the checkpoint prefixes are stripped
(`encoder.first_conv.*`, `encoder.second_conv.*`, `pos_embed.*`, `blocks.blocks.N.*`, `norm.*`;
see `backbones_manifest.json`), so the release `pretrain.pth` loads strictly.

BatchNorm modes of the group encoder (`bn=`):
- "running": standard eval mode, the stored running statistics.
- "sample": statistics of each sample over all its groups × points (biased variance), i.e. what
  the reference computes in train mode at batch size 1, but independent of the batch.
DropPath is never applied, running statistics are never updated and `module.training` has no
effect: the mode is an argument of `forward`. The group encoder runs channel-last in chunks of
groups; "sample" processes one sample at a time and never holds all of its (G, k, 512) pre-BN
activations: they are computed per chunk for the statistics and again to apply them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserInputError

__all__ = ["BN_MODES", "PointMAE"]

BN_MODES = ("sample", "running")
_CHUNK_POINTS = 1 << 12  # group points per encoder chunk (x 512 channels x 4 B = 8 MiB)


class GroupEncoder(nn.Module):
    """Mini-PointNet: `(G, k, 3)` centred neighbourhoods → `(G, C)` tokens."""

    split_second_conv = True
    """Compute the second conv's group term once per group (see `_h2`); False runs the
    reference's concatenation (same values up to float32 summation order)."""

    def __init__(self, encoder_channel: int) -> None:
        super().__init__()
        self.encoder_channel = encoder_channel
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True), nn.Conv1d(128, 256, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
            nn.Conv1d(512, encoder_channel, 1),
        )

    @staticmethod
    def _linear(conv: nn.Conv1d, x: Tensor) -> Tensor:
        """A 1×1 Conv1d applied point-wise to channel-last `(g, k, C_in)` → `(g, k, C_out)`."""
        return F.linear(x, conv.weight.squeeze(-1), conv.bias)

    @staticmethod
    def _bn_relu(x: Tensor, bn: nn.BatchNorm1d, stats: tuple[Tensor, Tensor] | None) -> Tensor:
        """BatchNorm over the last axis with given (mean, var) or the running ones, then ReLU,
        in place on the temporary ``x`` unless autograd records. Same arithmetic as torch's CPU
        kernel: `x·α + β`, α = w/√(var+eps), β = b − mean·α."""
        mean, var = (bn.running_mean, bn.running_var) if stats is None else stats
        alpha = bn.weight * torch.rsqrt(var + bn.eps)
        beta = bn.bias - mean * alpha
        if torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad):
            return torch.addcmul(beta, x, alpha).relu()
        return torch.addcmul(beta, x, alpha, out=x).relu_()

    def _h1(self, groups: Tensor) -> Tensor:
        return self._linear(self.first_conv[0], groups)  # (g, k, 128)

    def _h2(self, groups: Tensor, stats1: tuple[Tensor, Tensor] | None) -> Tensor:
        """Pre-BN activations of the second conv, ``(g, k, 512)``.

        The reference applies Conv1d(512→512) to ``cat([max_k f, f])``; the first half of that
        input is constant over a group's k points, so ``W·[g; f] + b = (W_g·g + b) + W_f·f`` is
        computed with the group term once per group: half the multiply-adds of the largest
        layer of Point-MAE (equal up to float32 summation order).
        """
        f = self._linear(self.first_conv[3], self._bn_relu(self._h1(groups), self.first_conv[1], stats1))
        if not self.split_second_conv:  # the reference's layout (FLOP counting, checks)
            g = f.amax(dim=1, keepdim=True)
            return self._linear(self.second_conv[0], torch.cat([g.expand_as(f), f], dim=2))
        conv = self.second_conv[0]
        w = conv.weight.squeeze(-1)
        half = f.shape[-1]
        per_group = F.linear(f.amax(dim=1, keepdim=True), w[:, :half], conv.bias)  # (g, 1, 512)
        return torch.matmul(f, w[:, half:].t()).add_(per_group)  # (g, k, 512)

    def _tokens(self, h2: Tensor, stats2: tuple[Tensor, Tensor] | None) -> Tensor:
        x = self._linear(self.second_conv[3], self._bn_relu(h2, self.second_conv[1], stats2))
        return x.amax(dim=1)  # (g, C)

    def forward(self, groups: Tensor, bn: str = "running") -> Tensor:
        """groups `(B, G, k, 3)` → tokens `(B, G, C)`, chunked over groups (channel-last)."""
        b, g, k, _ = groups.shape
        step = max(1, _CHUNK_POINTS // k)
        out = groups.new_empty(b, g, self.encoder_channel)
        if bn == "running":
            flat = groups.reshape(b * g, k, 3)
            res = out.view(b * g, -1)
            for i in range(0, b * g, step):
                res[i:i + step] = self._tokens(self._h2(flat[i:i + step], None), None)
            return out
        for s in range(b):  # "sample": statistics of this sample's G·k points, per BN layer
            grp = groups[s]
            chunks = [grp[i:i + step] for i in range(0, g, step)]
            stats1 = chunked_channel_stats(self._h1(c) for c in chunks)
            # the (G, k, 512) pre-BN activations are recomputed per chunk (once for the
            # statistics, once to apply them) instead of being kept (268 MB at 1024×128)
            stats2 = chunked_channel_stats(self._h2(c, stats1) for c in chunks)
            for i, c in zip(range(0, g, step), chunks, strict=True):
                out[s, i:i + step] = self._tokens(self._h2(c, stats1), stats2)
        return out


def chunked_channel_stats(chunks: Iterable[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance over all rows of a stream of `(..., C)` chunks,
    holding one chunk at a time (BatchNorm's training statistics).

    The mean is the float64 total of the float32 chunk sums (as `channel_stats`); the variance
    merges each chunk's sum of squared deviations from its own float32 mean `a` with the exact
    shift identity Σ(x − m)² = Σ(x − a)² + n·(a − m)·((a − m) + 2·(x̄ − a)), in float64, so it
    stays accurate when the mean dwarfs the spread.
    """
    n_tot = 0
    total = None
    parts = []
    for x in chunks:
        x = x.reshape(-1, x.shape[-1])
        n = x.shape[0]
        s = x.sum(dim=0)
        a = s / n  # float32 reference point of this chunk
        dev = x - a
        shift = dev.sum(dim=0).double() / n  # x̄ − a, accurate (small numbers)
        m2 = dev.square_().sum(dim=0)
        del dev
        parts.append((n, shift, a.double(), m2.double()))
        total = s.double() if total is None else total + s.double()
        n_tot += n
    if total is None:
        raise UserInputError("cannot compute statistics of an empty set of points")
    mean = total / n_tot
    var = torch.zeros_like(mean)
    for n, shift, a, m2 in parts:
        d = a - mean
        var += m2 + n * d * (d + 2.0 * shift)
    return mean.to(torch.float32), (var / n_tot).to(torch.float32)


def channel_stats(x: Tensor, rows: int = _CHUNK_POINTS) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of `(M, C)` (BatchNorm's training statistics).

    Exact two-pass algorithm over row chunks (sum → mean, then Σ(x − mean)²), with chunk totals
    accumulated in float64: no cancellation when the mean dwarfs the spread (millimetre-wide
    neighbourhoods), and several times faster on CPU than `torch.var_mean` over dim 0.
    """
    m = x.shape[0]
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for i in range(0, m, rows):
        total += x[i:i + rows].sum(dim=0)
    mean = (total / m).to(x.dtype)
    total.zero_()
    for i in range(0, m, rows):
        total += (x[i:i + rows] - mean).square_().sum(dim=0)
    return mean, (total / m).to(x.dtype)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention; qkv without bias, scale head_dim^-0.5."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block (submodule order as the reference: norm1, norm2, mlp, attn)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.attn = Attention(dim, num_heads)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerEncoder(nn.Module):
    """`depth` blocks; the positional embedding is added before every block."""

    def __init__(self, dim: int, depth: int, num_heads: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(dim, num_heads) for _ in range(depth)])

    def forward(self, x: Tensor, pos: Tensor) -> list[Tensor]:
        outs = []
        for block in self.blocks:
            x = block(x + pos)
            outs.append(x)
        return outs


class PointMAE(nn.Module):
    """Point-MAE encoder → `(B, 3·trans_dim, G)` features of blocks 4, 8, 12 after the final norm.

    num_group / group_size describe the grouping the model is meant for (FPS centres, k-NN size);
    the forward pass itself takes already grouped points. With encoder_dims ≠ trans_dim the
    reference adds a cls token and `reduce_dim` and concatenates blocks 1, 2, 3; this is kept.
    """

    def __init__(self, num_group: int = 1024, group_size: int = 128, trans_dim: int = 384,
                 depth: int = 12, num_heads: int = 6, encoder_dims: int = 384) -> None:
        super().__init__()
        if trans_dim % num_heads:
            raise UserInputError(f"trans_dim {trans_dim} is not divisible by num_heads {num_heads}")
        self.num_group = num_group
        self.group_size = group_size
        self.trans_dim = trans_dim
        self.depth = depth
        self.encoder_dims = encoder_dims
        if encoder_dims != trans_dim:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, trans_dim))
            self.cls_pos = nn.Parameter(torch.zeros(1, 1, trans_dim))
            self.reduce_dim = nn.Linear(encoder_dims, trans_dim)
        self.encoder = GroupEncoder(encoder_dims)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, trans_dim))
        self.blocks = TransformerEncoder(trans_dim, depth, num_heads)
        self.norm = nn.LayerNorm(trans_dim)

    @property
    def out_dim(self) -> int:
        return self.trans_dim * len(self.fetch_blocks())

    def fetch_blocks(self) -> tuple[int, ...]:
        """Indices of the blocks whose outputs are concatenated (reference rule: 4/8/12 of 12;
        other depths as the reference; the last block only for unlisted depths)."""
        if self.encoder_dims != self.trans_dim:
            return (0, 1, 2)
        return {12: (3, 7, 11), 8: (1, 4, 7), 4: (1, 2, 3)}.get(self.depth, (self.depth - 1,))

    def forward(self, neighbourhoods: Tensor, centres: Tensor, bn: str = "running") -> Tensor:
        """neighbourhoods `(B, G, k, 3)` (centred), centres `(B, G, 3)` → features `(B, out_dim, G)`."""
        if bn not in BN_MODES:
            raise UserInputError(f"bn must be one of {BN_MODES}, got {bn!r}")
        if neighbourhoods.dim() != 4 or neighbourhoods.shape[-1] != 3 or centres.dim() != 3 \
                or centres.shape != neighbourhoods.shape[:2] + (3,):
            raise UserInputError("PointMAE expects neighbourhoods (B, G, k, 3) and centres (B, G, 3), "
                                 f"got {tuple(neighbourhoods.shape)} and {tuple(centres.shape)}")
        x = self.encoder(neighbourhoods, bn)
        pos = self.pos_embed(centres)
        if self.encoder_dims != self.trans_dim:
            b = x.shape[0]
            x = torch.cat([self.cls_token.expand(b, -1, -1), self.reduce_dim(x)], dim=1)
            pos = torch.cat([self.cls_pos.expand(b, -1, -1), pos], dim=1)
        outs = self.blocks(x, pos)
        first = 1 if self.encoder_dims != self.trans_dim else 0
        feats = [self.norm(outs[i])[:, first:].transpose(1, 2) for i in self.fetch_blocks()]
        return torch.cat(feats, dim=1)
