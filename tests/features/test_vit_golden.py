"""Golden parity of the 2D path (vit.npz) and of the assembled features (pipeline.npz, s1).

The recipe weights go through the user-facing loaders: the ViT's as a timm-format
.safetensors file (and, checked for identical results, as DINO-release .pth files), the
Point-MAE's as a release-format `pretrain.pth`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdr_iad.features.vit import (
    create_vit,
    load_vit_weights,
    upsample_feature_map,
    vit_feature_map,
)

RTOL, ATOL = 1e-4, 1e-4


@pytest.fixture(scope="module")
def vit_sd(recipe, load_json):
    shapes = {k: s for k, s, _ in load_json("backbones_manifest.json")["vit"]["state_dict"]}
    return {k: torch.from_numpy(v) for k, v in recipe.recipe_state_dict(shapes).items()}


@pytest.fixture(scope="module")
def vit_file(vit_sd, tmp_path_factory):
    from safetensors.torch import save_file

    p = tmp_path_factory.mktemp("vit") / "model.safetensors"
    save_file(vit_sd, str(p))
    return p


@pytest.fixture(scope="module")
def vit(vit_file):
    m = create_vit(224, empty=True)
    load_vit_weights(m, vit_file)
    return m


@pytest.fixture(scope="module")
def vit_run(vit, load_npz):
    """One forward on vit.npz's input, recording tokens after pos-embed and blocks 1/6/12."""
    g = load_npz("vit.npz")
    seen = {}
    hooks = [vit.pos_drop.register_forward_hook(lambda m, i, o: seen.__setitem__("pos", o))]
    for b in (1, 6, 12):
        hooks.append(vit.blocks[b - 1].register_forward_hook(
            lambda m, i, o, b=b: seen.__setitem__(f"block{b}", o)))
    try:
        with torch.no_grad():
            fmap = vit_feature_map(vit, torch.from_numpy(g["rgb"]))
    finally:
        for h in hooks:
            h.remove()
    return g, fmap, seen


def test_tokens_after_pos_embed_and_blocks(vit_run):
    g, _, seen = vit_run
    np.testing.assert_allclose(seen["pos"][0, :8].numpy(), g["tokens_after_pos_embed_first8"],
                               rtol=RTOL, atol=1e-5)
    for b in (1, 6, 12):
        np.testing.assert_allclose(seen[f"block{b}"][0, :8].numpy(),
                                   g[f"tokens_after_block{b}_first8"], rtol=RTOL, atol=ATOL)


def test_feature_map_and_upsampled_rows(vit_run):
    g, fmap, _ = vit_run
    assert fmap.shape == (1, 768, 28, 28)
    np.testing.assert_allclose(fmap.numpy(), g["feature_map"], rtol=RTOL, atol=ATOL)
    rows = upsample_feature_map(fmap, 224).reshape(768, -1).T.numpy()[g["pix"]]
    np.testing.assert_allclose(rows, g["rgb_patch_pix"], rtol=RTOL, atol=ATOL)


def test_dino_release_file_loads_the_same_weights(vit, vit_sd, tmp_path):
    """The original DINO release layout (`dino_vitbase8_pretrain.pth`, a plain torch state
    dict) gives the same model as the timm file. (Wrapped/prefixed layouts: test_vit.py.)"""
    ref = vit.state_dict()
    plain = tmp_path / "dino_vitbase8_pretrain.pth"
    torch.save(vit_sd, str(plain))
    m = create_vit(224, empty=True)
    load_vit_weights(m, plain)
    got = m.state_dict()
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)


@pytest.fixture(scope="module")
def pipeline_features(vit, pmae_paper):
    """Extractor with the recipe ViT (from the .safetensors file) and the recipe Point-MAE
    (`pmae_paper` of tests/features/conftest.py: written as a release `pretrain.pth` and loaded
    back), bn="running" as in the golden files."""
    from cmdr_iad.config import FeatureConfig
    from cmdr_iad.features.extractor import FeatureExtractor

    cfg = FeatureConfig(grid_size=224, rgb_size=224, num_group=1024, group_size=128,
                        point_mae_bn="running")
    return FeatureExtractor.from_modules(vit, pmae_paper, cfg, "rgb+xyz")


@pytest.mark.slow
def test_pipeline_features_batch_of_two(pipeline_features, load_npz):
    """F2D / F3D rows and the missing-3D masks of both samples, from one batched call:
    s1 against pipeline.npz, s0 against vit.npz / point_mae.npz (its inputs are those)."""
    p, v, m = load_npz("pipeline.npz"), load_npz("vit.npz"), load_npz("point_mae.npz")
    rgb = torch.from_numpy(np.concatenate([p["s0_rgb"], p["s1_rgb"]]))
    xyz = torch.from_numpy(np.concatenate([p["s0_pc"], p["s1_pc"]]))
    f = pipeline_features.extract(rgb, xyz)
    assert f.f2d.shape == (2, 768, 224, 224) and f.f3d.shape == (2, 1152, 224, 224)
    f2d = f.f2d.reshape(2, 768, -1).transpose(1, 2)
    f3d = f.f3d.reshape(2, 1152, -1).transpose(1, 2)
    pix = p["pix"]
    np.testing.assert_allclose(f2d[1, pix].numpy(), p["s1_rgb_patch_pix"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(f3d[1, pix].numpy(), p["s1_xyz_patch_pix"], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(f2d[0, v["pix"]].numpy(), v["rgb_patch_pix"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(f3d[0, m["pix"]].numpy(), m["xyz_patch_pix"], rtol=1e-3, atol=1e-3)
    for s in (0, 1):
        np.testing.assert_array_equal(~f.valid[s].numpy(), p[f"s{s}_xyz_mask"])
    assert f.identity["point_mae_bn"] == "running"
