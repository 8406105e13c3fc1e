"""Anomaly scoring and reliability-aware fusion (paper §3.5, ablations §5.5).

One function per equation, named after it; every map is ``(B, H, W)`` (float32, any device) and
every function is batched over B. The reference (``inference.py``) runs at batch 1; here each
global statistic (the gate's means, the normalisers) is taken **per sample**, so a batch gives the
same numbers as running its samples one by one.

Pipeline of :func:`score` (the reference order, generalised to every variant):

1. mask: every input map is set to 0 where ``valid`` is False (missing 3D point);
2. ``d_rec2d`` is pre-smoothed (3 × box 5×5, then 2 × box 7×7); the other maps are not;
3. Ψ = the variant's fusion equation; Ψ is set to 0 where ``valid`` is False;
4. Ψ is smoothed (5 × box 5×5, then 3 × box 7×7) → the anomaly map;
5. image score = max(Ψ / sqrt(mean of the non-zero Ψ)).

Every variant goes through the same steps 1–5, so variants differ only in their equation (step 3);
this also holds for the single-modality variants (RGB only: Ψ = pre-smoothed d_rec2d; 3D only:
Ψ = d_rec3d). Other chains can be given to :func:`score` (e.g. the raw-scan 3D-only mode uses a
single 5×5 pass).

The chains are the reference's, in pixels of its 224×224 grid. On a smaller grid the same chains
blur a larger part of the image (σ ≈ 6 px: 3 % of a 224 grid, 19 % of a 32 grid), so
:func:`grid_chain` rescales a chain to keep its blur the same fraction of the image; at G = 224
it returns the chain unchanged.

The reference's three normalisations of the final map are :func:`aupro_map` (÷ mean of non-zero
pixels; fed to AUPRO), :func:`image_score` (max of ÷ sqrt(mean of non-zero pixels); I-AUROC) and
:func:`pixel_scores` (÷ sqrt(mean of all pixels); P-AUROC). The paper writes
S = max Ψ / sqrt(mean_valid Ψ + ε); we follow the code (mean over exactly non-zero pixels, no ε).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "VARIANTS",
    "MAP_NAMES",
    "TEMPERATURE",
    "REC2D_CHAIN",
    "FUSED_CHAIN",
    "required_maps",
    "euclid",
    "box_filter",
    "smooth_with_box_filters",
    "smooth_chain",
    "chain_variance",
    "grid_chain",
    "REFERENCE_GRID",
    "joint_mapping_discrepancy",
    "reliability_gate",
    "reliability_gated_mapping_anomaly",
    "confidence_weights",
    "confidence_weighted_reconstruction_anomaly",
    "soft_adaptive_discrepancy",
    "fuse_full",
    "fuse_case_1",
    "fuse_case_2",
    "fuse_case_3",
    "fuse_case_4",
    "fuse_case_5",
    "fuse_case_6",
    "fuse_reconstruction_only",
    "fuse_mapping_only",
    "score_rgb_only",
    "score_xyz_only",
    "mean_nonzero",
    "mean_all",
    "aupro_map",
    "image_score",
    "pixel_scores",
    "ScoreStages",
    "score_stages",
    "score",
]

TEMPERATURE = 0.3  # B of the confidence weights (paper: 0.3 in all experiments)
REC2D_CHAIN: tuple[tuple[int, int], ...] = ((5, 3), (7, 2))  # (kernel, passes) for d_rec2d
FUSED_CHAIN: tuple[tuple[int, int], ...] = ((5, 5), (7, 3))  # (kernel, passes) for Ψ
GATE_KERNEL = 7
MAP_NAMES = ("d_map2d", "d_map3d", "d_rec2d", "d_rec3d")

Tensor = torch.Tensor


# --------------------------------------------------------------------------- distances, filters
def euclid(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """d(a, b) = ‖a/‖a‖ − b/‖b‖‖₂ along the last axis: ``(..., C) → (...)``, values in [0, 2].

    Norms are clamped to ``eps`` (``F.normalize``), so an all-zero vector stays zero.
    """
    return (F.normalize(a, dim=-1, eps=eps) - F.normalize(b, dim=-1, eps=eps)).pow(2).sum(-1).sqrt()


def box_filter(x: Tensor, kernel_size: int) -> Tensor:
    """One pass of the k×k mean filter, zero padding (k−1)/2, divisor always k²: ``(B, H, W)``.

    Implemented with ``avg_pool2d(count_include_pad=True)``, a direct windowed sum (never FFT or
    Winograd), so a pixel whose whole window is exactly 0 stays exactly 0 — the reference's
    "mean of non-zero pixels" depends on those exact zeros.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"box filter size must be odd and positive, got {kernel_size}")
    return F.avg_pool2d(x.unsqueeze(1), kernel_size, stride=1, padding=kernel_size // 2,
                        count_include_pad=True).squeeze(1)


