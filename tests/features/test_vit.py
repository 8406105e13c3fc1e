"""DINO ViT-B/8 wrapper: shapes, batch independence, input checks, checkpoint layouts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cmdr_iad.errors import UserInputError, WeightsError
from cmdr_iad.features.vit import (
    create_vit,
    load_vit_state_dict,
    load_vit_weights,
    normalize_vit_state_dict,
    rgb_feature_map,
    upsample_feature_map,
    vit_feature_map,
)
from cmdr_iad.features.weights import seeded_init_


@pytest.fixture(scope="module")
def vit64():
    """Seeded random weights; input 64×64 → 8×8 patches (small, so the tests stay fast)."""
    return seeded_init_(create_vit(64, empty=True), 0)


@pytest.fixture(scope="module")
def sd224(vit64):
    """A state dict shaped like the 224-trained release (785 position embeddings)."""
    sd = {k: v.clone() for k, v in vit64.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    sd["pos_embed"] = torch.randn(1, 785, 768, generator=g) * 0.02
    return sd


def test_model_is_frozen_eval(vit64):
    assert not vit64.training
    assert not any(p.requires_grad for p in vit64.parameters())
    assert tuple(vit64.pos_embed.shape) == (1, 1 + 8 * 8, 768)
    assert len(vit64.state_dict()) == 150


def test_batch_equals_single_calls(vit64):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        both = vit_feature_map(vit64, x)
        one = torch.cat([vit_feature_map(vit64, x[i:i + 1]) for i in range(2)])
    assert both.shape == (2, 768, 8, 8)
    torch.testing.assert_close(both, one, rtol=1e-4, atol=1e-5)
    # patch (r, c) is token 1 + 8r + c, after the final norm
    with torch.no_grad():
        tokens = vit64.forward_features(x[:1])
    torch.testing.assert_close(both[0, :, 3, 5], tokens[0, 1 + 8 * 3 + 5], rtol=1e-4, atol=1e-5)


def test_rgb_feature_map_upsamples_bilinear(vit64):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        fmap = vit_feature_map(vit64, x)
        up = rgb_feature_map(vit64, x, 32)
    assert up.shape == (1, 768, 32, 32)
    torch.testing.assert_close(up, F.interpolate(fmap, size=(32, 32), mode="bilinear",
                                                 align_corners=False))
    assert upsample_feature_map(fmap, 8) is fmap


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(1, 3, 224, 224), "64"),
    (torch.zeros(1, 1, 64, 64), r"\(B,3,S,S\)"),
    (torch.zeros(3, 64, 64), r"\(B,3,S,S\)"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "floating-point"),
    (torch.full((1, 3, 64, 64), float("nan")), "NaN"),
])
def test_bad_inputs(vit64, bad, match):
    with pytest.raises(UserInputError, match=match):
        vit_feature_map(vit64, bad)


def test_bad_rgb_size():
    with pytest.raises(UserInputError, match="multiple of 8"):
        create_vit(100)


def test_load_resamples_224_pos_embed(vit64, sd224):
    m = create_vit(112, empty=True)  # the tiny preset's ViT input
    sd = dict(sd224)
    const = torch.linspace(-1, 1, 768)
    pos = torch.empty(1, 785, 768)
    pos[0, 0] = 7.0  # CLS position: kept as is
    pos[0, 1:] = const  # spatially constant field: any resampling keeps it
    sd["pos_embed"] = pos
    load_vit_state_dict(m, sd)
    assert tuple(m.pos_embed.shape) == (1, 197, 768)
    torch.testing.assert_close(m.pos_embed[0, 0], torch.full((768,), 7.0))
    torch.testing.assert_close(m.pos_embed[0, 1:], const.expand(196, 768), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.blocks[3].attn.qkv.weight, vit64.blocks[3].attn.qkv.weight,
                               rtol=0, atol=0)
    # a field that grows along the columns only keeps its row-major orientation
    col = torch.arange(28.0).repeat(28)  # token 1 + 28r + c holds c
    sd["pos_embed"] = torch.cat([pos[:, :1], col[None, :, None].expand(1, 784, 768)], 1)
    load_vit_state_dict(m, sd)
    grid = m.pos_embed[0, 1:, 0].reshape(14, 14)
    torch.testing.assert_close(grid, grid[:1].expand(14, 14))  # rows equal
    assert bool((grid[0, 1:] > grid[0, :-1]).all())  # increasing along columns
    torch.testing.assert_close(grid[0, 7] + grid[0, 6], torch.tensor(27.0), rtol=0, atol=1e-3)


def test_dino_training_checkpoint_layout(tmp_path, sd224):
    """`teacher` / `student` with `module.backbone.` prefixes and a DINO head: head dropped."""
    teacher = {f"backbone.{k}": v for k, v in sd224.items()}
    teacher["head.mlp.0.weight"] = torch.zeros(2048, 768)
    teacher["head.last_layer.weight_g"] = torch.ones(65536, 1)
    student = {f"module.{k}": torch.zeros_like(v) for k, v in teacher.items()}
    norm = normalize_vit_state_dict({"student": student, "teacher": teacher, "epoch": 100})
    assert set(norm) == set(sd224)
    assert torch.equal(norm["norm.weight"], sd224["norm.weight"])  # the teacher is preferred
    p = tmp_path / "dino_vitbase8_pretrain_full_checkpoint.pth"
    torch.save({"teacher": teacher}, str(p))
    m = create_vit(224, empty=True)
    load_vit_weights(m, p)
    assert torch.equal(m.pos_embed, sd224["pos_embed"])
    assert torch.equal(normalize_vit_state_dict({f"module.{k}": v for k, v in sd224.items()})
                       ["cls_token"], sd224["cls_token"])


def test_strict_key_errors(sd224):
    m = create_vit(224, empty=True)
    sd = dict(sd224)
    del sd["blocks.11.mlp.fc2.bias"]
    sd["head.weight"] = torch.zeros(1000, 768)
    with pytest.raises(WeightsError) as e:
        load_vit_state_dict(m, sd, source="x.safetensors")
    msg = str(e.value)
    assert "x.safetensors" in msg and "missing keys (1): blocks.11.mlp.fc2.bias" in msg
    assert "unexpected keys (1): head.weight" in msg
    sd = dict(sd224)
    sd["blocks.0.attn.qkv.weight"] = torch.zeros(2304, 384)
    with pytest.raises(WeightsError, match=r"blocks.0.attn.qkv.weight: file \(2304, 384\)"):
        load_vit_state_dict(m, sd)
    with pytest.raises(WeightsError, match="missing keys"):
        load_vit_state_dict(m, {"fc.weight": torch.zeros(2)})


def test_our_network_is_timms_vit_key_for_key_and_output_for_output(vit64, sd224):
    """`vit_net.VisionTransformer` against timm's `vit_base_patch8_224.dino` (the reference
    implementation, still a dependency): same state-dict keys in the same order (so the seeded
    init and every checkpoint layout load alike), bit-identical features, and the same
    position-embedding resampling of 224-trained weights."""
    import timm

    ref = timm.create_model("vit_base_patch8_224.dino", pretrained=False, num_classes=0,
                            img_size=64).eval()
    assert list(ref.state_dict()) == list(vit64.state_dict())
    ref.load_state_dict(vit64.state_dict())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(vit64.forward_features(x), ref.forward_features(x))
        assert torch.equal(vit64(x), ref(x))
    ours = create_vit(64, empty=True)
    load_vit_state_dict(ours, sd224)
    from timm.layers import resample_abs_pos_embed

    want = resample_abs_pos_embed(sd224["pos_embed"], new_size=[8, 8], num_prefix_tokens=1)
    torch.testing.assert_close(ours.pos_embed.data, want, rtol=0, atol=1e-7)


def test_inference_imports_neither_timm_nor_torchvision():
    """Building a detector and predicting never imports timm, torchvision, sympy or
    torch._dynamo (their import alone is ~195 MB of resident memory); checked in a fresh
    process (tiny preset, random backbones)."""
    import subprocess
    import sys

    code = ("import sys; from cmdr_iad import CMDRIAD, presets; "
            "from cmdr_iad.benchmark import benchmark_samples; "
            "d = CMDRIAD(presets.tiny('rgb+xyz'), random_backbones=True, device='cpu'); "
            "list(d.predict_many(benchmark_samples(1, size=100))); "
            "print(sorted(k for k in ('timm', 'torchvision', 'sympy', 'torch._dynamo') "
            "if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
