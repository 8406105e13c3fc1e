"""`cmdr-iad convert eyecandies SRC DST`: other datasets → the MVTec 3D-AD layout."""

from __future__ import annotations

import argparse

from ..errors import DatasetError
from .common import add_positional_out, add_quiet, failure_summary, output_path, require_writable


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="convert another dataset to the MVTec 3D-AD layout",
        description="Convert another dataset to the MVTec 3D-AD folder layout used by every "
                    "cmdr-iad command.")
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    e = formats.add_parser(
        "eyecandies", help="Eyecandies (train / val / test_public)",
        description=(
            "Eyecandies → MVTec 3D-AD layout: image_<light>.png → rgb, depth.png + "
            "info_depth.yaml → metric depth → xyz TIFF (camera focal length 711.11 px, principal "
            "point at the image centre), train → train/good, val → validation/good, test_public → "
            "test/good (empty mask) or test/bad (gt = mask). test_private has no masks and is "
            "skipped. Rerunning skips converted samples; bad samples are reported by name after "
            "the others are done (exit status 2). Run `cmdr-iad preprocess` afterwards to remove "
            "the conveyor plane as for MVTec 3D-AD."))
    e.add_argument("src", metavar="SRC", help="Eyecandies root (or one category folder)")
    add_positional_out(e, "dst", "DST", "output root (MVTec 3D-AD layout)")
    e.add_argument("--category", action="append", default=None, metavar="NAME",
                   help="convert only this category (repeatable; case- and space-insensitive)")
    e.add_argument("--light", type=int, default=4, choices=range(6), metavar="{0..5}",
                   help="which lighting image becomes rgb (default 4, as M3DM / CFM)")
    e.add_argument("--frame", choices=("camera", "world"), default="camera",
                   help="camera: z = depth, like MVTec 3D-AD scans (default); world: apply pose.txt")
    e.add_argument("--scale", type=float, default=1.0,
                   help="multiply the coordinates (default 1 = metres; M3DM / CFM use 0.1)")
    add_quiet(e)
    e.set_defaults(func=run_eyecandies)


def run_eyecandies(args: argparse.Namespace) -> int:
    from ..data.eyecandies import convert_eyecandies

    dst = output_path(args, "dst", "DST")
    require_writable(dst, "output root")
    report = convert_eyecandies(args.src, dst, categories=args.category, light=args.light,
                                frame=args.frame, scale=args.scale, progress=not args.quiet)
    if not args.quiet:
        print(f"converted {len(report.converted)}, skipped {len(report.skipped)} (already done), "
              f"failed {len(report.failed)}")
    if report.failed:
        if len(report.failed) > 3:  # the full list goes to stdout; stderr keeps one line
            for key, reason in report.failed:
                print(f"failed: {key}: {reason}")
        raise DatasetError(failure_summary(report.failed, "sample(s)", "converted"))
    return 0
