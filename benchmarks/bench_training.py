"""Training cost of one epoch: the reference protocol against ours, measured in one run.

Reference protocol (the authors' training script): every step re-extracts the frozen features
(ViT + Point-MAE + assembly) and runs each of the four heads on every pixel, then the masked
cosine loss, backward and an Adam step per head (batch 1). Ours: the features are extracted once
into the on-disk feature cache (`features.cache.FeatureCache`, read back memory-mapped at every
step), and each head runs its exact valid-pixels path (`model.distances.masked_head_loss`:
token-wise layers on the valid rows only, Decoder3D skipping zero tokens). The loss ignores the
masked rows, so the gradients are those of the reference step up to float rounding
(tests/model/test_fast_paths.py checks it with dropout off).

Both protocols start from the same head weights, in train mode (dropout on, BatchNorm with batch
statistics), on the same generated samples (synthetic scans with the table removed, like the
preprocessed MVTec 3D-AD data). Random backbone weights: time does not depend on the values.
The one-time cache extraction is reported separately, with the ratio it gives over a 50-epoch run.

    python benchmarks/bench_training.py                     # paper preset, 3 samples
    python benchmarks/bench_training.py --preset small --samples 4 --json out.json

Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper", choices=("paper", "small", "tiny"))
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--sample-size", type=int, default=800)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--epochs-for-amortisation", type=int, default=50)
    ap.add_argument("--json", default=None, help="write the figures as JSON")
    args = ap.parse_args(argv)

    from cmdr_iad import presets
    from cmdr_iad.benchmark import (
        PeakMemory,
        benchmark_samples,
        configure_threads,
        grid_valid_fraction,
        machine_info,
        matmul_gflops,
    )
    from cmdr_iad.data.transforms import transform_sample
    from cmdr_iad.features.cache import FeatureCache
    from cmdr_iad.features.extractor import FeatureExtractor
    from cmdr_iad.features.store import sample_key
    from cmdr_iad.model.distances import masked_head_loss
    from cmdr_iad.model.heads import build_heads
    from cmdr_iad.model.losses import masked_similarity_loss
    from cmdr_iad.training import TASKS, make_optimizer

    threads = configure_threads(args.threads)
    cfg = presets.get(args.preset, "rgb+xyz")
    data = benchmark_samples(args.samples, size=args.sample_size, distinct=args.samples)
    vf = grid_valid_fraction(data, cfg.features.grid_size, cfg.features.transforms)
    ts = [transform_sample(s, cfg.features) for s in data]
    ext = FeatureExtractor(cfg.features, "rgb+xyz", random_backbones=True)
    torch.manual_seed(cfg.train.seed)
    h = cfg.heads
    heads0 = build_heads(cfg.modality, cfg.features.grid_size, h.dim2d, h.dim3d, h.num_heads,
                         h.window_size)
    mem = PeakMemory("cpu")

    def tokens(f: torch.Tensor) -> torch.Tensor:
        return f.flatten(2).transpose(1, 2)

    def epoch(kind: str, store=None) -> tuple[float, float, list[float]]:
        heads = copy.deepcopy(heads0).train()
        opts = {n: make_optimizer(h.parameters(), cfg.train) for n, h in heads.items()}
        torch.manual_seed(cfg.train.seed)
        losses = []
        mem.reset()
        t = time.perf_counter()
        for i, s in enumerate(ts):
            if kind == "reference":
                f = ext.extract(s.rgb[None], s.xyz[None])  # re-extracted at every step
                f2d, f3d, valid = f.f2d, f.f3d, f.valid
            else:
                f = store[i].to_features()  # read from the memory-mapped cache entry
                f2d, f3d, valid = f.f2d, f.f3d, f.valid
            tok = {"f2d": tokens(f2d), "f3d": tokens(f3d)}
            v = valid.flatten(1)
            for name, head in heads.items():
                src, dst, _ = TASKS[name]
                if kind == "reference":
                    loss = masked_similarity_loss(head(tok[src]), tok[dst], v)
                else:
                    loss = masked_head_loss(head, tok[src], tok[dst], v)
                if loss is None:
                    continue
                opts[name].zero_grad(set_to_none=True)
                loss.backward()
                opts[name].step()
                losses.append(float(loss.detach()))
        return time.perf_counter() - t, mem.peak_mb(), losses

    with tempfile.TemporaryDirectory(prefix="cmdr-iad-bench-cache-") as tmp:
        cache = FeatureCache(tmp)
        key = ext.cache_key()
        mm_before = matmul_gflops("cpu")
        t = time.perf_counter()
        entries = []
        for s, raw in zip(ts, data, strict=True):
            f = ext.extract(s.rgb[None], s.xyz[None])
            entries.append(cache.put(sample_key(raw), key, f))
        cache_seconds = time.perf_counter() - t
        store = [cache.get(sample_key(raw), key) for raw in data]
        ours_1, ours_peak, ours_losses = epoch("ours", store)
        ref_s, ref_peak, ref_losses = epoch("reference")
        ours_2, _, _ = epoch("ours", store)
        mm_after = matmul_gflops("cpu")
    ours_s = min(ours_1, ours_2)
    e = args.epochs_for_amortisation
    out = {
        "preset": args.preset, "samples": args.samples, "threads": threads, "valid_fraction": vf,
        "reference_epoch_s": ref_s, "ours_epoch_s": ours_s, "ours_epoch_runs_s": [ours_1, ours_2],
        "epoch_speedup": ref_s / ours_s, "cache_extraction_s": cache_seconds,
        f"speedup_over_{e}_epochs_incl_cache": e * ref_s / (cache_seconds + e * ours_s),
        "reference_peak_mb": ref_peak, "ours_peak_mb": ours_peak,
        "first_losses_reference": ref_losses[:4], "first_losses_ours": ours_losses[:4],
        "matmul_gflops": [mm_before, mm_after], "machine": machine_info(torch.device("cpu")),
    }
    print(f"preset {args.preset}, {args.samples} samples (valid pixels {100 * (vf or 0):.0f} %), "
          f"{threads} threads, matmul {mm_before:.0f}/{mm_after:.0f} GFLOP/s")
    print(f"reference epoch (features every step, heads on every pixel): {ref_s:8.1f} s, "
          f"peak {ref_peak:.0f} MB")
    print(f"ours (cached features, valid-pixel heads):                  {ours_s:8.1f} s, "
          f"peak {ours_peak:.0f} MB  (runs {ours_1:.1f} / {ours_2:.1f} s)")
    print(f"epoch speed-up: {ref_s / ours_s:.2f}x; one-time cache extraction {cache_seconds:.1f} s; "
          f"over {e} epochs incl. the cache: {out[f'speedup_over_{e}_epochs_incl_cache']:.2f}x")
    print("first-step losses (dropout active, so equal only in distribution): reference "
          + " ".join(f"{x:.4f}" for x in ref_losses[:4]) + " / ours "
          + " ".join(f"{x:.4f}" for x in ours_losses[:4]))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
