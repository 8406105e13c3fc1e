"""Cache-backed samples for training and calibration: extract each sample's features once into
the on-disk `FeatureCache`, then serve them as training batches or as token sources.

- :func:`sample_key` — the cache key of a raw sample (SHA-256 over its arrays);
- :func:`cache_features` — every sample of a dataset extracted (or found) in the cache;
- :class:`CachedSampleStore` — the `training.FeatureStore` over those entries (memory-mapped,
  read per batch);
- :func:`entry_rows` — one entry as the `SampleRows` the inference path scores.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserInputError
from ..fileio import hash_bytes
from ..progress import progress
from .extractor import F3D_DIM, Features, SampleRows

__all__ = ["sample_key", "open_cache", "cache_features", "CachedSampleStore", "entry_rows"]


def sample_key(sample: Any) -> str:
    """Cache key of a raw sample: SHA-256 over its arrays (content, shape, dtype)."""
    parts = [b"cmdr-iad-raw-sample-v1"]
    for a in (sample.rgb, sample.xyz):
        if a is None:
            parts.append(b"<none>")
        else:
            a = np.ascontiguousarray(a)
            parts.append(f"{a.dtype.str}{a.shape}".encode())
            parts.append(a.tobytes())
    return hash_bytes(*parts)


@contextmanager
def open_cache(cache_dir: str | Path | None = None, cache: Any = None) -> Iterator[Any]:
    """The `FeatureCache` to use: ``cache`` when given, else one at ``cache_dir``, else one in a
    temporary folder that is deleted afterwards."""
    from .cache import FeatureCache

    if cache is not None:
        yield cache
        return
    if cache_dir is not None:
        yield FeatureCache(cache_dir)
        return
    tmp = Path(tempfile.mkdtemp(prefix="cmdr-iad-features-"))
    try:
        yield FeatureCache(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _has_points(xyz: torch.Tensor) -> bool:
    """(3, G, G) organised cloud → at least one grid point with every coordinate non-zero."""
    return bool((xyz != 0).all(dim=0).any())


def cache_features(extractor: Any, dataset: Sequence[Any], cache: Any,
                   transform: Callable[[Any], Any], *, batch_size: int = 1,
                   show_progress: bool = False, what: str = "train") -> list[Any]:
    """The cached features (`CachedFeatures`) of every sample of ``dataset``, in order.

    Samples not yet in ``cache`` are transformed (``transform``: raw `Sample` →
    `TransformedSample`) and extracted in batches of ``batch_size``. A sample whose cloud has no
    valid point is stored with all-invalid 3D features (training skips and counts it).
    """
    key = extractor.cache_key()
    entries: list[Any] = []
    batch: list[tuple[int, str, Any]] = []
    bs = max(1, int(batch_size))

    with progress(len(dataset), f"features ({what})", enabled=show_progress) as bar:
        def flush() -> None:
            if not batch:
                return
            rgb = torch.stack([b[2].rgb for b in batch]) if extractor.uses_rgb else None
            xyz = torch.stack([b[2].xyz for b in batch]) if extractor.uses_xyz else None
            feats = extractor.extract(rgb, xyz)
            for (i, k, _), f in zip(batch, feats.split(), strict=True):
                entries[i] = cache.put(k, key, f)
                bar.advance()
            batch.clear()

        for i in range(len(dataset)):
            s = dataset[i]
            k = sample_key(s)
            entries.append(cache.get(k, key))
            if entries[-1] is not None:
                bar.advance()
                continue
            ts = transform(s)
            name = getattr(s, "key", None) or i
            if extractor.uses_rgb and ts.rgb is None:
                raise UserInputError(f"{what} sample {name} has no RGB image "
                                     f"(the model's modality is {extractor.modality})")
            if extractor.uses_xyz and ts.xyz is None:
                raise UserInputError(f"{what} sample {name} has no point cloud "
                                     f"(the model's modality is {extractor.modality})")
            if extractor.uses_xyz and not _has_points(ts.xyz):
                entries[i] = cache.put(k, key, _empty_3d(extractor, ts), identity=extractor.identity)
                bar.advance()
                continue
            batch.append((i, k, ts))
            if len(batch) >= bs:
                flush()
        flush()
    return entries


def _empty_3d(extractor: Any, ts: Any) -> Features:
    """Features of a sample whose cloud has no valid point: its F2D (if used), zero F3D, no
    valid pixel."""
    g = extractor.cfg.grid_size
    f2d = None
    if extractor.uses_rgb:
        from .vit import rgb_feature_map

        with torch.no_grad():
            f2d = rgb_feature_map(extractor.vit, ts.rgb[None].to(extractor.device, torch.float32), g)
    return Features(f2d, torch.zeros(1, F3D_DIM, g, g), torch.zeros(1, g, g, dtype=torch.bool))


class CachedSampleStore:
    """`training.FeatureStore` over cached entries (memory-mapped, read per batch)."""

    def __init__(self, entries: Sequence[Any], modality: str):
        self.entries = list(entries)
        self.modality = modality

    def __len__(self) -> int:
        return len(self.entries)

    def valid(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.entries[index].valid, dtype=bool))

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor | None]:
        es = [self.entries[i] for i in indices]

        def stack(name: str) -> torch.Tensor | None:
            arrs = [getattr(e, name) for e in es]
            if arrs[0] is None:
                return None
            return torch.from_numpy(np.stack([np.asarray(a, dtype=np.float32) for a in arrs]))

        return {"f2d": stack("f2d") if self.modality != "xyz" else None,
                "f3d": stack("f3d") if self.modality != "rgb" else None,
                "valid": torch.from_numpy(np.stack([np.array(e.valid, dtype=bool) for e in es]))}


def entry_rows(entry: Any, device: torch.device | str = "cpu") -> SampleRows:
    """A cached entry as token sources (dense maps read into memory) for the inference path."""
    from ..model.tokens import DenseRows

    f = entry.to_features(device)
    return SampleRows(None if f.f2d is None else DenseRows(f.f2d[0]),
                      None if f.f3d is None else DenseRows(f.f3d[0]), f.valid[0])
