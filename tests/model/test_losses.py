"""Masked similarity loss: golden cases (heads_manifest.json) and the no-valid-row behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdr_iad.model.losses import (
    masked_similarity_loss,
    per_sample_similarity_loss,
    row_losses,
    valid_tokens,
)

CASES = ["random_mask", "no_mask", "all_masked", "l2_mode_random_mask", "l2_mode_all_masked",
         "zero_and_tiny_vectors", "chunked_over_8192_rows"]


def golden_case(case, heads_manifest, heads_npz):
    c = heads_manifest["masked_similarity_loss"][case]
    a, b = torch.from_numpy(heads_npz[c["a"]]), torch.from_numpy(heads_npz[c["b"]])
    if c["mask"] in heads_npz.files:
        mask = torch.from_numpy(heads_npz[c["mask"]])
    else:  # "all False (nothing masked)" / "all True (everything masked)"
        mask = torch.full(a.shape[:2], c["mask"].startswith("all True"))
    return c, a, b, mask


def test_all_golden_cases_listed(heads_manifest):
    listed = {k for k, v in heads_manifest["masked_similarity_loss"].items() if isinstance(v, dict)}
    assert listed == set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_masked_loss_matches_golden(case, heads_manifest, heads_npz):
    c, a, b, mask = golden_case(case, heads_manifest, heads_npz)
    valid = ~mask  # reference mask: True = excluded
    assert int(valid.sum()) == c["n_unmasked_rows"]
    got = masked_similarity_loss(a, b, valid, mode=c["mode"])
    if c["n_unmasked_rows"] == 0:
        # the reference returns a gradient-less 0.0 whose backward() raises; we return None
        assert c["value"] == 0.0 and float(heads_npz[c["value_array"]]) == 0.0
        assert got is None
        return
    np.testing.assert_allclose(got.item(), c["value"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.item(), float(heads_npz[c["value_array"]]), rtol=1e-5, atol=1e-7)


def test_zero_and_tiny_rows_follow_reference_rules():
    a = torch.zeros(1, 3, 4)
    b = torch.zeros(1, 3, 4)
    a[0, 1, 0] = 1.0
    b[0, 1, 0] = 2.0  # parallel → loss 0
    a[0, 2, 0] = 1e-8  # norm < eps: not scaled to unit length, so cos ≈ 1e-8/1e-6 = 0.01
    b[0, 2, 0] = 1.0
    per_row = row_losses(a, b)
    np.testing.assert_allclose(per_row[0].numpy(), [1.0, 0.0, 0.99], rtol=1e-6)


def test_l2_mode_by_hand():
    a = torch.tensor([[[3.0, 4.0], [1.0, 1.0]]])
    b = torch.zeros(1, 2, 2)
    valid = torch.tensor([[True, False]])
    assert masked_similarity_loss(a, b, valid, mode="l2").item() == pytest.approx(5.0)


def test_pooled_over_rows_and_per_sample_variant():
    # sample 0: rows with losses 0 (parallel) and 2 (opposite); sample 1: no valid row
    a = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], [[1.0, 1.0], [2.0, 0.0], [0.0, 3.0]]])
    b = torch.tensor([[[2.0, 0.0], [0.0, -1.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
    valid = torch.tensor([[True, True, False], [False, False, False]])
    assert masked_similarity_loss(a, b, valid).item() == pytest.approx(1.0)
    loss, has_valid = per_sample_similarity_loss(a, b, valid)
    assert has_valid.tolist() == [True, False]
    np.testing.assert_allclose(loss.numpy(), [1.0, 0.0], atol=1e-7)


def test_empty_batch_returns_none_and_training_can_skip():
    pred = torch.randn(2, 5, 3, requires_grad=True)
    valid = torch.zeros(2, 5, dtype=torch.bool)
    assert masked_similarity_loss(pred, torch.randn(2, 5, 3), valid) is None


def test_per_sample_skips_empty_sample_with_finite_gradient():
    torch.manual_seed(0)
    pred = torch.randn(3, 6, 4, requires_grad=True)
    target = torch.randn(3, 6, 4)
    target[1] = 0.0
    valid = valid_tokens(target)  # sample 1 has no valid token (reference rule: sum == 0)
    loss, has_valid = per_sample_similarity_loss(pred, target, valid)
    assert int((~has_valid).sum()) == 1
    loss[has_valid].mean().backward()
    assert torch.isfinite(pred.grad).all()
    assert torch.count_nonzero(pred.grad[1]) == 0
    # with one sample per batch the pooled loss equals the per-sample loss
    for i in (0, 2):
        pooled = masked_similarity_loss(pred[i:i + 1], target[i:i + 1], valid[i:i + 1])
        assert pooled.item() == pytest.approx(loss[i].item(), rel=1e-6)


def test_masked_rows_cannot_leak_non_finite_values():
    pred = torch.ones(1, 2, 3)
    pred[0, 1] = float("nan")
    valid = torch.tensor([[True, False]])
    assert masked_similarity_loss(pred, torch.ones(1, 2, 3), valid).item() == pytest.approx(0.0, abs=1e-6)


def test_valid_tokens_is_complement_of_reference_mask():
    x = torch.tensor([[[1.0, -1.0], [0.0, 0.0], [0.5, 0.0]]])
    assert valid_tokens(x).tolist() == [[False, False, True]]


@pytest.mark.parametrize(
    "pred, target, valid, mode, match",
    [
        (torch.zeros(1, 4, 3), torch.zeros(1, 4, 2), torch.ones(1, 4, dtype=torch.bool), "cos", "same"),
        (torch.zeros(1, 4, 3), torch.zeros(1, 4, 3), torch.ones(1, 5, dtype=torch.bool), "cos", "valid mask"),
        (torch.zeros(1, 4, 3), torch.zeros(1, 4, 3), torch.ones(1, 4), "cos", "bool"),
        (torch.zeros(1, 4, 3), torch.zeros(1, 4, 3), torch.ones(1, 4, dtype=torch.bool), "l1", "mode"),
    ],
)
def test_bad_input_raises(pred, target, valid, mode, match):
    with pytest.raises(ValueError, match=match):
        masked_similarity_loss(pred, target, valid, mode=mode)
