"""Dataset build (paper §4.2): scans → pseudo-labels → sequential chunks → split → normalised arrays.

Output folder (the authors' file names, so their loaders read it too):

| file | content |
|---|---|
| `global_data.npy` (K, n, 3) f32 | every chunk, raw coordinates, in scan order |
| `global_labels.npy` (K,) u8, `global_gtmask.npy` (K, n) u8 | chunk labels, per-point masks |
| `chunk_index.npy` (K, 2) i64 | (scan index, start offset in the scan) of each chunk |
| `train.npy` (T, n, 3) f32, `train_gtmask.npy`, `train_index.npy` | normal training chunks, normalised to [-1, 1] |
| `test.npy`, `test_label.npy`, `test_gtmask.npy`, `test_index.npy` | test chunks (normal + all abnormal) |
| `build.json` | config, counts, sources (with SHA-256), versions |

The folder is written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import DatasetError, UserInputError
from ..fileio import file_sha256, staging_folder
from .chunking import chunk_labels, chunk_sequential, normalize_chunks
from .config import BuildConfig
from .outliers import outlier_mask
from .scans import ScanRef, find_scans, load_scan

BUILD_FILE = "build.json"
BUILD_FORMAT = 1
ARRAYS = ("global_data", "global_labels", "global_gtmask", "chunk_index", "train", "train_gtmask",
          "train_index", "test", "test_label", "test_gtmask", "test_index")


@dataclass
class ScanChunks:
    """The chunks of one scan (raw coordinates), their per-point masks and labels."""

    chunks: np.ndarray  # (K, n, 3) float32
    masks: np.ndarray  # (K, n) uint8
    labels: np.ndarray  # (K,) uint8
    starts: np.ndarray  # (K,) int64
    n_flagged: int
    n_dropped: int


def chunk_scan(points: np.ndarray, cfg: BuildConfig) -> ScanChunks:
    """Outlier detection over the whole scan, then sequential chunks with labels f_k >= τ."""
    n = cfg.chunk_size
    if len(points) < n:
        raise DatasetError(f"the scan has {len(points)} points, fewer than one chunk ({n})")
    mask = outlier_mask(points, cfg.detector, cfg.resolved_contamination, seed=cfg.seed,
                        n_estimators=cfg.n_estimators, n_neighbors=cfg.n_neighbors)
    chunks = chunk_sequential(np.asarray(points, dtype=np.float32), n)
    masks = chunk_sequential(mask, n).astype(np.uint8)
    k = len(chunks)
    return ScanChunks(chunks=chunks, masks=masks, labels=chunk_labels(masks, cfg.tau),
                      starts=np.arange(k, dtype=np.int64) * n, n_flagged=int(mask.sum()),
                      n_dropped=len(points) - k * n)


def split_normal(labels: np.ndarray, test_fraction: float = 0.1, seed: int = 42
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test), each sorted: a `test_fraction` share of the normal chunks
    (`train_test_split(normal, test_size, random_state=seed)`, i.e. ⌈fraction·normal⌉ of them)
    plus every abnormal chunk go to test; the remaining normal chunks are the training set."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    normal = np.flatnonzero(labels == 0)
    abnormal = np.flatnonzero(labels != 0)
    if len(normal) < 2:
        raise DatasetError(
            f"only {len(normal)} normal chunk(s): at least 2 are needed (training + test); "
            "add scans, use a smaller chunk size, or lower the contamination")
    tr, te = train_test_split(normal, test_size=test_fraction, random_state=seed, shuffle=True)
    return np.sort(tr).astype(np.int64), np.sort(np.concatenate([te, abnormal])).astype(np.int64)


def _versions() -> dict[str, str]:
    import platform

    import sklearn

    return {"cmdr_iad": __version__, "numpy": np.__version__, "scikit_learn": sklearn.__version__,
            "python": platform.python_version()}


def counts_of(labels: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray) -> dict[str, int]:
    labels = np.asarray(labels)
    test_abn = int((labels[test_idx] != 0).sum())
    return {"chunks": int(len(labels)), "normal": int((labels == 0).sum()),
            "anomalous": int((labels != 0).sum()), "train": int(len(train_idx)),
            "test": int(len(test_idx)), "test_normal": int(len(test_idx) - test_abn),
            "test_anomalous": test_abn}


def summary_text(counts: dict[str, int]) -> str:
    """A summary like the paper's: "1856 train / 235 test = 207 normal + 28 anomalous"."""
    return (f"{counts['chunks']} chunks ({counts['normal']} normal, {counts['anomalous']} anomalous) "
            f"→ {counts['train']} train / {counts['test']} test = {counts['test_normal']} normal + "
            f"{counts['test_anomalous']} anomalous")


def assemble(per_scan: Sequence[ScanChunks], cfg: BuildConfig) -> dict[str, np.ndarray]:
    """Concatenate the scans' chunks and make the split and the normalised arrays."""
    n = cfg.chunk_size
    data = np.concatenate([s.chunks for s in per_scan]) if per_scan else np.zeros((0, n, 3), np.float32)
    labels = np.concatenate([s.labels for s in per_scan]).astype(np.uint8)
    gtmask = np.concatenate([s.masks for s in per_scan]).astype(np.uint8)
    index = np.concatenate([np.stack([np.full(len(s.starts), i, np.int64), s.starts], axis=1)
                            for i, s in enumerate(per_scan)])
    tr, te = split_normal(labels, cfg.test_fraction, cfg.seed)
    return {
        "global_data": data, "global_labels": labels, "global_gtmask": gtmask, "chunk_index": index,
        "train": normalize_chunks(data[tr]), "train_gtmask": gtmask[tr], "train_index": tr,
        "test": normalize_chunks(data[te]), "test_label": labels[te], "test_gtmask": gtmask[te],
        "test_index": te,
    }


