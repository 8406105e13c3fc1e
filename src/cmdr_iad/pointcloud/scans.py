"""Finding and reading raw scans (PLY ascii/binary, PCD, XYZ/TXT/PTS/CSV, NPY), point order kept.

Parsing is done by the readers of `cmdr_iad.data.pointcloud_io`; this module adds discovery of
the scans of a folder and the checks the pipeline needs (finite coordinates, enough points).
Optional per-point attributes (colours, normals, intensity) are ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError

SCAN_EXTENSIONS = (".ply", ".pcd", ".xyz", ".txt", ".pts", ".csv", ".npy")
AUTHORS_FILE = "PointCloud_merged.ply"


@dataclass(frozen=True)
class ScanRef:
    """One scan: a display name and its file."""

    name: str
    path: Path


def check_extension(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.suffix.lower() not in SCAN_EXTENSIONS:
        raise DatasetError(
            f"{p}: unknown point cloud extension {p.suffix or '(none)'!r}; "
            f"supported: {', '.join(SCAN_EXTENSIONS)}")
    return p


def find_scans(scans_dir: str | os.PathLike) -> list[ScanRef]:
    """The scans of a folder, sorted by name.

    Layouts: `point_cloud/<scan>/PointCloud_merged.ply` (the authors'), `<scan>/PointCloud_merged.ply`,
    or scan files directly in the folder. Hidden files are ignored; other files with an unknown
    extension are ignored too, but a folder with no scan at all is an error naming them.
    """
    root = Path(scans_dir)
    if not root.is_dir():
        raise DatasetError(f"scans folder not found: {root}")
    base = root / "point_cloud" if (root / "point_cloud").is_dir() else root
    nested = [ScanRef(d.name, d / AUTHORS_FILE) for d in sorted(base.iterdir())
              if d.is_dir() and (d / AUTHORS_FILE).is_file()]
    if nested:
        return nested
    files, skipped = [], []
    for f in sorted(root.iterdir()):
        if f.name.startswith(".") or not f.is_file():
            continue
        if f.suffix.lower() in SCAN_EXTENSIONS:
            files.append(ScanRef(f.stem, f))
        else:
            skipped.append(f.name)
    if not files:
        extra = f" (unknown extensions: {', '.join(skipped[:5])})" if skipped else ""
        raise DatasetError(
            f"no scans found in {root}: expected {', '.join(SCAN_EXTENSIONS)} files or "
            f"point_cloud/<scan>/{AUTHORS_FILE} folders{extra}")
    names = [s.name for s in files]
    if len(set(names)) != len(names):  # scan.ply and scan.npy: keep names unique
        files = [ScanRef(f.path.name, f.path) for f in files]
    return files


def _read_raw(p: Path) -> np.ndarray:
    """Coordinates as stored in the file (NaN kept), via the readers of `data.pointcloud_io`.

    `read_points` turns NaN into (0, 0, 0) ("no point", right for organised clouds); a raw scan
    has no such convention, so NaN must be seen here and reported.
    """
    from ..data import pointcloud_io as pio

    ext = p.suffix.lower()
    pio._check_file(p)
    if ext == ".ply":
        a = pio._read_ply(p)
    elif ext == ".pcd":
        a = pio._read_pcd(p)[0]
    elif ext == ".npy":
        a = pio._load_npy(p)
        if a.ndim == 3 and a.shape[2] == 3:
            a = a.reshape(-1, 3)
        elif a.ndim == 2 and a.shape[1] >= 3:
            a = a[:, :3]
        else:
            raise DatasetError(f"{p}: NPY points must have shape (N, C>=3), got {a.shape}")
    else:
        a = pio._read_text(p)
    return np.asarray(a)


def load_scan(path: str | os.PathLike, *, min_points: int = 1) -> np.ndarray:
    """(N, 3) float32 points of a scan file in file order; DatasetError on a bad file
    (unknown extension, empty or truncated file, NaN/inf coordinates, too few points)."""
    from ..data.pointcloud_io import finalize_points

    p = check_extension(path)
    if not p.is_file():
        raise DatasetError(f"scan file not found: {p}")
    raw = _read_raw(p)
    if raw.ndim != 2 or raw.shape[1] != 3 or len(raw) == 0:
        raise DatasetError(f"{p}: expected (N, 3) points, got shape {raw.shape}")
    if np.issubdtype(raw.dtype, np.floating):
        bad = ~np.isfinite(raw).all(axis=1)
        if bad.any():
            raise DatasetError(f"{p}: {int(bad.sum())} point(s) have NaN or infinite coordinates "
                               f"(first at index {int(np.flatnonzero(bad)[0])})")
    pts = finalize_points(raw, p)
    if len(pts) < min_points:
        raise DatasetError(f"{p}: the scan has {len(pts)} points, fewer than one chunk ({min_points})")
    return pts
