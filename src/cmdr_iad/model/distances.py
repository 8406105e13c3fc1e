"""The four distance maps and the per-head training losses on the exact fast paths.

Inference (:func:`distance_maps`) and training (:func:`masked_head_loss`) only need the heads'
outputs at valid pixels: the scoring sets every distance map to 0 where there is no 3D point
(``fusion.score`` step 1) and the masked loss ignores those rows. So each head runs its fast path
(`CrossModalMLP.apply_rows`, `Decoder2D.forward_rows`, `Decoder3D.forward_fast`, see
:mod:`cmdr_iad.model.fast`), the valid feature rows are gathered and L2-normalised **once** per
sample and shared by the four maps, and samples go one at a time so that memory per sample stays
flat with the batch size. Results equal the plain path (every head on every pixel, then
``fusion.euclid`` and masking) up to float32 rounding.

Head names are the official ones: ``map2Dto3D`` (F2D → F̂3D, gives ``d_map3d``), ``map3Dto2D``
(F3D → F̂2D, ``d_map2d``), ``Dec2D`` (``d_rec2d``), ``Dec3D`` (``d_rec3d``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserInputError
from .fast import check_valid, chunk_rows
from .fusion import euclid
from .losses import row_losses

__all__ = ["EPS", "normalized_distance", "distance_maps", "plain_distance_maps", "masked_head_loss"]

EPS = 1e-12  # as fusion.euclid


def normalized_distance(a: torch.Tensor, b_unit: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``fusion.euclid(a, b)`` when ``b_unit = F.normalize(b, dim=-1, eps=eps)``: ``(..., C) → (...)``."""
    return (F.normalize(a, dim=-1, eps=eps) - b_unit).pow(2).sum(-1).sqrt()


def _chunked_distance(fn: Callable[[torch.Tensor], torch.Tensor], src: torch.Tensor,
                      target_unit: torch.Tensor, chunk: int) -> torch.Tensor:
    """d[i] = euclid(fn(src[i]), target[i]) over packed rows, ``chunk`` rows at a time: ``(n,)``."""
    out = target_unit.new_empty(src.shape[0])
    for i in range(0, src.shape[0], chunk):
        out[i:i + chunk] = normalized_distance(fn(src[i:i + chunk]), target_unit[i:i + chunk])
    return out


def _tokens(f: torch.Tensor) -> torch.Tensor:
    """One sample ``(C, G, G)`` → token view ``(G·G, C)`` (no copy)."""
    return f.flatten(1).t()


@torch.no_grad()
def distance_maps(heads: Mapping[str, nn.Module], f2d: torch.Tensor | None,
                  f3d: torch.Tensor | None, valid: torch.Tensor | None, *,
                  chunk: int | None = None) -> dict[str, torch.Tensor]:
    """Distance maps ``(B, G, G)`` of the heads present, exact zeros where ``valid`` is False.

    f2d: ``(B, C2, G, G)`` or None; f3d: ``(B, C3, G, G)`` or None; valid: ``(B, G, G)`` bool or
    None (every pixel, e.g. the RGB-only branch). The mapping maps need both features and both
    mapping heads; ``d_rec2d`` needs F2D and ``Dec2D``; ``d_rec3d`` F3D and ``Dec3D``. The heads
    are used as they are (call ``.eval()`` first for inference).
    """
    ref = f2d if f2d is not None else f3d
    if ref is None:
        raise UserInputError("distance_maps needs at least one of f2d and f3d")
    b, g = ref.shape[0], ref.shape[-1]
    for name, f in (("f2d", f2d), ("f3d", f3d)):
        if f is not None and (f.dim() != 4 or f.shape[0] != b or tuple(f.shape[-2:]) != (g, g)):
            raise UserInputError(f"{name} must be (B, C, {g}, {g}) with B = {b}, got {tuple(f.shape)}")
    if valid is None:
        valid = torch.ones(b, g, g, dtype=torch.bool, device=ref.device)
    check_valid(valid, (b, g, g))
    step = chunk_rows(ref.device, chunk)
    want = []
    if f2d is not None and f3d is not None and "map3Dto2D" in heads and "map2Dto3D" in heads:
        want += ["d_map2d", "d_map3d"]
    if f2d is not None and "Dec2D" in heads:
        want.append("d_rec2d")
    if f3d is not None and "Dec3D" in heads:
        want.append("d_rec3d")
    out = {k: ref.new_zeros(b, g * g, dtype=torch.float32) for k in want}
    for i in range(b):
        v = valid[i].reshape(-1)
        if bool(v.any()):
            t2 = None if f2d is None else _tokens(f2d[i].float())
            t3 = None if f3d is None else _tokens(f3d[i].float())
            for k, d in _sample_distances(heads, t2, t3, v, want, step, chunk).items():
                out[k][i, v] = d
    return {k: m.view(b, g, g) for k, m in out.items()}


