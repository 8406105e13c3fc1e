"""Eyecandies reader and converter, on a small generated Eyecandies-like tree."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from cmdr_iad.cli import main
from cmdr_iad.data import eyecandies as ec
from cmdr_iad.errors import DatasetError, UserInputError

LO, HI = 0.9, 1.2  # depth normalisation range written to info_depth.yaml
POSE = np.array([[0.0, -1.0, 0.0, 0.1],
                 [1.0, 0.0, 0.0, -0.2],
                 [0.0, 0.0, 1.0, 0.5],
                 [0.0, 0.0, 0.0, 1.0]])


def _depth(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:h, 0:w]
    d = 1.1 + 0.0005 * u - 0.0003 * v  # tilted conveyor
    cy, cx = h / 2 + rng.integers(-3, 4), w / 2 + rng.integers(-3, 4)
    bump = np.clip(1 - ((v - cy) ** 2 + (u - cx) ** 2) / (0.3 * min(h, w)) ** 2, 0, None)
    return d - 0.1 * np.sqrt(bump)  # a candy closer to the camera


def write_sample(folder: Path, sid: str, *, h: int = 48, w: int = 64, seed: int = 0,
                 mask: bool | None = None) -> None:
    """Files of one Eyecandies sample `<sid>_*` (mask None: no mask file)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(6):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            folder / f"{sid}_image_{k}.png")
    png = np.round((_depth(h, w, seed) - LO) / (HI - LO) * 65535).astype(np.uint16)
    Image.fromarray(png).save(folder / f"{sid}_depth.png")
    (folder / f"{sid}_info_depth.yaml").write_text(f"normalization:\n  min: {LO}\n  max: {HI}\n")
    np.savetxt(folder / f"{sid}_pose.txt", POSE)
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(folder / f"{sid}_normals.png")
    if mask is not None:
        m = np.zeros((h, w), np.uint8)
        if mask:
            m[10:20, 30:40] = 255
        Image.fromarray(m).save(folder / f"{sid}_mask.png")


def make_eyecandies(root: Path, categories=("CandyCane", "GummyBear"), n_train: int = 2,
                    n_val: int = 1, test_masks=(False, True, True), data_level: bool = True) -> Path:
    """A tiny Eyecandies tree: train/val ids 000.., test_public ids 00.. with masks, test_private."""
    for ci, cat in enumerate(categories):
        def folder(split: str, cat=cat) -> Path:
            return root / cat / split / "data" if data_level else root / cat / split

        for i in range(n_train):
            write_sample(folder("train"), f"{i:03d}", seed=100 * ci + i)
        for i in range(n_val):
            write_sample(folder("val"), f"{i:03d}", seed=100 * ci + 50 + i)
        for i, bad in enumerate(test_masks):
            write_sample(folder("test_public"), f"{i:02d}", seed=100 * ci + 80 + i, mask=bad)
        write_sample(folder("test_private"), "00", seed=100 * ci + 99)
    return root


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- geometry

def test_metric_depth_and_camera_projection(tmp_path):
    write_sample(tmp_path, "000", seed=3)
    depth = ec.read_metric_depth(tmp_path / "000_depth.png", tmp_path / "000_info_depth.yaml")
    truth = _depth(48, 64, 3)
    assert np.abs(depth - truth).max() <= (HI - LO) / 65535 + 1e-6  # 16-bit quantisation
    xyz = ec.depth_to_xyz(depth)
    assert xyz.shape == (48, 64, 3) and xyz.dtype == np.float32
    # Project back with the pinhole camera: pixel (u, v) = (column, row), centre (W/2, H/2).
    v, u = np.mgrid[0:48, 0:64]
    np.testing.assert_allclose(xyz[..., 2], depth, rtol=1e-6)
    np.testing.assert_allclose(xyz[..., 0] * ec.FOCAL_LENGTH / xyz[..., 2] + 32, u, atol=1e-3)
    np.testing.assert_allclose(xyz[..., 1] * ec.FOCAL_LENGTH / xyz[..., 2] + 24, v, atol=1e-3)
    # World frame: pose · p_camera (pose.txt is camera-to-world).
    world = ec.depth_to_xyz(depth, pose=POSE)
    expect = xyz.reshape(-1, 3).astype(np.float64) @ POSE[:3, :3].T + POSE[:3, 3]
    np.testing.assert_allclose(world.reshape(-1, 3), expect, atol=1e-6)
    # Non-positive depth is a missing point.
    d0 = depth.copy()
    d0[0, 0] = 0
    assert not ec.depth_to_xyz(d0)[0, 0].any()


