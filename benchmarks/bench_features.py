"""Per-sample feature-extraction time and peak memory (paper preset by default).

Splits one sample's extraction into ViT / FPS / kNN / Point-MAE / interpolation / assembly
(assembly = valid-point selection, scatter to the grid, 3×3 + adaptive pooling, valid mask
and the bilinear upsampling of the ViT map) and reports the peak memory of the whole
extraction. Backbones hold seeded "recipe-like" random weights (`random_backbones=True`):
timing and memory do not depend on the values. The input is a synthetic organised cloud of
about 30k valid points (like an MVTec 3D-AD object) and a random normalised image.

    python benchmarks/bench_features.py                       # paper preset, CPU
    python benchmarks/bench_features.py --device cuda --repeats 10
    python benchmarks/bench_features.py --preset small --batch-size 4

Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch


def synthetic_cloud(b: int, g: int, seed: int = 0) -> torch.Tensor:
    """(B,3,G,G) dome in metres, zero outside an off-centre ellipse (~58% valid pixels)."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.linspace(-0.05, 0.05, g)
    y, x = torch.meshgrid(v, v, indexing="ij")
    out = []
    for i in range(b):
        z = 0.08 - 2.0 * (x**2 + y**2) + 2e-5 * torch.randn(g, g, generator=gen)
        pc = torch.stack([x + 1e-5 * torch.randn(g, g, generator=gen), y + 1e-3 * i, z])
        inside = ((x - 0.005) / 0.048) ** 2 + (y / 0.04) ** 2 <= 1
        pc[:, ~inside] = 0
        out.append(pc)
    return torch.stack(out)


