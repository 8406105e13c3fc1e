"""Cache-backed samples for training and calibration: extract each sample's compact features
once into the on-disk `CompactCache`, then serve them as training batches or as token sources.

- :func:`sample_key` — the key of a raw sample (SHA-256 over its arrays; run fingerprints);
- :func:`array_key` — the cache key of one encoder's input (the RGB or the xyz array);
- :func:`cache_features` — every sample of a dataset extracted (or found) in the cache, each
  encoder run only on the samples it has no entry for;
- :class:`CachedSampleStore` — the `training.FeatureStore` over those entries (dense maps
  rebuilt per batch, `features.compact`);
- :func:`entry_rows` — one entry as the `SampleRows` the inference path scores;
- :func:`expected_cache_bytes` / :func:`check_cache_space` — the size check before training.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserInputError
from ..fileio import hash_bytes
from ..progress import progress
from .compact import Points3D, Tokens2D, compact_nbytes, dense_f2d, dense_f3d
from .extractor import F3D_DIM, Features, SampleRows
from .points3d import Interpolation

__all__ = ["sample_key", "array_key", "open_cache", "cache_features", "SampleEntry",
           "CachedSampleStore", "entry_rows", "expected_cache_bytes", "check_cache_space"]


def _array_parts(a: Any) -> list[bytes]:
    if a is None:
        return [b"<none>"]
    a = np.ascontiguousarray(a)
    return [f"{a.dtype.str}{a.shape}".encode(), a.tobytes()]


def sample_key(sample: Any) -> str:
    """Key of a raw sample: SHA-256 over its arrays (content, shape, dtype)."""
    return hash_bytes(b"cmdr-iad-raw-sample-v1", *_array_parts(sample.rgb), *_array_parts(sample.xyz))


def array_key(a: Any) -> str:
    """Cache key of one encoder input: SHA-256 over the raw array (content, shape, dtype)."""
    return hash_bytes(b"cmdr-iad-raw-array-v1", *_array_parts(a))


@contextmanager
def open_cache(cache_dir: str | Path | None = None, cache: Any = None, *,
               dtype: str = "float32") -> Iterator[Any]:
    """The `CompactCache` to use: ``cache`` when given, else one at ``cache_dir``, else one in a
    temporary folder that is deleted afterwards."""
    from .cache import CompactCache

    if cache is not None:
        yield cache
        return
    if cache_dir is not None:
        yield CompactCache(cache_dir, dtype=dtype)
        return
    tmp = Path(tempfile.mkdtemp(prefix="cmdr-iad-features-"))
    try:
        yield CompactCache(tmp, dtype=dtype)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class SampleEntry:
    """One sample's cached compact features: f2d (`Tokens2D`) / f3d (`Points3D`) or None when
    the model does not use that encoder; grid: the side G of the maps to rebuild."""

    sample_key: str
    f2d: Tokens2D | None
    f3d: Points3D | None
    grid: int

    @property
    def valid(self) -> torch.Tensor:
        """(G, G) bool valid-pixel mask (all True without 3D)."""
        if self.f3d is None:
            return torch.ones(self.grid, self.grid, dtype=torch.bool)
        return self.f3d.valid.to(torch.bool)

    def to_features(self, device: str | torch.device = "cpu") -> Features:
        """A batch-1 `Features` with the dense float32 maps rebuilt on `device`."""
        f2d = None if self.f2d is None else dense_f2d([self.f2d], self.grid, device)
        f3d = None if self.f3d is None else dense_f3d([self.f3d], device)
        return Features(f2d, f3d, self.valid[None].to(device))


def _has_points(xyz: torch.Tensor) -> bool:
    """(3, G, G) organised cloud → at least one grid point with every coordinate non-zero."""
    return bool((xyz != 0).all(dim=0).any())


def _empty_points(g: int) -> Points3D:
    """A cloud without a valid point: no group features, no point, no valid pixel."""
    e = torch.zeros(3, 0, dtype=torch.long)
    return Points3D(torch.zeros(F3D_DIM, 0), Interpolation(e, torch.zeros(3, 0), torch.zeros(0, dtype=torch.long)),
                    torch.zeros(g, g, dtype=torch.bool))


def cache_features(extractor: Any, dataset: Sequence[Any], cache: Any,
                   transform: Callable[[Any], Any], *, batch_size: int = 1,
                   show_progress: bool = False, what: str = "train") -> list[SampleEntry]:
    """The cached compact features (`SampleEntry`) of every sample of ``dataset``, in order.

    Each encoder runs, in batches of ``batch_size``, only on the samples without an entry of
    its own (an RGB+3D model reuses the ViT entries of an RGB-only model on the same data).
    A cloud without any valid point is stored as empty (all-invalid; training skips it).
    """
    g = extractor.cfg.grid_size
    kinds = [k for k, used in (("vit", extractor.uses_rgb), ("point_mae", extractor.uses_xyz)) if used]
    ekeys = {k: extractor.encoder_key(k) for k in kinds}
    idents = {k: extractor.encoder_identity(k) for k in kinds}
    found: dict[str, list[Any]] = {k: [None] * len(dataset) for k in kinds}
    pending: dict[str, list[tuple[int, str, torch.Tensor]]] = {k: [] for k in kinds}
    bs = max(1, int(batch_size))
    skeys: list[str] = []

    with progress(len(dataset), f"features ({what})", enabled=show_progress) as bar:
        def flush(kind: str) -> None:
            batch = pending[kind]
            if not batch:
                return
            x = torch.stack([b[2] for b in batch])
            if kind == "vit":
                items: list[Any] = [Tokens2D(t) for t in extractor.extract_tokens(x).cpu()]
            else:
                items = extractor.extract_points(x)
            for (i, k, _), item in zip(batch, items, strict=True):
                found[kind][i] = cache.put(kind, ekeys[kind], k, item, identity=idents[kind])
            batch.clear()

        for i in range(len(dataset)):
            s = dataset[i]
            skeys.append(sample_key(s))
            keys = {"vit": array_key(s.rgb), "point_mae": array_key(s.xyz)}
            missing = []
            for kind in kinds:
                found[kind][i] = cache.get(kind, ekeys[kind], keys[kind])
                if found[kind][i] is None:
                    missing.append(kind)
            if missing:
                ts = transform(s)
                name = getattr(s, "key", None) or i
                for kind in missing:
                    x = ts.rgb if kind == "vit" else ts.xyz
                    if x is None:
                        raise UserInputError(
                            f"{what} sample {name} has no {'RGB image' if kind == 'vit' else 'point cloud'} "
                            f"(the model's modality is {extractor.modality})")
                    if kind == "point_mae" and not _has_points(x):
                        found[kind][i] = cache.put(kind, ekeys[kind], keys[kind], _empty_points(g),
                                                   identity=idents[kind])
                        continue
                    pending[kind].append((i, keys[kind], x))
                    if len(pending[kind]) >= bs:
                        flush(kind)
            bar.advance()
        for kind in kinds:
            flush(kind)
    get = {k: found.get(k, [None] * len(dataset)) for k in ("vit", "point_mae")}
    return [SampleEntry(skeys[i], get["vit"][i], get["point_mae"][i], g) for i in range(len(dataset))]


class CachedSampleStore:
    """`training.FeatureStore` over cached compact entries: the dense float32 maps of a batch
    are rebuilt when it is read (bit-identical to extraction for float32 entries)."""

    def __init__(self, entries: Sequence[SampleEntry], modality: str):
        self.entries = list(entries)
        self.modality = modality

    def __len__(self) -> int:
        return len(self.entries)

    def valid(self, index: int) -> torch.Tensor:
        return self.entries[index].valid

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor | None]:
        """{"f2d": (B, 768, G, G) | None, "f3d": (B, 1152, G, G) | None, "valid": (B, G, G)}."""
        es = [self.entries[i] for i in indices]
        f2d = f3d = None
        if self.modality != "xyz":
            f2d = dense_f2d([e.f2d for e in es], es[0].grid)
        if self.modality != "rgb":
            f3d = dense_f3d([e.f3d for e in es])
        return {"f2d": f2d, "f3d": f3d, "valid": torch.stack([e.valid for e in es])}


def entry_rows(entry: SampleEntry, device: torch.device | str = "cpu") -> SampleRows:
    """A cached entry as token sources (dense maps rebuilt in memory) for the inference path."""
    from ..model.tokens import DenseRows

    f = entry.to_features(device)
    return SampleRows(None if f.f2d is None else DenseRows(f.f2d[0]),
                      None if f.f3d is None else DenseRows(f.f3d[0]), f.valid[0])


def expected_cache_bytes(cfg: Any, modality: str, n_samples: int, *, dtype: str = "float32",
                         valid_fraction: float = 1.0) -> int:
    """Upper estimate of the bytes ``n_samples`` new entries of a ``modality`` model with feature
    config ``cfg`` (`FeatureConfig`) take: every pixel valid by default, ~4 KiB of file headers
    and metadata per entry. Needs no extractor (no backbone is loaded)."""
    uses_rgb, uses_xyz = modality in ("rgb", "rgb+xyz"), modality in ("xyz", "rgb+xyz")
    per = compact_nbytes(cfg.grid_size, tokens=cfg.rgb_size // 8, num_group=cfg.num_group,
                         valid_fraction=valid_fraction, uses_rgb=uses_rgb, uses_xyz=uses_xyz,
                         float_bytes=2 if dtype == "float16" else 4)
    n_entries = int(uses_rgb) + int(uses_xyz)
    return int(n_samples) * (per + 4096 * n_entries)


def check_cache_space(cache_dir: str | Path, nbytes: int) -> int:
    """Free bytes of the filesystem that holds ``cache_dir`` (its nearest existing ancestor);
    raises `UserInputError` (one line naming the folder) when fewer than ``nbytes``."""
    p = Path(cache_dir)
    probe = p
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < nbytes:
        raise UserInputError(f"not enough free space for the feature cache in {p}: "
                             f"{nbytes / 1e6:.0f} MB expected, {free / 1e6:.0f} MB free "
                             "(free space or pass --cache-dir on another disk)")
    return free
