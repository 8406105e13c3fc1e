"""Multimodal feature extractor: frozen DINO ViT-B/8 + Point-MAE → pixel-aligned feature maps.

A batch of (normalised RGB (B,3,S,S), organised point cloud (B,3,G,G)) becomes
`F2D (B,768,G,G)`, `F3D (B,1152,G,G)` and `valid (B,G,G)` (paper §3.1, §5.2), assembled as
the reference does (see `points3d.xyz_feature_map`). RGB-only and 3D-only extractors skip the
unused encoder. Every result carries an identity (config, weight identities, random flag,
BatchNorm mode) and a stable cache key, because features are pure functions of the inputs
and of that identity.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import MODALITIES, FeatureConfig
from ..device import resolve_device
from ..errors import UserInputError
from ..memory import release_memory
from .weights import (
    DINO,
    POINT_MAE,
    WeightIdentity,
    materialize_empty,
    module_identity,
    random_identity,
    resolve_weights,
    seeded_init_,
)

__all__ = ["FEATURE_VERSION", "Features", "SampleRows", "FeatureExtractor", "make_cache_key"]

FEATURE_VERSION = "1"
"""Bump when the feature computation changes in a way that alters values (invalidates caches)."""

F2D_DIM = 768
F3D_DIM = 1152


@dataclass
class Features:
    """Pixel-aligned frozen features of a batch.

    f2d: (B,768,G,G) float or None (no RGB); f3d: (B,1152,G,G) float or None (no 3D);
    valid: (B,G,G) bool, True where the pixel has 3D support (all True without 3D).
    identity: the extractor identity (config, weights, random flag, BN mode).
    """

    f2d: torch.Tensor | None
    f3d: torch.Tensor | None
    valid: torch.Tensor
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.valid.shape[0])

    @property
    def grid(self) -> int:
        return int(self.valid.shape[-1])

    def cache_key(self) -> str:
        return make_cache_key(self.identity)

    def to(self, device: str | torch.device) -> Features:
        def mv(t):
            return None if t is None else t.to(device)

        return Features(mv(self.f2d), mv(self.f3d), self.valid.to(device), dict(self.identity))

    def split(self) -> list[Features]:
        """One `Features` of batch 1 per sample."""
        out = []
        for i in range(self.batch_size):
            sl = slice(i, i + 1)
            out.append(Features(None if self.f2d is None else self.f2d[sl],
                                None if self.f3d is None else self.f3d[sl],
                                self.valid[sl], dict(self.identity)))
        return out

    @staticmethod
    def cat(items: Sequence[Features]) -> Features:
        """Concatenate along the batch axis (all items must share an identity)."""
        if not items:
            raise UserInputError("cannot concatenate an empty list of features")

        def cat(ts):
            return None if ts[0] is None else torch.cat(ts, 0)

        return Features(cat([f.f2d for f in items]), cat([f.f3d for f in items]),
                        torch.cat([f.valid for f in items], 0), dict(items[0].identity))


@dataclass
class SampleRows:
    """One sample's features as token sources (:mod:`cmdr_iad.model.tokens`), for inference.

    f2d / f3d: ``TokenRows`` over G·G tokens or None; valid: (G, G) bool (all True without 3D).
    """

    f2d: Any
    f3d: Any
    valid: torch.Tensor


def make_cache_key(identity: Mapping[str, Any]) -> str:
    """Stable SHA-256 over what determines feature values: version, modality, config, weights.

    Weight file names and locations do not enter the key; their SHA-256 (or random seed) does.
    """
    weights = {}
    for k, w in (identity.get("weights") or {}).items():
        if w is None:
            weights[k] = None
        elif w.get("random"):
            weights[k] = {"random": True, "seed": w.get("seed")}
        else:
            weights[k] = {"sha256": w.get("sha256")}
    payload = {
        "package": "cmdr-iad",
        "feature_version": identity.get("feature_version"),
        "modality": identity.get("modality"),
        "config": identity.get("config"),
        "weights": weights,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _freeze(m: nn.Module) -> nn.Module:
    m.eval()
    m.requires_grad_(False)
    return m


class FeatureExtractor:
    """Frozen encoders + pixel-aligned assembly. See the module docstring.

    FeatureExtractor(cfg, modality, dino_weights=None, point_mae_weights=None,
                     random_backbones=False, seed=0, device="cpu", allow_download=None)

    Weights are resolved with `weights.resolve_weights` (explicit path → weights folders →
    verified download → error). Random encoders only with `random_backbones=True`: seeded
    "recipe-like" values (`weights.seeded_init_`, seed for the ViT, seed+1 for Point-MAE), and
    the identity then says so.
    """

    def __init__(
        self,
        cfg: FeatureConfig,
        modality: str = "rgb+xyz",
        *,
        dino_weights: str | None = None,
        point_mae_weights: str | None = None,
        random_backbones: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
        allow_download: bool | None = None,
    ) -> None:
        self._setup(cfg, modality, device)
        if random_backbones and (dino_weights is not None or point_mae_weights is not None):
            raise UserInputError("random_backbones (--random-backbones) cannot be combined with "
                                 "weight files (--dino-weights / --point-mae-weights)")
        vit = pmae = None
        idents: dict[str, WeightIdentity | None] = {"dino": None, "point_mae": None}
        if self.uses_rgb:
            from .vit import create_vit, load_vit_weights

            if random_backbones:
                vit = seeded_init_(create_vit(cfg.rgb_size, cfg.vit_name, empty=True), seed)
                idents["dino"] = random_identity("dino", seed)
            else:
                res = resolve_weights(DINO, dino_weights, allow_download=allow_download)
                vit = create_vit(cfg.rgb_size, cfg.vit_name, empty=True)
                load_vit_weights(vit, res.path)
                idents["dino"] = res.identity
        if self.uses_xyz:
            from .point_mae import PointMAE

            if random_backbones:
                with torch.device("meta"):  # skip the default init: values are filled next
                    pmae = PointMAE(num_group=cfg.num_group, group_size=cfg.group_size)
                pmae = seeded_init_(materialize_empty(pmae), seed + 1)
                idents["point_mae"] = random_identity("point_mae", seed + 1)
            else:
                from .point_mae_ckpt import load_point_mae_weights

                res = resolve_weights(POINT_MAE, point_mae_weights, allow_download=allow_download)
                pmae = PointMAE(num_group=cfg.num_group, group_size=cfg.group_size)
                load_point_mae_weights(pmae, res.path)
                idents["point_mae"] = res.identity
        self._finish(vit, pmae, idents, random_backbones)

    @classmethod
    def from_modules(
        cls,
        vit: nn.Module | None,
        point_mae: nn.Module | None,
        cfg: FeatureConfig,
        modality: str = "rgb+xyz",
        *,
        identities: Mapping[str, WeightIdentity] | None = None,
        device: str | torch.device = "cpu",
    ) -> FeatureExtractor:
        """Wrap already-built encoders (e.g. with test weights).

        Without `identities`, each encoder's identity is the SHA-256 of its state dict.
        """
        self = cls.__new__(cls)
        self._setup(cfg, modality, device)
        if self.uses_rgb and vit is None:
            raise UserInputError(f"modality {modality!r} needs a ViT module")
        if self.uses_xyz and point_mae is None:
            raise UserInputError(f"modality {modality!r} needs a Point-MAE module")
        vit = vit if self.uses_rgb else None
        point_mae = point_mae if self.uses_xyz else None
        identities = dict(identities or {})
        idents: dict[str, WeightIdentity | None] = {"dino": None, "point_mae": None}
        for kind, mod in (("dino", vit), ("point_mae", point_mae)):
            if mod is not None:
                idents[kind] = identities.get(kind) or module_identity(kind, mod.state_dict())
        self._finish(vit, point_mae, idents, False)
        return self

    # ------------------------------------------------------------------ internals

    def _setup(self, cfg: FeatureConfig, modality: str, device: str | torch.device) -> None:
        if modality not in MODALITIES:
            raise UserInputError(f"modality must be one of {MODALITIES}, got {modality!r}")
        cfg.validate()
        self.cfg = cfg
        self.modality = modality
        self.device = resolve_device(device)
        self.uses_rgb = modality in ("rgb+xyz", "rgb")
        self.uses_xyz = modality in ("rgb+xyz", "xyz")

    def _finish(self, vit, pmae, idents, random_backbones: bool) -> None:
        self.vit = None if vit is None else _freeze(vit).to(self.device)
        self.point_mae = None if pmae is None else _freeze(pmae).to(self.device)
        self.weights = idents
        self.random_backbones = bool(random_backbones or any(
            w is not None and w.random for w in idents.values()))
        self.identity = {
            "feature_version": FEATURE_VERSION,
            "modality": self.modality,
            "config": asdict(self.cfg),
            "weights": {k: (None if v is None else v.to_dict()) for k, v in idents.items()},
            "random_backbones": self.random_backbones,
            "point_mae_bn": self.cfg.point_mae_bn if self.uses_xyz else None,
        }

    def cache_key(self) -> str:
        """Stable hash of config + weight identity + feature version."""
        return make_cache_key(self.identity)

    def encoder_identity(self, kind: str) -> dict[str, Any]:
        """What determines one encoder's compact features (the feature store's key).

        kind "vit": feature version, ViT name, RGB side and DINO weights (the token map does not
        depend on the grid, the transforms mode or the 3D side, so RGB-only and RGB+3D models
        share it); "point_mae": feature version, grid side, transforms mode, grouping, BatchNorm
        mode and Point-MAE weights.
        """
        c = self.cfg
        if kind == "vit":
            if not self.uses_rgb:
                raise UserInputError(f"a {self.modality} extractor has no ViT")
            cfg = {"vit_name": c.vit_name, "rgb_size": c.rgb_size}
            w = self.identity["weights"]["dino"]
        elif kind == "point_mae":
            if not self.uses_xyz:
                raise UserInputError(f"a {self.modality} extractor has no Point-MAE")
            cfg = {"grid_size": c.grid_size, "transforms": c.transforms, "num_group": c.num_group,
                   "group_size": c.group_size, "point_mae_bn": c.point_mae_bn}
            w = self.identity["weights"]["point_mae"]
        else:
            raise UserInputError(f"encoder kind must be 'vit' or 'point_mae', got {kind!r}")
        return {"feature_version": FEATURE_VERSION, "encoder": kind, "config": cfg,
                "weights": {kind: w}}

    def encoder_key(self, kind: str) -> str:
        """Stable hash of :meth:`encoder_identity` (weights by SHA-256 or random seed)."""
        ident = self.encoder_identity(kind)
        return make_cache_key({**ident, "modality": kind})

    @torch.no_grad()
    def extract_tokens(self, rgb: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) normalised RGB → the ViT token map (B,768,S/8,S/8) float32, contiguous:
        what :meth:`extract` upsamples to F2D (`compact.dense_f2d` does the same)."""
        from .vit import vit_feature_map

        if not self.uses_rgb:
            raise UserInputError(f"a {self.modality} extractor has no ViT")
        s = self.cfg.rgb_size
        if not isinstance(rgb, torch.Tensor) or rgb.ndim != 4 or tuple(rgb.shape[1:]) != (3, s, s):
            raise UserInputError(f"rgb must have shape (B,3,{s},{s}), got "
                                 f"{tuple(getattr(rgb, 'shape', ()))}")
        low = vit_feature_map(self.vit, rgb.to(self.device, torch.float32)).contiguous()
        if self.device.type == "cpu":
            release_memory()
        return low

    @torch.no_grad()
    def extract_points(self, xyz: torch.Tensor) -> list[Any]:
        """(B,3,G,G) organised clouds → one `compact.Points3D` per sample (group features,
        interpolation, valid mask), as :meth:`extract` computes them for F3D."""
        from .compact import Points3D
        from .points3d import xyz_feature_map

        if not self.uses_xyz:
            raise UserInputError(f"a {self.modality} extractor has no Point-MAE")
        g = self.cfg.grid_size
        if not isinstance(xyz, torch.Tensor) or xyz.ndim != 4 or tuple(xyz.shape[1:]) != (3, g, g):
            raise UserInputError(f"xyz must have shape (B,3,{g},{g}), got "
                                 f"{tuple(getattr(xyz, 'shape', ()))}")
        f3d, valid, pf, interps = xyz_feature_map(
            self.point_mae, xyz.to(self.device, torch.float32), bn=self.cfg.point_mae_bn,
            return_point_features=True, return_interpolations=True)
        del f3d
        out = [Points3D(pf.features[i].contiguous(), interps[i], valid[i].to(torch.bool))
               for i in range(len(interps))]
        if self.device.type == "cpu":
            release_memory()
        return out

    # ------------------------------------------------------------------ extraction

    def _check_inputs(self, rgb, xyz) -> int:
        g, s = self.cfg.grid_size, self.cfg.rgb_size
        b = None
        if self.uses_rgb:
            if rgb is None:
                raise UserInputError(f"modality {self.modality!r} needs an RGB batch (B,3,{s},{s})")
            if not isinstance(rgb, torch.Tensor) or not rgb.is_floating_point():
                raise UserInputError("rgb must be a floating-point tensor (normalised RGB)")
            if rgb.ndim != 4 or tuple(rgb.shape[1:]) != (3, s, s):
                raise UserInputError(f"rgb must have shape (B,3,{s},{s}), got {tuple(rgb.shape)}")
            b = rgb.shape[0]
        if self.uses_xyz:
            if xyz is None:
                raise UserInputError(f"modality {self.modality!r} needs a point-cloud batch (B,3,{g},{g})")
            if not isinstance(xyz, torch.Tensor) or not xyz.is_floating_point():
                raise UserInputError("xyz must be a floating-point tensor (organised point cloud)")
            if xyz.ndim != 4 or tuple(xyz.shape[1:]) != (3, g, g):
                raise UserInputError(f"xyz must have shape (B,3,{g},{g}), got {tuple(xyz.shape)}")
            if b is not None and xyz.shape[0] != b:
                raise UserInputError(f"rgb and xyz batch sizes differ: {b} vs {xyz.shape[0]}")
            b = xyz.shape[0]
        if not b:
            raise UserInputError("empty batch")
        return int(b)

    @torch.no_grad()  # not inference_mode: the heads train on these tensors later
    def extract(self, rgb: torch.Tensor | None = None, xyz: torch.Tensor | None = None) -> Features:
        """(B,3,S,S) normalised RGB and/or (B,3,G,G) organised xyz → `Features` on `device`."""
        b = self._check_inputs(rgb, xyz)
        g = self.cfg.grid_size
        f2d = f3d = None
        valid = None
        if self.uses_rgb:
            from .vit import rgb_feature_map

            f2d = rgb_feature_map(self.vit, rgb.to(self.device, torch.float32), g)
            if self.device.type == "cpu":
                release_memory()
        if self.uses_xyz:
            from .points3d import xyz_feature_map

            f3d, valid = xyz_feature_map(self.point_mae, xyz.to(self.device, torch.float32),
                                         bn=self.cfg.point_mae_bn)
            valid = valid.to(torch.bool)
        if valid is None:
            valid = torch.ones(b, g, g, dtype=torch.bool, device=self.device)
        if self.device.type == "cpu":
            release_memory()  # hand the encoders' freed working memory back to the OS
        return Features(f2d, f3d, valid, dict(self.identity))

    __call__ = extract

    @torch.no_grad()
    def extract_rows(self, rgb: torch.Tensor | None = None, xyz: torch.Tensor | None = None
                     ) -> SampleRows:
        """Features of ONE sample ((1,3,S,S) RGB and/or (1,3,G,G) xyz) as token sources, for
        inference: F2D as the 28×28 ViT map upsampled on demand (`UpsampledRows`), F3D packed to
        the tokens that can be non-zero (`PackedRows`). Same values as :meth:`extract` (F3D bit
        for bit, F2D within float32 rounding), without the 385 MB of dense maps of a paper-size
        sample."""
        from ..model.tokens import UpsampledRows

        b = self._check_inputs(rgb, xyz)
        if b != 1:
            raise UserInputError(f"extract_rows takes one sample, got a batch of {b}")
        g = self.cfg.grid_size
        s2 = s3 = None
        valid = None
        if self.uses_rgb:
            from .vit import vit_feature_map

            low = vit_feature_map(self.vit, rgb.to(self.device, torch.float32))[0]
            s2 = UpsampledRows(low, g)
            del low
            if self.device.type == "cpu":
                release_memory()  # the ViT's working memory, before Point-MAE's
        if self.uses_xyz:
            from .points3d import xyz_feature_rows

            s3, valid = xyz_feature_rows(self.point_mae, xyz.to(self.device, torch.float32),
                                         bn=self.cfg.point_mae_bn)
        if valid is None:
            valid = torch.ones(g, g, dtype=torch.bool, device=self.device)
        if self.device.type == "cpu":
            release_memory()
        return SampleRows(s2, s3, valid)

    def describe(self) -> str:
        """One line per encoder, e.g. for logs and CLI output."""
        parts = [w.describe() for w in self.weights.values() if w is not None]
        return "; ".join(parts)
