"""A generated two-category dataset and one finished local grid over it, shared by the grid
tests (tiny preset, 1 epoch, random backbones; the numbers mean nothing, equality does)."""

from __future__ import annotations

from pathlib import Path

import pytest

ARGS = ("--preset", "tiny", "--epochs", "1", "--random-backbones", "--threads-per-cell", "2",
        "--quiet")


@pytest.fixture(scope="session")
def grid_data(tmp_path_factory) -> Path:
    from cmdr_iad.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("grid") / "data"
    generate_dataset(root, categories=("puck", "ring"), n_train=2, n_val=1, n_test_good=1,
                     n_test_defect=1, seed=0)
    return root


@pytest.fixture(scope="session")
def local_run(grid_data, tmp_path_factory):
    """(RUNS, shared feature store, exit code, stdout) of the full local grid."""
    from cmdr_iad.cli import main

    base = tmp_path_factory.mktemp("grid-local")
    runs, cache = base / "runs", base / "features"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["grid", str(grid_data), "--out", str(runs), "--cache-dir", str(cache),
                   "--modalities", "rgb+xyz,rgb,xyz", "--variants", "full,case1", *ARGS])
    return runs, cache, rc, buf.getvalue()
