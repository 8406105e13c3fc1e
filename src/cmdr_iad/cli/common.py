"""Options and helpers shared by the CLI verbs: one name per concept.

- `--out` names every output location (verbs with a positional output accept both);
- `--device auto|cpu|cuda|cuda:N`, `--units m|mm`, `--cache-dir`, `--point-mae-bn`;
- old spellings stay as hidden aliases (`DeprecatedAlias`) for one release: they work, are not
  shown in `--help`, and `cmdr-iad` prints a one-line note on stdout when one is used.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

UNITS = ("m", "mm")
BN_MODES = ("sample", "running")


class DeprecatedAlias(argparse.Action):
    """A hidden old spelling of an option: stores into the new option's `dest` and records a note
    in `namespace.deprecations` (printed on stdout by `cmdr_iad.cli.main`)."""

    def __init__(self, option_strings: list[str], dest: str, replacement: str = "", **kw: Any) -> None:
        kw["help"] = argparse.SUPPRESS
        kw.setdefault("default", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kw)
        self.replacement = replacement

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, True if self.nargs == 0 else values)
        notes = list(getattr(namespace, "deprecations", None) or [])
        notes.append(f"note: {option_string} is deprecated and will be removed; use {self.replacement}")
        namespace.deprecations = notes


def add_alias(p: argparse.ArgumentParser, old: str, new: str, dest: str, **kw: Any) -> None:
    """Register `old` as a hidden, deprecated spelling of the option `new` (same `dest`)."""
    p.add_argument(old, dest=dest, action=DeprecatedAlias, replacement=new, **kw)


def add_device(p: argparse.ArgumentParser) -> None:
    # checked by `resolve_device` at the start of each verb (one-line error, exit 2)
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N",
                   help="compute device (auto: CUDA when available; cuda:N picks GPU N)")


def add_precision(p: argparse.ArgumentParser) -> None:
    # checked by `check_precision` with the device at the start of each verb (fp16 needs CUDA)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="precision of the encoders and heads: fp32 (default, exact), bf16 "
                        "(CUDA, or a CPU with AMX / AVX-512 BF16; elsewhere fp32 runs, with a "
                        "note), fp16 (CUDA only). Geometry, distances, fusion and metrics stay fp32")


def check_precision(args: argparse.Namespace) -> str:
    """``--precision`` against ``--device`` before any work (UserInputError: fp16 off CUDA)."""
    from ..precision import resolve_precision

    return resolve_precision(getattr(args, "precision", "fp32"), resolve_device(args.device))


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def bars_enabled(args: argparse.Namespace) -> bool:
    """Progress bars only for a terminal: a finished bar stays on stderr, and piped stderr must
    hold nothing but the one error line when the input turns out to be bad."""
    import sys

    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def add_units(p: argparse.ArgumentParser) -> None:
    p.add_argument("--units", default="m", choices=UNITS,
                   help="unit of the xyz coordinates in the files (default m; mm is converted)")


def add_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dino-weights", metavar="FILE", default=None,
                   help="DINO ViT-B/8 weights (timm .safetensors/.bin or dino_vitbase8_pretrain.pth)")
    p.add_argument("--point-mae-weights", metavar="FILE", default=None,
                   help="Point-MAE pretrain.pth")
    p.add_argument("--random-backbones", action="store_true",
                   help="use randomly initialised encoders (testing only; recorded in every output)")


def add_positional_out(p: argparse.ArgumentParser, dest: str, metavar: str, help: str) -> None:
    """An output given either positionally (as before) or with `--out` (resolve with `output_path`)."""
    p.add_argument(dest, metavar=metavar, nargs="?", default=None, help=f"{help} (or --out {metavar})")
    p.add_argument("--out", dest=f"{dest}_option", metavar=metavar, default=None,
                   help=f"same as the positional {metavar}")


def output_path(args: argparse.Namespace, dest: str, metavar: str, *, required: bool = True) -> Path | None:
    """The output location of a verb built with `add_positional_out` (exit 2 when it is missing or
    given twice with different values)."""
    from ..errors import UserInputError

    pos, opt = getattr(args, dest), getattr(args, f"{dest}_option")
    if pos is not None and opt is not None and Path(pos) != Path(opt):
        raise UserInputError(f"two output locations given ({pos} and --out {opt}); give one")
    chosen = opt if opt is not None else pos
    if chosen is None:
        if required:
            raise UserInputError(f"{metavar} is required (positionally or as --out {metavar})")
        return None
    return Path(chosen)


def require_writable(path: str | Path, what: str, *, folder: bool = True) -> Path:
    """Exit 2 (one line naming the path) unless `path` can be written; creates nothing."""
    from ..errors import UserInputError
    from ..fileio import check_writable

    p = Path(path)
    reason = check_writable(p, folder=folder)
    if reason is not None:
        raise UserInputError(f"cannot write the {what} {p}: {reason}")
    return p


def resolve_device(name: str):
    """'auto' → cuda when available, else cpu (see `cmdr_iad.device.resolve_device`)."""
    from ..device import resolve_device as _resolve

    return _resolve(name)


def failure_summary(failed: list[tuple[object, str]], what: str, done: str, shown: int = 3) -> str:
    """One error line for a batch verb: how many `what` failed, the first `shown` reasons (each
    names its file), and where the rest are listed (printed on stdout by the caller)."""
    n = len(failed)
    items = [reason if Path(str(key)).name in reason else f"{key}: {reason}"
             for key, reason in failed[:shown]]
    more = f"; and {n - shown} more, listed on stdout" if n > shown else ""
    return f"{n} {what} could not be {done}: {'; '.join(items)}{more} (the others are done)"
