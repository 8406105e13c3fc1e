"""model.heads: the heads of each modality under their official names, and the one strict
state-dict checker (shared by the heads, the ViT and Point-MAE loaders)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cmdr_iad.model.heads import HEADS_BY_MODALITY, build_heads, load_strict, state_dict_problems


@pytest.mark.parametrize("modality", ["rgb+xyz", "rgb", "xyz"])
def test_build_heads_per_modality(modality):
    heads = build_heads(modality, 8, 16, 24, 4, 16)
    assert tuple(heads) == HEADS_BY_MODALITY[modality]
    with pytest.raises(ValueError, match="unknown modality"):
        build_heads("depth", 8)


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_every_kind_of_mismatch_is_listed():
    net = _net()
    sd = dict(net.state_dict())
    del sd["0.bias"]
    sd["2.weight"] = torch.zeros(1)
    sd["0.weight"] = torch.zeros(4, 2)
    sd["1.num_batches_tracked"] = torch.zeros((), dtype=torch.float32)
    probs = state_dict_problems(net, sd)
    assert probs == ["missing keys (1): 0.bias", "unexpected keys (1): 2.weight",
                     "shape mismatches (1): 0.weight: file (4, 2) vs model (4, 3)",
                     "dtype mismatches (1): 1.num_batches_tracked: file torch.float32 vs model torch.int64"]
    with pytest.raises(ValueError, match=r"^net: missing keys \(1\): 0.bias; unexpected"):
        load_strict(net, sd, "net")


def test_optional_keys_may_be_missing_and_values_are_loaded():
    src, dst = _net(), _net()
    with torch.no_grad():
        src[0].weight.fill_(0.5)
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert state_dict_problems(dst, sd) == ["missing keys (1): 1.num_batches_tracked"]
    load_strict(dst, {k: v.double() if v.is_floating_point() else v for k, v in sd.items()},
                optional=("num_batches_tracked",))
    assert torch.equal(dst[0].weight, src[0].weight) and dst[0].weight.dtype == torch.float32
