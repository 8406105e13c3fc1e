"""Point-MAE release checkpoint loader: prefixes, ignored decoder keys, strict errors."""

from __future__ import annotations

import pickle

import pytest
import torch

from cmdr_iad.errors import WeightsError
from cmdr_iad.features.point_mae import PointMAE
from cmdr_iad.features.point_mae_ckpt import (
    load_point_mae_weights,
    point_mae_state_dict,
    write_release_checkpoint,
)

KW = {"num_group": 16, "group_size": 8}


@pytest.fixture(scope="module")
def source_sd(pmae_recipe_sd) -> dict[str, torch.Tensor]:
    return pmae_recipe_sd


def assert_loaded(model: PointMAE, sd: dict[str, torch.Tensor]) -> None:
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_release_file_round_trip(source_sd, tmp_path):
    path = write_release_checkpoint(source_sd, tmp_path / "sub" / "pretrain.pth")
    raw = torch.load(path, weights_only=True)
    assert all(k.startswith("module.") for k in raw["base_model"])
    assert "module.MAE_encoder.norm.weight" in raw["base_model"]
    assert "module.MAE_decoder.blocks.0.norm1.weight" in raw["base_model"]
    assert [p.name for p in path.parent.iterdir()] == ["pretrain.pth"]  # no temp file left
    model = load_point_mae_weights(PointMAE(**KW), path)
    assert_loaded(model, source_sd)
    assert_loaded(load_point_mae_weights(PointMAE(**KW), str(path)), source_sd)


@pytest.mark.parametrize("layout", ["loaded_dict", "base_model_prefix", "bare", "module_inside"])
def test_accepted_layouts(source_sd, layout):
    if layout == "loaded_dict":
        src = {"base_model": {f"module.MAE_encoder.{k}": v for k, v in source_sd.items()},
               "epoch": 3}
    elif layout == "base_model_prefix":
        src = {"base_model": {f"base_model.{k}": v for k, v in source_sd.items()}}
    elif layout == "bare":
        src = dict(source_sd)
    else:  # `module.` anywhere in the key is removed (str.replace), as the reference does
        src = {"base_model": {f"MAE_encoder.module.{k}": v for k, v in source_sd.items()}}
    assert_loaded(load_point_mae_weights(PointMAE(**KW), src), source_sd)


def test_training_extras_in_file_are_fine(source_sd, tmp_path):
    """Real release files also carry optimiser state, epoch and metrics (numpy scalars)."""
    import numpy as np

    path = tmp_path / "ckpt-epoch-300.pth"
    base = {f"module.MAE_encoder.{k}": v for k, v in source_sd.items()}
    torch.save({"base_model": base, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]},
                "epoch": 300, "metrics": {"acc": np.float64(0.5)}, "best": np.zeros(2)}, path)
    assert_loaded(load_point_mae_weights(PointMAE(**KW), path), source_sd)


def test_num_batches_tracked_may_be_absent(source_sd):
    sd = {k: v for k, v in source_sd.items() if not k.endswith("num_batches_tracked")}
    assert_loaded(load_point_mae_weights(PointMAE(**KW), {"base_model": sd}), source_sd)


def test_decoder_keys_ignored_but_missing_encoder_keys_listed(source_sd):
    sd = {f"module.MAE_encoder.{k}": v for k, v in source_sd.items()
          if k not in ("norm.weight", "blocks.blocks.3.attn.qkv.weight")}
    sd["module.mask_token"] = torch.zeros(1, 1, 384)
    sd["module.MAE_decoder.blocks.0.mlp.fc1.weight"] = torch.zeros(2, 2)
    with pytest.raises(WeightsError, match="missing keys") as err:
        load_point_mae_weights(PointMAE(**KW), {"base_model": sd})
    msg = str(err.value)
    assert "norm.weight" in msg and "blocks.blocks.3.attn.qkv.weight" in msg
    assert "MAE_decoder" not in msg and "mask_token" not in msg


def test_shape_mismatch_and_unexpected_keys_listed(source_sd):
    sd = dict(source_sd)
    sd["pos_embed.2.weight"] = torch.zeros(256, 128)
    sd["head.weight"] = torch.zeros(3)
    with pytest.raises(WeightsError) as err:
        load_point_mae_weights(PointMAE(**KW), sd)
    msg = str(err.value)
    assert "pos_embed.2.weight: file (256, 128) vs model (384, 128)" in msg
    assert "unexpected keys (1): head.weight" in msg


def test_unreadable_files_name_the_file(tmp_path, pmae_release_file):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00not a checkpoint" * 10)
    cut = tmp_path / "truncated.pth"
    cut.write_bytes(pmae_release_file.read_bytes()[: pmae_release_file.stat().st_size // 2])
    evil = tmp_path / "evil.pth"
    with evil.open("wb") as fh:  # a pickle of an arbitrary object: refused by weights_only
        pickle.dump({"base_model": PointMAE}, fh, protocol=2)
    tensor_only = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_only)
    for path in (junk, cut, evil, tensor_only, tmp_path / "absent.pth"):
        with pytest.raises(WeightsError, match=path.name):
            load_point_mae_weights(PointMAE(**KW), path)
    with pytest.raises(WeightsError, match="base_model"):
        point_mae_state_dict({"base_model": [1, 2]})


def test_loaded_model_runs(source_sd):
    model = load_point_mae_weights(PointMAE(**KW), source_sd).eval()
    out = model(torch.randn(2, 16, 8, 3) * 0.01, torch.randn(2, 16, 3), bn="running")
    assert out.shape == (2, 1152, 16) and torch.isfinite(out).all()
