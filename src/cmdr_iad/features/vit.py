"""DINO ViT-B/8 2D encoder (timm `vit_base_patch8_224.dino`, built by `vit_net` with timm's
parameter names) and its weight loading.

The feature map is the reference's: last block → final LayerNorm → drop the CLS token →
(B, 768, S/8, S/8) in row-major patch order, then bilinear upsampling (align_corners=False)
to the feature grid G. Any batch size; any square input side S that is a multiple of 8 (the
224-trained position embedding is resampled when the weights are loaded).

Accepted weights (all hold the same keys, see `backbones_manifest.json`):
- timm files (`model.safetensors`, `pytorch_model.bin`);
- the original DINO release `dino_vitbase8_pretrain.pth` (a plain backbone state dict);
- DINO training checkpoints (`teacher`/`student` dicts with `module.` / `backbone.` prefixes;
  the DINO projection head is dropped).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserInputError, WeightsError
from ..precision import to_float32
from .weights import materialize_empty

__all__ = [
    "VIT_NAME",
    "PATCH_SIZE",
    "EMBED_DIM",
    "build_vit",
    "create_vit",
    "vit_feature_map",
    "rgb_feature_map",
    "upsample_feature_map",
    "normalize_vit_state_dict",
    "load_vit_state_dict",
    "load_vit_weights",
]

VIT_NAME = "vit_base_patch8_224.dino"
PATCH_SIZE = 8
EMBED_DIM = 768


def build_vit(rgb_size: int = 224, name: str = VIT_NAME, *, init: bool = True) -> nn.Module:
    """The bare network on the current default device (e.g. inside ``torch.device("meta")``):
    `vit_net.VisionTransformer` for :data:`VIT_NAME`, `timm.create_model` otherwise. ``init``:
    run our network's own random init of the embeddings (off on the meta device)."""
    if rgb_size % PATCH_SIZE or rgb_size < PATCH_SIZE:
        raise UserInputError(f"rgb_size must be a positive multiple of {PATCH_SIZE}, got {rgb_size}")
    if name == VIT_NAME:
        from .vit_net import VisionTransformer

        return VisionTransformer(img_size=rgb_size, patch=PATCH_SIZE, dim=EMBED_DIM, init=init)
    import timm

    return timm.create_model(name, pretrained=False, num_classes=0, img_size=rgb_size)


def create_vit(rgb_size: int = 224, name: str = VIT_NAME, *, empty: bool = False) -> nn.Module:
    """The ViT, head removed, in eval mode and frozen: `vit_net.VisionTransformer` for
    :data:`VIT_NAME` (timm's keys and numerics without importing timm), `timm.create_model` for
    any other name.

    `rgb_size` sets the expected input side (timm `img_size`); the position embedding then has
    1 + (rgb_size/8)² entries. `empty=True` skips the random init and leaves the parameters
    uninitialised: only for a model whose weights are loaded (or seeded) next.
    """
    if empty:
        with torch.device("meta"):
            model = build_vit(rgb_size, name, init=False)
        materialize_empty(model)
    else:
        model = build_vit(rgb_size, name)
    model.eval()
    model.requires_grad_(False)
    return model


def _check_rgb(model: nn.Module, rgb: torch.Tensor) -> None:
    if not isinstance(rgb, torch.Tensor) or not rgb.is_floating_point():
        raise UserInputError(f"rgb must be a floating-point tensor (B,3,S,S), got "
                             f"{getattr(rgb, 'dtype', type(rgb).__name__)}")
    if rgb.ndim != 4 or rgb.shape[1] != 3:
        raise UserInputError(f"rgb must have shape (B,3,S,S), got {tuple(rgb.shape)}")
    expected = tuple(model.patch_embed.img_size)
    if tuple(rgb.shape[-2:]) != expected:
        raise UserInputError(f"rgb must be {expected[0]}×{expected[1]} for this ViT "
                             f"(FeatureConfig.rgb_size), got {tuple(rgb.shape[-2:])}")
    if not torch.isfinite(rgb).all():
        raise UserInputError("rgb contains NaN or infinite values")


