"""Geometry: FPS, k-NN, 3-NN interpolation against plain reference-style implementations."""

from __future__ import annotations

import pytest
import torch

from cmdr_iad.errors import UserInputError
from cmdr_iad.features import geometry as G


def reference_fps(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    """The reference loop (start patched to 0): (B, N, 3) → (B, npoint)."""
    b, n, _ = xyz.shape
    out = torch.zeros(b, npoint, dtype=torch.long)
    dist = torch.ones(b, n) * 1e10
    far = torch.zeros(b, dtype=torch.long)
    rows = torch.arange(b)
    for i in range(npoint):
        out[:, i] = far
        d = torch.sum((xyz - xyz[rows, far, :].view(b, 1, 3)) ** 2, -1)
        dist = torch.min(dist, d)
        far = torch.max(dist, -1)[1]
    return out


def padded(clouds: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(c) for c in clouds)
    out = torch.full((len(clouds), n, 3), 7.0)  # junk padding: must never be used
    for i, c in enumerate(clouds):
        out[i, : len(c)] = c
    return out, torch.tensor([len(c) for c in clouds])


@pytest.fixture
def clouds() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(n, 3, generator=g) * 0.01 for n in (300, 517, 260, 411)]


def test_fps_matches_reference_loop(clouds):
    for c in clouds:
        torch.testing.assert_close(G.farthest_point_sample(c[None], 64), reference_fps(c[None], 64),
                                   rtol=0, atol=0)


def test_fps_ties_pick_first_index():
    # regular grid: many exactly equal distances; the reference takes the first maximum
    ii, jj = torch.meshgrid(torch.arange(20.0), torch.arange(20.0), indexing="ij")
    grid = torch.stack([ii, jj, torch.ones_like(ii)], -1).reshape(1, -1, 3)
    got = G.farthest_point_sample(grid, 50)
    assert torch.equal(got, reference_fps(grid, 50))
    assert got[0, :4].tolist() == [0, 399, 19, 380]


def test_fps_batched_with_padding_equals_single(clouds):
    pts, lengths = padded(clouds)
    got = G.farthest_point_sample(pts, 100, lengths)
    for i, c in enumerate(clouds):
        assert torch.equal(got[i], G.farthest_point_sample(c[None], 100)[0])
        assert int(got[i].max()) < len(c)
    # every valid point can be taken, padding never
    full = G.farthest_point_sample(pts, 260, lengths)
    assert (full < lengths[:, None]).all()
    assert all(len(set(full[i].tolist())) == 260 for i in range(4))


def test_knn_matches_full_sort_and_padding(clouds):
    pts, lengths = padded(clouds)
    centres = G.gather_points(pts, G.farthest_point_sample(pts, 40, lengths))
    got = G.knn(pts, centres, 16, lengths, chunk_elements=5000)  # many chunks
    for i, c in enumerate(clouds):
        d = torch.norm(c[:, None, :] - centres[i][None], dim=-1)  # (N, S) like the reference
        ref = d.topk(16, dim=0, largest=False, sorted=True).indices.T
        assert (got[i] < len(c)).all()
        for r in range(40):
            assert set(got[i, r].tolist()) == set(ref[r].tolist())
            dr = d[got[i, r], r]
            assert (dr[1:] >= dr[:-1]).all() and dr[0] == 0  # nearest first; centre itself first
        assert torch.equal(got[i], G.knn(c[None], centres[i:i + 1], 16)[0])


def test_knn_ties_lowest_index_first():
    pts = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0], [3, 3, 3]]])
    got = G.knn(pts, pts[:, :1], 3)
    assert got[0, 0].tolist() == [0, 1, 2]


def test_group_points_centred(clouds):
    pts, lengths = padded(clouds)
    g = G.group_points(pts, 32, 8, lengths)
    assert g.neighbourhoods.shape == (4, 32, 8, 3)
    torch.testing.assert_close(g.neighbourhoods[:, :, 0], torch.zeros(4, 32, 3))
    torch.testing.assert_close(g.centres, G.gather_points(pts, g.center_idx))
    nb = G.gather_points(pts, g.knn_idx) - g.centres[:, :, None]
    assert torch.equal(nb, g.neighbourhoods)


