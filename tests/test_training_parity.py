"""Training-step parity of `cmdr_iad.training.train_heads` with the authors' `train.py`.

No reference arrays exist for training (`golden/training.npz` was never produced; the golden
README has no training section). This file therefore holds, in `authors_loop`, an independent,
straightforward re-implementation of the inner loop of the authors' `train.py`
(ECGAI-Research/CMDR-IAD, `Train_CMDR_IAD`) as read from their source:

* four independent `torch.optim.Adam(head.parameters())` with PyTorch defaults (lr 1e-3,
  betas (0.9, 0.999), eps 1e-8, no weight decay); the heads are never put in eval mode, so
  they train in train mode (dropout on, BatchNorm on batch statistics, running stats updated);
* per batch: the four forwards on every token (map2Dto3D, map3Dto2D, Dec2D, Dec3D), the
  mask ``xyz_mask = xyz_patch.sum(-1) == 0`` from the 3D features, the four losses
  ``masked_similarity_loss(pred, target, xyz_mask)`` (rows flattened, masked rows dropped,
  1 − mean cosine with eps 1e-6), then per head, in the order map3Dto2D, map2Dto3D, Dec2D,
  Dec3D: ``if isfinite(loss): zero_grad(); backward(); step()``;
* batches are consecutive slices of the epoch's shuffled order, the last one partial
  (DataLoader, drop_last False).

Two things cannot come from their code and are taken from ours on purpose: the shuffled order
(their DataLoader draws it from the global RNG; here `training.epoch_order`) and the dropout
seed per epoch (`seed + epoch`). The heads are small recipe-initialised networks
(`golden/recipe.py`), the features fixed random tensors with missing rows. Compared: the loss of
every head at every step, the final state dicts (BatchNorm running statistics included) and
the Adam moments (from our checkpoint). A sample whose rows are all missing makes the authors'
loop fail in `backward()`; ours skips and counts it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cmdr_iad.artifact import load_artifact
from cmdr_iad.config import TrainConfig
from cmdr_iad.model.decoders import Decoder2D, Decoder3D
from cmdr_iad.model.mapping import CrossModalMLP
from cmdr_iad.training import CHECKPOINT_KIND, TASKS, epoch_order, train_heads

G, C2, C3 = 16, 32, 24  # grid side (L = 256 tokens = 32·8: Decoder3D LayerNorms over 8, not a degenerate 2), widths
STEP_TOL = {"rtol": 1e-4, "atol": 1e-5}  # golden README: float32 network outputs
# Adam divides by sqrt(v) + eps: where a gradient is ~0, float rounding of the order of 1e-9
# in it moves the step visibly (up to lr = 1e-3 per step), so the weights get a looser absolute
# bound than the losses, and the Adam moments one relative to each tensor's largest value.
STATE_TOL = {"rtol": 1e-4, "atol": 5e-4}
# The bias of a convolution followed by train-mode BatchNorm has a gradient that is exactly 0 in
# exact arithmetic (the BatchNorm removes the mean); in float32 it is rounding noise (~1e-9) of
# either sign, which Adam turns into steps of up to ±lr. Those biases only have to stay within
# lr·steps of each other (they do not change any train-mode output).
# The running mean of that BatchNorm follows the bias (momentum 0.1) and gets the same bound.
PRE_NORM = {"Dec2D": ("conv_decoder.0", "conv_decoder.3", "conv_decoder.6"),
            "Dec3D": ("decoder.0", "decoder.3", "decoder.6", "decoder.9")}


def _follows_bias_noise(head: str, key: str) -> bool:
    for conv in PRE_NORM.get(head, ()):
        norm = conv.rsplit(".", 1)[0] + "." + str(int(conv.rsplit(".", 1)[1]) + 1)
        if key in (f"{conv}.bias", f"{norm}.running_mean"):
            return True
    return False


# --------------------------------------------------------------------------- a reading of train.py


def ref_masked_similarity_loss(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor,
                               eps: float = 1e-6) -> torch.Tensor:
    """The authors' loss, mode "cos": mask True = excluded; an empty selection gives a constant 0."""
    bsz, n, c = a.shape
    keep = ~mask.reshape(bsz * n)
    a, b = a.reshape(bsz * n, c)[keep], b.reshape(bsz * n, c)[keep]
    if a.numel() == 0:
        return a.new_tensor(0.0)
    return 1.0 - (F.normalize(a, dim=-1, eps=eps) * F.normalize(b, dim=-1, eps=eps)).sum(-1).mean()


