"""`cmdr-iad train`: train a detector on one category of an MVTec-3D-AD-layout dataset."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from ..config import MODALITIES
from ..presets import PRESETS
from .common import add_device, add_quiet, add_weights, resolve_device


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train the CMDR-IAD heads on the normal samples of one category",
        description="Extract frozen features once (cached), train the mapping and reconstruction "
                    "heads independently (one optimiser each), calibrate the decision threshold on "
                    "the validation split and save one self-describing model folder.")
    p.add_argument("data_root", metavar="DATA_ROOT", help="dataset root in the MVTec 3D-AD layout")
    p.add_argument("--category", required=True, help="category folder under DATA_ROOT")
    p.add_argument("--modality", default="rgb+xyz", choices=MODALITIES)
    p.add_argument("--preset", default="paper", choices=PRESETS,
                   help="paper: the paper's setup; small / tiny: reduced sizes for CPU work")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="model folder to write")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--batch-size", type=int, default=None, help="override the preset's batch size")
    p.add_argument("--lr", type=float, default=None, help="override the learning rate")
    p.add_argument("--seed", type=int, default=None, help="seed of head init and shuffling")
    p.add_argument("--variant", default=None, help="fusion variant used for scoring (default: full)")
    p.add_argument("--point-mae-bn", default=None, choices=("sample", "running"),
                   help="Point-MAE BatchNorm mode (default: the preset's)")
    p.add_argument("--threshold-quantile", type=float, default=1.0,
                   help="quantile of the normal validation scores used as threshold (default 1 = max)")
    p.add_argument("--no-validation", action="store_true",
                   help="do not use the validation split (threshold from the training samples)")
    p.add_argument("--cache-dir", default=None,
                   help="feature cache folder (default: <weights folder>/features)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint of an interrupted run with the same settings")
    add_device(p)
    add_quiet(p)
    add_weights(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import presets
    from ..data.mvtec3d import MVTec3DDataset
    from ..detector import CMDRIAD
    from ..errors import UserInputError
    from ._workflow import RANDOM_NOTICE, check_writable_parent, loud, require_path, say

    root = require_path(args.data_root, "dataset root")
    out = Path(args.out)
    check_writable_parent(out)
    cfg = presets.get(args.preset, args.modality)
    train = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size),
                               ("lr", args.lr), ("seed", args.seed)) if v is not None}
    changes: dict = {"train": train} if train else {}
    if args.variant:
        changes["score"] = {"variant": args.variant}
    if args.point_mae_bn:
        changes["features"] = {"point_mae_bn": args.point_mae_bn}
    if changes:
        cfg = cfg.replace(**changes)
    if args.variant:
        from ..model.fusion import VARIANTS

        if args.variant not in VARIANTS:
            raise UserInputError(f"unknown --variant {args.variant!r}; choose one of {', '.join(VARIANTS)}")
    kw = {"load_rgb": cfg.uses_rgb, "load_xyz": cfg.uses_xyz, "require_points": False}
    train_ds = MVTec3DDataset(root, args.category, "train", **kw)
    val_ds = None
    if not args.no_validation and (root / args.category / "validation").is_dir():
        val_ds = MVTec3DDataset(root, args.category, "validation", **kw)
    if args.cache_dir:
        cache_dir = Path(args.cache_dir)
    else:
        from ..features.weights import download_dir

        cache_dir = download_dir() / "features"
    if args.random_backbones:
        loud(RANDOM_NOTICE)
    det = CMDRIAD(cfg, dino_weights=args.dino_weights, point_mae_weights=args.point_mae_weights,
                  random_backbones=args.random_backbones, device=resolve_device(args.device))
    ckpt = out.parent / f".{out.name}.checkpoint"
    say(args, f"training {cfg.modality} / preset {cfg.preset} on {root / args.category}: "
              f"{len(train_ds)} train, {0 if val_ds is None else len(val_ds)} validation samples, "
              f"{cfg.train.epochs} epochs, batch {cfg.train.batch_size}, device {det.device}")
    t0 = time.perf_counter()
    report = det.fit(train_ds, val_ds, cache_dir=cache_dir, checkpoint=ckpt, resume=args.resume,
                     progress=not args.quiet, threshold_quantile=args.threshold_quantile,
                     log=lambda m: say(args, m))
    det.info.update({"category": args.category, "data_root": str(root.resolve()),
                     "train_seconds": time.perf_counter() - t0})
    det.save(out)
    shutil.rmtree(ckpt, ignore_errors=True)
    thr = ", ".join(f"{b} {t:.4f}" for b, t in det.thresholds.items())
    say(args, f"saved model to {out} (thresholds: {thr}; {report.skipped_no_valid} sample(s) "
              f"without valid 3D points skipped)")
    if det.random_backbones:
        loud(RANDOM_NOTICE)
    return 0
