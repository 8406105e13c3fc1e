"""Text point clouds: XYZ / TXT / PTS / CSV, one point per line."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np

from ...errors import DatasetError
from ...fileio import atomic_output


def _not_float(tok: str) -> bool:
    try:
        float(tok)
        return False
    except ValueError:
        return True


def _read_text(path: Path) -> np.ndarray:
    """x y z [extra…] per line; separators space/tab/comma/semicolon; '#' comments; one header line."""
    import io

    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a text point file") from None
    lines = re.sub(r"[,;]", " ", text).splitlines()
    for i, line in enumerate(lines):  # drop one non-numeric header line such as "x y z"
        body = line.split("#", 1)[0].split()
        if body:
            if any(_not_float(t) for t in body[:3]):
                lines[i] = ""
            break
    try:
        with warnings.catch_warnings():  # "input contained no data" is reported below
            warnings.simplefilter("ignore", UserWarning)
            a = np.loadtxt(io.StringIO("\n".join(lines)), comments="#", usecols=(0, 1, 2),
                           ndmin=2, dtype=np.float64)
    except ValueError as e:
        raise DatasetError(f"{path}: malformed text point file ({e})") from None
    if a.shape[0] == 0:
        raise DatasetError(f"{path}: no points")
    return a


def write_xyz(path: str | os.PathLike, points: np.ndarray) -> Path:
    """Write (N, 3) points as text, one `x y z` line per point."""
    a = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    path = Path(path)
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        np.savetxt(f, a, fmt="%.9g")
    return path
