"""`data.validate.check_split`: every file of a split is read once, the first bad one is named,
and a split of all-zero clouds is refused when its points are needed."""

from __future__ import annotations

import numpy as np
import pytest

from cmdr_iad.data.mvtec3d import MVTec3DDataset
from cmdr_iad.data.pointcloud_io import write_organized_tiff
from cmdr_iad.data.validate import check_split
from cmdr_iad.errors import DatasetError


@pytest.fixture
def root(tmp_path):
    from cmdr_iad.data.synthetic import generate_dataset

    return generate_dataset(tmp_path / "d", categories=("puck",), n_train=3, n_val=1, n_test_good=1,
                            n_test_defect=1, size=(32, 32), seed=0)


def test_counts_and_progress(root):
    ds = MVTec3DDataset(root, "puck", "train", require_points=False)
    calls = []
    res = check_split(ds, on_sample=lambda d, t: calls.append((d, t)))
    assert (res.samples, res.clouds, res.clouds_with_points) == (3, 3, 3)
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_last_file_bad_is_found(root):
    p = root / "puck" / "train" / "good" / "xyz" / "002.tiff"
    a = np.ones((32, 32, 3), np.float32)
    a[5, 5] = np.inf
    write_organized_tiff(p, a)
    with pytest.raises(DatasetError, match="002.tiff.*inf"):
        check_split(MVTec3DDataset(root, "puck", "train", require_points=False))


def test_all_zero_clouds(root):
    for p in (root / "puck" / "train" / "good" / "xyz").glob("*.tiff"):
        write_organized_tiff(p, np.zeros((32, 32, 3), np.float32))
    ds = MVTec3DDataset(root, "puck", "train", require_points=False)
    with pytest.raises(DatasetError, match=r"puck/train: none of its 3 point cloud"):
        check_split(ds)
    assert check_split(ds, need_points=False).clouds_with_points == 0
    # one cloud with points is enough
    write_organized_tiff(root / "puck" / "train" / "good" / "xyz" / "001.tiff", np.ones((32, 32, 3), np.float32))
    assert check_split(ds).clouds_with_points == 1


def test_rgb_only_split_has_no_clouds(root):
    ds = MVTec3DDataset(root, "puck", "train", load_xyz=False)
    assert check_split(ds).clouds == 0


def test_units_are_checked(root):
    from cmdr_iad.errors import UserInputError

    with pytest.raises(UserInputError, match="units"):
        MVTec3DDataset(root, "puck", "train", units="km")