def authors_loop(heads: dict[str, torch.nn.Module], f2d: torch.Tensor, f3d: torch.Tensor,
                 epochs: int, batch_size: int, seed: int) -> tuple[list[dict[str, float]], dict]:
    """Their inner loop on token features f2d (S, N, C2), f3d (S, N, C3).

    Returns (per step {head: loss}, {head: optimizer}).
    """
    opts = {k: torch.optim.Adam(h.parameters()) for k, h in heads.items()}
    steps: list[dict[str, float]] = []
    for epoch in range(epochs):
        torch.manual_seed(seed + epoch)
        order = epoch_order(f2d.shape[0], seed, epoch)
        for b0 in range(0, len(order), batch_size):
            idx = order[b0:b0 + batch_size]
            rgb_patch, xyz_patch = f2d[idx], f3d[idx]
            xyz_mask = xyz_patch.sum(dim=-1) == 0
            mapped_3d = heads["map2Dto3D"](rgb_patch)
            mapped_2d = heads["map3Dto2D"](xyz_patch)
            recon_2d = heads["Dec2D"](rgb_patch)
            recon_3d = heads["Dec3D"](xyz_patch)
            losses = {
                "map3Dto2D": ref_masked_similarity_loss(mapped_2d, rgb_patch, xyz_mask),
                "map2Dto3D": ref_masked_similarity_loss(mapped_3d, xyz_patch, xyz_mask),
                "Dec2D": ref_masked_similarity_loss(recon_2d, rgb_patch, xyz_mask),
                "Dec3D": ref_masked_similarity_loss(recon_3d, xyz_patch, xyz_mask),
            }
            for name in ("map3Dto2D", "map2Dto3D", "Dec2D", "Dec3D"):
                if torch.isfinite(losses[name]):
                    opts[name].zero_grad()
                    losses[name].backward()
                    opts[name].step()
            steps.append({k: float(v.detach()) for k, v in losses.items()})
    return steps, opts


# --------------------------------------------------------------------------- fixtures


def small_heads(recipe, dropout: float) -> dict[str, torch.nn.Module]:
    """The four heads at a small size, every tensor from the golden recipe, in train mode."""
    heads = {
        "map2Dto3D": CrossModalMLP(C2, C3, dropout=dropout),
        "map3Dto2D": CrossModalMLP(C3, C2, dropout=dropout),
        "Dec2D": Decoder2D(C2, G, num_heads=4, window_size=48, dropout=dropout),
        "Dec3D": Decoder3D(G * G, C3, dropout=dropout),
    }
    for h in heads.values():
        recipe.fill_module(h)
    return heads


