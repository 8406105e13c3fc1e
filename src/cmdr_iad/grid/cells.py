"""A grid cell (category, modality), the job's settings, and the fingerprint that makes a
finished cell skippable on rerun."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from ..fileio import hash_bytes

__all__ = ["Cell", "GridSpec", "data_signature", "cell_fingerprint"]


@dataclass(frozen=True)
class Cell:
    """One (category, modality) training + evaluation."""

    category: str
    modality: str

    @property
    def key(self) -> str:
        return f"{self.modality}/{self.category}"

    def folder(self, runs: Path) -> Path:
        """RUNS/<modality>/<category>: holds model/, report/ and, while running, checkpoint/."""
        return Path(runs) / self.modality / self.category


@dataclass(frozen=True)
class GridSpec:
    """Everything a cell needs, picklable (it travels to worker processes and Ray tasks)."""

    data_root: str
    out: str
    categories: tuple[str, ...]
    modalities: tuple[str, ...]
    preset: str = "tiny"
    epochs: int | None = None
    variants: tuple[str, ...] = ()
    random_backbones: bool = False
    cache_dir: str | None = None
    device: str = "auto"
    dino_weights: str | None = None
    point_mae_weights: str | None = None
    threads: int | None = None  # torch threads of every cell (None: the process default)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def features_dir(self) -> str:
        """The feature store every cell shares (RUNS/features unless --cache-dir)."""
        return self.cache_dir or str(Path(self.out) / "features")

    def cells(self) -> list[Cell]:
        return [Cell(c, m) for m in self.modalities for c in self.categories]

    def config(self, cell: Cell) -> Any:
        """The resolved `DetectorConfig` of ``cell``."""
        from .. import presets

        cfg = presets.get(self.preset, cell.modality)
        return cfg.replace(train={"epochs": self.epochs}) if self.epochs else cfg


def data_signature(root: str | os.PathLike, category: str) -> str:
    """SHA-256 over (relative path, size, mtime) of every file of a category: changes when a
    file is added, removed, replaced or edited (contents are not read: it stays cheap)."""
    base = Path(root) / category
    parts = [b"cmdr-iad-data-v1"]
    for p in sorted(base.rglob("*")):
        if p.is_file():
            st = p.stat()
            parts.append(f"{p.relative_to(base).as_posix()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return hash_bytes(*parts)


def cell_fingerprint(spec: GridSpec, cell: Cell) -> str:
    """What a finished cell's results depend on: config, variants, backbones, data, version."""
    payload = {
        "version": __version__,
        "config": spec.config(cell).to_dict(),
        "variants": list(spec.variants) if cell.modality == "rgb+xyz" else [],
        "random_backbones": spec.random_backbones,
        "weights": [spec.dino_weights, spec.point_mae_weights],
        "data": data_signature(spec.data_root, cell.category),
        "cell": asdict(cell),
    }
    return hash_bytes(json.dumps(payload, sort_keys=True, default=str).encode())
