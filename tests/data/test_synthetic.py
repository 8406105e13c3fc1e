"""Synthetic generator: determinism, defect visibility per modality, scan realism, round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmdr_iad.data.mvtec3d import MVTec3DDataset, list_categories
from cmdr_iad.data.synthetic import (
    DEFECT_TYPES,
    SCENES,
    SHAPES,
    category_names,
    generate_dataset,
    synth_sample,
)
from cmdr_iad.errors import UserInputError

SIZE = (64, 80)


def test_deterministic_by_seed():
    a = synth_sample("ring", seed=3, size=SIZE, defect="crack")
    b = synth_sample("ring", seed=3, size=SIZE, defect="crack")
    c = synth_sample("ring", seed=4, size=SIZE, defect="crack")
    for f in ("rgb", "xyz", "gt"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.rgb, c.rgb) and not np.array_equal(a.xyz, c.xyz)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("defect", list(DEFECT_TYPES))
def test_defect_changes_only_its_modalities_inside_gt(shape, defect):
    clean = synth_sample(shape, seed=11, size=SIZE)
    bad = synth_sample(shape, seed=11, size=SIZE, defect=defect)
    assert not clean.gt.any() and bad.gt.sum() >= 4
    rgb_diff = np.any(clean.rgb != bad.rgb, axis=-1)
    xyz_diff = np.any(clean.xyz != bad.xyz, axis=-1)
    visible = DEFECT_TYPES[defect]
    assert not (rgb_diff & ~bad.gt).any() and not (xyz_diff & ~bad.gt).any()  # pixel-accurate GT
    assert rgb_diff.any() == ("rgb" in visible)
    assert xyz_diff.any() == ("xyz" in visible)
    if visible == "rgb":
        assert rgb_diff.sum() >= 0.9 * bad.gt.sum()
    if visible == "xyz":  # most GT pixels carry a visible height change (> 0.3 mm)
        dz = np.abs(clean.xyz[..., 2] - bad.xyz[..., 2])
        valid = np.any(bad.xyz != 0, axis=-1)
        assert (dz[bad.gt & valid] > 3e-4).mean() > 0.6


def test_scan_has_table_plane_missing_points_and_variation():
    s = synth_sample("dome", seed=[1, 2], size=(96, 96))
    valid = np.any(s.xyz != 0, axis=-1)
    assert 0.005 < (~valid).mean() < 0.5  # missing points like a real scan
    # the image border shows the table: a plane fits its points to sensor noise
    border = np.zeros(valid.shape, bool)
    border[:10], border[-10:], border[:, :10], border[:, -10:] = True, True, True, True
    p = s.xyz[border & valid].astype(np.float64)
    A = np.c_[p[:, 0], p[:, 1], np.ones(len(p))]
    coef, *_ = np.linalg.lstsq(A, p[:, 2], rcond=None)
    res = p[:, 2] - A @ coef
    assert len(p) > 500 and np.abs(res).max() < 1e-3
    # the object rises above the table (closer to the camera) by millimetres
    z_plane = np.c_[s.xyz[..., 0][valid], s.xyz[..., 1][valid], np.ones(valid.sum())] @ coef
    assert (z_plane - s.xyz[..., 2][valid]).max() > 0.01
    # samples of one category differ (pose, scale, lighting)
    t = synth_sample("dome", seed=[1, 3], size=(96, 96))
    assert np.abs(s.rgb.astype(int) - t.rgb.astype(int)).mean() > 3


@pytest.mark.parametrize("defect", [None, "stain", "dent"])
def test_station_scene_changes_only_the_lighting_and_the_table(defect):
    """Same random draws in both scenes: the geometry, the GT and the defects are identical."""
    varied = synth_sample("puck", seed=[1, 2], size=SIZE, defect=defect)
    station = synth_sample("puck", seed=[1, 2], size=SIZE, defect=defect, scene="station")
    np.testing.assert_array_equal(varied.xyz, station.xyz)
    np.testing.assert_array_equal(varied.gt, station.gt)
    assert np.abs(varied.rgb.astype(int) - station.rgb.astype(int)).mean() > 1


def test_station_scene_shows_one_table_under_every_part():
    """The image border (table only) of two scans correlates in a station, not in varied scenes."""
    border = np.zeros((96, 96), bool)
    border[:8], border[-8:], border[:, :8], border[:, -8:] = True, True, True, True

    def corr(scene: str, k: int) -> float:
        a, b = (synth_sample("puck", seed=[1, j], size=(96, 96), scene=scene).rgb.mean(-1)
                for j in (k, k + 10))
        return float(np.corrcoef(a[border], b[border])[0, 1])

    station = [corr("station", k) for k in range(3)]
    varied = [corr("varied", k) for k in range(3)]
    assert min(station) > 0.7, station  # measured 0.77-0.82 (the rest is sensor noise and gain)
    assert max(varied) < min(station), (varied, station)  # varied: 0.65, -0.62, -0.55


def test_generate_dataset_round_trip(tmp_path):
    root = generate_dataset(tmp_path / "d", categories=2, n_train=4, n_val=2, n_test_good=2,
                            n_test_defect=1, size=(128, 128), seed=1)
    assert list_categories(root) == sorted(category_names(2))
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["seed"] == 1 and set(meta["defect_types"]) == set(DEFECT_TYPES)
    test = MVTec3DDataset(root, "ring", "test")
    assert len(test) == 2 + len(DEFECT_TYPES)
    assert len(MVTec3DDataset(root, "puck", "validation")) == 2
    # the readers read back exactly what the generator renders
    for s in (MVTec3DDataset(root, "puck", "train")[3], test[test.defect_types.index("stain")]):
        cat, split, dtype, idx = s.key.split("/")
        seed = [1, SHAPES.index(cat), 1, {"train": 0, "test": 2}[split],
                0 if dtype == "good" else 1 + list(DEFECT_TYPES).index(dtype), int(idx)]
        ref = synth_sample(cat, seed=seed, size=(128, 128), defect=None if dtype == "good" else dtype)
        np.testing.assert_array_equal(s.rgb, ref.rgb)
        np.testing.assert_array_equal(s.xyz, ref.xyz)
        if s.gt is not None:
            np.testing.assert_array_equal(s.gt, ref.gt)
    # a rerun replaces the previous set; the same arguments give identical files
    before = (root / "ring/test/crack/xyz/000.tiff").read_bytes()
    generate_dataset(root, categories=["ring"], n_train=1, n_val=0, n_test_good=0, n_test_defect=1,
                     size=(128, 128), seed=1, defect_types=("crack",))
    assert (root / "ring/test/crack/xyz/000.tiff").read_bytes() == before
    assert list_categories(root) == ["ring"] and not (root / "ring/train/good/rgb/001.png").exists()
    # a folder holding something else is never overwritten
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep")
    with pytest.raises(UserInputError, match="not empty"):
        generate_dataset(tmp_path / "other", categories=1, n_train=1)


def test_category_names_and_bad_arguments(tmp_path):
    assert category_names(6) == ["puck", "ring", "tile", "dome", "puck2", "ring2"]
    s2 = synth_sample("puck2", seed=0, size=(32, 32))
    s1 = synth_sample("puck", seed=0, size=(32, 32))
    assert not np.array_equal(s1.rgb, s2.rgb)
    for bad in ({"categories": ["bagel"]}, {"n_train": 0}, {"n_test_good": -1},
                {"defect_types": ("scratch",)}, {"scene": "studio"}):
        with pytest.raises(ValueError):
            generate_dataset(tmp_path / "x", **bad)
    with pytest.raises(ValueError):
        synth_sample("puck", size=(8, 8))
    with pytest.raises(ValueError, match="unknown scene"):
        synth_sample("puck", size=(32, 32), scene="studio")
    assert SCENES == ("varied", "station")


def test_cloud_with_valid_fraction_exact_share_compact_object():
    from cmdr_iad.data.synthetic import cloud_with_valid_fraction
    from cmdr_iad.errors import UserInputError

    rng = np.random.default_rng(0)
    xyz = np.stack([*np.meshgrid(np.linspace(-1, 1, 20), np.linspace(-1, 1, 20)), np.full((20, 20), 0.5)],
                   axis=-1).astype(np.float32) + 0.01
    xyz[rng.random((20, 20)) < 0.3] = 0  # 30 % missing: 95 % needs filling
    for frac in (0.0, 0.2, 0.6, 0.95, 1.0):
        out = cloud_with_valid_fraction(xyz, frac)
        valid = (out != 0).all(-1)
        assert int(valid.sum()) == round(frac * 400) and out.dtype == xyz.dtype
        kept = valid & (xyz != 0).all(-1)
        assert np.array_equal(out[kept], xyz[kept])  # original points unchanged
        if 0 < frac < 1:
            assert valid[10, 10] and not valid[0, 0]  # around the centre
    assert (xyz != 0).all(-1).sum() < 0.95 * 400
    with pytest.raises(UserInputError):
        cloud_with_valid_fraction(xyz, 1.5)
    with pytest.raises(UserInputError):
        cloud_with_valid_fraction(xyz[..., :2], 0.5)
