"""The outlier-detector ablation grid of the paper (Table 8): detector × chunk size × level.

Each cell is a full run (build → train → evaluate) in its own folder
`WORK_DIR/<detector>-<size>-<level>/{build,model,report}`; the table is printed in the paper's
layout and written to `WORK_DIR/table8.md` and `table8.json`. The paper's grid has 9 rows
(LOF and ISO at 4096/9216 × low/high, and hybrid at 9216/low); `chunk_sizes` replaces the two
paper sizes (small, large) for quick runs, `full=True` runs hybrid at every size and level too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import CmdrIadError
from .config import BuildConfig, model_preset
from .dataset import build_dataset, summary_text
from .evaluate import evaluate_scan_model
from .train import train_scan_model

DETECTOR_NAMES = {"lof": "LOF", "iso": "ISO", "hybrid": "Hybrid (LOF ∪ ISO)"}
PAPER_TABLE8 = {  # (detector, size, level) → (I-AUROC, P-AUROC) in %, as printed in the paper
    ("lof", 4096, "low"): (80.1, 94.6), ("lof", 4096, "high"): (80.2, 85.6),
    ("lof", 9216, "low"): (99.5, 80.3), ("lof", 9216, "high"): (94.4, 79.6),
    ("iso", 4096, "low"): (87.5, 87.4), ("iso", 4096, "high"): (86.3, 84.6),
    ("iso", 9216, "low"): (92.6, 92.5), ("iso", 9216, "high"): (85.8, 90.3),
    ("hybrid", 9216, "low"): (89.9, 91.8),
}


def table8_cells(chunk_sizes: Sequence[int] = (4096, 9216), full: bool = False) -> list[tuple[str, int, str]]:
    """The grid in the paper's row order; `chunk_sizes` = (small, large) stand for (4096, 9216)."""
    small, large = int(chunk_sizes[0]), int(chunk_sizes[-1])
    cells = [(d, s, lv) for d in ("lof", "iso") for s in (small, large) for lv in ("low", "high")]
    if full:
        cells += [("hybrid", s, lv) for s in (small, large) for lv in ("low", "high")]
    else:
        cells.append(("hybrid", large, "low"))
    seen: set[tuple[str, int, str]] = set()
    return [c for c in cells if not (c in seen or seen.add(c))]


def run_table8(scans_dir: str | os.PathLike, work_dir: str | os.PathLike, *, preset: str = "paper",
               epochs: int | None = None, chunk_sizes: Sequence[int] = (4096, 9216), full: bool = False,
               point_mae_weights: str | None = None, random_backbones: bool = False,
               device: str | torch.device = "cpu", feature_cache: str | os.PathLike | None = None,
               resume: bool = False, progress: bool = True,
               log: Callable[[str], None] | None = print) -> list[dict[str, Any]]:
    """Run every cell; a cell that fails on bad input (e.g. too few normal chunks) is reported
    with its error instead of stopping the grid. Returns one row per cell."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for det, size, level in table8_cells(chunk_sizes, full):
        cell = work / f"{det}-{size}-{level}"
        row: dict[str, Any] = {"detector": det, "chunk_size": size, "level": level,
                               "i_auroc": None, "p_auroc": None, "error": None, "folder": str(cell)}
        report = cell / "report" / "metrics.json"
        try:
            if resume and report.is_file():
                metrics = json.loads(report.read_text())
            else:
                if log:
                    log(f"== {DETECTOR_NAMES[det]} {size} {level}")
                meta = build_dataset(scans_dir, cell / "build", BuildConfig(detector=det, chunk_size=size,
                                                                            level=level))
                if log:
                    log(summary_text(meta["counts"]))
                cfg = model_preset(preset, size)
                if epochs is not None:
                    cfg = cfg.replace(epochs=int(epochs))
                train_scan_model(cell / "build", cell / "model", cfg, point_mae_weights=point_mae_weights,
                                 random_backbones=random_backbones, device=device,
                                 feature_cache=feature_cache, progress=progress, log=log)
                metrics = evaluate_scan_model(cell / "model", cell / "build", cell / "report",
                                              device=device, point_mae_weights=point_mae_weights,
                                              progress=progress, log=log)
            row["i_auroc"], row["p_auroc"] = metrics.get("i_auroc"), metrics.get("p_auroc")
            row["reasons"] = metrics.get("reasons", {})
        except CmdrIadError as e:
            row["error"] = str(e)
            if log:
                log(f"   failed: {e}")
        rows.append(row)
    (work / "table8.json").write_text(json.dumps({"rows": rows, "preset": preset, "epochs": epochs,
                                                  "random_backbones": random_backbones}, indent=2))
    (work / "table8.md").write_text(format_table8(rows) + "\n")
    return rows


def format_table8(rows: Sequence[dict[str, Any]], with_paper: bool = True) -> str:
    """The paper's layout: detector and size written once per group, values in %."""
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}"

    head = f"{'Detector':<20} {'Sample Size':>11}  {'Level':<5}  {'I-AUROC':>7}  {'P-AUROC':>7}"
    if with_paper:
        head += "   paper I / P"
    lines = [head, "-" * len(head)]
    prev_det, prev_size = None, None
    for r in rows:
        det = DETECTOR_NAMES.get(r["detector"], r["detector"]) if r["detector"] != prev_det else ""
        size = str(r["chunk_size"]) if (r["detector"], r["chunk_size"]) != (prev_det, prev_size) else ""
        prev_det, prev_size = r["detector"], r["chunk_size"]
        line = f"{det:<20} {size:>11}  {r['level']:<5}  {pct(r['i_auroc']):>7}  {pct(r['p_auroc']):>7}"
        if with_paper:
            ref = PAPER_TABLE8.get((r["detector"], r["chunk_size"], r["level"]))
            line += f"   {ref[0]:.1f} / {ref[1]:.1f}" if ref else "   -"
        if r.get("error"):
            line += f"   (failed: {r['error']})"
        lines.append(line)
    return "\n".join(lines)
