"""Command-line entry point `cmdr-iad`.

Thin: every verb lives in its own module of this package with a `register(subparsers)` function
that adds its parser and sets `func` (called with the parsed namespace, returns an exit code).
Exit status: 0 success, 2 bad input (one line on stderr), 1 internal failure.
Old option spellings are hidden aliases (`common.DeprecatedAlias`): a one-line note on stdout.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import CmdrIadError

# Verb modules, in the order they appear in --help. A module that is not present is skipped.
VERB_MODULES = (
    "demo",
    "synth",
    "preprocess",
    "convert",
    "train",
    "evaluate",
    "grid",
    "predict",
    "import_official",
    "pointcloud",
    "benchmark",
    "serve",
    "weights",
    "cache",
)


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2): the bad-input contract holds for bad options
    too. Subparsers inherit the class."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="cmdr-iad",
        description="CMDR-IAD industrial anomaly detection on RGB images and 3D point clouds.",
    )
    parser.add_argument("--version", action="version", version=f"cmdr-iad {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in VERB_MODULES:
        modname = f"{__name__}.{name}"
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    for note in getattr(args, "deprecations", None) or ():
        print(note)
    try:
        rc = args.func(args)
        return int(rc or 0)
    except CmdrIadError as e:
        if args.debug:
            raise
        print(f"cmdr-iad: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("cmdr-iad: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # internal failure: one line, traceback with --debug
        if args.debug:
            raise
        print(f"cmdr-iad: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
