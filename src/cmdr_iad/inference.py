"""The one inference path: transformed tensors → anomaly map Ψ, image score, distance maps.

:class:`InferencePath` holds the frozen extractor, the four heads and the scoring config, and
:meth:`InferencePath.score` is the only function from transformed inputs — normalised RGB
``(B, 3, S, S)`` and/or an organised cloud ``(B, 3, G, G)``, or features already extracted — to
the fused map, the image score and the per-branch distance maps. ``predict``, ``evaluate``,
``benchmark``, calibration and the service all call it; stage timings come from the ``timer``
hook it takes (:class:`StageTimer`), never from a copy of the pipeline.

Per sample (so that memory stays flat with the batch size): features as token sources
(``FeatureExtractor.extract_rows``: F2D upsampled on demand, F3D packed to its support) →
the heads at the valid pixels only (``model.distances.sample_distance_maps``) → the fusion of
the batch (``model.fusion.score``). ``heads="reference"`` is the clearly named reference path
(dense feature maps, every head on every pixel), kept for equality checks and the benchmark.

Scoring branches. A model trained on ``rgb+xyz`` scores a sample with all four heads and the
configured fusion variant (paper Eq. 7 by default). Without a point cloud (or with one without
any valid point) it falls back to the RGB branch (Dec2D only, ``rgb_only``), and without RGB to
the 3D branch (Dec3D only, ``xyz_only``); :func:`choose_branch` says which and why.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import ScoreConfig
from .errors import UserInputError
from .memory import release_memory
from .model.distances import reference_distance_maps, sample_distance_maps
from .model.fusion import FUSED_CHAIN, REC2D_CHAIN, grid_chain
from .model.fusion import score as fusion_score
from .precision import PRECISIONS, autocast

__all__ = [
    "HEAD_PATHS",
    "BRANCHES",
    "BRANCH_VARIANT",
    "BranchChoice",
    "Scores",
    "StageTimer",
    "InferencePath",
    "choose_branch",
    "cloud_has_points",
    "fuse",
]

HEAD_PATHS = ("exact", "reference")
"""``exact``: the heads at valid pixels only (default); ``reference``: every head on every pixel
of the dense feature maps, as the authors compute it (same numbers up to float32 rounding)."""
BRANCHES = {"rgb+xyz": ("rgb+xyz", "rgb", "xyz"), "rgb": ("rgb",), "xyz": ("xyz",)}
"""Scoring branches a model of each modality supports (its own first)."""
BRANCH_VARIANT = {"rgb": "rgb_only", "xyz": "xyz_only"}

Timer = Callable[[str], AbstractContextManager[Any]]


def _no_timer(name: str) -> AbstractContextManager[Any]:
    return nullcontext()


class StageTimer:
    """Seconds per stage, accumulated over calls; CUDA is synchronised at stage boundaries so
    that each stage is charged its own kernels. Use as ``timer=StageTimer(device)``."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self.seconds: dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - t0

    def total(self) -> float:
        return float(sum(self.seconds.values()))


@dataclass
class BranchChoice:
    """Which branch scores a sample, the modality that was missing (None when none was), and
    the notes to report (missing or ignored inputs)."""

    branch: str
    missing_modality: str | None = None
    notes: list[str] = field(default_factory=list)


