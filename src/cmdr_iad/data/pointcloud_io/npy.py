"""NumPy point clouds: (N, C ≥ 3) or organised (H, W, 3) arrays."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import DatasetError
from ...fileio import atomic_output


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:
        raise DatasetError(f"{path}: unreadable or truncated NPY file ({type(e).__name__}: {e})") from None


def write_npy(path: str | os.PathLike, points: np.ndarray) -> Path:
    """Write points ((N, 3) or (H, W, 3)) as float32 NPY."""
    path = Path(path)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(points, dtype=np.float32))
    return path
