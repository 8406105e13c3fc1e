"""Helpers shared by the workflow verbs (train, evaluate, predict, import-official, demo)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserInputError
from ..fileio import staged_files
from .common import require_writable

RANDOM_NOTICE = ("RANDOM BACKBONES: the DINO / Point-MAE encoders are randomly initialised, not "
                 "pretrained. Scores and metrics are meaningless for real inspection; use this "
                 "only for testing. Get the pretrained weights with `cmdr-iad weights --download`.")


def loud(msg: str) -> None:
    """A notice that must not be missed (stderr, framed). Call it only after the inputs were
    validated, so that a bad-input error stays the only line on stderr."""
    bar = "!" * min(100, len(msg) + 4)
    print(f"{bar}\n! {msg}\n{bar}", file=sys.stderr)


def say(args, msg: str) -> None:
    if not getattr(args, "quiet", False):
        print(msg)


@contextmanager
def staged_outputs(out: Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success its files appear in `out`, on failure nothing
    does (`fileio.staged_files`). Writability is checked first (exit 2, nothing created)."""
    require_writable(out, "output folder")
    with staged_files(out) as stage:
        yield stage


def require_path(p: str | None, what: str) -> Path | None:
    if p is None:
        return None
    path = Path(p)
    if not path.exists():
        raise UserInputError(f"{what} not found: {path}")
    return path


def require_model_out(path: str | Path) -> Path:
    """The model folder to write: writable, and not a foreign non-empty folder (which saving
    would refuse only after the whole run)."""
    from ..artifact import META_FILE

    out = require_writable(path, "model folder")
    if out.is_dir() and not (out / META_FILE).exists() and any(out.iterdir()):
        raise UserInputError(f"{out}: refusing to overwrite a folder that is not a cmdr-iad model "
                             "folder; choose a new or empty --out")
    return out


def require_weight_files(args) -> None:
    """Explicit --dino-weights / --point-mae-weights files must exist (checked before any work)."""
    for opt, what in (("dino_weights", "DINO weights file"), ("point_mae_weights", "Point-MAE weights file")):
        value = getattr(args, opt, None)
        if value is not None and not Path(value).is_file():
            raise UserInputError(f"{what} not found: {value}")


def find_models(root: Path) -> list[Path]:
    """A model folder itself, or the model folders below it (two levels at most), sorted."""
    from ..artifact import META_FILE

    if not root.exists():
        raise UserInputError(f"model folder not found: {root}")
    if (root / META_FILE).is_file():
        return [root]
    found = sorted(p.parent for p in list(root.glob(f"*/{META_FILE}")) + list(root.glob(f"*/*/{META_FILE}")))
    if not found:
        raise UserInputError(f"{root} holds no cmdr-iad model (no {META_FILE} in it or its subfolders)")
    return found


def load_detector(path: Path, args):
    from ..detector import CMDRIAD
    from .common import resolve_device

    det = CMDRIAD.load(path, device=resolve_device(getattr(args, "device", "auto")),
                       dino_weights=getattr(args, "dino_weights", None),
                       point_mae_weights=getattr(args, "point_mae_weights", None))
    # said once (stdout: stderr is kept for the one-line error); fp32 runs where bf16 is not native
    det.set_precision(getattr(args, "precision", "fp32"), lambda m: say(args, f"note: {m}"))
    return det
