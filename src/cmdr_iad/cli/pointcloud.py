"""`cmdr-iad pointcloud build|train|evaluate|predict|table8`: the 3D-only pipeline for raw scans."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._workflow import require_weight_files
from .common import (
    BN_MODES,
    add_alias,
    add_device,
    add_positional_out,
    add_quiet,
    bars_enabled,
    output_path,
    require_writable,
    resolve_device,
)

_DESCRIPTION = """\
3D-only CMDR-IAD for raw industrial scans (paper §3.6, §4.2): outlier pseudo-labels
(Isolation Forest / LOF / hybrid), sequential chunks of n points, n = s*s pseudo-images,
frozen Point-MAE features and a Decoder3D(n, 1152) reconstruction branch.

  cmdr-iad pointcloud build SCANS_DIR [--out] OUT_DIR [--detector iso|lof|hybrid] [--chunk-size 9216|4096] [--level low|high]
  cmdr-iad pointcloud train BUILD_DIR --out MODEL_DIR [--preset P] [--epochs N] [--random-backbones]
  cmdr-iad pointcloud evaluate MODEL_DIR BUILD_DIR --out REPORT_DIR
  cmdr-iad pointcloud predict MODEL_DIR SCAN_FILE --out DIR
  cmdr-iad pointcloud table8 SCANS_DIR [--out] WORK_DIR [--preset P] [--epochs N]
