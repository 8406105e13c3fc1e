"""`cmdr-iad train`: train a detector on one category of an MVTec-3D-AD-layout dataset.

Order of work, so that bad input fails fast (exit 2, one line on stderr, nothing written):
options and device → output writable → config (preset or --config FILE, then explicit flags) →
folder structure → every file of the splits read once (`data.validate.check_split`) → only then
the backbones, feature extraction and training.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from ..config import MODALITIES
from ..presets import PRESETS
from .common import BN_MODES, add_device, add_quiet, add_units, add_weights, resolve_device

# = cmdr_iad.model.fusion.VARIANTS (spelled out so that `--help` does not import torch; a test
# keeps the two equal)
TRAIN_VARIANTS = ("full", "case1", "case2", "case3", "case4", "case5", "case6",
                  "reconstruction_only", "mapping_only", "rgb_only", "xyz_only")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train the CMDR-IAD heads on the normal samples of one category",
        description="Extract frozen features once (cached), train the mapping and reconstruction "
                    "heads independently (one optimiser each), calibrate the decision threshold on "
                    "the validation split and save one self-describing model folder (its "
                    "model.json holds the resolved config, reusable with --config).")
    p.add_argument("data_root", metavar="DATA_ROOT", help="dataset root in the MVTec 3D-AD layout")
    p.add_argument("--category", required=True, help="category folder under DATA_ROOT")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="JSON detector config (the \"config\" of a saved model.json, or that object "
                        "alone); explicit flags override it")
    p.add_argument("--modality", default=None, choices=MODALITIES, help="default rgb+xyz")
    p.add_argument("--preset", default=None, choices=PRESETS,
                   help="paper (default): the paper's setup; small / tiny: reduced sizes for CPU work")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="model folder to write")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--batch-size", type=int, default=None, help="override the preset's batch size")
    p.add_argument("--lr", type=float, default=None, help="override the learning rate")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16", "fp16"),
                   help="precision of the heads' forward in training: fp32 (default, exact), bf16 "
                        "(autocast; CUDA or a CPU with native bf16, else fp32 with a note), fp16 "
                        "(CUDA only); weights and optimiser state stay fp32")
    p.add_argument("--seed", type=int, default=None, help="seed of head init and shuffling")
    p.add_argument("--variant", default=None, choices=TRAIN_VARIANTS,
                   help="fusion variant used for scoring (default: full)")
    p.add_argument("--point-mae-bn", default=None, choices=BN_MODES,
                   help="Point-MAE BatchNorm mode (default: the preset's)")
    p.add_argument("--threshold-quantile", type=float, default=1.0,
                   help="quantile of the normal validation scores used as threshold (default 1 = max)")
    p.add_argument("--no-validation", action="store_true",
                   help="do not use the validation split (threshold from the training samples)")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="feature cache folder (default: <weights folder>/features; see "
                        "`cmdr-iad cache info`)")
    p.add_argument("--feature-dtype", choices=("float32", "float16"), default="float32",
                   help="precision of the cached features (float16 halves the cache and rounds "
                        "the features; default float32, exact)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint of an interrupted run with the same settings")
    add_units(p)
    add_device(p)
    add_quiet(p)
    add_weights(p)
    p.set_defaults(func=run)


def load_config_file(path: Path):
    """`DetectorConfig` from a JSON file: a model.json (its "config") or a bare config object."""
    from ..config import DetectorConfig
    from ..errors import ConfigError

    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: unreadable config file ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file holds one JSON object")
    try:
        return DetectorConfig.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def resolve_config(args: argparse.Namespace):
    """Preset (or --config FILE), then every explicitly given flag on top."""
    from .. import presets
    from ..errors import ConfigError

    if args.config is not None:
        if args.preset is not None:
            raise ConfigError(f"{args.config}: give --config or --preset, not both")
        cfg = load_config_file(Path(args.config))
        if args.modality is not None and args.modality != cfg.modality:
            cfg = cfg.replace(modality=args.modality)
    else:
        cfg = presets.get(args.preset or "paper", args.modality or "rgb+xyz")
    train = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size),
                               ("lr", args.lr), ("seed", args.seed),
                               ("precision", args.precision)) if v is not None}
    changes: dict = {"train": train} if train else {}
    if args.variant:
        changes["score"] = {"variant": args.variant}
    if args.point_mae_bn:
        changes["features"] = {"point_mae_bn": args.point_mae_bn}
    try:
        return cfg.replace(**changes) if changes else cfg.validate()
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"invalid option: {e}") from None


def run(args) -> int:
    from ..data.mvtec3d import MVTec3DDataset
    from ..data.validate import check_split
    from ._workflow import (
        RANDOM_NOTICE,
        loud,
        require_model_out,
        require_path,
        require_weight_files,
        say,
    )
    from .common import require_writable

    device = resolve_device(args.device)
    root = require_path(args.data_root, "dataset root")
    out = require_model_out(args.out)
    require_weight_files(args)
    cache_dir = None
    if args.cache_dir:
        cache_dir = require_writable(args.cache_dir, "feature cache folder")
    cfg = resolve_config(args)
    if cfg.train.precision == "fp16" and not str(device).startswith("cuda"):
        from ..errors import UserInputError

        raise UserInputError("--precision fp16 is only offered on CUDA; use bf16 on CPU")
    kw = {"load_rgb": cfg.uses_rgb, "load_xyz": cfg.uses_xyz, "require_points": False,
          "units": args.units}
    train_ds = MVTec3DDataset(root, args.category, "train", **kw)
    val_ds = None
    if not args.no_validation and (root / args.category / "validation").is_dir():
        val_ds = MVTec3DDataset(root, args.category, "validation", **kw)
    t_check = time.perf_counter()
    for ds in (train_ds, val_ds):
        if ds is not None:
            check_split(ds, need_points=cfg.uses_xyz)
    t_check = time.perf_counter() - t_check
    if cache_dir is None:
        from ..features.weights import download_dir

        cache_dir = download_dir() / "features"
    # heavy (timm, the networks): imported once the input is known good
    from ..detector import CMDRIAD

    if args.random_backbones:
        loud(RANDOM_NOTICE)
    det = CMDRIAD(cfg, dino_weights=args.dino_weights, point_mae_weights=args.point_mae_weights,
                  random_backbones=args.random_backbones, device=device)
    ckpt = out.parent / f".{out.name}.checkpoint"
    say(args, f"training {cfg.modality} / preset {cfg.preset} on {root / args.category}: "
              f"{len(train_ds)} train, {0 if val_ds is None else len(val_ds)} validation samples "
              f"(all files checked in {t_check:.1f} s), {cfg.train.epochs} epochs, batch "
              f"{cfg.train.batch_size}, device {det.device}")
    t0 = time.perf_counter()
    report = det.fit(train_ds, val_ds, cache_dir=cache_dir, checkpoint=ckpt, resume=args.resume,
                     progress=not args.quiet, threshold_quantile=args.threshold_quantile,
                     log=lambda m: say(args, m), feature_dtype=args.feature_dtype)
    det.info.update({"category": args.category, "data_root": str(root.resolve()),
                     "units": args.units, "config_file": args.config,
                     "train_seconds": time.perf_counter() - t0})
    det.save(out)
    shutil.rmtree(ckpt, ignore_errors=True)
    thr = ", ".join(f"{b} {t:.4f}" for b, t in det.thresholds.items())
    say(args, f"saved model to {out} (thresholds: {thr}; {report.skipped_no_valid} sample(s) "
              f"without valid 3D points skipped)")
    if det.random_backbones:
        loud(RANDOM_NOTICE)
    return 0
