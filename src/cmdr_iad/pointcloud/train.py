"""Training of the 3D-only model on a built chunk dataset (paper §5.2, polyurethane setting).

Only Decoder3D(n, 1152) is trained, on the frozen Point-MAE features of the normal training
chunks, with the masked cosine loss over valid pixels (`training.train_heads`, AdamW). Features
are extracted once (memory or on-disk cache). After training, the decision threshold is
calibrated on the training chunks:

    threshold = mean + k·std of the image scores S = max(anomaly map) of the training chunks
    (eval mode, population std, k = `threshold_sigmas`, 3 by default).

S is self-normalised per chunk (the map is divided by √mean of its non-zero values), so scores
of seen and unseen normal chunks are on the same scale; the rule is stored with the model.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import TrainConfig
from ..errors import DatasetError
from ..features.cache import FeatureCache
from ..training import train_heads
from .config import ScanModelConfig
from .dataset import BuildData, load_build
from .features import ChunkFeatureStore, extract_chunks, make_extractor
from .model import ScanModel, new_decoder

THRESHOLD_RULE = "mean + {k}*std (population) of the image scores of the training chunks"
IN_MEMORY_LIMIT = 2 * 1024**3  # bytes of features kept in memory when no cache folder is given


def _default_cache_root() -> Path:
    from ..features.weights import download_dir

    return download_dir() / "features"


def calibrate_threshold(scores: np.ndarray, sigmas: float) -> float:
    """mean + k·std of normal-chunk image scores (see the module docstring)."""
    s = np.asarray(scores, dtype=np.float64)
    return float(s.mean() + sigmas * s.std()) if len(s) else float("nan")


def train_scan_model(build: BuildData | str | os.PathLike, out_dir: str | os.PathLike,
                     cfg: ScanModelConfig, *, point_mae_weights: str | None = None,
                     random_backbones: bool = False, backbone_seed: int = 0,
                     device: str | torch.device = "cpu", feature_cache: str | os.PathLike | None = None,
                     allow_download: bool | None = None, progress: bool = True,
                     log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Train on `build`'s training chunks and save the model to `out_dir`; returns its metadata.

    `feature_cache`: folder of the on-disk feature cache; None keeps features in memory when
    they fit in 2 GiB, else uses `<weights folder>/features`.
    """
    data = build if isinstance(build, BuildData) else load_build(build)
    if cfg.chunk_size != data.chunk_size:
        cfg = cfg.replace(chunk_size=data.chunk_size)
    train_norm = data["train"]
    if len(train_norm) == 0:
        raise DatasetError(f"{data.path} has no training chunk")
    t0 = time.perf_counter()
    extractor = make_extractor(cfg, point_mae_weights=point_mae_weights,
                               random_backbones=random_backbones, seed=backbone_seed, device=device,
                               allow_download=allow_download)
    if log:
        log(f"Point-MAE: {extractor.describe()} (BatchNorm: {cfg.point_mae_bn})")
    nbytes = len(train_norm) * cfg.chunk_size * cfg.feature_dim * (2 if cfg.feature_dtype == "float16" else 4)
    cache = None
    if feature_cache is not None or nbytes > IN_MEMORY_LIMIT:
        root = Path(feature_cache) if feature_cache is not None else _default_cache_root()
        cache = FeatureCache(root, dtype=cfg.feature_dtype)
        if log:
            log(f"feature cache: {root}")
    from ..progress import progress as progress_bar

    with progress_bar(len(train_norm), "features", enabled=progress) as bar:
        store: ChunkFeatureStore = extract_chunks(extractor, train_norm, batch_size=cfg.batch_size,
                                                  cache=cache, on_batch=bar.advance)
    t_feat = time.perf_counter() - t0

    decoder = new_decoder(cfg, seed=cfg.seed)
    tcfg = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, optimizer="adamw",
                       weight_decay=cfg.weight_decay, seed=cfg.seed)
    report = train_heads({"Dec3D": decoder}, store, tcfg, device=extractor.device,
                         progress=progress, log=log)
    t_train = time.perf_counter() - t0 - t_feat

    model = ScanModel(config=cfg, extractor=extractor, decoder=decoder)
    scores = []
    for b0 in range(0, len(store), cfg.batch_size):
        idx = list(range(b0, min(len(store), b0 + cfg.batch_size)))
        scores.append(model.score_features(store.batch(idx)["f3d"]).image_score.cpu().numpy())
    train_scores = np.concatenate(scores).astype(np.float64)
    model.threshold = calibrate_threshold(train_scores, cfg.threshold_sigmas)
    meta = {
        "build": {"path": str(Path(data.path).resolve()), "config": data.meta.get("config"),
                  "counts": data.meta.get("counts")},
        "train": report.to_dict(),
        "threshold_rule": THRESHOLD_RULE.format(k=cfg.threshold_sigmas),
        "train_scores": {"n": int(len(train_scores)), "mean": float(train_scores.mean()),
                         "std": float(train_scores.std()), "min": float(train_scores.min()),
                         "max": float(train_scores.max())},
        "timing_s": {"features": round(t_feat, 3), "training": round(t_train, 3)},
        "feature_cache": None if cache is None else str(cache.root),
        "device": str(extractor.device),
    }
    model.meta = meta
    model.save(out_dir)
    if log:
        last = report.history[-1]["rec3d"] if report.history else math.nan
        log(f"trained Decoder3D({cfg.chunk_size}, {cfg.feature_dim}) on {len(store)} chunks, "
            f"{cfg.epochs} epochs, final loss {last:.4f}; threshold {model.threshold:.4f} "
            f"({meta['threshold_rule']}); saved to {out_dir}")
    return meta
