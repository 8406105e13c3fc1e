"""Shared conventions of the point-cloud readers: units, file checks, NaN/inf handling."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import DatasetError

UNITS = {"m": 1.0, "mm": 1e-3}
ORGANIZED_EXTS = (".tiff", ".tif", ".npy", ".pcd")
POINTS_EXTS = (".ply", ".pcd", ".xyz", ".txt", ".pts", ".csv", ".npy", ".tiff", ".tif")


# ----------------------------------------------------------------------------- helpers

def unit_scale(src: str, dst: str = "m") -> float:
    """Factor converting coordinates in unit `src` to unit `dst` ("m" or "mm")."""
    for u in (src, dst):
        if u not in UNITS:
            raise ValueError(f"unknown unit {u!r}; use one of {tuple(UNITS)}")
    return UNITS[src] / UNITS[dst]


def convert_units(points: np.ndarray, src: str, dst: str = "m") -> np.ndarray:
    """Coordinates (..., 3) from unit `src` to `dst`; missing points (zeros) stay zeros."""
    return (np.asarray(points, dtype=np.float32) * np.float32(unit_scale(src, dst))).astype(np.float32)


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: empty file")


def finalize_points(arr: np.ndarray, path: str | os.PathLike, units: str = "m") -> np.ndarray:
    """Apply the conventions to (..., 3) coordinates read from `path`: float32, NaN → 0, ±inf → error."""
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise DatasetError(f"{path}: coordinates have unsupported dtype {arr.dtype}")
    a = np.asarray(arr, dtype=np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        inf = np.isinf(a)
        if inf.any():
            first = np.argwhere(inf)[0][:-1].tolist()
            raise DatasetError(f"{path}: {int(inf.any(-1).sum())} point(s) with ±inf coordinates "
                               f"(first at index {first}); NaN means 'no point', inf is not allowed")
        nan = np.isnan(a).any(-1)
        if nan.any():
            a = a.copy()
            a[nan] = 0.0
    if units != "m":
        a = convert_units(a, units, "m")
    return np.ascontiguousarray(a)
