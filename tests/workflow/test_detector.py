"""Python API of `CMDRIAD`: fit / predict / save / load, resume, missing modality, thresholds,
and the saved-model failure modes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cmdr_iad import CMDRIAD, presets
from cmdr_iad.calibration import threshold_from_scores
from cmdr_iad.data.mvtec3d import MVTec3DDataset
from cmdr_iad.data.sample import Sample
from cmdr_iad.errors import ArtifactError, UserInputError


def _cfg(epochs=1, modality="rgb+xyz"):
    return presets.tiny(modality).replace(train={"epochs": epochs, "batch_size": 2})


@pytest.fixture(scope="module")
def data(synth_root):
    kw = {"require_points": False}
    return (MVTec3DDataset(synth_root, "puck", "train", **kw),
            MVTec3DDataset(synth_root, "puck", "validation", **kw),
            MVTec3DDataset(synth_root, "puck", "test", **kw))


@pytest.fixture(scope="module")
def fitted(tiny_model):
    """The session's rgb+xyz tiny model (trained by `cmdr-iad train`, i.e. `CMDRIAD.fit`)."""
    return CMDRIAD.load(tiny_model, device="cpu"), tiny_model.parent / "cache"


def test_save_load_round_trip_identical(fitted, data, tmp_path):
    det, _ = fitted
    test = data[2]
    det.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["kind"] == "cmdr-iad-detector" and meta["modality"] == "rgb+xyz"
    assert meta["backbone"]["random_backbones"] is True
    assert {"cmdr_iad", "torch"} <= set(meta["environment"])
    assert meta["calibration"]["branches"]["rgb+xyz"]["rule"].startswith(("quantile", "f1"))
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "m" / "weights.safetensors"))
    assert "map2Dto3D.input.weight" in keys and "Dec3D.projection.0.weight" in keys
    assert "Dec2D.conv_decoder.1.num_batches_tracked" in keys
    back = CMDRIAD.load(tmp_path / "m", device="cpu")
    assert back.thresholds == det.thresholds
    picks = [test[0], test[len(test) - 1]]
    for a, b in zip(det.predict_many(picks, batch_size=2), back.predict_many(picks, batch_size=2),
                    strict=True):
        assert np.array_equal(a.map_grid, b.map_grid)
        assert np.array_equal(a.anomaly_map, b.anomaly_map)
        assert a.score == b.score and a.is_anomalous == b.is_anomalous


def test_predict_result_and_missing_modality(fitted, data):
    det, _ = fitted
    s = data[2][len(data[2]) - 1]
    full = det.predict(s)
    assert full.branch == "rgb+xyz" and not full.notes
    assert full.anomaly_map.shape == s.rgb.shape[:2] and full.map_grid.shape == (32, 32)
    # anomaly_map is Ψ normalised like the image score: its grid maximum is the score
    psi = full.map_grid
    assert full.score == pytest.approx(float((psi / np.sqrt(psi[psi != 0].mean())).max()), rel=1e-5)
    assert full.is_anomalous == (full.score >= det.thresholds["rgb+xyz"])
    rgb_only = det.predict(Sample(rgb=s.rgb, key="r"))
    assert rgb_only.branch == "rgb" and rgb_only.missing_modality == "xyz"
    assert rgb_only.threshold == det.thresholds["rgb"]
    empty = det.predict(Sample(rgb=s.rgb, xyz=np.zeros_like(s.xyz), key="e"))
    assert empty.branch == "rgb" and "no valid point" in empty.notes[0]
    np.testing.assert_array_equal(empty.map_grid, rgb_only.map_grid)
    xyz_only = det.predict(Sample(xyz=s.xyz, key="x"))
    assert xyz_only.branch == "xyz" and xyz_only.missing_modality == "rgb"
    with pytest.raises(UserInputError):
        det.predict(Sample(xyz=np.zeros_like(s.xyz), key="n"))
    # the batch path gives the same numbers as one-by-one prediction
    batch = list(det.predict_many([data[2][0], s], batch_size=2))
    np.testing.assert_allclose(batch[1].map_grid, full.map_grid, rtol=1e-4, atol=1e-6)
    assert batch[1].score == pytest.approx(full.score, rel=1e-4)


