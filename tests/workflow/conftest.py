"""Fixtures of the workflow tests: a tiny generated dataset, an in-process CLI runner, official-
format head checkpoints written from the golden recipe, and a memo for random ViT creation."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

OFFICIAL_NAMES = {  # manifest config name prefix → official head name
    "map2Dto3D": "map2Dto3D",
    "map3Dto2D": "map3Dto2D",
    "Dec2D": "Dec2D",
    "Dec3D": "Dec3D",
}


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """MVTec-layout synthetic data: category "puck", 4 train, 2 validation, 2 good + 4 defective test."""
    from cmdr_iad.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, categories=("puck",), n_train=4, n_val=2, n_test_good=2,
                     n_test_defect=1, size=(64, 64), seed=0)
    return root


@pytest.fixture(autouse=True, scope="session")
def _memo_random_vit():
    """Random ViT-B creation (timm init of 86M parameters) is deterministic per seed but slow;
    build each (size, seed) once per session and hand out copies."""
    from cmdr_iad.features import vit

    original = vit.create_vit
    cache: dict = {}

    def create(rgb_size: int = 224, name: str = vit.VIT_NAME, *, empty: bool = False):
        if empty:
            return original(rgb_size, name, empty=True)
        key = (rgb_size, name, torch.initial_seed())
        if key not in cache:
            cache[key] = original(rgb_size, name)
        return copy.deepcopy(cache[key])

    vit.create_vit = create
    yield
    vit.create_vit = original


@pytest.fixture
def cli(capsys):
    """Run `cmdr-iad ARGS...` in-process → (exit code, stdout, stderr)."""
    from cmdr_iad.cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        rc = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def manifest_heads(load_json) -> dict[str, dict[str, tuple[int, ...]]]:
    """Official head name → {key: shape} at the paper's full size, from heads_manifest.json."""
    cfgs = load_json("heads_manifest.json")["full_size_configs"]
    out = {}
    for name, cfg in cfgs.items():
        head = name.split(" ", 1)[0]
        if head in OFFICIAL_NAMES:
            out[head] = {e["key"]: tuple(e["shape"]) for e in cfg["state_dict"]}
    assert set(out) == set(OFFICIAL_NAMES)
    return out


@pytest.fixture(scope="session")
def official_heads(tmp_path_factory, load_json, recipe):
    """Recipe-weight state dicts of the four full-size heads, written as the authors' train.py
    does (`torch.save(model.state_dict())`) into HEADS_DIR/<class>/. Returns (dir, states)."""
    root = tmp_path_factory.mktemp("official")
    cat = root / "synthetic"
    cat.mkdir()
    states = {}
    for head, shapes in manifest_heads(load_json).items():
        sd = {k: torch.from_numpy(recipe.recipe_tensor(k, s)) for k, s in shapes.items()}
        torch.save(sd, cat / f"{head}_synthetic_independent_50ep_1bs.pth")
        states[head] = sd
    return root, states


def train_cli(root: Path, out_dir: Path, modality: str, cache: Path) -> Path:
    """`cmdr-iad train` (tiny preset, 1 epoch, random backbones) in-process; returns the model."""
    from cmdr_iad.cli import main

    model = out_dir / f"model-{modality.replace('+', '_')}"
    rc = main(["train", str(root), "--category", "puck", "--modality", modality, "--preset", "tiny",
               "--out", str(model), "--epochs", "1", "--random-backbones", "--quiet",
               "--cache-dir", str(cache)])
    assert rc == 0
    return model


@pytest.fixture(scope="session")
def tiny_model(synth_root, tmp_path_factory) -> Path:
    """An rgb+xyz model trained once per session through the CLI (shared by several tests)."""
    tmp = tmp_path_factory.mktemp("tiny-model")
    return train_cli(synth_root, tmp, "rgb+xyz", tmp / "cache")