def choose_branch(modality: str, has_rgb: bool, has_xyz: bool, xyz_empty: bool = False) -> BranchChoice:
    """The branch of a ``modality`` model for a sample with these inputs.

    An input the model does not use is *ignored* (noted, not missing); a point cloud without any
    valid point counts as missing. Raises :class:`UserInputError` when nothing usable is left.
    """
    xyz_ok = has_xyz and not xyz_empty
    if modality == "rgb":
        if not has_rgb:
            raise UserInputError("this model is RGB-only and the sample has no RGB image")
        return BranchChoice("rgb", None, ["point cloud ignored: the model is RGB-only"] if has_xyz else [])
    if modality == "xyz":
        if not has_xyz:
            raise UserInputError("this model is 3D-only and the sample has no point cloud")
        if xyz_empty:
            raise UserInputError("this model is 3D-only and the sample's point cloud has no valid point")
        return BranchChoice("xyz", None, ["RGB image ignored: the model is 3D-only"] if has_rgb else [])
    if modality != "rgb+xyz":
        raise UserInputError(f"unknown modality {modality!r}")
    if has_rgb and xyz_ok:
        return BranchChoice("rgb+xyz")
    if has_rgb:
        why = "has no valid point" if has_xyz else "was not given"
        return BranchChoice("rgb", "xyz", [f"point cloud {why}: scored with the RGB branch only "
                                           "(2D reconstruction)"])
    if xyz_ok:
        return BranchChoice("xyz", "rgb", ["RGB image was not given: scored with the 3D branch only "
                                           "(3D reconstruction)"])
    if has_xyz:
        raise UserInputError("the sample has no RGB image and its point cloud has no valid point")
    raise UserInputError("the sample has neither an RGB image nor a point cloud")


def cloud_has_points(xyz: torch.Tensor) -> torch.Tensor:
    """(B, 3, G, G) → (B,) bool: at least one grid point with all coordinates non-zero."""
    return (xyz != 0).all(dim=1).flatten(1).any(dim=1)


