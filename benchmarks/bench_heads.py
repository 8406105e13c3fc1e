"""Where the time goes in the heads and the fusion (paper preset by default), plain vs fast.

For one sample with random features (F3D zero where the generated scan has no point, so the
valid mask is a realistic object silhouette) and random head weights, in eval mode:

- each head on every pixel, the plain ``forward`` + ``fusion.euclid`` (the reference's path);
- the same distance map from the exact fast path (``model.distances.sample_distance_maps``);
- parts: Decoder3D's token-axis Linear, its five transposed convolutions (col2im kernel vs
  matmuls), Decoder2D's trunk (projection + windowed attention), its convolutions and its
  ``reconstruct`` MLP;
- the fusion (``fusion.score``, box filters via ``avg_pool2d``);
- the roofline: per head on the exact path and per encoder, the FLOPs actually executed
  (counted with ``FlopCounterMode``), the time and the achieved GFLOP/s against the in-run
  matmul throughput.

Also the largest difference between the plain and fast maps (must be at float32 rounding level)
and the peak RSS increase of each. Times depend on the machine's load: compare within one run.

    python benchmarks/bench_heads.py
    python benchmarks/bench_heads.py --grid 56 --json heads.json

Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def measure(grid: int = 224, sample_size: int = 800, seed: int = 0,
            valid_fraction: float | None = None) -> dict:
    from cmdr_iad.benchmark import PeakMemory, benchmark_samples, matmul_gflops
    from cmdr_iad.data.transforms import xyz_to_tensor
    from cmdr_iad.model import rows as row_paths
    from cmdr_iad.model.decoders import Decoder2D, Decoder3D
    from cmdr_iad.model.distances import sample_distance_maps
    from cmdr_iad.model.fast import conv_transpose1d_k4s2p1_cl
    from cmdr_iad.model.fusion import euclid, score
    from cmdr_iad.model.mapping import CrossModalMLP
    from cmdr_iad.model.tokens import DenseRows

    torch.manual_seed(seed)
    s = benchmark_samples(1, size=sample_size, seed=seed, valid_fraction=valid_fraction)[0]
    valid = (xyz_to_tensor(s.xyz, grid) != 0).all(0)[None]  # (1, G, G)
    n = grid * grid
    heads = {"map2Dto3D": CrossModalMLP(768, 1152), "map3Dto2D": CrossModalMLP(1152, 768),
             "Dec2D": Decoder2D(768, grid), "Dec3D": Decoder3D(n, 1152)}
    for h in heads.values():
        h.eval()
    f2d = torch.randn(1, 768, grid, grid)
    f3d = torch.randn(1, 1152, grid, grid) * valid[:, None]
    t2, t3 = f2d.flatten(2).transpose(1, 2), f3d.flatten(2).transpose(1, 2)
    mem = PeakMemory("cpu")
    out: dict = {"grid": grid, "valid_fraction": float(valid.float().mean()), "parts": {}, "maps": {}}

    def timed(fn):
        mem.reset()
        base = mem.rss_mb()
        t = time.perf_counter()
        with torch.no_grad():
            r = fn()
        return r, time.perf_counter() - t, mem.peak_mb() - base

    out["matmul_gflops_before"] = matmul_gflops("cpu")
    plain_calls = {"d_map2d": ("map3Dto2D", t3, t2), "d_map3d": ("map2Dto3D", t2, t3),
                   "d_rec2d": ("Dec2D", t2, t2), "d_rec3d": ("Dec3D", t3, t3)}
    fast_groups = {"d_map2d": ["map3Dto2D"], "d_map3d": ["map2Dto3D"], "d_rec2d": ["Dec2D"],
                   "d_rec3d": ["Dec3D"]}
    maps = {}
    for key, (name, src, dst) in plain_calls.items():
        ref, t_plain, m_plain = timed(lambda name=name, src=src, dst=dst: euclid(heads[name](src), dst))
        ref = ref.view(1, grid, grid) * valid
        if key == "d_map2d":  # the two mapping maps share their inputs: time them together
            both, t_fast, m_fast = timed(lambda: sample_distance_maps(
                {k: heads[k] for k in ("map2Dto3D", "map3Dto2D")}, DenseRows(f2d[0]),
                DenseRows(f3d[0]), valid[0]))
            got = both["d_map2d"]
            maps["d_map3d_fast"] = both["d_map3d"]
        elif key == "d_map3d":
            got, t_fast, m_fast = maps.pop("d_map3d_fast"), 0.0, 0.0
        else:
            got, t_fast, m_fast = timed(lambda g=fast_groups[key], key=key: sample_distance_maps(
                {k: heads[k] for k in g}, DenseRows(f2d[0]), DenseRows(f3d[0]), valid[0])[key])
        maps[key] = got
        out["maps"][key] = {"head": name, "plain_s": t_plain, "fast_s": t_fast,
                            "plain_peak_mb": m_plain, "fast_peak_mb": m_fast,
                            "max_abs_diff": float((ref - got).abs().max())}

    d3 = heads["Dec3D"]
    _, t, _ = timed(lambda: d3.projection[0](t3.transpose(1, 2)))
    out["parts"]["Dec3D token Linear, every token"] = t
    _, t, _ = timed(lambda: row_paths._token_linear(d3, t3))
    out["parts"]["Dec3D token Linear, zero tokens skipped"] = t
    with torch.no_grad():
        z = d3.projection(t3.transpose(1, 2))
    _, t, _ = timed(lambda: d3.decoder(z))
    out["parts"]["Dec3D 5 ConvTranspose1d (+BN, GELU), torch kernels"] = t

    def convs_cl():
        h = z.transpose(1, 2)
        for i in (0, 3, 6, 9, 12):
            h = conv_transpose1d_k4s2p1_cl(h, d3.decoder[i].weight, d3.decoder[i].bias)
        return h

    _, t, _ = timed(convs_cl)
    out["parts"]["Dec3D 5 ConvTranspose1d as matmuls (no BN/GELU)"] = t
    d2 = heads["Dec2D"]
    trunk, t, _ = timed(lambda: d2.attn(d2.projection(t2)))
    out["parts"]["Dec2D projection + window attention, every token"] = t
    grid_in = trunk.transpose(1, 2).reshape(1, d2.reduced_dim, grid, grid)
    conv_out, t, _ = timed(lambda: d2.conv_decoder(grid_in))
    out["parts"]["Dec2D 3 ConvTranspose2d (+BN, GELU), every pixel"] = t
    rows = conv_out.flatten(2).transpose(1, 2)
    _, t, _ = timed(lambda: d2.reconstruct(rows))
    out["parts"]["Dec2D reconstruct MLP, every pixel"] = t
    _, t, _ = timed(lambda: d2.reconstruct(rows[valid.view(1, -1)]))
    out["parts"]["Dec2D reconstruct MLP, valid pixels"] = t
    _, t, _ = timed(lambda: score(*(maps[k][None] for k in ("d_map2d", "d_map3d", "d_rec2d", "d_rec3d")), valid))
    out["parts"]["fusion.score (Eq. 7, box filters)"] = t
    out["roofline"] = roofline(heads, f2d, f3d, valid, s, grid)
    out["matmul_gflops_after"] = matmul_gflops("cpu")
    out["plain_total_s"] = sum(m["plain_s"] for m in out["maps"].values())
    out["fast_total_s"] = sum(m["fast_s"] for m in out["maps"].values())
    return out


def _counted(fn) -> tuple[float, int]:
    """(seconds of one call, FLOPs its aten ops executed): timed without the counter, then
    counted in a second call under `torch.utils.flop_counter.FlopCounterMode`."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad():
        t = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t
        with FlopCounterMode(display=False) as counter:
            fn()
    return seconds, int(counter.get_total_flops())


