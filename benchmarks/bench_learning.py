"""Does training help? Untrained against trained heads, per fusion variant and defect group.

On one generated category (puck, table plane removed by `preprocess`, random backbones, seed
0, batch 1), a model of ``--preset`` with its feature grid set to ``--grid`` scores the test set
before and after ``--epochs`` of training. Printed, for the fusion variants ``full``,
``mapping_only`` and ``reconstruction_only`` (RGB+3D) and the defect groups the branches can
see (``3d``: bump, dent, crack; ``col``: stain, crack; ``all``): P-AUROC, AUPRO@30 % and
I-AUROC, untrained → trained; the held-out normal error of every head after training (the last
row of ``train_log.csv``); and the share of the 3D support that holds no 3D point at this grid
and at the paper's 224 (the ring the reference's pooled feature mask adds around the object,
`features.points3d.pool_grid`), the effect behind issue 15's RGB+3D numbers.

    python benchmarks/bench_learning.py                       # tiny, grid 32, varied scene
    python benchmarks/bench_learning.py --scene station       # one fixed light and table
    python benchmarks/bench_learning.py --grid 112 --json out.json   # ~25 min on 2 cores

Numbers are printed, never asserted (tests/workflow/test_training_learns.py asserts).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

GROUPS = {"all": None, "3d": ("bump", "dent", "crack"), "col": ("stain", "crack")}
VARIANTS = ("full", "mapping_only", "reconstruction_only")


def ring_share(dataset, features_cfg, grids=(32, 56, 112, 224)) -> dict[int, float]:
    """Per grid: cells of the 3D support (pooled point mask ≠ 0) that hold no 3D point, as a
    share of the support, over ``dataset``."""
    from dataclasses import replace

    from cmdr_iad.data.transforms import transform_sample
    from cmdr_iad.features.points3d import pool_grid

    out = {}
    for g in grids:
        cfg = replace(features_cfg, grid_size=g)
        points = ring = 0
        for i in range(len(dataset)):
            xyz = transform_sample(dataset[i], cfg).xyz
            strict = (xyz != 0).all(dim=0)
            support = pool_grid(strict[None].float())[0] != 0
            points += int(strict.sum())
            ring += int((support & ~strict).sum())
        out[g] = ring / max(1, points + ring)
    return out


def evaluate(det, test, modality: str) -> dict[str, dict[str, dict[str, float]]]:
    """{variant: {group: {p_auroc, aupro_30, i_auroc}}} on the test samples of each group."""
    from cmdr_iad.evaluation import evaluate_detector

    variants = VARIANTS if modality == "rgb+xyz" else ("full",)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for v in variants:
        det.config = det.config.replace(score={"variant": v})
        out[v] = {}
        for g, kinds in GROUPS.items():
            picks = [test[i] for i, k in enumerate(test.keys)
                     if k.split("/")[2] == "good" or kinds is None or k.split("/")[2] in kinds]
            m = evaluate_detector(det, picks, official=False).metrics
            out[v][g] = {k: float(m[k]) for k in ("p_auroc", "aupro_30", "i_auroc")}
    det.config = det.config.replace(score={"variant": "full"})
    return out


def run(args) -> dict:
    from cmdr_iad import CMDRIAD, presets
    from cmdr_iad.data.mvtec3d import MVTec3DDataset
    from cmdr_iad.data.preprocess import preprocess_dataset
    from cmdr_iad.data.synthetic import generate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        raw = generate_dataset(Path(tmp) / "raw", categories=("puck",), n_train=args.train_samples,
                               n_val=4, n_test_good=4, n_test_defect=3, seed=0, scene=args.scene)
        preprocess_dataset(raw, Path(tmp) / "clean", workers=1, progress=False)
        root = Path(tmp) / "clean"
        split = lambda s: MVTec3DDataset(root, "puck", s, require_points=False)  # noqa: E731
        cfg = getattr(presets, args.preset)(args.modality).replace(
            features={"grid_size": args.grid},
            train={"epochs": args.epochs, "batch_size": 1, "seed": 0})
        test = split("test")
        t0 = time.perf_counter()
        det = CMDRIAD(cfg, random_backbones=True, device="cpu")
        before = evaluate(det, test, args.modality)
        report = det.fit(split("train"), split("validation"), cache_dir=Path(tmp) / "cache",
                         progress=False)
        after = evaluate(det, test, args.modality)
        heldout = {k: v for k, v in report.log[-1].items() if k.startswith("heldout_") and v is not None}
        untrained = {k: v for k, v in report.log[0].items() if k.startswith("heldout_") and v is not None}
        rings = ring_share(test, cfg.features, sorted({args.grid, 32, 56, 112, 224}))
        return {"preset": args.preset, "modality": args.modality, "grid": args.grid,
                "scene": args.scene, "epochs": args.epochs, "train_samples": args.train_samples,
                "seconds": time.perf_counter() - t0, "before": before, "after": after,
                "heldout_untrained": untrained, "heldout_trained": heldout, "ring_share": rings}


def render(r: dict) -> str:
    lines = [f"{r['preset']} {r['modality']}, grid {r['grid']}, scene {r['scene']}, "
             f"{r['train_samples']} train samples, {r['epochs']} epochs ({r['seconds']:.0f} s)",
             "held-out normal error, untrained -> trained: " + ", ".join(
                 f"{k[8:]} {r['heldout_untrained'][k]:.3f} -> {v:.3f}" for k, v in r["heldout_trained"].items()),
             "3D support without a point (ring share): " + ", ".join(
                 f"grid {g}: {100 * s:.1f} %" for g, s in r["ring_share"].items()),
             "", "| variant | defects | P-AUROC | AUPRO@30 % | I-AUROC |", "|---|---|---|---|---|"]
    for v, groups in r["before"].items():
        for g, b in groups.items():
            a = r["after"][v][g]
            lines.append(f"| {v} | {g} | " + " | ".join(
                f"{b[m]:.3f} → {a[m]:.3f}" for m in ("p_auroc", "aupro_30", "i_auroc")) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny", choices=("paper", "small", "tiny"))
    ap.add_argument("--modality", default="rgb+xyz", choices=("rgb+xyz", "rgb", "xyz"))
    ap.add_argument("--grid", type=int, default=32, help="feature grid (default 32, the tiny preset's)")
    ap.add_argument("--scene", default="varied", choices=("varied", "station"))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--train-samples", type=int, default=12)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.grid < 8 or args.epochs < 1 or args.train_samples < 1:
        print("bench_learning.py: --grid >= 8, --epochs >= 1 and --train-samples >= 1", file=sys.stderr)
        return 2
    r = run(args)
    print(render(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
