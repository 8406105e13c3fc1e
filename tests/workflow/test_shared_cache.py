"""One feature cache for several models: an RGB-only and an RGB+3D detector fitted on the same
data share the ViT entries (the ViT runs once per sample), and the printed size estimate."""

from __future__ import annotations

import pytest

from cmdr_iad import CMDRIAD, presets
from cmdr_iad.data.mvtec3d import MVTec3DDataset
from cmdr_iad.errors import UserInputError


def _fit(modality, data, cache_dir, log=None):
    cfg = presets.tiny(modality).replace(train={"epochs": 1, "batch_size": 2})
    det = CMDRIAD(cfg, random_backbones=True, device="cpu")
    det.fit(*data, cache_dir=cache_dir, progress=False, log=log)
    return det


def test_rgb_and_rgbxyz_models_share_vit_entries(synth_root, tmp_path, encoder_calls):
    kw = {"require_points": False}
    data = (MVTec3DDataset(synth_root, "puck", "train", **kw),
            MVTec3DDataset(synth_root, "puck", "validation", **kw))
    n = len(data[0]) + len(data[1])
    calls = encoder_calls
    lines: list[str] = []
    _fit("rgb", data, tmp_path / "cache", log=lines.append)
    assert calls == {"vit": n, "point_mae": 0}
    assert any("feature cache:" in ln and "MB" in ln for ln in lines)
    _fit("rgb+xyz", data, tmp_path / "cache")
    assert calls == {"vit": n, "point_mae": n}  # the ViT ran once per sample over both fits
    _fit("rgb+xyz", data, tmp_path / "cache")
    assert calls == {"vit": n, "point_mae": n}


def test_not_enough_space_stops_before_extraction(synth_root, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from cmdr_iad.features import vit

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10, 10, 1000))
    monkeypatch.setattr(vit, "create_vit", lambda *a, **k: pytest.fail("backbone loaded"))
    monkeypatch.setattr(vit, "vit_feature_map", lambda *a: pytest.fail("extraction started"))
    data = (MVTec3DDataset(synth_root, "puck", "train", require_points=False), None)
    with pytest.raises(UserInputError, match=f"not enough free space.*{tmp_path.name}"):
        _fit("rgb", data, tmp_path / "cache")


def test_train_cli_prints_the_size_and_exits_2_without_space(cli, synth_root, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10, 10, 1000))
    rc, out, err = cli("train", synth_root, "--category", "puck", "--preset", "tiny",
                       "--random-backbones", "--out", tmp_path / "m", "--cache-dir", tmp_path / "fc",
                       "--device", "cpu")
    last = err.strip().splitlines()[-1]  # (the random-backbones notice comes first)
    assert rc == 2 and last.startswith("cmdr-iad: error: not enough free space"), err
    assert err.count("error") == 1 and str(tmp_path / "fc") in last
    assert "feature cache:" in out and "MB" in out
    assert not (tmp_path / "m").exists()
