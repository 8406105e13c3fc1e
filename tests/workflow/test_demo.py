"""`cmdr-iad demo` end to end, shrunk (its defaults are timed by hand: see the issue note)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_demo_small(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("CMDR_IAD_HOME", str(tmp_path / "no-weights"))  # no pretrained weights here
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    out = tmp_path / "demo"
    rc, stdout, err = cli("demo", "--out", out, "--epochs", "1", "--n-train", "3", "--size", "48",
                          "--quiet")
    assert rc == 0, err
    assert "RANDOM BACKBONES" in err and "no pretrained weights found" in err
    report = out / "report" / "report.html"
    assert f"report: {report.resolve()}" in stdout
    html = report.read_text()
    assert "RANDOM BACKBONES" in html and "<svg" in html and "data:image/png;base64," in html
    m = json.loads((out / "report" / "metrics.json").read_text())
    for k in ("i_auroc", "p_auroc", "aupro_30", "aupro_10", "aupro_5", "aupro_1"):
        assert 0.0 <= m[k] <= 1.0
    assert m["random_backbones"] is True
    assert (out / "model" / "model.json").is_file()