def test_listing_sorted_and_layouts(tmp_path):
    root = make_eyecandies(tmp_path / "ec", n_train=3, data_level=False)
    cats = ec.list_categories(root)
    assert [c.name for c in cats] == ["CandyCane", "GummyBear"]
    items = ec.list_items(cats[0], "train")
    assert [i.sample_id for i in items] == ["000", "001", "002"]
    assert items[0].path("image_4", ".png") == cats[0] / "train" / "000_image_4.png"
    test = ec.list_items(cats[0], "test_public")
    assert [(i.sample_id, i.out_stem) for i in test] == [("00", "000"), ("01", "001"), ("02", "002")]
    assert ec.list_categories(cats[1]) == [cats[1]]  # a category folder as root
    with pytest.raises(DatasetError, match="no Eyecandies category"):
        ec.list_categories(tmp_path)


def test_load_item_labels(tmp_path):
    root = make_eyecandies(tmp_path / "ec", categories=("Confetto",))
    cat = ec.list_categories(root)[0]
    good, bad = ec.list_items(cat, "test_public")[:2]
    s = ec.load_item(good)
    assert s.label == 0 and s.defect_type == "good" and not s.gt.any()
    s = ec.load_item(bad)
    assert s.label == 1 and s.defect_type == "bad" and s.gt.sum() == 100
    assert s.rgb.shape == (48, 64, 3) and s.xyz.shape == (48, 64, 3)
    tr = ec.load_item(ec.list_items(cat, "train")[0], light=2, scale=0.1)
    assert tr.label == 0 and tr.gt is None and tr.rgb_path.name == "000_image_2.png"
    assert 0.07 < tr.xyz[..., 2].min() and tr.xyz[..., 2].max() < 0.12  # scaled by 0.1


# ----------------------------------------------------------------------------- converter

def test_convert_layout_readable_and_idempotent(tmp_path):
    from cmdr_iad.data.mvtec3d import MVTec3DDataset

    src = make_eyecandies(tmp_path / "eye candies src")  # spaces in the path
    dst = tmp_path / "mvtec out"
    rep = ec.convert_eyecandies(src, dst, progress=False)
    assert rep.ok and len(rep.converted) == 2 * (2 + 1 + 3) and not rep.skipped
    cat = dst / "CandyCane"
    assert sorted(p.name for p in (cat / "train" / "good" / "rgb").iterdir()) == ["000.png", "001.png"]
    assert (cat / "validation" / "good" / "xyz" / "000.tiff").is_file()
    assert sorted(p.name for p in (cat / "test" / "good" / "rgb").iterdir()) == ["000.png"]
    assert sorted(p.name for p in (cat / "test" / "bad" / "gt").iterdir()) == ["001.png", "002.png"]
    assert not (cat / "test_private").exists() and not list(dst.rglob("*test_private*"))
    # rgb is image_4 byte for byte; xyz is the converted depth; gt the mask.
    s_dir = src / "CandyCane" / "test_public" / "data"
    assert (cat / "test" / "bad" / "rgb" / "001.png").read_bytes() == \
        (s_dir / "01_image_4.png").read_bytes()
    xyz = tifffile.imread(cat / "test" / "bad" / "xyz" / "001.tiff")
    ref = ec.depth_to_xyz(ec.read_metric_depth(s_dir / "01_depth.png", s_dir / "01_info_depth.yaml"))
    np.testing.assert_array_equal(xyz, ref)
    # The MVTec 3D-AD reader reads the result.
    ds = MVTec3DDataset(dst, "CandyCane", "test")
    assert list(ds.labels) == [1, 1, 0] and ds.defect_types == ["bad", "bad", "good"]
    smp = ds[0]
    assert smp.gt.sum() == 100 and smp.xyz.shape == (48, 64, 3)
    assert len(MVTec3DDataset(dst, "GummyBear", "train")) == 2
    assert len(MVTec3DDataset(dst, "GummyBear", "validation")) == 1
    # A second run skips everything and touches nothing.
    before = _mtimes(dst)
    rep2 = ec.convert_eyecandies(src, dst, progress=False)
    assert not rep2.converted and len(rep2.skipped) == 12 and _mtimes(dst) == before


