"""Evaluation of a scan model on a build's test chunks (paper §5.1, §5.2, Table 5 protocol).

- I-AUROC: block level, chunk labels vs image scores S = max(anomaly map);
- P-AUROC: point level, per-point pseudo-label masks vs the flattened anomaly maps (the
  pseudo-image is a pure reshape, so pixel k of a chunk is point k);
- AUPRO@30/10/5/1 % on the s×s grid (99 thresholds, as the reference);
- FPS: test chunks per second, timing everything from the raw chunk (normalisation,
  pseudo-image, features, decoder, scoring) with CUDA synchronised, after one warm-up batch;
- peak memory: CUDA `max_memory_allocated` during the timed loop, or on CPU the process peak
  resident set size (`ru_maxrss`, which includes everything the process ever held).

A metric that is undefined (e.g. only one class of chunks) is `null` in `metrics.json`, and
`reasons` says why.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import EvaluationError, UserInputError
from ..fileio import write_bytes_atomic
from ..machine import sync
from ..memory import PeakMemory
from .chunking import normalize_chunks
from .dataset import BuildData, load_build
from .model import ScanModel, load_scan_model

AUPRO_LIMITS = (0.3, 0.1, 0.05, 0.01)
AUPRO_KEYS = ("aupro_30", "aupro_10", "aupro_5", "aupro_1")


def metric_values(labels: np.ndarray, image_scores: np.ndarray, maps: np.ndarray,
                  gts: np.ndarray) -> tuple[dict[str, Any], dict[str, str]]:
    """I-AUROC, P-AUROC and AUPRO (fractions) of chunk maps (K, s, s) vs masks (K, s, s).

    Returns (values, reasons): an undefined metric is None and `reasons[name]` explains it.
    """
    from ..metrics import au_pro, image_auroc, pixel_auroc

    out: dict[str, Any] = {}
    reasons: dict[str, str] = {}

    def attempt(name: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except EvaluationError as e:
            reasons[name] = str(e)
            return None

    v = attempt("i_auroc", lambda: float(image_auroc(labels, image_scores)))
    out["i_auroc"] = v
    out["p_auroc"] = attempt("p_auroc", lambda: float(pixel_auroc(maps, gts)))
    pro = attempt("aupro", lambda: np.asarray(au_pro(maps, gts, AUPRO_LIMITS, num_thresholds=99)))
    for i, key in enumerate(AUPRO_KEYS):
        out[key] = None if pro is None else float(pro[i])
    return out, reasons


def evaluate_scan_model(model: ScanModel | str | os.PathLike, build: BuildData | str | os.PathLike,
                        report_dir: str | os.PathLike, *, device: str | torch.device = "cpu",
                        batch_size: int = 1, point_mae_weights: str | None = None,
                        allow_download: bool | None = None, progress: bool = True,
                        log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Score every test chunk, compute the metrics and write `metrics.json`, `chunk_scores.csv`
    and `anomaly_maps.npy` into `report_dir`; returns the metrics dict."""
    m = model if isinstance(model, ScanModel) else load_scan_model(
        model, device=device, point_mae_weights=point_mae_weights, allow_download=allow_download)
    data = build if isinstance(build, BuildData) else load_build(build)
    if data.chunk_size != m.config.chunk_size:
        raise UserInputError(f"the model works on chunks of {m.config.chunk_size} points but the build "
                             f"{data.path} has chunks of {data.chunk_size}")
    if batch_size < 1:
        raise UserInputError(f"batch size must be >= 1, got {batch_size}")
    test_idx = np.asarray(data["test_index"])
    raw = data["global_data"]
    labels = np.asarray(data["test_label"]).astype(np.int64)
    s = m.config.side
    gts = np.asarray(data["test_gtmask"]).reshape(-1, s, s)
    k = len(test_idx)
    if k == 0:
        raise UserInputError(f"{data.path} has no test chunk")
    dev = m.device
    maps = np.zeros((k, s, s), dtype=np.float32)
    scores = np.zeros(k, dtype=np.float64)

    from ..progress import progress as progress_bar

    # warm-up (lazy initialisation, kernels), not timed
    m.score(normalize_chunks(raw[test_idx[:batch_size]]))
    mem = PeakMemory(dev)
    mem.reset()
    elapsed = 0.0
    with progress_bar(k, "evaluate", enabled=progress) as prog:
        for b0 in range(0, k, batch_size):
            idx = test_idx[b0:b0 + batch_size]
            sync(dev)
            t0 = time.perf_counter()
            res = m.score(normalize_chunks(raw[idx]))
            sync(dev)
            elapsed += time.perf_counter() - t0
            maps[b0:b0 + len(idx)] = res.anomaly_map.cpu().numpy()
            scores[b0:b0 + len(idx)] = res.image_score.cpu().numpy()
            prog.advance(len(idx))
    peak, mem_kind = mem.peak_mb(), mem.kind
    values, reasons = metric_values(labels, scores, maps, gts)
    thr = m.threshold
    decided = None
    if thr is not None and np.isfinite(thr):
        pred = scores > thr
        decided = {"tp": int((pred & (labels == 1)).sum()), "fp": int((pred & (labels == 0)).sum()),
                   "tn": int((~pred & (labels == 0)).sum()), "fn": int((~pred & (labels == 1)).sum())}
    metrics = {
        **values,
        "reasons": reasons,
        "fps": k / elapsed if elapsed > 0 else None,
        "seconds_per_chunk": elapsed / k,
        "peak_memory_mb": peak,
        "memory_kind": mem_kind,
        "device": str(dev),
        "batch_size": batch_size,
        "n_test": k,
        "n_test_normal": int((labels == 0).sum()),
        "n_test_anomalous": int((labels != 0).sum()),
        "threshold": thr,
        "threshold_rule": m.meta.get("threshold_rule"),
        "decisions_at_threshold": decided,
        "random_backbones": m.random_backbones,
        "backbone": m.extractor.identity.get("weights", {}).get("point_mae"),
        "model": {"path": str(model) if not isinstance(model, ScanModel) else None,
                  "weights_sha256": m.meta.get("weights_sha256"), "preset": m.config.preset,
                  "chunk_size": m.config.chunk_size},
        "build": {"path": str(data.path), "config": data.meta.get("config")},
        "units": "AUROC/AUPRO as fractions in [0, 1]",
    }
    out = Path(report_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserInputError(f"cannot create {out}: {e.strerror or e}") from e
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["test_index", "chunk", "scan", "start", "label", "image_score", "anomalous"])
    cidx = np.asarray(data["chunk_index"])
    for i, g in enumerate(test_idx):
        w.writerow([i, int(g), int(cidx[g, 0]), int(cidx[g, 1]), int(labels[i]), f"{scores[i]:.6g}",
                    "" if thr is None else int(scores[i] > thr)])
    write_bytes_atomic(out / "chunk_scores.csv", buf.getvalue().encode())
    npy = io.BytesIO()
    np.save(npy, maps)
    write_bytes_atomic(out / "anomaly_maps.npy", npy.getvalue())
    write_bytes_atomic(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True, default=str).encode())
    if log:
        log(format_metrics(metrics))
    return metrics


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def format_metrics(metrics: dict[str, Any]) -> str:
    """One line in the paper's units (percent), plus why a metric is undefined."""
    fps = metrics.get("fps")
    line = (f"I-AUROC {_pct(metrics.get('i_auroc'))}  P-AUROC {_pct(metrics.get('p_auroc'))}  "
            f"AUPRO@30 {_pct(metrics.get('aupro_30'))}  AUPRO@1 {_pct(metrics.get('aupro_1'))}  "
            f"FPS {'n/a' if fps is None else f'{fps:.2f}'}  memory {metrics.get('peak_memory_mb', 0):.1f} MB "
            f"({metrics.get('memory_kind')})  on {metrics.get('n_test')} test chunks")
    for k, why in (metrics.get("reasons") or {}).items():
        line += f"\n  {k}: undefined ({why})"
    if metrics.get("random_backbones"):
        line += "\n  NOTE: random Point-MAE weights (testing only)"
    return line
