"""The scan model: frozen Point-MAE extractor + Decoder3D(n, 1152), and its saved form.

Saved with `cmdr_iad.artifact` (kind "cmdr-iad-pointcloud"): the decoder weights under
`decoder.*` (official `FeatureDecoder_9216` keys) and, in the JSON, the config, the build it was
trained on, the Point-MAE identity (file SHA-256, or "random" + seed with a state fingerprint),
the decision threshold and its rule. The Point-MAE weights themselves are not copied: loading
resolves them again and refuses weights whose identity differs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifact import load_artifact, save_artifact
from ..errors import ArtifactError, WeightsError
from ..features.extractor import FeatureExtractor
from ..features.weights import module_identity
from ..model.decoders import Decoder3D
from .config import ScanModelConfig
from .features import chunk_features, make_extractor, tokens
from .scoring import ChunkScores, score_chunks

KIND = "cmdr-iad-pointcloud"


def point_mae_fingerprint(extractor: FeatureExtractor) -> str:
    """SHA-256 of the Point-MAE state dict (checks that random weights are rebuilt identically)."""
    return str(module_identity("point_mae", extractor.point_mae.state_dict()).sha256)


@dataclass
class ScanModel:
    """Extractor + decoder + calibrated threshold. `score` runs the whole §3.6 chain."""

    config: ScanModelConfig
    extractor: FeatureExtractor
    decoder: Decoder3D
    threshold: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.extractor.device

    @property
    def random_backbones(self) -> bool:
        return bool(self.extractor.random_backbones)

    @torch.no_grad()
    def score_features(self, f3d: torch.Tensor) -> ChunkScores:
        """F3D (B, 1152, s, s) → all scoring stages (decoder in eval mode)."""
        self.decoder.eval()
        target = tokens(f3d.to(self.device, torch.float32))
        pred = self.decoder(target)
        return score_chunks(pred, target, self.config.side, box5_passes=self.config.box5_passes,
                            box7_passes=self.config.box7_passes)

    @torch.no_grad()
    def score(self, chunks_norm: np.ndarray) -> ChunkScores:
        """(B, n, 3) normalised chunks → `ChunkScores` (maps (B, s, s), image scores (B,))."""
        return self.score_features(chunk_features(self.extractor, chunks_norm))

    def save(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
        meta = dict(self.meta)
        meta.update(metadata or {})
        meta.update({
            "config": self.config.to_dict(),
            "backbone": self.extractor.identity,
            "random_backbones": self.random_backbones,
            "threshold": self.threshold,
        })
        if self.random_backbones:
            meta["point_mae_fingerprint"] = point_mae_fingerprint(self.extractor)
        tensors = {f"decoder.{k}": v for k, v in self.decoder.state_dict().items()}
        return save_artifact(path, tensors, meta, KIND)


def new_decoder(cfg: ScanModelConfig, seed: int | None = None) -> Decoder3D:
    """Decoder3D(n, 1152), initialised under `seed` (repeatable runs)."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return Decoder3D(out_seq_len=cfg.chunk_size, feature_dim=cfg.feature_dim)


def load_scan_model(path: str | os.PathLike, *, device: str | torch.device = "cpu",
                    point_mae_weights: str | None = None,
                    allow_download: bool | None = None) -> ScanModel:
    """Read a saved scan model and rebuild its extractor with the same Point-MAE weights."""
    tensors, meta = load_artifact(path, KIND)
    try:
        cfg = ScanModelConfig.from_dict(meta["config"])
        backbone = meta["backbone"]
        pm = backbone["weights"]["point_mae"]
    except (KeyError, TypeError) as e:
        raise ArtifactError(f"{path}: model.json lacks {e}") from e
    if pm.get("random"):
        # FeatureExtractor seeds Point-MAE with seed + 1 (see features.extractor)
        ext = make_extractor(cfg, random_backbones=True, seed=int(pm["seed"]) - 1, device=device)
        want = meta.get("point_mae_fingerprint")
        if want and point_mae_fingerprint(ext) != want:
            raise ArtifactError(
                f"{path}: the random Point-MAE weights could not be rebuilt identically "
                "(different torch version?); retrain the model")
    else:
        ext = make_extractor(cfg, point_mae_weights=point_mae_weights, device=device,
                             allow_download=allow_download)
        got = ext.weights["point_mae"]
        if got is None or got.sha256 != pm.get("sha256"):
            raise WeightsError(
                f"{path} was trained with Point-MAE weights {pm.get('file')} (SHA-256 "
                f"{pm.get('sha256')}), but the weights found are {getattr(got, 'file', None)} "
                f"(SHA-256 {getattr(got, 'sha256', None)}); pass the original file with "
                "--point-mae-weights")
    dec = new_decoder(cfg)
    sd = {k[len("decoder."):]: v for k, v in tensors.items() if k.startswith("decoder.")}
    try:
        dec.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ArtifactError(f"{path}: decoder weights do not fit Decoder3D({cfg.chunk_size}, "
                            f"{cfg.feature_dim}): {e}") from e
    dec.to(ext.device).eval()
    thr = meta.get("threshold")
    return ScanModel(config=cfg, extractor=ext, decoder=dec,
                     threshold=None if thr is None else float(thr), meta=meta)
