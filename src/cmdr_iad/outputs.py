"""The files a prediction produces, as bytes: the one renderer for `predict`, batch prediction
and the service.

Per sample (``stem``): ``<stem>.json`` (score, decision, threshold, branch, missing-modality
notes), ``<stem>_anomaly.tiff`` (or ``.npy``: the anomaly map at the original resolution,
float32), ``<stem>_overlay.png`` (heatmap over the RGB image, or over a depth rendering),
``<stem>.ply`` (valid points coloured by anomaly, with an ``anomaly`` property) when the sample
has a point cloud, and with ``save_raw`` ``<stem>_map.npy`` (Ψ at grid resolution).
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

__all__ = ["prediction_record", "prediction_files", "tiff_bytes", "npy_bytes"]


def tiff_bytes(a: np.ndarray) -> bytes:
    """A float32 map as a zlib-compressed single-channel TIFF."""
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.ascontiguousarray(a, dtype=np.float32), compression="zlib",
                     photometric="minisblack")
    return buf.getvalue()


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def prediction_record(res: Any, sample: Any, det: Any, model: str) -> dict[str, Any]:
    """The JSON record of one prediction (`Result.to_json` + model and input facts)."""
    record = res.to_json()
    record.update({
        "model": model, "modality_of_model": det.modality, "preset": det.config.preset,
        "random_backbones": det.random_backbones, "precision": det.precision,
        "inputs": {"rgb": None if sample.rgb_path is None else str(sample.rgb_path),
                   "xyz": None if sample.xyz_path is None else str(sample.xyz_path)},
        "label": None if sample.gt is None else int(sample.label),
    })
    if det.random_backbones:
        record["notes"].append("RANDOM BACKBONES: scores are not meaningful")
    if res.is_anomalous is None:
        record["notes"].append("the model has no calibrated threshold: no decision")
    return record


def prediction_files(stem: str, res: Any, sample: Any, det: Any, model: str, *,
                     map_format: str = "tiff", save_raw: bool = False
                     ) -> tuple[dict[str, bytes], dict[str, Any]]:
    """``({file name: bytes}, record)`` of one prediction; the record lists the files and is
    itself ``<stem>.json``."""
    from . import viz

    lo, hi = det.heatmap_range(res.branch)
    files: dict[str, bytes] = {}
    amap = res.anomaly_map
    if map_format == "tiff":
        files[f"{stem}_anomaly.tiff"] = tiff_bytes(amap)
    else:
        files[f"{stem}_anomaly.npy"] = npy_bytes(amap.astype(np.float32))
    base = sample.rgb if sample.rgb is not None else (
        viz.depth_image(sample.xyz) if sample.xyz is not None else None)
    files[f"{stem}_overlay.png"] = viz.png_bytes(viz.overlay(base, amap, lo, hi))
    if sample.xyz is not None and np.any(sample.xyz != 0):
        pts, cols = viz.coloured_points(sample.xyz, amap, lo, hi)
        valid = np.any(sample.xyz != 0, axis=-1)
        files[f"{stem}.ply"] = viz.ply_bytes(pts, cols, amap[valid].astype(np.float32))
    if save_raw:
        files[f"{stem}_map.npy"] = npy_bytes(res.map_grid.astype(np.float32))
    record = prediction_record(res, sample, det, model)
    record["files"] = sorted([*files, f"{stem}.json"])
    files[f"{stem}.json"] = json.dumps(record, indent=2).encode()
    return files, record
