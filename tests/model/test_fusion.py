"""Fusion variants (Eq. 1–7, Table 6, single modality) against independent numpy / hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cmdr_iad.config import ScoreConfig
from cmdr_iad.model import fusion as fu


# ----------------------------------------------------------------------------- numpy reference
def np_box(x: np.ndarray, k: int) -> np.ndarray:
    """k×k mean, zero padding, divisor k², written as an explicit window sum (float64)."""
    r = k // 2
    h, w = x.shape
    p = np.zeros((h + 2 * r, w + 2 * r))
    p[r:r + h, r:r + w] = x
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            out[i, j] = p[i:i + k, j:j + k].sum() / (k * k)
    return out


def np_chain(x, chain):
    for k, n in chain:
        for _ in range(n):
            x = np_box(x, k)
    return x


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_alpha(joint):
    mu = joint.mean()
    local_std = np.sqrt(np_box((joint - mu) ** 2, 7))
    w = 4.0 + 2.0 * local_std / (local_std.mean() + 1e-8)
    return sigmoid(w * joint)


def np_arec(r2, r3, b=0.3):
    w2, w3 = np.exp(-b * r2), np.exp(-b * r3)
    return (w2 * r2 + w3 * r3) / (w2 + w3 + 1e-8)


def np_soft(a, b):
    ea, eb = np.exp(-a), np.exp(-b)
    return (ea * a + eb * b) / (ea + eb)


def np_psi(variant, m2, m3, r2, r3):
    joint = m2 * m3
    alpha = np_alpha(joint)
    return {
        "full": alpha * joint * np_arec(r2, r3),
        "case1": alpha * joint * (r2 + r3) / 2,
        "case2": m2 * m3 * r2 * r3,
        "case3": np_soft(m2, m3) * np_soft(r2, r3),
        "case4": np_soft(m2, m3) * alpha * r2 * r3,
        "case5": (alpha * joint) * (alpha * r2 * r3),
        "case6": (m2 + m3 + r2 + r3) / 4,
        "reconstruction_only": np_arec(r2, r3),
        "mapping_only": alpha * joint,
        "rgb_only": r2,
        "xyz_only": r3,
    }[variant]


def np_score(variant, m2, m3, r2, r3, valid):
    """The reference chain per sample, in float64: mask, pre-smooth d_rec2d, Ψ, re-mask, smooth."""
    m2, m3, r2, r3 = (np.where(valid, x, 0.0) for x in (m2, m3, r2, r3))
    r2 = np_chain(r2, ((5, 3), (7, 2)))
    psi = np.where(valid, np_psi(variant, m2, m3, r2, r3), 0.0)
    sm = np_chain(psi, ((5, 5), (7, 3)))
    nz = sm[sm != 0].mean()
    return sm, (sm / np.sqrt(nz)).max(), sm / nz, sm / np.sqrt(sm.mean())


@pytest.fixture(scope="module")
def tiny():
    """Two 9×11 samples: distances in [0, 2], a masked border strip and a hole in sample 0."""
    rng = np.random.default_rng(7)
    maps = [rng.uniform(0.05, 1.5, size=(2, 9, 11)).astype(np.float32) for _ in range(4)]
    valid = np.ones((2, 9, 11), bool)
    valid[0, :2, :] = False
    valid[0, 5, 6] = False
    valid[1, :, -1] = False
    return maps, valid


# ----------------------------------------------------------------------------- hand-worked values
# constant maps: μ = joint, so (joint − μ)² = 0, local_std = 0, W = 4 and α = sigmoid(4 · joint).
# Values are binary fractions so that μ is exact in float32 (otherwise local_std is a rounding
# residue of ~1e-8, comparable to the gate's 1e-8 guard, and W is no longer 4 — as in the reference).
M2, M3, R2, R3 = 0.5, 0.25, 0.25, 0.75
JOINT = M2 * M3  # 0.125
ALPHA = 1 / (1 + math.exp(-4 * JOINT))  # sigmoid(0.5) = 0.622459...
W2, W3 = math.exp(-0.3 * R2), math.exp(-0.3 * R3)
A_REC = (W2 * R2 + W3 * R3) / (W2 + W3 + 1e-8)


def soft(a, b):
    return (math.exp(-a) * a + math.exp(-b) * b) / (math.exp(-a) + math.exp(-b))


HAND = {
    "full": ALPHA * JOINT * A_REC,
    "case1": ALPHA * JOINT * (R2 + R3) / 2,
    "case2": 0.5 * 0.25 * 0.25 * 0.75,  # 0.0234375
    "case3": soft(M2, M3) * soft(R2, R3),
    "case4": soft(M2, M3) * ALPHA * R2 * R3,
    "case5": ALPHA * JOINT * ALPHA * R2 * R3,
    "case6": (0.5 + 0.25 + 0.25 + 0.75) / 4,  # 0.4375
    "reconstruction_only": A_REC,
    "mapping_only": ALPHA * JOINT,
    "rgb_only": R2,
    "xyz_only": R3,
}
FUNCS = {
    "full": lambda a, b, c, d: fu.fuse_full(a, b, c, d),
    "case1": fu.fuse_case_1,
    "case2": fu.fuse_case_2,
    "case3": fu.fuse_case_3,
    "case4": fu.fuse_case_4,
    "case5": fu.fuse_case_5,
    "case6": fu.fuse_case_6,
    "reconstruction_only": lambda a, b, c, d: fu.fuse_reconstruction_only(c, d),
    "mapping_only": lambda a, b, c, d: fu.fuse_mapping_only(a, b),
    "rgb_only": lambda a, b, c, d: fu.score_rgb_only(c),
    "xyz_only": lambda a, b, c, d: fu.score_xyz_only(d),
}


def test_variant_list():
    assert set(fu.VARIANTS) == set(HAND) == set(FUNCS)
    assert ScoreConfig().variant in fu.VARIANTS
    assert fu.required_maps("rgb_only") == ("d_rec2d",)
    assert fu.required_maps("xyz_only") == ("d_rec3d",)
    assert fu.required_maps("mapping_only") == ("d_map2d", "d_map3d")
    assert fu.required_maps("full") == fu.MAP_NAMES


@pytest.mark.parametrize("variant", list(HAND))
def test_variant_equation_by_hand(variant):
    const = [torch.full((1, 8, 8), v) for v in (M2, M3, R2, R3)]
    psi = FUNCS[variant](*const)
    np.testing.assert_allclose(psi.numpy(), HAND[variant], rtol=2e-6)


def test_hand_values_are_what_we_think():
    assert HAND["case2"] == pytest.approx(0.0234375)
    assert ALPHA == pytest.approx(0.62245933, rel=1e-7)
    # Eq. 3 softmax by hand: softmax(−0.5, −0.25) = (0.43782350, 0.56217650)
    assert soft(M2, M3) == pytest.approx(0.43782350 * 0.5 + 0.56217650 * 0.25, rel=1e-7)


def test_case1_product_option():
    const = [torch.full((1, 8, 8), v) for v in (M2, M3, R2, R3)]
    got = fu.fuse_case_1(*const, d_rec="product")
    np.testing.assert_allclose(got.numpy(), ALPHA * JOINT * R2 * R3, rtol=2e-6)
    with pytest.raises(ValueError, match="d_rec"):
        fu.fuse_case_1(*const, d_rec="max")


def test_gate_on_nonconstant_map_by_hand():
    # a single spike of height 1 in a 7×7 zero map: μ = 1/49
    joint = torch.zeros(1, 7, 7)
    joint[0, 3, 3] = 1.0
    mu = 1 / 49
    # centre: the 7×7 window covers the whole map → P = ((1−μ)² + 48 μ²)/49
    p_centre = ((1 - mu) ** 2 + 48 * mu**2) / 49
    # corner (0,0): window covers rows/cols 0..3 (16 pixels incl. the spike), rest is zero padding
    p_corner = ((1 - mu) ** 2 + 15 * mu**2) / 49
    got_std = fu.box_filter((joint - joint.mean(dim=(1, 2), keepdim=True)) ** 2, 7).sqrt()
    assert got_std[0, 3, 3].item() == pytest.approx(math.sqrt(p_centre), rel=1e-6)
    assert got_std[0, 0, 0].item() == pytest.approx(math.sqrt(p_corner), rel=1e-6)
    # off-spike pixels have joint = 0 → α·joint = 0 whatever W is; the spike gets sigmoid(W)
    std = got_std[0].double().numpy()
    w_centre = 4 + 2 * std[3, 3] / (std.mean() + 1e-8)
    a_map = fu.reliability_gated_mapping_anomaly(joint, torch.ones(1, 7, 7))
    assert a_map[0, 3, 3].item() == pytest.approx(1 / (1 + math.exp(-w_centre)), rel=1e-6)
    assert torch.count_nonzero(a_map).item() == 1


# ----------------------------------------------------------------------------- full chain vs numpy
@pytest.mark.parametrize("variant", list(HAND))
def test_score_matches_numpy_reference(variant, tiny):
    maps, valid = tiny
    t = [torch.from_numpy(m) for m in maps]
    smoothed, scores = fu.score(*t, torch.from_numpy(valid), variant)
    assert smoothed.shape == (2, 9, 11) and scores.shape == (2,)
    for i in range(2):
        sm, s, am, ps = np_score(variant, *(m[i].astype(np.float64) for m in maps), valid[i])
        np.testing.assert_allclose(smoothed[i].numpy(), sm, rtol=1e-5, atol=1e-9)
        assert scores[i].item() == pytest.approx(s, rel=1e-5)
        np.testing.assert_allclose(fu.aupro_map(smoothed)[i].numpy(), am, rtol=1e-5)
        np.testing.assert_allclose(fu.pixel_scores(smoothed)[i].numpy(), ps, rtol=1e-5)


@pytest.mark.parametrize("variant", ["full", "case3", "rgb_only"])
def test_batch_equals_samples_one_by_one(variant, tiny):
    maps, valid = tiny
    t = [torch.from_numpy(m) for m in maps]
    v = torch.from_numpy(valid)
    sm, sc = fu.score(*t, v, variant)
    for i in range(2):
        sm_i, sc_i = fu.score(*(m[i:i + 1] for m in t), v[i:i + 1], variant)
        torch.testing.assert_close(sm[i:i + 1], sm_i, rtol=1e-6, atol=0)
        torch.testing.assert_close(sc[i:i + 1], sc_i, rtol=1e-6, atol=0)


def test_unused_maps_may_be_none(tiny):
    maps, valid = tiny
    t = [torch.from_numpy(m) for m in maps]
    v = torch.from_numpy(valid)
    a = fu.score(None, None, t[2], None, None, "rgb_only")
    b = fu.score(*t, torch.ones_like(v), "rgb_only")
    torch.testing.assert_close(a, b)
    c = fu.score(None, None, None, t[3], v, "xyz_only")
    torch.testing.assert_close(c, fu.score(*t, v, "xyz_only"))


def test_custom_chains(tiny):
    """The raw-scan 3D-only mode uses one 5×5 pass and no pre-smoothing."""
    maps, valid = tiny
    sm, _ = fu.score(None, None, None, torch.from_numpy(maps[3]), torch.from_numpy(valid), "xyz_only",
                     fused_chain=((5, 1),))
    want = np_box(np.where(valid[0], maps[3][0], 0.0).astype(np.float64), 5)
    np.testing.assert_allclose(sm[0].numpy(), want, rtol=1e-6)


def test_box_filter_keeps_exact_zeros():
    x = torch.zeros(1, 30, 30)
    x[0, 0, 0] = 1e-3
    y = fu.smooth_chain(x, fu.FUSED_CHAIN)  # support radius 5·2 + 3·3 = 19
    assert torch.count_nonzero(y[0, :20, :20] == 0) == 0
    assert torch.all(y[0, 20:, :] == 0) and torch.all(y[0, :, 20:] == 0)
    np.testing.assert_allclose(fu.box_filter(x, 5)[0, :3, :3].numpy(), np.full((3, 3), 1e-3 / 25), rtol=1e-6)


# ----------------------------------------------------------------------------- grid-scaled chains
def test_grid_chain_is_the_reference_chain_at_224():
    assert fu.grid_chain(fu.REC2D_CHAIN, 224) == fu.REC2D_CHAIN
    assert fu.grid_chain(fu.FUSED_CHAIN, 224) == fu.FUSED_CHAIN


@pytest.mark.parametrize("grid", [16, 32, 56, 112, 160])
def test_grid_chain_keeps_the_blur_per_image_on_smaller_grids(grid):
    """Variance (px²) ≈ reference variance × (G/224)², to within half a box-3 pass (1/3 px²)."""
    for chain in (fu.REC2D_CHAIN, fu.FUSED_CHAIN):
        got = fu.grid_chain(chain, grid)
        assert all(k == 3 for k, _ in got)
        want = fu.chain_variance(chain) * (grid / 224) ** 2
        assert abs(fu.chain_variance(got) - want) <= 1 / 3 + 1e-9, (chain, grid, got)


def test_grid_chain_values_at_the_tiny_grid_and_on_larger_grids():
    assert fu.chain_variance(fu.FUSED_CHAIN) == 22.0  # 5·(25−1)/12 + 3·(49−1)/12
    assert fu.grid_chain(fu.REC2D_CHAIN, 32) == ()  # 14·(1/7)² = 0.29 px²: no pass
    assert fu.grid_chain(fu.FUSED_CHAIN, 32) == ((3, 1),)  # 0.45 px²: one box-3 pass
    assert fu.grid_chain(fu.FUSED_CHAIN, 448) == ((9, 5), (13, 3))
    with pytest.raises(ValueError):
        fu.grid_chain(fu.FUSED_CHAIN, 0)


# ----------------------------------------------------------------------------- bad input
def _maps(shape=(1, 6, 6)):
    return [torch.rand(shape) + 0.1 for _ in range(4)]


def test_shape_mismatch_between_maps():
    m = _maps()
    m[1] = torch.rand(1, 6, 5)
    with pytest.raises(ValueError, match="d_map3d has shape"):
        fu.score(*m, torch.ones(1, 6, 6, dtype=torch.bool))


def test_shape_mismatch_between_maps_and_valid():
    with pytest.raises(ValueError, match="valid mask has shape"):
        fu.score(*_maps(), torch.ones(1, 6, 7, dtype=torch.bool))


def test_valid_must_be_bool():
    with pytest.raises(ValueError, match="bool"):
        fu.score(*_maps(), torch.ones(1, 6, 6))


def test_maps_must_be_batched_2d():
    m = _maps()
    m[0] = m[0][0]
    with pytest.raises(ValueError, match=r"d_map2d must be a \(B, H, W\)"):
        fu.score(*m, None)


def test_nan_input_is_named():
    m = _maps((2, 6, 6))
    m[3][1, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"d_rec3d contains NaN.*\[1\]"):
        fu.score(*m, None)


def test_sample_without_valid_pixel_is_named():
    valid = torch.ones(3, 6, 6, dtype=torch.bool)
    valid[2] = False
    with pytest.raises(ValueError, match=r"sample\(s\) \[2\] have no valid pixel"):
        fu.score(*_maps((3, 6, 6)), valid)


def test_all_zero_map_has_no_nonzero_mean():
    x = torch.rand(2, 5, 5)
    x[0] = 0
    with pytest.raises(ValueError, match=r"sample\(s\) \[0\].*empty set"):
        fu.image_score(x)
    with pytest.raises(ValueError, match="empty set"):
        fu.aupro_map(x)
    assert torch.isfinite(fu.pixel_scores(x[1:])).all()


def test_unknown_variant_and_missing_map():
    with pytest.raises(ValueError, match="unknown fusion variant"):
        fu.score(*_maps(), None, "case7")
    m = _maps()
    with pytest.raises(ValueError, match="needs d_map2d"):
        fu.score(None, m[1], m[2], m[3], None, "full")


def test_even_box_size_rejected():
    with pytest.raises(ValueError, match="odd"):
        fu.box_filter(torch.zeros(1, 4, 4), 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(tiny):
    maps, valid = tiny
    t = [torch.from_numpy(m) for m in maps]
    v = torch.from_numpy(valid)
    cpu = fu.score(*t, v)
    gpu = fu.score(*(m.cuda() for m in t), v.cuda())
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(gpu[1].cpu(), cpu[1], rtol=1e-5, atol=0)
    assert torch.equal(gpu[0].cpu() == 0, cpu[0] == 0)
