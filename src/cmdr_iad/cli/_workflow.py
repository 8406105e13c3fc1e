"""Helpers shared by the workflow verbs (train, evaluate, predict, import-official, demo)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserInputError

RANDOM_NOTICE = ("RANDOM BACKBONES: the DINO / Point-MAE encoders are randomly initialised, not "
                 "pretrained. Scores and metrics are meaningless for real inspection; use this "
                 "only for testing. Get the pretrained weights with `cmdr-iad weights --download`.")


def loud(msg: str) -> None:
    """A notice that must not be missed (stderr, framed)."""
    bar = "!" * min(100, len(msg) + 4)
    print(f"{bar}\n! {msg}\n{bar}", file=sys.stderr)


def say(args, msg: str) -> None:
    if not getattr(args, "quiet", False):
        print(msg)


def check_writable_dir(path: Path, what: str = "output folder") -> None:
    """Create `path` if needed and check that files can be written into it (else exit 2)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UserInputError(f"cannot write to the {what} {path}: {e.strerror or e}") from e


def check_writable_parent(path: Path, what: str = "model folder") -> None:
    """Check that `path` can be created (its parent is writable) before long work starts."""
    parent = path.parent if str(path.parent) else Path(".")
    check_writable_dir(parent, f"parent folder of the {what}")
    if path.exists() and not path.is_dir():
        raise UserInputError(f"{path} exists and is not a folder")


@contextmanager
def staged_outputs(out: Path) -> Iterator[Path]:
    """Write into a hidden staging folder inside `out`; move the files into `out` on success,
    delete them all on failure (no partial outputs)."""
    check_writable_dir(out)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        yield stage
        for f in sorted(stage.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def require_path(p: str | None, what: str) -> Path | None:
    if p is None:
        return None
    path = Path(p)
    if not path.exists():
        raise UserInputError(f"{what} not found: {path}")
    return path


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
    return det
