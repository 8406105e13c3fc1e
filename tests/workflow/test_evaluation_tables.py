"""Tables, summaries and pictures of the evaluation (no model needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmdr_iad import viz
from cmdr_iad.evaluation import (
    Evaluation,
    compute_metrics,
    full_resolution_maps,
    official_metrics,
    paper_tables,
    summary,
    write_reports,
)


def _ev(cat, mod, v):
    m = {k: v for k in ("i_auroc", "p_auroc", "aupro_30", "aupro_10", "aupro_5", "aupro_1")}
    m.update({"exact": {"aupro_30": v}, "fps": 2.0, "peak_memory_mb": 100.0, "n": 10})
    return Evaluation(f"{cat}-{mod}", cat, mod, m, (np.linspace(0, 1, 5), np.linspace(0, 1, 5)))


def test_paper_layout_rows_and_means(tmp_path):
    evals = [_ev(c, m, v) for c, v0 in (("bagel", 0.9), ("tire", 0.7))
             for m, v in (("rgb", v0 - 0.1), ("xyz", v0 - 0.05), ("rgb+xyz", v0))]
    text = paper_tables(evals)
    assert "| Method | bagel | tire | Mean |" in text
    row = [line for line in text.splitlines() if line.startswith("| CMDR-IAD (RGB+3D)")][0]
    assert row == "| CMDR-IAD (RGB+3D) | 90.0 | 70.0 | 80.0 |"
    lines = text.splitlines()
    i = lines.index("### I-AUROC (%) — cf. Table 1 — protocol paper-grid-99thr")
    titles = [x for x in lines if x.startswith("### ")]
    assert [t.split(" (%)")[0] for t in titles] == ["### I-AUROC", "### AUPRO@30%", "### AUPRO@10%",
                                                   "### AUPRO@5%", "### AUPRO@1%", "### P-AUROC"]
    assert [x.split(" |")[0] for x in lines[i + 4:i + 7]] == ["| CMDR-IAD (RGB)", "| CMDR-IAD (3D)",
                                                             "| CMDR-IAD (RGB+3D)"]
    top = summary(evals)  # several models: mean over the RGB+3D ones
    assert top["i_auroc"] == pytest.approx(0.8) and "rgb+xyz" in top["mean_over"]
    files = write_reports(tmp_path, evals)
    doc = json.loads(files["metrics.json"].read_text())
    assert len(doc["models"]) == 6 and doc["aupro_30"] == pytest.approx(0.8)
    assert files["metrics.csv"].read_text().count("\n") == 7
    assert files["pro_curve.svg"].read_text().startswith("<svg")


def test_compute_metrics_reference_normalisations(load_npz):
    """The pipeline set of metrics.npz: maps are fused maps, normalised as inference.py does."""
    g = load_npz("metrics.npz")
    maps, gts, labels = g["pipeline__maps"], g["pipeline__gts"], g["pipeline__labels"]
    scores = np.array([float((m / np.sqrt(m[m != 0].mean())).max()) for m in maps])
    m, curve = compute_metrics(maps, gts, labels, scores)
    ref = g["pipeline__au_pro_nt99"]
    for i, k in enumerate(("aupro_30", "aupro_10", "aupro_5", "aupro_1")):
        assert m[k] == pytest.approx(float(ref[i]), rel=1e-6)
    assert m["p_auroc"] == pytest.approx(float(g["pipeline__pixel_auroc"]), rel=1e-6)
    assert m["i_auroc"] == pytest.approx(float(g["pipeline__image_auroc"]), rel=1e-6)
    assert curve is not None and curve[0][0] == 0.0


def test_undefined_metrics_are_null_with_a_reason():
    maps = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32) + 0.1
    m, curve = compute_metrics(maps, np.zeros((3, 8, 8), bool), np.zeros(3, int), np.ones(3))
    assert m["i_auroc"] is None and m["aupro_30"] is None and curve is None
    assert len(m["notes"]) >= 2


def test_pictures():
    c = viz.colormap(np.array([0.0, 0.5, 1.0, 2.0, -1.0]))
    assert c.shape == (5, 3) and c.dtype == np.uint8
    assert (c[3] == c[2]).all() and (c[4] == c[0]).all()
    rgb = np.full((4, 5, 3), 100, np.uint8)
    ov = viz.overlay(rgb, np.arange(20, dtype=np.float32).reshape(4, 5))
    assert ov.shape == (4, 5, 3)
    xyz = np.zeros((4, 5, 3), np.float32)
    xyz[1:3, 1:4] = 1.0
    pts, cols = viz.coloured_points(xyz, np.ones((4, 5), np.float32))
    assert pts.shape == (6, 3) and cols.shape == (6, 3)
    data = viz.ply_bytes(pts, cols, np.ones(6, np.float32))
    import io

    from plyfile import PlyData

    v = PlyData.read(io.BytesIO(data))["vertex"]
    assert v.count == 6 and "anomaly" in v.data.dtype.names
    assert viz.png_bytes(ov)[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- official protocol
def test_official_aupro_on_a_hand_computed_example():
    """One image: region pixels score 10 and 5, normal pixels 1–4 and 6–9. Thresholds descending:
    at 10 fpr 0, pro 0.5; pro stays 0.5 until fpr 0.5 (threshold 5). So the normalised area is
    0.5 at every limit ≤ 0.5; P-AUROC = (8 + 4) / 16 = 0.75."""
    scores = np.array([10, 5, 1, 2, 3, 4, 6, 7, 8, 9], np.float32).reshape(2, 5)
    gt = np.zeros((2, 5), bool)
    gt[0, :2] = True
    m = official_metrics([scores], [scores], [gt], np.array([0, 1]), np.array([0.1, 0.9]))
    assert m["protocol"] == "mvtec3d-official"
    for k in ("aupro_30", "aupro_10", "aupro_5", "aupro_1"):
        assert m[k] == pytest.approx(0.5), k
    assert m["p_auroc"] == pytest.approx(0.75) and m["i_auroc"] == 1.0


def test_official_equals_the_grid_exact_protocol_when_the_gt_is_at_grid_size():
    rng = np.random.default_rng(1)
    maps = rng.random((4, 12, 12)).astype(np.float32) + 0.05
    gts = np.zeros((4, 12, 12), bool)
    gts[1, 2:5, 3:7] = gts[2, 6:9, 1:3] = gts[3, 9:11, 8:11] = True
    maps[gts] += 0.4
    labels, scores = np.array([0, 1, 1, 1]), np.array([0.1, 0.5, 0.7, 0.6])
    grid, _ = compute_metrics(maps, gts, labels, scores)
    pro = [m / m[m != 0].mean() for m in maps]
    pix = [m / np.sqrt(m.mean()) for m in maps]
    off = official_metrics(pro, pix, list(gts), labels, scores)
    for k in ("aupro_30", "aupro_10", "aupro_5", "aupro_1"):
        assert off[k] == pytest.approx(grid["exact"][k], rel=1e-6), k
    assert off["p_auroc"] == pytest.approx(grid["p_auroc"], rel=1e-6)


def test_full_resolution_maps_rescale_the_written_map():
    from types import SimpleNamespace

    psi = np.zeros((4, 4), np.float32)
    psi[1:3, 1:3] = [[1, 2], [3, 4]]
    amap = np.kron(psi, np.ones((2, 2), np.float32)) / np.sqrt(2.5)  # as predict writes it
    pro, pix = full_resolution_maps(SimpleNamespace(map_grid=psi, anomaly_map=amap, key="k"))
    np.testing.assert_allclose(pro, np.kron(psi, np.ones((2, 2))) / 2.5, rtol=1e-6)
    np.testing.assert_allclose(pix, np.kron(psi, np.ones((2, 2))) / np.sqrt(psi.mean()), rtol=1e-6)
