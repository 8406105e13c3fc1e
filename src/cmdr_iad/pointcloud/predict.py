"""Prediction on a new raw scan: one finite anomaly score per point, in input order.

The scan is cut into the sequential chunks of training (0, n, 2n, …); when a tail remains, one
extra chunk aligned to the end of the scan (`N − n … N`) covers it, and only its scores of the
tail points are used (the other points keep the score of their regular chunk). Each chunk is
normalised on its own and scored with the §3.6 chain; a point's score is the value of the
chunk's anomaly map at its pixel. A chunk is anomalous when its image score exceeds the model's
calibrated threshold; the scan is anomalous when any chunk is.

Outputs: `<stem>_scores.npy` (N,) float32, `<stem>.ply` (points coloured by score, plus the
score as a vertex property), `<stem>.json` (per-chunk scores and decisions, scan decision,
threshold, model identity, random-backbones flag).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserInputError
from .chunking import chunk_starts, normalize_chunks
from .model import ScanModel, load_scan_model
from .scans import check_extension, load_scan


def stitch_scores(n_points: int, chunk_size: int, starts: np.ndarray, chunk_scores: np.ndarray) -> np.ndarray:
    """Per-point scores (N,) from per-chunk point scores (K, n) at `starts`: regular chunks
    write their points, a final tail-aligned chunk only the points not yet covered."""
    out = np.zeros(n_points, dtype=np.float32)
    covered = 0
    for st, sc in zip(starts, chunk_scores, strict=True):
        st = int(st)
        if st >= covered:  # regular chunk
            out[st:st + chunk_size] = sc
        else:  # tail chunk overlapping the previous one: only the uncovered tail
            out[covered:] = sc[covered - st:]
        covered = max(covered, st + chunk_size)
    return out


def predict_points(model: ScanModel, points: np.ndarray, *, batch_size: int = 4) -> dict[str, Any]:
    """Score a scan (N, 3): per-point scores (N,), per-chunk starts, image scores and tail flags."""
    n = model.config.chunk_size
    starts = chunk_starts(len(points), n, cover_tail=True)
    n_regular = len(points) // n
    point_scores = np.zeros((len(starts), n), dtype=np.float32)
    image_scores = np.zeros(len(starts), dtype=np.float64)
    for b0 in range(0, len(starts), batch_size):
        st = starts[b0:b0 + batch_size]
        chunks = np.stack([points[s:s + n] for s in st])
        res = model.score(normalize_chunks(chunks))
        point_scores[b0:b0 + len(st)] = res.anomaly_map.reshape(len(st), -1).cpu().numpy()
        image_scores[b0:b0 + len(st)] = res.image_score.cpu().numpy()
    scores = stitch_scores(len(points), n, starts, point_scores)
    return {"scores": scores, "starts": starts, "image_scores": image_scores,
            "is_tail": np.arange(len(starts)) >= n_regular}


def _save_npy(path: Path, a: np.ndarray) -> None:
    from ..fileio import write_bytes_atomic

    buf = io.BytesIO()
    np.save(buf, a)
    write_bytes_atomic(path, buf.getvalue())


def predict_scan(model: ScanModel | str | os.PathLike, scan_file: str | os.PathLike,
                 out_dir: str | os.PathLike, *, device: str | torch.device = "cpu", batch_size: int = 4,
                 point_mae_weights: str | None = None, allow_download: bool | None = None,
                 log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Score `scan_file` and write the three outputs into `out_dir`; returns the JSON record."""
    from ..fileio import write_bytes_atomic
    from ..viz import colormap, ply_bytes, scale_map

    check_extension(scan_file)
    if isinstance(model, ScanModel):
        m = model
        pts = load_scan(scan_file, min_points=m.config.chunk_size)
    else:  # check the scan before the (slower) model load
        from ..artifact import read_metadata

        size = (read_metadata(model).get("config") or {}).get("chunk_size")
        pts = load_scan(scan_file, min_points=int(size) if size else 1)
        m = load_scan_model(model, device=device, point_mae_weights=point_mae_weights,
                            allow_download=allow_download)
    n = m.config.chunk_size
    if len(pts) < n:
        raise UserInputError(f"{scan_file}: the scan has {len(pts)} points, fewer than one chunk ({n})")
    res = predict_points(m, pts, batch_size=batch_size)
    scores = res["scores"]
    if not np.isfinite(scores).all():  # cannot happen with finite inputs; never write NaN silently
        raise RuntimeError(f"{scan_file}: non-finite anomaly scores")
    thr = m.threshold
    use_thr = thr is not None and np.isfinite(thr)
    chunks = []
    for i, (st, sc, tail) in enumerate(zip(res["starts"], res["image_scores"], res["is_tail"], strict=True)):
        chunks.append({"index": i, "start": int(st), "end": int(st) + n, "tail": bool(tail),
                       "score": float(sc), "anomalous": bool(use_thr and sc > thr)})
    scan_score = float(res["image_scores"].max())
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserInputError(f"cannot create {out}: {e.strerror or e}") from e
    stem = Path(scan_file).stem
    lo, hi = 0.0, float(max(scores.max(), thr if use_thr else 0.0))
    colours = colormap(scale_map(scores, lo, hi))
    _save_npy(out / f"{stem}_scores.npy", scores.astype(np.float32))
    write_bytes_atomic(out / f"{stem}.ply", ply_bytes(pts, colours, scores.astype(np.float32)))
    record = {
        "scan": str(scan_file),
        "points": int(len(pts)),
        "chunk_size": n,
        "chunks": chunks,
        "tail_points": int(len(pts) - (len(pts) // n) * n),
        "scan_score": scan_score,
        "anomalous": bool(use_thr and any(c["anomalous"] for c in chunks)),
        "threshold": thr,
        "threshold_rule": m.meta.get("threshold_rule"),
        "point_scores": {"file": f"{stem}_scores.npy", "min": float(scores.min()),
                         "max": float(scores.max()), "mean": float(scores.mean()),
                         "rule": "value of the chunk's normalised anomaly map at the point's pixel"},
        "colours": {"file": f"{stem}.ply", "range": [lo, hi], "colormap": "turbo-like, blue = low",
                    "score_property": "anomaly"},
        "model": {"path": None if isinstance(model, ScanModel) else str(model),
                  "weights_sha256": m.meta.get("weights_sha256"), "preset": m.config.preset,
                  "config": m.config.to_dict()},
        "backbone": m.extractor.identity.get("weights", {}).get("point_mae"),
        "random_backbones": m.random_backbones,
    }
    write_bytes_atomic(out / f"{stem}.json", json.dumps(record, indent=2, default=str).encode())
    if log:
        verdict = "ANOMALOUS" if record["anomalous"] else ("normal" if use_thr else "no threshold")
        n_bad = sum(c["anomalous"] for c in chunks)
        log(f"{stem}: {len(pts)} points, {len(chunks)} chunks ({n_bad} anomalous), scan score "
            f"{scan_score:.4f} vs threshold {thr if thr is None else round(thr, 4)} → {verdict}"
            + ("  [random Point-MAE weights]" if m.random_backbones else ""))
    return record
