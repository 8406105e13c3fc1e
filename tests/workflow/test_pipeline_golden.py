"""Golden end-to-end check: recipe weights for all six networks, delivered in the official file
formats (timm safetensors for the ViT, the Point-MAE release `pretrain.pth`, the authors' four
head `.pth` files) and imported with `import-official --point-mae-bn running` (the golden files
were made in eval mode), reproduce `pipeline.npz`: the final smoothed map Ψ (`s{0,1}_fused`)
and the image score (`s{0,1}_image_score`).

The golden inputs `s{s}_rgb` / `s{s}_pc` are already-transformed tensors (1,3,224,224), so they
enter at the tensor level through `CMDRIAD.score_tensors` — the call `predict` makes right after
the preset's transforms (`predict_many` → `transform_sample` → `score_tensors`); `Result.map_grid`,
which `predict --save-raw` writes as `<stem>_map.npy`, is its `map_grid`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def golden_model(tmp_path_factory, official_heads, load_json, recipe):
    from safetensors.torch import save_file

    from cmdr_iad.cli import main
    from cmdr_iad.features.point_mae_ckpt import write_release_checkpoint

    tmp = tmp_path_factory.mktemp("golden-model")
    man = load_json("backbones_manifest.json")
    vit = {k: torch.from_numpy(recipe.recipe_tensor(k, s)) for k, s, _ in man["vit"]["state_dict"]}
    save_file(vit, str(tmp / "vit_base_patch8_224.dino.safetensors"))
    del vit
    pm = {k: torch.from_numpy(recipe.recipe_tensor(k, s)) for k, s, _ in man["point_transformer"]["state_dict"]}
    write_release_checkpoint(pm, tmp / "pretrain.pth")
    heads_dir, _ = official_heads
    out = tmp / "model"
    rc = main(["import-official", str(heads_dir), "--category", "synthetic", "--out", str(out),
               "--point-mae-bn", "running", "--dino-weights", str(tmp / "vit_base_patch8_224.dino.safetensors"),
               "--point-mae-weights", str(tmp / "pretrain.pth"), "--device", "cpu", "--quiet"])
    assert rc == 0
    return out


@pytest.mark.slow
def test_pipeline_golden(golden_model, load_npz):
    from cmdr_iad import CMDRIAD

    g = load_npz("pipeline.npz")
    det = CMDRIAD.load(golden_model, device="cpu")  # weights found through the stored paths
    assert det.config.preset == "paper" and det.config.features.point_mae_bn == "running"
    assert det.config.features.transforms == "reference"
    for s in (0, 1):
        out = det.score_tensors(torch.from_numpy(g[f"s{s}_rgb"]), torch.from_numpy(g[f"s{s}_pc"]))
        assert out["branch"] == "rgb+xyz"
        np.testing.assert_array_equal(out["valid"][0].numpy(), ~g[f"s{s}_xyz_mask"])
        psi = out["map_grid"][0].numpy()
        ref = g[f"s{s}_fused"]
        np.testing.assert_allclose(psi, ref, rtol=1e-4, atol=1e-4 * float(ref.max()))
        # exact zeros must stay exact: they drive the non-zero normaliser
        np.testing.assert_array_equal(psi == 0, ref == 0)
        assert float(out["score"][0]) == pytest.approx(float(g[f"s{s}_image_score"]), rel=1e-4)
