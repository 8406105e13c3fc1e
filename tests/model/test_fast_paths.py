"""Exact fast paths of the heads: valid-rows-only outputs, Decoder3D zero-token skip and matmul
transposed convolutions, the shared distance maps, and gradient parity of the valid-only step.

Fast outputs are compared with the golden arrays (recipe weights) at the valid rows and with the
plain every-pixel forward (itself golden-tested) at the golden tolerances."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cmdr_iad.model.rows as rows_mod
from cmdr_iad.model.decoders import Decoder2D, Decoder3D
from cmdr_iad.model.distances import masked_head_loss, reference_distance_maps, sample_distance_maps
from cmdr_iad.model.fast import apply_rows, conv_transpose1d_k4s2p1_cl, fold_batchnorm
from cmdr_iad.model.fusion import euclid
from cmdr_iad.model.losses import masked_similarity_loss
from cmdr_iad.model.mapping import CrossModalMLP
from cmdr_iad.model.rows import decoder3d_fast_forward, head_rows, iter_head_rows
from cmdr_iad.model.tokens import DenseRows

TOL = {"rtol": 1e-4, "atol": 1e-5}  # golden README: network outputs


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Tiny tensors: one thread avoids OpenMP synchronisation costs on a shared machine."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def grid_mask(b: int, s: int) -> torch.Tensor:
    """(B, S·S) masks that exercise the region logic: a blob at the top-left border, a blob in the
    middle, scattered pixels, a whole last row (the padded tail window), an empty sample."""
    m = torch.zeros(b, s, s, dtype=torch.bool)
    m[0, :3, :4] = True  # touches two image borders: halo clipped
    m[0, s // 2:s // 2 + 3, s // 2 - 2:s // 2 + 1] = True
    if b > 1:
        m[1, -1, :] = True
        m[1, 1, -1] = True
        m[1, s // 3, 2] = True
    return m.view(b, -1)


def dense_maps(heads, f2d, f3d, valid, chunk=None) -> dict[str, torch.Tensor]:
    """The exact path on dense (B, C, G, G) maps: one sample at a time through token sources."""
    out: dict[str, list[torch.Tensor]] = {}
    for i in range(valid.shape[0]):
        s2 = None if f2d is None else DenseRows(f2d[i])
        s3 = None if f3d is None else DenseRows(f3d[i])
        for k, m in sample_distance_maps(heads, s2, s3, valid[i], chunk=chunk).items():
            out.setdefault(k, []).append(m)
    return {k: torch.stack(v) for k, v in out.items()}


def close(got: torch.Tensor, want, what: str) -> None:
    want = torch.as_tensor(want)
    assert got.shape == want.shape, what
    torch.testing.assert_close(got.float(), want.float(), **TOL, msg=what)


# --------------------------------------------------------------------------- golden at valid rows

@pytest.mark.parametrize("group,make", [("mlp_a", lambda: CrossModalMLP(48, 72)),
                                        ("mlp_b", lambda: CrossModalMLP(72, 48))])
def test_mlp_valid_rows_match_golden(group, make, heads_npz, filled):
    net = filled(make())
    x = torch.from_numpy(heads_npz[f"{group}__x"])
    want = torch.from_numpy(heads_npz[f"{group}__y"])
    valid = torch.rand(x.shape[:2]) > 0.4
    with torch.no_grad():
        rows = head_rows(net, x, valid)
        chunked = head_rows(net, x, valid, chunk=7)
        it = torch.cat([r for i in range(x.shape[0])
                        for r in iter_head_rows(net.eval(), DenseRows(x[i].t()), valid[i], 5)])
    close(rows, want[valid], f"{group} rows")
    close(chunked, want[valid], f"{group} chunked")
    close(it, want[valid], f"{group} from a token source")


@pytest.mark.parametrize("group,make,xkey", [
    ("dec2d_a", lambda: Decoder2D(64, 16, 8, 128), "dec2d_a__x"),
    ("dec2d_b", lambda: Decoder2D(64, 12, 8, 128), "dec2d_b__x"),  # padded tail window
    ("dec2d_c", lambda: Decoder2D(64, 16, 8, 100), "dec2d_a__x"),  # window ∤ N
])
def test_decoder2d_valid_rows_match_golden(group, make, xkey, heads_npz, filled):
    net = filled(make())
    x = torch.from_numpy(heads_npz[xkey])
    want = torch.from_numpy(heads_npz[f"{group}__y"])
    valid = grid_mask(x.shape[0], net.img_size)
    with torch.no_grad():
        rows = head_rows(net, x, valid)
        rows_small_chunks = head_rows(net, x, valid, chunk=1)  # one window per trunk call
    close(rows, want[valid], group)
    close(rows_small_chunks, want[valid], f"{group} chunk=1")


def test_decoder3d_fast_matches_golden_with_forced_skip(heads_npz, filled, monkeypatch):
    net = filled(Decoder3D(256, 64))
    x = torch.from_numpy(heads_npz["dec3d_a__x"])  # zero tokens [0, 10:20] and [1, -5:]
    want = torch.from_numpy(heads_npz["dec3d_a__y"])
    valid = x.sum(-1) != 0
    monkeypatch.setattr(rows_mod, "SKIP_BELOW", 1.0)  # skip zero tokens whatever their share
    with torch.no_grad():
        close(decoder3d_fast_forward(net, x), want, "dec3d_a fast (batch)")
        close(decoder3d_fast_forward(net, x[:1]), want[:1], "dec3d_a fast (sample 0, skips 10 tokens)")
        rows = head_rows(net, x, valid)
        close(decoder3d_fast_forward(net, x.transpose(1, 2).contiguous().transpose(1, 2)), want,
              "token view")
    close(rows, want[valid], "dec3d_a valid rows")


@pytest.mark.parametrize("last_chunk", [6, 7, 8192])
def test_decoder3d_rows_without_full_output_match_golden(last_chunk, heads_npz, filled, monkeypatch):
    """head_rows in eval mode: the last layer in chunks (pass 1), then at the valid rows only."""
    net = filled(Decoder3D(256, 64))
    x = torch.from_numpy(heads_npz["dec3d_a__x"])
    want = torch.from_numpy(heads_npz["dec3d_a__y"])
    monkeypatch.setattr(rows_mod, "LAST_CHUNK", last_chunk)
    for valid in (x.sum(-1) != 0, torch.ones(2, 256, dtype=torch.bool), torch.rand(2, 256) > 0.7):
        with torch.no_grad():
            rows = head_rows(net, x, valid)
        close(rows, want[valid], f"dec3d_a rows, chunk {last_chunk}")


# --------------------------------------------------------------------------- fast == plain

def _randomise(m: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.15)
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.running_mean.normal_(0, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.mark.parametrize("band", [32, 1, 4])
@pytest.mark.parametrize("s,ws", [(10, 16), (9, 128), (12, 7)])
def test_decoder2d_region_path_equals_plain(s, ws, band, monkeypatch):
    """Also with the convolutions in bands of 1 and 4 output rows (halo rows at every band edge
    and at the image border)."""
    from cmdr_iad.model import rows as row_paths

    monkeypatch.setattr(row_paths, "BAND_ROWS", band)
    net = _randomise(Decoder2D(32, s, 4, ws))
    x = torch.randn(3, s * s, 32)
    valid = torch.cat([grid_mask(2, s), torch.ones(1, s * s, dtype=torch.bool)])
    with torch.no_grad():
        plain = net(x)
        fast = head_rows(net, x, valid)
        empty = head_rows(net, x[:1], torch.zeros(1, s * s, dtype=torch.bool))
    close(fast, plain[valid], f"S={s} window={ws}")
    assert empty.shape == (0, 32)


def test_decoder3d_fast_equals_plain_with_many_missing_tokens():
    net = _randomise(Decoder3D(64 * 32, 24))
    x = torch.randn(2, 64 * 32, 24)
    x[0, 100:1500] = 0
    x[1, :900] = 0
    x[1, 1800:] = 0
    with torch.no_grad():
        plain = net(x)
        close(decoder3d_fast_forward(net, x), plain, "rows layout")
        close(decoder3d_fast_forward(net, x.transpose(1, 2).contiguous().transpose(1, 2)), plain,
              "token view")
        zero = torch.zeros(1, 64 * 32, 24)
        close(decoder3d_fast_forward(net, zero), net(zero), "all tokens missing")


def test_decoder3d_fast_in_training_mode_matches_plain():
    net = _randomise(Decoder3D(32 * 8, 16)).train()
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    x = torch.randn(3, 256, 16)
    x[:, 40:200] = 0
    plain_net = _clone(net)
    y = decoder3d_fast_forward(net, x)
    close(y, plain_net(x), "train-mode output (batch statistics)")
    close(net.decoder[1].running_mean, plain_net.decoder[1].running_mean, "BN running mean update")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("grad", [True, False])
def test_conv_transpose1d_as_matmuls(bias, grad):
    conv = nn.ConvTranspose1d(6, 5, kernel_size=4, stride=2, padding=1, bias=bias)
    x = torch.randn(2, 6, 9)
    want = conv(x).detach()
    with torch.set_grad_enabled(grad):
        got = conv_transpose1d_k4s2p1_cl(x.transpose(1, 2), conv.weight, conv.bias)
    close(got.transpose(1, 2).detach(), want, "conv transpose")
    one = conv_transpose1d_k4s2p1_cl(x[:, :, :1].transpose(1, 2), conv.weight, conv.bias)
    close(one.transpose(1, 2).detach(), conv(x[:, :, :1]).detach(), "length 1")


def test_fold_batchnorm_equals_conv_then_bn():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    bn = _randomise(nn.BatchNorm2d(6))
    x = torch.randn(2, 4, 5, 5)
    w, b = fold_batchnorm(conv.weight, conv.bias, bn, 0)
    with torch.no_grad():
        close(nn.functional.conv2d(x, w, b, padding=1), bn(conv(x)), "folded BN")


def test_apply_rows_chunks_without_autograd_only():
    lin = nn.Linear(3, 2)
    rows = torch.randn(10, 3)
    calls = []

    def fn(t):
        calls.append(t.shape[0])
        return lin(t)

    with torch.no_grad():
        out = apply_rows(fn, rows, 2, chunk=4)
    assert calls == [4, 4, 2]
    close(out, lin(rows).detach(), "chunked rows")
    calls.clear()
    apply_rows(fn, rows, 2, chunk=4)
    assert calls == [10]


# --------------------------------------------------------------------------- distance maps

def _small_heads(g: int, c2: int, c3: int) -> dict[str, nn.Module]:
    return {"map2Dto3D": _randomise(CrossModalMLP(c2, c3)), "map3Dto2D": _randomise(CrossModalMLP(c3, c2)),
            "Dec2D": _randomise(Decoder2D(c2, g, 4, 16)), "Dec3D": _randomise(Decoder3D(g * g, c3))}


def test_distance_maps_equal_the_plain_path():
    g, c2, c3, b = 8, 16, 24, 3
    heads = _small_heads(g, c2, c3)
    f2d = torch.randn(b, c2, g, g)
    valid = grid_mask(b, g).view(b, g, g)
    valid[2] = True
    f3d = torch.randn(b, c3, g, g) * valid[:, None]  # missing points have all-zero features
    t2, t3 = f2d.flatten(2).transpose(1, 2), f3d.flatten(2).transpose(1, 2)
    with torch.no_grad():
        plain = {"d_map2d": euclid(heads["map3Dto2D"](t3), t2), "d_map3d": euclid(heads["map2Dto3D"](t2), t3),
                 "d_rec2d": euclid(heads["Dec2D"](t2), t2), "d_rec3d": euclid(heads["Dec3D"](t3), t3)}
    got = dense_maps(heads, f2d, f3d, valid, chunk=5)
    assert set(got) == set(plain)
    for k, p in plain.items():
        close(got[k], p.view(b, g, g) * valid, k)
    for k, p in reference_distance_maps(heads, f2d, f3d).items():
        torch.testing.assert_close(p, plain[k].view(b, g, g), rtol=0, atol=0)
    every = torch.ones_like(valid)
    rgb = dense_maps({"Dec2D": heads["Dec2D"]}, f2d, None, every)  # RGB-only: every pixel
    close(rgb["d_rec2d"], plain["d_rec2d"].view(b, g, g), "rgb only")
    xyz = dense_maps({"Dec3D": heads["Dec3D"]}, None, f3d, valid)
    assert set(xyz) == {"d_rec3d"}


def test_bad_valid_masks_are_named():
    with pytest.raises(ValueError, match="valid"):
        head_rows(CrossModalMLP(4, 3), torch.randn(1, 5, 4), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        head_rows(Decoder2D(8, 4, 2, 4), torch.randn(1, 16, 8), torch.ones(1, 16))
    with pytest.raises(ValueError, match="32"):
        head_rows(Decoder3D(40, 8), torch.randn(1, 40, 8), torch.ones(1, 40, dtype=torch.bool))
    with pytest.raises(TypeError, match="Linear"):
        head_rows(nn.Linear(4, 3), torch.randn(1, 5, 4), torch.ones(1, 5, dtype=torch.bool))


# --------------------------------------------------------------------------- training gradients

def _clone(m: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(m)


def _no_dropout(m: nn.Module) -> nn.Module:
    for mod in m.modules():
        if isinstance(mod, nn.Dropout):
            mod.p = 0.0
        if hasattr(mod, "attn_dropout"):
            mod.attn_dropout = 0.0
    return m.train()


@pytest.mark.parametrize("name", ["map2Dto3D", "map3Dto2D", "Dec2D", "Dec3D"])
def test_valid_only_step_has_the_every_pixel_gradients(name):
    """Train mode (BatchNorm with batch statistics), dropout off: identical loss and gradients."""
    g, c2, c3 = 8, 16, 24
    head = _no_dropout(_small_heads(g, c2, c3)[name])
    ref = _clone(head)
    valid = grid_mask(2, g)
    f2d, f3d = torch.randn(2, g * g, c2), torch.randn(2, g * g, c3) * valid[..., None]
    src, dst = {"map2Dto3D": (f2d, f3d), "map3Dto2D": (f3d, f2d), "Dec2D": (f2d, f2d),
                "Dec3D": (f3d, f3d)}[name]
    loss_ref = masked_similarity_loss(ref(src), dst, valid)
    loss_ref.backward()
    loss = masked_head_loss(head, src, dst, valid)
    loss.backward()
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    for (k, p), (_, q) in zip(head.named_parameters(), ref.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=f"{name}.{k}")
    for (k, a), (_, b) in zip(head.named_buffers(), ref.named_buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{name} buffer {k}")
    assert masked_head_loss(head, src, dst, torch.zeros_like(valid)) is None


# --------------------------------------------------------------------------- token sources

def test_sample_distance_maps_from_compact_sources_equal_dense():
    """Inference reads F2D upsampled on demand and F3D packed to its support; the maps equal
    those of the dense features (which equal the plain path, above)."""
    from cmdr_iad.model.tokens import PackedRows, UpsampledRows

    g, c2, c3 = 8, 16, 24
    heads = _small_heads(g, c2, c3)
    valid = grid_mask(2, g).view(2, g, g)[0]
    low = torch.randn(c2, 3, 3)
    f2d = torch.nn.functional.interpolate(low[None], (g, g), mode="bilinear", align_corners=False)
    support = torch.zeros(g, g, dtype=torch.bool)
    support[:5, :6] = True
    support[g // 2 - 1:, g // 2 - 3:] = True  # a superset of valid, as the pooled support
    f3d = torch.randn(1, c3, g, g) * support
    sidx = support.view(-1).nonzero().squeeze(1)
    s2 = UpsampledRows(low, g)
    s3 = PackedRows(f3d[0].flatten(1)[:, sidx].contiguous(), sidx, g * g)
    want = dense_maps(heads, f2d, f3d, valid[None])
    calls = []
    got = sample_distance_maps(heads, s2, s3, valid, chunk=7, between=lambda: calls.append(1))
    assert set(got) == set(want) and len(calls) == 2  # after the mapping pair and after Dec2D
    for k in want:
        close(got[k], want[k][0], k)
        assert torch.count_nonzero(got[k][~valid]) == 0, k


@pytest.mark.parametrize("chunk", [1, 5, 4096])
def test_decoder_row_iterators_cover_the_valid_rows_in_order(chunk):


    g, c = 8, 24
    v = grid_mask(2, g)[1]
    d2 = _randomise(Decoder2D(16, g, 4, 16))
    x2 = torch.randn(g * g, 16)
    d3 = _randomise(Decoder3D(g * g, c))
    x3 = torch.randn(g * g, c) * v[:, None]
    with torch.no_grad():
        for net, x in ((d2, x2), (d3, x3)):
            parts = list(iter_head_rows(net, DenseRows(x.t()), v, chunk))
            assert all(p.shape[0] <= chunk for p in parts)
            close(torch.cat(parts), net(x[None])[0][v], type(net).__name__)
            assert list(iter_head_rows(net, DenseRows(x.t()), torch.zeros_like(v), chunk)) == []
    d2.train()
    with pytest.raises(ValueError, match="eval"):
        list(iter_head_rows(d2, DenseRows(x2.t()), v))
    with pytest.raises(ValueError, match="tokens"):
        list(iter_head_rows(d3.eval(), DenseRows(torch.randn(c + 1, 64)), v))
