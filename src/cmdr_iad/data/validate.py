"""Pre-flight check of a dataset split: read every file once before any expensive work.

`train`, `evaluate` (and anything else that walks a split) call `check_split` right after the
folder structure is known and before weights are loaded or features extracted, so a corrupt file
fails in about the time it takes to read the split, with one `DatasetError` naming the file:
unreadable or truncated PNG / TIFF / NPY / PCD, xyz with the wrong channels or dtype (uint8,
2 channels), ±inf coordinates, RGB / xyz / GT size mismatches (all raised by the reader), and a
split whose clouds hold no valid point at all (checked here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .sample import Sample

__all__ = ["SplitCheck", "check_split"]


@dataclass(frozen=True)
class SplitCheck:
    """What the pre-flight read found: samples read, and clouds with at least one valid point."""

    samples: int
    clouds: int
    clouds_with_points: int


def _split_name(ds: Sequence[Sample]) -> str:
    root, cat, split = (getattr(ds, a, None) for a in ("root", "category", "split"))
    if root is not None and cat is not None and split is not None:
        return str(Path(root) / cat / split)
    return repr(ds)


def check_split(ds: Sequence[Sample], *, need_points: bool = True,
                on_sample: Callable[[int, int], None] | None = None) -> SplitCheck:
    """Read every sample of `ds` (raises the reader's `DatasetError` for the first bad file).

    need_points: when the split carries point clouds, at least one of them must hold a valid
    (non-zero) point; a split of all-zero clouds cannot train or score the 3D branch.
    on_sample(done, total): progress callback.
    """
    n = len(ds)
    clouds = with_points = 0
    for i in range(n):
        s = ds[i]
        if s.xyz is not None:
            clouds += 1
            with_points += bool(np.any(s.xyz != 0))
        if on_sample is not None:
            on_sample(i + 1, n)
    if need_points and clouds and not with_points:
        raise DatasetError(f"{_split_name(ds)}: none of its {clouds} point cloud(s) has a valid 3D "
                           "point (every xyz file is all zero or NaN)")
    return SplitCheck(samples=n, clouds=clouds, clouds_with_points=with_points)
