"""`cmdr-iad cache info|clean`: entries per kind, --yes required, bad input exits 2 on one line."""

from __future__ import annotations

import torch

from cmdr_iad.features.cache import CompactCache, FeatureCache
from cmdr_iad.features.compact import Tokens2D
from cmdr_iad.features.extractor import Features


def _fill(root):
    c = CompactCache(root)
    for i in range(3):
        c.put("vit", "k" * 64, f"s{i}", Tokens2D(torch.full((768, 2, 2), float(i))))
    FeatureCache(root).put("a" * 16, "b" * 64, Features(None, torch.ones(1, 4, 3, 3),
                                                        torch.ones(1, 3, 3, dtype=torch.bool)))
    (root / "notes.txt").write_text("not the cache's")


def test_info_lists_kinds_bytes_and_location(cli, tmp_path):
    _fill(tmp_path)
    rc, out, err = cli("cache", "info", "--cache-dir", tmp_path)
    assert rc == 0 and not err
    assert str(tmp_path.resolve()) in out
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines()[1:]}
    assert lines["vit"][1] == "3" and lines["point_mae"][1] == "0" and lines["dense"][1] == "1"
    assert int(lines["vit"][3].replace(",", "")) > 3 * 768 * 4 * 4


def test_clean_needs_yes_and_keeps_other_files(cli, tmp_path):
    _fill(tmp_path)
    rc, out, err = cli("cache", "clean", "--cache-dir", tmp_path)
    assert rc == 2 and len(err.splitlines()) == 1 and "--yes" in err and str(tmp_path) in err
    assert CompactCache(tmp_path).keys("vit", "k" * 64) == ["s0", "s1", "s2"]
    rc, out, err = cli("cache", "clean", "--cache-dir", tmp_path, "--kind", "dense", "--yes")
    assert rc == 0 and "deleted 1 entries" in out
    assert CompactCache(tmp_path).keys("vit", "k" * 64) == ["s0", "s1", "s2"]
    rc, out, err = cli("cache", "clean", "--cache-dir", tmp_path, "--yes")
    assert rc == 0 and "deleted 3 entries" in out
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    rc, out, err = cli("cache", "clean", "--cache-dir", tmp_path, "--yes")
    assert rc == 0 and "nothing to delete" in out


def test_bad_cache_dir_is_one_line_exit_2(cli, tmp_path):
    for bad in (tmp_path / "missing", tmp_path / "file"):
        if bad.name == "file":
            bad.write_text("x")
        for action in ("info", "clean"):
            rc, out, err = cli("cache", action, "--cache-dir", bad)
            assert rc == 2 and len(err.splitlines()) == 1 and str(bad) in err, (action, bad, err)
    rc, out, err = cli("cache", "info", "--bogus")
    assert rc == 2 and len(err.splitlines()) == 1


def test_default_location_is_the_weights_folder(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("CMDR_IAD_HOME", str(tmp_path / "home"))
    from cmdr_iad.features.weights import download_dir

    rc, out, err = cli("cache", "info")
    assert rc == 0 and str(download_dir() / "features") in out and "does not exist yet" in out
