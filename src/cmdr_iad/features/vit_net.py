"""The DINO ViT-B/8 network (pure module, no IO), with timm's parameter names and order.

The same computation as timm's ``VisionTransformer`` for ``vit_base_patch8_224.dino`` with
``num_classes=0`` in eval mode: 8×8 patch embedding → CLS token + absolute position embedding →
12 pre-norm blocks (LayerNorm ε = 1e-6, fused scaled-dot-product attention, exact-GELU MLP) →
final LayerNorm. The state dict has timm's keys in timm's order, so timm files, the DINO release
and the seeded random init (`weights.seeded_init_`) load unchanged.

Why not timm itself at inference: importing timm imports torchvision (its normalisation layers),
and torchvision's ops import ``torch._dynamo`` and sympy: ~195 MB of resident memory and ~2 s
of import for a network of four layer types. timm remains the reference in the tests
(tests/features/test_vit.py checks this module against it output for output) and builds any
other ``vit_name``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .point_mae import Mlp  # fc1 → GELU → fc2: the same transformer MLP as Point-MAE's

__all__ = ["VisionTransformer"]


class PatchEmbed(nn.Module):
    """(B, 3, S, S) → (B, (S/p)², C): a p×p stride-p convolution, flattened row-major."""

    def __init__(self, img_size: int, patch: int, dim: int) -> None:
        super().__init__()
        self.img_size = (img_size, img_size)
        self.grid_size = (img_size // patch, img_size // patch)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention: (B, N, C) → (B, N, C)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(
            2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, D)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT with a CLS token; ``forward_features``: (B, 3, S, S) → (B, 1 + (S/p)², C) after the
    final LayerNorm (what the feature map reads). Defaults: ViT-B/8 (DINO)."""

    num_prefix_tokens = 1

    def __init__(self, img_size: int = 224, patch: int = 8, dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, init: bool = True) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, dim))
        self.pos_drop = nn.Identity()  # timm's (eval) position dropout: a hook point, as in timm
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        if init:  # off for a network built on the meta device (weights loaded next)
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.normal_(self.cls_token, std=1e-6)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(self.pos_drop(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The CLS token after the final norm (timm's ``num_classes=0`` output): (B, C)."""
        return self.forward_features(x)[:, 0]
