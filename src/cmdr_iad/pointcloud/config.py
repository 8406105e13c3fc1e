"""Configuration of the raw-scan 3D-only pipeline (paper §3.6, §4.2, §5.2, Table 8).

`BuildConfig` describes how scans become a chunk dataset (outlier detector, contamination level,
chunk size, label threshold τ, split); `ScanModelConfig` describes the model trained on it
(Point-MAE grouping, BatchNorm mode, Decoder3D, optimiser, scoring). Both are frozen and
round-trip through plain dicts (stored in `build.json` and in the saved model).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, UserInputError

DETECTORS = ("iso", "lof", "hybrid")
LEVELS: dict[str, float] = {"low": 1e-4, "high": 1.5e-4}  # paper §5.5.3
PAPER_CHUNK_SIZES = (9216, 4096)
TAU = 0.0025  # a chunk is abnormal when its outlier fraction f_k >= τ (paper §4.2)
MODEL_PRESETS = ("paper", "small", "tiny")
BN_MODES = ("sample", "running")
FEATURE_DIM = 1152  # Point-MAE blocks 4/8/12 concatenated (3 × 384)


def check_contamination(value: float) -> float:
    """Contamination must lie in (0, 0.5] (scikit-learn's range); raises UserInputError."""
    try:
        c = float(value)
    except (TypeError, ValueError) as e:
        raise UserInputError(f"contamination must be a number in (0, 0.5], got {value!r}") from e
    if not (0.0 < c <= 0.5) or math.isnan(c):
        raise UserInputError(f"contamination must be in (0, 0.5], got {value!r}")
    return c


def chunk_side(chunk_size: int) -> int:
    """Side s of the s×s pseudo-image of a chunk of `chunk_size` points.

    The chunk size must be a perfect square (pure reshape, no padding) and s must be a multiple
    of 8, so that Decoder3D's token projection (L → L/32) reconstructs exactly L tokens.
    9216 = 96², 4096 = 64², 1024 = 32² (tiny preset) all qualify.
    """
    n = int(chunk_size)
    s = math.isqrt(n) if n > 0 else 0
    if n < 64 or s * s != n or s % 8:
        raise UserInputError(
            f"chunk size {chunk_size} is not supported: it must be a perfect square s*s with s a "
            "multiple of 8 (e.g. 9216 = 96², 4096 = 64², 1024 = 32²)")
    return s


@dataclass(frozen=True)
class BuildConfig:
    """How raw scans become the chunk dataset.

    contamination: explicit outlier fraction; None means the paper value of `level`.
    test_fraction: share of the *normal* chunks moved to the test set (all abnormal chunks go
    to test); the split is `sklearn.model_selection.train_test_split(..., random_state=seed)`.
    """

    detector: str = "iso"
    chunk_size: int = 9216
    level: str = "low"
    contamination: float | None = None
    tau: float = TAU
    test_fraction: float = 0.1
    seed: int = 42
    n_estimators: int = 200
    n_neighbors: int = 30

    @property
    def resolved_contamination(self) -> float:
        return float(self.contamination) if self.contamination is not None else LEVELS[self.level]

    def validate(self) -> BuildConfig:
        if self.detector not in DETECTORS:
            raise UserInputError(f"detector must be one of {DETECTORS}, got {self.detector!r}")
        if self.level not in LEVELS:
            raise UserInputError(f"level must be one of {tuple(LEVELS)}, got {self.level!r}")
        check_contamination(self.resolved_contamination)
        chunk_side(self.chunk_size)
        if not (0.0 < self.tau <= 1.0):
            raise UserInputError(f"tau must be in (0, 1], got {self.tau}")
        if not (0.0 < self.test_fraction < 1.0):
            raise UserInputError(f"test fraction must be in (0, 1), got {self.test_fraction}")
        if self.n_estimators < 1 or self.n_neighbors < 1:
            raise UserInputError("n_estimators and n_neighbors must be >= 1")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["resolved_contamination"] = self.resolved_contamination
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BuildConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in names}).validate()
        except TypeError as e:
            raise ConfigError(f"invalid build config: {e}") from e


@dataclass(frozen=True)
class ScanModelConfig:
    """Point-MAE (frozen) + Decoder3D(n, 1152) on √n×√n pseudo-images of n-point chunks.

    point_mae_bn: "sample" (per-sample batch statistics, as the reference runs its encoder) or
    "running" (eval mode; what the golden arrays use).
    threshold_sigmas: the decision threshold is mean + k·std of the image scores of the
    training chunks (computed after training, in eval mode).
    """

    preset: str = "paper"
    chunk_size: int = 9216
    num_group: int = 96
    group_size: int = 32
    point_mae_bn: str = "sample"
    feature_dim: int = FEATURE_DIM
    epochs: int = 50
    lr: float = 1e-3
    batch_size: int = 4
    weight_decay: float = 0.01  # torch.optim.AdamW default, as in the reference
    seed: int = 42
    box5_passes: int = 1
    box7_passes: int = 0
    threshold_sigmas: float = 3.0
    feature_dtype: str = "float32"

    @property
    def side(self) -> int:
        return chunk_side(self.chunk_size)

    def validate(self) -> ScanModelConfig:
        if self.preset not in MODEL_PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; choose one of {', '.join(MODEL_PRESETS)}")
        chunk_side(self.chunk_size)
        if self.num_group < 1 or self.group_size < 1:
            raise ConfigError("num_group and group_size must be positive")
        if self.group_size > self.chunk_size or self.num_group > self.chunk_size:
            raise ConfigError(
                f"num_group ({self.num_group}) and group_size ({self.group_size}) cannot exceed "
                f"the chunk size ({self.chunk_size})")
        if self.point_mae_bn not in BN_MODES:
            raise ConfigError(f"point_mae_bn must be one of {BN_MODES}, got {self.point_mae_bn!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.box5_passes < 0 or self.box7_passes < 0:
            raise ConfigError("box filter passes must be >= 0")
        if self.feature_dtype not in ("float32", "float16"):
            raise ConfigError(f"feature_dtype must be float32 or float16, got {self.feature_dtype!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScanModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in names}).validate()
        except TypeError as e:
            raise ConfigError(f"invalid scan model config: {e}") from e

    def replace(self, **changes: Any) -> ScanModelConfig:
        return dataclasses.replace(self, **changes).validate()


def model_preset(name: str, chunk_size: int = 9216) -> ScanModelConfig:
    """`paper`: 96 groups of 32, AdamW lr 1e-3, batch 4, 50 epochs (paper §5.2);
    `small`: 64×32, 10 epochs; `tiny`: 32×16, 2 epochs (CPU tests, e.g. 1024-point chunks)."""
    table = {
        "paper": dict(num_group=96, group_size=32, epochs=50),
        "small": dict(num_group=64, group_size=32, epochs=10),
        "tiny": dict(num_group=32, group_size=16, epochs=2),
    }
    if name not in table:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(MODEL_PRESETS)}")
    return ScanModelConfig(preset=name, chunk_size=int(chunk_size), **table[name]).validate()
