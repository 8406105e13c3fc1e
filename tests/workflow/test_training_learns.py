"""Training learns: on generated, preprocessed data (table plane removed), with a fixed seed,

* the held-out normal loss of every head falls during training (`TrainReport.log`, the rows of
  `train_log.csv`), and
* trained heads beat the untrained ones (same seed, not fitted) on P-AUROC and AUPRO@30 % for
  the defects their branch can see, by at least `MARGIN[modality]`: the 3D defects (bump, dent,
  crack) for `xyz`, the colour defects (stain, crack) for `rgb`.

Measured on this data (12 train samples, tiny preset, random backbones, head seed 0, batch 1,
10 epochs), with the smoothing scaled to the 32×32 grid (`ScoreConfig.smoothing = "grid"`),
untrained → trained P-AUROC / AUPRO@30 %: xyz 0.881 → 0.906 / 0.579 → 0.648; rgb 0.193 → 0.951 /
0.004 → 0.651. Each margin is about half of the measured gain.

Before the smoothing was scaled (the reference's chains in pixels: σ ≈ 6 px, 19 % of a 32-pixel
grid) the blur turned object-vs-background contrast into a high untrained P-AUROC and hid what
the heads learn: rgb 0.908 → 0.917 although the unsmoothed d_rec2d inside the object went from
0.18 to 0.84 AUROC (issue 15 note). On raw clouds (table plane kept, every pixel valid)
training loses; the heads learn the plane.

RGB+3D (slow): the held-out errors fall, but with random backbones the fused map does not gain
on the 3D defects (`benchmarks/bench_learning.py` gives every number below):

* the 3D support the reference's pooled feature mask adds around the object (cells without a
  3D point) is 41 % of the support at this 32-cell grid (28 % at 56, 16 % at 112, 8 % at the
  paper's 224), and the trained d_map3d is highest there (mean 0.23 against 0.14 on the object);
* random Point-MAE features barely vary (held-out cosine errors 0.007-0.016), and the 2D→3D
  mapping error does not flag 3D defects (AUROC 0.46 against normal object cells), so
  A_map = α·d_map2d·d_map3d does not help on them even at grid 112 (station scene): full
  fusion 0.934 → 0.915 P-AUROC on the 3D defects, 0.925 → 0.953 on the colour defects,
  reconstruction alone 0.934 → 0.954 on the 3D ones;
* a mapping that can be learnt does not change this: with `scene="station"` (one fixed light and
  table) the held-out map3Dto2D error falls to 0.046 (0.18 with varied scenes), the fused
  P-AUROC on the 3D defects still falls (0.876 → 0.786).

That test checks that the held-out errors fall and that the model's reconstruction branch
(A_rec) beats the untrained one on both defect kinds by `REC_MARGIN`, then xfails naming the
fused numbers while that gain is missing, and asserts it once it is there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cmdr_iad import CMDRIAD, presets
from cmdr_iad.data.mvtec3d import MVTec3DDataset
from cmdr_iad.evaluation import evaluate_detector

VISIBLE = {"xyz": ("bump", "dent", "crack"), "rgb": ("stain", "crack"), "rgb+xyz": None}
EPOCHS = 10
MARGIN = {"xyz": {"p_auroc": 0.012, "aupro_30": 0.035},
          "rgb": {"p_auroc": 0.3, "aupro_30": 0.3},
          "rgb+xyz": {"p_auroc": 0.01, "aupro_30": 0.02}}
# A_rec of the RGB+3D model, untrained → trained, measured: 3D defects P-AUROC 0.878 → 0.911,
# AUPRO@30 % 0.580 → 0.781; colour defects 0.866 → 0.957, 0.592 → 0.887 (half of each gain)
REC_MARGIN = {"3d": {"p_auroc": 0.015, "aupro_30": 0.1},
              "colour": {"p_auroc": 0.045, "aupro_30": 0.15}}


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory) -> Path:
    """12 train, 4 validation, 4 good + 3 per defect type test samples, table plane removed."""
    from cmdr_iad.data.preprocess import preprocess_dataset
    from cmdr_iad.data.synthetic import generate_dataset

    tmp = tmp_path_factory.mktemp("learns")
    raw = generate_dataset(tmp / "raw", categories=("puck",), n_train=12, n_val=4, n_test_good=4,
                           n_test_defect=3, seed=0)
    preprocess_dataset(raw, tmp / "clean", workers=1, progress=False)
    return tmp / "clean"


def _split(root: Path, split: str) -> MVTec3DDataset:
    return MVTec3DDataset(root, "puck", split, require_points=False)


def _train_and_compare(root: Path, cache: Path, modality: str, seed: int = 0):
    """(metrics before, metrics after, train report) on the test samples the branch can see."""
    cfg = presets.tiny(modality).replace(train={"epochs": EPOCHS, "batch_size": 1, "seed": seed})
    test = _split(root, "test")
    kinds = VISIBLE[modality]
    picks = [test[i] for i, k in enumerate(test.keys)
             if k.split("/")[2] == "good" or kinds is None or k.split("/")[2] in kinds]
    det = CMDRIAD(cfg, random_backbones=True, device="cpu")
    before = evaluate_detector(det, picks).metrics
    report = det.fit(_split(root, "train"), _split(root, "validation"), cache_dir=cache,
                     progress=False)
    after = evaluate_detector(det, picks).metrics
    return before, after, report, det


def _assert_heldout_falls(report, det) -> None:
    """Below 80 % of the untrained level (log row "epoch 0") and lower than after epoch 1."""
    untrained, first, last = report.log[0], report.log[1], report.log[-1]
    assert untrained["epoch"] == 0
    names = [k for k in untrained if k.startswith("heldout_") and untrained[k] is not None]
    assert len(names) == len(det.heads)
    for k in names:
        assert last[k] < 0.8 * untrained[k], (k, untrained[k], last[k])
        assert last[k] < first[k], (k, first[k], last[k])


def _assert_beats(before, after, modality: str) -> None:
    for m, margin in MARGIN[modality].items():
        assert after[m] - before[m] > margin, (modality, m, before[m], after[m])


def test_trained_3d_heads_beat_untrained_ones(clean_root, tmp_path):
    before, after, report, det = _train_and_compare(clean_root, tmp_path / "cache", "xyz")
    assert report.valid_fraction < 0.6  # preprocessed: the table is gone
    _assert_heldout_falls(report, det)
    _assert_beats(before, after, "xyz")


@pytest.mark.slow
def test_trained_rgb_heads_beat_untrained_ones_on_colour_defects(clean_root, tmp_path):
    before, after, report, det = _train_and_compare(clean_root, tmp_path / "cache", "rgb")
    _assert_heldout_falls(report, det)
    _assert_beats(before, after, "rgb")


def _branch_metrics(det, root: Path, variant: str) -> dict[str, dict[str, float]]:
    """{defect group: metrics} of fusion ``variant`` on the good + that group's test samples."""
    test = _split(root, "test")
    keep = det.config
    det.config = det.config.replace(score={"variant": variant})
    try:
        return {g: evaluate_detector(det, [test[i] for i, k in enumerate(test.keys)
                                           if k.split("/")[2] in ("good", *kinds)]).metrics
                for g, kinds in (("3d", VISIBLE["xyz"]), ("colour", VISIBLE["rgb"]))}
    finally:
        det.config = keep