def roofline(heads, f2d, f3d, valid, sample, grid: int) -> dict:
    """Per head (exact valid-pixel path) and per encoder: the FLOPs it actually executes, its
    time and the achieved GFLOP/s (compare with the in-run matmul throughput)."""
    from cmdr_iad import presets
    from cmdr_iad.data.transforms import transform_sample
    from cmdr_iad.features.extractor import FeatureExtractor
    from cmdr_iad.features.points3d import organized_points, point_features
    from cmdr_iad.features.vit import vit_feature_map
    from cmdr_iad.model.distances import sample_distance_maps
    from cmdr_iad.model.tokens import DenseRows

    out = {}
    groups = {"mapping pair": ("map2Dto3D", "map3Dto2D"), "Dec2D": ("Dec2D",), "Dec3D": ("Dec3D",)}
    for name, keys in groups.items():
        sec, fl = _counted(lambda keys=keys: sample_distance_maps(
            {k: heads[k] for k in keys}, DenseRows(f2d[0]), DenseRows(f3d[0]), valid[0]))
        out[name] = {"seconds": sec, "gflop": fl / 1e9, "gflops": fl / 1e9 / sec}
    cfg = presets.get("paper" if grid == 224 else "small", "rgb+xyz")
    ext = FeatureExtractor(cfg.features, "rgb+xyz", random_backbones=True)
    ts = transform_sample(sample, cfg.features)
    rgb, xyz = ts.rgb[None], ts.xyz[None]
    sec, fl = _counted(lambda: vit_feature_map(ext.vit, rgb))
    out["ViT-B/8"] = {"seconds": sec, "gflop": fl / 1e9, "gflops": fl / 1e9 / sec}
    pts, lengths, _ = organized_points(xyz)
    sec, fl = _counted(lambda: point_features(ext.point_mae, pts, lengths, bn=cfg.features.point_mae_bn))
    out["Point-MAE (grouping + network)"] = {"seconds": sec, "gflop": fl / 1e9, "gflops": fl / 1e9 / sec}
    return out