def test_resume_and_seed_repeatability(data, tmp_path):
    """3D-only (one head: cheap); the training loop is the same for every modality."""
    train, _, _ = data
    cache = tmp_path / "cache"
    # one sample without any valid 3D point is skipped and counted
    s0 = train[0]
    samples = [train[i] for i in range(len(train))] + [Sample(xyz=np.zeros_like(s0.xyz), key="z")]
    full = CMDRIAD(_cfg(epochs=2, modality="xyz"), random_backbones=True, device="cpu")
    rep = full.fit(samples, cache_dir=cache, progress=False)
    assert rep.skipped_no_valid == 1 and rep.samples == len(train) and len(rep.history) == 2
    assert set(rep.history[0]) == {"rec3d"}
    ck = tmp_path / "ck"
    part = CMDRIAD(_cfg(epochs=1, modality="xyz"), random_backbones=True, device="cpu")
    part.fit(samples, cache_dir=cache, checkpoint=ck, progress=False)
    assert (ck / "model.json").is_file()
    resumed = CMDRIAD(_cfg(epochs=2, modality="xyz"), random_backbones=True, device="cpu")
    rep2 = resumed.fit(samples, cache_dir=cache, checkpoint=ck, resume=True, progress=False)
    assert rep2.resumed_from_epoch == 1
    for k, v in full.heads["Dec3D"].state_dict().items():
        assert torch.equal(v, resumed.heads["Dec3D"].state_dict()[k]), k
    assert full.thresholds == resumed.thresholds
    # a checkpoint of another run is refused
    other = CMDRIAD(_cfg(epochs=2, modality="xyz").replace(train={"lr": 5e-4}), random_backbones=True,
                    device="cpu")
    with pytest.raises(UserInputError, match="another run"):
        other.fit(samples, cache_dir=cache, checkpoint=ck, resume=True, progress=False)


def test_four_losses_rgb_xyz(fitted):
    det, _ = fitted
    hist = det.info["training"]["history"]
    assert set(hist[0]) == {"map3d", "map2d", "rec2d", "rec3d"}
    assert all(np.isfinite(v) for v in hist[0].values())


def test_threshold_rules():
    t, rule = threshold_from_scores([1.0, 2.0, 3.0, 4.0], [0, 0, 0, 0])
    assert t == 4.0 and rule.startswith("quantile")
    t, _ = threshold_from_scores([1.0, 2.0, 3.0, 5.0], [0, 0, 0, 0], quantile=0.5)
    assert t == 2.5
    t, rule = threshold_from_scores([1.0, 2.0, 3.0, 4.0, 2.5], [0, 0, 1, 1, 0])
    assert t == 3.0 and rule.startswith("f1")


def test_bad_model_folders(fitted, tmp_path, cli):
    det, _ = fitted
    good = det.save(tmp_path / "good")

    def corrupt(name, fn):
        import shutil

        d = tmp_path / name
        shutil.copytree(good, d)
        fn(d)
        return d

    def newer(d):
        m = json.loads((d / "model.json").read_text())
        m["format_version"] = 99
        (d / "model.json").write_text(json.dumps(m))

    def misfit(d):  # the stored config says grid 40: the stored heads do not fit it
        m = json.loads((d / "model.json").read_text())
        m["config"]["features"]["grid_size"] = 40
        (d / "model.json").write_text(json.dumps(m))

    def truncated(d):
        w = d / "weights.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])

    cases = {"newer": (newer, "newer"), "misfit": (misfit, "do not fit"),
             "truncated": (truncated, "checksum")}
    rgb = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(rgb)
    for name, (fn, msg) in cases.items():
        d = corrupt(name, fn)
        with pytest.raises(ArtifactError, match=msg):
            CMDRIAD.load(d, device="cpu")
        out = tmp_path / f"out-{name}"
        rc, _, err = cli("predict", d, "--rgb", rgb, "--out", out)
        assert rc == 2 and err.count("\n") == 1 and msg in err, err
        assert not out.exists() or not any(out.iterdir())
    with pytest.raises(UserInputError):
        CMDRIAD.load(tmp_path / "missing", device="cpu")


