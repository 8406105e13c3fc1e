"""`cmdr-iad cache info|clean`: what the feature cache holds, and deleting it.

The cache folder is the one `train` and `pointcloud train` use: `--cache-dir DIR`, default
`<weights folder>/features`. `info` lists the entries per encoder kind (compact ViT and
Point-MAE entries of the detector, dense entries of the point-cloud models), their bytes and the
location. `clean` deletes the cache's entry folders (only folders the cache recognises, never
other files in DIR); it needs `--yes`, without it it only says what it would delete and exits 2.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

KINDS = ("vit", "point_mae", "dense")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "cache",
        help="show or delete the on-disk feature cache",
        description=("Show (info) or delete (clean) the on-disk feature cache that training "
                     "fills: compact ViT / Point-MAE entries and dense point-cloud entries."),
    )
    sub = p.add_subparsers(dest="cache_command", metavar="ACTION")
    for name, helptext in (("info", "entries per encoder kind, bytes and location"),
                           ("clean", "delete cache entries (needs --yes)")):
        q = sub.add_parser(name, help=helptext, description=helptext + ".")
        q.add_argument("--cache-dir", metavar="DIR", default=None,
                       help="feature cache folder (default: <weights folder>/features)")
        if name == "clean":
            q.add_argument("--kind", choices=(*KINDS, "all"), default="all",
                           help="delete only this kind of entries (default: all)")
            q.add_argument("--yes", action="store_true",
                           help="really delete (without it: say what would go and exit 2)")
        q.set_defaults(func=run)
    p.set_defaults(func=lambda args: p.print_help() or 0)


def _root(args: argparse.Namespace) -> tuple[Path, bool]:
    from ..errors import UserInputError
    from ..features.weights import download_dir

    if args.cache_dir is None:
        return download_dir() / "features", False
    p = Path(args.cache_dir)
    if p.exists() and not p.is_dir():
        raise UserInputError(f"the feature cache folder {p} is not a folder")
    if not p.exists():
        raise UserInputError(f"no feature cache folder {p}")
    return p, True


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _bytes(n: int) -> str:
    return f"{n:>15,} bytes ({_mb(n)})"


def run(args: argparse.Namespace) -> int:
    from ..errors import UserInputError
    from ..features.cache import cache_summary, classify_folder

    root, _explicit = _root(args)
    summary = cache_summary(root)
    if args.cache_command == "info":
        print(f"feature cache: {root.resolve()}{'' if root.is_dir() else ' (does not exist yet)'}")
        for kind in (*KINDS, "other"):
            s = summary[kind]
            if kind == "other" and not s["folders"]:
                continue
            what = "other folder" if kind == "other" else "encoder setting"
            print(f"  {kind:<10} {s['entries']:>6} entries  {_bytes(s['bytes'])}  "
                  f"({s['folders']} {what}{'s' if s['folders'] != 1 else ''})")
        total = sum(s["bytes"] for s in summary.values())
        print(f"  total      {sum(summary[k]['entries'] for k in KINDS):>6} entries  {_bytes(total)}")
        return 0
    kinds = KINDS if args.kind == "all" else (args.kind,)
    targets = [d for d in sorted(root.iterdir()) if d.is_dir() and classify_folder(d.name) in kinds] \
        if root.is_dir() else []
    n = sum(summary[k]["entries"] for k in kinds)
    b = sum(summary[k]["bytes"] for k in kinds)
    if not targets:
        print(f"nothing to delete in {root}")
        return 0
    if not args.yes:
        raise UserInputError(f"would delete {n} {'/'.join(kinds)} entries ({_mb(b)}) in {root}; "
                             "pass --yes to delete them")
    for d in targets:
        shutil.rmtree(d, ignore_errors=True)
    print(f"deleted {n} entries ({_mb(b)}) from {root}")
    return 0
