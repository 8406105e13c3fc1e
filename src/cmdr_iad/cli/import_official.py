"""`cmdr-iad import-official`: turn the authors' four per-class `.pth` files into a model folder."""

from __future__ import annotations

from .common import (
    BN_MODES,
    add_alias,
    add_device,
    add_quiet,
    add_units,
    add_weights,
    resolve_device,
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import-official", help="import the authors' per-class head checkpoints (paper preset)",
        description="Read map2Dto3D_/map3Dto2D_/Dec2D_/Dec3D_<class>_independent_<ep>ep_<bs>bs.pth "
                    "from HEADS_DIR or HEADS_DIR/<class>/ (torch.load with weights_only=True: no "
                    "arbitrary objects are unpickled) and write a cmdr-iad model folder with the "
                    "paper preset. Optionally calibrate the threshold on a validation split.")
    p.add_argument("heads_dir", metavar="HEADS_DIR")
    p.add_argument("--category", required=True)
    p.add_argument("--out", required=True, metavar="MODEL_DIR")
    p.add_argument("--file-epochs", dest="file_epochs", type=int, default=50, metavar="EP",
                   help="the <ep> token of the checkpoint file names (default 50); only selects "
                        "the files, nothing is trained")
    p.add_argument("--file-batch-size", dest="file_batch_size", type=int, default=1, metavar="BS",
                   help="the <bs> token of the checkpoint file names (default 1)")
    add_alias(p, "--epochs", "--file-epochs", "file_epochs", type=int)
    add_alias(p, "--batch-size", "--file-batch-size", "file_batch_size", type=int)
    p.add_argument("--point-mae-bn", default="sample", choices=BN_MODES,
                   help="Point-MAE BatchNorm mode: sample (the reference's train-mode statistics, "
                        "default) or running (eval mode)")
    p.add_argument("--calibrate", default=None, metavar="DATA_ROOT",
                   help="set the threshold from DATA_ROOT/<category>/validation")
    add_units(p)
    add_device(p)
    add_quiet(p)
    add_weights(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..official import import_official
    from ._workflow import (
        RANDOM_NOTICE,
        loud,
        require_model_out,
        require_path,
        require_weight_files,
        say,
    )

    device = resolve_device(args.device)
    heads_dir = require_path(args.heads_dir, "checkpoint folder")
    out = require_model_out(args.out)
    require_weight_files(args)
    ds = None
    if args.calibrate:
        from ..data.mvtec3d import MVTec3DDataset
        from ..data.validate import check_split

        root = require_path(args.calibrate, "dataset root")
        ds = MVTec3DDataset(root, args.category, "validation", require_points=False, units=args.units)
        check_split(ds)
    det = import_official(heads_dir, args.category, epochs=args.file_epochs,
                          batch_size=args.file_batch_size, point_mae_bn=args.point_mae_bn,
                          dino_weights=args.dino_weights, point_mae_weights=args.point_mae_weights,
                          random_backbones=args.random_backbones, device=device)
    if ds is not None:
        det.calibrate(ds, progress=not args.quiet)
    det.save(out)
    say(args, f"imported the official {args.category} heads into {out} (paper preset, Point-MAE "
              f"BatchNorm {args.point_mae_bn}; threshold "
              f"{'calibrated' if det.thresholds else 'not calibrated: predictions carry no decision'})")
    if det.random_backbones:
        loud(RANDOM_NOTICE)
    return 0
