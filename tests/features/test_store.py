"""Compact feature store: the rebuilt dense / packed maps equal `FeatureExtractor.extract` bit
for bit (float32), per-encoder keys, on-disk robustness, float16, head gradients."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_extractor import CFG, make_cloud, make_rgb  # same folder (rootdir-relative import)

from cmdr_iad.errors import UserInputError
from cmdr_iad.features.cache import CompactCache, cache_summary
from cmdr_iad.features.compact import Tokens2D, compact_nbytes, dense_f2d, dense_f3d, packed_f3d
from cmdr_iad.features.extractor import FeatureExtractor
from cmdr_iad.features.store import (
    CachedSampleStore,
    array_key,
    cache_features,
    check_cache_space,
    entry_rows,
    expected_cache_bytes,
)


@pytest.fixture(autouse=True)
def no_network(tmp_path, monkeypatch):
    monkeypatch.setenv("CMDR_IAD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CMDR_IAD_OFFLINE", "1")


@pytest.fixture(scope="module")
def ex():
    return FeatureExtractor(CFG, "rgb+xyz", random_backbones=True, seed=5)


@pytest.fixture(scope="module")
def batch(ex):
    """Three samples with different valid-point counts (padding) and missing points."""
    rgb, xyz = make_rgb(3), make_cloud(3, holes=(0, 2, 5))
    return rgb, xyz, ex.extract(rgb, xyz)


def _dataset(rgb: torch.Tensor, xyz: torch.Tensor) -> list[SimpleNamespace]:
    return [SimpleNamespace(rgb=rgb[i].numpy(), xyz=xyz[i].numpy(), key=f"s{i}") for i in range(len(rgb))]


def _transform(s):
    return SimpleNamespace(rgb=torch.from_numpy(s.rgb), xyz=torch.from_numpy(s.xyz))


def test_rebuild_is_bit_identical_to_extract(ex, batch):
    rgb, xyz, full = batch
    low = ex.extract_tokens(rgb)
    pts = ex.extract_points(xyz)
    assert low.shape == (3, 768, 8, 8) and pts[0].features.shape == (1152, 32)
    assert torch.equal(dense_f2d([Tokens2D(t) for t in low], CFG.grid_size), full.f2d)
    assert torch.equal(dense_f3d(pts), full.f3d)
    assert torch.equal(torch.stack([p.valid for p in pts]), full.valid)
    assert len({p.interp.num_points for p in pts}) == 3  # really different clouds
    for i in range(3):  # one sample at a time = its slice of the batch
        assert torch.equal(dense_f2d([Tokens2D(low[i])], CFG.grid_size)[0], full.f2d[i])
        assert torch.equal(dense_f3d([pts[i]])[0], full.f3d[i])
        cols, support = packed_f3d(pts[i])
        dense = full.f3d[i].reshape(1152, -1)
        assert torch.equal(cols, dense[:, support])
        outside = torch.ones(dense.shape[1], dtype=torch.bool)
        outside[support] = False
        assert not dense[:, outside].any()


def test_cache_round_trip_store_and_rows(ex, batch, tmp_path):
    rgb, xyz, full = batch
    cache = CompactCache(tmp_path / "c")
    entries = cache_features(ex, _dataset(rgb, xyz), cache, _transform, batch_size=2)
    again = cache_features(ex, _dataset(rgb, xyz), CompactCache(tmp_path / "c"), _transform)
    store = CachedSampleStore(again, "rgb+xyz")
    b = store.batch([2, 0])
    assert torch.equal(b["f2d"], full.f2d[[2, 0]]) and torch.equal(b["f3d"], full.f3d[[2, 0]])
    assert torch.equal(b["valid"], full.valid[[2, 0]]) and torch.equal(store.valid(1), full.valid[1])
    rows = entry_rows(entries[1])
    assert torch.equal(rows.f3d.cn, full.f3d[1].reshape(1152, -1))
    assert torch.equal(rows.f2d.cn, full.f2d[1].reshape(768, -1))
    s = cache_summary(tmp_path / "c")
    assert s["vit"]["entries"] == 3 and s["point_mae"]["entries"] == 3 and s["dense"]["entries"] == 0
    # the real size per entry is the estimate (+ headers and metadata)
    per3d = compact_nbytes(CFG.grid_size, tokens=8, num_group=CFG.num_group,
                           valid_fraction=entries[0].f3d.interp.num_points / CFG.grid_size**2, uses_rgb=False)
    path = cache.entry_path("point_mae", ex.encoder_key("point_mae"), array_key(_dataset(rgb, xyz)[0].xyz))
    arrays = sum(f.stat().st_size for f in path.glob("*.npy"))
    assert per3d < arrays < per3d + 6 * 256


def test_empty_cloud_is_all_invalid(ex, batch, tmp_path):
    rgb, xyz, full = batch
    xyz = xyz.clone()
    xyz[1] = 0
    entries = cache_features(ex, _dataset(rgb, xyz), CompactCache(tmp_path), _transform, batch_size=3)
    b = CachedSampleStore(entries, "rgb+xyz").batch([0, 1])
    assert not b["valid"][1].any() and not b["f3d"][1].any()
    assert torch.equal(b["f3d"][0], full.f3d[0]) and torch.equal(b["f2d"][1], full.f2d[1])


def test_encoder_keys_shared_between_modalities(ex):
    rgb_only = FeatureExtractor(CFG, "rgb", random_backbones=True, seed=5)
    assert rgb_only.encoder_key("vit") == ex.encoder_key("vit")
    other_bn = FeatureExtractor(CFG.__class__(**{**CFG.__dict__, "point_mae_bn": "running"}),
                                "rgb+xyz", random_backbones=True, seed=5)
    assert other_bn.encoder_key("vit") == ex.encoder_key("vit")
    assert other_bn.encoder_key("point_mae") != ex.encoder_key("point_mae")
    other_seed = FeatureExtractor(CFG, "rgb", random_backbones=True, seed=6)
    assert other_seed.encoder_key("vit") != ex.encoder_key("vit")
    with pytest.raises(UserInputError):
        rgb_only.encoder_key("point_mae")


def test_vit_runs_once_per_sample_for_rgb_then_rgbxyz(ex, batch, tmp_path, monkeypatch):
    rgb, xyz, full = batch
    rgb_only = FeatureExtractor(CFG, "rgb", random_backbones=True, seed=5)
    calls = []
    for e in (rgb_only, ex):
        orig = e.extract_tokens
        monkeypatch.setattr(e, "extract_tokens", lambda x, orig=orig: calls.append(len(x)) or orig(x))
    data = _dataset(rgb, xyz)
    cache_features(rgb_only, data, CompactCache(tmp_path), _transform, batch_size=2)
    entries = cache_features(ex, data, CompactCache(tmp_path), _transform, batch_size=2)
    assert sum(calls) == 3
    assert torch.equal(CachedSampleStore(entries, "rgb+xyz").batch([0, 1, 2])["f3d"], full.f3d)


@pytest.mark.parametrize("damage", ["truncate", "meta", "shape"])
def test_damaged_entry_is_deleted_and_recomputed(ex, batch, tmp_path, damage):
    rgb, xyz, full = batch
    data = _dataset(rgb[:1], xyz[:1])
    cache = CompactCache(tmp_path)
    cache_features(ex, data, cache, _transform)
    kind, key = "point_mae", ex.encoder_key("point_mae")
    path = cache.entry_path(kind, key, array_key(data[0].xyz))
    if damage == "truncate":
        f = path / "wts.npy"
        f.write_bytes(f.read_bytes()[:-8])
    elif damage == "meta":
        (path / "meta.json").write_text("{not json")
    else:
        meta = json.loads((path / "meta.json").read_text())
        np.save(path / "pix.npy", np.zeros(3, dtype=np.int32))
        meta["arrays"]["pix"]["nbytes_file"] = (path / "pix.npy").stat().st_size
        (path / "meta.json").write_text(json.dumps(meta))
    assert cache.get(kind, key, array_key(data[0].xyz)) is None
    assert not path.exists()
    entries = cache_features(ex, data, cache, _transform)
    assert torch.equal(CachedSampleStore(entries, "rgb+xyz").batch([0])["f3d"], full.f3d[:1])


def test_float16_store_is_close(ex, batch, tmp_path):
    rgb, xyz, full = batch
    entries = cache_features(ex, _dataset(rgb, xyz), CompactCache(tmp_path, dtype="float16"), _transform)
    assert entries[0].f2d.low.dtype == torch.float16 and entries[0].f3d.interp.wts.dtype == torch.float16
    b = CachedSampleStore(entries, "rgb+xyz").batch([0, 1, 2])
    assert b["f2d"].dtype == torch.float32
    for name in ("f2d", "f3d"):
        err = (b[name] - getattr(full, name)).abs().max() / getattr(full, name).abs().max()
        assert 0 < err < 2e-3
    assert torch.equal(b["valid"], full.valid)


def test_space_check(ex, tmp_path):
    need = expected_cache_bytes(CFG, "rgb+xyz", 10)
    assert expected_cache_bytes(CFG, "rgb", 10, dtype="float16") < need / 2
    assert need > 10 * compact_nbytes(CFG.grid_size, tokens=8, num_group=CFG.num_group)
    assert check_cache_space(tmp_path / "new" / "folder", need) >= need
    with pytest.raises(UserInputError, match="not enough free space.*new"):
        check_cache_space(tmp_path / "new", 1 << 62)


def test_paper_size_estimate_under_16_mb():
    n = compact_nbytes(224, tokens=28, num_group=1024, valid_fraction=0.6)
    assert n < 16e6 and n < 385e6 / 40


def test_head_gradients_from_rebuilt_maps_equal_dense(ex, batch, tmp_path):
    from cmdr_iad.model.distances import masked_head_loss
    from cmdr_iad.model.heads import build_heads
    from cmdr_iad.training import TASKS, tokens

    rgb, xyz, full = batch
    entries = cache_features(ex, _dataset(rgb, xyz), CompactCache(tmp_path), _transform)
    rebuilt = CachedSampleStore(entries, "rgb+xyz").batch([0, 1])
    torch.manual_seed(0)
    heads = build_heads("rgb+xyz", CFG.grid_size, 768, 1152, 8, 8)
    grads = []
    for feats in (rebuilt, {"f2d": full.f2d[:2], "f3d": full.f3d[:2], "valid": full.valid[:2]}):
        heads.zero_grad()
        valid = feats["valid"].flatten(1)
        for name, (src, dst, _) in TASKS.items():
            torch.manual_seed(1)  # the same dropout masks for both
            masked_head_loss(heads[name], tokens(feats[src]), tokens(feats[dst]), valid).backward()
        grads.append([p.grad.clone() for p in heads.parameters() if p.grad is not None])
    assert len(grads[0]) > 10
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_interrupted_write_leaves_no_entry(tmp_path, monkeypatch):
    from cmdr_iad.features import cache as cache_mod

    c = CompactCache(tmp_path)
    calls = []

    def failing_save(fh, a, allow_pickle=False):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return np.lib.format.write_array(fh, a, allow_pickle=allow_pickle)

    monkeypatch.setattr(cache_mod.np, "save", failing_save)
    pts = _points_stub()
    with pytest.raises(OSError, match="disk full"):
        c.put("point_mae", "k" * 64, "s", pts)
    folder = c.folder("point_mae", "k" * 64)
    assert c.get("point_mae", "k" * 64, "s") is None and list(folder.iterdir()) == []
    monkeypatch.undo()
    back = c.put("point_mae", "k" * 64, "s", pts)
    assert torch.equal(back.interp.idx.long(), pts.interp.idx) and back.interp.idx.dtype == torch.int16
    assert c.keys("point_mae", "k" * 64) == ["s"]


def _points_stub():
    from cmdr_iad.features.compact import Points3D
    from cmdr_iad.features.points3d import Interpolation

    g = torch.Generator().manual_seed(0)
    pix = torch.tensor([0, 5, 7, 12])
    return Points3D(torch.randn(1152, 6, generator=g),
                    Interpolation(torch.randint(0, 6, (3, 4), generator=g), torch.rand(3, 4, generator=g), pix),
                    torch.zeros(4, 4, dtype=torch.bool).index_put_((pix // 4, pix % 4), torch.tensor(True)))
