"""The service's endpoints in-process (FastAPI TestClient): answers, files, bad requests,
internal errors, and equality of the scores with `cmdr-iad predict` on the same files."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import tifffile
from fastapi.testclient import TestClient

from cmdr_iad.serve.app import ServeConfig, create_app


@pytest.fixture(scope="module")
def client(serve_model, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    app = create_app(ServeConfig(model_dir=serve_model, device="cpu", max_upload_mb=1.0,
                                 results_dir=results), load_in_background=False)
    with TestClient(app, raise_server_exceptions=False) as c:  # a 500 is an answer here
        c.results_dir = results
        yield c


def files(sample_files, rgb="rgb", xyz="xyz"):
    out = {}
    if rgb:
        out["rgb"] = ("part.png", sample_files[rgb].read_bytes(), "image/png")
    if xyz:
        out["xyz"] = ("part.tiff", sample_files[xyz].read_bytes(), "image/tiff")
    return out


def tiff(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, a, photometric="rgb" if a.ndim == 3 and a.shape[-1] == 3 else "minisblack")
    return buf.getvalue()


def test_health_ready_model_metrics_page(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    m = client.get("/v1/model").json()
    assert m["random_backbones"] is True and "RANDOM BACKBONES" in m["warning"]
    assert m["config"]["preset"] == "tiny" and set(m["thresholds"]) == {"rgb+xyz", "rgb", "xyz"}
    text = client.get("/metrics").text
    assert "cmdr_iad_model_load_seconds" in text and "cmdr_iad_queue_depth" in text
    page = client.get("/")
    assert page.status_code == 200 and "/static/page.js" in page.text
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    assert client.get("/static/page.js").status_code == 200
    assert client.get("/static/../app.py").status_code == 404


def test_predict_answers_and_keeps_the_result(client, sample_files):
    r = client.post("/v1/predict", files=files(sample_files), data={"units": "m"})
    assert r.status_code == 200, r.text
    a = r.json()
    assert set(a) >= {"id", "score", "is_anomalous", "threshold", "branch", "missing_modality",
                      "notes", "timing_ms", "model", "random_backbones"}
    assert a["branch"] == "rgb+xyz" and a["missing_modality"] is None and a["random_backbones"]
    assert {"features", "heads", "fusion", "total"} <= set(a["timing_ms"])
    assert client.get(f"/v1/results/{a['id']}").json()["score"] == a["score"]
    for name, magic in (("overlay.png", b"\x89PNG"), ("anomaly.tiff", b"II*\x00"), ("points.ply", b"ply")):
        f = client.get(f"/v1/results/{a['id']}/{name}")
        assert f.status_code == 200 and f.content.startswith(magic), name
        assert (client.results_dir / a["id"] / name).read_bytes() == f.content  # kept on disk too
    assert len(client.get(f"/v1/results/{a['id']}/points.json").json()["xyz"]) > 0
    assert client.get("/v1/results?n=5").json()[0]["id"] == a["id"]
    rgb_only = client.post("/v1/predict", files=files(sample_files, xyz=None)).json()
    assert rgb_only["branch"] == "rgb" and rgb_only["missing_modality"] == "xyz"
    assert client.get(f"/v1/results/{rgb_only['id']}/points.ply").status_code == 404
    assert client.get("/v1/results/" + "0" * 32).status_code == 404
    assert client.get("/v1/results/../../etc").status_code == 404


def test_scores_equal_cmdr_iad_predict(client, sample_files, serve_model, tmp_path):
    from cmdr_iad.cli import main

    out = tmp_path / "pred"
    assert main(["predict", str(serve_model), "--rgb", str(sample_files["rgb_bad"]), "--xyz",
                 str(sample_files["xyz_bad"]), "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    want = json.loads((out / f"{sample_files['rgb_bad'].stem}.json").read_text())
    got = client.post("/v1/predict", files=files(sample_files, "rgb_bad", "xyz_bad")).json()
    assert got["score"] == want["score"] and got["is_anomalous"] == want["is_anomalous"]
    assert got["threshold"] == want["threshold"] and got["branch"] == want["branch"]
    stem = sample_files["rgb_bad"].stem
    for name, theirs in (("overlay.png", f"{stem}_overlay.png"), ("anomaly.tiff", f"{stem}_anomaly.tiff"),
                         ("points.ply", f"{stem}.ply")):  # the same files, byte for byte
        assert client.get(f"/v1/results/{got['id']}/{name}").content == (out / theirs).read_bytes()


def _bad_cases(sample_files):
    png = sample_files["rgb"].read_bytes()
    xyz = tifffile.imread(sample_files["xyz"])
    inf = xyz.copy()
    inf[3, 4, 2] = np.inf
    return {
        "truncated image": ({"rgb": ("p.png", png[: len(png) // 2])}, 422, "p.png"),
        "xyz of the wrong shape": ({"xyz": ("c.tiff", tiff(xyz[..., :2]))}, 422, "c.tiff"),
        "xyz of the wrong dtype": ({"xyz": ("c.tiff", tiff(np.zeros((48, 48, 3), np.uint8)))}, 422, "c.tiff"),
        "rgb and xyz of different sizes": ({"rgb": ("p.png", png), "xyz": ("c.tiff", tiff(xyz[:40]))},
                                           422, "differs"),
        "no file": ({}, 400, "no file"),
        "non-image file": ({"rgb": ("notes.txt", b"hello, not an image")}, 415, "notes.txt"),
        "inf coordinates": ({"xyz": ("c.tiff", tiff(inf))}, 422, "inf"),
        "empty upload": ({"rgb": ("p.png", b"")}, 400, "empty"),
    }


@pytest.mark.parametrize("case", ["truncated image", "xyz of the wrong shape", "xyz of the wrong dtype",
                                  "rgb and xyz of different sizes", "no file", "non-image file",
                                  "inf coordinates", "empty upload"])
def test_bad_requests_get_a_one_line_error_and_the_service_goes_on(client, sample_files, case):
    upload, status, text = _bad_cases(sample_files)[case]
    r = client.post("/v1/predict", files=upload)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert text in err and "\n" not in err and list(r.json()) == ["error"]
    assert client.post("/v1/predict", files=files(sample_files)).status_code == 200


def test_bad_units_and_a_too_large_upload(client, sample_files):
    r = client.post("/v1/predict", files=files(sample_files), data={"units": "inch"})
    assert r.status_code == 422 and "units" in r.json()["error"]
    big = {"rgb": ("big.png", b"\x89PNG" + b"0" * (1 << 21))}  # 2 MB > --max-upload-mb 1
    r = client.post("/v1/predict", files=big)
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_an_internal_error_is_a_500_and_the_service_keeps_serving(client, sample_files, monkeypatch):
    det = client.app.state.cmdr.det

    def broken(*a, **k):
        raise RuntimeError("simulated fault\nwith a second line")

    monkeypatch.setattr(det, "predict_many", broken)
    r = client.post("/v1/predict", files=files(sample_files))
    assert r.status_code == 500 and "simulated fault" in r.json()["error"] and "\n" not in r.json()["error"]
    monkeypatch.undo()
    assert client.post("/v1/predict", files=files(sample_files)).status_code == 200


def test_not_ready_until_the_model_is_loaded_and_warm(serve_model, sample_files, monkeypatch):
    import threading

    import cmdr_iad.serve.app as app_mod

    gate, real = threading.Event(), app_mod._load

    def slow_load(state, gauge):
        gate.wait(60)
        real(state, gauge)

    monkeypatch.setattr(app_mod, "_load", slow_load)
    app = create_app(ServeConfig(model_dir=serve_model, device="cpu"))
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200  # up while loading
        assert c.get("/readyz").status_code == 503
        r = c.post("/v1/predict", files=files(sample_files))
        assert r.status_code == 503 and r.headers["Retry-After"] and "loading" in r.json()["error"]
        gate.set()
        for _ in range(600):
            if c.get("/readyz").status_code == 200:
                break
            threading.Event().wait(0.1)
        assert c.get("/readyz").status_code == 200
        assert c.post("/v1/predict", files=files(sample_files)).status_code == 200
