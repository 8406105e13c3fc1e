"""`cmdr-iad benchmark`: time per sample, FPS, peak memory, FLOPs and matmul efficiency."""

from __future__ import annotations

import argparse
import json

from ..errors import UserInputError
from .common import add_device, add_weights, require_writable


def _head_mode(value: str) -> str:
    """``--heads``: ``fast`` is the old spelling of ``exact`` (kept for one release)."""
    return "exact" if value == "fast" else value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "benchmark",
        help="time and memory per sample (the paper's Table 4 protocol)",
        description=(
            "Average time per sample over N generated test samples, from the raw arrays through "
            "the transforms, encoders, heads and fusion to the anomaly score (CMDRIAD.predict_many, "
            "synchronised on CUDA), peak memory (CPU peak RSS / CUDA max allocated), FLOPs of the "
            "full architecture and the achieved share of the in-run fp32 matmul throughput. Each "
            "configuration runs in a fresh process."),
    )
    p.add_argument("--preset", default="paper", choices=("paper", "small", "tiny"))
    p.add_argument("--modality", default="rgb+xyz", choices=("rgb+xyz", "rgb", "xyz"))
    p.add_argument("--samples", type=int, default=5, help="timed samples (default 5)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--heads", default="exact", type=_head_mode, choices=("exact", "reference", "both"),
                   help="the exact head path (heads at valid pixels only; default), the reference "
                        "every-pixel path, or both")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="fp32 = exact; bf16/fp16 autocast (fp16 on CUDA only), deviation reported")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the token-wise head layers (slow to compile on few cores)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: physical cores, or OMP_NUM_THREADS if set)")
    p.add_argument("--stages", action="store_true",
                   help="also time transforms / features / heads / fusion separately")
    p.add_argument("--sample-size", type=int, default=800,
                   help="side of the generated raw samples in pixels (default 800, as MVTec 3D-AD)")
    p.add_argument("--valid-fraction", type=float, default=None, metavar="F",
                   help="give each generated cloud this share of valid pixels, 0 < F <= 1 (e.g. "
                        "0.58; preprocessed MVTec 3D-AD samples are typically 0.3-0.6; default: "
                        "the scans as generated, ~0.17)")
    p.add_argument("--in-process", action="store_true",
                   help="measure in this process (peak memory then includes what ran before)")
    p.add_argument("--json", metavar="FILE", default=None,
                   help="also write the results as JSON to FILE ('-' = stdout)")
    add_device(p)
    add_weights(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..benchmark import format_table, run, run_isolated
    from .common import resolve_device

    if args.samples < 1:
        raise UserInputError(f"--samples must be >= 1, got {args.samples}")
    if args.batch_size < 1:
        raise UserInputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise UserInputError(f"--threads must be >= 1, got {args.threads}")
    if args.valid_fraction is not None and not 0.0 < args.valid_fraction <= 1.0:
        raise UserInputError(f"--valid-fraction must be in (0, 1], got {args.valid_fraction}")
    out = None
    if args.json not in (None, "-"):  # checked before any of the (long) work
        out = require_writable(args.json, "JSON file", folder=False)
    device = str(resolve_device(args.device))
    if not args.random_backbones and not (args.dino_weights or args.point_mae_weights):
        from ..features.weights import DINO, POINT_MAE, find_weights

        need = []
        if args.modality != "xyz":
            need.append(DINO)
        if args.modality != "rgb":
            need.append(POINT_MAE)
        if any(find_weights(spec) is None for spec in need):
            raise UserInputError("pretrained backbone weights were not found; pass --random-backbones "
                                 "(timing and memory do not depend on the weight values) or the "
                                 "weight files")
    modes = ("reference", "exact") if args.heads == "both" else (args.heads,)
    results = []
    for heads in modes:
        kw = dict(preset=args.preset, modality=args.modality, samples=args.samples,
                  batch_size=args.batch_size, device=device,
                  random_backbones=bool(args.random_backbones), heads=heads,
                  precision=args.precision, compile=bool(args.compile), threads=args.threads,
                  sample_size=args.sample_size, valid_fraction=args.valid_fraction, stages=bool(args.stages),
                  dino_weights=args.dino_weights, point_mae_weights=args.point_mae_weights)
        results.append(run(**kw) if args.in_process else run_isolated(**kw))
    print(format_table(results))
    for r in results:
        if r.stages:
            print(f"stages ({r.heads}), s/sample: " + ", ".join(f"{k} {v:.3f}" for k, v in r.stages.items()))
        if r.deviation:
            print(f"deviation from the exact path ({r.precision}): " +
                  ", ".join(f"{k} {v:.2e}" for k, v in r.deviation.items()))
        for n in r.notes:
            print(f"note: {n}")
    if len(results) == 2:
        ref, fast = results
        print(f"speed-up of the exact head path over the reference path: "
              f"{ref.seconds_per_sample / fast.seconds_per_sample:.2f}x; "
              f"peak memory {ref.peak_memory_mb:.0f} → {fast.peak_memory_mb:.0f} MB")
    if results[0].random_backbones:
        print("note: random backbone weights (timing and memory do not depend on the values)")
    if args.json is not None:
        payload = [r.to_dict() for r in results]
        record = payload[0] if len(payload) == 1 else payload
        if out is None:
            print(json.dumps(record, indent=2))
        else:
            from ..fileio import write_json_atomic

            write_json_atomic(out, record, sort_keys=False)
            print(f"wrote {out}")
    return 0
