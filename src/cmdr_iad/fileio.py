"""Atomic file output and hashing: the one helper for each, used by every module that writes.

Everything cmdr-iad writes appears whole or not at all: a file is written to a temporary sibling
and renamed onto its name (:func:`atomic_output`, :func:`write_bytes_atomic`), a folder is built
beside its final place and swapped in (:func:`staging_folder`, :func:`replace_folder`). A failure
or an interruption leaves no partial file and the previous version (if any) untouched.

Hashing: :func:`hash_bytes` (length-prefixed chunks, so ("ab", "c") ≠ ("a", "bc")),
:func:`file_sha256` (streamed; optional size+mtime stamp so a large file is hashed once).

Pure standard library: no torch, nothing else of ours.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "TMP_PREFIX",
    "atomic_output",
    "write_bytes_atomic",
    "write_text_atomic",
    "write_json_atomic",
    "staging_folder",
    "staged_files",
    "replace_folder",
    "check_writable",
    "hash_bytes",
    "file_sha256",
]

TMP_PREFIX = ".cmdr-iad-tmp-"
"""Name prefix of every temporary file or folder cmdr-iad creates next to an output."""

_BLOCK = 1 << 22


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_sibling(path: Path) -> Path:
    # keep the suffix: writers such as tifffile or Pillow pick the format from it
    return path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{path.name}")


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The parent folder is created. On any exception (or interruption) the temporary file is
    removed and ``path`` is left as it was.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(p)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_umask())  # temp-file APIs may create 0600; use the usual mode
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` whole or not at all; returns the path."""
    p = Path(path)
    with atomic_output(p) as tmp:
        tmp.write_bytes(data)
    return p


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text, atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 2,
                      sort_keys: bool = True) -> Path:
    """JSON (``default=str`` for paths and the like), atomically, with a final newline."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=str)
    return write_text_atomic(path, text + "\n")


@contextmanager
def staging_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; on success it replaces ``out``.

    On failure the temporary folder is removed and ``out`` is unchanged.
    """
    o = Path(out)
    parent = o.parent if str(o.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{o.name}-", dir=parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; an output is an ordinary folder
        yield tmp
        replace_folder(tmp, o)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def staged_files(out: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder; on success its entries appear in ``out``, on failure none.

    A new ``out`` is built beside its place and renamed in (:func:`staging_folder`); into an
    existing ``out`` the entries are moved one by one (each rename atomic) from a hidden staging
    folder inside it, replacing entries of the same name.
    """
    o = Path(out)
    if not o.exists():
        with staging_folder(o) as stage:
            yield stage
        return
    stage = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}stage-", dir=o))
    try:
        yield stage
        for f in sorted(stage.iterdir()):
            target = o / f.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(f, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def replace_folder(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` onto ``out``; an existing ``out`` is removed only after."""
    if out.exists():
        backup = out.parent / f"{TMP_PREFIX}old-{uuid.uuid4().hex[:12]}-{out.name}"
        out.rename(backup)
        tmp.rename(out)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        tmp.rename(out)


def check_writable(path: str | os.PathLike, *, folder: bool = False) -> str | None:
    """Why ``path`` cannot be written, or None when it can (nothing is left behind).

    ``folder``: ``path`` is an output folder (it may exist and must then be a folder). The
    nearest existing ancestor must be a writable folder; this is tested by creating and removing
    a temporary file there, so read-only mounts and permission bits are both caught.
    """
    p = Path(path)
    if p.exists():
        if folder and not p.is_dir():
            return "exists and is not a folder"
        if not folder and p.is_dir():
            return "is a folder"
    probe = p if (folder and p.is_dir()) else p.parent
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    probe = probe if str(probe) else Path(".")
    if not probe.is_dir():
        return f"{probe} is not a folder"
    try:
        fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        return f"is not writable ({e.strerror or e})"
    return None


def hash_bytes(*chunks: bytes) -> str:
    """SHA-256 (hex) over length-prefixed byte chunks."""
    h = hashlib.sha256()
    for c in chunks:
        h.update(len(c).to_bytes(8, "little"))
        h.update(c)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike, *, use_stamp: bool = False) -> str:
    """SHA-256 (hex) of a file's bytes, streamed.

    With ``use_stamp`` the digest is remembered in a sidecar ``<file>.sha256`` together with the
    file's size and mtime, so a large file (pretrained weights) is hashed once, not every run.
    """
    p = Path(path)
    stamp = p.with_name(p.name + ".sha256")
    sig = ""
    if use_stamp:
        st = p.stat()
        sig = f"{st.st_size} {st.st_mtime_ns}"
        if stamp.is_file():
            try:
                digest, rest = stamp.read_text().strip().split(" ", 1)
                if rest == sig and len(digest) == 64:
                    return digest
            except (OSError, ValueError):
                pass
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    digest = h.hexdigest()
    if use_stamp:
        try:
            write_text_atomic(stamp, f"{digest} {sig}\n")
        except OSError:  # read-only folder: fine, just not remembered
            pass
    return digest
