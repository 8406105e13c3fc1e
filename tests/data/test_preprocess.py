"""MVTec 3D-AD preprocessing (plane removal, largest cluster, square pad) and the exact DBSCAN."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from cmdr_iad.data import preprocess as pp
from cmdr_iad.data.dbscan import dbscan, largest_cluster_mask
from cmdr_iad.errors import DatasetError

TABLE, OBJECT, OUTLIER, MISSING = 0, 1, 2, -1


def make_scene(h: int = 128, w: int = 128, seed: int = 0, pitch: float = 0.0005,
               radius: float = 0.02, height: float = 0.015, missing: float = 0.03):
    """An MVTec-like organised scan in metres: a dome on a tilted table seen from above.

    Returns xyz float32 (H, W, 3) with z the depth from the camera (object closer than the table),
    a label map (H, W) int (TABLE / OBJECT / OUTLIER / MISSING) and the object height map (H, W).
    Besides noise and missing points there are two floating outlier blobs (clusters of their own,
    ≥ 30 points, far from everything) and a few isolated floating points.
    """
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    x = (u - w / 2) * pitch
    y = (v - h / 2) * pitch
    table_z = 0.40 + 0.12 * x - 0.07 * y  # tilted table plane, ~8° / ~4°
    r2 = (x / radius) ** 2 + (y / radius) ** 2
    hgt = np.where(r2 < 1, height * np.sqrt(np.clip(1 - r2, 0, 1)), 0.0)
    z = table_z - hgt + rng.normal(0, 0.0002, size=(h, w))
    labels = np.where(hgt > 0, OBJECT, TABLE)
    # Two floating blobs (7×7 px, 4 cm above the table) in the corners away from the border frame.
    for cy, cx in ((h // 6, w - w // 6), (h - h // 6, w // 6)):
        sl = (slice(cy - 3, cy + 4), slice(cx - 3, cx + 4))
        z[sl] = table_z[sl] - 0.04
        labels[sl] = OUTLIER
    # Isolated floating points.
    iso = rng.integers(0, min(h, w), size=(6, 2))
    z[iso[:, 0], iso[:, 1]] = table_z[iso[:, 0], iso[:, 1]] - 0.05
    labels[iso[:, 0], iso[:, 1]] = OUTLIER
    xyz = np.stack([x, y, z], axis=-1).astype(np.float32)
    hole = rng.random((h, w)) < missing
    xyz[hole] = 0
    labels[hole] = MISSING
    return xyz, labels, hgt


# ----------------------------------------------------------------------------- DBSCAN

def _blobs(seed: int, n: int = 3000):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 0.08, (4, 3))
    pts = [c + rng.normal(0, 0.004, (n // 4, 3)) for c in centres]
    pts.append(rng.uniform(-0.03, 0.11, (300, 3)))  # background noise
    return np.concatenate(pts)


@pytest.mark.parametrize("seed,eps,min_samples", [(0, 0.006, 30), (1, 0.004, 5), (2, 0.008, 12)])
def test_dbscan_matches_sklearn(seed, eps, min_samples):
    from sklearn.cluster import DBSCAN

    pts = _blobs(seed)
    ref = DBSCAN(eps=eps, min_samples=min_samples).fit(pts)
    ours = dbscan(pts, eps, min_samples)
    core = np.zeros(len(pts), bool)
    core[ref.core_sample_indices_] = True
    # Identical core points and noise, identical cluster ids on core points.
    assert np.array_equal(ours[core], ref.labels_[core])
    assert np.array_equal(ours == -1, ref.labels_ == -1)
    # Border points may differ only where DBSCAN itself is order-dependent: a border point within
    # eps of core points of both clusters.
    for i in np.flatnonzero(ours != ref.labels_):
        d = np.linalg.norm(pts[core] - pts[i], axis=1)
        near = set(ref.labels_[core][d <= eps].tolist())
        assert {int(ours[i]), int(ref.labels_[i])} <= near


def test_dbscan_matches_sklearn_on_a_dense_scan():
    """The regime of real scans: most points settle through dense grid cells."""
    from sklearn.cluster import DBSCAN

    xyz, labels, _ = make_scene(112, 112, seed=7)
    n, d = pp.fit_plane(pp.border_points(xyz, 10))
    rest = pp.remove_plane(xyz, n, d)
    pts = rest[np.any(rest != 0, axis=-1)].astype(np.float64)
    ref = DBSCAN(eps=0.006, min_samples=30).fit(pts)
    ours = dbscan(pts, 0.006, 30)
    core = np.zeros(len(pts), bool)
    core[ref.core_sample_indices_] = True
    assert np.array_equal(ours[core], ref.labels_[core]) and ours.max() == ref.labels_.max() >= 2
    assert np.array_equal(ours == -1, ref.labels_ == -1)


def test_dbscan_edge_cases():
    assert dbscan(np.zeros((0, 3)), 0.01, 5).shape == (0,)
    assert (dbscan(np.random.default_rng(0).random((10, 3)), 0.01, 30) == -1).all()
    # Duplicates: 40 copies of one point form one cluster.
    lab = dbscan(np.ones((40, 3)), 0.001, 30)
    assert (lab == 0).all()
    # A chain of points 1 mm apart links across many grid cells into one cluster.
    chain = np.stack([np.arange(200) * 0.001, np.zeros(200), np.zeros(200)], axis=1)
    assert (dbscan(chain, 0.0011, 3) == 0).all()
    assert len(set(dbscan(chain, 0.0009, 2).tolist())) == 1 and dbscan(chain, 0.0009, 2)[0] == -1
    with pytest.raises(ValueError):
        dbscan(np.zeros((5, 2)), 0.01, 3)


def test_largest_cluster_mask_ignores_noise_label():
    rng = np.random.default_rng(3)
    small = rng.normal(0, 0.001, (50, 3))
    noise = rng.uniform(1, 2, (500, 3))  # more noise points than cluster points
    mask = largest_cluster_mask(np.concatenate([small, noise]), 0.006, 30)
    assert mask[:50].all() and not mask[50:].any()
    # No cluster at all: everything is kept (the baselines' behaviour).
    assert largest_cluster_mask(noise, 0.006, 30).all()


# ----------------------------------------------------------------------------- protocol

def test_plane_fit_recovers_tilted_table():
    xyz, labels, _ = make_scene(96, 96, seed=1)
    n, d = pp.fit_plane(pp.border_points(xyz, 10))
    table = xyz[labels == TABLE].astype(np.float64)
    assert np.abs(table @ n + d).max() < 0.002  # noise σ = 0.2 mm
    assert d > 0  # normal faces the camera: object points are on the positive side
    obj = xyz[labels == OBJECT].astype(np.float64)
    assert (obj @ n + d).mean() > 0


def test_preprocess_cloud_removes_plane_keeps_object():
    xyz, labels, hgt = make_scene(128, 128, seed=0)
    out = pp.preprocess_cloud(xyz)
    assert out.shape == (128, 128, 3) and out.dtype == np.float32
    kept = np.any(out != 0, axis=-1)
    assert not kept[labels == TABLE].any()  # the table plane is gone
    assert not kept[labels == OUTLIER].any()  # floating blobs and points are gone
    high = (labels == OBJECT) & (hgt > 0.007)  # clearly above the removal band of 5 mm
    assert kept[high].all()
    np.testing.assert_array_equal(out[kept], xyz[kept])  # kept points are untouched
    low = (labels == OBJECT) & (hgt < 0.004)
    assert not kept[low].any()


def test_pad_to_square_matches_loader_geometry():
    from cmdr_iad.data.transforms import pad_square

    a = np.random.default_rng(0).random((30, 47, 3)).astype(np.float32)
    out = pp.pad_to_square(a)
    assert out.shape == (47, 47, 3)
    np.testing.assert_array_equal(out, pad_square(a, mode="zeros"))
    assert out[8:38].any() and not out[:8].any() and not out[38:].any()  # top 8, bottom 9
    assert pp.pad_to_square(a, multiple=100).shape == (100, 100, 3)  # the baselines' round-up
    assert pp.pad_to_square(np.zeros((800, 800, 3)), multiple=100).shape == (800, 800, 3)


def test_preprocess_non_square_is_padded_and_centred():
    xyz, labels, _ = make_scene(72, 120, seed=2, radius=0.012, height=0.012)
    out = pp.preprocess_cloud(xyz)
    assert out.shape == (120, 120, 3)
    np.testing.assert_array_equal(out[:24], 0)
    np.testing.assert_array_equal(out[96:], 0)
    kept = np.any(out[24:96] != 0, axis=-1)
    assert kept.any() and not kept[labels == TABLE].any()


def test_preprocess_cloud_bad_input():
    with pytest.raises(DatasetError, match="shape"):
        pp.preprocess_cloud(np.zeros((10, 10)))
    with pytest.raises(DatasetError, match="no valid point"):
        pp.preprocess_cloud(np.zeros((20, 20, 3), np.float32))
    xyz = np.zeros((40, 40, 3), np.float32)
    xyz[15:25, 15:25] = 0.3  # only an object, no border points
    with pytest.raises(DatasetError, match="border"):
        pp.preprocess_cloud(xyz)


def test_preprocess_file_reads_nan_as_missing_and_marks_output(tmp_path):
    xyz, labels, _ = make_scene(64, 64, seed=4, pitch=0.0008)
    xyz[5, 5] = np.nan
    src, dst = tmp_path / "a.tiff", tmp_path / "out" / "a.tiff"
    tifffile.imwrite(src, xyz, photometric="rgb")
    pp.preprocess_file(src, dst)
    rec = pp.read_marker(dst)
    assert rec["config"] == pp.PreprocessConfig().to_dict() and rec["source_size"] == [64, 64]
    assert pp.read_marker(src) is None
    out = tifffile.imread(dst)
    assert out.shape == (64, 64, 3) and np.isfinite(out).all()
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(pp.TMP_PREFIX)]
    bad = xyz.copy()
    bad[1, 1, 0] = np.inf
    tifffile.imwrite(src, bad, photometric="rgb")
    with pytest.raises(DatasetError, match="inf"):
        pp.preprocess_file(src, dst)


def test_preprocess_is_deterministic():
    xyz, _, _ = make_scene(96, 96, seed=5)
    np.testing.assert_array_equal(pp.preprocess_cloud(xyz), pp.preprocess_cloud(xyz))
