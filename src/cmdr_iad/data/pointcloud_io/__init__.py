"""Point-cloud files: organised (H, W, 3) and unorganised (N, 3) clouds, read and written.

Conventions (for every reader and writer here):
- arrays are float32; a missing point is (0, 0, 0);
- NaN in a file means "no point": any point with a NaN coordinate becomes (0, 0, 0);
- ±inf in a file is an error (`DatasetError` naming the file);
- units: readers take the unit of the file (`units="m"` or `"mm"`) and return metres;
- point order is kept; extra per-point attributes (colour, normals, intensity…) are ignored.

Organised: TIFF (MVTec 3D-AD, float32 H×W×3, via tifffile), NPY (H, W, 3), PCD with HEIGHT > 1.
Unorganised: PLY (ASCII / binary little and big endian, via plyfile), PCD (ascii, binary,
binary_compressed), XYZ / TXT / PTS / CSV text, NPY (N, C ≥ 3).
tifffile and plyfile are small, well-kept readers of these formats; PCD has no such maintained
pure-Python reader, so its simple format is parsed here.

One module per format (`pcd`, `ply`, `text`, `npy`, `tiff`; shared conventions in `units`);
this package dispatches by file extension and re-exports the public names.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import DatasetError
from ...fileio import atomic_output
from .npy import _load_npy, write_npy
from .pcd import _read_pcd, lzf_decompress, write_pcd
from .ply import _read_ply, write_ply
from .text import _read_text, write_xyz
from .tiff import _read_tiff, write_organized_tiff
from .units import (
    ORGANIZED_EXTS,
    POINTS_EXTS,
    UNITS,
    _check_file,
    convert_units,
    finalize_points,
    unit_scale,
)

__all__ = [
    "UNITS", "ORGANIZED_EXTS", "POINTS_EXTS", "atomic_output", "unit_scale", "convert_units",
    "finalize_points", "lzf_decompress", "read_organized", "read_points", "write_points",
    "write_organized", "write_organized_tiff", "write_ply", "write_pcd", "write_npy", "write_xyz",
]


def _check_organized(a: np.ndarray, path: Path) -> None:
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise DatasetError(f"{path}: organised point cloud must have shape (H, W, 3), got {a.shape}")
    if a.dtype not in (np.float32, np.float64):
        raise DatasetError(f"{path}: organised point cloud must be float32 (or float64), got {a.dtype}")


def read_organized(path: str | os.PathLike, units: str = "m") -> np.ndarray:
    """Read an organised cloud → float32 (H, W, 3) in metres, zeros where there is no point.

    Formats: .tiff/.tif, .npy (H, W, 3), .pcd with HEIGHT > 1.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in ORGANIZED_EXTS:
        raise DatasetError(f"{path}: unknown organised point-cloud extension {ext!r} "
                           f"(supported: {', '.join(ORGANIZED_EXTS)})")
    _check_file(path)
    if ext in (".tiff", ".tif"):
        a = _read_tiff(path)
    elif ext == ".npy":
        a = _load_npy(path)
    else:
        pts, width, height = _read_pcd(path)
        if height <= 1:
            raise DatasetError(f"{path}: PCD cloud is unorganised (HEIGHT {height}); "
                               "use read_points for unorganised clouds")
        a = pts.reshape(height, width, 3)
        if np.issubdtype(a.dtype, np.integer):
            a = a.astype(np.float32)
    _check_organized(a, path)
    return finalize_points(a, path, units)


def read_points(path: str | os.PathLike, units: str = "m", *, drop_missing: bool = False) -> np.ndarray:
    """Read any supported cloud → float32 (N, 3) in metres, in file order.

    Organised files are flattened row-major. Missing points (zeros; NaN in the file) are kept as
    zeros unless `drop_missing`.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in POINTS_EXTS:
        raise DatasetError(f"{path}: unknown point-cloud extension {ext!r} "
                           f"(supported: {', '.join(POINTS_EXTS)})")
    _check_file(path)
    if ext == ".ply":
        a = _read_ply(path)
    elif ext == ".pcd":
        a = _read_pcd(path)[0]
    elif ext in (".xyz", ".txt", ".pts", ".csv"):
        a = _read_text(path)
    elif ext == ".npy":
        a = _load_npy(path)
        if a.ndim == 3 and a.shape[2] == 3:
            a = a.reshape(-1, 3)
        elif a.ndim == 2 and a.shape[1] >= 3:
            a = a[:, :3]
        else:
            raise DatasetError(f"{path}: NPY points must have shape (N, C>=3) or (H, W, 3), "
                               f"got {a.shape}")
    else:
        a = _read_tiff(path)
        _check_organized(a, path)
        a = a.reshape(-1, 3)
    if a.shape[0] == 0:
        raise DatasetError(f"{path}: contains no points")
    pts = finalize_points(a, path, units)
    if drop_missing:
        pts = pts[np.any(pts != 0, axis=1)]
    return pts


def write_points(path: str | os.PathLike, points: np.ndarray, colors: np.ndarray | None = None) -> Path:
    """Write points by extension: .ply (colours allowed), .pcd, .npy, .xyz/.txt."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".ply":
        return write_ply(path, points, colors)
    if colors is not None:
        raise ValueError(f"{path}: colours can only be written to .ply")
    if ext == ".pcd":
        return write_pcd(path, points)
    if ext == ".npy":
        return write_npy(path, points)
    if ext in (".xyz", ".txt", ".pts"):
        return write_xyz(path, points)
    raise ValueError(f"{path}: unknown point-cloud extension {ext!r}")


def write_organized(path: str | os.PathLike, xyz: np.ndarray) -> Path:
    """Write an organised cloud (H, W, 3) by extension: .tiff/.tif (zlib), .npy, .pcd."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext in (".tiff", ".tif"):
        return write_organized_tiff(path, xyz)
    a = np.asarray(xyz)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"xyz must be (H, W, 3), got {a.shape}")
    if ext == ".npy":
        return write_npy(path, a)
    if ext == ".pcd":
        return write_pcd(path, a)
    raise ValueError(f"{path}: unknown organised point-cloud extension {ext!r}")
