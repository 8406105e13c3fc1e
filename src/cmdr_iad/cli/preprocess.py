"""`cmdr-iad preprocess SRC DST`: the MVTec 3D-AD preprocessing protocol into a new root."""

from __future__ import annotations

import argparse
import sys

from ..errors import CmdrIadError, DatasetError
from .common import add_quiet


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "preprocess",
        help="MVTec 3D-AD protocol: remove the table plane, keep the largest cluster, pad to square",
        description=(
            "Preprocess every xyz/*.tiff under SRC as the paper's baselines do (RANSAC table plane "
            "on the image border, points within 5 mm of it removed, largest DBSCAN cluster kept "
            "(eps 6 mm, 30 points), zero-padded to a square) and write it to DST, mirroring SRC "
            "and copying every other file (rgb, gt) unchanged. SRC is never modified unless "
            "--in-place is given. Rerunning skips finished files, so an interrupted run resumes. "
            "Bad files are reported by name after the others are done (exit status 2)."),
    )
    p.add_argument("src", metavar="SRC", help="dataset root in the MVTec 3D-AD layout")
    p.add_argument("dst", metavar="DST", nargs="?", default=None,
                   help="output root (required unless --in-place)")
    p.add_argument("--in-place", action="store_true",
                   help="overwrite the clouds in SRC instead of writing to DST")
    p.add_argument("--workers", type=int, default=2, metavar="N",
                   help="parallel worker processes (default 2)")
    add_quiet(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.preprocess import preprocess_dataset

    if args.dst is None and not args.in_place:
        raise DatasetError("DST is required (or pass --in-place to overwrite SRC)")
    report = preprocess_dataset(args.src, args.dst, in_place=args.in_place, workers=args.workers,
                                progress=not args.quiet)
    if not args.quiet:
        print(f"processed {len(report.processed)}, copied {len(report.copied)}, "
              f"skipped {len(report.skipped)} (already done), failed {len(report.failed)}")
    for rel, reason in report.failed:
        print(f"cmdr-iad: failed: {rel}: {reason}", file=sys.stderr)
    if report.failed:
        first = report.failed[0][0]
        msg = (f"{len(report.failed)} file(s) could not be preprocessed (first: {first}); "
               "the other files are done")
        if report.internal_errors:
            raise CmdrIadError(msg)  # exit 1: not (only) bad input
        raise DatasetError(msg)  # exit 2
    return 0