def reference_interp(xyz1: torch.Tensor, xyz2: torch.Tensor, feats: torch.Tensor):
    """The reference: full sort of the (N, S) squared distances, 3 nearest, 1/(d+1e-8)."""
    d = -2 * torch.matmul(xyz1, xyz2.permute(0, 2, 1))
    d += torch.sum(xyz1**2, -1).view(1, -1, 1)
    d += torch.sum(xyz2**2, -1).view(1, 1, -1)
    d, idx = d.sort(dim=-1)
    d, idx = d[:, :, :3], idx[:, :, :3]
    recip = 1.0 / (d + 1e-8)
    w = recip / torch.sum(recip, dim=2, keepdim=True)
    f = feats.permute(0, 2, 1)[0][idx[0]]  # (N, 3, C)
    return d, idx, w, torch.sum(f * w.view(1, -1, 3, 1)[0], dim=1)


def test_three_nn_and_interpolation_match_reference(clouds):
    c = clouds[1][None]
    centres = G.gather_points(c, G.farthest_point_sample(c, 50))
    feats = torch.randn(1, 24, 50)
    d_ref, i_ref, w_ref, f_ref = reference_interp(c, centres, feats)
    d, idx = G.three_nn(c, centres, chunk_elements=3000)
    assert torch.equal(idx, i_ref) and torch.equal(d, d_ref)
    w = G.inverse_distance_weights(d)
    assert torch.equal(w, w_ref)
    torch.testing.assert_close(G.interpolate_features(feats, idx, w)[0], f_ref, rtol=1e-6, atol=1e-6)
    # points that are centres: distance ≈ 0 → weight ≈ 1 on themselves
    on = G.farthest_point_sample(c, 50)[0]
    assert (w[0, on, 0] > 0.9).all()


def test_three_nn_ties_follow_full_sort():
    # points on a regular grid with centres on the same grid: exact distance ties everywhere
    ii, jj = torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij")
    grid = torch.stack([ii * 0.25, jj * 0.25, torch.full_like(ii, 0.5)], -1).reshape(1, -1, 3)
    centres = grid[:, ::7]
    d_ref, i_ref, _, _ = reference_interp(grid, centres, torch.zeros(1, 1, centres.shape[1]))
    d, idx = G.three_nn(grid, centres, chunk_elements=200)
    assert torch.equal(d, d_ref) and torch.equal(idx, i_ref)


def test_smallest_k_order():
    d = torch.tensor([[3.0, -1.0, 2.0, -1.0, 0.0, -0.0, 5.0, -7.5]])
    vals, idx = G.smallest_k(d, 6)
    assert idx.tolist() == [[7, 1, 3, 4, 5, 2]]
    assert vals.tolist() == [[-7.5, -1.0, -1.0, 0.0, 0.0, 2.0]]


def test_errors():
    pts = torch.randn(1, 10, 3)
    with pytest.raises(UserInputError, match="at least 20"):
        G.farthest_point_sample(pts, 20)
    with pytest.raises(UserInputError, match="at least 8"):
        G.farthest_point_sample(pts, 8, torch.tensor([5]))
    with pytest.raises(UserInputError, match=r"\(B, N, 3\)"):
        G.farthest_point_sample(torch.randn(10, 3), 4)
    with pytest.raises(UserInputError, match="floating"):
        G.knn(torch.zeros(1, 10, 3, dtype=torch.long), pts, 2)
    with pytest.raises(UserInputError, match="k=11"):
        G.knn(pts, pts[:, :2], 11)
    with pytest.raises(UserInputError, match="3 centres"):
        G.three_nn(pts, pts[:, :2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(clouds):
    pts, lengths = padded(clouds)
    cpu = G.group_points(pts, 48, 12, lengths)
    gpu = G.group_points(pts.cuda(), 48, 12, lengths.cuda())
    assert torch.equal(cpu.center_idx, gpu.center_idx.cpu())
    for i in range(4):
        for r in range(48):
            assert set(cpu.knn_idx[i, r].tolist()) == set(gpu.knn_idx[i, r].cpu().tolist())
    d, idx = G.three_nn(pts, cpu.centres)
    dg, idxg = G.three_nn(pts.cuda(), cpu.centres.cuda())
    torch.testing.assert_close(dg.cpu(), d, rtol=1e-5, atol=1e-7)