@pytest.mark.slow
def test_rgb_xyz_heldout_falls_but_no_fused_gain_with_random_backbones(clean_root, tmp_path):
    cfg = presets.tiny("rgb+xyz").replace(train={"epochs": EPOCHS, "batch_size": 1, "seed": 0})
    det = CMDRIAD(cfg, random_backbones=True, device="cpu")
    test = list(_split(clean_root, "test"))
    before, rec_before = evaluate_detector(det, test).metrics, _branch_metrics(
        det, clean_root, "reconstruction_only")
    report = det.fit(_split(clean_root, "train"), _split(clean_root, "validation"),
                     cache_dir=tmp_path / "cache", progress=False)
    after, rec_after = evaluate_detector(det, test).metrics, _branch_metrics(
        det, clean_root, "reconstruction_only")
    _assert_heldout_falls(report, det)
    # the reconstruction branch of the RGB+3D model (A_rec, Eq. 7 without A_map) learns both kinds
    for g, kind in REC_MARGIN.items():
        for m, margin in kind.items():
            assert rec_after[g][m] - rec_before[g][m] > margin, (g, m, rec_before[g][m], rec_after[g][m])
    if after["p_auroc"] - before["p_auroc"] <= MARGIN["rgb+xyz"]["p_auroc"]:
        pytest.xfail(f"rgb+xyz: no fused P-AUROC gain with random backbones "
                     f"({before['p_auroc']:.3f} -> {after['p_auroc']:.3f}), see the module docstring")
    _assert_beats(before, after, "rgb+xyz")
