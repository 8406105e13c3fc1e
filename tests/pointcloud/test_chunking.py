"""Chunking, labels, normalisation, pseudo-images, split, stitching and the scoring helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdr_iad.errors import DatasetError, UserInputError
from cmdr_iad.pointcloud.chunking import (
    chunk_labels,
    chunk_sequential,
    chunk_starts,
    normalize_chunks,
    to_pseudo_image,
)
from cmdr_iad.pointcloud.config import chunk_side, model_preset
from cmdr_iad.pointcloud.dataset import counts_of, split_normal, summary_text
from cmdr_iad.pointcloud.predict import stitch_scores
from cmdr_iad.pointcloud.scoring import normalise_map, score_chunks


def test_chunk_side_accepts_squares_with_side_multiple_of_8():
    assert chunk_side(9216) == 96 and chunk_side(4096) == 64 and chunk_side(1024) == 32
    for bad in (1000, 100, 36, 0, -64, 9215):
        with pytest.raises(UserInputError, match="chunk size"):
            chunk_side(bad)


def test_sequential_chunks_drop_the_tail_and_keep_order():
    pts = np.arange(3 * 70, dtype=np.float32).reshape(70, 3)
    ch = chunk_sequential(pts, 32)
    assert ch.shape == (2, 32, 3)
    np.testing.assert_array_equal(ch.reshape(-1, 3), pts[:64])
    with pytest.raises(UserInputError):
        chunk_sequential(pts[:20], 32)


def test_chunk_starts_cover_the_tail_with_an_end_aligned_chunk():
    np.testing.assert_array_equal(chunk_starts(70, 32), [0, 32])
    np.testing.assert_array_equal(chunk_starts(70, 32, cover_tail=True), [0, 32, 38])
    np.testing.assert_array_equal(chunk_starts(64, 32, cover_tail=True), [0, 32])
    with pytest.raises(UserInputError):
        chunk_starts(10, 32)


def test_stitch_scores_uses_the_tail_chunk_only_for_tail_points():
    starts = np.array([0, 32, 38])
    per_chunk = np.stack([np.full(32, 1.0), np.full(32, 2.0), np.arange(32, dtype=np.float32) + 100])
    s = stitch_scores(70, 32, starts, per_chunk)
    np.testing.assert_array_equal(s[:32], 1.0)
    np.testing.assert_array_equal(s[32:64], 2.0)
    np.testing.assert_array_equal(s[64:], np.arange(26, 32) + 100)  # points 64..69 = tail rows 26..31


def test_label_rule_threshold():
    m = np.zeros((3, 1024), dtype=np.uint8)
    m[1, :2] = 1  # 2/1024 < 0.0025
    m[2, :3] = 1  # 3/1024 >= 0.0025
    np.testing.assert_array_equal(chunk_labels(m), [0, 0, 1])


def test_normalisation_range_and_constant_coordinate():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 64, 3)).astype(np.float32) * 100
    x[1, :, 2] = 7.0  # max == min → denominator 1e-12 → all -1
    n = normalize_chunks(x)
    assert n.dtype == np.float32
    np.testing.assert_allclose(n[0].min(0), -1.0, atol=1e-6)
    np.testing.assert_allclose(n[0].max(0), 1.0, atol=1e-6)
    np.testing.assert_array_equal(n[1, :, 2], -1.0)


def test_pseudo_image_is_a_row_major_reshape():
    x = np.arange(64 * 3, dtype=np.float32).reshape(1, 64, 3)
    img = to_pseudo_image(x)
    assert img.shape == (1, 3, 8, 8)
    r, c = 3, 5
    np.testing.assert_array_equal(img[0, :, r, c].numpy(), x[0, 8 * r + c])


def test_split_is_ninety_ten_of_normals_with_all_abnormal_in_test():
    labels = np.array([0] * 23 + [1] * 4 + [0] * 2, dtype=np.uint8)
    tr, te = split_normal(labels, 0.1, 42)
    assert len(te) == 3 + 4 and len(tr) == 22  # ceil(0.1 * 25) = 3 normal test chunks
    assert set(np.flatnonzero(labels)) <= set(te)
    assert not set(tr) & set(te) and (labels[tr] == 0).all()
    tr2, te2 = split_normal(labels, 0.1, 42)
    np.testing.assert_array_equal(tr, tr2)
    c = counts_of(labels, tr, te)
    assert summary_text(c).endswith("22 train / 7 test = 3 normal + 4 anomalous")
    with pytest.raises(DatasetError, match="normal"):
        split_normal(np.array([0, 1, 1]), 0.1, 42)


def test_scoring_masks_missing_pixels_and_handles_an_all_zero_map():
    torch.manual_seed(0)
    target = torch.randn(2, 64, 12)
    target[0, :5] = 0  # missing points: zero feature rows
    target[1] = 0  # nothing valid at all
    pred = torch.randn(2, 64, 12)
    sc = score_chunks(pred, target, 8)
    assert sc.mask[0].reshape(-1)[:5].all() and (sc.distance[0].reshape(-1)[:5] == 0).all()
    assert torch.isfinite(sc.anomaly_map).all() and sc.norm[1] == 0 and sc.image_score[1] == 0
    amap, norm = normalise_map(sc.smoothed[:1])
    nz = sc.smoothed[0][sc.smoothed[0] != 0]
    assert norm[0] == pytest.approx(float(nz.mean().sqrt()))
    assert sc.image_score[0] == pytest.approx(float(amap.max()))


def test_presets():
    p = model_preset("paper")
    assert (p.num_group, p.group_size, p.epochs, p.batch_size, p.lr) == (96, 32, 50, 4, 1e-3)
    assert p.point_mae_bn == "sample" and p.side == 96
    t = model_preset("tiny", 1024)
    assert t.side == 32 and t.epochs == 2
