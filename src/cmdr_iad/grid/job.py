"""The grid job: validate everything up front, skip the cells already done with an unchanged
fingerprint, run the rest on an executor, keep RUNS/grid.json current after every cell, write
the tables. Exit code: 0 all done, 2 a cell failed on bad input, 1 an internal failure."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import MODALITIES
from ..errors import UserInputError
from ..fileio import write_json_atomic, write_text_atomic
from ..progress import progress
from .cells import Cell, GridSpec, cell_fingerprint
from .tables import tables_csv, tables_markdown

__all__ = ["EXECUTORS", "GRID_FILE", "validate_spec", "find_categories", "run_grid"]

EXECUTORS = ("local", "ray")
GRID_FILE = "grid.json"
GRID_FORMAT = 1


def find_categories(root: Path) -> list[str]:
    """Category folders of an MVTec 3D-AD-layout root (those with a train/ folder), sorted."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "train").is_dir())


def validate_spec(spec: GridSpec) -> None:
    """Every option and path checked before any work (UserInputError: one line)."""
    from .. import presets
    from ..model.fusion import VARIANTS

    root = Path(spec.data_root)
    if not root.is_dir():
        raise UserInputError(f"{root}: dataset root not found")
    if not spec.categories:
        raise UserInputError(f"{root}: no category folder with a train/ folder")
    for c in spec.categories:
        if not (root / c / "train").is_dir():
            raise UserInputError(f"{root / c}: category not found (no train/ folder)")
    if not spec.modalities:
        raise UserInputError("--modalities is empty")
    for m in spec.modalities:
        if m not in MODALITIES:
            raise UserInputError(f"unknown modality {m!r}; choose from {', '.join(MODALITIES)}")
    bad = [v for v in spec.variants if v not in VARIANTS or v.endswith("_only")]
    if bad:
        raise UserInputError(f"unknown variant {bad[0]!r}; choose from "
                             f"{', '.join(v for v in VARIANTS if not v.endswith('_only'))}")
    if spec.variants and "rgb+xyz" not in spec.modalities:
        raise UserInputError("--variants are fusion ablations: they need the rgb+xyz modality")
    if spec.epochs is not None and spec.epochs < 1:
        raise UserInputError(f"--epochs must be >= 1, got {spec.epochs}")
    presets.get(spec.preset, spec.modalities[0])  # unknown preset → ConfigError


def _load_records(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
        return {r["key"]: r for r in doc.get("cells", [])}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserInputError(f"{path}: unreadable grid record ({e}); move it away to start over") from e


def _is_done(rec: dict[str, Any] | None, fp: str, cell: Cell, runs: Path) -> bool:
    folder = cell.folder(runs)
    return bool(rec and rec.get("status") == "done" and rec.get("fingerprint") == fp
                and (folder / "model").is_dir() and (folder / "report" / "metrics.json").is_file())


def run_grid(spec: GridSpec, *, executor: str = "local", workers: int = 1,
             ray_address: str | None = None, gpus_per_cell: float = 0.0,
             say: Callable[[str], None] = print, show_progress: bool = True) -> int:
    """Run the grid of ``spec``; returns the exit code (see the module docstring)."""
    if executor not in EXECUTORS:
        raise UserInputError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    validate_spec(spec)
    if executor == "ray":
        from .executors import require_ray

        require_ray()
    runs = Path(spec.out)
    runs.mkdir(parents=True, exist_ok=True)
    grid_path = runs / GRID_FILE
    records = _load_records(grid_path)
    cells = spec.cells()
    fps = {c.key: cell_fingerprint(spec, c) for c in cells}
    todo = [c for c in cells if not _is_done(records.get(c.key), fps[c.key], c, runs)]
    skipped = len(cells) - len(todo)
    if skipped:
        say(f"{skipped} cell(s) already done, skipped (same config and data)")
    if not todo:
        say("nothing to do")
    order = [c.key for c in cells]
    t0 = time.perf_counter()

    def save() -> None:
        doc = {"format": GRID_FORMAT, "spec": {k: v for k, v in vars(spec).items() if k != "extra"},
               "executor": executor,
               "cells": [records[k] for k in order if k in records]}
        write_json_atomic(grid_path, doc)

    with progress(len(todo), "grid cells", enabled=show_progress and bool(todo)) as bar:
        def on_done(rec: dict[str, Any]) -> None:
            records[rec["key"]] = rec
            save()
            bar.advance()
            if rec["status"] == "done":
                m = rec["metrics"]
                f = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
                say(f"{rec['key']}: done in {rec['seconds']:.0f} s — I-AUROC {f(m.get('i_auroc'))}  "
                    f"P-AUROC {f(m.get('p_auroc'))}  AUPRO@30 {f(m.get('aupro_30'))}")
            else:
                say(f"{rec['key']}: FAILED ({rec['error_kind']}): {rec['error']}")

        if todo:
            if executor == "ray":
                from .executors import run_ray

                run_ray(spec, todo, on_done, address=ray_address, gpus_per_cell=gpus_per_cell,
                        num_cpus=max(1, workers) if not ray_address else None)
            else:
                from .executors import run_local

                run_local(spec, todo, on_done, workers=workers)
    save()
    current = [records[k] for k in order if k in records]
    write_text_atomic(runs / "paper_tables.md", tables_markdown(current, spec.variants))
    write_text_atomic(runs / "paper_tables.csv", tables_csv(current, spec.variants))
    failed = [r for r in current if r["status"] != "done"]
    done = len(current) - len(failed)
    say(f"{done}/{len(cells)} cell(s) done in {time.perf_counter() - t0:.0f} s; wrote "
        f"{grid_path}, {runs / 'paper_tables.md'}")
    if any(r.get("error_kind") == "internal" for r in failed):
        return 1
    return 2 if failed else 0