def smooth_with_box_filters(x: Tensor, kernel_size: int, passes: int) -> Tensor:
    """``passes`` repeated :func:`box_filter` passes of size ``kernel_size``: ``(B, H, W)``."""
    for _ in range(passes):
        x = box_filter(x, kernel_size)
    return x


REFERENCE_GRID = 224
"""Grid side the reference's smoothing chains are defined on."""


def chain_variance(chain: Sequence[tuple[int, int]]) -> float:
    """Variance (px², per axis) of the blur of ``[(kernel, passes), ...]``: Σ passes·(k² − 1)/12."""
    return float(sum(n * (k * k - 1) / 12.0 for k, n in chain))


def grid_chain(chain: Sequence[tuple[int, int]], grid: int,
               reference_grid: int = REFERENCE_GRID) -> tuple[tuple[int, int], ...]:
    """``chain`` rescaled from a ``reference_grid`` grid to a ``grid`` grid, same blur per image.

    ``grid == reference_grid``: the chain unchanged. Smaller grids: box-3 passes whose summed
    variance is nearest to the chain's variance × (grid / reference_grid)² (possibly none, e.g.
    the d_rec2d pre-smoothing at G = 32). Larger grids: every kernel's half-width scaled, passes
    kept.
    """
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    if grid == reference_grid:
        return tuple((int(k), int(n)) for k, n in chain)
    s = grid / reference_grid
    if s < 1:
        n3 = int(round(chain_variance(chain) * s * s / chain_variance(((3, 1),))))
        return ((3, n3),) if n3 else ()
    return tuple((2 * int(round((k - 1) / 2 * s)) + 1, int(n)) for k, n in chain)


def smooth_chain(x: Tensor, chain: Sequence[tuple[int, int]]) -> Tensor:
    """Apply ``[(kernel, passes), ...]`` in order, e.g. :data:`FUSED_CHAIN`: ``(B, H, W)``."""
    for k, n in chain:
        x = smooth_with_box_filters(x, k, n)
    return x


# --------------------------------------------------------------------------- Eq. 7 building blocks
def joint_mapping_discrepancy(d_map2d: Tensor, d_map3d: Tensor) -> Tensor:
    """d_joint = d_map^2D · d_map^3D: ``(B, H, W)``."""
    return d_map2d * d_map3d


def reliability_gate(d_joint: Tensor) -> Tensor:
    """α(x, y) ∈ [0, 1] from local statistics of d_joint, exactly as the reference: ``(B, H, W)``.

    μ = mean of d_joint over all pixels of the sample (masked zeros included);
    local_std = sqrt(avg_pool 7×7 (stride 1, zero padding 3, ÷49 always) of (d_joint − μ)²);
    W = 4 + 2 · local_std / (mean(local_std) + 1e-8); α = sigmoid(W · d_joint).
    """
    mu = d_joint.mean(dim=(-2, -1), keepdim=True)
    local_std = box_filter((d_joint - mu) ** 2, GATE_KERNEL).sqrt()
    w = 4.0 + 2.0 * local_std / (local_std.mean(dim=(-2, -1), keepdim=True) + 1e-8)
    return torch.sigmoid(w * d_joint)


def reliability_gated_mapping_anomaly(d_map2d: Tensor, d_map3d: Tensor) -> Tensor:
    """A_map = α · d_joint: ``(B, H, W)``."""
    d_joint = joint_mapping_discrepancy(d_map2d, d_map3d)
    return reliability_gate(d_joint) * d_joint


def confidence_weights(d_rec2d: Tensor, d_rec3d: Tensor,
                       temperature: float = TEMPERATURE) -> tuple[Tensor, Tensor]:
    """w2 = exp(−B · d_rec^2D), w3 = exp(−B · d_rec^3D) with B = ``temperature``."""
    return torch.exp(-temperature * d_rec2d), torch.exp(-temperature * d_rec3d)


