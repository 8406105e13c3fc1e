"""Feature store size and speed: the compact store (`features.cache.CompactCache`) against the
dense one (`features.cache.FeatureCache`), measured in one run.

1. Bytes on disk per paper-size sample (G=224, ViT input 224, 1024 Point-MAE groups) at 20 / 60 /
   95 % valid pixels, float32 and float16 compact entries, and the dense entry (its size does not
   depend on the valid fraction; written once, at 60 %).
2. Rebuild time per sample (compact entry → dense F2D + F3D, float32) and the float16 deviation.
3. One paper-preset training epoch (`training.train_heads`, batch 1) on a few samples from the
   compact store (maps rebuilt per batch; with and without prefetch) and from the dense store
   (memory-mapped dense maps), with a bit-identity check of the trained heads.

Clouds: generated scans resampled to the grid, then `data.synthetic.cloud_with_valid_fraction`
keeps exactly the requested share of grid points (a compact object around the centre). Random
backbone weights (`random_backbones=True`): sizes and times do not depend on the values.

    python benchmarks/bench_store.py                 # paper preset, 3 training samples
    python benchmarks/bench_store.py --preset small --samples 2 --json out.json

Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class DenseStore:
    """`training.FeatureStore` over dense `FeatureCache` entries (today's store)."""

    def __init__(self, entries, modality: str):
        self.entries, self.modality = entries, modality

    def __len__(self) -> int:
        return len(self.entries)

    def valid(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.entries[i].valid, dtype=bool))

    def batch(self, indices):
        es = [self.entries[i] for i in indices]
        return {"f2d": torch.from_numpy(np.stack([np.asarray(e.f2d, dtype=np.float32) for e in es])),
                "f3d": torch.from_numpy(np.stack([np.asarray(e.f3d, dtype=np.float32) for e in es])),
                "valid": torch.from_numpy(np.stack([np.array(e.valid, dtype=bool) for e in es]))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper", choices=("paper", "small", "tiny"))
    ap.add_argument("--samples", type=int, default=3, help="training samples for the epoch")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.6, 0.95])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the figures as JSON")
    args = ap.parse_args(argv)

    from cmdr_iad import presets
    from cmdr_iad.benchmark import configure_threads
    from cmdr_iad.config import TrainConfig
    from cmdr_iad.data.synthetic import SHAPES, cloud_with_valid_fraction, synth_sample
    from cmdr_iad.data.transforms import rgb_to_tensor, xyz_to_tensor
    from cmdr_iad.features.cache import CompactCache, FeatureCache
    from cmdr_iad.features.compact import Tokens2D, compact_nbytes
    from cmdr_iad.features.extractor import FeatureExtractor
    from cmdr_iad.features.store import CachedSampleStore, SampleEntry, array_key
    from cmdr_iad.model.heads import build_heads
    from cmdr_iad.training import train_heads

    threads = configure_threads(args.threads)
    cfg = presets.get(args.preset, "rgb+xyz")
    fc = cfg.features
    g = fc.grid_size
    ext = FeatureExtractor(fc, "rgb+xyz", random_backbones=True)
    kv, kp = ext.encoder_key("vit"), ext.encoder_key("point_mae")

    def make(i: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
        s = synth_sample(SHAPES[i % len(SHAPES)], seed=(0, i), size=(max(g, 256), max(g, 256)))
        grid = xyz_to_tensor(s.xyz, g, fc.transforms).permute(1, 2, 0).numpy()
        xyz = torch.from_numpy(cloud_with_valid_fraction(grid, fraction)).permute(2, 0, 1).contiguous()
        return rgb_to_tensor(s.rgb, fc.rgb_size), xyz

    out: dict = {"preset": args.preset, "grid": g, "threads": threads, "sizes": [], "epoch": {}}
    print(f"preset {args.preset} (G={g}, ViT input {fc.rgb_size}, {fc.num_group} groups), "
          f"{threads} threads")
    with tempfile.TemporaryDirectory(prefix="cmdr-iad-bench-store-") as tmp:
        root = Path(tmp)
        c32, c16 = CompactCache(root / "c32"), CompactCache(root / "c16", dtype="float16")
        dense = FeatureCache(root / "dense")
        train_entries, dense_entries = [], []
        fractions = sorted(set(args.fractions) | {0.6})
        rebuild_s, dev16 = [], {"f2d": 0.0, "f3d": 0.0}
        for fi, frac in enumerate(fractions):
            n_here = args.samples if frac == 0.6 else 1
            for j in range(n_here):
                rgb, xyz = make(j if frac == 0.6 else 100 + fi, frac)
                t = time.perf_counter()
                full = ext.extract(rgb[None], xyz[None])
                t_dense_extract = time.perf_counter() - t
                low = ext.extract_tokens(rgb[None])[0]
                pts = ext.extract_points(xyz[None])[0]
                k2, k3 = array_key(rgb.numpy()), array_key(xyz.numpy())
                e32 = SampleEntry(k3, c32.put("vit", kv, k2, Tokens2D(low)), c32.put("point_mae", kp, k3, pts), g)
                e16 = SampleEntry(k3, c16.put("vit", kv, k2, Tokens2D(low)), c16.put("point_mae", kp, k3, pts), g)
                if j == 0:
                    b32 = _folder_bytes(c32.entry_path("vit", kv, k2)) + _folder_bytes(c32.entry_path("point_mae", kp, k3))
                    b16 = _folder_bytes(c16.entry_path("vit", kv, k2)) + _folder_bytes(c16.entry_path("point_mae", kp, k3))
                    row = {"valid_points": pts.interp.num_points / (g * g),
                           "valid_pixels": float(full.valid.float().mean()),
                           "compact_f32_bytes": b32, "compact_f16_bytes": b16,
                           "estimate_bytes": compact_nbytes(g, tokens=fc.rgb_size // 8, num_group=fc.num_group,
                                                            valid_fraction=pts.interp.num_points / (g * g))}
                    out["sizes"].append(row)
                times = []
                for _ in range(3):
                    t = time.perf_counter()
                    b = CachedSampleStore([e32], "rgb+xyz").batch([0])
                    times.append(time.perf_counter() - t)
                rebuild_s.append(statistics.median(times))
                assert torch.equal(b["f2d"], full.f2d) and torch.equal(b["f3d"], full.f3d), "rebuild differs"
                h = CachedSampleStore([e16], "rgb+xyz").batch([0])
                for name in ("f2d", "f3d"):
                    ref = getattr(full, name)
                    dev16[name] = max(dev16[name], float((h[name] - ref).abs().max() / ref.abs().max()))
                if frac == 0.6:
                    train_entries.append(e32)
                    dense_entries.append(dense.put(k3, ext.cache_key(), full))
                    if j == 0:
                        out["dense_bytes"] = _folder_bytes(dense_entries[-1].path)
                        out["dense_extract_s"] = t_dense_extract
                del full, b, h
        out["rebuild_s_per_sample"] = statistics.median(rebuild_s)
        out["float16_max_rel_dev"] = dev16

        print(f"bytes per sample (dense store: {out['dense_bytes'] / 1e6:.1f} MB at any fraction):")
        for r in out["sizes"]:
            print(f"  {100 * r['valid_points']:5.1f} % valid points ({100 * r['valid_pixels']:5.1f} % valid "
                  f"pixels): compact f32 {r['compact_f32_bytes'] / 1e6:6.2f} MB "
                  f"({out['dense_bytes'] / r['compact_f32_bytes']:5.0f}x smaller), "
                  f"f16 {r['compact_f16_bytes'] / 1e6:6.2f} MB")
        print(f"rebuild (compact f32 → dense F2D + F3D): {out['rebuild_s_per_sample']:.3f} s per sample "
              f"(bit-identical to extraction: checked); float16 entries: max relative deviation "
              f"F2D {dev16['f2d']:.1e}, F3D {dev16['f3d']:.1e}")

        tcfg = TrainConfig(**{**cfg.train.__dict__, "epochs": 1})
        hcfg = cfg.heads
        stores = {"dense": DenseStore(dense_entries, "rgb+xyz"),
                  "compact, prefetch": CachedSampleStore(train_entries, "rgb+xyz"),
                  "compact, no prefetch": CachedSampleStore(train_entries, "rgb+xyz")}
        states = {}
        for name, store in stores.items():
            torch.manual_seed(tcfg.seed)
            heads = build_heads("rgb+xyz", g, hcfg.dim2d, hcfg.dim3d, hcfg.num_heads, hcfg.window_size)
            t = time.perf_counter()
            train_heads(dict(heads.items()), store, tcfg, progress=False,
                        prefetch=name != "compact, no prefetch")
            out["epoch"][name] = time.perf_counter() - t
            states[name] = {f"{n}.{k}": v for n, m in heads.items() for k, v in m.state_dict().items()}
        same = all(all(torch.equal(states["dense"][k], s[k]) for k in s) for s in states.values())
        out["epoch_heads_identical"] = same
        print(f"one training epoch, {len(train_entries)} samples at 60 % valid points, batch {tcfg.batch_size}:")
        for name, s in out["epoch"].items():
            print(f"  {name:<22} {s:7.1f} s")
        print(f"  trained heads bit-identical across the three: {same}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
