"""Pseudo-labelling detectors (Isolation Forest, LOF, hybrid) and their parameter checks."""

from __future__ import annotations

import numpy as np
import pytest

from cmdr_iad.errors import UserInputError
from cmdr_iad.pointcloud.config import BuildConfig, check_contamination
from cmdr_iad.pointcloud.outliers import (
    contamination_for,
    isolation_forest_mask,
    lof_mask,
    outlier_mask,
)


@pytest.fixture(scope="module")
def cloud():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(2000, 3)).astype(np.float32)
    pts[:5] += 40.0  # a far cluster: outliers for both detectors
    return pts


def test_levels_are_the_papers():
    assert contamination_for("low") == 1e-4
    assert contamination_for("high") == 1.5e-4
    assert BuildConfig(level="high").resolved_contamination == 1.5e-4
    assert BuildConfig(level="high", contamination=0.01).resolved_contamination == 0.01
    with pytest.raises(UserInputError):
        contamination_for("medium")


@pytest.mark.parametrize("bad", [0, -0.1, 0.51, 1.0, float("nan"), "x"])
def test_contamination_outside_range_is_rejected(bad, cloud):
    with pytest.raises(UserInputError, match="contamination"):
        check_contamination(bad)
    if not isinstance(bad, str):
        with pytest.raises(UserInputError):
            outlier_mask(cloud, "iso", bad)
        with pytest.raises(UserInputError):
            BuildConfig(contamination=bad).validate()


def test_contamination_half_is_allowed():
    assert check_contamination(0.5) == 0.5


def test_detectors_flag_the_far_cluster_and_hybrid_is_the_union(cloud):
    iso = isolation_forest_mask(cloud, 0.0025, n_estimators=50)
    lof = lof_mask(cloud, 0.0025)
    assert iso[:5].all() and lof[:5].all()
    assert iso.sum() == 5 and lof.sum() == 5
    hyb = outlier_mask(cloud, "hybrid", 0.01, n_estimators=50)
    np.testing.assert_array_equal(
        hyb, isolation_forest_mask(cloud, 0.01, n_estimators=50) | lof_mask(cloud, 0.01))
    assert hyb.sum() >= max(iso.sum(), lof.sum())


def test_isolation_forest_is_repeatable_and_seeded(cloud):
    a = isolation_forest_mask(cloud, 0.01, n_estimators=20, random_state=42)
    b = isolation_forest_mask(cloud, 0.01, n_estimators=20, random_state=42)
    np.testing.assert_array_equal(a, b)


def test_bad_points_are_rejected(cloud):
    with pytest.raises(UserInputError, match="shape"):
        outlier_mask(cloud[:, :2], "iso", 0.01)
    bad = cloud.copy()
    bad[3, 1] = np.nan
    with pytest.raises(UserInputError, match="NaN"):
        outlier_mask(bad, "lof", 0.01)
    with pytest.raises(UserInputError, match="detector"):
        outlier_mask(cloud, "dbscan", 0.01)
