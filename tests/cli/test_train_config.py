"""`train --config FILE` (the "config" of a saved model.json), explicit flags on top, the
resolved config saved with the run, and `--units` reaching the dataset reader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmdr_iad import presets
from cmdr_iad.cli import build_parser
from cmdr_iad.cli.train import resolve_config
from cmdr_iad.errors import ConfigError


def _args(*extra: str):
    return build_parser().parse_args(["train", "D", "--category", "c", "--out", "M", *extra])


def test_defaults_are_the_paper_preset():
    assert resolve_config(_args()) == presets.get("paper", "rgb+xyz")


def test_config_file_then_explicit_flags(tmp_path):
    base = presets.get("tiny", "xyz").replace(train={"epochs": 3, "lr": 0.01})
    f = tmp_path / "model.json"
    f.write_text(json.dumps({"format_version": 1, "config": base.to_dict()}))  # a model.json
    assert resolve_config(_args("--config", str(f))) == base
    bare = tmp_path / "cfg.json"
    bare.write_text(base.to_json())  # the config object alone
    assert resolve_config(_args("--config", str(bare))) == base
    cfg = resolve_config(_args("--config", str(f), "--epochs", "5", "--point-mae-bn", "running"))
    assert cfg.train.epochs == 5 and cfg.train.lr == 0.01 and cfg.features.point_mae_bn == "running"
    assert resolve_config(_args("--config", str(f), "--modality", "rgb+xyz")).modality == "rgb+xyz"


def test_config_and_preset_together_are_refused(tmp_path):
    f = tmp_path / "cfg.json"
    f.write_text(presets.get("tiny", "rgb").to_json())
    with pytest.raises(ConfigError, match="not both"):
        resolve_config(_args("--config", str(f), "--preset", "tiny"))


@pytest.mark.parametrize("text", ["{broken", "[1, 2]", '{"preset": "tiny"}',
                                  '{"preset": "tiny", "modality": "rgb", "train": {"nope": 1}}'])
def test_bad_config_files_name_the_file(tmp_path, text):
    f = tmp_path / "cfg.json"
    f.write_text(text)
    with pytest.raises(ConfigError, match="cfg.json"):
        resolve_config(_args("--config", str(f)))


class _Stop(Exception):
    pass


@pytest.fixture
def fake_detector(monkeypatch, all_imported):
    """CMDRIAD replaced by a recorder whose `fit` stops the run (no backbones are built)."""
    import cmdr_iad.detector as detector

    seen: dict = {}

    class Fake:
        def __init__(self, cfg, **kw):
            seen["cfg"], seen["kw"] = cfg, kw
            self.device = "cpu"

        def fit(self, train_ds, val_ds, **kw):
            seen["train"], seen["val"] = train_ds, val_ds
            from cmdr_iad.errors import UserInputError

            raise UserInputError("stopped by the test")

    monkeypatch.setattr(detector, "CMDRIAD", Fake)
    return seen


def test_units_mm_reaches_the_reader(cli, data, tmp_path, fake_detector):
    rc, out, err = cli("train", data, "--category", "puck", "--preset", "tiny", "--out", tmp_path / "m",
                       "--units", "mm", "--random-backbones", "--quiet", "--cache-dir", tmp_path / "c")
    assert rc == 2 and "stopped by the test" in err
    ds = fake_detector["train"]
    assert ds.units == "mm" and fake_detector["val"].units == "mm"
    from cmdr_iad.data.pointcloud_io import read_organized

    raw = read_organized(data / "puck" / "train" / "good" / "xyz" / "000.tiff")
    np.testing.assert_allclose(ds[0].xyz, raw * np.float32(1e-3), rtol=1e-6)


def test_config_file_reaches_the_detector(cli, data, tmp_path, fake_detector):
    base = presets.get("tiny", "rgb").replace(train={"epochs": 2})
    f = tmp_path / "cfg.json"
    f.write_text(base.to_json())
    rc, out, err = cli("train", data, "--category", "puck", "--config", f, "--seed", "9", "--out",
                       tmp_path / "m", "--random-backbones", "--quiet")
    assert rc == 2
    assert fake_detector["cfg"] == base.replace(train={"seed": 9})


def test_resolved_config_is_saved_and_reusable(cli, synth_data, tmp_path):
    """A real (tiny, 3D-only, 1 epoch) run: model.json["config"] is the resolved config, and
    feeding that model.json back as --config resolves to the same config."""
    base = presets.get("tiny", "xyz").replace(train={"epochs": 1})
    f = tmp_path / "cfg.json"
    f.write_text(base.to_json())
    model = tmp_path / "model"
    rc, out, err = cli("train", synth_data, "--category", "puck", "--config", f, "--seed", "3",
                       "--out", model, "--random-backbones", "--quiet", "--cache-dir", tmp_path / "cache")
    assert rc == 0, err
    saved = json.loads((model / "model.json").read_text())
    assert saved["config"] == base.replace(train={"seed": 3}).to_dict()
    assert resolve_config(_args("--config", str(model / "model.json"))).to_dict() == saved["config"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no work files left
