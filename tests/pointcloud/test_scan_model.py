"""Saving and loading the scan model: Point-MAE identity checks, random-weight rebuild, threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdr_iad.errors import ArtifactError, WeightsError
from cmdr_iad.pointcloud.chunking import normalize_chunks
from cmdr_iad.pointcloud.config import model_preset
from cmdr_iad.pointcloud.features import make_extractor
from cmdr_iad.pointcloud.model import ScanModel, load_scan_model, new_decoder
from cmdr_iad.pointcloud.train import calibrate_threshold


@pytest.fixture(scope="module")
def cfg():
    return model_preset("tiny", 1024).replace(point_mae_bn="running")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from cmdr_iad.features.point_mae import PointMAE
    from cmdr_iad.features.point_mae_ckpt import write_release_checkpoint

    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(3)
    sd = PointMAE(num_group=32, group_size=16).state_dict()
    write_release_checkpoint(sd, d / "a.pth")
    sd["norm.weight"] = sd["norm.weight"] + 1.0
    write_release_checkpoint(sd, d / "b.pth")
    return d / "a.pth", d / "b.pth"


def test_model_with_weight_file_round_trip_and_identity_check(tmp_path, cfg, checkpoints):
    a, b = checkpoints
    ext = make_extractor(cfg, point_mae_weights=str(a))
    model = ScanModel(config=cfg, extractor=ext, decoder=new_decoder(cfg, seed=0), threshold=1.25,
                      meta={"threshold_rule": "test"})
    model.save(tmp_path / "m")
    back = load_scan_model(tmp_path / "m", point_mae_weights=str(a))
    assert back.threshold == 1.25 and back.meta["threshold_rule"] == "test" and not back.random_backbones
    assert back.extractor.weights["point_mae"].sha256 == ext.weights["point_mae"].sha256
    for k, v in model.decoder.state_dict().items():
        torch.testing.assert_close(back.decoder.state_dict()[k], v, rtol=0, atol=0)
    with pytest.raises(WeightsError, match="trained with Point-MAE weights"):
        load_scan_model(tmp_path / "m", point_mae_weights=str(b))


def test_random_backbone_model_is_rebuilt_identically(tmp_path, cfg, scan_factory):
    ext = make_extractor(cfg, random_backbones=True, seed=5)
    model = ScanModel(config=cfg, extractor=ext, decoder=new_decoder(cfg, seed=1), threshold=None)
    model.save(tmp_path / "r")
    back = load_scan_model(tmp_path / "r")
    assert back.random_backbones and back.threshold is None
    chunk = normalize_chunks(scan_factory(0)[None, :1024])
    a, b = model.score(chunk), back.score(chunk)
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map, rtol=0, atol=0)
    assert torch.isfinite(a.image_score).all()


def test_wrong_kind_is_rejected(tmp_path):
    from cmdr_iad.artifact import save_artifact

    save_artifact(tmp_path / "x", {"w": torch.zeros(1)}, {}, "cmdr-iad-detector")
    with pytest.raises(ArtifactError, match="cmdr-iad-pointcloud"):
        load_scan_model(tmp_path / "x")


def test_threshold_rule():
    s = np.array([1.0, 2.0, 3.0])
    assert calibrate_threshold(s, 3.0) == pytest.approx(2.0 + 3.0 * np.std(s))
