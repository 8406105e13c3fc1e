"""Training learns: on generated, preprocessed data (table plane removed), with a fixed seed,

* the held-out normal loss of every head falls during training (`TrainReport.log`, the rows of
  `train_log.csv`), and
* trained 3D heads beat the untrained ones (same seed, not fitted) on P-AUROC and AUPRO@30 %
  for the 3D defects (bump, dent, crack), by at least `MARGIN`.

Measured on this data (12 train samples, tiny preset, random backbones, head seed 0),
trained − untrained P-AUROC / AUPRO@30 %: batch 1, 10 epochs +0.017 / +0.051; batch 1,
3 epochs +0.017 / +0.016; batch 4, 20 epochs +0.013 / +0.019 (seed 1: +0.013 / +0.021);
batch 4, 3 epochs −0.027 / −0.054. `MARGIN` is about half of the gain at batch 1, 10 epochs.
On raw clouds (table plane kept, every pixel valid) training loses: −0.03 / −0.05 at batch 1,
10 epochs; the heads learn the plane (issue 15).

RGB and RGB+3D (slow, ~4 min): with a random ViT no P-AUROC gain was measured at batch 1,
10 epochs (rgb 0.908 → 0.911, rgb+xyz 0.942 → 0.900). Those tests check that the held-out errors
fall, then xfail (naming the numbers) while the gain is missing and assert it once it is there.
A measurement for the RGB branch (issue 15 note): its Dec2D trained on the object pixels only
(the 3D mask, as the authors' loop trains Dec2D) gives 0.948 → 0.953, on every pixel 0.948 → 0.928.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cmdr_iad import CMDRIAD, presets
from cmdr_iad.data.mvtec3d import MVTec3DDataset
from cmdr_iad.evaluation import evaluate_detector

VISIBLE = {"xyz": ("bump", "dent", "crack"), "rgb": ("stain", "crack"), "rgb+xyz": None}
EPOCHS = 10
MARGIN = {"p_auroc": 0.008, "aupro_30": 0.025}


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
    for m, margin in MARGIN.items():
        assert after[m] - before[m] > margin, (modality, m, before[m], after[m])


def test_trained_3d_heads_beat_untrained_ones(clean_root, tmp_path):
    before, after, report, det = _train_and_compare(clean_root, tmp_path / "cache", "xyz")
    assert report.valid_fraction < 0.6  # preprocessed: the table is gone
    _assert_heldout_falls(report, det)
    _assert_beats(before, after, "xyz")


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["rgb", "rgb+xyz"])
def test_rgb_branches_heldout_falls_but_no_gain_with_random_vit(clean_root, tmp_path, modality):
    before, after, report, det = _train_and_compare(clean_root, tmp_path / "cache", modality)
    _assert_heldout_falls(report, det)
    if after["p_auroc"] - before["p_auroc"] <= MARGIN["p_auroc"]:
        pytest.xfail(f"{modality}: no P-AUROC gain with a random ViT "
                     f"({before['p_auroc']:.3f} -> {after['p_auroc']:.3f}), see the module docstring")
    _assert_beats(before, after, modality)
