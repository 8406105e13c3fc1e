"""End to end through the CLI on generated data: train → evaluate → predict, all modalities
(tiny preset, random backbones, 1 epoch)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmdr_iad.evaluation import METRIC_KEYS


def _train(cli, root, tmp, modality):
    model = tmp / f"model-{modality.replace('+', '_')}"
    rc, out, err = cli("train", root, "--category", "puck", "--modality", modality, "--preset", "tiny",
                       "--out", model, "--epochs", "1", "--random-backbones", "--quiet",
                       "--cache-dir", tmp / "cache")
    assert rc == 0, err
    assert "RANDOM BACKBONES" in err
    assert (model / "model.json").is_file() and (model / "weights.safetensors").is_file()
    assert not (tmp / f".{model.name}.checkpoint").exists()  # work file removed after success
    return model


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["rgb+xyz", "rgb", "xyz"])
def test_train_evaluate_predict(cli, synth_root, tmp_path, modality, tiny_model):
    # the rgb+xyz model is trained through the same CLI call by the session fixture
    model = tiny_model if modality == "rgb+xyz" else _train(cli, synth_root, tmp_path, modality)
    meta = json.loads((model / "model.json").read_text())
    assert meta["modality"] == modality and meta["preset"] == "tiny"
    assert modality in meta["thresholds"]

    rep = tmp_path / "report"
    rc, out, err = cli("evaluate", model, synth_root, "--out", rep, "--quiet")
    assert rc == 0, err
    m = json.loads((rep / "metrics.json").read_text())
    for k in METRIC_KEYS:
        assert 0.0 <= m[k] <= 1.0, (k, m[k])
        assert 0.0 <= m["exact"][k if k.startswith("aupro") else "aupro_30"] <= 1.0
    assert m["fps"] > 0 and m["peak_memory_mb"] > 0 and m["random_backbones"] is True
    prot = m["models"][0]["metrics"]["protocols"]  # each value carries its protocol's name
    assert set(prot) == {"paper-grid-99thr", "mvtec3d-official"}
    assert prot["paper-grid-99thr"]["p_auroc"] == m["p_auroc"]
    for k in METRIC_KEYS:
        assert 0.0 <= prot["mvtec3d-official"][k] <= 1.0, (k, prot)
    assert "protocol mvtec3d-official" in (rep / "paper_tables.md").read_text()
    for f in ("metrics.csv", "metrics.md", "paper_tables.md", "pro_curve.svg", "report.html"):
        assert (rep / f).is_file(), f
    html = (rep / "report.html").read_text()
    assert "RANDOM BACKBONES" in html
    assert (model / "train_log.csv").is_file() and "loss per epoch" in html  # the training curves
    assert "<table" in html and "| I-AUROC" not in html  # paper tables as HTML, not Markdown
    assert (rep / "pro_curve.svg").read_text().startswith("<svg")

    test = synth_root / "puck" / "test"
    bad = sorted(p for p in test.iterdir() if p.name != "good")[0]
    args = []
    if modality != "xyz":
        args += ["--rgb", bad / "rgb" / "000.png"]
    if modality != "rgb":
        args += ["--xyz", bad / "xyz" / "000.tiff"]
    preds = tmp_path / "preds"
    rc, out, err = cli("predict", model, *args, "--out", preds, "--save-raw", "--quiet")
    assert rc == 0, err
    rec = json.loads((preds / "000.json").read_text())
    assert isinstance(rec["score"], float) and isinstance(rec["is_anomalous"], bool)
    assert rec["branch"] == modality and rec["missing_modality"] is None
    raw = np.load(preds / "000_map.npy")
    assert raw.shape == (32, 32) and raw.dtype == np.float32
    # image score as the reference: max(Ψ / sqrt(mean of non-zero Ψ))
    assert rec["score"] == pytest.approx(float(np.max(raw / np.sqrt(raw[raw != 0].mean()))), rel=1e-5)
    assert (preds / "000_anomaly.tiff").is_file() and (preds / "000_overlay.png").is_file()
    assert (preds / "000.ply").is_file() == (modality != "rgb")
    assert not [p for p in preds.iterdir() if p.name.startswith(".")]

    # a folder of samples (MVTec layout)
    rc, out, err = cli("predict", model, "--input", test / "good", "--out", tmp_path / "folder",
                       "--quiet", "--map-format", "npy")
    assert rc == 0, err
    jsons = sorted((tmp_path / "folder").glob("*.json"))
    assert len(jsons) == len(list((test / "good" / ("rgb" if modality != "xyz" else "xyz")).iterdir()))
    amap = np.load(tmp_path / "folder" / "000_anomaly.npy")
    assert amap.shape == (64, 64)


@pytest.mark.slow
def test_missing_modality_and_bad_inputs(cli, synth_root, tmp_path, tiny_model):
    model = tiny_model
    good = synth_root / "puck" / "test" / "good"
    # no --xyz: RGB branch, said so
    rc, out, err = cli("predict", model, "--rgb", good / "rgb" / "000.png", "--out", tmp_path / "p1")
    assert rc == 0, err
    rec = json.loads((tmp_path / "p1" / "000.json").read_text())
    assert rec["branch"] == "rgb" and rec["missing_modality"] == "xyz"
    assert any("RGB branch" in n for n in rec["notes"]) and "RGB branch" in out
    assert isinstance(rec["is_anomalous"], bool)
    # no --rgb: 3D branch; stem from the xyz file
    rc, out, err = cli("predict", model, "--xyz", good / "xyz" / "000.tiff", "--out", tmp_path / "p2")
    assert rc == 0, err
    assert json.loads((tmp_path / "p2" / "000.json").read_text())["branch"] == "xyz"
    # a cloud without any valid point: RGB branch
    from cmdr_iad.data.pointcloud_io import write_organized_tiff

    empty = tmp_path / "empty.tiff"
    write_organized_tiff(empty, np.zeros((64, 64, 3), np.float32))
    rc, out, err = cli("predict", model, "--rgb", good / "rgb" / "000.png", "--xyz", empty,
                       "--out", tmp_path / "p3")
    assert rc == 0, err
    rec = json.loads((tmp_path / "p3" / "000.json").read_text())
    assert rec["branch"] == "rgb" and "no valid point" in " ".join(rec["notes"])

    def bad(*argv, out_dir):
        rc, out, err = cli(*argv)
        assert rc == 2, (rc, err)
        assert err.count("\n") == 1 and err.startswith("cmdr-iad: error:"), err
        assert not out_dir.exists() or not any(out_dir.iterdir()), list(out_dir.iterdir())

    # ablation variants score the same heads differently, without retraining
    rc, out, err = cli("evaluate", model, synth_root, "--out", tmp_path / "abl", "--variant",
                       "mapping_only", "--quiet")
    assert rc == 0, err
    abl = json.loads((tmp_path / "abl" / "metrics.json").read_text())
    assert 0.0 <= abl["i_auroc"] <= 1.0
    bad("evaluate", model, synth_root, "--out", tmp_path / "abl2", "--variant", "nope",
        out_dir=tmp_path / "abl2")

    # a path that does not exist is a user error, not a missing modality
    bad("predict", model, "--rgb", good / "rgb" / "000.png", "--xyz", tmp_path / "nope.tiff",
        "--out", tmp_path / "b1", out_dir=tmp_path / "b1")
    # sample of the wrong size (RGB and xyz disagree)
    small = tmp_path / "small.tiff"
    write_organized_tiff(small, np.ones((40, 50, 3), np.float32))
    bad("predict", model, "--rgb", good / "rgb" / "000.png", "--xyz", small, "--out", tmp_path / "b2",
        out_dir=tmp_path / "b2")
    # a folder with no samples
    (tmp_path / "nothing").mkdir()
    bad("predict", model, "--input", tmp_path / "nothing", "--out", tmp_path / "b3", out_dir=tmp_path / "b3")
    # unwritable output folder
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        import os

        if os.access(ro, os.W_OK):  # running as root: permissions are not enforced
            blocker = tmp_path / "file"
            blocker.write_text("x")
            target = blocker / "sub"
        else:
            target = ro / "sub"
        bad("predict", model, "--rgb", good / "rgb" / "000.png", "--out", target, out_dir=ro)
        bad("evaluate", model, synth_root, "--out", target, out_dir=ro)
    finally:
        ro.chmod(0o700)
    # missing dataset root / category
    bad("train", tmp_path / "nodata", "--category", "puck", "--preset", "tiny", "--out", tmp_path / "m2",
        "--random-backbones", out_dir=tmp_path / "m2")
    bad("train", synth_root, "--category", "nocat", "--preset", "tiny", "--out", tmp_path / "m3",
        "--random-backbones", out_dir=tmp_path / "m3")
