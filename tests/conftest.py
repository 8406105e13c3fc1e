"""Shared fixtures. Golden reference files live in ../shared/golden (beside the checkout)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def golden_dir() -> Path:
    env = os.environ.get("CMDR_IAD_GOLDEN")
    return Path(env) if env else REPO.parent / "shared" / "golden"


@pytest.fixture(scope="session")
def golden() -> Path:
    d = golden_dir()
    if not d.is_dir():  # CI has it; a missing folder is a failure, not a skip
        pytest.fail(f"golden reference folder not found: {d} (set CMDR_IAD_GOLDEN)")
    return d


@pytest.fixture(scope="session")
def load_npz(golden):
    cache: dict[str, np.lib.npyio.NpzFile] = {}

    def _load(name: str):
        if name not in cache:
            cache[name] = np.load(golden / name, allow_pickle=False)
        return cache[name]

    return _load


@pytest.fixture(scope="session")
def load_json(golden):
    def _load(name: str):
        return json.loads((golden / name).read_text())

    return _load


@pytest.fixture(scope="session")
def recipe(golden):
    """The golden recipe module (`recipe_tensor`, `recipe_state_dict`, `fill_module`)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("golden_recipe", golden / "recipe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _offline_weights(monkeypatch, tmp_path_factory):
    """Tests never download: weights resolution is offline and looks only in an empty temp home."""
    home = tmp_path_factory.mktemp("cmdr_iad_home")
    monkeypatch.setenv("CMDR_IAD_OFFLINE", "1")
    monkeypatch.setenv("CMDR_IAD_HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "xdg"))


@pytest.fixture
def encoder_calls(monkeypatch) -> dict[str, int]:
    """Samples each frozen encoder ran on during the test: {"vit": n, "point_mae": n} (counts
    `vit.vit_feature_map` and `points3d.xyz_feature_map`, the only entry points of extraction)."""
    from cmdr_iad.features import points3d, vit

    calls = {"vit": 0, "point_mae": 0}
    orig_vit, orig_pm = vit.vit_feature_map, points3d.xyz_feature_map

    def count_vit(model, rgb):
        calls["vit"] += rgb.shape[0]
        return orig_vit(model, rgb)

    def count_pm(model, xyz, *a, **k):
        calls["point_mae"] += xyz.shape[0]
        return orig_pm(model, xyz, *a, **k)

    monkeypatch.setattr(vit, "vit_feature_map", count_vit)
    monkeypatch.setattr(points3d, "xyz_feature_map", count_pm)
    return calls
