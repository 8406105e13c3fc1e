"""Organised-cloud feature maps: point selection, batching, BatchNorm modes, pooling, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from cmdr_iad.errors import UserInputError
from cmdr_iad.features import point_mae as pm
from cmdr_iad.features.geometry import group_points
from cmdr_iad.features.point_mae import PointMAE
from cmdr_iad.features.points3d import organized_points, pool_grid, xyz_feature_map

H = W = 32


def make_cloud(seed: int, hole: float) -> torch.Tensor:
    """(3, H, W) smooth surface in metres with random missing pixels and one-zero coordinates."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-0.02, 0.02, H), torch.linspace(-0.02, 0.02, W),
                            indexing="ij")
    z = 0.07 + 2 * (xx**2 + yy**2) + 1e-4 * torch.randn(H, W, generator=g)
    xyz = torch.stack([xx + 1e-5, yy + 1e-5, z])
    xyz[:, torch.rand(H, W, generator=g) < hole] = 0
    xyz[0, 3, 5] = 0.0  # a single zero coordinate also removes the point
    xyz[2, 20, 7] = 0.0
    return xyz


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.stack([make_cloud(i, hole) for i, hole in enumerate((0.05, 0.3, 0.15, 0.45))])


@pytest.fixture(scope="module")
def small_model(pmae_recipe_sd) -> PointMAE:
    m = PointMAE(num_group=32, group_size=16)
    m.load_state_dict(pmae_recipe_sd)
    return m.eval()


def test_organized_points_rule_and_order(batch):
    points, lengths, pix = organized_points(batch)
    for i in range(4):
        flat = batch[i].reshape(3, -1).T
        keep = (flat != 0).all(dim=1)
        n = int(keep.sum())
        assert int(lengths[i]) == n
        assert torch.equal(pix[i, :n], torch.nonzero(keep).flatten())  # ascending pixels
        assert torch.equal(points[i, :n], flat[keep])
        assert (points[i, n:] == 0).all() and (pix[i, n:] == 0).all()
    assert not bool(((batch[:, :, 3, 5] != 0).all(1)).any())  # the one-zero pixel is gone
    assert 3 * W + 5 not in pix[0, : lengths[0]].tolist()


@pytest.mark.parametrize("bn", ["sample", "running"])
def test_batch_of_four_equals_single_calls(small_model, batch, bn):
    _, lengths, _ = organized_points(batch)
    assert len(set(lengths.tolist())) == 4  # really different valid counts
    f, v = xyz_feature_map(small_model, batch, bn=bn)
    assert f.shape == (4, 1152, H, W) and v.shape == (4, H, W) and f.dtype == torch.float32
    for i in range(4):
        f1, v1 = xyz_feature_map(small_model, batch[i:i + 1], bn=bn)
        torch.testing.assert_close(f[i:i + 1], f1, rtol=1e-5, atol=1e-5)
        assert torch.equal(v[i:i + 1], v1)


def test_valid_mask_rule(small_model, batch):
    f, v = xyz_feature_map(small_model, batch)
    assert torch.equal(v, f.sum(dim=1) != 0)
    _, lengths, pix = organized_points(batch)
    for i in range(4):  # every pixel holding a point has a feature; a far hole has none
        cells = pix[i, : lengths[i]]
        assert v[i].flatten()[cells].all()
    hole = batch[:1].clone()
    hole[:, :, 10:20, 10:20] = 0
    f2, v2 = xyz_feature_map(small_model, hole)
    assert not v2[0, 12:18, 12:18].any() and (f2[0, :, 12:18, 12:18] == 0).all()
    assert v2[0, 10, 10]  # pooling bleeds features into the hole's border cells


def reference_encoder(model: PointMAE, groups: torch.Tensor, train_bn: bool) -> torch.Tensor:
    """The reference Encoder.forward on the model's own nn.Sequentials (conv layout)."""
    enc = copy.deepcopy(model.encoder).train(train_bn)
    bs, g, n, _ = groups.shape
    x = enc.first_conv(groups.reshape(bs * g, n, 3).transpose(2, 1))
    x = torch.cat([torch.max(x, dim=2, keepdim=True)[0].expand(-1, -1, n), x], dim=1)
    x = enc.second_conv(x)
    return torch.max(x, dim=2)[0].reshape(bs, g, -1)


