"""The four distance maps and the per-head training loss on the exact valid-row paths.

Inference (:func:`sample_distance_maps`) and training (:func:`masked_head_loss`) only need the
heads' outputs at valid pixels: the scoring sets every distance map to 0 where there is no 3D
point (``fusion.score`` step 1) and the masked loss ignores those rows. So each head runs its
valid-row path (:mod:`cmdr_iad.model.rows`), the features are read through token sources
(:mod:`cmdr_iad.model.tokens`) a chunk of valid rows at a time, and samples go one at a time so
that memory per sample stays flat with the batch size. Results equal the reference
(:func:`reference_distance_maps`: every head on every pixel, then ``fusion.euclid``) up to
float32 rounding.

Head names are the official ones: ``map2Dto3D`` (F2D → F̂3D, gives ``d_map3d``), ``map3Dto2D``
(F3D → F̂2D, ``d_map2d``), ``Dec2D`` (``d_rec2d``), ``Dec3D`` (``d_rec3d``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..precision import full_precision, to_float32
from .fast import check_valid, chunk_rows
from .fusion import euclid
from .losses import row_losses
from .rows import head_rows, iter_head_rows
from .tokens import TokenRows

__all__ = ["EPS", "DISTANCE_KEYS", "normalized_distance", "wanted_distances", "sample_distance_maps",
           "reference_distance_maps", "masked_head_loss"]

EPS = 1e-12  # as fusion.euclid
DISTANCE_KEYS = ("d_map2d", "d_map3d", "d_rec2d", "d_rec3d")


@full_precision
def normalized_distance(a: torch.Tensor, b_unit: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``fusion.euclid(a, b)`` when ``b_unit = F.normalize(b, dim=-1, eps=eps)``: ``(..., C) → (...)``,
    in float32 (a head output from an autocast region is cast first)."""
    return (F.normalize(to_float32(a), dim=-1, eps=eps) - b_unit).pow(2).sum(-1).sqrt()


def wanted_distances(heads: Mapping[str, nn.Module], has2: bool, has3: bool) -> list[str]:
    """The distance maps the present heads can give from the features present."""
    want = []
    if has2 and has3 and "map3Dto2D" in heads and "map2Dto3D" in heads:
        want += ["d_map2d", "d_map3d"]
    if has2 and "Dec2D" in heads:
        want.append("d_rec2d")
    if has3 and "Dec3D" in heads:
        want.append("d_rec3d")
    return want


@torch.no_grad()
def sample_distance_maps(heads: Mapping[str, nn.Module], s2: TokenRows | None,
                         s3: TokenRows | None, valid: torch.Tensor, *,
                         chunk: int | None = None,
                         between: Callable[[], object] | None = None) -> dict[str, torch.Tensor]:
    """Distance maps ``(G, G)`` of one sample from its token sources (exact zeros off ``valid``).

    s2 / s3: F2D / F3D tokens (:mod:`cmdr_iad.model.tokens`: dense, upsampled on demand or
    packed) or None; valid ``(G, G)`` bool. The valid rows are read in chunks of
    :func:`~cmdr_iad.model.fast.chunk_rows` rows and normalised per chunk, so no ``(n_valid, C)``
    copy of the features is held; the mapping pair shares each chunk's rows. ``between`` (e.g.
    a heap trim on CPU) is called after each head's phase, so that the phases' working memory
    does not pile up in the allocator. The heads must be in eval mode.
    """
    between = between or _nothing
    ref = s2 if s2 is not None else s3
    if ref is None:
        raise ValueError("sample_distance_maps needs at least one of s2 and s3")
    g = valid.shape[-1]
    check_valid(valid, (g, g))
    if s2 is not None and s3 is not None and s2.n != s3.n:
        raise ValueError(f"F2D and F3D token counts differ: {s2.n} vs {s3.n}")
    if ref.n != g * g:
        raise ValueError(f"the features have {ref.n} tokens, the valid mask {g}×{g}")
    step = chunk_rows(valid.device, chunk)
    want = wanted_distances(heads, s2 is not None, s3 is not None)
    v = valid.reshape(-1)
    idx = v.nonzero().squeeze(1)
    flat = {k: torch.zeros(g * g, dtype=torch.float32, device=valid.device) for k in want}
    if idx.numel() == 0:
        return {k: m.view(g, g) for k, m in flat.items()}
    if "d_map2d" in want:
        m32, m23 = heads["map3Dto2D"], heads["map2Dto3D"]
        d2, d3 = flat["d_map2d"], flat["d_map3d"]
        for i in range(0, idx.numel(), step):
            ii = idx[i:i + step]
            a2, a3 = s2.rows(ii), s3.rows(ii)
            d2[ii] = normalized_distance(m32._mlp(a3), F.normalize(a2, dim=-1, eps=EPS))
            d3[ii] = normalized_distance(m23._mlp(a2), F.normalize(a3, dim=-1, eps=EPS))
        del a2, a3
        between()
    if "d_rec2d" in want:
        _rows_distance(flat["d_rec2d"], iter_head_rows(heads["Dec2D"], s2, v, chunk), s2, idx)
        between()
    if "d_rec3d" in want:
        _rows_distance(flat["d_rec3d"], iter_head_rows(heads["Dec3D"], s3, v, chunk), s3, idx)
    return {k: m.view(g, g) for k, m in flat.items()}