@pytest.mark.parametrize("branch", ["rgb+xyz", "rgb", "xyz"])
def test_exact_heads_equal_the_reference_path_in_every_branch(fitted, data, branch):
    """The one inference path on its exact head path (heads on valid pixels only) scores like the
    reference path (dense features, every head on every pixel), including the RGB branch of an
    RGB+3D model, which scores every pixel."""
    from cmdr_iad.data.transforms import transform_sample

    det, _ = fitted
    ts = transform_sample(data[2][-1], det.config.features)
    rgb, xyz = ts.rgb[None], ts.xyz[None]
    ref = det.score_tensors(rgb, xyz, branch=branch, heads="reference")
    fast = det.score_tensors(rgb, xyz, branch=branch)
    torch.testing.assert_close(fast["map_grid"], ref["map_grid"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fast["score"], ref["score"], rtol=1e-4, atol=1e-6)
    assert set(fast["distances"]) == set(ref["distances"])
    with pytest.raises(ValueError, match="heads must be one of"):
        det.score_tensors(rgb, xyz, branch=branch, heads="fast")


def test_calibration_equals_thresholds_from_reference_scores(fitted, data):
    """Per-branch thresholds from the cached features equal those computed from the reference
    path's scores of the same samples (the RGB branch needs its own, unmasked d_rec2d)."""
    import dataclasses

    from cmdr_iad.data.transforms import transform_sample

    det, _ = fitted
    samples = []
    for s in list(data[1]) + list(data[0])[:2]:  # a third of each cloud missing: many invalid pixels
        xyz = s.xyz.copy()
        xyz[:, : xyz.shape[1] // 3] = 0
        samples.append(dataclasses.replace(s, xyz=xyz))
    saved = dict(det.thresholds), dict(det.calibration)
    try:
        got = dict(det.calibrate(samples)["branches"])
    finally:
        det.thresholds, det.calibration = saved
    assert set(got) == {"rgb+xyz", "rgb", "xyz"}
    for b in got:
        scores = []
        for s in samples:
            ts = transform_sample(s, det.config.features)
            out = det.score_tensors(ts.rgb[None], ts.xyz[None], branch=b, heads="reference")
            scores.append(float(out["score"][0]))
        want, _ = threshold_from_scores(scores, [int(s.label) for s in samples])
        assert got[b]["threshold"] == pytest.approx(want, rel=1e-4), b


def test_fast_path_scores_a_batch_one_sample_at_a_time(fitted, data, monkeypatch):
    """Batch > 1 is exact (equals single calls) and flat in memory: the fast path extracts the
    compact per-sample form (`extract_rows`) once per sample and never the dense batch."""
    from cmdr_iad.data.transforms import transform_sample
    from cmdr_iad.features.extractor import FeatureExtractor

    det, _ = fitted
    tss = [transform_sample(s, det.config.features) for s in data[2][-2:]]
    rgb = torch.stack([t.rgb for t in tss])
    xyz = torch.stack([t.xyz for t in tss])
    calls = {"rows": 0}
    real = FeatureExtractor.extract_rows

    def counting(self, *a, **k):
        calls["rows"] += 1
        return real(self, *a, **k)

    def dense(*a, **k):
        raise AssertionError("the fast path must not build the dense batch features")

    monkeypatch.setattr(FeatureExtractor, "extract_rows", counting)
    monkeypatch.setattr(FeatureExtractor, "extract", dense)
    both = det.score_tensors(rgb, xyz, branch="rgb+xyz")
    assert calls["rows"] == 2
    for i in range(2):
        one = det.score_tensors(rgb[i:i + 1], xyz[i:i + 1], branch="rgb+xyz")
        torch.testing.assert_close(both["map_grid"][i], one["map_grid"][0], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(both["score"][i], one["score"][0], rtol=1e-5, atol=1e-7)
        assert torch.equal(both["valid"][i], one["valid"][0])


@pytest.mark.parametrize("change,msg", [({"heads": {"dim2d": 7}}, "heads config does not build"),
                                        ({"score": {"variant": "nope"}}, "unknown fusion variant")])
def test_a_config_that_cannot_build_is_a_config_error(change, msg):
    """The networks raise ValueError (they import nothing of ours); the detector, the API
    boundary, turns a config that cannot build into the user-facing ConfigError (exit 2)."""
    from cmdr_iad.errors import ConfigError

    with pytest.raises(ConfigError, match=msg):
        CMDRIAD(presets.tiny("rgb+xyz").replace(**change), random_backbones=True, device="cpu")
