"""`cmdr-iad synth OUT`: write a small synthetic dataset in the MVTec 3D-AD layout."""

from __future__ import annotations

import argparse

from ..errors import UserInputError
from .common import add_positional_out, add_quiet, bars_enabled, output_path, require_writable


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth",
        help="generate a synthetic dataset (MVTec 3D-AD layout)",
        description="Generate procedural objects scanned on a table (RGB PNG, float32 xyz TIFF in "
                    "metres, GT masks) with defects visible in RGB only (stain), in 3D only "
                    "(bump, dent) and in both (crack). Deterministic by --seed.",
    )
    add_positional_out(p, "out", "OUT", "output folder: new, empty, or a previous synthetic set (replaced)")
    p.add_argument("--categories", type=int, default=2, metavar="N",
                   help="number of object categories (default 2: puck, ring; then tile, dome, puck2…)")
    p.add_argument("--train", type=int, default=8, metavar="N", help="train samples per category")
    p.add_argument("--val", type=int, default=2, metavar="N", help="validation samples per category")
    p.add_argument("--test-good", type=int, default=3, metavar="N", help="good test samples per category")
    p.add_argument("--test-defect", type=int, default=1, metavar="N",
                   help="test samples per defect type and category")
    p.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"),
                   help="image size (default 128 128)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--scene", default="varied", choices=("varied", "station"),
                   help="varied (default): a random light direction and table per scan; station: "
                        "one fixed light and table for every scan, as at an inspection station")
    add_quiet(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.synthetic import category_names, generate_dataset

    if args.categories < 1:
        raise UserInputError(f"--categories must be >= 1, got {args.categories}")
    if args.train < 1:
        raise UserInputError(f"--train must be >= 1, got {args.train}")
    for name in ("val", "test_good", "test_defect"):
        if getattr(args, name) < 0:
            raise UserInputError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    h, w = args.size
    if h < 16 or w < 16:
        raise UserInputError(f"--size must be at least 16 16, got {h} {w}")
    out = require_writable(output_path(args, "out", "OUT"), "output folder")
    cats = category_names(args.categories)
    kw = dict(categories=cats, n_train=args.train, n_val=args.val, n_test_good=args.test_good,
              n_test_defect=args.test_defect, size=(h, w), seed=args.seed, scene=args.scene)
    from ..progress import progress

    with progress(None, "synth", enabled=bars_enabled(args)) as bar:
        generate_dataset(out, on_sample=lambda done, total: bar.update(completed=done, total=total), **kw)
    if not args.quiet:
        print(f"wrote {len(cats)} categories ({', '.join(cats)}) to {out}")
    return 0