def test_convert_resumes_and_reports_bad_samples(tmp_path, capsys):
    src = make_eyecandies(tmp_path / "src", categories=("Lollipop",))
    dst = tmp_path / "dst"
    data = src / "Lollipop" / "train" / "data"
    (data / "001_depth.png").write_bytes((data / "001_depth.png").read_bytes()[:60])  # truncated
    (src / "Lollipop" / "val" / "data" / "000_info_depth.yaml").unlink()
    rc = main(["convert", "eyecandies", str(src), str(dst), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "001_depth.png" in err and "000_info_depth.yaml" in err
    good = dst / "Lollipop" / "train" / "good"
    assert (good / "xyz" / "000.tiff").is_file() and not (good / "xyz" / "001.tiff").exists()
    assert len(list((dst / "Lollipop" / "test").rglob("*.tiff"))) == 3
    assert not [p for p in dst.rglob("*") if p.name.startswith(".")]  # no temp files left
    # Fix the inputs and rerun: only the missing samples are converted.
    write_sample(data, "001", seed=1)
    write_sample(src / "Lollipop" / "val" / "data", "000", seed=50)
    before = _mtimes(dst)
    rep = ec.convert_eyecandies(src, dst, progress=False)
    assert rep.ok and sorted(rep.converted) == ["Lollipop/train/001", "Lollipop/val/000"]
    after = _mtimes(dst)
    assert all(after[k] == t for k, t in before.items())


def test_convert_bad_inputs(tmp_path):
    d = tmp_path / "C" / "train" / "data"
    write_sample(d, "000")
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(d / "000_depth.png")  # 8-bit depth
    with pytest.raises(DatasetError, match="16-bit"):
        ec.load_item(ec.list_items(tmp_path / "C", "train")[0])
    write_sample(d, "000")
    (d / "000_info_depth.yaml").write_text("normalization: {min: 2.0, max: 1.0}\n")
    with pytest.raises(DatasetError, match="000_info_depth.yaml"):
        ec.load_item(ec.list_items(tmp_path / "C", "train")[0])
    t = tmp_path / "C" / "test_public" / "data"
    write_sample(t, "00", mask=None)  # test_public without its mask
    with pytest.raises(DatasetError, match="00_mask.png"):
        ec.load_item(ec.list_items(tmp_path / "C", "test_public")[0])
    with pytest.raises(UserInputError, match="separate"):
        ec.convert_eyecandies(tmp_path, tmp_path / "C" / "out", progress=False)
    assert main(["convert", "eyecandies", str(tmp_path / "nothing"), str(tmp_path / "o")]) == 2


def test_convert_world_frame_and_category_filter(tmp_path):
    src = make_eyecandies(tmp_path / "src", n_train=1, n_val=0, test_masks=())
    dst = tmp_path / "dst"
    rc = main(["convert", "eyecandies", str(src), str(dst), "--quiet", "--frame", "world",
               "--category", "candy cane", "--scale", "0.5"])
    assert rc == 0
    assert sorted(os.listdir(dst)) == ["CandyCane"]
    d = src / "CandyCane" / "train" / "data"
    depth = ec.read_metric_depth(d / "000_depth.png", d / "000_info_depth.yaml")
    ref = ec.depth_to_xyz(depth, pose=POSE) * np.float32(0.5)
    np.testing.assert_allclose(tifffile.imread(dst / "CandyCane/train/good/xyz/000.tiff"), ref,
                               rtol=1e-6, atol=1e-7)
