"""Reduced precision against exact fp32, measured in one run: time and deviation.

1. Speed: `cmdr-iad benchmark` (`cmdr_iad.benchmark.run_isolated`, one fresh process each) at
   the paper preset, RGB+3D, random backbones, clouds with ``--valid-fraction`` valid pixels,
   ``--precision fp32`` and ``--precision bf16``: both times per sample, the ratio and the peak
   memory. Where the CPU has no native bf16 (neither AMX nor AVX-512 BF16) the bf16 run is
   fp32 with a note, and the script says so: emulated bf16 is not what a user would run.
2. Deviation (`cmdr_iad.deviation.precision_deviation`): a model of ``--deviation-preset``
   (default tiny) trained on generated data (``--epochs``, random backbones) scores the
   generated test set in fp32 and in bf16; printed: the max relative map difference, the score
   differences, the Spearman correlation of the image scores and the I-AUROC / P-AUROC /
   AUPRO@30 % deltas, against the acceptance bounds (±0.5 points, Spearman ≥ 0.999). Without
   native bf16 the bf16 numerics are emulated (slow, same numbers).

    python benchmarks/bench_precision.py                       # 58 % valid, 3 samples
    python benchmarks/bench_precision.py --valid-fraction 0.2 --json out.json
    python benchmarks/bench_precision.py --skip-deviation

Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def speed(args) -> dict:
    from cmdr_iad.benchmark import run_isolated

    out = {}
    for p in ("fp32", "bf16"):
        print(f"benchmark paper rgb+xyz {p} at {100 * args.valid_fraction:.0f} % valid ...", flush=True)
        out[p] = run_isolated(preset="paper", modality="rgb+xyz", samples=args.samples,
                              random_backbones=True, precision=p, threads=args.threads,
                              valid_fraction=args.valid_fraction, stages=True).to_dict()
    return out


def deviation(args) -> dict:
    from cmdr_iad import CMDRIAD, presets
    from cmdr_iad.data.mvtec3d import MVTec3DDataset
    from cmdr_iad.data.preprocess import preprocess_dataset
    from cmdr_iad.data.synthetic import generate_dataset
    from cmdr_iad.deviation import precision_deviation

    with tempfile.TemporaryDirectory() as tmp:
        raw = generate_dataset(Path(tmp) / "raw", categories=("puck",), n_train=args.train_samples,
                               n_val=2, n_test_good=args.test_good, n_test_defect=args.test_defect,
                               seed=0)
        preprocess_dataset(raw, Path(tmp) / "clean", workers=1, progress=False)
        root = Path(tmp) / "clean"
        split = lambda s: MVTec3DDataset(root, "puck", s, require_points=False)  # noqa: E731
        cfg = getattr(presets, args.deviation_preset)("rgb+xyz").replace(
            train={"epochs": args.epochs, "batch_size": 1, "seed": 0})
        det = CMDRIAD(cfg, random_backbones=True, device="cpu")
        print(f"training a {args.deviation_preset} rgb+xyz model ({args.epochs} epochs, "
              f"{args.train_samples} samples) ...", flush=True)
        det.fit(split("train"), split("validation"), progress=False)
        test = split("test")
        print(f"scoring {len(test)} test samples in fp32 and bf16 ...", flush=True)
        return precision_deviation(det, test, "bf16", emulate=True, say=lambda m: print(f"note: {m}"))


def report(res: dict) -> None:
    from cmdr_iad.deviation import ACCEPT, within_bounds
    from cmdr_iad.precision import precision_support

    sup = precision_support("cpu")
    if "speed" in res:
        a, b = res["speed"]["fp32"], res["speed"]["bf16"]
        m = a["machine"]
        print(f"\nCPU: {m.get('cpu')}, torch kernels {m.get('cpu_capability')}, native bf16: "
              f"{sup['bf16_feature'] or 'none (no AMX, no AVX-512 BF16)'}; {a['threads']} threads")
        print(f"valid pixels {100 * a['valid_fraction']:.1f} %")
        for r in (a, b):
            print(f"  {r['precision']:>4}: {r['seconds_per_sample']:.2f} s/sample, peak "
                  f"{r['peak_memory_mb']:.0f} MB, heads {r['stages'].get('heads', 0):.2f} s, features "
                  f"{r['stages'].get('features', 0):.2f} s" + "".join(f"  [{n}]" for n in r["notes"]))
        ratio = a["seconds_per_sample"] / b["seconds_per_sample"]
        if b["precision"] == "bf16":
            print(f"  bf16 speed-up over fp32: {ratio:.2f}x")
        else:
            print(f"  no native bf16 on this CPU: the bf16 run fell back to fp32 (time ratio "
                  f"{ratio:.2f}, the same computation); no bf16 speed can be measured here")
    if "deviation" in res:
        d = res["deviation"]
        print(f"\ndeviation of {d['precision']} from fp32 ({d['n']} test samples, trained model):")
        print(f"  max relative map difference {d['map_max_rel']:.2e}; score max |Δ| "
              f"{d['score_max_abs']:.2e} (relative {d['score_max_rel']:.2e}); Spearman "
              f"{d['spearman']:.5f}; 3D support identical: {d['valid_equal']}; smallest relative "
              f"gap between two fp32 scores {d['score_min_rel_gap']:.1e}")
        for k, v in d["delta_points"].items():
            print(f"  {k}: {100 * d['metrics_fp32'][k]:.2f} → {100 * d['metrics_reduced'][k]:.2f} "
                  f"({v:+.3f} points)")
        broken = within_bounds(d)
        print(f"  acceptance (±{ACCEPT['max_delta_points']} points, Spearman ≥ "
              f"{ACCEPT['min_spearman']}): " + ("within" if not broken else "; ".join(broken)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--valid-fraction", type=float, default=0.58)
    ap.add_argument("--samples", type=int, default=3, help="timed samples per precision")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--deviation-preset", default="tiny", choices=("paper", "small", "tiny"),
                    help="preset of the trained model (default tiny: emulated bf16 on a CPU without "
                         "native bf16 runs ~6x slower than fp32; small takes ~25 s per test sample)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--train-samples", type=int, default=8)
    ap.add_argument("--test-good", type=int, default=9, help="good test samples (default 9)")
    ap.add_argument("--test-defect", type=int, default=4,
                    help="test samples per defect type (default 4: 25 test samples, enough that "
                         "one swapped pair keeps Spearman above 0.999)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-deviation", action="store_true")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--from-json", default=None, help="print an earlier --json file, no re-run")
    args = ap.parse_args(argv)
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
    else:
        res = {}
        if not args.skip_speed:
            res["speed"] = speed(args)
        if not args.skip_deviation:
            res["deviation"] = deviation(args)
    report(res)
    if args.json and not args.from_json:
        from cmdr_iad.fileio import write_json_atomic

        write_json_atomic(Path(args.json), res, sort_keys=False)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
