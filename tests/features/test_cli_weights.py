"""`cmdr-iad weights`: lists what is found and where, and what to do when files are missing."""

from __future__ import annotations

import json

import pytest

from cmdr_iad.cli import main
from cmdr_iad.features.weights import DINO, POINT_MAE


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("CMDR_IAD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("CMDR_IAD_OFFLINE", "1")
    return tmp_path


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["weights", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--download" in out and "CMDR_IAD_HOME" in out


def test_missing_lists_urls_and_folder(env, capsys):
    assert main(["weights"]) == 1
    out = capsys.readouterr().out
    for spec in (DINO, POINT_MAE):
        assert spec.url in out and spec.sha256 in out
        assert str(env / "home" / spec.filename) in out
    assert "MISSING" in out and str(env / "xdg" / "cmdr-iad") in out


def test_found_explicit_and_env(env, capsys):
    mine = env / "my_dino.safetensors"
    mine.write_bytes(b"not really weights")
    (env / "home").mkdir()
    (env / "home" / "point_mae_pretrain.pth").write_bytes(b"corrupt")
    rc = main(["weights", "--dino-weights", str(mine), "--json"])
    rec = json.loads(capsys.readouterr().out)
    assert rc == 1 and rec["ok"] is False
    dino, pmae = rec["weights"]
    assert dino["status"] == "found" and dino["origin"] == "explicit"
    assert dino["path"] == str(mine) and dino["checksum"].startswith("differs")
    assert pmae["status"] == "error" and "does not match the official SHA-256" in pmae["message"]
    rc = main(["weights", "--dino-weights", str(mine), "--point-mae-weights", str(mine)])
    out = capsys.readouterr().out
    assert rc == 0 and out.count(f"found    {mine}") == 2


def test_download_refused_offline(capsys):
    assert main(["weights", "--download", "--json"]) == 1
    rec = json.loads(capsys.readouterr().out)
    assert all(w["status"] == "error" and "CMDR_IAD_OFFLINE" in w["message"]
               for w in rec["weights"])