def confidence_weighted_reconstruction_anomaly(d_rec2d: Tensor, d_rec3d: Tensor,
                                               temperature: float = TEMPERATURE,
                                               eps: float = 1e-8) -> Tensor:
    """A_rec = (w2 · d_rec^2D + w3 · d_rec^3D) / (w2 + w3 + ε): ``(B, H, W)``."""
    w2, w3 = confidence_weights(d_rec2d, d_rec3d, temperature)
    return (w2 * d_rec2d + w3 * d_rec3d) / (w2 + w3 + eps)


def soft_adaptive_discrepancy(d_2d: Tensor, d_3d: Tensor) -> Tensor:
    """d^soft = softmax(−d^2D, −d^3D) · [d^2D, d^3D] (pixel-wise, Eq. 3/4): ``(B, H, W)``."""
    d = torch.stack((d_2d, d_3d), dim=0)
    return (torch.softmax(-d, dim=0) * d).sum(dim=0)


# --------------------------------------------------------------------------- Ψ variants
def fuse_full(d_map2d: Tensor, d_map3d: Tensor, d_rec2d: Tensor, d_rec3d: Tensor,
              temperature: float = TEMPERATURE) -> Tensor:
    """Ψ_full = A_map · A_rec (Eq. 7)."""
    return (reliability_gated_mapping_anomaly(d_map2d, d_map3d)
            * confidence_weighted_reconstruction_anomaly(d_rec2d, d_rec3d, temperature))


def fuse_case_1(d_map2d: Tensor, d_map3d: Tensor, d_rec2d: Tensor, d_rec3d: Tensor,
                d_rec: str = "mean") -> Tensor:
    """Ψ_C1 = α · d_joint · d_rec (Eq. 1, gated mapping fusion).

    The paper leaves d_rec undefined. Our choice (``d_rec="mean"``): the unweighted mean
    (d_rec^2D + d_rec^3D)/2, i.e. Eq. 7 with the confidence weighting removed, which is what this
    ablation isolates. ``d_rec="product"`` gives d_rec^2D · d_rec^3D (the form of Eq. 4/5).
    """
    if d_rec == "mean":
        rec = 0.5 * (d_rec2d + d_rec3d)
    elif d_rec == "product":
        rec = d_rec2d * d_rec3d
    else:
        raise ValueError(f"fuse_case_1: d_rec must be 'mean' or 'product', got {d_rec!r}")
    return reliability_gated_mapping_anomaly(d_map2d, d_map3d) * rec


def fuse_case_2(d_map2d: Tensor, d_map3d: Tensor, d_rec2d: Tensor, d_rec3d: Tensor) -> Tensor:
    """Ψ_C2 = d_map^2D · d_map^3D · d_rec^2D · d_rec^3D (Eq. 2, pure multiplicative)."""
    return d_map2d * d_map3d * d_rec2d * d_rec3d


def fuse_case_3(d_map2d: Tensor, d_map3d: Tensor, d_rec2d: Tensor, d_rec3d: Tensor) -> Tensor:
    """Ψ_C3 = d_map^soft · d_rec^soft (Eq. 3, soft adaptive fusion, no gating)."""
    return soft_adaptive_discrepancy(d_map2d, d_map3d) * soft_adaptive_discrepancy(d_rec2d, d_rec3d)


def fuse_case_4(d_map2d: Tensor, d_map3d: Tensor, d_rec2d: Tensor, d_rec3d: Tensor) -> Tensor:
    """Ψ_C4 = d_map^soft · [α · d_rec^2D · d_rec^3D] (Eq. 4).

    α is the one gate the paper defines, :func:`reliability_gate` of d_joint = d_map^2D·d_map^3D
    (not a gate computed from the reconstruction product).
    """
    alpha = reliability_gate(joint_mapping_discrepancy(d_map2d, d_map3d))
    return soft_adaptive_discrepancy(d_map2d, d_map3d) * (alpha * d_rec2d * d_rec3d)


def fuse_case_5(d_map2d: Tensor, d_map3d: Tensor, d_rec2d: Tensor, d_rec3d: Tensor) -> Tensor:
    """Ψ_C5 = [α · d_joint] · [α · d_rec^2D · d_rec^3D] (Eq. 5); α from d_joint as in Eq. 4."""
    d_joint = joint_mapping_discrepancy(d_map2d, d_map3d)
    alpha = reliability_gate(d_joint)
    return (alpha * d_joint) * (alpha * d_rec2d * d_rec3d)


def fuse_case_6(d_map2d: Tensor, d_map3d: Tensor, d_rec2d: Tensor, d_rec3d: Tensor) -> Tensor:
    """Ψ_C6 = d_avg = (d_map^2D + d_map^3D + d_rec^2D + d_rec^3D) / 4 (Eq. 6)."""
    return (d_map2d + d_map3d + d_rec2d + d_rec3d) / 4.0