def vit_feature_map(model: nn.Module, rgb: torch.Tensor) -> torch.Tensor:
    """(B,3,S,S) normalised RGB → (B,768,S/8,S/8) float32 tokens after the final norm, CLS
    dropped (under autocast the blocks run in reduced precision; the output is float32)."""
    _check_rgb(model, rgb)
    rgb = rgb.to(model.cls_token.dtype)
    tokens = to_float32(model.forward_features(rgb))  # patch_embed → +cls, +pos → blocks → norm
    patches = tokens[:, model.num_prefix_tokens:]  # (B, P, C), P = (S/8)² row-major
    b, p, c = patches.shape
    h, w = model.patch_embed.grid_size
    if p != h * w:  # pragma: no cover - guarded by _check_rgb
        raise UserInputError(f"unexpected token count {p} for a {h}×{w} patch grid")
    return patches.transpose(1, 2).reshape(b, c, h, w)


def upsample_feature_map(fmap: torch.Tensor, grid: int) -> torch.Tensor:
    """(B,C,h,w) → (B,C,G,G) bilinear with align_corners=False (the reference's upsampling)."""
    if fmap.shape[-1] == grid and fmap.shape[-2] == grid:
        return fmap
    # contiguous first: the token map is a transposed view, and bilinear upsampling of that
    # channels-last layout is several times slower and returns a channels-last map
    return F.interpolate(fmap.contiguous(), size=(grid, grid), mode="bilinear", align_corners=False)


def rgb_feature_map(model: nn.Module, rgb: torch.Tensor, grid: int) -> torch.Tensor:
    """(B,3,S,S) → (B,768,G,G): the patch features upsampled bilinearly (align_corners=False)."""
    return upsample_feature_map(vit_feature_map(model, rgb), grid)


# --------------------------------------------------------------------------- weights


def normalize_vit_state_dict(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Map any accepted ViT checkpoint layout onto timm's keys (no shape changes).

    - unwrap `teacher` (preferred) / `student` / `state_dict` / `model` containers;
    - strip a leading `module.`;
    - when keys carry `backbone.` (DINO training checkpoints), keep only those, prefix
      stripped; the DINO projection head (`head.*`) is dropped with the others.
    """
    sd: Mapping[str, Any] = obj
    for container in ("teacher", "student", "state_dict", "model"):
        inner = sd.get(container) if isinstance(sd, Mapping) else None
        if isinstance(inner, Mapping):
            sd = inner
            break
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        out[k.removeprefix("module.")] = v
    if any(k.startswith("backbone.") for k in out):
        out = {k.removeprefix("backbone."): v for k, v in out.items() if k.startswith("backbone.")}
    return out


def _resample_pos_embed(pos: torch.Tensor, target_shape: torch.Size, prefix: int) -> torch.Tensor:
    """The patch part of a (1, prefix + n², C) position embedding resampled to the target's
    grid: bicubic with antialiasing, align_corners=False, in float32 (what timm applies when it
    loads 224-trained weights at another size); the prefix (CLS) entries are kept."""
    n_old = pos.shape[1] - prefix
    n_new = target_shape[1] - prefix
    old = int(round(n_old ** 0.5))
    new = int(round(n_new ** 0.5))
    if old * old != n_old or new * new != n_new or pos.shape[2] != target_shape[2]:
        raise WeightsError(f"pos_embed of shape {tuple(pos.shape)} cannot be resampled to "
                           f"{tuple(target_shape)}")
    c = pos.shape[2]
    grid = pos[:, prefix:].float().reshape(1, old, old, c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False, antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new * new, c).to(pos.dtype)
    return torch.cat([pos[:, :prefix], grid], dim=1)


def load_vit_state_dict(model: nn.Module, obj: Mapping[str, Any], *, source: str = "state dict") -> None:
    """Strictly load a (possibly wrapped) checkpoint into `model`.

    Missing or unexpected keys and shape mismatches raise a `WeightsError` that lists them.
    A 224-trained position embedding is resampled (bicubic, as timm does) to the model's size.
    """
    from ..model.heads import load_strict

    sd = normalize_vit_state_dict(obj)
    expected = model.state_dict()
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    pos = sd.get("pos_embed")
    want = expected.get("pos_embed")
    if pos is not None and want is not None and pos.shape != want.shape and pos.ndim == 3:
        sd["pos_embed"] = _resample_pos_embed(pos, want.shape, prefix)
    try:
        load_strict(model, sd, f"{source} does not hold DINO ViT-B/8 weights in timm or "
                               "DINO-release layout")
    except ValueError as e:
        raise WeightsError(str(e)) from e


def load_vit_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Read a timm (.safetensors/.bin) or DINO-release (.pth) file and load it strictly."""
    from .weights import read_state_dict

    load_vit_state_dict(model, read_state_dict(path), source=str(path))
