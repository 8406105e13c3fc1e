"""Golden tests: metrics.npz / metrics_results.json made with the paper code's calculate_au_pro
(99 and 1000 thresholds) and scikit-learn's roc_auc_score."""

from __future__ import annotations

import numpy as np
import pytest

from cmdr_iad.errors import EvaluationError
from cmdr_iad.metrics import au_pro, image_auroc, pixel_auroc, pro_curve

SETS = ("small", "ties", "large", "pipeline")


def _inputs(npz, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(AUPRO maps, P-AUROC scores, gts); the pipeline set carries its own normalisations."""
    gts = npz[f"{name}__gts"]
    if name == "pipeline":
        return npz["pipeline__aupro_maps"], npz["pipeline__pixel_scores"], gts
    return npz[f"{name}__maps"], npz[f"{name}__maps"], gts


@pytest.fixture(scope="module")
def metrics_npz(load_npz):
    return load_npz("metrics.npz")


@pytest.fixture(scope="module")
def results(load_json):
    res = load_json("metrics_results.json")
    assert res["integration_limits"] == [0.3, 0.1, 0.05, 0.01]
    return res["sets"]


@pytest.mark.parametrize("steps", [99, 1000])
@pytest.mark.parametrize("name", SETS)
def test_au_pro_matches_reference(metrics_npz, results, name, steps):
    maps, _, gts = _inputs(metrics_npz, name)
    got = au_pro(maps, gts, limits=(0.3, 0.1, 0.05, 0.01), num_thresholds=steps)
    want = np.array(results[name][f"au_pro_nt{steps}"])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got, metrics_npz[f"{name}__au_pro_nt{steps}"], rtol=1e-6)
    # Default arguments are the paper's: 99 thresholds and the four limits.
    if steps == 99:
        np.testing.assert_allclose(au_pro(maps, gts), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("steps", [99, 1000])
@pytest.mark.parametrize("name", SETS)
def test_pro_curve_matches_reference(metrics_npz, results, name, steps):
    maps, _, gts = _inputs(metrics_npz, name)
    curve = pro_curve(list(maps), list(gts), num_thresholds=steps)  # list input path
    assert len(curve.fprs) == results[name][f"curve_len_nt{steps}"] == steps + 1
    for field in ("fprs", "pros", "thresholds"):
        want = metrics_npz[f"{name}__pro_{field}_nt{steps}"]  # stored as float32
        got = getattr(curve, field)
        assert got.dtype == np.float64 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-12, err_msg=field)
    assert curve.thresholds[-1] == 0.0 and curve.fprs[-1] == 1.0 and curve.pros[-1] == 1.0


@pytest.mark.parametrize("name", SETS)
def test_aurocs_match_reference(metrics_npz, results, name):
    _, pixel_scores, gts = _inputs(metrics_npz, name)
    assert pixel_auroc(pixel_scores, gts) == pytest.approx(results[name]["pixel_auroc"], abs=1e-12)
    labels = metrics_npz[f"{name}__labels"]
    scores = metrics_npz[f"{name}__image_scores"]
    assert image_auroc(labels, scores) == pytest.approx(results[name]["image_auroc"], abs=1e-12)


def test_end_to_end_pipeline_metrics(load_npz):
    """pipeline.npz: the official inference loop's metrics over its two samples."""
    p = load_npz("pipeline.npz")
    np.testing.assert_array_equal(p["au_pro_limits"], [0.3, 0.1, 0.05, 0.01])
    gts = [p["s0_gt"], p["s1_gt"]]
    got = au_pro([p["s0_pred_aupro"], p["s1_pred_aupro"]], gts)
    np.testing.assert_allclose(got, p["au_pros"], rtol=0, atol=1e-12)
    got = pixel_auroc([p["s0_pixel_scores"], p["s1_pixel_scores"]], gts)
    assert got == pytest.approx(float(p["pixel_rocauc"]), abs=1e-12)
    labels = np.stack([p["s0_label"], p["s1_label"]])
    scores = np.stack([p["s0_image_score"], p["s1_image_score"]])
    assert image_auroc(labels, scores) == pytest.approx(float(p["image_rocauc"]), abs=1e-12)


def test_polyurethane_chunk_metrics(load_npz):
    """poly.npz: per-point masks compared with the flattened 96x96 maps of four chunks."""
    q = load_npz("poly.npz")
    gts = q["chunk_gtmask"].reshape(-1, 96, 96)
    np.testing.assert_allclose(au_pro(q["anomaly_map"], gts), q["au_pros"], rtol=0, atol=1e-12)
    got = pixel_auroc(q["anomaly_map"], gts)
    assert got == pytest.approx(float(q["pixel_rocauc"]), abs=1e-12)
    # All four chunks are labelled good: the reference's I-AUROC is NaN; ours is an error.
    assert np.isnan(q["image_rocauc"])
    with pytest.raises(EvaluationError, match="only one class"):
        image_auroc(q["chunk_labels"], q["image_score"])
