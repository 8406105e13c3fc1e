"""Organised TIFF point clouds (MVTec 3D-AD: float32 H×W×3) via tifffile."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import DatasetError
from ...fileio import atomic_output


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        a = tifffile.imread(path)
    except Exception as e:  # tifffile raises many types for truncated or corrupt files
        raise DatasetError(f"{path}: unreadable or truncated TIFF file ({type(e).__name__}: {e})") from None
    if a.size == 0:
        raise DatasetError(f"{path}: unreadable or truncated TIFF file (no image data)")
    return a


def write_organized_tiff(path: str | os.PathLike, xyz: np.ndarray, *, level: int = 6) -> Path:
    """Write an organised cloud (H, W, 3) as float32 TIFF with zlib compression (MVTec 3D-AD style).

    level: zlib level 1 (fast) … 9 (small); any level reads back identically.
    """
    import tifffile

    a = np.ascontiguousarray(np.asarray(xyz, dtype=np.float32))
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"xyz must be (H, W, 3), got {a.shape}")
    path = Path(path)
    with atomic_output(path) as tmp:
        tifffile.imwrite(tmp, a, compression="zlib", compressionargs={"level": int(level)},
                         photometric="rgb")
    return path
