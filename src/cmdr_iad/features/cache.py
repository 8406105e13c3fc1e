"""On-disk feature caches: the compact per-encoder store (:class:`CompactCache`, what the
detector uses) and the dense store (:class:`FeatureCache`, the point-cloud scan models).

Compact store (format 2): one entry per sample and encoder, holding what the encoder computes
(see `features.compact`); the dense maps are rebuilt on read. Layout::

    root/v2-vit-<encoder key>-<f32|f16>/identity.json
    root/v2-vit-<encoder key>-<f32|f16>/<rgb bytes key>/tokens.npy   (768,h,w)
                                                        meta.json
    root/v2-point_mae-<encoder key>-<f32|f16>/<xyz bytes key>/features.npy (1152,groups)
                                                              idx.npy  (3,n) int16|int32
                                                              wts.npy  (3,n)
                                                              pix.npy  (n,) int32
                                                              valid.npy (G,G) bool
                                                              meta.json

The encoder key is `FeatureExtractor.encoder_key` (that encoder's config, weights and BN mode
only), the sample key a SHA-256 of that encoder's input array, so RGB-only and RGB+3D models on
the same data share their ViT entries. Entries are written in a staging folder
(`fileio.staging_folder`) and appear complete or not at all; on read every file is checked
against the sizes, shapes and dtypes in `meta.json` (and its SHA-256 with `verify=True`), and a
damaged entry is deleted and treated as missing.

Dense store (format 1):

Features are pure functions of (input file contents, extractor cache key), so each sample is
extracted once and reused across epochs and runs. Layout::

    root/<extractor key>-<f32|f16>/identity.json          what produced the entries
    root/<extractor key>-<f32|f16>/<sample key>/f2d.npy  (768,G,G)   memory-mappable
                                                 f3d.npy  (1152,G,G)
                                                 valid.npy (G,G) bool
                                                 meta.json shapes, dtypes, byte sizes, SHA-256

An entry is written into a temporary folder and renamed into place only when complete, so a
crash never leaves a half-written entry under its final name. On read, every file is checked
against the sizes, shapes and dtypes recorded in `meta.json` (and, with `verify=True`, its
SHA-256); a damaged entry is deleted and treated as missing. Any change of the extractor key
(config, weights, feature version) or of the input files' bytes selects another entry.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserInputError
from ..fileio import file_sha256, hash_bytes, staging_folder, write_json_atomic
from .compact import Points3D, Tokens2D
from .extractor import Features
from .points3d import Interpolation

__all__ = ["FeatureCache", "CachedFeatures", "CompactCache", "ENCODER_KINDS", "hash_files",
           "hash_bytes", "cache_summary", "classify_folder"]

CACHE_FORMAT = 1
_DTYPES = {"float32": np.float32, "float16": np.float16}
_ARRAYS = ("f2d", "f3d", "valid")


def hash_files(paths: Iterable[str | os.PathLike | None], extra: str = "") -> str:
    """Sample key: SHA-256 over the contents of `paths` in order (names do not matter).

    `None` entries (e.g. no RGB file in 3D-only mode) are recorded as absent; `extra` adds any
    per-sample parameter that changes the extractor input but is not in the extractor config.
    """
    parts: list[bytes] = [b"cmdr-iad-sample-v1", extra.encode()]
    for p in paths:
        if p is None:
            parts.append(b"<none>")
            continue
        try:
            parts.append(bytes.fromhex(file_sha256(p)))
        except OSError as e:
            raise UserInputError(f"cannot read {p} to hash it for the feature cache: {e}") from e
    return hash_bytes(*parts)


@dataclass
class CachedFeatures:
    """One cached sample: read-only memory-mapped arrays (no batch axis).

    f2d: (768,G,G) or None; f3d: (1152,G,G) or None; valid: (G,G) bool.
    """

    sample_key: str
    path: Path
    f2d: np.ndarray | None
    f3d: np.ndarray | None
    valid: np.ndarray

    def to_features(self, device: str | torch.device = "cpu",
                    identity: dict[str, Any] | None = None) -> Features:
        """A batch-1 `Features` in float32 on `device` (copies the data into memory)."""
        def t(a):
            return None if a is None else torch.from_numpy(np.array(a, dtype=np.float32))[None].to(device)

        valid = torch.from_numpy(np.array(self.valid, dtype=bool))[None].to(device)
        return Features(t(self.f2d), t(self.f3d), valid, dict(identity or {}))


def load_checked(f: Path, info: dict[str, Any], verify: bool, mmap_mode: str) -> np.ndarray:
    """A memory-mapped ``.npy`` entry file, checked against its ``meta.json`` record (byte size,
    shape, dtype and, with ``verify``, SHA-256); ValueError names the file when it differs."""
    if f.stat().st_size != info["nbytes_file"]:
        raise ValueError(f"{f} has the wrong size (truncated?)")
    if verify and file_sha256(f) != info["sha256"]:
        raise ValueError(f"{f} fails its checksum")
    a = np.load(f, mmap_mode=mmap_mode, allow_pickle=False)
    if list(a.shape) != info["shape"] or a.dtype.str != info["dtype"]:
        raise ValueError(f"{f} has an unexpected shape or dtype")
    return a


class FeatureCache:
    """A folder of cached per-sample features; see the module docstring.

    `dtype` is the storage precision ("float32" default, "float16" halves the disk use);
    entries of different precisions never mix. `verify=True` also checks each file's SHA-256
    on every read (slow for paper-size features; sizes, shapes and dtypes are always checked).
    """

    def __init__(self, root: str | os.PathLike, *, dtype: str = "float32", verify: bool = False):
        if dtype not in _DTYPES:
            raise UserInputError(f"feature cache dtype must be one of {tuple(_DTYPES)}, got {dtype!r}")
        self.root = Path(root)
        self.dtype = dtype
        self.verify = verify

    # ------------------------------------------------------------------ paths

    def folder(self, extractor_key: str) -> Path:
        _check_key(extractor_key, "extractor key")
        return self.root / f"{extractor_key}-{'f16' if self.dtype == 'float16' else 'f32'}"

    def entry_path(self, sample_key: str, extractor_key: str) -> Path:
        _check_key(sample_key, "sample key")
        return self.folder(extractor_key) / sample_key

    # ------------------------------------------------------------------ read

    def get(self, sample_key: str, extractor_key: str) -> CachedFeatures | None:
        """The cached entry, or None when absent or damaged (a damaged entry is removed)."""
        path = self.entry_path(sample_key, extractor_key)
        if not path.is_dir():
            return None
        try:
            return self._read(sample_key, path)
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            shutil.rmtree(path, ignore_errors=True)
            return None

    def __contains__(self, keys: tuple[str, str]) -> bool:
        return self.get(*keys) is not None

    def _read(self, sample_key: str, path: Path) -> CachedFeatures:
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("format") != CACHE_FORMAT or meta.get("sample_key") != sample_key:
            raise ValueError("cache entry metadata does not match")
        arrays: dict[str, np.ndarray | None] = {}
        for name in _ARRAYS:
            info = meta["arrays"].get(name)
            if info is None:
                arrays[name] = None
                continue
            arrays[name] = load_checked(path / f"{name}.npy", info, self.verify, "r")
        if arrays["valid"] is None:
            raise ValueError("cache entry without a valid mask")
        return CachedFeatures(sample_key, path, arrays["f2d"], arrays["f3d"], arrays["valid"])

    # ------------------------------------------------------------------ write

    def put(self, sample_key: str, extractor_key: str, features: Features,
            identity: dict[str, Any] | None = None) -> CachedFeatures:
        """Store one sample (`features` of batch 1) atomically; returns the stored entry."""
        if features.batch_size != 1:
            raise UserInputError(f"put() stores one sample; got a batch of {features.batch_size} "
                                 "(use put_batch)")
        final = self.entry_path(sample_key, extractor_key)
        folder = final.parent
        folder.mkdir(parents=True, exist_ok=True)
        self._write_identity(folder, identity if identity is not None else features.identity)
        tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".tmp-{sample_key[:16]}-"))
        try:
            meta: dict[str, Any] = {"format": CACHE_FORMAT, "sample_key": sample_key,
                                    "extractor_key": extractor_key, "arrays": {}}
            store = _DTYPES[self.dtype]
            for name in _ARRAYS:
                t = getattr(features, name)
                if t is None:
                    continue
                a = t[0].detach().cpu().numpy()
                a = a.astype(bool) if name == "valid" else a.astype(store)
                f = tmp / f"{name}.npy"
                with open(f, "wb") as fh:
                    np.save(fh, np.ascontiguousarray(a), allow_pickle=False)
                    fh.flush()
                    os.fsync(fh.fileno())
                meta["arrays"][name] = {"shape": list(a.shape), "dtype": a.dtype.str,
                                        "nbytes_file": f.stat().st_size,
                                        "sha256": file_sha256(f)}
            with open(tmp / "meta.json", "w") as fh:  # written last: marks a complete entry
                json.dump(meta, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            self._install(tmp, final, sample_key)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        entry = self.get(sample_key, extractor_key)
        if entry is None:  # pragma: no cover - only if the disk fails under us
            raise OSError(f"feature cache entry {final} could not be read back")
        return entry

    def _install(self, tmp: Path, final: Path, sample_key: str) -> None:
        try:
            os.rename(tmp, final)
            return
        except OSError:
            pass
        # the final name exists: keep it if it is a good entry (another writer), else replace it
        try:
            self._read(sample_key, final)
            return
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            pass
        trash = final.with_name(f".trash-{uuid.uuid4().hex}")
        try:
            os.rename(final, trash)
        except OSError:
            pass
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(tmp, final)

    def _write_identity(self, folder: Path, identity: dict[str, Any]) -> None:
        f = folder / "identity.json"
        if not f.is_file() and identity:
            write_json_atomic(f, identity, indent=1)

    def put_batch(self, sample_keys: list[str], extractor_key: str,
                  features: Features) -> list[CachedFeatures]:
        """Store a batch, one entry per sample key."""
        parts = features.split()
        if len(parts) != len(sample_keys):
            raise UserInputError(f"{len(sample_keys)} sample keys for a batch of {len(parts)}")
        return [self.put(k, extractor_key, f) for k, f in zip(sample_keys, parts, strict=True)]

    def get_or_compute(self, sample_key: str, extractor_key: str,
                       fn: Callable[[], Features]) -> CachedFeatures:
        """The cached entry; on a miss, `fn()` (a batch-1 `Features`) is computed and stored."""
        hit = self.get(sample_key, extractor_key)
        if hit is not None:
            return hit
        return self.put(sample_key, extractor_key, fn())

    # ------------------------------------------------------------------ housekeeping

    def keys(self, extractor_key: str) -> list[str]:
        """Sample keys with a (complete-looking) entry for this extractor."""
        folder = self.folder(extractor_key)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and (p / "meta.json").is_file())

    def clear(self, extractor_key: str | None = None) -> None:
        """Delete the entries of one extractor (or the whole cache)."""
        target = self.folder(extractor_key) if extractor_key else self.root
        shutil.rmtree(target, ignore_errors=True)


def _check_key(key: str, what: str) -> None:
    if not isinstance(key, str) or not key or not all(c.isalnum() or c in "-_" for c in key):
        raise UserInputError(f"{what} must be a non-empty string of letters, digits, '-' or '_', "
                             f"got {key!r}")


# --------------------------------------------------------------------------- compact store

COMPACT_FORMAT = 2
ENCODER_KINDS = ("vit", "point_mae")
_COMPACT_ARRAYS = {"vit": ("tokens",), "point_mae": ("features", "idx", "wts", "pix", "valid")}
_FLOAT_ARRAYS = ("tokens", "features", "wts")
_DAMAGE = (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError)


class CompactCache:
    """A folder of compact per-encoder entries; see the module docstring.

    `dtype`: storage precision of the float arrays ("float32": the rebuilt maps are bit-identical
    to extraction; "float16" rounds the token map, group features and weights). `verify=True`
    also checks each file's SHA-256 on every read.
    """

    def __init__(self, root: str | os.PathLike, *, dtype: str = "float32", verify: bool = False):
        if dtype not in _DTYPES:
            raise UserInputError(f"feature cache dtype must be one of {tuple(_DTYPES)}, got {dtype!r}")
        self.root = Path(root)
        self.dtype = dtype
        self.verify = verify

    def folder(self, kind: str, encoder_key: str) -> Path:
        if kind not in ENCODER_KINDS:
            raise UserInputError(f"encoder kind must be one of {ENCODER_KINDS}, got {kind!r}")
        _check_key(encoder_key, "encoder key")
        tag = "f16" if self.dtype == "float16" else "f32"
        return self.root / f"v{COMPACT_FORMAT}-{kind}-{encoder_key}-{tag}"

    def entry_path(self, kind: str, encoder_key: str, sample_key: str) -> Path:
        _check_key(sample_key, "sample key")
        return self.folder(kind, encoder_key) / sample_key

    # ------------------------------------------------------------------ read

    def get(self, kind: str, encoder_key: str, sample_key: str) -> Tokens2D | Points3D | None:
        """The entry (tensors over memory-mapped files, in the stored dtype), or None when absent
        or damaged (a damaged entry is removed)."""
        path = self.entry_path(kind, encoder_key, sample_key)
        if not path.is_dir():
            return None
        try:
            return self._read(kind, sample_key, path)
        except _DAMAGE:
            shutil.rmtree(path, ignore_errors=True)
            return None

    def _read(self, kind: str, sample_key: str, path: Path) -> Tokens2D | Points3D:
        meta = json.loads((path / "meta.json").read_text())
        if (meta.get("format") != COMPACT_FORMAT or meta.get("sample_key") != sample_key
                or meta.get("kind") != kind):
            raise ValueError("cache entry metadata does not match")
        arrays: dict[str, torch.Tensor] = {}
        for name in _COMPACT_ARRAYS[kind]:
            info = meta["arrays"][name]
            # copy-on-write map: read lazily, never written back, a writable array for torch
            arrays[name] = torch.from_numpy(load_checked(path / f"{name}.npy", info, self.verify, "c"))
        if kind == "vit":
            if arrays["tokens"].dim() != 3:
                raise ValueError("token map is not (C, h, w)")
            return Tokens2D(arrays["tokens"])
        n = arrays["pix"].shape[0]
        if arrays["idx"].shape != (3, n) or arrays["wts"].shape != (3, n) or arrays["valid"].dim() != 2:
            raise ValueError("interpolation arrays do not fit together")
        if n and int(arrays["idx"].max()) >= arrays["features"].shape[1]:
            raise ValueError("neighbour index out of range")
        if n and int(arrays["pix"].max()) >= arrays["valid"].numel():
            raise ValueError("pixel index out of range")
        return Points3D(arrays["features"],
                        Interpolation(arrays["idx"], arrays["wts"], arrays["pix"]), arrays["valid"])

    # ------------------------------------------------------------------ write

    def put(self, kind: str, encoder_key: str, sample_key: str, item: Tokens2D | Points3D,
            identity: dict[str, Any] | None = None) -> Tokens2D | Points3D:
        """Store one entry atomically; returns it as read back."""
        final = self.entry_path(kind, encoder_key, sample_key)
        folder = final.parent
        folder.mkdir(parents=True, exist_ok=True)
        if identity and not (folder / "identity.json").is_file():
            write_json_atomic(folder / "identity.json", identity, indent=1)
        store = _DTYPES[self.dtype]
        if kind == "vit":
            if not isinstance(item, Tokens2D):
                raise UserInputError("a vit entry takes Tokens2D")
            arrays = {"tokens": item.low.detach().cpu().numpy().astype(store)}
        else:
            if not isinstance(item, Points3D):
                raise UserInputError("a point_mae entry takes Points3D")
            it = item.interp
            idx_dtype = np.int16 if item.features.shape[1] <= np.iinfo(np.int16).max else np.int32
            arrays = {"features": item.features.detach().cpu().numpy().astype(store),
                      "idx": it.idx.cpu().numpy().astype(idx_dtype),
                      "wts": it.wts.cpu().numpy().astype(store),
                      "pix": it.pix.cpu().numpy().astype(np.int32),
                      "valid": item.valid.cpu().numpy().astype(bool)}
        if final.is_dir():  # another writer got there first: keep a good entry
            hit = self.get(kind, encoder_key, sample_key)
            if hit is not None:
                return hit
        meta: dict[str, Any] = {"format": COMPACT_FORMAT, "kind": kind, "sample_key": sample_key,
                                "encoder_key": encoder_key, "arrays": {}}
        with staging_folder(final) as tmp:
            for name, a in arrays.items():
                f = tmp / f"{name}.npy"
                with open(f, "wb") as fh:
                    np.save(fh, np.ascontiguousarray(a), allow_pickle=False)
                    fh.flush()
                    os.fsync(fh.fileno())
                meta["arrays"][name] = {"shape": list(a.shape), "dtype": a.dtype.str,
                                        "nbytes_file": f.stat().st_size, "sha256": file_sha256(f)}
            write_json_atomic(tmp / "meta.json", meta, indent=1)  # last: marks a complete entry
        entry = self.get(kind, encoder_key, sample_key)
        if entry is None:  # pragma: no cover - only if the disk fails under us
            raise OSError(f"feature cache entry {final} could not be read back")
        return entry

    # ------------------------------------------------------------------ housekeeping

    def keys(self, kind: str, encoder_key: str) -> list[str]:
        """Sample keys with a (complete-looking) entry for this encoder."""
        return _entry_names(self.folder(kind, encoder_key))

    def clear(self) -> None:
        """Delete the whole cache folder."""
        shutil.rmtree(self.root, ignore_errors=True)


def _entry_names(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / "meta.json").is_file())


def _folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def classify_folder(name: str) -> str:
    """Kind of a cache subfolder by its name: "vit" / "point_mae" (compact store, this format),
    "dense" (`FeatureCache`), else "other"."""
    parts = name.split("-")
    if len(parts) == 4 and parts[0] == f"v{COMPACT_FORMAT}" and parts[1] in ENCODER_KINDS:
        return parts[1]
    if len(parts) == 2 and parts[1] in ("f32", "f16") and len(parts[0]) == 64:
        return "dense"
    return "other"


def cache_summary(root: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Entries and bytes per kind of a cache folder: "vit" and "point_mae" (compact store),
    "dense" (`FeatureCache` folders of the point-cloud models), "other" (anything else, e.g.
    stale entries of older formats). Returns {kind: {"entries": n, "bytes": b, "folders": k}}."""
    out = {k: {"entries": 0, "bytes": 0, "folders": 0} for k in (*ENCODER_KINDS, "dense", "other")}
    r = Path(root)
    if not r.is_dir():
        return out
    for sub in sorted(r.iterdir()):
        if not sub.is_dir():
            continue
        kind = classify_folder(sub.name)
        out[kind]["folders"] += 1
        out[kind]["entries"] += len(_entry_names(sub))
        out[kind]["bytes"] += _folder_bytes(sub)
    return out