def fuse(d: Mapping[str, torch.Tensor], valid: torch.Tensor | None, branch: str,
         score_cfg: ScoreConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance maps of a batch → (Ψ (B, G, G), image scores (B,)) for ``branch``: the configured
    fusion variant for ``rgb+xyz``, the single-modality scoring otherwise. The RGB branch has no
    3D mask: every pixel counts. ``score_cfg.smoothing == "grid"`` scales the smoothing chains
    to the map's grid (`model.fusion.grid_chain`; unchanged at G = 224)."""
    variant = score_cfg.variant if branch == "rgb+xyz" else BRANCH_VARIANT[branch]
    chains = {}
    if score_cfg.smoothing == "grid":
        grid = int(next(m for m in d.values() if m is not None).shape[-1])
        chains = {"rec2d_chain": grid_chain(REC2D_CHAIN, grid),
                  "fused_chain": grid_chain(FUSED_CHAIN, grid)}
    return fusion_score(d.get("d_map2d"), d.get("d_map3d"), d.get("d_rec2d"), d.get("d_rec3d"),
                        None if branch == "rgb" else valid, variant,
                        temperature=score_cfg.temperature, **chains)


@dataclass
class Scores:
    """Output of :meth:`InferencePath.score` for a batch of B samples of one branch.

    map_grid: Ψ (B, G, G), the smoothed fused map; score: (B,) image scores; valid: (B, G, G)
    bool 3D support (all True for the RGB branch); distances: the branch's distance maps
    (``d_map2d``, ``d_map3d``, ``d_rec2d``, ``d_rec3d``: (B, G, G), exact zeros off ``valid`` on
    the exact path); branch: "rgb+xyz", "rgb" or "xyz".
    """

    map_grid: torch.Tensor
    score: torch.Tensor
    valid: torch.Tensor
    distances: dict[str, torch.Tensor]
    branch: str


class InferencePath:
    """The frozen extractor + the heads + the scoring config, scored by :meth:`score`.

    extractor: the `FeatureExtractor` of the model's modality (a branch that needs fewer
    encoders gets a view on the same encoder modules); heads: the head modules by official name
    (eval mode); score_cfg: fusion variant and temperature; precision: a resolved
    `precision.PRECISIONS` entry (see `precision.resolve_precision`): the encoders and heads
    run under its autocast, the geometry, distance maps and fusion in float32. Features given
    to :meth:`score` (the feature cache) were extracted in float32, so only the heads run in
    reduced precision then.
    """

    def __init__(self, extractor: Any, heads: Mapping[str, torch.nn.Module], score_cfg: ScoreConfig,
                 modality: str, device: torch.device, precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.extractor = extractor
        self.heads = heads
        self.score_cfg = score_cfg
        self.modality = modality
        self.device = torch.device(device)
        self.precision = precision
        self._by_branch: dict[str, Any] = {modality: extractor}

    def extractor_for(self, branch: str) -> Any:
        """The extractor running only the encoders ``branch`` uses (shares the modules)."""
        if branch not in BRANCHES[self.modality]:
            raise ValueError(f"a {self.modality} model has no {branch} branch")
        if branch not in self._by_branch:
            from .features.extractor import FeatureExtractor

            ext = self.extractor
            self._by_branch[branch] = FeatureExtractor.from_modules(
                ext.vit if branch == "rgb" else None, ext.point_mae if branch == "xyz" else None,
                ext.cfg, branch, identities=ext.weights, device=self.device)
        return self._by_branch[branch]

    def _network(self) -> AbstractContextManager[object]:
        """The autocast region of the encoders and heads (a no-op in fp32)."""
        return autocast(self.device, self.precision)

    @torch.no_grad()
    def score(self, rgb: torch.Tensor | None = None, xyz: torch.Tensor | None = None, *,
              branch: str, features: Sequence[Any] | None = None, heads: str = "exact",
              timer: Timer | None = None) -> Scores:
        """Score a batch of one branch.

        rgb: (B, 3, S, S) normalised, xyz: (B, 3, G, G) organised cloud (inputs the branch does
        not use are ignored); or ``features``: one ``SampleRows`` per sample (token sources and
        valid mask, e.g. from the feature cache), instead of the inputs. heads: a
        :data:`HEAD_PATHS` entry. timer: called as ``with timer(stage):`` around the stages
        "features", "heads" and "fusion".
        """
        if heads not in HEAD_PATHS:
            raise ValueError(f"heads must be one of {HEAD_PATHS}, got {heads!r}")
        timer = timer or _no_timer
        rgb = rgb if branch != "xyz" else None
        xyz = xyz if branch != "rgb" else None
        if features is None and rgb is None and xyz is None:
            raise ValueError(f"the {branch} branch needs its inputs or features")
        if heads == "reference":
            if features is not None:
                raise ValueError("the reference path extracts dense features itself")
            return self._score_reference(rgb, xyz, branch, timer)
        cpu = self.device.type == "cpu"
        trim = release_memory if cpu else None
        n = len(features) if features is not None else (rgb if rgb is not None else xyz).shape[0]
        maps: dict[str, list[torch.Tensor]] = defaultdict(list)
        valids = []
        for i in range(n):
            with timer("features"), self._network():
                if features is not None:
                    rows = features[i]
                else:
                    rows = self.extractor_for(branch).extract_rows(
                        None if rgb is None else rgb[i:i + 1], None if xyz is None else xyz[i:i + 1])
                s2 = rows.f2d if branch != "xyz" else None
                s3 = rows.f3d if branch != "rgb" else None
                v = rows.valid.to(self.device) if s3 is not None else \
                    torch.ones(rows.valid.shape, dtype=torch.bool, device=self.device)
            with timer("heads"), self._network():
                for k, m in sample_distance_maps(self.heads, s2, s3, v, between=trim).items():
                    maps[k].append(m)
            valids.append(v)
            del rows, s2, s3
            if cpu:
                release_memory()  # hand the sample's freed heap back before the next one
        with timer("fusion"):
            d = {k: torch.stack(v) for k, v in maps.items()}
            valid = torch.stack(valids)
            amap, scores = fuse(d, valid, branch, self.score_cfg)
        return Scores(amap, scores, valid, d, branch)

    def _score_reference(self, rgb: torch.Tensor | None, xyz: torch.Tensor | None, branch: str,
                         timer: Timer) -> Scores:
        """The reference path: dense feature maps, every head on every pixel, then the fusion."""
        with timer("features"), self._network():
            f = self.extractor_for(branch).extract(rgb, xyz)
        with timer("heads"), self._network():
            d = reference_distance_maps(self.heads, f.f2d, f.f3d)
            valid = f.valid.to(self.device)
            del f
        with timer("fusion"):
            if self.device.type == "cpu":
                release_memory()
            amap, scores = fuse(d, valid, branch, self.score_cfg)
        return Scores(amap, scores, valid, d, branch)

