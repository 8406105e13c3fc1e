"""Saved-model format: one folder holding `weights.safetensors` + `model.json`.

Loading never unpickles: tensors come from safetensors, metadata from JSON. The JSON records the
format version, the artefact kind, the SHA-256 of the weights file (a truncated or swapped file is
detected) and whatever the caller stores (config, threshold, normalisation statistics, versions,
backbone identity). Writing goes to a temporary sibling folder that is renamed into place, so a
failure never leaves a half-written model behind.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import ArtifactError, UserInputError
from .fileio import file_sha256, staging_folder

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "model.json"


def environment_record() -> dict[str, str]:
    """Package, torch and Python versions stored in every artefact."""
    import torch

    return {"cmdr_iad": __version__, "torch": torch.__version__, "python": platform.python_version()}


def save_artifact(path: str | os.PathLike, tensors: dict[str, Any], metadata: dict[str, Any],
                  kind: str, extra_files: dict[str, bytes] | None = None) -> Path:
    """Write `tensors` (name → torch.Tensor) and `metadata` (JSON-serialisable) to folder `path`,
    plus `extra_files` (name → bytes, e.g. `train_log.csv`) beside them.

    An existing artefact at `path` is replaced only after the new one is complete.
    """
    from safetensors.torch import save_file

    out = Path(path)
    if out.exists() and not (out / META_FILE).exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserInputError(f"refusing to overwrite {out}: it is not a cmdr-iad model folder")
    try:
        with staging_folder(out) as tmp:
            clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
            save_file(clean, str(tmp / WEIGHTS_FILE))
            meta = dict(metadata)
            meta.update({
                "format_version": FORMAT_VERSION,
                "kind": kind,
                "weights_sha256": file_sha256(tmp / WEIGHTS_FILE),
                "environment": environment_record(),
            })
            for name, data in (extra_files or {}).items():
                if Path(name).name != name or name in (WEIGHTS_FILE, META_FILE):
                    raise ValueError(f"bad extra file name {name!r}")
                (tmp / name).write_bytes(data)
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    except OSError as e:
        raise UserInputError(f"cannot write model to {out}: {e.strerror or e}") from e
    return out


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check `model.json` (format version); raises ArtifactError."""
    p = Path(path)
    meta_path = p / META_FILE
    if not meta_path.is_file():
        raise ArtifactError(f"{p} is not a cmdr-iad model folder (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{meta_path} is unreadable or truncated: {e}") from e
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise ArtifactError(f"{meta_path} has no valid format_version")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{p} was written in model format {version}, newer than this cmdr-iad understands "
            f"({FORMAT_VERSION}); upgrade cmdr-iad")
    return meta


def load_artifact(path: str | os.PathLike, kind: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (tensors, metadata) of the artefact at `path`, verifying kind and checksum."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    meta = read_metadata(p)
    if kind is not None and meta.get("kind") != kind:
        raise ArtifactError(f"{p} holds a {meta.get('kind')!r} model, expected {kind!r}")
    wpath = p / WEIGHTS_FILE
    if not wpath.is_file():
        raise ArtifactError(f"{p} has no {WEIGHTS_FILE}")
    if file_sha256(wpath) != meta.get("weights_sha256"):
        raise ArtifactError(f"{wpath} does not match the checksum in {META_FILE} (truncated or replaced)")
    try:
        tensors = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"{wpath} is unreadable: {e}") from e
    return tensors, meta
