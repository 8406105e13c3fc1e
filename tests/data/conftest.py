"""Fixtures of the data tests: a tiny synthetic MVTec-layout dataset (generated once per session)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cmdr_iad.data.synthetic import generate_dataset

SYNTH_SIZE = (40, 56)  # non-square on purpose


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """Read-only tiny dataset: category "puck", 2 train, 1 validation, 1 good test, 1 per defect type."""
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_dataset(root, categories=("puck",), n_train=2, n_val=1, n_test_good=1,
                     n_test_defect=1, size=SYNTH_SIZE, seed=5)
    return root


@pytest.fixture
def synth_copy(synth_root, tmp_path) -> Path:
    """A private copy of `synth_root` that a test may damage."""
    dst = tmp_path / "data"
    shutil.copytree(synth_root, dst)
    return dst


@pytest.fixture(scope="session")
def synth_size() -> tuple[int, int]:
    """(H, W) of the images in `synth_root`."""
    return SYNTH_SIZE
