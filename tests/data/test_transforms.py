"""Transforms: reference rules, the aligned mode, the inverse to original size, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdr_iad.config import FeatureConfig
from cmdr_iad.data.sample import Sample, TransformedSample, collate
from cmdr_iad.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    gt_to_tensor,
    pad_square,
    rgb_to_tensor,
    square_pad_geometry,
    to_original,
    transform_sample,
    xyz_to_tensor,
)


def test_square_pad_geometry_and_edge_pad():
    assert square_pad_geometry(260, 300) == (300, 20, 0)
    assert square_pad_geometry(301, 258) == (301, 0, 21)  # 43 columns: 21 left, 22 right
    a = np.arange(6, dtype=np.uint8).reshape(2, 3)
    e = pad_square(a, "edge")
    assert e.shape == (3, 3) and e[0].tolist() == [0, 1, 2] and e[2].tolist() == [3, 4, 5]
    z = pad_square(a, "zeros")
    assert z[2].tolist() == [0, 0, 0] and z[:2].tolist() == a.tolist()


def test_rgb_normalisation_of_a_flat_colour():
    rgb = np.zeros((10, 14, 3), np.uint8)
    rgb[...] = (200, 100, 50)
    t = rgb_to_tensor(rgb, 16)
    assert t.shape == (3, 16, 16) and t.dtype == torch.float32
    for c, v in enumerate((200, 100, 50)):
        exp = (np.float32(v) / np.float32(255) - np.float32(IMAGENET_MEAN[c])) / np.float32(IMAGENET_STD[c])
        assert torch.allclose(t[c], torch.tensor(exp), atol=1e-6)


def test_reference_xyz_is_stretched_legacy_nearest():
    rng = np.random.default_rng(0)
    h, w, g = 30, 50, 16
    xyz = rng.random((h, w, 3), dtype=np.float32)
    t = xyz_to_tensor(xyz, g, "reference").numpy()
    rows, cols = (np.arange(g) * h) // g, (np.arange(g) * w) // g
    np.testing.assert_array_equal(t, xyz[rows][:, cols].transpose(2, 0, 1))


def test_gt_threshold_and_reference_pad():
    gt = np.zeros((4, 6), np.uint8)
    gt[0, 0], gt[0, 1] = 127, 128
    t = gt_to_tensor(gt, 6, "reference")
    # edge pad: row 0 is replicated into the top pad row
    assert t[0, 1] == 1 and t[1, 1] == 1 and t[0, 0] == 0 and t.sum() == 2
    ta = gt_to_tensor(gt, 6, "aligned")  # zero pad: the top pad row stays empty
    assert ta[0, 1] == 0 and ta[1, 1] == 1 and ta.sum() == 1


def _marker_sample(h=40, w=80):
    gt = np.zeros((h, w), bool)
    gt[2:12, 56:70] = True
    xyz = np.zeros((h, w, 3), np.float32)
    xyz[gt] = (0.1, 0.2, 0.5)
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[gt] = 255
    return Sample(rgb=rgb, xyz=xyz, gt=gt, label=1, key="m")


def test_aligned_mode_keeps_rgb_xyz_gt_aligned():
    s = _marker_sample()
    cfg = FeatureConfig(grid_size=40, rgb_size=40, transforms="aligned")
    t = transform_sample(s, cfg)
    valid = t.xyz.abs().sum(0) > 0
    assert torch.equal(valid, t.gt.bool())  # xyz and gt cover exactly the same cells
    bright = t.rgb[0] > 0.5
    iou = (bright & valid).sum() / (bright | valid).sum()
    assert iou > 0.8
    # the reference stretches xyz instead: it no longer matches the padded gt / rgb
    tr = transform_sample(s, FeatureConfig(grid_size=40, rgb_size=40, transforms="reference"))
    valid_r = tr.xyz.abs().sum(0) > 0
    assert not torch.equal(valid_r, tr.gt.bool())
    assert (valid_r & tr.gt.bool()).sum() < 0.5 * tr.gt.sum()


@pytest.mark.parametrize("mode", ["aligned", "reference"])
def test_to_original_undoes_the_square_pad(mode):
    s = _marker_sample(37, 61)
    g = 32
    m = gt_to_tensor(s.gt, g, mode)
    back = to_original(m, (37, 61), mode, interpolation="nearest")
    assert back.shape == (37, 61)
    agree = (back.bool() == torch.from_numpy(s.gt)).float().mean()
    assert agree > 0.97
    # maps on the reference's stretched xyz grid go back with frame="xyz"
    v = (xyz_to_tensor(s.xyz, g, mode).abs().sum(0) > 0).float()
    vb = to_original(v.numpy(), (37, 61), mode, frame="xyz", interpolation="nearest")
    assert isinstance(vb, np.ndarray) and vb.dtype == np.float32
    assert ((vb > 0.5) == s.gt).mean() > 0.97


def test_to_original_shapes_and_constants():
    m = torch.full((2, 3, 8, 8), 2.5)
    out = to_original(m, (5, 9), "aligned")
    assert out.shape == (2, 3, 5, 9) and torch.allclose(out, torch.tensor(2.5))
    with pytest.raises(ValueError):
        to_original(m, (5, 9), "other")


def test_transform_sample_sizes_and_missing_modalities():
    s = _marker_sample(30, 20)
    t = transform_sample(Sample(rgb=s.rgb, label=0, key="a"), FeatureConfig(grid_size=32, rgb_size=112))
    assert t.rgb.shape == (3, 112, 112) and t.xyz is None and t.gt is None and t.orig_size == (30, 20)
    t2 = transform_sample(Sample(xyz=s.xyz, gt=s.gt, label=1, key="b"),
                          FeatureConfig(grid_size=32, rgb_size=112, transforms="aligned"))
    assert t2.rgb is None and t2.xyz.shape == (3, 32, 32) and t2.gt.shape == (32, 32)
    assert set(torch.unique(t2.gt).tolist()) <= {0.0, 1.0}


def test_collate():
    cfg = FeatureConfig(grid_size=16, rgb_size=32, transforms="aligned")
    a = transform_sample(_marker_sample(), cfg)
    b = transform_sample(_marker_sample(24, 24), cfg)
    batch = collate([a, b])
    assert batch.rgb.shape == (2, 3, 32, 32) and batch.xyz.shape == (2, 3, 16, 16)
    assert batch.gt.shape == (2, 16, 16) and batch.labels.tolist() == [1, 1] and len(batch) == 2
    assert batch.orig_sizes == [(40, 80), (24, 24)]
    c = TransformedSample(rgb=a.rgb, xyz=None, gt=None, label=0)
    with pytest.raises(ValueError):
        collate([a, c])
