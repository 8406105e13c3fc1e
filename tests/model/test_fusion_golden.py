"""Golden parity of the scoring chain: fusion.npz, fusion_results.json and pipeline.npz (fusion stage)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdr_iad.model import fusion as fu

INPUTS = ("d_map2d", "d_map3d", "d_rec2d", "d_rec3d")


def batch(npz, prefixes, field):
    return torch.from_numpy(np.stack([npz[p + field] for p in prefixes]))


@pytest.fixture(scope="module")
def cases(fusion_npz):
    """All three golden cases scored as ONE batch (B = 3): per-sample statistics must not mix."""
    prefixes = [f"case{c}__" for c in range(3)]
    maps = [batch(fusion_npz, prefixes, k) for k in INPUTS]
    valid = ~batch(fusion_npz, prefixes, "mask")
    stages = fu.score_stages(*maps, valid)
    smoothed, scores = fu.score(*maps, valid)
    masked = {k: torch.where(valid, m, 0.0) for k, m in zip(INPUTS, maps, strict=True)}
    return prefixes, stages, smoothed, scores, masked


def test_every_fusion_array_is_checked(fusion_npz):
    checked = {"d_map2d", "d_map3d", "d_rec2d", "d_rec3d", "mask", "d_rec2d_smoothed", "A_map",
               "A_rec", "fused_masked", "fused_smoothed", "aupro_map", "pixel_scores", "image_score",
               "mean_nonzero", "mean_all", "fused_is_zero", "gate_local_std"}
    left = [k for k in fusion_npz.files
            if not (k.startswith("case") and k.split("__", 1)[1] in checked) and not k.startswith("euclid__")]
    assert not left, f"fusion.npz arrays without a test: {left}"


def test_masking_uses_golden_mask(cases, fusion_npz):
    prefixes, stages, *_ = cases
    for i, p in enumerate(prefixes):
        m = fusion_npz[p + "mask"]
        for k in ("d_map2d", "d_map3d", "d_rec3d"):
            assert np.array_equal(stages.inputs[k][i].numpy() == 0, (fusion_npz[p + k] == 0) | m)


def test_case_maps(cases, fusion_npz, close):
    prefixes, stages, smoothed, scores, masked = cases
    a_map = fu.reliability_gated_mapping_anomaly(masked["d_map2d"], masked["d_map3d"])
    a_rec = fu.confidence_weighted_reconstruction_anomaly(stages.inputs["d_rec2d"], stages.inputs["d_rec3d"])
    got = {
        "d_rec2d_smoothed": stages.inputs["d_rec2d"],
        "A_map": a_map,
        "A_rec": a_rec,
        "fused_masked": stages.psi,
        "fused_smoothed": smoothed,
        "aupro_map": fu.aupro_map(smoothed),
        "pixel_scores": fu.pixel_scores(smoothed),
    }
    n = 0
    for i, p in enumerate(prefixes):
        for field, value in got.items():
            if p + field in fusion_npz.files:
                close(value[i], fusion_npz[p + field], p + field, kind="fusion")
                n += 1
        # cases 1, 2 store no aupro_map / pixel_scores: derive them as the README says
        if p + "aupro_map" not in fusion_npz.files:
            fs = fusion_npz[p + "fused_smoothed"]
            close(got["aupro_map"][i], fs / fusion_npz[p + "mean_nonzero"], p + "aupro_map (derived)", "fusion")
            close(got["pixel_scores"][i], fs / np.sqrt(fusion_npz[p + "mean_all"]), p + "pixel_scores (derived)", "fusion")
    assert n == 7 + 2 + 2


def test_gate_local_std(cases, fusion_npz, close):
    _, _, _, _, masked = cases
    joint = fu.joint_mapping_discrepancy(masked["d_map2d"], masked["d_map3d"])
    local_std = fu.box_filter((joint - joint.mean(dim=(1, 2), keepdim=True)) ** 2, 7).sqrt()
    close(local_std[0], fusion_npz["case0__gate_local_std"], "case0__gate_local_std", "fusion")


def test_exact_zeros_and_scalars(cases, fusion_npz, load_json, close):
    prefixes, _, smoothed, scores, _ = cases
    results = load_json("fusion_results.json")["cases"]
    for i, p in enumerate(prefixes):
        r = results[i]
        zero = (smoothed[i] == 0).numpy()
        assert np.array_equal(zero, fusion_npz[p + "fused_is_zero"]), p + "fused_is_zero"
        assert int(zero.sum()) == r["n_exact_zero_fused_smoothed"]
        assert int((~zero).sum()) == r["n_nonzero_fused_smoothed"]
        assert int(fusion_npz[p + "mask"].sum()) == r["n_masked"]
        for name, got in (("image_score", scores[i]), ("mean_nonzero", fu.mean_nonzero(smoothed)[i]),
                          ("mean_all", fu.mean_all(smoothed)[i])):
            np.testing.assert_allclose(got.item(), r[name], rtol=1e-5, err_msg=p + name)
            close(got, fusion_npz[p + name], p + name, "fusion")
        close(fu.image_score(smoothed)[i], r["image_score"], p + "image_score (helper)", "fusion")


def test_euclid(fusion_npz, load_json, close):
    d = fu.euclid(torch.from_numpy(fusion_npz["euclid__a"]), torch.from_numpy(fusion_npz["euclid__b"]))
    # one golden value is a rounding residue (7.4e-8 for b = 3.7·a, mathematically 0): absolute tolerance
    np.testing.assert_allclose(d.numpy(), fusion_npz["euclid__d"], rtol=1e-5, atol=1e-6)
    print(f"max abs err euclid__d: {np.abs(d.numpy() - fusion_npz['euclid__d']).max():.3g}")
    special = [d[0, 0], d[0, 1], d[0, 2], d[0, 3], d[0, 4], d[1, 5], d[1, 6]]
    np.testing.assert_allclose([v.item() for v in special], load_json("fusion_results.json")["euclid"]["values_special"],
                               rtol=1e-5, atol=1e-6)


def test_pipeline_fusion_stage(load_npz, close):
    """pipeline.npz: from the two samples' raw d_* maps to every post-processed array (B = 2)."""
    pl = load_npz("pipeline.npz")
    prefixes = ["s0_", "s1_"]
    maps = [batch(pl, prefixes, k) for k in INPUTS]
    valid = ~batch(pl, prefixes, "xyz_mask")
    st = fu.score_stages(*maps, valid)
    smoothed, scores = fu.score(*maps, valid)
    a_map = fu.reliability_gated_mapping_anomaly(st.inputs["d_map2d"], st.inputs["d_map3d"])
    a_rec = fu.confidence_weighted_reconstruction_anomaly(st.inputs["d_rec2d"], st.inputs["d_rec3d"])
    for i, p in enumerate(prefixes):
        for field, value in (("d_rec2d_smoothed", st.inputs["d_rec2d"]), ("A_map", a_map), ("A_rec", a_rec),
                             ("fused_masked", st.psi), ("fused", smoothed),
                             ("pred_aupro", fu.aupro_map(smoothed)), ("pixel_scores", fu.pixel_scores(smoothed)),
                             ("image_score", scores), ("mean_nonzero", fu.mean_nonzero(smoothed)),
                             ("mean_all", fu.mean_all(smoothed))):
            close(value[i], pl[p + field], p + field, "fusion")
        assert np.array_equal(smoothed[i].numpy() == 0, pl[p + "fused"] == 0), p + "exact zeros"