def _nothing() -> None:
    return None


def _rows_distance(out: torch.Tensor, preds: Iterable[torch.Tensor], src: TokenRows,
                   idx: torch.Tensor) -> None:
    """out[idx] = euclid(pred, src.rows(idx)) for the consecutive chunks of predicted rows."""
    i = 0
    for pred in preds:
        ii = idx[i:i + pred.shape[0]]
        out[ii] = normalized_distance(pred, F.normalize(src.rows(ii), dim=-1, eps=EPS))
        i += pred.shape[0]
    if i != idx.numel():
        raise RuntimeError(f"a decoder returned {i} rows for {idx.numel()} valid tokens")


@torch.no_grad()
def reference_distance_maps(heads: Mapping[str, nn.Module], f2d: torch.Tensor | None,
                            f3d: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The reference computation: every head on every pixel (plain ``forward``) of dense maps
    ``(B, C, G, G)``, then ``fusion.euclid``. Same keys and shapes as
    :func:`sample_distance_maps` (batched), but the maps are not masked (the fusion masks them)."""
    ref = f2d if f2d is not None else f3d
    if ref is None:
        raise ValueError("reference_distance_maps needs at least one of f2d and f3d")
    b, g = ref.shape[0], ref.shape[-1]
    t2 = None if f2d is None else f2d.float().flatten(2).transpose(1, 2)
    t3 = None if f3d is None else f3d.float().flatten(2).transpose(1, 2)
    d: dict[str, torch.Tensor] = {}

    def dist(name: str, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        pred = to_float32(heads[name](src))  # a head under autocast: its output back in fp32
        with torch.autocast(src.device.type, enabled=False):
            return euclid(pred, dst).view(b, g, g)

    if t2 is not None and t3 is not None and "map3Dto2D" in heads and "map2Dto3D" in heads:
        d["d_map2d"] = dist("map3Dto2D", t3, t2)
        d["d_map3d"] = dist("map2Dto3D", t2, t3)
    if t2 is not None and "Dec2D" in heads:
        d["d_rec2d"] = dist("Dec2D", t2, t2)
    if t3 is not None and "Dec3D" in heads:
        d["d_rec3d"] = dist("Dec3D", t3, t3)
    return d


def masked_head_loss(head: nn.Module, src: torch.Tensor, dst: torch.Tensor, valid: torch.Tensor,
                     mode: str = "cos") -> torch.Tensor | None:
    """``losses.masked_similarity_loss(head(src), dst, valid)`` computed on the valid rows only.

    src/dst: tokens ``(B, N, C_in)`` / ``(B, N, C_out)``; valid ``(B, N)`` bool. Returns the pooled
    mean loss over the valid rows of the batch, or None when there is none. The head runs its
    valid-rows path (:func:`~cmdr_iad.model.rows.head_rows`); its gradients equal those of the
    every-pixel step up to float rounding (the masked rows contribute nothing to the loss). With
    dropout active the dropout masks are drawn for the valid rows only, so a run is not
    bit-identical to the every-pixel path, only equal in distribution.
    """
    check_valid(valid, src.shape[:2])
    if dst.shape[:2] != src.shape[:2]:
        raise ValueError(f"src and dst token shapes differ: {tuple(src.shape)} vs {tuple(dst.shape)}")
    n = int(valid.sum())
    if n == 0:
        return None
    return row_losses(head_rows(head, src, valid), dst[valid], mode).sum() / n