def features(n: int, missing: Sequence[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed token features (n, G·G, C2), (n, G·G, C3); sample i misses a fraction missing[i] of
    its 3D rows (zero vectors, as in a scan with holes and a removed background)."""
    gen = torch.Generator().manual_seed(seed)
    f2d = torch.randn(n, G * G, C2, generator=gen)
    f3d = torch.randn(n, G * G, C3, generator=gen) + 0.5
    for i, frac in enumerate(missing):
        k = round(frac * G * G)
        gone = torch.randperm(G * G, generator=gen)[:k]
        f3d[i, gone] = 0.0
    return f2d, f3d


class TokenStore:
    """`training.FeatureStore` over token tensors (S, G·G, C)."""

    def __init__(self, f2d: torch.Tensor, f3d: torch.Tensor):
        self.f2d, self.f3d = f2d, f3d

    def __len__(self) -> int:
        return self.f2d.shape[0]

    def _grid(self, t: torch.Tensor) -> torch.Tensor:
        return t.transpose(-1, -2).reshape(*t.shape[:-2], t.shape[-1], G, G)

    def valid(self, index: int) -> torch.Tensor:
        return (self.f3d[index].sum(-1) != 0).view(G, G)

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = list(indices)
        return {"f2d": self._grid(self.f2d[idx]), "f3d": self._grid(self.f3d[idx]),
                "valid": (self.f3d[idx].sum(-1) != 0).view(len(idx), G, G)}


def ours(heads, store, epochs: int, batch_size: int, seed: int, tmp_path: Path):
    steps: list[dict[str, float]] = []
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed)
    report = train_heads(heads, store, cfg, checkpoint=tmp_path / "ckpt", progress=False,
                         on_step=lambda e, b, losses: steps.append(dict(losses)))
    tensors, _ = load_artifact(tmp_path / "ckpt", CHECKPOINT_KIND)
    return report, steps, tensors


def compare(ref_heads, ref_steps, ref_opts, our_heads, our_steps, tensors) -> None:
    assert len(our_steps) == len(ref_steps)
    for s, (a, b) in enumerate(zip(our_steps, ref_steps, strict=True)):
        assert set(a) == set(TASKS)
        for name in TASKS:
            torch.testing.assert_close(a[name], b[name], **STEP_TOL, msg=lambda m, w=f"step {s} {name}": f"{w}: {m}")
    for name in TASKS:
        assert not our_heads[name].training  # handed back in eval mode
        mine, theirs = our_heads[name].state_dict(), ref_heads[name].state_dict()
        assert mine.keys() == theirs.keys()
        for k in mine:
            if _follows_bias_noise(name, k):
                bound = 2 * 1e-3 * len(ref_steps)
                assert float((mine[k] - theirs[k]).abs().max()) <= bound, f"{name}.{k}"
                continue
            torch.testing.assert_close(mine[k], theirs[k], **STATE_TOL, msg=lambda m, w=f"{name}.{k}": f"{w}: {m}")
        state = ref_opts[name].state_dict()["state"]
        assert state, f"{name}: the reference never stepped"
        pnames = [k for k, _ in ref_heads[name].named_parameters()]
        for pid, st in state.items():
            if _follows_bias_noise(name, pnames[pid]):  # moments of rounding noise: tiny, no sign
                assert float(tensors[f"opt.{name}.{pid}.exp_avg"].abs().max()) < 1e-6
                continue
            for moment in ("exp_avg", "exp_avg_sq"):
                got, want = tensors[f"opt.{name}.{pid}.{moment}"], st[moment]
                scale = float(want.abs().max()) + 1e-12  # float noise relative to the tensor
                torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-2 * scale,
                                           msg=lambda m, w=f"{name} param {pid} {moment}": f"{w}: {m}")
            torch.testing.assert_close(tensors[f"opt.{name}.{pid}.step"], st["step"])


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("batch_size", [1, 2])
def test_steps_match_the_authors_loop_with_missing_rows(recipe, tmp_path, batch_size):
    """Every loss masked by the missing-3D mask, per-head Adam, train-mode BatchNorm, batches."""
    f2d, f3d = features(3, missing=[0.0, 0.3, 0.7])
    ref_heads = small_heads(recipe, dropout=0.0)
    our_heads = copy.deepcopy(ref_heads)
    ref_steps, ref_opts = authors_loop(ref_heads, f2d, f3d, epochs=2, batch_size=batch_size, seed=3)
    rep, our_steps, tensors = ours(our_heads, TokenStore(f2d, f3d), 2, batch_size, 3, tmp_path)
    assert rep.skipped_no_valid == 0 and sum(rep.skipped_steps.values()) == 0
    compare(ref_heads, ref_steps, ref_opts, our_heads, our_steps, tensors)


def test_dropout_is_active_as_in_the_authors_loop(recipe, tmp_path):
    """Dropout 0.1 at batch 1 without missing rows: both draw the same masks in the same order,
    so the steps agree only if our heads train in train mode, forward in the authors' order."""
    f2d, f3d = features(2, missing=[0.0, 0.0], seed=1)
    ref_heads = small_heads(recipe, dropout=0.1)
    our_heads = copy.deepcopy(ref_heads)
    ref_steps, ref_opts = authors_loop(ref_heads, f2d, f3d, epochs=2, batch_size=1, seed=5)
    _, our_steps, tensors = ours(our_heads, TokenStore(f2d, f3d), 2, 1, 5, tmp_path)
    compare(ref_heads, ref_steps, ref_opts, our_heads, our_steps, tensors)
    # and dropout does change the result (else the comparison above would prove nothing)
    plain = small_heads(recipe, dropout=0.0)
    plain_steps, _ = authors_loop(plain, f2d, f3d, epochs=1, batch_size=1, seed=5)
    assert abs(plain_steps[0]["Dec2D"] - ref_steps[0]["Dec2D"]) > 1e-4


def test_all_missing_sample_crashes_the_authors_loop_and_is_skipped_by_ours(recipe, tmp_path):
    f2d, f3d = features(4, missing=[0.2, 1.0, 0.0, 0.5], seed=2)
    with pytest.raises(RuntimeError, match="does not require grad"):
        authors_loop(small_heads(recipe, dropout=0.0), f2d, f3d, epochs=1, batch_size=1, seed=0)
    # ours on all four samples == the authors' loop on the three usable ones, in the same order
    keep = [0, 2, 3]
    ref_heads = small_heads(recipe, dropout=0.0)
    our_heads = copy.deepcopy(ref_heads)
    ref_steps, ref_opts = authors_loop(ref_heads, f2d[keep], f3d[keep], epochs=2, batch_size=1, seed=0)
    rep, our_steps, tensors = ours(our_heads, TokenStore(f2d, f3d), 2, 1, 0, tmp_path)
    assert rep.skipped_no_valid == 1 and rep.samples == 3
    assert all(row["skipped_samples"] == 1 for row in rep.log)
    compare(ref_heads, ref_steps, ref_opts, our_heads, our_steps, tensors)
