"""Golden tests of the raw-scan pipeline against every stage of ../shared/golden/poly.npz.

Weights: recipe PointMAE(96, 32) in eval ("running" BatchNorm) mode and recipe
Decoder3D(9216, 1152) (= FeatureDecoder_9216), as the golden arrays were made.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdr_iad.pointcloud.chunking import (
    chunk_labels,
    chunk_sequential,
    normalize_chunks,
    to_pseudo_image,
)
from cmdr_iad.pointcloud.config import BuildConfig, ScanModelConfig
from cmdr_iad.pointcloud.dataset import chunk_scan
from cmdr_iad.pointcloud.evaluate import AUPRO_KEYS, metric_values
from cmdr_iad.pointcloud.outliers import fit_isolation_forest, isolation_forest_mask
from cmdr_iad.pointcloud.scoring import normalise_map, score_chunks

NET = dict(rtol=1e-4, atol=1e-5)  # network outputs (golden README)


@pytest.fixture(scope="module")
def poly(load_npz):
    return load_npz("poly.npz")


# ----------------------------------------------------------------------------- (a) labels, chunks


def test_isolation_forest_mask_scores_and_offset(poly):
    raw = poly["raw_points"]
    iso = fit_isolation_forest(raw, 1e-4, n_estimators=200, random_state=42)
    np.testing.assert_allclose(iso.score_samples(raw), poly["iso_score_samples"], rtol=1e-6, atol=1e-7)
    assert iso.offset_ == pytest.approx(float(poly["iso_offset"]), rel=1e-9)
    np.testing.assert_array_equal(iso.predict(raw) == -1, poly["iso_mask"])


def test_label_rule(poly):
    n = 9216
    masks = np.zeros((len(poly["label_rule_counts"]), n), dtype=np.uint8)
    for i, c in enumerate(poly["label_rule_counts"]):
        masks[i, :c] = 1
    np.testing.assert_array_equal(chunk_labels(masks, 0.0025), poly["label_rule_labels"])


def test_chunks_masks_labels_normalisation_and_pseudo_image(poly):
    raw = poly["raw_points"]
    gtmask = chunk_sequential(poly["iso_mask"], 9216).astype(np.uint8)
    np.testing.assert_array_equal(gtmask, poly["chunk_gtmask"])
    np.testing.assert_array_equal(chunk_labels(gtmask), poly["chunk_labels"])
    norm = normalize_chunks(chunk_sequential(raw, 9216))
    assert norm.dtype == np.float32
    np.testing.assert_array_equal(norm, poly["chunks_norm"])  # bit-exact
    img = to_pseudo_image(norm[:1])[0].numpy()
    np.testing.assert_array_equal(img, poly["c0_pc_img"])


def test_chunk_scan_matches_golden(poly):
    np.testing.assert_array_equal(isolation_forest_mask(poly["raw_points"], 1e-4), poly["iso_mask"])
    sc = chunk_scan(poly["raw_points"], BuildConfig(detector="iso", chunk_size=9216, level="low"))
    np.testing.assert_array_equal(sc.masks, poly["chunk_gtmask"])
    np.testing.assert_array_equal(sc.labels, poly["chunk_labels"])
    np.testing.assert_array_equal(sc.chunks, chunk_sequential(poly["raw_points"], 9216))
    assert sc.n_dropped == len(poly["raw_points"]) % 9216
    assert sc.n_flagged == int(poly["iso_mask"].sum())


# ----------------------------------------------------------------------------- (e) scoring from cos_dist


def test_smoothing_normalisation_and_score_from_golden_distance(poly):
    from cmdr_iad.model.fusion import smooth_with_box_filters

    d = torch.from_numpy(poly["cos_dist"])
    sm = smooth_with_box_filters(d, 5, 1)
    np.testing.assert_allclose(sm.numpy(), poly["cos_map_smoothed"], rtol=1e-5, atol=1e-6)
    amap, norm = normalise_map(sm)
    np.testing.assert_allclose(norm.numpy(), poly["norm"], rtol=1e-5)
    np.testing.assert_allclose(amap.numpy(), poly["anomaly_map"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(amap.amax(dim=(1, 2)).numpy(), poly["image_score"], rtol=1e-5)


def test_metrics_on_golden_maps(poly):
    maps = poly["anomaly_map"]
    gts = poly["chunk_gtmask"].reshape(-1, 96, 96)
    values, reasons = metric_values(poly["chunk_labels"], poly["image_score"], maps, gts)
    assert values["p_auroc"] == pytest.approx(float(poly["pixel_rocauc"]), abs=1e-9)
    np.testing.assert_allclose([values[k] for k in AUPRO_KEYS], poly["au_pros"], atol=1e-12)
    assert np.isnan(poly["image_rocauc"])
    assert values["i_auroc"] is None and "i_auroc" in reasons and "one class" in reasons["i_auroc"]


# ----------------------------------------------------------------------------- (c)-(e) network stages


@pytest.fixture(scope="module")
def golden_model(recipe):
    from cmdr_iad.features.extractor import FeatureExtractor
    from cmdr_iad.features.point_mae import PointMAE
    from cmdr_iad.model.decoders import Decoder3D
    from cmdr_iad.pointcloud.features import feature_config
    from cmdr_iad.pointcloud.model import ScanModel

    cfg = ScanModelConfig(chunk_size=9216, num_group=96, group_size=32, point_mae_bn="running")
    pm = PointMAE(num_group=96, group_size=32)
    recipe.fill_module(pm)
    ext = FeatureExtractor.from_modules(None, pm, feature_config(cfg), "xyz")
    dec = Decoder3D(out_seq_len=9216, feature_dim=1152)
    recipe.fill_module(dec)
    return ScanModel(config=cfg, extractor=ext, decoder=dec.eval())


@pytest.fixture(scope="module")
def golden_run(golden_model, poly):
    """Features of the 4 chunks and every scoring stage, computed once."""
    from cmdr_iad.pointcloud.features import chunk_features, tokens

    f3d = chunk_features(golden_model.extractor, poly["chunks_norm"])
    target = tokens(f3d)
    with torch.no_grad():
        pred = golden_model.decoder(target)
    return {"f3d": f3d, "target": target, "pred": pred,
            "scores": score_chunks(pred, target, 96, box5_passes=1, box7_passes=0),
            "model_scores": golden_model.score_features(f3d)}


@pytest.mark.slow
def test_features_at_c0_pix(golden_run, poly):
    pix = poly["c0_pix"]
    np.testing.assert_allclose(golden_run["target"][0, pix].numpy(), poly["c0_xyz_patch_pix"], **NET)
    mask = golden_run["target"].sum(-1) == 0
    np.testing.assert_array_equal(mask.reshape(-1, 96, 96).numpy(), poly["feature_zero_mask"])


@pytest.mark.slow
def test_decoder_output_at_c0_pix(golden_run, poly):
    pred = golden_run["pred"]
    assert pred.shape == (len(poly["chunks_norm"]), 9216, 1152)
    np.testing.assert_allclose(pred[0, poly["c0_pix"]].numpy(), poly["c0_decoder_pix"], **NET)


@pytest.mark.slow
def test_anomaly_map_stages(golden_run, poly):
    for sc in (golden_run["scores"], golden_run["model_scores"]):  # direct and through ScanModel
        np.testing.assert_array_equal(sc.mask.numpy(), poly["feature_zero_mask"])
        np.testing.assert_allclose(sc.distance.numpy(), poly["cos_dist"], **NET)
        assert (sc.distance.numpy()[poly["feature_zero_mask"]] == 0).all()
        np.testing.assert_allclose(sc.smoothed.numpy(), poly["cos_map_smoothed"], **NET)
        np.testing.assert_allclose(sc.norm.numpy(), poly["norm"], rtol=1e-5)
        np.testing.assert_allclose(sc.anomaly_map.numpy(), poly["anomaly_map"], **NET)
        np.testing.assert_allclose(sc.image_score.numpy(), poly["image_score"], rtol=1e-5)
    values, _ = metric_values(poly["chunk_labels"], golden_run["scores"].image_score.numpy(),
                              golden_run["scores"].anomaly_map.numpy(),
                              poly["chunk_gtmask"].reshape(-1, 96, 96))
    assert values["p_auroc"] == pytest.approx(float(poly["pixel_rocauc"]), abs=1e-4)


def test_build_command_reproduces_golden_chunks(poly, tmp_path, capsys):
    from cmdr_iad.cli import main
    from cmdr_iad.data.pointcloud_io import write_ply

    scans = tmp_path / "ACQ" / "point_cloud" / "scan0"
    scans.mkdir(parents=True)
    write_ply(scans / "PointCloud_merged.ply", poly["raw_points"])
    out = tmp_path / "build"
    assert main(["pointcloud", "build", str(tmp_path / "ACQ"), str(out), "--quiet"]) == 0
    k = len(poly["chunk_labels"])
    assert f"{k} chunks" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(out / "global_gtmask.npy"), poly["chunk_gtmask"])
    np.testing.assert_array_equal(np.load(out / "global_labels.npy"), poly["chunk_labels"])
    norm_all = poly["chunks_norm"]
    for split in ("train", "test"):
        idx = np.load(out / f"{split}_index.npy")
        np.testing.assert_array_equal(np.load(out / f"{split}.npy"), norm_all[idx])
    assert len(np.load(out / "test_index.npy")) == int(np.ceil(0.1 * (poly["chunk_labels"] == 0).sum())) + int(
        poly["chunk_labels"].sum())
