"""Golden parity: the MVTec reader + reference transforms reproduce the authors' loader bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdr_iad.config import FeatureConfig
from cmdr_iad.data.mvtec3d import MVTec3DDataset, list_categories
from cmdr_iad.data.transforms import reference_depth, transform_sample

KEYS = ("s0", "s1", "s2", "s3", "s4")


@pytest.fixture(scope="module")
def golden_samples(golden, load_json):
    """rgb path relative to the loader root → Sample, for the train and test splits."""
    root = golden / "loader"
    cls = load_json("loader_results.json")["class_name"]
    out = {}
    for split in ("train", "test"):
        for s in MVTec3DDataset(root, cls, split):
            out[s.rgb_path.relative_to(root).as_posix()] = s
    return out


def _record(load_json, key):
    return next(r for r in load_json("loader_results.json")["samples"] if r["key"] == key)


@pytest.mark.parametrize("key", KEYS)
def test_loader_matches_reference(key, golden_samples, load_npz, load_json):
    ref = load_npz("loader.npz")
    rec = _record(load_json, key)
    s = golden_samples[rec["rgb_path"]]
    assert s.xyz_path.as_posix().endswith(rec["xyz_path"])
    assert list(s.rgb.shape[:2]) == rec["source_HW"]
    t = transform_sample(s, FeatureConfig())  # paper preset: reference transforms, 224
    np.testing.assert_array_equal(t.rgb.numpy(), ref[f"{key}__rgb"])
    np.testing.assert_array_equal(t.xyz.numpy(), ref[f"{key}__pc"])
    np.testing.assert_array_equal(reference_depth(s.xyz, 224).numpy(), ref[f"{key}__depth"])
    assert t.label == int(ref[f"{key}__label"]) == rec["label"]
    assert t.rgb.dtype == t.xyz.dtype == torch.float32
    assert int((~s.xyz.any(-1)).sum()) == rec["n_zero_points_source"]
    assert int((~t.xyz.numpy().any(0)).sum()) == rec["n_zero_points_resized"]
    if rec["gt_path"] is None and s.gt is None:  # train split: no gt
        assert f"{key}__gt" not in ref
    else:
        np.testing.assert_array_equal(t.gt.numpy()[None], ref[f"{key}__gt"])
        assert float(t.gt.sum()) == rec["gt_sum"]
        if rec["gt_path"] is not None:
            assert s.gt_path.as_posix().endswith(rec["gt_path"])


def test_golden_layout_and_order(golden, load_json):
    root = golden / "loader"
    assert list_categories(root) == [load_json("loader_results.json")["class_name"]]
    test = MVTec3DDataset(root, "toy_part", "test")
    assert test.keys == ["toy_part/test/good/000", "toy_part/test/scratch/000",
                         "toy_part/test/scratch/001"]
    assert test.labels.tolist() == [0, 1, 1]
    assert len(MVTec3DDataset(root, "toy_part", "train")) == 2
