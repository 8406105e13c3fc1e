"""Unit tests of cmdr_iad.metrics: hand-worked PRO examples, an independent brute-force
reference of the exact protocol, AUROC against scikit-learn, input forms and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from cmdr_iad.errors import EvaluationError
from cmdr_iad.metrics import (
    DEFAULT_LIMITS,
    area_under_curve,
    au_pro,
    image_auroc,
    pixel_auroc,
    pro_curve,
)
from cmdr_iad.metrics import pro as pro_module

# Hand-worked set. Image A: region {0.95, 0.60} touches only diagonally (one 8-connected
# region, two 4-connected ones); the ten normal scores are 0.05, 0.10, ..., 0.45 and 0.85.
# Image B: a single region pixel 0.50 and no normal pixel.
MAP_A = np.array(
    [[0.95, 0.10, 0.20, 0.85], [0.30, 0.60, 0.15, 0.05], [0.25, 0.40, 0.35, 0.45]], np.float32
)
GT_A = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]], np.uint8)
MAP_B = np.array([[0.50]], np.float32)
GT_B = np.array([[1]], np.uint8)


def test_exact_protocol_hand_worked():
    # Distinct scores descending, (fpr, pro): 0.95 (0, 1/4), 0.85 (0.1, 1/4), 0.60 (0.1, 1/2),
    # 0.50 (0.1, 1), 0.45 (0.2, 1), ..., 0.05 (1, 1); plus (0, 0) and (1, 1) at the ends.
    # Area to 0.3: 0.1*0.25 + 0.2*1 = 0.225; to 0.1: 0.025; to 0.05 (interpolated): 0.0125;
    # to 0.15: 0.025 + 0.05 * 1.
    got = au_pro([MAP_A, MAP_B], [GT_A, GT_B], limits=(0.3, 0.1, 0.05, 0.15), num_thresholds=None)
    np.testing.assert_allclose(got, [0.75, 0.25, 0.25, 0.5], rtol=0, atol=1e-12)
    curve = pro_curve([MAP_A, MAP_B], [GT_A, GT_B], num_thresholds=None)
    np.testing.assert_allclose(curve.fprs[:6], [0, 0, 0.1, 0.1, 0.1, 0.2], atol=1e-15)
    np.testing.assert_allclose(curve.pros[:6], [0, 0.25, 0.25, 0.5, 1, 1], atol=1e-15)
    np.testing.assert_allclose(curve.thresholds[1:5], [0.95, 0.85, 0.60, 0.50], rtol=1e-7)
    assert curve.thresholds[0] == np.inf and curve.thresholds[-1] == -np.inf
    assert len(curve.fprs) == 1 + 13 + 1  # 13 distinct scores plus the two end points


def test_sampled_protocol_hand_worked():
    # T=4: positions int(linspace(0, 9, 4)) = 0, 3, 6, 9 -> thresholds 0.05, 0.20, 0.35, 0.85,
    # fpr = 1 - (pos+1)/10 = 0.9, 0.6, 0.3, 0. Only "> 0.85" misses pixels: pro = (1/2 + 0)/2.
    curve = pro_curve([MAP_A, MAP_B], [GT_A, GT_B], num_thresholds=4)
    np.testing.assert_allclose(curve.fprs, [0, 0.3, 0.6, 0.9, 1], atol=1e-15)
    np.testing.assert_allclose(curve.pros, [0.25, 1, 1, 1, 1], atol=1e-15)
    np.testing.assert_allclose(curve.thresholds, [0.85, 0.35, 0.20, 0.05, 0.0], rtol=1e-7)
    # Trapezoid (0, 0.25)-(0.3, 1): area 0.1875; at 0.1 y = 0.5, area 0.0375.
    got = au_pro([MAP_A, MAP_B], [GT_A, GT_B], limits=[0.3, 0.1], num_thresholds=4)
    np.testing.assert_allclose(got, [0.625, 0.375], rtol=0, atol=1e-12)


def test_components_are_8_connected():
    one = au_pro([MAP_A, MAP_B], [GT_A, GT_B], limits=0.3, num_thresholds=None)
    # Breaking the diagonal contact (move 0.60's label to a far pixel) gives 3 regions.
    gt_split = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]], np.uint8)
    split = au_pro([MAP_A, MAP_B], [gt_split, GT_B], limits=0.3, num_thresholds=None)
    assert one == pytest.approx(0.75, abs=1e-12)
    assert split != pytest.approx(one, abs=1e-3)


def _brute_force_exact(maps, masks):
    """Independent, slow reference of the official all-threshold PRO curve."""
    regions, normal = [], []
    for m, g in zip(maps, masks, strict=True):
        lab, n = ndimage.label(np.asarray(g) != 0, structure=np.ones((3, 3)))
        normal.append(m[lab == 0])
        regions += [m[lab == k].astype(np.float64) for k in range(1, n + 1)]
    normal = np.concatenate(normal).astype(np.float64)
    every = np.unique(np.concatenate([normal] + regions))[::-1]
    fprs = [0.0] + [float(np.mean(normal >= t)) for t in every] + [1.0]
    pros = [0.0] + [float(np.mean([np.mean(r >= t) for r in regions])) for t in every] + [1.0]
    return np.array(fprs), np.array(pros), every


def _random_set(rng, shapes, step=None):
    maps, masks = [], []
    for i, (h, w) in enumerate(shapes):
        g = np.zeros((h, w), np.uint8)
        if i % 3:
            for _ in range(rng.integers(1, 4)):
                y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
                g[y : y + rng.integers(1, 4), x : x + rng.integers(1, 4)] = 1
        m = rng.random((h, w)) + g * rng.uniform(-0.3, 0.8)
        if step is not None:
            m = np.round(m / step) * step
        maps.append(m.astype(np.float32))
        masks.append(g)
    return maps, masks


@pytest.mark.parametrize("step", [None, 0.05])
def test_exact_curve_matches_brute_force(step):
    rng = np.random.default_rng(3)
    maps, masks = _random_set(rng, [(9, 11), (7, 7), (12, 5), (10, 10), (6, 13), (8, 8)], step)
    fprs, pros, every = _brute_force_exact(maps, masks)
    curve = pro_curve(maps, masks, num_thresholds=None)  # differing sizes: per-image labelling
    np.testing.assert_allclose(curve.fprs, fprs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(curve.pros, pros, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(curve.thresholds[1:-1], every)
    limits = (0.3, 0.1, 0.05, 0.01, 0.5, 1.0)
    want = [area_under_curve(fprs, pros, lim) / lim for lim in limits]
    np.testing.assert_allclose(au_pro(maps, masks, limits, None), want, rtol=0, atol=1e-12)


def test_sampled_protocol_approaches_exact():
    rng = np.random.default_rng(7)
    maps, masks = _random_set(rng, [(48, 48)] * 9)
    n_ok = int(sum((g == 0).sum() for g in masks))
    exact = au_pro(maps, masks, num_thresholds=None)
    errors = {t: np.abs(au_pro(maps, masks, num_thresholds=t) - exact) for t in (99, 1000, n_ok)}
    lims = np.array(DEFAULT_LIMITS)
    # With one threshold per normal pixel (no ties), the curves differ only in how they cross
    # each vertical step: the gap is at most 1/(2 n_ok) in area.
    assert np.all(errors[n_ok] <= 1 / (2 * n_ok * lims) + 1e-12)
    assert np.all(errors[1000] <= 0.02)
    assert errors[99].max() > errors[1000].max() > errors[n_ok].max()


@pytest.mark.parametrize("steps", [99, 7])
def test_pooled_region_sum_agrees(monkeypatch, steps):
    rng = np.random.default_rng(11)
    maps, masks = _random_set(rng, [(40, 40)] * 12)
    whole = pro_curve(maps, masks, num_thresholds=steps)
    monkeypatch.setattr(pro_module, "_TABLE_ELEMENTS", 50)  # forces pooling by region size
    pooled = pro_curve(maps, masks, num_thresholds=steps)
    np.testing.assert_array_equal(pooled.fprs, whole.fprs)
    np.testing.assert_array_equal(pooled.thresholds, whole.thresholds)
    np.testing.assert_allclose(pooled.pros, whole.pros, rtol=1e-14, atol=0)
    assert not np.array_equal(pooled.pros[1:-1], np.ones(steps))


def test_input_forms_agree():
    rng = np.random.default_rng(5)
    maps, masks = _random_set(rng, [(16, 20)] * 6)
    ref = au_pro(maps, masks)
    stacked = np.stack(maps)
    np.testing.assert_array_equal(au_pro(stacked, np.stack(masks).astype(bool)), ref)
    np.testing.assert_array_equal(
        au_pro(torch.from_numpy(stacked), torch.from_numpy(np.stack(masks))), ref
    )
    np.testing.assert_array_equal(au_pro(stacked[:, None], np.stack(masks)[:, None]), ref)
    np.testing.assert_array_equal(au_pro(stacked.astype(np.float64), np.stack(masks) * 255), ref)
    half = torch.from_numpy(stacked).half()
    np.testing.assert_allclose(au_pro(half, masks), ref, atol=0.05)  # runs in float64
    assert isinstance(au_pro(maps, masks, limits=0.3), float)
    assert au_pro(maps, masks, limits=0.3) == ref[0]
    assert au_pro(maps[1], masks[1], limits=[0.3]).shape == (1,)  # one (H, W) map


@pytest.mark.parametrize("positives_rare", [True, False])
def test_pixel_auroc_matches_sklearn_with_ties(positives_rare):
    rng = np.random.default_rng(2)
    maps = np.round(rng.random((4, 10, 12)) * 8) / 8  # heavy ties
    masks = rng.random((4, 10, 12)) < (0.1 if positives_rare else 0.8)
    maps = maps + masks * 0.2
    want = roc_auc_score(masks.reshape(-1), maps.reshape(-1))
    assert pixel_auroc(maps, masks) == pytest.approx(want, abs=1e-12)
    sizes = [(3, 4), (5, 2), (1, 7)]  # differing sizes: row-major, image order
    flat_s, flat_m = maps.reshape(-1)[:29], masks.reshape(-1)[:29]
    parts_s, parts_m, o = [], [], 0
    for h, w in sizes:
        parts_s.append(flat_s[o : o + h * w].reshape(h, w))
        parts_m.append(flat_m[o : o + h * w].reshape(h, w))
        o += h * w
    want = roc_auc_score(flat_m, flat_s)
    assert pixel_auroc(parts_s, parts_m) == pytest.approx(want, abs=1e-12)


def test_image_auroc_matches_sklearn():
    labels = np.array([0, 1, 1, 0, 1, 0, 1, 1])
    scores = np.array([0.2, 0.9, 0.4, 0.4, 0.8, 0.1, 0.4, 0.95])
    want = roc_auc_score(labels, scores)
    assert image_auroc(labels, scores) == pytest.approx(want, abs=1e-12)
    assert image_auroc(labels.astype(bool), torch.tensor(scores)) == pytest.approx(want, abs=1e-12)
    assert image_auroc(labels[:, None], scores) == pytest.approx(want, abs=1e-12)  # (n, 1)
    assert image_auroc([0, 1], [0.3, 0.3]) == 0.5
    assert image_auroc([1, 0], [0.3, 0.1]) == 1.0


def _raises(match, fn, *args, **kwargs):
    with pytest.raises(EvaluationError, match=match) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, ValueError)


def test_errors_missing_class():
    good = [np.zeros((4, 4), np.uint8)] * 2
    maps = [np.random.default_rng(0).random((4, 4))] * 2
    _raises("no anomalous region", au_pro, maps, good)
    _raises("no anomalous region", pro_curve, maps, good, None)
    _raises("no normal pixel", au_pro, maps, [np.ones((4, 4))] * 2)
    _raises("no normal pixel", au_pro, maps, [np.ones((4, 4))] * 2, num_thresholds=None)
    _raises("only one class", pixel_auroc, maps, good)
    _raises("only one class", pixel_auroc, maps, [np.ones((4, 4))] * 2)
    _raises("only one class", image_auroc, [1, 1, 1], [0.1, 0.2, 0.3])


def test_errors_bad_input():
    m, g = np.zeros((3, 8, 8), np.float32), np.zeros((3, 8, 8), bool)
    g[:, 2, 2] = True
    for fn in (au_pro, pro_curve, pixel_auroc):
        _raises("empty", fn, [], [])
        _raises("empty", fn, np.zeros((0, 8, 8)), np.zeros((0, 8, 8)))
        _raises(r"3 anomaly maps but 2 ground-truth masks", fn, m, g[:2])
        _raises(
            r"anomaly map 1 has shape \(8, 8\) but ground-truth mask 1 has shape \(8, 7\)",
            fn,
            list(m),
            [g[0], g[1, :, :7], g[2]],
        )
        bad = m.copy()
        bad[2, 1, 1] = np.nan
        _raises("anomaly map 2 contains 1 NaN/inf", fn, bad, g)
        bad[2, 1, 1] = np.inf
        _raises("anomaly map 2 contains 1 NaN/inf", fn, list(bad), list(g))
        bad_gt = g.astype(np.float32)
        bad_gt[1, 0, 0] = np.nan
        _raises("ground-truth mask 1 contains 1 NaN/inf", fn, m, bad_gt)
        _raises("2-D", fn, [np.zeros(5)], [np.zeros(5)])
        _raises("real numbers", fn, m.astype(complex), g)
    _raises(r"limits must lie in \(0, 1\]", au_pro, m, g, limits=(0.3, 0.0))
    _raises(r"limits must lie in \(0, 1\]", au_pro, m, g, limits=1.5)
    _raises(r"limits must lie in \(0, 1\]", au_pro, m, g, limits=[np.nan])
    _raises("no FPR limit", au_pro, m, g, limits=[])
    _raises("num_thresholds", au_pro, m, g, num_thresholds=0)
    _raises("num_thresholds", au_pro, m, g, num_thresholds=2.5)
    _raises("num_thresholds", pro_curve, m, g, num_thresholds=True)
    _raises("3 image labels but 2 image scores", image_auroc, [0, 1, 1], [0.1, 0.2])
    _raises("empty", image_auroc, [], [])
    _raises("must be 0 or 1", image_auroc, [0, 2], [0.1, 0.2])
    _raises(r"image score 1 is nan", image_auroc, [0, 1], [0.1, float("nan")])


def test_area_under_curve_limit_outside():
    with pytest.raises(EvaluationError, match="outside"):
        area_under_curve(np.array([0.0, 0.2]), np.array([0.0, 1.0]), 0.3)