"""


def _add_backbone(p: argparse.ArgumentParser) -> None:
    p.add_argument("--point-mae-weights", metavar="FILE", default=None,
                   help="Point-MAE pretrain.pth (default: $CMDR_IAD_HOME, ~/.cache/cmdr-iad, or download)")


def _add_train_backbone(p: argparse.ArgumentParser) -> None:
    _add_backbone(p)
    p.add_argument("--random-backbones", action="store_true",
                   help="randomly initialised Point-MAE (testing only; recorded in every output)")
    p.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="on-disk feature cache folder (default: in memory when the features fit "
                        "in 2 GiB, else <weights folder>/features)")
    add_alias(p, "--feature-cache", "--cache-dir", "cache_dir", metavar="DIR")


def _chunk_size(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"chunk size must be an integer, got {text!r}") from None


def register(subparsers) -> None:
    p = subparsers.add_parser("pointcloud", help="3D-only pipeline for raw scans (build, train, evaluate, predict, table8)",
                              description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="pc_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])

    b = sub.add_parser("build", help="pseudo-label, chunk, split and normalise raw scans",
                       description=(
                           "Read every scan of SCANS_DIR (PLY/PCD/XYZ/TXT/NPY files, or the authors' "
                           "point_cloud/<scan>/PointCloud_merged.ply layout), flag outliers, cut "
                           "sequential chunks (tail dropped), label a chunk abnormal when its outlier "
                           "fraction is >= tau, split the normal chunks 90/10 (all abnormal chunks go "
                           "to test), normalise each chunk to [-1, 1] and write the arrays and "
                           "build.json to OUT_DIR."))
    b.add_argument("scans_dir", metavar="SCANS_DIR")
    add_positional_out(b, "out_dir", "OUT_DIR", "build folder to write")
    b.add_argument("--detector", default="iso", choices=("iso", "lof", "hybrid"),
                   help="outlier detector: Isolation Forest, Local Outlier Factor, or their union (default iso)")
    b.add_argument("--chunk-size", type=_chunk_size, default=9216,
                   help="points per chunk: 9216 or 4096 in the paper; any s*s with s a multiple of 8 "
                        "(e.g. 1024 for quick tests) (default 9216)")
    b.add_argument("--level", default="low", choices=("low", "high"),
                   help="contamination level: low 0.0001, high 0.00015 (default low)")
    b.add_argument("--contamination", type=float, default=None,
                   help="explicit contamination in (0, 0.5] (overrides --level)")
    b.add_argument("--tau", type=float, default=0.0025, help="abnormal-chunk threshold on the outlier fraction")
    b.add_argument("--seed", type=int, default=42, help="seed of the Isolation Forest and of the split")
    b.add_argument("--skip-short", action="store_true",
                   help="skip scans shorter than one chunk instead of failing")
    add_quiet(b)
    b.set_defaults(func=run_build)

    t = sub.add_parser("train", help="train Decoder3D on a build's normal training chunks",
                       description=(
                           "Extract frozen Point-MAE features of the training chunks once, train "
                           "Decoder3D(n, 1152) with AdamW and the masked cosine loss, calibrate the "
                           "decision threshold (mean + 3 std of the training image scores) and save "
                           "the model to MODEL_DIR. Presets: paper (96 groups of 32, batch 4, 50 "
                           "epochs, lr 1e-3), small (64x32, 10 epochs), tiny (32x16, 2 epochs)."))
    t.add_argument("build_dir", metavar="BUILD_DIR")
    t.add_argument("--out", required=True, metavar="MODEL_DIR")
    t.add_argument("--preset", default="paper", choices=("paper", "small", "tiny"))
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--point-mae-bn", choices=BN_MODES, default=None,
                   help="Point-MAE BatchNorm: per-sample statistics (reference behaviour, default) "
                        "or running statistics (eval mode)")
    add_alias(t, "--bn", "--point-mae-bn", "point_mae_bn", choices=BN_MODES)
    t.add_argument("--threshold-sigmas", type=float, default=None,
                   help="threshold = mean + k*std of the training image scores (default 3)")
    t.add_argument("--feature-dtype", choices=("float32", "float16"), default=None,
                   help="storage precision of the feature cache")
    t.add_argument("--seed", type=int, default=None, help="seed of the decoder init and shuffling")
    _add_train_backbone(t)
    add_device(t)
    add_quiet(t)
    t.set_defaults(func=run_train)

    e = sub.add_parser("evaluate", help="I-AUROC, P-AUROC, AUPRO, FPS and memory on a build's test chunks",
                       description=(
                           "Score the test chunks of BUILD_DIR with the model of MODEL_DIR and write "
                           "metrics.json (i_auroc, p_auroc, aupro_* as fractions; null with a reason "
                           "when undefined), chunk_scores.csv and anomaly_maps.npy to REPORT_DIR."))
    e.add_argument("model_dir", metavar="MODEL_DIR")
    e.add_argument("build_dir", metavar="BUILD_DIR")
    e.add_argument("--out", required=True, metavar="REPORT_DIR")
    e.add_argument("--batch-size", type=int, default=1, help="chunks per forward pass (default 1, as the paper's FPS)")
    _add_backbone(e)
    add_device(e)
    add_quiet(e)
    e.set_defaults(func=run_evaluate)

    pr = sub.add_parser("predict", help="per-point anomaly scores of a new scan",
                        description=(
                            "Score every point of SCAN_FILE (input order; the tail is covered by one "
                            "chunk aligned to the end of the scan) and write DIR/<stem>_scores.npy, "
                            "DIR/<stem>.ply (coloured by score) and DIR/<stem>.json (per-chunk scores "
                            "and decisions, scan decision, threshold, model identity). With --input "
                            "FOLDER the scans are streamed one at a time: DIR/predictions.jsonl and "
                            ".csv get a line per scan (or its error), a bad scan is recorded and "
                            "skipped (exit 2, one summary line), a rerun skips the scans done."))
    pr.add_argument("model_dir", metavar="MODEL_DIR")
    pr.add_argument("scan_file", metavar="SCAN_FILE", nargs="?", default=None)
    pr.add_argument("--input", metavar="FOLDER", default=None,
                    help="a folder of scans (the layouts `pointcloud build` reads) instead of SCAN_FILE")
    pr.add_argument("--out", required=True, metavar="DIR")
    pr.add_argument("--batch-size", type=int, default=4)
    _add_backbone(pr)
    add_device(pr)
    add_quiet(pr)
    pr.set_defaults(func=run_predict)

    g = sub.add_parser("table8", help="run the paper's Table 8 grid (detector x chunk size x level)",
                       description=(
                           "Build, train and evaluate every cell of the paper's Table 8 (LOF and ISO "
                           "at two chunk sizes and two levels, hybrid at the large size and low level) "
                           "under WORK_DIR/<detector>-<size>-<level>/, then print the table in the "
                           "paper's layout (also written to WORK_DIR/table8.md and table8.json)."))
    g.add_argument("scans_dir", metavar="SCANS_DIR")
    add_positional_out(g, "work_dir", "WORK_DIR", "folder for the builds, models and reports")
    g.add_argument("--preset", default="paper", choices=("paper", "small", "tiny"))
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--chunk-sizes", type=_chunk_size, nargs=2, default=(4096, 9216), metavar=("SMALL", "LARGE"),
                   help="the two chunk sizes (default 4096 9216)")
    g.add_argument("--full", action="store_true", help="also run hybrid at every size and level")
    g.add_argument("--resume", action="store_true", help="reuse cells whose report already exists")
    _add_train_backbone(g)
    add_device(g)
    add_quiet(g)
    g.set_defaults(func=run_table8)


def _log(args: argparse.Namespace):
    return print


def run_build(args: argparse.Namespace) -> int:
    from ..pointcloud.config import BuildConfig
    from ..pointcloud.dataset import build_dataset, summary_text
    from ..progress import progress

    cfg = BuildConfig(detector=args.detector, chunk_size=args.chunk_size, level=args.level,
                      contamination=args.contamination, tau=args.tau, seed=args.seed).validate()
    out_dir = require_writable(output_path(args, "out_dir", "OUT_DIR"), "build folder")
    with progress(None, "scans", enabled=bars_enabled(args)) as bar:
        def on_scan(i: int, total: int, name: str) -> None:
            bar.update(total=total, completed=i, description=f"scan {name}")

        meta = build_dataset(args.scans_dir, out_dir, cfg, skip_short=args.skip_short, on_scan=on_scan)
    c = meta["counts"]
    print(f"built {out_dir}: {len(meta['sources'])} scans, detector {cfg.detector}, level "
          f"{cfg.level} (contamination {cfg.resolved_contamination:g}), chunks of {cfg.chunk_size}")
    print(summary_text(c))
    for s in meta.get("skipped", []):
        print(f"skipped {s['name']}: {s['points']} points < {cfg.chunk_size}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from ..pointcloud.config import model_preset
    from ..pointcloud.dataset import load_build
    from ..pointcloud.train import train_scan_model

    device = resolve_device(args.device)
    require_weight_files(args)
    out = require_writable(args.out, "model folder")
    if args.cache_dir is not None:
        require_writable(args.cache_dir, "feature cache folder")
    data = load_build(args.build_dir)
    cfg = model_preset(args.preset, data.chunk_size)
    changes = {k: v for k, v in {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                                 "point_mae_bn": args.point_mae_bn, "threshold_sigmas": args.threshold_sigmas,
                                 "feature_dtype": args.feature_dtype, "seed": args.seed}.items()
               if v is not None}
    if changes:
        cfg = cfg.replace(**changes)
    train_scan_model(data, out, cfg, point_mae_weights=args.point_mae_weights,
                     random_backbones=args.random_backbones, device=device,
                     feature_cache=args.cache_dir, progress=not args.quiet, log=_log(args))
    if args.random_backbones:
        print("NOTE: trained on random Point-MAE weights (--random-backbones): for testing only")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from ..pointcloud.evaluate import evaluate_scan_model

    device = resolve_device(args.device)
    require_weight_files(args)
    out = require_writable(args.out, "report folder")
    evaluate_scan_model(args.model_dir, args.build_dir, out, device=device,
                        batch_size=args.batch_size, point_mae_weights=args.point_mae_weights,
                        progress=not args.quiet, log=_log(args))
    print(f"wrote {out / 'metrics.json'}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from ..errors import UserInputError
    from ..pointcloud.predict import predict_scan

    device = resolve_device(args.device)
    require_weight_files(args)
    if (args.scan_file is None) == (args.input is None):
        raise UserInputError("give either SCAN_FILE or --input FOLDER")
    out = require_writable(args.out, "output folder")
    if args.input is not None:
        return _predict_folder(args, out, device)
    predict_scan(args.model_dir, args.scan_file, out, device=device,
                 batch_size=args.batch_size, point_mae_weights=args.point_mae_weights, log=_log(args))
    return 0


def _predict_folder(args: argparse.Namespace, out: Path, device) -> int:
    """`pointcloud predict --input FOLDER`: stream the scans one by one (`batch.stream`)."""
    import sys

    from ..artifact import read_metadata
    from ..batch import CSV, JSONL, BatchReport, done_stems, record_failures, stream
    from ..errors import CmdrIadError
    from ..pointcloud.model import load_scan_model
    from ..pointcloud.predict import predict_scan
    from ..pointcloud.scans import find_scans, load_scan

    size = int((read_metadata(args.model_dir).get("config") or {}).get("chunk_size") or 1)
    items = [(r.path.stem, r.path) for r in find_scans(args.input)]
    done = done_stems(out) & {s for s, _ in items} if out.exists() else set()
    bad: dict[str, str] = {}
    for stem, path in items:  # every scan is read once before the model loads
        if stem in done:
            continue
        try:
            load_scan(path, min_points=size)
        except CmdrIadError as e:
            if e.exit_code != 2:
                raise
            bad[stem] = str(e) if str(path) in str(e) else f"{path}: {e}"
    if len(done) == len(items):
        print(f"all {len(items)} scan(s) are already in {out / JSONL}: nothing to do")
        return 0
    if len(bad) + len(done) == len(items):
        record_failures(out, bad)
        print(f"cmdr-iad: error: {BatchReport(skipped=sorted(done), failed=list(bad.items())).summary()}",
              file=sys.stderr)
        return 2
    model = load_scan_model(args.model_dir, device=device, point_mae_weights=args.point_mae_weights)

    def one(stem: str, path: Path) -> dict:
        rec = predict_scan(model, path, out, batch_size=args.batch_size, log=None)
        return {"files": [f"{stem}_scores.npy", f"{stem}.ply", f"{stem}.json"],
                "score": rec["scan_score"], "is_anomalous": rec["anomalous"],
                "threshold": rec["threshold"]}

    report = stream(items, out, one, show_progress=bars_enabled(args), known_bad=bad)
    print(f"{len(report.scored)} scored, {len(report.skipped)} already done, {len(report.failed)} "
          f"failed → {out / JSONL}, {out / CSV}")
    line = report.summary()
    if line:
        print(f"cmdr-iad: error: {line}", file=sys.stderr)
        return 2
    return 0


def run_table8(args: argparse.Namespace) -> int:
    from ..pointcloud.table8 import format_table8
    from ..pointcloud.table8 import run_table8 as run

    device = resolve_device(args.device)
    require_weight_files(args)
    work_dir = require_writable(output_path(args, "work_dir", "WORK_DIR"), "work folder")
    if args.cache_dir is not None:
        require_writable(args.cache_dir, "feature cache folder")
    rows = run(args.scans_dir, work_dir, preset=args.preset, epochs=args.epochs,
               chunk_sizes=tuple(args.chunk_sizes), full=args.full,
               point_mae_weights=args.point_mae_weights, random_backbones=args.random_backbones,
               device=device, feature_cache=args.cache_dir,
               resume=args.resume, progress=not args.quiet, log=_log(args))
    print(format_table8(rows))
    return 0 if any(r["error"] is None for r in rows) else 1