def test_bn_modes_match_torch_batchnorm(small_model, batch, monkeypatch):
    points, lengths, _ = organized_points(batch[:2])
    groups = group_points(points, 32, 16, lengths)
    state = {k: v.clone() for k, v in small_model.state_dict().items()}
    with torch.no_grad():
        for i in range(2):  # "sample" = train-mode BN of the sample alone
            nb = groups.neighbourhoods[i:i + 1]
            ref = reference_encoder(small_model, nb, train_bn=True)
            torch.testing.assert_close(small_model.encoder(nb, "sample"), ref, rtol=1e-4, atol=1e-5)
        ref = reference_encoder(small_model, groups.neighbourhoods, train_bn=False)
        torch.testing.assert_close(small_model.encoder(groups.neighbourhoods, "running"), ref,
                                   rtol=1e-5, atol=1e-5)
        full = small_model.encoder(groups.neighbourhoods, "sample")
        monkeypatch.setattr(pm, "_CHUNK_POINTS", 40)  # many chunks: same statistics
        torch.testing.assert_close(small_model.encoder(groups.neighbourhoods, "sample"), full,
                                   rtol=1e-5, atol=1e-5)
        small_model.train()  # the module mode does not matter; nothing is updated
        try:
            torch.testing.assert_close(small_model(groups.neighbourhoods, groups.centres, "sample"),
                                       small_model.eval()(groups.neighbourhoods, groups.centres,
                                                          "sample"))
        finally:
            small_model.eval()
    for k, v in small_model.state_dict().items():
        assert torch.equal(v, state[k]), k
    a = small_model(groups.neighbourhoods, groups.centres, "sample")
    b = small_model(groups.neighbourhoods, groups.centres, "running")
    assert (a - b).abs().max() > 1e-2


@pytest.mark.parametrize("shape", [(5, 224, 224), (7, 96, 96), (3, 17, 23), (2, 3, 3)])
def test_pool_grid_matches_torch_pooling(shape):
    g = torch.randn(*shape)
    g[:, ::3] = 0
    ref = F.adaptive_avg_pool2d(F.avg_pool2d(g[None], kernel_size=3, stride=1), shape[1:])[0]
    torch.testing.assert_close(pool_grid(g), ref, rtol=1e-6, atol=1e-6)


def test_timings_are_recorded(small_model, batch):
    t: dict[str, float] = {}
    xyz_feature_map(small_model, batch[:1], timings=t)
    assert set(t) == {"fps", "knn", "point_mae", "interpolation", "assembly"}
    assert all(v >= 0 for v in t.values())


def sparse(n: int) -> torch.Tensor:
    """A cloud with exactly n valid points (the first n pixels)."""
    out = torch.zeros(1, 3, H * W)
    out[0, 0, :n] = 0.01 + 1e-3 * torch.arange(n)
    out[0, 1, :n] = 0.02
    out[0, 2, :n] = 0.07
    return out.view(1, 3, H, W)


def test_bad_inputs(small_model, batch):
    cases = {
        "NaN": batch[:1].clone().index_put_((torch.tensor([0]), torch.tensor([2]),
                                             torch.tensor([4]), torch.tensor([4])),
                                            torch.tensor(float("nan"))),
        "infinite": batch[:1].clone().index_put_((torch.tensor([0]), torch.tensor([0]),
                                                  torch.tensor([4]), torch.tensor([4])),
                                                 torch.tensor(float("inf"))),
        "empty": torch.zeros(1, 3, H, W),
        "only 20 valid points": sparse(20),
        r"\(B, 3, H, W\)": batch[0],
        "floating": (batch[:1] * 1000).long(),
    }
    for pattern, xyz in cases.items():
        with pytest.raises(UserInputError, match=pattern):
            xyz_feature_map(small_model, xyz)
    with pytest.raises(UserInputError, match=r"\(B, 3, H, W\)"):
        xyz_feature_map(small_model, batch.permute(0, 2, 3, 1))
    with pytest.raises(UserInputError, match="torch.Tensor"):
        xyz_feature_map(small_model, batch.numpy())
    with pytest.raises(UserInputError, match="bn must be"):
        xyz_feature_map(small_model, batch[:1], bn="train")
    with pytest.raises(UserInputError, match="only 40 valid points.*group_size=48"):
        xyz_feature_map(PointMAE(num_group=8, group_size=48), sparse(40))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("bn", ["sample", "running"])
