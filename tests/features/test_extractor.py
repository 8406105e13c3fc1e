"""FeatureExtractor: modalities, weights and identity, batch = single calls, input checks."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from cmdr_iad.config import FeatureConfig
from cmdr_iad.errors import UserInputError, WeightsError
from cmdr_iad.features.extractor import FeatureExtractor, Features, make_cache_key

CFG = FeatureConfig(grid_size=32, rgb_size=64, num_group=32, group_size=16, point_mae_bn="sample")


@pytest.fixture(autouse=True)
def no_network(tmp_path, monkeypatch):
    monkeypatch.setenv("CMDR_IAD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("CMDR_IAD_OFFLINE", "1")


@pytest.fixture(scope="module")
def ex():
    return FeatureExtractor(CFG, "rgb+xyz", random_backbones=True, seed=5)


def make_cloud(b: int, g: int = 32, holes: tuple[int, ...] = (0,), seed: int = 0) -> torch.Tensor:
    """Organised clouds (B,3,G,G): a bumpy surface in metres, zero outside a disc of radius
    depending on `holes[i]` (so valid-point counts differ), a few one-zero-coordinate points."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.linspace(-0.04, 0.04, g)
    y, x = torch.meshgrid(v, v, indexing="ij")
    out = []
    for i in range(b):
        z = 0.08 + 0.004 * torch.exp(-((x - 0.01 * i) ** 2 + y**2) / 2e-4) \
            + 2e-5 * torch.randn(g, g, generator=gen)
        pc = torch.stack([x + 1e-5 * torch.randn(g, g, generator=gen), y, z])
        r = 0.045 - 0.004 * holes[i % len(holes)]
        pc[:, (x**2 + y**2) > r**2] = 0
        pc[0, g // 6, g // 2] = 0.0  # one zero coordinate → missing point
        out.append(pc)
    return torch.stack(out)


def make_rgb(b: int, s: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, s, s, generator=torch.Generator().manual_seed(seed))


def test_random_extractor_outputs_and_identity(ex):
    assert ex.vit is not None and ex.point_mae is not None
    for m in (ex.vit, ex.point_mae):
        assert not m.training and not any(p.requires_grad for p in m.parameters())
    f = ex.extract(make_rgb(2), make_cloud(2, holes=(0, 2)))
    assert isinstance(f, Features)
    assert f.f2d.shape == (2, 768, 32, 32) and f.f3d.shape == (2, 1152, 32, 32)
    assert f.valid.shape == (2, 32, 32) and f.valid.dtype == torch.bool
    assert not f.f2d.requires_grad and not f.f2d.is_inference()
    # the reference's rule: a cell is empty where its channels sum to exactly 0
    torch.testing.assert_close(f.valid, f.f3d.sum(1) != 0, rtol=0, atol=0)
    assert 0 < int(f.valid[1].sum()) < int(f.valid[0].sum()) < 32 * 32
    idn = ex.identity
    assert idn["random_backbones"] is True and idn["point_mae_bn"] == "sample"
    assert idn["weights"]["dino"]["random"] and idn["weights"]["dino"]["seed"] == 5
    assert idn["weights"]["point_mae"]["random"]
    assert idn["config"]["grid_size"] == 32
    assert f.identity == idn and f.cache_key() == ex.cache_key()
    assert "RANDOM" in ex.describe()


def test_cache_key_changes_with_every_part(ex):
    base = ex.identity
    key = make_cache_key(base)
    assert key == make_cache_key(dict(base)) and len(key) == 64
    changed = []
    for mutate in (
        lambda d: d["config"].__setitem__("num_group", 64),
        lambda d: d["config"].__setitem__("point_mae_bn", "running"),
        lambda d: d.__setitem__("modality", "rgb"),
        lambda d: d.__setitem__("feature_version", "999"),
        lambda d: d["weights"]["dino"].__setitem__("seed", 6),
        lambda d: d["weights"].__setitem__("point_mae", {"sha256": "ab" * 32}),
    ):
        d = {**base, "config": dict(base["config"]),
             "weights": {k: dict(v) for k, v in base["weights"].items()}}
        mutate(d)
        changed.append(make_cache_key(d))
    assert key not in changed and len(set(changed)) == len(changed)
    # file names and locations do not enter the key, only the SHA-256
    a = {**base, "weights": {"dino": {"file": "a.safetensors", "sha256": "1" * 64},
                             "point_mae": None}}
    b = {**a, "weights": {"dino": {"file": "b.safetensors", "sha256": "1" * 64},
                          "point_mae": None}}
    assert make_cache_key(a) == make_cache_key(b)


def test_single_modality_variants_skip_the_other_encoder(ex):
    rgb_only = FeatureExtractor.from_modules(ex.vit, ex.point_mae, CFG, "rgb")
    assert rgb_only.point_mae is None and rgb_only.identity["weights"]["point_mae"] is None
    f = rgb_only.extract(make_rgb(1))
    assert f.f3d is None and bool(f.valid.all()) and f.valid.shape == (1, 32, 32)
    xyz_only = FeatureExtractor.from_modules(None, ex.point_mae, CFG, "xyz")
    assert xyz_only.vit is None
    g = xyz_only.extract(xyz=make_cloud(1))
    assert g.f2d is None and g.f3d.shape == (1, 1152, 32, 32)
    assert rgb_only.cache_key() != xyz_only.cache_key() != ex.cache_key()
    with pytest.raises(UserInputError, match="needs a ViT"):
        FeatureExtractor.from_modules(None, ex.point_mae, CFG, "rgb+xyz")


@pytest.mark.parametrize("bn", ["sample", "running"])
def test_batch_of_four_equals_single_calls(ex, bn):
    """Different valid-point counts per sample; batched and single results agree."""
    cfg = dataclasses.replace(CFG, point_mae_bn=bn)
    xe = FeatureExtractor.from_modules(None, ex.point_mae, cfg, "xyz")
    xyz = make_cloud(4, holes=(0, 3, 1, 2), seed=7)
    counts = (xyz != 0).all(1).flatten(1).sum(1)
    assert len(set(counts.tolist())) == 4
    both = xe.extract(xyz=xyz)
    singles = Features.cat([xe.extract(xyz=xyz[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(both.f3d, singles.f3d, rtol=1e-4, atol=1e-5)
    assert torch.equal(both.valid, singles.valid)


def test_loading_weight_files_records_their_identity(ex, tmp_path):
    from safetensors.torch import save_file

    from cmdr_iad.features.point_mae_ckpt import write_release_checkpoint

    dino = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in ex.vit.state_dict().items()}, str(dino))
    pmae = write_release_checkpoint(ex.point_mae.state_dict(), tmp_path / "pretrain.pth")
    loaded = FeatureExtractor(CFG, "rgb+xyz", dino_weights=dino, point_mae_weights=pmae)
    w = loaded.identity["weights"]
    assert w["dino"]["file"] == "model.safetensors" and w["dino"]["official"] is False
    assert w["point_mae"]["file"] == "pretrain.pth" and not loaded.random_backbones
    assert len(w["point_mae"]["sha256"]) == 64
    for got, ref in ((loaded.vit, ex.vit), (loaded.point_mae, ex.point_mae)):
        ref_sd = ref.state_dict()
        assert all(torch.equal(v, ref_sd[k]) for k, v in got.state_dict().items())
    assert loaded.cache_key() != ex.cache_key()  # file weights vs random: different identity


@pytest.mark.parametrize("modality", ["rgb", "xyz"])
def test_missing_weights_offline_is_a_clear_error(modality, tmp_path):
    with pytest.raises(WeightsError, match="not found.*Download https://"):
        FeatureExtractor(CFG, modality)
    with pytest.raises(UserInputError, match="cannot be combined"):
        FeatureExtractor(CFG, modality, random_backbones=True, dino_weights=tmp_path / "x")


def test_bad_inputs(ex):
    rgb, xyz = make_rgb(1), make_cloud(1)
    cases = [
        ((None, xyz), "needs an RGB batch"),
        ((rgb, None), "needs a point-cloud batch"),
        ((make_rgb(1, s=32), xyz), r"rgb must have shape \(B,3,64,64\)"),
        ((rgb, make_cloud(1, g=16)), r"xyz must have shape \(B,3,32,32\)"),
        ((make_rgb(2), xyz), "batch sizes differ"),
        ((rgb.to(torch.uint8), xyz), "floating-point"),
        ((rgb, xyz.to(torch.int32)), "floating-point"),
    ]
    for (r, x), match in cases:
        with pytest.raises(UserInputError, match=match):
            ex.extract(r, x)
    bad = xyz.clone()
    bad[0, 2, 16, 16] = float("nan")
    with pytest.raises(UserInputError, match="NaN"):
        ex.extract(rgb, bad)
    with pytest.raises(UserInputError, match="empty|valid points"):
        ex.extract(rgb, torch.zeros_like(xyz))
    sparse = torch.zeros_like(xyz)
    sparse[:, :, :2, :8] = 0.05  # 16 valid points < num_group 32
    with pytest.raises(UserInputError, match="valid points"):
        ex.extract(rgb, sparse)
    with pytest.raises(UserInputError, match="modality"):
        FeatureExtractor.from_modules(ex.vit, None, CFG, "depth")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(ex):
    rgb, xyz = make_rgb(2), make_cloud(2, holes=(0, 2))
    cpu = ex.extract(rgb, xyz)
    gpu = FeatureExtractor.from_modules(copy.deepcopy(ex.vit), copy.deepcopy(ex.point_mae), CFG,
                                        "rgb+xyz", device="cuda").extract(rgb, xyz)
    assert gpu.f2d.device.type == "cuda"
    torch.testing.assert_close(gpu.f2d.cpu(), cpu.f2d, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(gpu.f3d.cpu(), cpu.f3d, rtol=1e-3, atol=1e-3)
    assert torch.equal(gpu.valid.cpu(), cpu.valid)


@pytest.mark.parametrize("modality", ["rgb+xyz", "rgb", "xyz"])
def test_extract_rows_equals_extract(ex, modality):
    """The inference form (F2D upsampled on demand, F3D packed) gives the dense features' rows."""
    e = ex if modality == "rgb+xyz" else FeatureExtractor.from_modules(
        ex.vit if modality != "xyz" else None, ex.point_mae if modality != "rgb" else None, CFG, modality)
    rgb = make_rgb(1) if modality != "xyz" else None
    xyz = make_cloud(1, holes=(4,), seed=3) if modality != "rgb" else None
    dense = e.extract(rgb, xyz)
    rows = e.extract_rows(rgb, xyz)
    assert torch.equal(rows.valid, dense.valid[0])
    n = CFG.grid_size ** 2
    idx = torch.arange(n)
    if modality == "xyz":
        assert rows.f2d is None
    else:
        torch.testing.assert_close(rows.f2d.rows(idx), dense.f2d[0].flatten(1).t(), rtol=1e-6, atol=1e-5)
    if modality == "rgb":
        assert rows.f3d is None and bool(rows.valid.all())
    else:
        assert torch.equal(rows.f3d.rows(idx), dense.f3d[0].flatten(1).t())
    with pytest.raises(UserInputError, match="one sample"):
        e.extract_rows(make_rgb(2) if rgb is not None else None, make_cloud(2) if xyz is not None else None)