def fuse_reconstruction_only(d_rec2d: Tensor, d_rec3d: Tensor,
                             temperature: float = TEMPERATURE) -> Tensor:
    """Table 6 "Dual Reconstruction only": Ψ = A_rec (Eq. 7 without the mapping factor)."""
    return confidence_weighted_reconstruction_anomaly(d_rec2d, d_rec3d, temperature)


def fuse_mapping_only(d_map2d: Tensor, d_map3d: Tensor) -> Tensor:
    """Table 6 "Cross-Modal Mapping only": Ψ = A_map (Eq. 7 without the reconstruction factor)."""
    return reliability_gated_mapping_anomaly(d_map2d, d_map3d)


def score_rgb_only(d_rec2d: Tensor) -> Tensor:
    """RGB-only modality: Ψ = d_rec^2D (2D reconstruction; :func:`score` passes it pre-smoothed)."""
    return d_rec2d


def score_xyz_only(d_rec3d: Tensor) -> Tensor:
    """3D-only modality (§3.6): Ψ = A_rec^3D = d_rec^3D, the 3D reconstruction distance."""
    return d_rec3d


@dataclass(frozen=True)
class _Variant:
    maps: tuple[str, ...]
    fn: Callable[..., Tensor]
    uses_temperature: bool = False


_ALL = MAP_NAMES
_VARIANTS: dict[str, _Variant] = {
    "full": _Variant(_ALL, fuse_full, True),
    "case1": _Variant(_ALL, fuse_case_1),
    "case2": _Variant(_ALL, fuse_case_2),
    "case3": _Variant(_ALL, fuse_case_3),
    "case4": _Variant(_ALL, fuse_case_4),
    "case5": _Variant(_ALL, fuse_case_5),
    "case6": _Variant(_ALL, fuse_case_6),
    "reconstruction_only": _Variant(("d_rec2d", "d_rec3d"), fuse_reconstruction_only, True),
    "mapping_only": _Variant(("d_map2d", "d_map3d"), fuse_mapping_only),
    "rgb_only": _Variant(("d_rec2d",), score_rgb_only),
    "xyz_only": _Variant(("d_rec3d",), score_xyz_only),
}
VARIANTS: tuple[str, ...] = tuple(_VARIANTS)


def required_maps(variant: str) -> tuple[str, ...]:
    """Names (from :data:`MAP_NAMES`) of the distance maps a variant needs."""
    return _variant(variant).maps


def _variant(name: str) -> _Variant:
    try:
        return _VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown fusion variant {name!r}; choose one of {VARIANTS}") from None


# --------------------------------------------------------------------------- normalisations
def _check_map(x: Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what} must be a (B, H, W) tensor, got {shape}")


def mean_nonzero(x: Tensor) -> Tensor:
    """Per-sample mean over the pixels that are exactly ≠ 0: ``(B, H, W) → (B,)``.

    Raises :class:`ValueError` naming the samples whose map is all zero (mean of an empty set).
    """
    _check_map(x, "anomaly map")
    count = (x != 0).sum(dim=(1, 2))
    empty = (count == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"anomaly map of sample(s) {empty} is exactly 0 everywhere: its mean over non-zero "
            "pixels (the image-score and AUPRO normaliser) is the mean of an empty set"
        )
    return x.sum(dim=(1, 2)) / count.to(x.dtype)


def mean_all(x: Tensor) -> Tensor:
    """Per-sample mean over all pixels: ``(B, H, W) → (B,)``."""
    _check_map(x, "anomaly map")
    return x.mean(dim=(1, 2))


def aupro_map(x: Tensor) -> Tensor:
    """Map fed to AUPRO in the reference: Ψ / mean_nonzero(Ψ), per sample: ``(B, H, W)``."""
    return x / mean_nonzero(x)[:, None, None]


def image_score(x: Tensor) -> Tensor:
    """Image score S = max(Ψ / sqrt(mean_nonzero(Ψ))), per sample: ``(B, H, W) → (B,)``."""
    return (x / mean_nonzero(x).sqrt()[:, None, None]).amax(dim=(1, 2))


def pixel_scores(x: Tensor) -> Tensor:
    """Scores fed to P-AUROC in the reference: Ψ / sqrt(mean over all pixels): ``(B, H, W)``."""
    return x / mean_all(x).sqrt()[:, None, None]


