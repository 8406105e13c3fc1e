"""PLY point clouds (ASCII, binary little and big endian) via plyfile."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import DatasetError
from ...fileio import atomic_output


def _read_ply(path: Path) -> np.ndarray:
    from plyfile import PlyData

    try:
        with open(path, "rb") as f:
            ply = PlyData.read(f)
        v = ply["vertex"]
        names = v.data.dtype.names or ()
        missing = [c for c in "xyz" if c not in names]
        if missing:
            raise DatasetError(f"{path}: PLY vertex element has no {'/'.join(missing)} property")
        return np.stack([np.asarray(v.data[c]) for c in "xyz"], axis=1)
    except DatasetError:
        raise
    except KeyError:
        raise DatasetError(f"{path}: PLY file has no 'vertex' element") from None
    except Exception as e:  # plyfile raises several types for truncated / malformed files
        raise DatasetError(f"{path}: unreadable or truncated PLY file ({type(e).__name__}: {e})") from None


def write_ply(path: str | os.PathLike, points: np.ndarray, colors: np.ndarray | None = None,
              *, binary: bool = True) -> Path:
    """Write (N, 3) points (or (H, W, 3), flattened row-major) as PLY with optional colours.

    colors: (N, 3) uint8, or floats in [0, 1]; stored as uchar red/green/blue.
    """
    from plyfile import PlyData, PlyElement

    a = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        c = np.asarray(colors)
        c = c.reshape(-1, 3)
        if c.shape[0] != a.shape[0]:
            raise ValueError(f"colors {c.shape} do not match points {a.shape}")
        if np.issubdtype(c.dtype, np.floating):
            c = np.clip(np.round(c * 255.0), 0, 255)
        c = c.astype(np.uint8)
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    rec = np.empty(a.shape[0], dtype=fields)
    rec["x"], rec["y"], rec["z"] = a[:, 0], a[:, 1], a[:, 2]
    if colors is not None:
        rec["red"], rec["green"], rec["blue"] = c[:, 0], c[:, 1], c[:, 2]
    el = PlyElement.describe(rec, "vertex")
    path = Path(path)
    with atomic_output(path) as tmp:
        PlyData([el], text=not binary, byte_order="<").write(str(tmp))
    return path
