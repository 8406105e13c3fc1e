"""Tables, summaries and pictures of the evaluation (no model needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmdr_iad import viz
from cmdr_iad.evaluation import Evaluation, compute_metrics, paper_tables, summary, write_reports


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
    i = lines.index("### I-AUROC (%) — cf. Table 1")
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
