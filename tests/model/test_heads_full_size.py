"""Paper-size heads: official layouts (heads_manifest.json full_size_configs) and pipeline parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cmdr_iad.model.decoders import Decoder2D, Decoder3D
from cmdr_iad.model.fusion import euclid
from cmdr_iad.model.mapping import CrossModalMLP

FULL = {
    "map2Dto3D = FeatureMappigMLP(768, 1152)": lambda: CrossModalMLP(768, 1152),
    "map3Dto2D = FeatureMappigMLP(1152, 768)": lambda: CrossModalMLP(1152, 768),
    "Dec2D = Decoder2D(dim=768) [img_size=224, num_heads=8, window_size=128]": lambda: Decoder2D(768, 224),
    "Dec3D = Decoder3D(out_seq_len=50176, feature_dim=1152)": lambda: Decoder3D(50176, 1152),
    "polyurethane FeatureDecoder_9216(out_seq_len=9216, feature_dim=1152)": lambda: Decoder3D(9216, 1152),
}


def test_full_size_configs_are_all_covered(heads_manifest):
    assert set(heads_manifest["full_size_configs"]) == set(FULL)


@pytest.mark.parametrize("name", list(FULL))
def test_full_size_layout_and_strict_load(name, heads_manifest, recipe):
    entry = heads_manifest["full_size_configs"][name]
    net = FULL[name]()
    got = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in net.state_dict().items()]
    want = [(e["key"], list(e["shape"]), e["dtype"]) for e in entry["state_dict"]]
    assert got == want
    n_params = sum(p.numel() for p in net.parameters())
    n_buf = sum(b.numel() for b in net.buffers())
    assert (n_params, n_buf) == (entry["n_parameters"], entry["n_buffer_elements"])
    # a state dict built from the manifest alone (as an official checkpoint would be) loads strictly
    sd = recipe.recipe_state_dict({e["key"]: e["shape"] for e in entry["state_dict"]})
    net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    k0 = entry["state_dict"][0]["key"]
    assert torch.equal(net.state_dict()[k0], torch.from_numpy(sd[k0]))


@pytest.fixture(scope="module")
def pipeline(load_npz):
    return load_npz("pipeline.npz")


def head_inputs(s: int, load_npz, pipeline):
    """(rgb_patch rows, xyz_patch rows) at the pipeline pixels `pix` of sample s."""
    if s == 1:
        return pipeline["s1_rgb_patch_pix"], pipeline["s1_xyz_patch_pix"]
    n = len(pipeline["pix"])
    vit, pm = load_npz("vit.npz"), load_npz("point_mae.npz")
    assert np.array_equal(vit["pix"][:n], pipeline["pix"]) and np.array_equal(pm["pix"][:n], pipeline["pix"])
    return vit["rgb_patch_pix"][:n], pm["xyz_patch_pix"][:n]


@pytest.mark.parametrize("s", [0, 1])
def test_full_size_mapping_heads_match_pipeline(s, load_npz, pipeline, filled, close):
    rgb, xyz = (torch.from_numpy(a)[None] for a in head_inputs(s, load_npz, pipeline))
    with torch.no_grad():
        m2 = filled(CrossModalMLP(1152, 768))(xyz)  # F̂_map^2D
        m3 = filled(CrossModalMLP(768, 1152))(rgb)  # F̂_map^3D
    close(m2[0], pipeline[f"s{s}_mapped_2d_pix"], f"s{s}_mapped_2d_pix")
    close(m3[0], pipeline[f"s{s}_mapped_3d_pix"], f"s{s}_mapped_3d_pix")
    pix = pipeline["pix"]
    invalid = pipeline[f"s{s}_xyz_mask"].reshape(-1)[pix]
    for d, key in ((euclid(m2, rgb)[0], "d_map2d"), (euclid(m3, xyz)[0], "d_map3d")):
        d = torch.where(torch.from_numpy(invalid), 0.0, d)
        close(d, pipeline[f"s{s}_{key}"].reshape(-1)[pix], f"s{s}_{key}@pix")


@pytest.mark.slow  # ~7 s alone on 2 cores, several times that when the cores are shared
def test_full_size_decoder2d_matches_pipeline(load_npz, pipeline, filled, close):
    """Decoder2D(768, 224) on the full s0 rgb_patch (rebuilt from vit.npz feature_map as the reference does)."""
    fm = torch.from_numpy(load_npz("vit.npz")["feature_map"])  # (1, 768, 28, 28)
    rgb = F.interpolate(fm, size=(224, 224), mode="bilinear", align_corners=False).reshape(768, -1).T[None]
    with torch.no_grad():
        rec = filled(Decoder2D(768, 224))(rgb)  # (1, 50176, 768)
    pix = pipeline["pix"]
    close(rec[0, pix], pipeline["s0_recon_2d_pix"], "s0_recon_2d_pix")
    d = torch.where(torch.from_numpy(pipeline["s0_xyz_mask"]).reshape(1, -1), 0.0, euclid(rec, rgb))
    close(d.reshape(224, 224), pipeline["s0_d_rec2d"], "s0_d_rec2d (full map)")