def test_cuda_matches_cpu(small_model, batch, bn):
    f, v = xyz_feature_map(small_model, batch, bn=bn)
    gpu = copy.deepcopy(small_model).cuda()
    fg, vg = xyz_feature_map(gpu, batch.cuda(), bn=bn)
    assert fg.is_cuda
    torch.testing.assert_close(fg.cpu(), f, rtol=1e-3, atol=1e-3)
    assert (vg.cpu() == v).float().mean() > 0.999


def test_point_mae_variants(load_json):
    """encoder_dims ≠ trans_dim adds the reference's cls token / reduce_dim (blocks 1-3 are
    concatenated there); other depths follow the reference's block choice."""
    extra = load_json("backbones_manifest.json")["point_transformer"][
        "extra_keys_only_when_encoder_dims_ne_trans_dim"]
    m = PointMAE(num_group=8, group_size=4, encoder_dims=256)
    assert set(m.state_dict()) - set(PointMAE().state_dict()) == set(extra)
    nb, ctr = torch.randn(2, 8, 4, 3) * 0.01, torch.randn(2, 8, 3)
    assert m(nb, ctr).shape == (2, 1152, 8)
    assert PointMAE(num_group=8, group_size=4, depth=5)(nb, ctr).shape == (2, 384, 8)
    with pytest.raises(UserInputError, match="neighbourhoods"):
        m(nb[0], ctr)


@pytest.mark.parametrize("bn", ["sample", "running"])
def test_packed_features_equal_the_dense_map(small_model, batch, bn, monkeypatch):
    """xyz_feature_rows keeps only the pooled support of the points: its columns equal the dense
    map bit for bit, the map is exactly zero elsewhere and valid follows the same rule."""
    import cmdr_iad.features.points3d as p3
    from cmdr_iad.features.points3d import pooled_support, xyz_feature_rows

    monkeypatch.setattr(p3, "_POOL_ELEMENTS", 5 * H * W)  # several channel blocks
    clouds = batch.clone()
    clouds[:, :, :, : W // 3] = 0  # a large empty region, as the background of a part
    for i in (0, 3):
        f3d, valid = xyz_feature_map(small_model, clouds[i:i + 1], bn=bn)
        rows, v = xyz_feature_rows(small_model, clouds[i:i + 1], bn=bn)
        dense = rows.dense().view_as(f3d[0])
        assert torch.equal(dense, f3d[0])
        assert torch.equal(v, valid[0])
        assert rows.cols.shape[1] < H * W  # the holes are really dropped
    _, lengths, pix = organized_points(clouds[:1])
    sup = torch.zeros(H * W, dtype=torch.bool)
    sup[pooled_support(pix[0, :int(lengths[0])], (H, W))] = True
    f0, _ = xyz_feature_map(small_model, clouds[:1], bn=bn)
    nonzero = f0[0].abs().sum(0).view(-1) != 0
    assert bool(nonzero[~sup].logical_not().all())  # every non-zero token is in the support
    with pytest.raises(UserInputError, match="one cloud"):
        xyz_feature_rows(small_model, batch[:2])


def test_split_second_conv_equals_the_reference_concatenation(small_model, batch):
    """Point-MAE's W·[max f; f] computed as a per-group term plus W_f·f equals the reference's
    concatenation up to float32 summation order."""
    from cmdr_iad.features.points3d import point_features

    pts, lengths, _ = organized_points(batch[1:2])
    pf = point_features(small_model, pts, lengths, bn="sample")
    nb, ce = pf.groups.neighbourhoods, pf.groups.centres
    with torch.no_grad():
        fast = small_model(nb, ce, bn="sample")
        small_model.encoder.split_second_conv = False
        try:
            ref = small_model(nb, ce, bn="sample")
        finally:
            small_model.encoder.split_second_conv = True
    assert fast.abs().max() > 0.1
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
