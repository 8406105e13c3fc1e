"""Frozen Point-MAE features of chunk pseudo-images (paper §3.6: F^3D = E_3D(P^3D)).

A normalised chunk (n, 3) is reshaped to its s×s pseudo-image and passed through the
multimodal extractor in 3D-only mode (`FeatureExtractor(cfg, "xyz")`: drop zero-coordinate
points, FPS/kNN groups, Point-MAE, 3-NN interpolation, scatter, 3×3 average, adaptive average
back to s×s), giving F3D (1152, s, s). Training extracts every chunk once, either into memory or
into the on-disk `FeatureCache` keyed by the chunk's bytes and the extractor identity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..config import FeatureConfig
from ..features.cache import CachedFeatures, FeatureCache, hash_bytes
from ..features.extractor import FeatureExtractor
from .chunking import to_pseudo_image
from .config import ScanModelConfig


def feature_config(cfg: ScanModelConfig) -> FeatureConfig:
    """The extractor config of a scan model: grid s = √n, Point-MAE grouping, BN mode."""
    return FeatureConfig(grid_size=cfg.side, num_group=cfg.num_group, group_size=cfg.group_size,
                         point_mae_bn=cfg.point_mae_bn)


def make_extractor(cfg: ScanModelConfig, *, point_mae_weights: str | None = None,
                   random_backbones: bool = False, seed: int = 0, device: str | torch.device = "cpu",
                   allow_download: bool | None = None) -> FeatureExtractor:
    """A 3D-only extractor; weights resolved by `features.weights` (random only on request)."""
    return FeatureExtractor(feature_config(cfg), "xyz", point_mae_weights=point_mae_weights,
                            random_backbones=random_backbones, seed=seed, device=device,
                            allow_download=allow_download)


def tokens(f3d: torch.Tensor) -> torch.Tensor:
    """(B, C, s, s) → (B, s·s, C), row-major: token n is pixel (n // s, n % s) = point n."""
    return f3d.flatten(2).transpose(1, 2)


@torch.no_grad()
def chunk_features(extractor: FeatureExtractor, chunks_norm: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(B, n, 3) normalised chunks → F3D (B, 1152, s, s) on the extractor's device.

    One batched call; chunks may have different numbers of valid points (the extractor pads
    and masks), and the result equals per-chunk calls (the reference runs at batch size 1).
    """
    return extractor.extract(xyz=to_pseudo_image(chunks_norm)).f3d


def chunk_key(chunk_norm: np.ndarray) -> str:
    """Cache key of one normalised chunk: SHA-256 of its float32 bytes and shape."""
    a = np.ascontiguousarray(chunk_norm, dtype=np.float32)
    return hash_bytes(b"cmdr-iad-pointcloud-chunk-v1", str(a.shape).encode(), a.tobytes())


class ChunkFeatureStore:
    """Random access to the features of a chunk set (the `training.FeatureStore` protocol).

    Holds either an in-memory tensor (K, C, s, s) or a list of memory-mapped cache entries.
    `valid` is the reference rule: a pixel is valid when its feature channels do not sum to 0.
    """

    def __init__(self, f3d: torch.Tensor | None = None, entries: Sequence[CachedFeatures] | None = None):
        if (f3d is None) == (entries is None):
            raise ValueError("give either in-memory features or cache entries")
        self._f3d = f3d
        self._entries = list(entries) if entries is not None else None
        self._valid: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._entries) if self._entries is not None else int(self._f3d.shape[0])

    def f3d(self, index: int) -> torch.Tensor:
        if self._entries is not None:
            return torch.from_numpy(np.array(self._entries[index].f3d, dtype=np.float32))
        return self._f3d[index].float()

    def valid(self, index: int) -> torch.Tensor:
        if index not in self._valid:
            self._valid[index] = self.f3d(index).sum(0) != 0
        return self._valid[index]

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor | None]:
        f = torch.stack([self.f3d(i) for i in indices])
        return {"f2d": None, "f3d": f, "valid": f.sum(1) != 0}


def extract_chunks(extractor: FeatureExtractor, chunks_norm: np.ndarray, *, batch_size: int = 8,
                   cache: FeatureCache | None = None,
                   on_batch: Callable[[int], None] | None = None) -> ChunkFeatureStore:
    """Features of every chunk (K, n, 3), computed once: in memory, or through `cache`
    (hits are read back memory-mapped, misses extracted in batches and stored atomically).
    `on_batch(k)` is called after each group of k chunks (progress)."""
    k = len(chunks_norm)
    if cache is None:
        parts = []
        for b0 in range(0, k, batch_size):
            parts.append(chunk_features(extractor, chunks_norm[b0:b0 + batch_size]).cpu())
            if on_batch:
                on_batch(len(parts[-1]))
        return ChunkFeatureStore(f3d=torch.cat(parts) if parts else torch.zeros(0))
    ekey = extractor.cache_key()
    keys = [chunk_key(c) for c in chunks_norm]
    entries: list[CachedFeatures | None] = [cache.get(key, ekey) for key in keys]
    hits = sum(e is not None for e in entries)
    if on_batch and hits:
        on_batch(hits)
    missing = [i for i, e in enumerate(entries) if e is None]
    for b0 in range(0, len(missing), batch_size):
        idx = missing[b0:b0 + batch_size]
        feats = extractor.extract(xyz=to_pseudo_image(np.stack([chunks_norm[i] for i in idx])))
        for i, e in zip(idx, cache.put_batch([keys[i] for i in idx], ekey, feats.to("cpu")), strict=True):
            entries[i] = e
        if on_batch:
            on_batch(len(idx))
    return ChunkFeatureStore(entries=entries)  # type: ignore[arg-type]
