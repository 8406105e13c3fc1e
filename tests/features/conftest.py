"""Shared fixtures of the feature tests: recipe-filled Point-MAE models loaded through the
release-checkpoint loader, and the paper-size / raw-scan golden runs computed once per session."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdr_iad.features.point_mae import PointMAE
from cmdr_iad.features.point_mae_ckpt import load_point_mae_weights, write_release_checkpoint
from cmdr_iad.features.points3d import xyz_feature_map


def recipe_state(recipe, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Recipe values for every key of `model` (golden weights are keyed by state-dict name)."""
    return {k: torch.from_numpy(recipe.recipe_tensor(k, v.shape)).to(v.dtype)
            for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def pmae_recipe_sd(recipe) -> dict[str, torch.Tensor]:
    """Recipe state dict of Point-MAE (the same keys for every num_group / group_size)."""
    return recipe_state(recipe, PointMAE())


@pytest.fixture(scope="session")
def pmae_release_file(pmae_recipe_sd, tmp_path_factory):
    """The recipe weights written as a Point-MAE release checkpoint (`pretrain.pth` layout)."""
    return write_release_checkpoint(pmae_recipe_sd, tmp_path_factory.mktemp("pmae") / "pretrain.pth")


@pytest.fixture(scope="session")
def pmae_paper(pmae_release_file) -> PointMAE:
    """PointMAE(1024, 128) with recipe weights, loaded through the release-checkpoint loader."""
    return load_point_mae_weights(PointMAE(num_group=1024, group_size=128), pmae_release_file).eval()


@pytest.fixture(scope="session")
def pmae_poly(pmae_release_file) -> PointMAE:
    """PointMAE(num_group=96, group_size=32) (raw-scan mode), same loader and weights."""
    return load_point_mae_weights(PointMAE(num_group=96, group_size=32), pmae_release_file).eval()


@pytest.fixture(scope="session")
def paper_run(pmae_paper, load_npz):
    """The paper-size 3D path on point_mae.npz `pc` (29k points, 1024×128), eval BatchNorm."""
    pc = torch.from_numpy(load_npz("point_mae.npz")["pc"])[None]
    f3d, valid, pf = xyz_feature_map(pmae_paper, pc, bn="running", return_point_features=True)
    return {"f3d": f3d, "valid": valid, "pf": pf}


@pytest.fixture(scope="session")
def poly_images(load_npz) -> torch.Tensor:
    """Pseudo-images (4, 3, 96, 96) of the 4 normalised chunks of poly.npz (pixel r,c = point 96r+c)."""
    chunks = load_npz("poly.npz")["chunks_norm"]
    return torch.from_numpy(np.ascontiguousarray(chunks.reshape(4, 96, 96, 3).transpose(0, 3, 1, 2)))


@pytest.fixture(scope="session")
def poly_run(pmae_poly, poly_images):
    """The raw-scan 3D path on all 4 chunks in ONE batch (different valid-point counts)."""
    f3d, valid, pf = xyz_feature_map(pmae_poly, poly_images, bn="running", return_point_features=True)
    return {"f3d": f3d, "valid": valid, "pf": pf}
