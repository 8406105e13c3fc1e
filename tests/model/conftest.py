"""Fixtures for the model tests (heads, loss, fusion)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

HEADS_TOL = {"rtol": 1e-4, "atol": 1e-5}  # golden README: network outputs
FUSION_TOL = {"rtol": 1e-5, "atol": 1e-7}  # golden README: rtol 1e-5 for the fusion maps


@pytest.fixture(scope="session")
def filled(recipe):
    """``filled(module)`` → the module with recipe weights (strict load), in eval mode."""

    def _fill(module: torch.nn.Module) -> torch.nn.Module:
        recipe.fill_module(module)
        return module.eval()

    return _fill


@pytest.fixture(scope="session")
def heads_npz(load_npz):
    return load_npz("heads.npz")


@pytest.fixture(scope="session")
def fusion_npz(load_npz):
    return load_npz("fusion.npz")


@pytest.fixture(scope="session")
def heads_manifest(load_json):
    return load_json("heads_manifest.json")


def _assert_close(got, want, rtol: float, atol: float, what: str) -> float:
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != golden {want.shape}"
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) if got.size else 0.0


@pytest.fixture(scope="session")
def close():
    """``close(got, want, what, kind="heads"|"fusion")``: assert_allclose at the golden tolerances.

    Returns the max abs error; the errors are also printed (``pytest -s``) for reporting.
    """

    def _close(got, want, what: str, kind: str = "heads") -> float:
        tol = HEADS_TOL if kind == "heads" else FUSION_TOL
        err = _assert_close(got, want, tol["rtol"], tol["atol"], what)
        print(f"max abs err {what}: {err:.3g}")
        return err

    return _close
