"""Evaluation metrics: I-AUROC, P-AUROC, PRO curve and AUPRO (paper and exact protocols).

``au_pro(maps, masks)`` reproduces the paper code's 99-threshold AUPRO;
``au_pro(maps, masks, num_thresholds=None)`` is the official MVTec 3D-AD all-threshold AUPRO.
Maps and masks are ``(N, H, W)`` arrays/tensors or lists of ``(H, W)`` maps; every problem
(empty set, shape mismatch, NaN/inf, one class only) raises :class:`~cmdr_iad.errors.EvaluationError`.
"""

from __future__ import annotations

from .auroc import binary_auroc, image_auroc, pixel_auroc
from .pro import DEFAULT_LIMITS, ProCurve, area_under_curve, au_pro, pro_curve

__all__ = [
    "DEFAULT_LIMITS",
    "ProCurve",
    "area_under_curve",
    "au_pro",
    "binary_auroc",
    "image_auroc",
    "pixel_auroc",
    "pro_curve",
]