def _sample_distances(heads: Mapping[str, nn.Module], t2: torch.Tensor | None,
                      t3: torch.Tensor | None, v: torch.Tensor, want: list[str], step: int,
                      chunk: int | None) -> dict[str, torch.Tensor]:
    """Distances ``(n_valid,)`` of one sample; tokens ``(N, C)``, ``v`` ``(N,)`` bool."""
    d: dict[str, torch.Tensor] = {}
    u2 = u3 = None
    if t2 is not None:
        r2 = t2[v]  # (n, C2): valid rows gathered once, normalised once
        u2 = F.normalize(r2, dim=-1, eps=EPS)
    if t3 is not None:
        r3 = t3[v]
        u3 = F.normalize(r3, dim=-1, eps=EPS)
    if "d_map2d" in want:
        d["d_map2d"] = _chunked_distance(heads["map3Dto2D"], r3, u2, step)
        d["d_map3d"] = _chunked_distance(heads["map2Dto3D"], r2, u3, step)
    r2 = r3 = None  # free the raw rows before the decoders
    if "d_rec2d" in want:
        rec = heads["Dec2D"].forward_rows(t2[None], v[None], chunk)  # (n, C2)
        d["d_rec2d"] = _chunked_distance(_identity, rec, u2, step)
        rec = None
    if "d_rec3d" in want:
        rec = heads["Dec3D"].forward_rows(t3[None], v[None])  # (n, C3)
        d["d_rec3d"] = _chunked_distance(_identity, rec, u3, step)
    return d


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@torch.no_grad()
def plain_distance_maps(heads: Mapping[str, nn.Module], f2d: torch.Tensor | None,
                        f3d: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The unoptimised path, as the reference computes it: every head on every pixel (plain
    ``forward``), then ``fusion.euclid``. Same keys and shapes as :func:`distance_maps`, but the
    maps are not masked (the fusion masks them)."""
    ref = f2d if f2d is not None else f3d
    if ref is None:
        raise UserInputError("plain_distance_maps needs at least one of f2d and f3d")
    b, g = ref.shape[0], ref.shape[-1]
    t2 = None if f2d is None else f2d.float().flatten(2).transpose(1, 2)
    t3 = None if f3d is None else f3d.float().flatten(2).transpose(1, 2)
    d: dict[str, torch.Tensor] = {}
    if t2 is not None and t3 is not None and "map3Dto2D" in heads and "map2Dto3D" in heads:
        d["d_map2d"] = euclid(heads["map3Dto2D"](t3), t2).view(b, g, g)
        d["d_map3d"] = euclid(heads["map2Dto3D"](t2), t3).view(b, g, g)
    if t2 is not None and "Dec2D" in heads:
        d["d_rec2d"] = euclid(heads["Dec2D"](t2), t2).view(b, g, g)
    if t3 is not None and "Dec3D" in heads:
        d["d_rec3d"] = euclid(heads["Dec3D"](t3), t3).view(b, g, g)
    return d


def masked_head_loss(head: nn.Module, src: torch.Tensor, dst: torch.Tensor, valid: torch.Tensor,
                     mode: str = "cos") -> torch.Tensor | None:
    """``losses.masked_similarity_loss(head(src), dst, valid)`` computed on the valid rows only.

    src/dst: tokens ``(B, N, C_in)`` / ``(B, N, C_out)``; valid ``(B, N)`` bool. Returns the pooled
    mean loss over the valid rows of the batch, or None when there is none. The head runs its
    valid-rows path (`forward_rows`); its gradients equal those of the every-pixel step up to
    float rounding (the masked rows contribute nothing to the loss). With dropout active the
    dropout masks are drawn for the valid rows only, so a run is not bit-identical to the
    every-pixel path, only equal in distribution.
    """
    check_valid(valid, src.shape[:2])
    if dst.shape[:2] != src.shape[:2]:
        raise UserInputError(f"src and dst token shapes differ: {tuple(src.shape)} vs {tuple(dst.shape)}")
    n = int(valid.sum())
    if n == 0:
        return None
    if hasattr(head, "apply_rows"):  # token-wise MLP: gather the rows first
        pred = head.apply_rows(src[valid])
    else:
        pred = head.forward_rows(src, valid)
    return row_losses(pred, dst[valid], mode).sum() / n
