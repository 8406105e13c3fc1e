"""MVTec 3D-AD reader: layout, order, labels, lazy reading, and every bad-input case."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile
from PIL import Image

from cmdr_iad.data.folder import load_sample
from cmdr_iad.data.mvtec3d import MVTec3DDataset, list_categories
from cmdr_iad.data.pointcloud_io import write_organized
from cmdr_iad.data.synthetic import DEFECT_TYPES
from cmdr_iad.errors import DatasetError, UserInputError


def test_layout_labels_and_order(synth_root, synth_size):
    SYNTH_SIZE = synth_size
    assert list_categories(synth_root) == ["puck"]
    train = MVTec3DDataset(synth_root, "puck", "train")
    val = MVTec3DDataset(synth_root, "puck", "validation")
    test = MVTec3DDataset(synth_root, "puck", "test")
    assert len(train) == 2 and len(val) == 1 and len(test) == 1 + len(DEFECT_TYPES)
    assert train.keys == ["puck/train/good/000", "puck/train/good/001"]
    assert test.defect_types == sorted(["good", *DEFECT_TYPES])
    assert test.labels.tolist() == [0 if d == "good" else 1 for d in test.defect_types]
    s = train[0]
    assert s.rgb.dtype == np.uint8 and s.rgb.shape == (*SYNTH_SIZE, 3)
    assert s.xyz.dtype == np.float32 and s.xyz.shape == (*SYNTH_SIZE, 3)
    assert s.gt is None and s.label == 0 and s.defect_type == "good"
    for t in test:
        assert t.gt.dtype == bool and t.gt.shape == SYNTH_SIZE
        assert t.gt.any() == (t.label == 1)
        assert (t.gt_path is None) == (t.label == 0)
    only_xyz = MVTec3DDataset(synth_root, "puck", "test", load_rgb=False)
    assert only_xyz[0].rgb is None and only_xyz[0].xyz is not None and only_xyz[0].gt is not None
    assert len(test[1:3]) == 2


def test_reading_is_lazy(synth_copy):
    p = synth_copy / "puck/train/good/rgb/001.png"
    p.write_bytes(b"not a png")
    ds = MVTec3DDataset(synth_copy, "puck", "train")  # building does not read the files
    ds[0]
    with pytest.raises(DatasetError, match="001.png.*unreadable"):
        ds[1]
    with pytest.raises(DatasetError, match="001.png"):
        ds.validate()


def test_missing_folders(synth_copy, tmp_path):
    with pytest.raises(DatasetError, match="nowhere.*root not found"):
        MVTec3DDataset(tmp_path / "nowhere", "puck", "train")
    with pytest.raises(DatasetError, match="bagel.*category folder not found.*puck"):
        MVTec3DDataset(synth_copy, "bagel", "train")
    shutil.rmtree(synth_copy / "puck/validation")
    with pytest.raises(DatasetError, match="validation.*split folder not found"):
        MVTec3DDataset(synth_copy, "puck", "validation")
    shutil.rmtree(synth_copy / "puck/test/crack/gt")
    with pytest.raises(DatasetError, match="crack/gt.*folder not found"):
        MVTec3DDataset(synth_copy, "puck", "test")
    with pytest.raises(UserInputError):
        MVTec3DDataset(synth_copy, "puck", "training")
    with pytest.raises(DatasetError, match="no category folders"):
        list_categories(tmp_path)


def test_count_and_pairing(synth_copy):
    (synth_copy / "puck/train/good/xyz/001.tiff").unlink()
    with pytest.raises(DatasetError, match=r"train/good: 2 rgb file\(s\) but 1 xyz"):
        MVTec3DDataset(synth_copy, "puck", "train")
    xyz = synth_copy / "puck/test/good/xyz"
    (xyz / "000.tiff").rename(xyz / "007.tiff")
    with pytest.raises(DatasetError, match=r"000.png: no matching xyz file|007.tiff: no matching rgb"):
        MVTec3DDataset(synth_copy, "puck", "test")
    xyz = synth_copy / "puck/test/good/xyz"
    (xyz / "007.tiff").rename(xyz / "000.tiff")
    gt = synth_copy / "puck/test/stain/gt"
    (gt / "000.png").rename(gt / "001.png")
    with pytest.raises(DatasetError, match="no matching gt file|001.png: no matching rgb"):
        MVTec3DDataset(synth_copy, "puck", "test")


def test_empty_category_and_folders(synth_copy):
    (synth_copy / "empty").mkdir()
    (synth_copy / "empty/train/good/rgb").mkdir(parents=True)
    (synth_copy / "empty/train/good/xyz").mkdir()
    with pytest.raises(DatasetError, match="empty/train/good: no samples"):
        MVTec3DDataset(synth_copy, "empty", "train")
    (synth_copy / "empty/test").mkdir()
    with pytest.raises(DatasetError, match="empty/test: empty split"):
        MVTec3DDataset(synth_copy, "empty", "test")


def _damage(root, rel, fn):
    p = root / rel
    fn(p)
    return p


@pytest.mark.parametrize("case", ["truncated_png", "truncated_tiff", "garbage_tiff", "shape",
                                  "dtype", "gt_size", "xyz_size", "inf", "no_points"])
def test_bad_files_name_the_file(synth_copy, synth_size, case):
    h, w = synth_size
    d = synth_copy / "puck/test/bump"
    target = {
        "truncated_png": d / "rgb/000.png", "truncated_tiff": d / "xyz/000.tiff",
        "garbage_tiff": d / "xyz/000.tiff", "shape": d / "xyz/000.tiff", "dtype": d / "xyz/000.tiff",
        "gt_size": d / "gt/000.png", "xyz_size": d / "xyz/000.tiff", "inf": d / "xyz/000.tiff",
        "no_points": d / "xyz/000.tiff",
    }[case]
    xyz = tifffile.imread(d / "xyz/000.tiff")
    if case.startswith("truncated"):
        raw = target.read_bytes()
        target.write_bytes(raw[: len(raw) // 2])
        msg = "unreadable or truncated"
    elif case == "garbage_tiff":
        target.write_bytes(b"II*\x00" + b"\x01" * 40)
        msg = "unreadable or truncated"
    elif case == "shape":
        tifffile.imwrite(target, xyz[..., :2].copy())
        msg = r"shape \(H, W, 3\)"
    elif case == "dtype":
        tifffile.imwrite(target, (xyz * 1000).astype(np.uint16))
        msg = "must be float32"
    elif case == "gt_size":
        Image.new("L", (w + 1, h)).save(target)
        msg = "gt size"
    elif case == "xyz_size":
        write_organized(target, xyz[:-1])
        msg = "differs from rgb size"
    elif case == "inf":
        xyz[3, 4, 2] = np.inf
        write_organized(target, xyz)
        msg = "inf"
    else:
        write_organized(target, np.full_like(xyz, np.nan))
        msg = "no valid 3D point"
    ds = MVTec3DDataset(synth_copy, "puck", "test")
    i = ds.defect_types.index("bump")
    with pytest.raises(DatasetError, match=f"{target.parent.name}/{target.name}.*{msg}"):
        ds[i]


def test_nan_points_become_missing(synth_copy):
    p = synth_copy / "puck/train/good/xyz/000.tiff"
    xyz = tifffile.imread(p)
    xyz[1, 2, 0] = np.nan
    write_organized(p, xyz)
    s = MVTec3DDataset(synth_copy, "puck", "train")[0]
    assert s.xyz[1, 2].tolist() == [0, 0, 0] and np.isfinite(s.xyz).all()


def test_load_sample_validates_sizes(synth_root, synth_size, tmp_path):
    d = synth_root / "puck/test/crack"
    s = load_sample(d / "rgb/000.png", d / "xyz/000.tiff", d / "gt/000.png")
    assert s.label == 1 and s.size == synth_size and s.key == "000"
    assert load_sample(rgb_path=d / "rgb/000.png").label == -1
    small = tmp_path / "small.png"
    Image.new("RGB", (10, 10)).save(small)
    with pytest.raises(DatasetError, match="000.tiff.*differs from the RGB size"):
        load_sample(small, d / "xyz/000.tiff")
    with pytest.raises(DatasetError, match="small.png: gt size"):
        load_sample(d / "rgb/000.png", gt_path=small)
    with pytest.raises(UserInputError):
        load_sample()


def test_square_padded_cloud_next_to_non_square_rgb(tmp_path):
    """`preprocess` writes xyz padded to S×S while RGB/GT stay H×W: accepted, other sizes are not."""
    from cmdr_iad.data.transforms import pad_square

    d = tmp_path / "part" / "train" / "good"
    (d / "rgb").mkdir(parents=True)
    (d / "xyz").mkdir()
    rgb = np.full((20, 30, 3), 90, np.uint8)
    xyz = np.ones((20, 30, 3), np.float32)
    Image.fromarray(rgb).save(d / "rgb" / "000.png")
    write_organized(d / "xyz" / "000.tiff", pad_square(xyz, "zeros"))
    s = MVTec3DDataset(tmp_path, "part", "train")[0]
    assert s.rgb.shape == (20, 30, 3) and s.xyz.shape == (30, 30, 3)
    write_organized(d / "xyz" / "000.tiff", np.ones((30, 31, 3), np.float32))
    with pytest.raises(DatasetError, match="differs from rgb size"):
        MVTec3DDataset(tmp_path, "part", "train")[0]