class PeakMemory:
    """Peak resident memory (CPU, Linux VmHWM reset per measurement) or peak CUDA allocation."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.proc = Path("/proc/self/status")
        self.can_reset = Path("/proc/self/clear_refs").exists()

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.can_reset:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            except OSError:
                self.can_reset = False
        self.base = self.current()

    def current(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / 2**20
        return self._status("VmRSS")

    def peak(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.can_reset:
            return self._status("VmHWM")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # since process start

    def _status(self, field: str) -> float:
        for line in self.proc.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_once(ex, rgb, xyz, device) -> dict[str, float]:
    """One extraction, timed per stage. FPS and kNN are timed on their own (same calls as in
    the pipeline) to split the pipeline's "fps+knn" stage; the total is the real extraction."""
    from cmdr_iad.features.geometry import farthest_point_sample, gather_points, knn
    from cmdr_iad.features.points3d import organized_points, xyz_feature_map
    from cmdr_iad.features.vit import upsample_feature_map, vit_feature_map

    t: dict[str, float] = {}
    g = ex.cfg.grid_size
    with torch.no_grad():
        sync(device)
        t0 = time.perf_counter()
        if ex.vit is not None:
            fmap = vit_feature_map(ex.vit, rgb)
            sync(device)
            t1 = time.perf_counter()
            t["vit"] = t1 - t0
            upsample_feature_map(fmap, g)
            sync(device)
            t["upsample"] = time.perf_counter() - t1
        if ex.point_mae is not None:
            stages: dict[str, float] = {}
            sync(device)
            t2 = time.perf_counter()
            xyz_feature_map(ex.point_mae, xyz, bn=ex.cfg.point_mae_bn, timings=stages)
            sync(device)
            t["xyz_total"] = time.perf_counter() - t2
            t.update(stages)
            # split fps+knn with the same calls on the same points
            points, lengths, _ = organized_points(xyz)
            sync(device)
            t3 = time.perf_counter()
            idx = farthest_point_sample(points, ex.point_mae.num_group, lengths)
            sync(device)
            t4 = time.perf_counter()
            knn(points, gather_points(points, idx), ex.point_mae.group_size, lengths)
            sync(device)
            t["fps"], t["knn"] = t4 - t3, time.perf_counter() - t4
        t["total"] = time.perf_counter() - t0
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="paper", choices=("paper", "small", "tiny"))
    ap.add_argument("--modality", default="rgb+xyz", choices=("rgb+xyz", "rgb", "xyz"))
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up run")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--bn", choices=("sample", "running"), default=None,
                    help="Point-MAE BatchNorm mode (default: the preset's)")
    args = ap.parse_args(argv)

    import dataclasses

    from cmdr_iad import presets
    from cmdr_iad.features.extractor import FeatureExtractor

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = presets.get(args.preset, args.modality).features
    if args.bn:
        cfg = dataclasses.replace(cfg, point_mae_bn=args.bn)
    mem = PeakMemory(device)
    mem.reset()
    ex = FeatureExtractor(cfg, args.modality, random_backbones=True, seed=0, device=device)
    b, g, s = args.batch_size, cfg.grid_size, cfg.rgb_size
    rgb = torch.randn(b, 3, s, s, generator=torch.Generator().manual_seed(1)).to(device)
    xyz = synthetic_cloud(b, g).to(device)
    n_valid = (xyz != 0).all(1).flatten(1).sum(1).tolist()
    loaded = mem.current()  # process memory with models and inputs in place
    mem.reset()
    ex.extract(rgb if ex.uses_rgb else None, xyz if ex.uses_xyz else None)  # warm-up
    peak = mem.peak()
    run_once(ex, rgb, xyz, device)
    runs = []
    for _ in range(args.repeats):
        full = time.perf_counter()
        ex.extract(rgb if ex.uses_rgb else None, xyz if ex.uses_xyz else None)
        sync(device)
        full = time.perf_counter() - full
        r = run_once(ex, rgb, xyz, device)
        r["extract"] = full
        runs.append(r)

    def med(k: str) -> float:
        vals = [r[k] for r in runs if k in r]
        return statistics.median(vals) if vals else float("nan")

    rows = [("ViT (forward, 12 blocks)", med("vit"))]
    if ex.uses_xyz:
        rows += [("FPS", med("fps")), ("kNN grouping", med("knn")),
                 ("Point-MAE (forward)", med("point_mae")),
                 ("3-NN interpolation + scatter", med("interpolation"))]
    assembly = (med("assembly") if ex.uses_xyz else 0.0) + (med("upsample") if ex.uses_rgb else 0.0)
    rows.append(("assembly (select, pool, mask, upsample)", assembly))

    print(f"cmdr-iad feature extraction benchmark — preset {args.preset}, modality {args.modality}")
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}, python {sys.version.split()[0]}")
    print(f"grid {g}×{g}, RGB {s}×{s}, Point-MAE {cfg.num_group}×{cfg.group_size}, "
          f"bn={cfg.point_mae_bn}, batch {b}, valid points {n_valid}, "
          f"median of {args.repeats} runs after 1 warm-up")
    print(f"\n{'stage':<42}{'s / batch':>11}{'s / sample':>12}")
    for name, sec in rows:
        if ex.uses_rgb or name != "ViT (forward, 12 blocks)":
            print(f"{name:<42}{sec:>11.3f}{sec / b:>12.3f}")
    print(f"{'sum of stages':<42}{sum(v for _, v in rows):>11.3f}{sum(v for _, v in rows) / b:>12.3f}")
    print(f"{'extract() end to end':<42}{med('extract'):>11.3f}{med('extract') / b:>12.3f}")
    kind = "CUDA allocated" if device.type == "cuda" else "CPU resident set (VmHWM)"
    print(f"\npeak memory of extract(): {peak:.0f} MiB {kind}; with models and inputs loaded "
          f"before: {loaded:.0f} MiB → extraction working memory {peak - loaded:.0f} MiB")
    out_mb = b * (768 + 1152) * g * g * 4 / 2**20
    print(f"output F2D+F3D float32: {out_mb:.0f} MiB per batch ({out_mb / b:.0f} MiB per sample)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
