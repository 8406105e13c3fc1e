"""Fixtures of the raw-scan pipeline tests: synthetic profilometer scans."""

from __future__ import annotations

import numpy as np
import pytest


def make_scan(seed: int, profiles: int = 48, samples: int = 100, tail: int = 37,
              burrs: int = 3, gaps: int = 2) -> np.ndarray:
    """A wavy cut edge scanned profile after profile (scan order), float32 (N, 3).

    x runs along a profile (regular grid), y = profile index; z is a bevelled step whose
    position wobbles with y, plus noise. `burrs` compact groups of points are lifted by +12..+18
    (defects), `gaps` runs of points are removed. The scan stops `tail` points into a profile.
    No coordinate is exactly 0 (x and y start at 1).
    """
    rng = np.random.default_rng(seed)
    x = 1.0 + 0.2 * np.arange(samples, dtype=np.float64)
    rows = []
    for j in range(profiles + 1):
        y = np.full(samples, 1.0 + 0.25 * j)
        edge = x.mean() + 1.5 * np.sin(0.3 * j + seed)
        z = 8.0 / (1.0 + np.exp(-(x - edge) / 0.5)) + 0.05 * np.sin(0.7 * x) + rng.normal(0, 0.03, samples)
        rows.append(np.stack([x, y, z + 1.0], axis=1))
    pts = np.concatenate(rows)
    keep = np.ones(len(pts), dtype=bool)
    for _ in range(burrs):
        j = rng.integers(2, profiles - 2)
        c = rng.integers(5, samples - 8)
        for dj in range(2):
            sl = slice((j + dj) * samples + c, (j + dj) * samples + c + 3)
            pts[sl, 2] += rng.uniform(12.0, 18.0, 3)
    for _ in range(gaps):
        j = rng.integers(2, profiles - 3)
        c = rng.integers(10, samples - 20)
        for dj in range(3):
            keep[(j + dj) * samples + c:(j + dj) * samples + c + 8] = False
    pts = pts[keep]
    n = profiles * samples - (gaps * 24) + tail
    return pts[:n].astype(np.float32)


@pytest.fixture(scope="session")
def scan_factory():
    return make_scan
