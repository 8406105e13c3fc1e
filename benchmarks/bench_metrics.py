"""Time the evaluation metrics on a set the size of the MVTec 3D-AD test set.

Generates 1,197 random 224x224 anomaly maps and masks (about 2/3 of the images carry 1-3
elliptical defects) and prints the wall time of ``au_pro`` (99 thresholds and exact),
``pro_curve`` (exact, full curve) and ``pixel_auroc``. Not a test; run it by hand:

    python benchmarks/bench_metrics.py [--images 1197] [--size 224] [--noise-masks P] [--sklearn]

``--noise-masks P`` replaces the defects by salt noise (each pixel anomalous with probability
P): millions of tiny regions, a stress case far from real test sets.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cmdr_iad.metrics import au_pro, pixel_auroc, pro_curve


def make_set(
    n: int, size: int, noise: float | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Random maps ``(n, size, size)`` float32 and boolean masks with elliptical defects."""
    rng = np.random.default_rng(seed)
    if noise is not None:
        return rng.random((n, size, size), dtype=np.float32), rng.random((n, size, size)) < noise
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        if i % 3 == 0:  # good image
            continue
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, size, 2)
            ry, rx = rng.uniform(2, size / 8, 2)
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    maps = rng.random((n, size, size), dtype=np.float32)
    maps += masks * rng.uniform(-0.2, 1.0, (n, 1, 1)).astype(np.float32)
    return maps, masks


def timed(label: str, fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    print(f"{label:<34s} {time.perf_counter() - start:7.2f} s   {np.round(out, 4)}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1197)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--noise-masks", type=float, default=None, metavar="P")
    parser.add_argument("--sklearn", action="store_true", help="also time sklearn roc_auc_score")
    args = parser.parse_args()

    start = time.perf_counter()
    maps, masks = make_set(args.images, args.size, args.noise_masks)
    print(
        f"{args.images} maps of {args.size}x{args.size} ({maps.size / 1e6:.1f}M pixels, "
        f"{masks.mean():.2%} anomalous), generated in {time.perf_counter() - start:.1f} s"
    )
    timed("au_pro, 99 thresholds", au_pro, maps, masks)
    timed("au_pro, 1000 thresholds", au_pro, maps, masks, num_thresholds=1000)
    timed("au_pro, exact", au_pro, maps, masks, num_thresholds=None)
    curve = timed("pro_curve, exact (full curve)", lambda: len(pro_curve(maps, masks, None).fprs))
    del curve
    timed("au_pro, 99 thresholds, list input", au_pro, list(maps), list(masks))
    timed("pixel_auroc", pixel_auroc, maps, masks)
    if args.sklearn:
        from sklearn.metrics import roc_auc_score

        timed("sklearn roc_auc_score", roc_auc_score, masks.reshape(-1), maps.reshape(-1))


if __name__ == "__main__":
    main()
