import pytest

from cmdr_iad import presets
from cmdr_iad.config import DetectorConfig
from cmdr_iad.errors import ConfigError


@pytest.mark.parametrize("name", presets.PRESETS)
@pytest.mark.parametrize("modality", ["rgb+xyz", "rgb", "xyz"])
def test_preset_json_round_trip(name, modality):
    cfg = presets.get(name, modality)
    assert DetectorConfig.from_dict(cfg.to_dict()) == cfg


def test_paper_preset_is_the_paper():
    cfg = presets.paper()
    assert cfg.features.grid_size == 224 and cfg.features.rgb_size == 224
    assert (cfg.features.num_group, cfg.features.group_size) == (1024, 128)
    assert (cfg.heads.dim2d, cfg.heads.dim3d, cfg.heads.num_heads, cfg.heads.window_size) == (768, 1152, 8, 128)
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.batch_size, cfg.train.epochs) == ("adam", 1e-3, 1, 50)
    assert cfg.score.temperature == 0.3 and cfg.features.transforms == "reference"


def test_bad_values_raise():
    with pytest.raises(ConfigError):
        presets.get("huge")
    with pytest.raises(ConfigError):
        presets.paper("depth")
    with pytest.raises(ConfigError):
        presets.paper().replace(train={"lr": 0.0})


def test_score_config_smoothing_validated_and_legacy_models_keep_pixels(tmp_path):
    from cmdr_iad import CMDRIAD, presets
    from cmdr_iad.config import DetectorConfig
    from cmdr_iad.errors import ConfigError

    cfg = presets.tiny("xyz")
    assert cfg.score.smoothing == "grid"
    with pytest.raises(ConfigError, match="smoothing"):
        cfg.replace(score={"smoothing": "gaussian"})
    d = cfg.to_dict()
    d["score"].pop("smoothing")
    assert DetectorConfig.from_dict(d).score.smoothing == "grid"
    # a model folder written before the field existed loads with the chains in grid pixels
    import json

    folder = CMDRIAD(cfg, random_backbones=True).save(tmp_path / "m")
    meta = json.loads((folder / "model.json").read_text())
    meta["config"]["score"].pop("smoothing")
    (folder / "model.json").write_text(json.dumps(meta))
    assert CMDRIAD.load(folder, device="cpu").config.score.smoothing == "pixels"
    assert CMDRIAD.load(tmp_path / "m", device="cpu") is not None
