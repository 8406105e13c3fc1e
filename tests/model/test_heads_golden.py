"""Golden parity of the heads (heads.npz) with recipe weights, intermediates via forward hooks."""

from __future__ import annotations

import pytest
import torch

from cmdr_iad.model.decoders import Decoder2D, Decoder3D
from cmdr_iad.model.mapping import CrossModalMLP

# group → (constructor, input array, {golden field: sub-module whose output it is ("" = whole net)})
CASES = {
    "mlp_a": (lambda: CrossModalMLP(48, 72), "mlp_a__x",
              {"y": "", "input_linear": "input", "projection": "projection"}),
    "mlp_b": (lambda: CrossModalMLP(72, 48), "mlp_b__x",
              {"y": "", "input_linear": "input", "projection": "projection"}),
    "dec2d_a": (lambda: Decoder2D(64, img_size=16, num_heads=8, window_size=128), "dec2d_a__x",
                {"y": "", "projection": "projection", "sparse_attn": "attn.attn",
                 "attn_block": "attn", "conv_decoder": "conv_decoder"}),
    "dec2d_b": (lambda: Decoder2D(64, 12, 8, 128), "dec2d_b__x", {"y": "", "sparse_attn": "attn.attn"}),
    "dec2d_c": (lambda: Decoder2D(64, 16, 8, window_size=100), "dec2d_a__x",
                {"y": "", "sparse_attn": "attn.attn"}),
    "dec3d_a": (lambda: Decoder3D(out_seq_len=256, feature_dim=64), "dec3d_a__x",
                {"y": "", "projection": "projection", "decoder": "decoder", "attention": "attention"}),
}
LOSS_PREFIXES = ("loss__", "loss_zero__", "loss_big__", "loss_value__")  # checked in test_losses.py


def run_with_hooks(net: torch.nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    handles = [
        net.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: out.__setitem__(n, o))
        for n in names if n
    ]
    try:
        with torch.no_grad():
            out[""] = net(x)
    finally:
        for h in handles:
            h.remove()
    return out


@pytest.mark.parametrize("group", list(CASES))
def test_head_matches_golden(group, heads_npz, filled, close):
    make, xkey, fields = CASES[group]
    net = filled(make())
    got = run_with_hooks(net, torch.from_numpy(heads_npz[xkey]), list(fields.values()))
    for field, sub in fields.items():
        close(got[sub], heads_npz[f"{group}__{field}"], f"{group}__{field}")


def test_every_heads_array_is_checked(heads_npz):
    covered = {f"{g}__{f}" for g, (_, _, fields) in CASES.items() for f in fields}
    covered |= {x for _, x, _ in CASES.values()}
    left = [k for k in heads_npz.files if k not in covered and not k.startswith(LOSS_PREFIXES)]
    assert not left, f"heads.npz arrays without a test: {left}"


SMALL = {
    "mlp_a": lambda: CrossModalMLP(48, 72),
    "mlp_b": lambda: CrossModalMLP(72, 48),
    "dec2d_a": lambda: Decoder2D(64, 16, 8, 128),
    "dec2d_b": lambda: Decoder2D(64, 12, 8, 128),
    "dec2d_c": lambda: Decoder2D(64, 16, 8, 100),
    "dec3d_a": lambda: Decoder3D(256, 64),
}


def state_dict_table(module: torch.nn.Module) -> list[tuple[str, list[int], str]]:
    return [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in module.state_dict().items()]


def manifest_table(entries) -> list[tuple[str, list[int], str]]:
    return [(e["key"], list(e["shape"]), e["dtype"]) for e in entries]


@pytest.mark.parametrize("group", list(SMALL))
def test_small_state_dict_layout(group, heads_manifest):
    entry = heads_manifest["small_configs"][group]
    assert state_dict_table(SMALL[group]()) == manifest_table(entry["state_dict"])


def test_poly9216_small_config_layout_and_rule(heads_manifest):
    entry = heads_manifest["small_configs"]["poly9216_a"]
    args = entry["args"]
    net = Decoder3D(args["out_seq_len"], args["feature_dim"])
    assert state_dict_table(net) == manifest_table(entry["state_dict"])
    assert net.reduced_len == (args["out_seq_len"] // 32 if args["out_seq_len"] >= 32 else args["out_seq_len"])
