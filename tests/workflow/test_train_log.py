"""`CMDRIAD.fit` logs every epoch (held-out = the normal validation samples) and `save` writes
the log as `train_log.csv` into the model folder."""

from __future__ import annotations

from cmdr_iad import CMDRIAD, presets
from cmdr_iad.data.mvtec3d import MVTec3DDataset
from cmdr_iad.training import LOG_COLUMNS, read_train_log


def test_fit_and_save_write_train_log(synth_root, tmp_path):
    kw = {"require_points": False}
    train = MVTec3DDataset(synth_root, "puck", "train", **kw)
    val = MVTec3DDataset(synth_root, "puck", "validation", **kw)
    det = CMDRIAD(presets.tiny("xyz").replace(train={"epochs": 2}), random_backbones=True, device="cpu")
    report = det.fit(train, val, cache_dir=tmp_path / "cache", progress=False)
    assert len(report.log) == 3 and report.log[0]["epoch"] == 0  # epoch 0: untrained held-out level
    assert report.log[0]["heldout_rec3d"] > report.log[-1]["heldout_rec3d"] > 0
    out = det.save(tmp_path / "model")
    text = (out / "train_log.csv").read_text()
    assert text.splitlines()[0] == ",".join(LOG_COLUMNS)
    rows = read_train_log(out / "train_log.csv")
    assert [r["epoch"] for r in rows] == [0.0, 1.0, 2.0]
    assert rows[0]["loss_rec3d"] is None
    assert all(r["heldout_rec3d"] > 0 and r["loss_rec3d"] > 0 and r["loss_map3d"] is None for r in rows[1:])
    assert CMDRIAD.load(out, device="cpu").info["training"]["log"][-1]["epoch"] == 2