def _check_out(out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise UserInputError(f"output {out_dir} exists and is not a folder")
        if any(out_dir.iterdir()) and not (out_dir / BUILD_FILE).is_file():
            raise UserInputError(f"refusing to overwrite {out_dir}: it is not empty and holds no {BUILD_FILE}")


def write_build(out_dir: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write the arrays and `build.json` atomically (staging folder swapped into place)."""
    out = Path(out_dir)
    _check_out(out)
    try:
        with staging_folder(out) as tmp:
            for name in ARRAYS:
                np.save(tmp / f"{name}.npy", arrays[name])
            (tmp / BUILD_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    except OSError as e:
        raise UserInputError(f"cannot write to {out}: {e.strerror or e}") from e
    return out


def build_dataset(scans_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: BuildConfig, *,
                  skip_short: bool = False,
                  on_scan: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Build the chunk dataset of every scan in `scans_dir` into `out_dir`; returns build.json's dict.

    A scan shorter than one chunk is an error (DatasetError), or skipped with `skip_short`
    (the reference skips it silently). `on_scan(i, total, name)` reports progress.
    """
    cfg.validate()
    refs: list[ScanRef] = find_scans(scans_dir)
    per_scan: list[ScanChunks] = []
    sources: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    root = Path(scans_dir)
    for i, ref in enumerate(refs):
        if on_scan:
            on_scan(i, len(refs), ref.name)
        pts = load_scan(ref.path)
        rel = str(ref.path.relative_to(root)) if ref.path.is_relative_to(root) else str(ref.path)
        if len(pts) < cfg.chunk_size:
            if skip_short:
                skipped.append({"name": ref.name, "file": rel, "points": int(len(pts))})
                continue
            raise DatasetError(f"{ref.path}: the scan has {len(pts)} points, fewer than one chunk "
                               f"({cfg.chunk_size}); use --skip-short to leave it out")
        sc = chunk_scan(pts, cfg)
        per_scan.append(sc)
        sources.append({"name": ref.name, "file": rel, "sha256": file_sha256(ref.path),
                        "points": int(len(pts)), "flagged": sc.n_flagged, "chunks": int(len(sc.labels)),
                        "anomalous_chunks": int(sc.labels.sum()), "dropped_tail": sc.n_dropped})
    if not per_scan:
        raise DatasetError(f"no scan in {scans_dir} has at least {cfg.chunk_size} points")
    arrays = assemble(per_scan, cfg)
    counts = counts_of(arrays["global_labels"], arrays["train_index"], arrays["test_index"])
    meta = {"format": "cmdr-iad-pointcloud-build", "format_version": BUILD_FORMAT,
            "config": cfg.to_dict(), "counts": counts, "sources": sources, "skipped": skipped,
            "chunk_size": cfg.chunk_size, "side": math.isqrt(cfg.chunk_size),
            "normalisation": "per chunk and coordinate: 2*(X-min)/(max-min)-1 (float32; 1e-12 if max==min)",
            "versions": _versions()}
    write_build(out_dir, arrays, meta)
    return meta


@dataclass
class BuildData:
    """A built dataset read back (arrays memory-mapped)."""

    path: Path
    meta: dict[str, Any]
    config: BuildConfig
    arrays: dict[str, np.ndarray]

    @property
    def chunk_size(self) -> int:
        return int(self.config.chunk_size)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]


def load_build(build_dir: str | os.PathLike) -> BuildData:
    """Read a folder written by `build_dataset`; DatasetError when incomplete or inconsistent."""
    d = Path(build_dir)
    meta_path = d / BUILD_FILE
    if not meta_path.is_file():
        raise DatasetError(f"{d} is not a point cloud build folder (no {BUILD_FILE}); run "
                           "`cmdr-iad pointcloud build` first")
    try:
        meta = json.loads(meta_path.read_text())
        cfg = BuildConfig.from_dict(meta["config"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise DatasetError(f"{meta_path} is unreadable: {e}") from e
    arrays: dict[str, np.ndarray] = {}
    for name in ARRAYS:
        p = d / f"{name}.npy"
        try:
            arrays[name] = np.load(p, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DatasetError(f"{p} is missing or unreadable: {e}") from e
    n = cfg.chunk_size
    for name in ("train", "test"):
        a = arrays[name]
        if a.ndim != 3 or a.shape[1:] != (n, 3):
            raise DatasetError(f"{d / (name + '.npy')} has shape {a.shape}, expected (K, {n}, 3)")
    if arrays["test_gtmask"].shape != arrays["test"].shape[:2] or len(arrays["test_label"]) != len(arrays["test"]):
        raise DatasetError(f"{d}: test arrays have inconsistent lengths")
    return BuildData(path=d, meta=meta, config=cfg, arrays=arrays)