def format_report(r: dict) -> str:
    lines = [f"grid {r['grid']}, valid pixels {100 * r['valid_fraction']:.1f} %, matmul "
             f"{r['matmul_gflops_before']:.0f}/{r['matmul_gflops_after']:.0f} GFLOP/s",
             f"{'map':8} {'head':10} {'plain s':>8} {'fast s':>8} {'plain MB':>9} {'fast MB':>8} {'max |diff|':>10}"]
    for k, m in r["maps"].items():
        fast = "(with d_map2d)" if k == "d_map3d" else f"{m['fast_s']:8.2f}"
        lines.append(f"{k:8} {m['head']:10} {m['plain_s']:8.2f} {fast:>8} {m['plain_peak_mb']:9.0f} "
                     f"{m['fast_peak_mb']:8.0f} {m['max_abs_diff']:10.1e}")
    lines.append(f"{'total':19} {r['plain_total_s']:8.2f} {r['fast_total_s']:8.2f}   "
                 f"speed-up {r['plain_total_s'] / r['fast_total_s']:.2f}x")
    lines.append("parts (s):")
    lines += [f"  {k:55} {v:7.2f}" for k, v in r["parts"].items()]
    if r.get("roofline"):
        mm = max(r["matmul_gflops_before"], r["matmul_gflops_after"])
        lines.append(f"achieved throughput (executed FLOPs / time; matmul peak in this run {mm:.0f} GFLOP/s):")
        for k, v in r["roofline"].items():
            lines.append(f"  {k:32} {v['gflop']:8.1f} GFLOP  {v['seconds']:6.2f} s  {v['gflops']:6.0f} "
                         f"GFLOP/s  {100 * v['gflops'] / mm:4.0f} %")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, default=224)
    ap.add_argument("--sample-size", type=int, default=800)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--valid-fraction", type=float, default=None,
                    help="share of valid pixels of the sample's cloud (default: as generated)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from cmdr_iad.benchmark import configure_threads

    configure_threads(args.threads)
    r = measure(args.grid, args.sample_size, valid_fraction=args.valid_fraction)
    print(format_report(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
