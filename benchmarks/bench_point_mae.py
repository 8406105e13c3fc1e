"""Time and memory of the 3D feature path (Point-MAE), stage by stage, at the paper size.

Input: a synthetic organised 224×224 cloud with ~29k valid points (dome in metres, zero outside
an off-centre ellipse, a few holes), or `--npz FILE` with a (3, H, W) array `pc`. Model:
PointMAE(1024, 128) with seeded random weights (timing does not depend on the values).

Stages: FPS (torch loop, the library's path, vs `fpsample.fps_sampling` when installed, with an
exactness check on a regular grid), kNN, Point-MAE forward (bn="sample" and "running"),
3-NN interpolation + scatter, pooling/assembly, and the whole `xyz_feature_map`. Peak memory:
process max RSS growth on CPU, `torch.cuda.max_memory_allocated` on CUDA.

    python benchmarks/bench_point_mae.py [--device cuda] [--repeats 3] [--threads 2] [--batch 1]

Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time

import numpy as np
import torch

from cmdr_iad.features import geometry as G
from cmdr_iad.features.point_mae import PointMAE
from cmdr_iad.features.points3d import (
    interpolate_to_grid,
    organized_points,
    pool_grid,
    xyz_feature_map,
)


def synthetic_cloud(b: int, size: int = 224, seed: int = 0) -> torch.Tensor:
    """(B, 3, size, size) dome, ~58% valid pixels (≈29k at 224), with holes and dropouts."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.linspace(-0.045, 0.045, size)
    y, x = torch.meshgrid(v, v, indexing="ij")
    clouds = []
    for i in range(b):
        z = 0.087 - 2.0 * (x**2 + y**2) + 5e-5 * torch.randn(size, size, generator=gen)
        pc = torch.stack([x + 2e-5 * torch.randn(size, size, generator=gen),
                          y + 2e-5 * torch.randn(size, size, generator=gen), z])
        inside = ((x - 0.01) / 0.041) ** 2 + ((y + 0.003 * i) / 0.036) ** 2 <= 1
        inside &= (x - 0.0) ** 2 + (y - 0.01) ** 2 > 0.004**2
        inside &= torch.rand(size, size, generator=gen) > 0.002
        pc[:, ~inside] = 0
        clouds.append(pc)
    return torch.stack(clouds)


CPU_TIMES: list[float] = []  # process CPU seconds of the last `timed` call (median)


def timed(fn, repeats: int, device: torch.device) -> tuple[float, object]:
    """Median wall seconds of `fn()` over repeats (CUDA synchronised) and its last result;
    the median process CPU time is appended to CPU_TIMES."""
    out, times, cpu = None, [], []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    CPU_TIMES.append(statistics.median(cpu))
    return statistics.median(times), out


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--npz", default=None, help="npz file holding a (3,H,W) array 'pc'")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = PointMAE().eval().to(device)
    if args.npz:
        xyz = torch.from_numpy(np.load(args.npz)["pc"])[None].repeat(args.batch, 1, 1, 1)
    else:
        xyz = synthetic_cloud(args.batch)
    xyz = xyz.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base_rss = rss_mib()
    xyz_feature_map(model, xyz, bn="sample")  # first: the peak below is the library's own
    if device.type == "cuda":
        peak = f"peak CUDA memory allocated: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
    else:
        peak = f"peak RSS growth: {rss_mib() - base_rss:.0f} MiB (process peak {rss_mib():.0f} MiB)"
    peak += " for one xyz_feature_map(bn='sample') call, input and model excluded"

    points, lengths, pix = organized_points(xyz)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"threads {torch.get_num_threads()}, device {device}, batch {args.batch}, "
          f"valid points {lengths.tolist()}, grid {tuple(xyz.shape[2:])}")
    rows = []
    r = args.repeats
    t, center_idx = timed(lambda: G.farthest_point_sample(points, 1024, lengths), r, device)
    rows.append(("FPS torch loop (library path)", t))
    try:
        import fpsample
    except ImportError:
        fpsample = None
    if fpsample is not None:
        pts0 = points[0, : lengths[0]].cpu().numpy()
        t, fp = timed(lambda: fpsample.fps_sampling(pts0, 1024, start_idx=0), r,
                      torch.device("cpu"))
        same = bool((fp == center_idx[0].cpu().numpy()).all())
        rows.append((f"FPS fpsample (sample 0; same indices: {same})", t))
        ii, jj = torch.meshgrid(torch.arange(60.0), torch.arange(60.0), indexing="ij")
        grid = torch.stack([ii, jj, torch.ones_like(ii)], -1).reshape(1, -1, 3)
        ours = G.farthest_point_sample(grid, 200)[0].numpy()
        theirs = fpsample.fps_sampling(grid[0].numpy(), 200, start_idx=0)
        print(f"regular-grid tie check: fpsample equals the reference rule: "
              f"{bool((ours == theirs).all())}")
    centres = G.gather_points(points, center_idx)
    t, knn_idx = timed(lambda: G.knn(points, centres, 128, lengths), r, device)
    rows.append(("kNN (1024 x 128)", t))
    nb = G.gather_points(points, knn_idx) - centres.unsqueeze(2)
    with torch.no_grad():
        t, feats = timed(lambda: model(nb, centres, bn="sample"), r, device)
        rows.append(("Point-MAE forward, bn=sample", t))
        t, _ = timed(lambda: model(nb, centres, bn="running"), r, device)
        rows.append(("Point-MAE forward, bn=running", t))

    c, (h, w) = feats.shape[1], xyz.shape[2:]

    def interpolate() -> torch.Tensor:
        return torch.stack([
            interpolate_to_grid(feats[i], points[i, : lengths[i]], centres[i], pix[i, : lengths[i]],
                                h * w).view(c, h, w)
            for i in range(points.shape[0])])

    t, grid_maps = timed(interpolate, r, device)
    rows.append(("3-NN interpolation + scatter", t))
    t, _ = timed(lambda: [pool_grid(g) for g in grid_maps], r, device)
    rows.append(("pool 3x3 + adaptive (pool_grid)", t))
    t, _ = timed(lambda: torch.nn.functional.adaptive_avg_pool2d(
        torch.nn.functional.avg_pool2d(grid_maps, 3, 1), (h, w)), r, device)
    rows.append(("  same, torch pooling modules", t))
    grid_maps = None

    splits = []
    for bn in ("sample", "running"):
        stages: dict[str, float] = {}

        def whole(bn: str = bn, stages: dict[str, float] = stages) -> object:
            return xyz_feature_map(model, xyz, bn=bn, timings=stages)

        t, _ = timed(whole, r, device)
        rows.append((f"xyz_feature_map, bn={bn}", t))
        splits.append(f"  bn={bn} stages (s/call): "
                      + ", ".join(f"{k} {v / r:.3f}" for k, v in stages.items()))

    width = max(len(name) for name, _ in rows)
    print(f"{'stage':<{width}}  {'wall ms':>9}  {'cpu ms':>9}  (batch {args.batch})")
    for (name, t), cpu in zip(rows, CPU_TIMES, strict=True):
        print(f"{name:<{width}}  {t * 1000:9.1f}  {cpu * 1000:9.1f}")
    print("\n".join(splits))
    print(peak)


if __name__ == "__main__":
    main()
