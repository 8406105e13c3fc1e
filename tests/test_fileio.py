"""cmdr_iad.fileio: outputs appear whole or not at all, the previous version survives a failure,
nothing temporary is left behind, the usual file modes, and hashes equal hashlib's."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from cmdr_iad import fileio


def _leftovers(folder):
    return [p.name for p in folder.rglob("*") if p.name.startswith(fileio.TMP_PREFIX)]


def test_atomic_output_replaces_only_on_success(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    fileio.write_text_atomic(target, "old")
    with pytest.raises(RuntimeError), fileio.atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old" and not _leftovers(tmp_path)
    fileio.write_json_atomic(target, {"b": 1, "a": [1, 2]})
    assert target.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'


def test_atomic_output_keeps_the_suffix_and_the_usual_mode(tmp_path):
    seen = []
    with fileio.atomic_output(tmp_path / "x.tiff") as tmp:
        seen.append(tmp.name)
        tmp.write_bytes(b"1")
    assert seen[0].endswith("x.tiff") and seen[0].startswith(fileio.TMP_PREFIX)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "x.tiff").stat().st_mode) == 0o666 & ~mask


def test_staging_folder_swaps_in_or_leaves_the_old_folder(tmp_path):
    out = tmp_path / "model"
    with fileio.staging_folder(out) as stage:
        (stage / "w.bin").write_bytes(b"v1")
    assert (out / "w.bin").read_bytes() == b"v1"
    with pytest.raises(ValueError), fileio.staging_folder(out) as stage:
        (stage / "w.bin").write_bytes(b"v2-partial")
        raise ValueError("failed mid-way")
    assert (out / "w.bin").read_bytes() == b"v1" and not _leftovers(tmp_path)
    with fileio.staging_folder(out) as stage:
        (stage / "other.bin").write_bytes(b"v3")
    assert sorted(p.name for p in out.iterdir()) == ["other.bin"] and not _leftovers(tmp_path)


def test_staged_files_publish_into_an_existing_folder(tmp_path):
    out = tmp_path / "preds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(KeyError), fileio.staged_files(out) as stage:
        (stage / "a.png").write_bytes(b"x")
        raise KeyError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    with fileio.staged_files(out) as stage:
        (stage / "a.png").write_bytes(b"x")
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "keep.txt"]


def test_check_writable_names_the_problem(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert fileio.check_writable(tmp_path / "new" / "deeper" / "out.json") is None
    assert fileio.check_writable(tmp_path / "dir", folder=True) is None
    assert fileio.check_writable(f, folder=True) == "exists and is not a folder"
    assert fileio.check_writable(tmp_path, folder=False) == "is a folder"
    assert "not a folder" in fileio.check_writable(f / "under" / "x.json")  # root: bits do not stop us
    assert fileio.check_writable("/proc/cmdr-iad-test/x.json") is not None  # not writable even as root
    assert not _leftovers(tmp_path)


def test_hashes_equal_hashlib(tmp_path):
    data = os.urandom(3 * 2**20 + 17)
    f = tmp_path / "w.bin"
    f.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert fileio.file_sha256(f) == want
    assert fileio.file_sha256(f, use_stamp=True) == want
    assert (tmp_path / "w.bin.sha256").read_text().split()[0] == want
    h = hashlib.sha256()
    for c in (b"ab", b"c"):
        h.update(len(c).to_bytes(8, "little") + c)
    assert fileio.hash_bytes(b"ab", b"c") == h.hexdigest() != fileio.hash_bytes(b"a", b"bc")
