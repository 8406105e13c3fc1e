"""One grid cell, in-process: check its data, train (resuming from the cell's epoch checkpoint),
save the model, evaluate it (and each ablation variant), write its report. Every executor runs
exactly this function, so they give the same metrics."""

from __future__ import annotations

import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from ..errors import UserInputError
from .cells import Cell, GridSpec, cell_fingerprint

__all__ = ["run_cell", "record_failure"]


def record_failure(cell: Cell, fingerprint: str, error: BaseException, seconds: float,
                   device: str = "") -> dict[str, Any]:
    """The grid.json record of a failed cell: "bad_input" for our user-input errors (exit 2),
    "internal" otherwise (exit 1)."""
    bad = isinstance(error, UserInputError)
    msg = str(error) if bad else f"{type(error).__name__}: {error}"
    return {"key": cell.key, "category": cell.category, "modality": cell.modality,
            "status": "failed", "error_kind": "bad_input" if bad else "internal",
            "error": msg.splitlines()[0] if msg else type(error).__name__,
            "seconds": seconds, "device": device, "fingerprint": fingerprint}


def _datasets(spec: GridSpec, cell: Cell) -> dict[str, Any]:
    from ..data.mvtec3d import MVTec3DDataset
    from ..data.validate import check_split

    root = Path(spec.data_root)
    kw = {"load_rgb": cell.modality in ("rgb+xyz", "rgb"),
          "load_xyz": cell.modality in ("rgb+xyz", "xyz"), "require_points": False}
    out = {}
    for split in ("train", "validation", "test"):
        if split == "validation" and not (root / cell.category / split).is_dir():
            out[split] = None
            continue
        ds = MVTec3DDataset(root, cell.category, split, **kw)
        check_split(ds, need_points=split == "train" and cell.modality != "rgb")
        out[split] = ds
    return out


def run_cell(spec: GridSpec, cell: Cell) -> dict[str, Any]:
    """Train and evaluate ``cell``; returns its grid.json record (never raises for a cell
    failure: the error is in the record). With ``spec.threads`` the cell runs on that many torch
    threads, so that every executor computes bit-identical numbers (float reductions depend on
    the thread count)."""
    import torch

    before = torch.get_num_threads()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    try:
        return _run_cell(spec, cell)
    finally:
        torch.set_num_threads(before)


def _run_cell(spec: GridSpec, cell: Cell) -> dict[str, Any]:
    t0 = time.perf_counter()
    fp = cell_fingerprint(spec, cell)
    device = ""
    try:
        from ..detector import CMDRIAD
        from ..evaluation import evaluate_detector, write_reports
        from ..features.store import open_cache
        from ..fileio import staging_folder

        data = _datasets(spec, cell)
        cfg = spec.config(cell)
        folder = cell.folder(Path(spec.out))
        det = CMDRIAD(cfg, dino_weights=spec.dino_weights, point_mae_weights=spec.point_mae_weights,
                      random_backbones=spec.random_backbones, device=spec.device)
        device = str(det.device)
        det.info.update({"category": cell.category, "grid_cell": cell.key})
        det.fit(data["train"], data["validation"], cache_dir=spec.features_dir,
                checkpoint=folder / "checkpoint", resume=True, progress=False)
        det.save(folder / "model")
        with open_cache(spec.features_dir) as cache:  # the test features, shared by the cells
            base = evaluate_detector(det, data["test"], name=cell.key, category=cell.category,
                                     keep_examples=0, cache=cache)
            evals, variants = [base], {}
            if cell.modality == "rgb+xyz":
                own = det.config
                for v in spec.variants:
                    if v == own.score.variant:
                        variants[v] = base.metrics
                        continue
                    det.config = own.replace(score={"variant": v})
                    ev = evaluate_detector(det, data["test"], name=f"{cell.key} [{v}]",
                                           category=cell.category, keep_examples=0, cache=cache)
                    variants[v] = ev.metrics
                    evals.append(ev)
                det.config = own
        with staging_folder(folder / "report") as stage:
            write_reports(stage, evals, {"grid_cell": cell.key, "random_backbones": det.random_backbones})
        shutil.rmtree(folder / "checkpoint", ignore_errors=True)
        return {"key": cell.key, "category": cell.category, "modality": cell.modality,
                "status": "done", "metrics": base.metrics, "variants": variants,
                "seconds": time.perf_counter() - t0, "device": device, "error": None,
                "fingerprint": fp}
    except Exception as e:  # a failed cell is recorded; the others go on
        rec = record_failure(cell, fp, e, time.perf_counter() - t0, device)
        if rec["error_kind"] == "internal":
            rec["traceback"] = traceback.format_exc(limit=8)
        return rec
