"""Masked similarity loss L_sim = 1 − cos(F, F̂) over valid pixels (paper §3.4).

Convention: ``valid`` is a ``(B, N)`` bool tensor, **True = the token takes part in the loss**.
The reference ``masked_similarity_loss(a, b, mask)`` takes the complement (``mask`` True =
excluded, in training ``xyz_patch.sum(-1) == 0``), so ``valid = ~mask`` (see :func:`valid_tokens`).

Difference from the reference, on purpose: when no row is valid the reference returns a constant
0.0 without gradient and ``backward()`` then raises, crashing training. Here
:func:`masked_similarity_loss` returns ``None`` instead, which the training loop tests for and
skips (counting the step); :func:`per_sample_similarity_loss` gives per-sample losses plus a
``has_valid`` flag so a batch can drop just its empty samples and report how many there were.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "LOSS_MODES",
    "valid_tokens",
    "row_losses",
    "masked_similarity_loss",
    "per_sample_similarity_loss",
]

LOSS_MODES = ("cos", "l2")


def valid_tokens(x3d: torch.Tensor) -> torch.Tensor:
    """Reference validity rule: a token is valid unless its 3D feature sums to exactly 0.

    ``x3d``: ``(B, N, C)`` → ``(B, N)`` bool (the complement of the reference ``xyz_mask``).
    """
    return x3d.sum(dim=-1) != 0


def _check(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, mode: str) -> None:
    if mode not in LOSS_MODES:
        raise ValueError(f"loss mode must be one of {LOSS_MODES}, got {mode!r}")
    if pred.dim() != 3 or pred.shape != target.shape:
        raise ValueError(
            f"loss expects prediction and target of the same (B, N, C) shape, got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if valid.dtype != torch.bool or valid.shape != pred.shape[:2]:
        raise ValueError(
            f"loss expects a bool valid mask of shape {tuple(pred.shape[:2])}, got "
            f"{tuple(valid.shape)} ({valid.dtype})"
        )


def row_losses(pred: torch.Tensor, target: torch.Tensor, mode: str = "cos",
               eps: float = 1e-6) -> torch.Tensor:
    """Per-token loss ``(B, N, C) → (B, N)``.

    "cos": 1 − ⟨p̂, t̂⟩ with v̂ = v / max(‖v‖₂, eps) (an all-zero row gives 1; a row with norm
    below eps is not scaled to unit length). "l2": ‖p − t‖₂ without normalisation.
    """
    if mode == "cos":
        sim = (F.normalize(pred, dim=-1, eps=eps) * F.normalize(target, dim=-1, eps=eps)).sum(-1)
        return 1.0 - sim
    if mode == "l2":
        return (pred - target).pow(2).sum(-1).sqrt()
    raise ValueError(f"loss mode must be one of {LOSS_MODES}, got {mode!r}")


def masked_similarity_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                           mode: str = "cos", eps: float = 1e-6) -> torch.Tensor | None:
    """Mean loss over all valid rows of the batch (pooled, as the reference), or ``None``.

    ``pred``, ``target``: ``(B, N, C)``; ``valid``: ``(B, N)`` bool, True = include.
    Returns a 0-d tensor (1 − mean cosine similarity for "cos", mean ‖p − t‖₂ for "l2") or
    ``None`` when no row is valid (the caller skips the optimiser step).
    """
    _check(pred, target, valid, mode)
    n = valid.sum()
    if int(n) == 0:
        return None
    per_row = row_losses(pred, target, mode, eps)
    # torch.where (not a product) so that non-finite values in excluded rows cannot leak in
    return torch.where(valid, per_row, torch.zeros_like(per_row)).sum() / n


def per_sample_similarity_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                               mode: str = "cos", eps: float = 1e-6
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean loss over that sample's valid rows.

    Returns ``(loss (B,), has_valid (B,) bool)``. A sample without a valid row has loss 0 and
    contributes no gradient; e.g. ``loss[has_valid].mean()`` trains on the others and
    ``int((~has_valid).sum())`` is the number of skipped samples.
    """
    _check(pred, target, valid, mode)
    per_row = row_losses(pred, target, mode, eps)
    count = valid.sum(dim=1)
    total = torch.where(valid, per_row, torch.zeros_like(per_row)).sum(dim=1)
    return total / count.clamp_min(1).to(total.dtype), count > 0
