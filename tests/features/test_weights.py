"""Weight resolution: explicit path → weights folders → verified download → clear error.

No test touches the network: downloads use file:// URLs or an injected fetcher.
"""

from __future__ import annotations

import argparse
import dataclasses
import fractions
import hashlib
import os
from pathlib import Path

import pytest
import torch

from cmdr_iad.errors import WeightsError
from cmdr_iad.features import weights as W


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("CMDR_IAD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("CMDR_IAD_OFFLINE", "1")
    return tmp_path


def _local_spec(tmp_path: Path, payload: bytes = b"weights-bytes" * 100, good_sha: bool = True):
    src = tmp_path / "remote" / "pretrain.pth"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest() if good_sha else "0" * 64
    return dataclasses.replace(W.POINT_MAE, url=src.as_uri(), sha256=sha), src


def test_official_specs_name_the_release_files():
    assert W.POINT_MAE.sha256 == "27ded932bb0a2625d5a8eb006df199b2578598c774aee6d86b985300b6a5fd20"
    assert W.POINT_MAE.url.endswith("Pang-Yatian/Point-MAE/releases/download/main/pretrain.pth")
    assert W.DINO.sha256 == "01be14b99784a4c0970a5703214513588daf27014e908ac7ea08967b7bd80f5f"
    assert W.DINO.url.endswith("timm/vit_base_patch8_224.dino/resolve/main/model.safetensors")


def test_folders_order(isolated, monkeypatch):
    dirs = W.weights_dirs()
    assert dirs[0] == ("env", isolated / "home")
    assert dirs[1] == ("cache", isolated / "xdg" / "cmdr-iad")
    monkeypatch.delenv("CMDR_IAD_HOME")
    assert W.download_dir() == isolated / "xdg" / "cmdr-iad"


@pytest.mark.parametrize("spec", [W.DINO, W.POINT_MAE], ids=["dino", "point_mae"])
def test_offline_missing_error_names_file_url_and_folder(isolated, spec):
    called = []
    with pytest.raises(WeightsError) as e:
        W.resolve_weights(spec, fetcher=lambda url, dest: called.append(url))
    msg = str(e.value)
    assert spec.url in msg
    assert str(isolated / "home" / spec.filename) in msg
    assert "CMDR_IAD_OFFLINE" in msg
    assert not called  # offline: the fetcher is never used


def test_explicit_missing_path(isolated):
    with pytest.raises(WeightsError, match="not found: .*nope.pth"):
        W.resolve_weights(W.POINT_MAE, isolated / "nope.pth")


def test_explicit_file_identity_without_sidecar(isolated):
    f = isolated / "mine.pth"
    f.write_bytes(b"abc")
    r = W.resolve_weights(W.POINT_MAE, f)
    assert r.origin == "explicit" and r.path == f
    assert r.identity.sha256 == hashlib.sha256(b"abc").hexdigest()
    assert r.identity.official is False and r.identity.file == "mine.pth"
    assert not (isolated / "mine.pth.sha256").exists()  # nothing written next to user files


def test_cached_official_file_is_found_and_stamped(isolated):
    spec, src = _local_spec(isolated)
    home = isolated / "home"
    home.mkdir()
    (home / spec.filename).write_bytes(src.read_bytes())
    r = W.resolve_weights(spec)
    assert r.origin == "env" and r.identity.official is True
    stamp = home / (spec.filename + ".sha256")
    assert stamp.read_text().startswith(spec.sha256)
    # the stamp is reused only while size and mtime match
    st = (home / spec.filename).stat()
    stamp.write_text(f"{'a' * 64} {st.st_size} {st.st_mtime_ns}\n")
    assert W.file_sha256(home / spec.filename) == "a" * 64
    (home / spec.filename).write_bytes(src.read_bytes() + b"x")
    assert W.file_sha256(home / spec.filename) != "a" * 64


def test_cached_corrupt_file_is_an_error(isolated):
    spec, _ = _local_spec(isolated)
    home = isolated / "home"
    home.mkdir()
    (home / spec.filename).write_bytes(b"truncated")
    with pytest.raises(WeightsError, match="does not match the official SHA-256"):
        W.resolve_weights(spec)


def test_second_folder_and_alternate_names(isolated):
    cache = isolated / "xdg" / "cmdr-iad"
    cache.mkdir(parents=True)
    (cache / "dino_vitbase8_pretrain.pth").write_bytes(b"dino")
    r = W.find_weights(W.DINO)
    assert r.origin == "cache" and r.path.name == "dino_vitbase8_pretrain.pth"
    assert r.identity.official is False


def test_download_file_url_verifies_and_renames(isolated, monkeypatch):
    monkeypatch.delenv("CMDR_IAD_OFFLINE")
    spec, src = _local_spec(isolated)
    r = W.resolve_weights(spec)  # default urllib fetcher on a file:// URL (no network)
    assert r.origin == "download" and r.identity.official is True
    assert r.path == isolated / "home" / spec.filename
    assert r.path.read_bytes() == src.read_bytes()
    assert not list((isolated / "home").glob("*.part"))
    assert W.resolve_weights(spec).origin == "env"  # next time it is found on disk


def test_download_checksum_mismatch_leaves_nothing(isolated, monkeypatch):
    monkeypatch.delenv("CMDR_IAD_OFFLINE")
    spec, _ = _local_spec(isolated, good_sha=False)
    with pytest.raises(WeightsError, match="SHA-256 .* expected 0000"):
        W.resolve_weights(spec)
    home = isolated / "home"
    assert not (home / spec.filename).exists()
    assert not [p for p in home.iterdir() if not p.name.endswith(".sha256")]


def test_download_failure_is_the_missing_error(isolated):
    def broken(url, dest):
        Path(dest).write_bytes(b"partial")
        raise OSError("connection reset")

    with pytest.raises(WeightsError) as e:
        W.resolve_weights(W.POINT_MAE, allow_download=True, fetcher=broken)
    assert "connection reset" in str(e.value) and W.POINT_MAE.url in str(e.value)
    assert not list((isolated / "home").iterdir())


def test_identities_and_keys():
    r = W.random_identity("dino", 3)
    assert r.random and r.key_part() == {"kind": "dino", "random": True, "seed": 3}
    a = {"w": torch.arange(6.0).reshape(2, 3)}
    b = {"w": torch.arange(6.0).reshape(3, 2)}
    ia, ib = W.module_identity("dino", a), W.module_identity("dino", b)
    assert ia.sha256 == W.module_identity("dino", {"w": a["w"].clone()}).sha256
    assert ia.sha256 != ib.sha256  # shape is part of the identity
    assert "RANDOM" in r.describe() and "unverified" in ia.describe()


def test_read_state_dict_errors(isolated):
    from safetensors.torch import save_file

    good = isolated / "m.safetensors"
    save_file({"a": torch.ones(1000)}, str(good))
    assert torch.equal(W.read_state_dict(good)["a"], torch.ones(1000))
    bad = isolated / "t.safetensors"
    bad.write_bytes(good.read_bytes()[: os.path.getsize(good) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        W.read_state_dict(bad)
    pkl = isolated / "ns.pth"
    torch.save({"opt": fractions.Fraction(1, 3), "w": torch.ones(2)}, str(pkl))
    with pytest.raises(WeightsError, match="objects other than tensors.*Fraction"):
        W.read_state_dict(pkl)
    ns = isolated / "args.pth"  # training checkpoints carry their argparse options: accepted
    torch.save({"args": argparse.Namespace(a=1), "w": torch.ones(2)}, str(ns))
    assert torch.equal(W.read_state_dict(ns)["w"], torch.ones(2))
    lst = isolated / "list.pth"
    torch.save([torch.ones(2)], str(lst))
    with pytest.raises(WeightsError, match="does not hold a state dict"):
        W.read_state_dict(lst)
    junk = isolated / "junk.pth"
    junk.write_bytes(b"\x00" * 10)
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        W.read_state_dict(junk)
