"""`cmdr-iad preprocess SRC DST`: the MVTec 3D-AD preprocessing protocol into a new root."""

from __future__ import annotations

import argparse

from ..errors import CmdrIadError, DatasetError
from .common import add_positional_out, add_quiet, failure_summary, output_path, require_writable

EPILOG = """\
resuming: preprocess keeps no work list; it knows what is done from the output itself.
  DST/.cmdr-iad-preprocess.json   the parameters (and cmdr-iad version) of the run; a rerun with
                                  other parameters into the same DST is refused
  xyz/*.tiff ImageDescription tag "cmdr_iad_preprocess": every written cloud carries its
                                  parameters; an existing DST file is skipped, and with
                                  --in-place a tagged cloud is never processed twice
  .cmdr-iad-tmp-*                 temporary files of an interrupted write, removed on the next run
Delete DST (or use a new one) to start from scratch.
"""


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
            "Bad files are reported after the others are done: one error line naming the first "
            "three (more are listed on stdout), exit status 2."),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", metavar="SRC", help="dataset root in the MVTec 3D-AD layout")
    add_positional_out(p, "dst", "DST", "output root (required unless --in-place)")
    p.add_argument("--in-place", action="store_true",
                   help="overwrite the clouds in SRC instead of writing to DST")
    p.add_argument("--workers", type=int, default=2, metavar="N",
                   help="parallel worker processes (default 2)")
    add_quiet(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..data.preprocess import preprocess_dataset

    dst = output_path(args, "dst", "DST", required=False)
    if dst is None and not args.in_place:
        raise DatasetError("DST is required (or pass --in-place to overwrite SRC)")
    src = Path(args.src)
    if not src.is_dir():
        raise DatasetError(f"{src}: source folder not found")
    require_writable(src if args.in_place else dst, "source folder" if args.in_place else "output root")
    report = preprocess_dataset(src, dst, in_place=args.in_place, workers=args.workers,
                                progress=not args.quiet)
    if not args.quiet:
        print(f"processed {len(report.processed)}, copied {len(report.copied)}, "
              f"skipped {len(report.skipped)} (already done), failed {len(report.failed)}")
    if report.failed:
        if len(report.failed) > 3:  # the full list goes to stdout; stderr keeps one line
            for rel, reason in report.failed:
                print(f"failed: {rel}: {reason}")
        msg = failure_summary(report.failed, "file(s)", "preprocessed")
        if report.internal_errors:
            raise CmdrIadError(msg)  # exit 1: not (only) bad input
        raise DatasetError(msg)  # exit 2
    return 0
