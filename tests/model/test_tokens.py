"""Token sources: rows of a feature map read without materialising it (dense, bilinear on demand,
packed support) equal the rows of the dense map."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cmdr_iad.model.tokens import DenseRows, PackedRows, UpsampledRows, linear_source_weights


@pytest.mark.parametrize("c,h,w,g", [(768, 28, 28, 224), (5, 7, 9, 32), (3, 4, 4, 4), (8, 10, 10, 7),
                                     (4, 1, 3, 5)])
def test_upsampled_rows_equal_torch_bilinear(c, h, w, g):
    low = torch.randn(c, h, w, generator=torch.Generator().manual_seed(c + g)) * 3
    want = F.interpolate(low[None], (g, g), mode="bilinear", align_corners=False)[0]
    src = UpsampledRows(low, g)
    assert (src.n, src.dim) == (g * g, c)
    dense = src.dense()
    torch.testing.assert_close(dense, want, rtol=1e-6, atol=4e-6)  # fused multiply-adds in torch
    idx = torch.tensor([0, g * g - 1, g + 1, (g * g) // 2])
    torch.testing.assert_close(src.rows(idx), want.flatten(1).t()[idx], rtol=1e-6, atol=4e-6)
    torch.testing.assert_close(src.span(g, 3 * g if g > 2 else g), want.flatten(1).t()[g:3 * g],
                               rtol=1e-6, atol=4e-6)


def test_linear_source_weights_follow_torch():
    """Weights read back from torch's own kernel: interpolating a unit impulse per source."""
    for n_in, n_out in [(28, 224), (5, 7), (7, 5), (1, 4)]:
        i0, i1, l0, l1 = linear_source_weights(n_in, n_out)
        eye = torch.eye(n_in)[:, None, :]  # (n_in, 1, n_in): channel j = impulse at j
        got = F.interpolate(eye, n_out, mode="linear", align_corners=False)[:, 0]  # (n_in, n_out)
        want = torch.zeros(n_in, n_out)
        want[i0, torch.arange(n_out)] += l0
        want[i1, torch.arange(n_out)] += l1
        torch.testing.assert_close(got, want, rtol=0, atol=1e-7)


def test_packed_rows_equal_dense_rows():
    gen = torch.Generator().manual_seed(0)
    c, n = 6, 50
    support = torch.tensor([1, 4, 5, 9, 20, 49])
    cols = torch.randn(c, support.numel(), generator=gen)
    dense = torch.zeros(c, n)
    dense[:, support] = cols
    packed, ref = PackedRows(cols, support, n), DenseRows(dense)
    assert torch.equal(packed.dense(), dense)
    for idx in (support, torch.tensor([0, 4, 3, 49, 2]), torch.arange(n)):
        assert torch.equal(packed.rows(idx), ref.rows(idx))
    assert torch.equal(packed.span(3, 11), dense[:, 3:11].t())
    got_cols, got_idx = packed.columns()
    assert torch.equal(got_cols, cols) and torch.equal(got_idx, support)
    # DenseRows.columns keeps exactly the non-zero tokens
    dcols, didx = ref.columns()
    assert torch.equal(didx, support) and torch.equal(dcols, cols)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="support"):
        PackedRows(torch.zeros(3, 4), torch.arange(5), 10)
    with pytest.raises(ValueError, match="(C, h, w)"):
        UpsampledRows(torch.zeros(3, 4), 8)
    with pytest.raises(ValueError):
        DenseRows(torch.zeros(1, 2, 3, 4))
