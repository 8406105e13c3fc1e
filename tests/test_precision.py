"""`cmdr_iad.precision`: one precision setting; support detection never falls back silently; bf16
training keeps fp32 weights and Adam state, and its losses stay near fp32's (measured bound)."""

from __future__ import annotations

import pytest
import torch

from cmdr_iad import precision as prec
from cmdr_iad.config import TrainConfig
from cmdr_iad.errors import ConfigError, UserInputError
from cmdr_iad.training import train_heads
from test_training_parity import TokenStore, features, small_heads


def test_unknown_and_fp16_on_cpu_are_bad_input():
    with pytest.raises(UserInputError, match="precision must be one of"):
        prec.resolve_precision("int8", "cpu")
    with pytest.raises(UserInputError, match="only offered on CUDA"):
        prec.resolve_precision("fp16", "cpu")
    with pytest.raises(UserInputError, match="only offered on CUDA"):
        prec.autocast("cpu", "fp16")
    with pytest.raises(ConfigError, match="train.precision"):
        TrainConfig(precision="half").validate()


def test_bf16_without_native_support_says_so_and_runs_fp32(monkeypatch):
    said: list[str] = []
    monkeypatch.setattr(prec, "cpu_bf16_support", lambda: None)
    assert prec.resolve_precision("bf16", "cpu", said.append) == "fp32"
    assert len(said) == 1 and "running fp32" in said[0]
    monkeypatch.setattr(prec, "cpu_bf16_support", lambda: "avx512_bf16")
    assert prec.resolve_precision("bf16", "cpu", said.append) == "bf16" and len(said) == 1
    assert prec.resolve_precision("fp32", "cpu", said.append) == "fp32"


def test_autocast_runs_linear_layers_in_bf16_and_fp32_is_a_no_op():
    lin = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    with prec.autocast("cpu", "bf16"):
        assert lin(x).dtype == torch.bfloat16
    with prec.autocast("cpu", "fp32"):
        assert torch.equal(lin(x), lin(x)) and lin(x).dtype == torch.float32


def test_bf16_training_keeps_fp32_state_and_tracks_fp32_losses(recipe, monkeypatch):
    """Same data, init and seed in fp32 and bf16: per-step losses within 3 % (measured: 0.06 %),
    weights and Adam moments stay float32, the report records the precision that ran."""
    monkeypatch.setattr(prec, "cpu_bf16_support", lambda: "avx512_bf16")  # emulated where absent
    f2d, f3d = features(4, missing=[0.0, 0.3, 0.5, 0.2])
    runs = {}
    for p in ("fp32", "bf16"):
        heads = small_heads(recipe, dropout=0.0)
        steps: list[dict[str, float]] = []
        rep = train_heads(heads, TokenStore(f2d, f3d), TrainConfig(epochs=2, batch_size=2, seed=1,
                                                                   precision=p),
                          progress=False, on_step=lambda e, b, losses, s=steps: s.append(dict(losses)))
        runs[p] = (rep, steps, heads)
    (r32, s32, _), (r16, s16, h16) = runs["fp32"], runs["bf16"]
    assert r32.precision == "fp32" and r16.precision == "bf16" and r16.to_dict()["precision"] == "bf16"
    assert len(s32) == len(s16) == 4
    for a, b in zip(s32, s16, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert abs(a[k] - b[k]) <= 0.03 * abs(a[k]), (k, a[k], b[k])
    print("max relative step-loss difference:", max(abs(a[k] - b[k]) / abs(a[k]) for a, b in zip(s32, s16, strict=True) for k in a))
    assert any(a[k] != b[k] for a, b in zip(s32, s16, strict=True) for k in a)  # bf16 really ran
    assert all(v.dtype == torch.float32 for h in h16.values() for v in h.state_dict().values()
               if v.is_floating_point())


# --------------------------------------------------------------------------- inference


def test_geometry_stays_float32_inside_an_autocast_region():
    """The geometry is decorated with `full_precision`: under bf16 autocast k-NN, 3-NN and the
    squared distances are bit-identical to float32; the undecorated distance would not be."""
    from cmdr_iad.features import geometry as geo

    g = torch.Generator().manual_seed(0)
    pts = torch.rand(1, 600, 3, generator=g)
    centres = pts[:, :40]
    ref = (geo.square_distance(pts, centres), geo.knn(pts, centres, 16), geo.three_nn(pts, centres))
    with prec.autocast("cpu", "bf16"):
        got = (geo.square_distance(pts, centres), geo.knn(pts, centres, 16), geo.three_nn(pts, centres))
        raw = geo.square_distance.__wrapped__(pts, centres)
    assert torch.equal(got[0], ref[0]) and got[0].dtype == torch.float32
    assert torch.equal(got[1], ref[1])
    assert all(torch.equal(a, b) for a, b in zip(got[2], ref[2], strict=True))
    assert not torch.equal(raw.float(), ref[0])  # what the decorator prevents


def test_set_precision_is_one_setting_of_the_path_and_never_falls_back_silently(monkeypatch):
    """`set_precision` sets the one inference path's precision; without native bf16 (and no
    emulation asked for) it says so once and fp32 runs; fp16 off CUDA is bad input. (The bf16
    numerics themselves: tests/workflow/test_precision_deviation.py.)"""
    from cmdr_iad import CMDRIAD, presets

    det = CMDRIAD(presets.tiny("rgb"), random_backbones=True, device="cpu")
    said: list[str] = []
    assert det.set_precision("bf16", said.append, emulate=True) == "bf16"
    assert det.path.precision == "bf16" and len(said) == (0 if prec.cpu_bf16_support() else 1)
    monkeypatch.setattr(prec, "cpu_bf16_support", lambda: None)
    said.clear()
    assert det.set_precision("bf16", said.append) == "fp32" and det.path.precision == "fp32"
    assert len(said) == 1 and "running fp32" in said[0]
    with pytest.raises(UserInputError, match="only offered on CUDA"):
        det.set_precision("fp16")
    assert det.precision == "fp32"
    monkeypatch.setattr(prec, "cpu_bf16_support", lambda: "amx_bf16")
    said.clear()
    assert det.set_precision("bf16", said.append) == "bf16" and not said  # native: no note