# --------------------------------------------------------------------------- entry point
@dataclass(frozen=True)
class ScoreStages:
    """Intermediate maps of :func:`score`, all ``(B, H, W)``.

    ``inputs``: the masked maps the variant used (``d_rec2d`` after its pre-smoothing);
    ``psi``: Ψ after re-masking, before smoothing; ``smoothed``: the final anomaly map.
    """

    inputs: dict[str, Tensor]
    psi: Tensor
    smoothed: Tensor


def _prepare(maps: dict[str, Tensor | None], valid: Tensor | None,
             needed: tuple[str, ...], variant: str) -> tuple[dict[str, Tensor], Tensor]:
    out: dict[str, Tensor] = {}
    shape = None
    for name in needed:
        x = maps[name]
        if x is None:
            raise ValueError(f"fusion variant {variant!r} needs {name}, got None")
        _check_map(x, name)
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
        if shape is None:
            shape, first = x.shape, name
        elif x.shape != shape:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)} but {first} has {tuple(shape)}"
            )
        bad = (~torch.isfinite(x)).flatten(1).any(1).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"{name} contains NaN or infinite values (sample(s) {bad})")
        out[name] = x.float()
    ref = out[needed[0]]
    if valid is None:
        valid = torch.ones(ref.shape, dtype=torch.bool, device=ref.device)
    if not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool:
        raise ValueError("valid must be a bool tensor (True = valid 3D point)")
    if valid.shape != ref.shape:
        raise ValueError(
            f"valid mask has shape {tuple(valid.shape)} but the maps have {tuple(ref.shape)}"
        )
    empty = (~valid.flatten(1).any(1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"sample(s) {empty} have no valid pixel: the anomaly map would be all zero and its "
            "normaliser the mean of an empty set"
        )
    return out, valid


def score_stages(d_map2d: Tensor | None, d_map3d: Tensor | None, d_rec2d: Tensor | None,
                 d_rec3d: Tensor | None, valid: Tensor | None, variant: str = "full", *,
                 temperature: float = TEMPERATURE,
                 rec2d_chain: Sequence[tuple[int, int]] = REC2D_CHAIN,
                 fused_chain: Sequence[tuple[int, int]] = FUSED_CHAIN) -> ScoreStages:
    """Steps 1–4 of the module docstring; see :func:`score` for the arguments."""
    spec = _variant(variant)
    given = dict(zip(MAP_NAMES, (d_map2d, d_map3d, d_rec2d, d_rec3d), strict=True))
    maps, valid = _prepare(given, valid, spec.maps, variant)
    zero = torch.zeros((), dtype=torch.float32, device=valid.device)
    maps = {k: torch.where(valid, v, zero) for k, v in maps.items()}  # step 1
    if "d_rec2d" in maps:
        maps["d_rec2d"] = smooth_chain(maps["d_rec2d"], rec2d_chain)  # step 2
    kwargs = {"temperature": temperature} if spec.uses_temperature else {}
    psi = torch.where(valid, spec.fn(**maps, **kwargs), zero)  # step 3
    return ScoreStages(inputs=maps, psi=psi, smoothed=smooth_chain(psi, fused_chain))  # step 4


def score(d_map2d: Tensor | None, d_map3d: Tensor | None, d_rec2d: Tensor | None,
          d_rec3d: Tensor | None, valid: Tensor | None, variant: str = "full", *,
          temperature: float = TEMPERATURE,
          rec2d_chain: Sequence[tuple[int, int]] = REC2D_CHAIN,
          fused_chain: Sequence[tuple[int, int]] = FUSED_CHAIN) -> tuple[Tensor, Tensor]:
    """Smoothed anomaly map ``(B, H, W)`` and image scores ``(B,)``, computed as the reference.

    Maps are ``(B, H, W)`` distances (see :func:`euclid`); those the variant does not use (see
    :func:`required_maps`) may be None and are ignored. ``valid``: ``(B, H, W)`` bool, True = a
    3D point exists (the complement of the reference's ``xyz_mask``); None = all valid (RGB-only).
    ``variant``: one of :data:`VARIANTS`. Raises :class:`ValueError` on missing or mismatched
    maps, NaN/inf values, or a sample with no valid pixel / an all-zero map.
    """
    st = score_stages(d_map2d, d_map3d, d_rec2d, d_rec3d, valid, variant, temperature=temperature,
                      rec2d_chain=rec2d_chain, fused_chain=fused_chain)
    return st.smoothed, image_score(st.smoothed)
