"""Configuration dataclasses (frozen) with a JSON round-trip.

A `DetectorConfig` fully describes a multimodal detector: which modality, the frozen feature
extractors, the trainable heads, training and scoring. Presets live in `cmdr_iad.presets`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

MODALITIES = ("rgb+xyz", "rgb", "xyz")
BN_MODES = ("sample", "running")
TRANSFORM_MODES = ("reference", "aligned")
OPTIMIZERS = ("adam", "adamw")
SMOOTHING = ("grid", "pixels")


@dataclass(frozen=True)
class FeatureConfig:
    """Frozen encoders and pixel alignment.

    grid_size: G, side of the feature grid; the organised point cloud is resized to G×G.
    rgb_size: side of the square RGB input of the ViT (224 for DINO ViT-B/8 → 28×28 patches).
    num_group / group_size: Point-MAE FPS centres and k-NN group size.
    point_mae_bn: "sample" (per-sample batch statistics, the reference's train-mode behaviour at
    batch 1, made batch-independent) or "running" (standard eval mode).
    transforms: "reference" keeps the authors' transforms, quirks included (RGB square-padded but
    xyz stretched); "aligned" pads xyz the same way as RGB so they stay pixel-aligned.
    """

    grid_size: int = 224
    rgb_size: int = 224
    vit_name: str = "vit_base_patch8_224.dino"
    num_group: int = 1024
    group_size: int = 128
    point_mae_bn: str = "sample"
    transforms: str = "reference"

    def validate(self) -> None:
        if self.grid_size < 8:
            raise ConfigError(f"grid_size must be >= 8, got {self.grid_size}")
        if self.rgb_size % 8:
            raise ConfigError(f"rgb_size must be a multiple of the ViT patch size 8, got {self.rgb_size}")
        if self.group_size < 1 or self.num_group < 1:
            raise ConfigError("num_group and group_size must be positive")
        if self.point_mae_bn not in BN_MODES:
            raise ConfigError(f"point_mae_bn must be one of {BN_MODES}, got {self.point_mae_bn!r}")
        if self.transforms not in TRANSFORM_MODES:
            raise ConfigError(f"transforms must be one of {TRANSFORM_MODES}, got {self.transforms!r}")


@dataclass(frozen=True)
class HeadsConfig:
    """Trainable heads. Decoder2D works on the G×G grid, Decoder3D on G² tokens."""

    dim2d: int = 768
    dim3d: int = 1152
    num_heads: int = 8
    window_size: int = 128


@dataclass(frozen=True)
class TrainConfig:
    """Each head is trained with its own optimiser (no joint loss), as in the paper."""

    epochs: int = 50
    lr: float = 1e-3
    batch_size: int = 1
    optimizer: str = "adam"
    weight_decay: float = 0.0
    seed: int = 42
    precision: str = "fp32"  # "bf16": the heads' forward under autocast (fp32 weights and Adam)

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"train.precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")


@dataclass(frozen=True)
class ScoreConfig:
    """Scoring: fusion variant (see `cmdr_iad.model.fusion.VARIANTS`), temperature B and the
    smoothing of the maps: "grid" (default) scales the reference's box-filter chains to the grid
    (`model.fusion.grid_chain`; identical to "pixels" at G = 224), "pixels" applies them in grid
    pixels whatever the grid (the reference code; models saved before this field existed)."""

    variant: str = "full"
    temperature: float = 0.3
    smoothing: str = "grid"

    def validate(self) -> ScoreConfig:
        if self.smoothing not in SMOOTHING:
            raise ConfigError(f"score.smoothing must be one of {SMOOTHING}, got {self.smoothing!r}")
        return self


@dataclass(frozen=True)
class DetectorConfig:
    preset: str = "paper"
    modality: str = "rgb+xyz"
    features: FeatureConfig = field(default_factory=FeatureConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)

    @property
    def uses_rgb(self) -> bool:
        return self.modality in ("rgb+xyz", "rgb")

    @property
    def uses_xyz(self) -> bool:
        return self.modality in ("rgb+xyz", "xyz")

    def validate(self) -> DetectorConfig:
        if self.modality not in MODALITIES:
            raise ConfigError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        self.features.validate()
        self.train.validate()
        self.score.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorConfig:
        try:
            return cls(
                preset=d["preset"],
                modality=d["modality"],
                features=FeatureConfig(**d.get("features", {})),
                heads=HeadsConfig(**d.get("heads", {})),
                train=TrainConfig(**d.get("train", {})),
                score=ScoreConfig(**d.get("score", {})),
            ).validate()
        except (KeyError, TypeError) as e:
            raise ConfigError(f"invalid detector config: {e}") from e

    def replace(self, **changes: Any) -> DetectorConfig:
        """`cfg.replace(train={"epochs": 2})` → a copy with the nested fields changed."""
        out: dict[str, Any] = {}
        for k, v in changes.items():
            cur = getattr(self, k)
            out[k] = dataclasses.replace(cur, **v) if isinstance(v, dict) else v
        return dataclasses.replace(self, **out).validate()
