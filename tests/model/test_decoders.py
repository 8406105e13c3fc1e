"""Decoder2D / Decoder3D / CrossModalMLP behaviour: shapes, any batch size, errors, attention padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdr_iad.model.decoders import Decoder2D, Decoder3D, WindowAttention, reduced_length
from cmdr_iad.model.mapping import CrossModalMLP


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_window_attention_padded_keys_are_not_masked():
    """Independent numpy computation: N = 6, window 4 → the last window has 2 zero-padded keys."""
    att = WindowAttention(dim=8, num_heads=2, window_size=4, dropout=0.0).eval()
    x = torch.randn(2, 6, 8)
    with torch.no_grad():
        got = att(x).numpy()
    wq, bq = att.qkv.weight.detach().double().numpy(), att.qkv.bias.detach().double().numpy()
    wp, bp = att.proj.weight.detach().double().numpy(), att.proj.bias.detach().double().numpy()
    for b in range(2):
        qkv = x[b].double().numpy() @ wq.T + bq  # (6, 24)
        qkv = np.concatenate([qkv, np.zeros((2, 24))])  # zero rows after the projection, no bias
        out = np.zeros((8, 8))
        for w0 in (0, 4):
            for h in range(2):
                q = qkv[w0:w0 + 4, h * 4:(h + 1) * 4]
                k = qkv[w0:w0 + 4, 8 + h * 4:8 + (h + 1) * 4]
                v = qkv[w0:w0 + 4, 16 + h * 4:16 + (h + 1) * 4]
                logits = q @ k.T / 2.0  # D^-0.5 with D = 4
                p = np.exp(logits - logits.max(1, keepdims=True))
                p /= p.sum(1, keepdims=True)  # all 4 keys, padded ones included
                out[w0:w0 + 4, h * 4:(h + 1) * 4] = p @ v
        want = out[:6] @ wp.T + bp
        np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 3])
def test_decoder2d_any_batch(batch):
    net = Decoder2D(32, img_size=6, num_heads=4, window_size=8).eval()
    x = torch.randn(batch, 36, 32)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (batch, 36, 32)
        torch.testing.assert_close(y[-1:], net(x[-1:]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 3])
def test_decoder3d_any_batch(batch):
    net = Decoder3D(64, 16).eval()
    x = torch.randn(batch, 64, 16)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (batch, 64, 16)
        torch.testing.assert_close(y[-1:], net(x[-1:]), rtol=1e-5, atol=1e-6)


def test_decoder3d_length_rules():
    assert reduced_length(50176) == 1568 and reduced_length(9216) == 288 and reduced_length(16) == 16
    assert Decoder3D(100, 16).output_len == 96  # 32 does not divide L: reference gives 32·(L//32)
    short = Decoder3D(16, 16).eval()  # FeatureDecoder_9216 rule: L < 32 → Lr = L
    assert short.projection[0].weight.shape == (16, 16)
    with torch.no_grad():
        assert short(torch.randn(2, 16, 16)).shape == (2, 512, 16)


def test_wrong_token_count_is_named():
    with pytest.raises(ValueError, match=r"N = 36 tokens \(a 6×6 grid\), got 35"):
        Decoder2D(32, img_size=6, num_heads=4)(torch.randn(1, 35, 32))
    with pytest.raises(ValueError, match=r"N = 64 tokens.*got 65"):
        Decoder3D(64, 16)(torch.randn(1, 65, 16))
    with pytest.raises(ValueError, match="C = 16 channels, got 8"):
        Decoder3D(64, 16)(torch.randn(1, 64, 8))
    with pytest.raises(ValueError, match=r"\(B, N, C\)"):
        Decoder2D(32, img_size=6, num_heads=4)(torch.randn(36, 32))
    with pytest.raises(ValueError, match="last axis"):
        CrossModalMLP(8, 4)(torch.randn(1, 3, 5))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="num_heads"):
        Decoder2D(30, img_size=4, num_heads=4)
    with pytest.raises(ValueError, match="even"):
        Decoder2D(33, img_size=4)
    with pytest.raises(ValueError):
        CrossModalMLP(0, 4)


def test_training_mode_uses_dropout_and_backpropagates():
    for net, x in ((Decoder2D(32, img_size=4, num_heads=4, window_size=8), torch.randn(2, 16, 32)),
                   (Decoder3D(64, 16), torch.randn(2, 64, 16)),
                   (CrossModalMLP(8, 12), torch.randn(2, 5, 8))):
        net.train()
        y1, y2 = net(x), net(x)
        assert not torch.equal(y1, y2)  # dropout p = 0.1 is active
        y1.square().mean().backward()
        grads = [p.grad for p in net.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        net.eval()
        with torch.no_grad():
            assert torch.equal(net(x), net(x))


def test_mapping_mlp_tokenwise_and_reduced_dim():
    net = CrossModalMLP(8, 12).eval()
    assert net.reduced_dim == 10
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (2, 5, 12)
        torch.testing.assert_close(net(x[:, 2:3]), y[:, 2:3])  # token-wise
