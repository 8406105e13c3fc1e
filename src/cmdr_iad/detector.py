"""`CMDRIAD`: the detector a user works with — fit, predict, save, load.

Glue only (no equations): frozen features (`features.extractor`, cached on disk while training)
→ the trainable heads (`model.mapping`, `model.decoders`) → distances and fusion
(`model.fusion`) → maps at grid and original resolution, image score, thresholded decision.

Scoring branches. A model trained on `rgb+xyz` scores a sample with all four heads and the
configured fusion variant (paper Eq. 7 by default). When the sample has no point cloud (or one
without any valid point) it falls back to the RGB branch (Dec2D only, `rgb_only`), and without
RGB to the 3D branch (Dec3D only, `xyz_only`); the result says so in `notes`. Each branch has
its own calibrated threshold because their scores live on different scales.

Threshold rule (`calibrate`): with a labelled validation set (good and defective samples), the
threshold maximising F1 of `score >= threshold`; with normal samples only, the `quantile`
(default 1.0 = the largest) of their image scores, so no normal validation sample is flagged.
Without a validation set the training samples are used (optimistic: the threshold is then low).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import DetectorConfig
from .device import resolve_device
from .errors import ArtifactError, UserInputError, WeightsError
from .memory import release_memory

KIND = "cmdr-iad-detector"
HEADS_BY_MODALITY = {
    "rgb+xyz": ("map2Dto3D", "map3Dto2D", "Dec2D", "Dec3D"),
    "rgb": ("Dec2D",),
    "xyz": ("Dec3D",),
}
BRANCH_VARIANT = {"rgb": "rgb_only", "xyz": "xyz_only"}


@dataclass
class Result:
    """Prediction for one sample.

    anomaly_map: (H, W) float32 at the original resolution, Ψ / sqrt(mean of non-zero Ψ) (the
      image-score normalisation, so its grid maximum is `score`), resized without the square pad;
    map_grid: (G, G) float32, the smoothed fused map Ψ before any normalisation;
    score: image score as the reference computes it; is_anomalous: score >= threshold (None
      when the model has no calibrated threshold); branch: "rgb+xyz", "rgb" or "xyz";
    notes: missing-modality and other remarks; valid_grid: (G, G) bool 3D support.
    """

    key: str
    anomaly_map: np.ndarray
    map_grid: np.ndarray
    score: float
    is_anomalous: bool | None
    threshold: float | None
    branch: str
    notes: list[str] = field(default_factory=list)
    valid_grid: np.ndarray | None = None
    label: int = -1
    gt_grid: np.ndarray | None = None
    orig_size: tuple[int, int] = (0, 0)

    @property
    def missing_modality(self) -> str | None:
        return {"rgb": "xyz", "xyz": "rgb"}.get(self.branch) if self.notes else None

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "score": float(self.score),
            "is_anomalous": self.is_anomalous,
            "threshold": None if self.threshold is None else float(self.threshold),
            "branch": self.branch,
            "missing_modality": self.missing_modality,
            "notes": list(self.notes),
            "grid_size": int(self.map_grid.shape[-1]),
            "image_size": [int(self.anomaly_map.shape[0]), int(self.anomaly_map.shape[1])],
            "map_max": float(np.max(self.anomaly_map)),
        }


def build_heads(cfg: DetectorConfig) -> nn.ModuleDict:
    """The trainable heads of `cfg.modality`, under their official names."""
    from .model.decoders import Decoder2D, Decoder3D
    from .model.mapping import CrossModalMLP

    g, h = cfg.features.grid_size, cfg.heads
    make = {
        "map2Dto3D": lambda: CrossModalMLP(h.dim2d, h.dim3d),
        "map3Dto2D": lambda: CrossModalMLP(h.dim3d, h.dim2d),
        "Dec2D": lambda: Decoder2D(h.dim2d, g, h.num_heads, h.window_size),
        "Dec3D": lambda: Decoder3D(g * g, h.dim3d),
    }
    return nn.ModuleDict({name: make[name]() for name in HEADS_BY_MODALITY[cfg.modality]})


def tokens(f: torch.Tensor) -> torch.Tensor:
    """(B, C, G, G) → (B, G·G, C), row-major."""
    return f.flatten(2).transpose(1, 2)


def sample_key(sample: Any) -> str:
    """Cache key of a raw sample: SHA-256 over its arrays (content, shape, dtype)."""
    from .features.cache import hash_bytes

    parts = [b"cmdr-iad-raw-sample-v1"]
    for a in (sample.rgb, sample.xyz):
        if a is None:
            parts.append(b"<none>")
        else:
            a = np.ascontiguousarray(a)
            parts.append(f"{a.dtype.str}{a.shape}".encode())
            parts.append(a.tobytes())
    return hash_bytes(*parts)


def cloud_has_points(xyz: torch.Tensor) -> torch.Tensor:
    """(B, 3, G, G) → (B,) bool: at least one grid point with all coordinates non-zero."""
    return (xyz != 0).all(dim=1).flatten(1).any(dim=1)


class CMDRIAD:
    """CMDR-IAD detector. See the module docstring.

    CMDRIAD(config, *, dino_weights=None, point_mae_weights=None, random_backbones=False,
            device="auto", backbone_seed=0)
    """

    def __init__(self, config: DetectorConfig, *, dino_weights: str | None = None,
                 point_mae_weights: str | None = None, random_backbones: bool = False,
                 device: str | torch.device = "auto", backbone_seed: int = 0,
                 extractor: Any = None) -> None:
        self.config = config.validate()
        self.device = resolve_device(device)
        self.weights_paths = {"dino": dino_weights, "point_mae": point_mae_weights}
        self.random_backbones = bool(random_backbones)
        self.backbone_seed = int(backbone_seed)
        self._extractor = extractor
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.train.seed)
            self.heads = build_heads(self.config)
        self.heads.to(self.device).eval()
        self.thresholds: dict[str, float] = {}
        self.calibration: dict[str, Any] = {}
        self.info: dict[str, Any] = {}
        self._expected_backbone: dict[str, Any] | None = None
        self.fast_heads = True  # exact valid-pixel-only heads (see model.distances)

    # ------------------------------------------------------------------ properties

    @property
    def modality(self) -> str:
        return self.config.modality

    @property
    def grid(self) -> int:
        return self.config.features.grid_size

    @property
    def threshold(self) -> float | None:
        return self.thresholds.get(self.modality)

    @property
    def extractor(self):
        """The frozen feature extractor (built on first use: loading backbones takes a while)."""
        if self._extractor is None:
            from .features.extractor import FeatureExtractor

            self._extractor = FeatureExtractor(
                self.config.features, self.modality,
                dino_weights=self.weights_paths["dino"],
                point_mae_weights=self.weights_paths["point_mae"],
                random_backbones=self.random_backbones, seed=self.backbone_seed, device=self.device)
            self._check_backbone(self._extractor)
        return self._extractor

    def _check_backbone(self, ext: Any) -> None:
        exp = self._expected_backbone
        if not exp:
            return
        for kind, want in (exp.get("weights") or {}).items():
            got = (ext.identity.get("weights") or {}).get(kind)
            if want is None or got is None:
                continue
            if bool(want.get("random")) != bool(got.get("random")) or (
                    not want.get("random") and want.get("sha256") != got.get("sha256")):
                raise WeightsError(
                    f"the {kind} backbone weights given ({got.get('file') or 'random'}) differ from "
                    f"those this model was trained with ({want.get('file') or 'random'}, sha256 "
                    f"{str(want.get('sha256'))[:12]}…); pass the same weights file")

    def backbone_identity(self) -> dict[str, Any]:
        return dict(self.extractor.identity)

    # ------------------------------------------------------------------ heads

    def head_state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: head.state_dict() for name, head in self.heads.items()}

    def load_head_state_dicts(self, states: Mapping[str, Mapping[str, torch.Tensor]],
                              source: str = "weights") -> None:
        """Load official-layout state dicts strictly; any mismatch → ArtifactError."""
        want, got = set(self.heads), set(states)
        if want != got:
            raise ArtifactError(f"{source}: heads {sorted(got)} do not match the {self.modality} "
                                f"model's heads {sorted(want)}")
        for name, head in self.heads.items():
            sd = states[name]
            own = head.state_dict()
            missing = sorted(set(own) - set(sd))
            unexpected = sorted(set(sd) - set(own))
            wrong = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
            if missing or unexpected or wrong:
                parts = []
                if missing:
                    parts.append(f"missing {missing[:4]}{'…' if len(missing) > 4 else ''}")
                if unexpected:
                    parts.append(f"unexpected {unexpected[:4]}{'…' if len(unexpected) > 4 else ''}")
                if wrong:
                    k = wrong[0]
                    parts.append(f"shape of {k} is {tuple(sd[k].shape)}, the config needs "
                                 f"{tuple(own[k].shape)}" + (f" (+{len(wrong) - 1} more)" if len(wrong) > 1 else ""))
                raise ArtifactError(f"{source}: weights of {name} do not fit the model config "
                                    f"(preset {self.config.preset}, grid {self.grid}): " + "; ".join(parts))
            head.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)
        self.heads.to(self.device).eval()

    # ------------------------------------------------------------------ features

    def _prepare(self, sample: Any):
        from .data.transforms import transform_sample

        return transform_sample(sample, self.config.features)

    def _extractor_for(self, branch: str):
        """The extractor of the model's modality, or one running only the encoder with input."""
        ext = self.extractor
        if branch == self.modality:
            return ext
        from .features.extractor import FeatureExtractor

        return FeatureExtractor.from_modules(ext.vit if branch == "rgb" else None,
                                             ext.point_mae if branch == "xyz" else None,
                                             self.config.features, branch,
                                             identities=ext.weights, device=self.device)

    def _features_for(self, rgb: torch.Tensor | None, xyz: torch.Tensor | None, branch: str):
        """Extract dense features for one branch (inputs of unused encoders dropped)."""
        return self._extractor_for(branch).extract(rgb if branch != "xyz" else None,
                                                   xyz if branch != "rgb" else None)

    # ------------------------------------------------------------------ scoring

    @torch.no_grad()
    def _distances(self, f2d: torch.Tensor | None, f3d: torch.Tensor | None,
                   valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Head outputs → the (B, G, G) distance maps that can be computed.

        With `fast_heads` (default) the exact fast path runs the heads only where the scoring
        uses them (`valid`; every pixel when None) and leaves exact zeros elsewhere — the fusion
        masks those pixels anyway. `fast_heads = False` runs the plain reference path.
        """
        from .model.distances import distance_maps, plain_distance_maps

        if f2d is None and f3d is None:
            return {}
        f2d = None if f2d is None else f2d.to(self.device, torch.float32)
        f3d = None if f3d is None else f3d.to(self.device, torch.float32)
        if not self.fast_heads:
            return plain_distance_maps(self.heads, f2d, f3d)
        if valid is None and f3d is not None:
            valid = f3d.sum(1) != 0
        return distance_maps(self.heads, f2d, f3d, None if valid is None else valid.to(self.device))

    def _fuse(self, d: Mapping[str, torch.Tensor], valid: torch.Tensor, branch: str
              ) -> tuple[torch.Tensor, torch.Tensor]:
        from .model.fusion import score

        variant = self.config.score.variant if branch == "rgb+xyz" else BRANCH_VARIANT[branch]
        if branch == "rgb":
            valid = None  # no 3D mask without a point cloud: every pixel counts
        return score(d.get("d_map2d"), d.get("d_map3d"), d.get("d_rec2d"), d.get("d_rec3d"),
                     valid, variant, temperature=self.config.score.temperature)

    def branches(self) -> tuple[str, ...]:
        """Scoring branches this model supports (its modality first)."""
        return {"rgb+xyz": ("rgb+xyz", "rgb", "xyz"), "rgb": ("rgb",), "xyz": ("xyz",)}[self.modality]

    def choose_branch(self, has_rgb: bool, has_xyz: bool, xyz_empty: bool = False) -> tuple[str, list[str]]:
        """Which branch scores a sample with these inputs, and the notes to report."""
        m = self.modality
        xyz_ok = has_xyz and not xyz_empty
        if m == "rgb":
            if not has_rgb:
                raise UserInputError("this model is RGB-only and the sample has no RGB image")
            return "rgb", ([] if not has_xyz else ["point cloud ignored: the model is RGB-only"])
        if m == "xyz":
            if not has_xyz:
                raise UserInputError("this model is 3D-only and the sample has no point cloud")
            if xyz_empty:
                raise UserInputError("this model is 3D-only and the sample's point cloud has no valid point")
            return "xyz", ([] if not has_rgb else ["RGB image ignored: the model is 3D-only"])
        if has_rgb and xyz_ok:
            return "rgb+xyz", []
        if has_rgb:
            why = "has no valid point" if has_xyz else "was not given"
            return "rgb", [f"point cloud {why}: scored with the RGB branch only (2D reconstruction)"]
        if xyz_ok:
            return "xyz", ["RGB image was not given: scored with the 3D branch only (3D reconstruction)"]
        if has_xyz:
            raise UserInputError("the sample has no RGB image and its point cloud has no valid point")
        raise UserInputError("the sample has neither an RGB image nor a point cloud")

    @torch.no_grad()
    def score_tensors(self, rgb: torch.Tensor | None, xyz: torch.Tensor | None,
                      branch: str | None = None) -> dict[str, Any]:
        """Score a batch of transformed tensors (the path `predict` takes after the transforms).

        rgb: (B, 3, S, S) normalised, xyz: (B, 3, G, G) organised cloud. Returns
        {"map_grid": Ψ (B, G, G), "score": (B,), "valid": (B, G, G), "branch": str, "notes": [...]}.
        """
        notes: list[str] = []
        if branch is None:
            empty = xyz is not None and not bool(cloud_has_points(xyz).all())
            branch, notes = self.choose_branch(rgb is not None, xyz is not None, empty)
        if not self.fast_heads:
            feats = self._features_for(rgb, xyz, branch)
            d = self._distances(feats.f2d, feats.f3d, feats.valid if feats.f3d is not None else None)
            valid = feats.valid
            del feats
        else:
            d, valid = self._sample_by_sample(rgb, xyz, branch)
        if self.device.type == "cpu":
            release_memory()  # hand the freed heap back before the next sample (glibc malloc_trim)
        amap, scores = self._fuse(d, valid.to(self.device), branch)
        return {"map_grid": amap, "score": scores, "valid": valid, "branch": branch, "notes": notes}

    def _sample_by_sample(self, rgb: torch.Tensor | None, xyz: torch.Tensor | None, branch: str
                          ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Distance maps (B, G, G) and valid (B, G, G) on the exact fast path, one sample at a
        time: features are extracted as token sources (`FeatureExtractor.extract_rows`: F2D
        upsampled on demand, F3D packed) and dropped before the next sample, so peak memory does
        not grow with the batch."""
        from .model.distances import sample_distance_maps

        ext = self._extractor_for(branch)
        rgb = rgb if branch != "xyz" else None
        xyz = xyz if branch != "rgb" else None
        b = (rgb if rgb is not None else xyz).shape[0]
        maps: dict[str, list[torch.Tensor]] = {}
        valids = []
        for i in range(b):
            rows = ext.extract_rows(None if rgb is None else rgb[i:i + 1],
                                    None if xyz is None else xyz[i:i + 1])
            v = rows.valid if rows.f3d is not None else torch.ones_like(rows.valid)
            trim = release_memory if self.device.type == "cpu" else None
            for k, m in sample_distance_maps(self.heads, rows.f2d, rows.f3d, v.to(self.device),
                                             between=trim).items():
                maps.setdefault(k, []).append(m)
            valids.append(rows.valid)
            del rows
            if self.device.type == "cpu" and i + 1 < b:
                release_memory()
        return {k: torch.stack(v) for k, v in maps.items()}, torch.stack(valids)

    def _decide(self, score: float, branch: str) -> tuple[bool | None, float | None]:
        t = self.thresholds.get(branch)
        return (None, None) if t is None else (bool(score >= t), float(t))

    def _result(self, ts: Any, out: Mapping[str, Any], i: int, notes: list[str]) -> Result:
        from .data.transforms import to_original
        from .model.fusion import mean_nonzero

        psi = out["map_grid"][i:i + 1]
        norm = psi / mean_nonzero(psi).sqrt()[:, None, None]
        size = ts.orig_size if ts.orig_size and ts.orig_size[0] > 0 else (self.grid, self.grid)
        amap = to_original(norm[0].float().cpu(), size, self.config.features.transforms)
        score = float(out["score"][i])
        decision, thr = self._decide(score, out["branch"])
        return Result(key=ts.key, anomaly_map=amap.numpy().astype(np.float32),
                      map_grid=psi[0].float().cpu().numpy(), score=score, is_anomalous=decision,
                      threshold=thr, branch=out["branch"], notes=list(notes),
                      valid_grid=out["valid"][i].cpu().numpy().astype(bool), label=int(ts.label),
                      gt_grid=None if ts.gt is None else ts.gt.cpu().numpy().astype(bool),
                      orig_size=tuple(size))

    def predict(self, sample: Any) -> Result:
        """Score one raw `Sample` (original-resolution arrays)."""
        return next(self.predict_many([sample], batch_size=1))

    def predict_many(self, samples: Iterable[Any], batch_size: int | None = None,
                     progress: bool = False, total: int | None = None) -> Iterator[Result]:
        """Score samples in batches of the same branch; yields one `Result` per sample, in order."""
        bs = batch_size or max(1, self.config.train.batch_size)
        pending: list[tuple[Any, str, list[str]]] = []
        bar = _bar(progress, total, "predict")

        def flush() -> Iterator[Result]:
            if not pending:
                return
            branch = pending[0][1]
            ts_list = [p[0] for p in pending]
            rgb = torch.stack([t.rgb for t in ts_list]) if branch != "xyz" else None
            xyz = torch.stack([t.xyz for t in ts_list]) if branch != "rgb" else None
            out = self.score_tensors(rgb, xyz, branch=branch)
            for i, (ts, _, notes) in enumerate(pending):
                yield self._result(ts, out, i, notes)
                if bar is not None:
                    bar.advance()
            pending.clear()

        try:
            for s in samples:
                ts = self._prepare(s)
                empty = ts.xyz is not None and not bool(cloud_has_points(ts.xyz[None])[0])
                branch, notes = self.choose_branch(ts.rgb is not None, ts.xyz is not None, empty)
                if pending and (pending[0][1] != branch or len(pending) >= bs):
                    yield from flush()
                pending.append((ts, branch, notes))
            yield from flush()
        finally:
            if bar is not None:
                bar.close()

    # ------------------------------------------------------------------ training

    def _cache_features(self, dataset: Sequence[Any], cache, progress: bool, what: str):
        """Extract (or find) the features of every sample; returns the cached entries in order."""
        ext = self.extractor
        key = ext.cache_key()
        entries = []
        bar = _bar(progress, len(dataset), f"features ({what})")
        batch: list[tuple[int, str, Any]] = []
        bs = max(1, self.config.train.batch_size)

        def flush() -> None:
            if not batch:
                return
            rgb = torch.stack([b[2].rgb for b in batch]) if ext.uses_rgb else None
            xyz = torch.stack([b[2].xyz for b in batch]) if ext.uses_xyz else None
            feats = ext.extract(rgb, xyz)
            for (i, k, _), f in zip(batch, feats.split(), strict=True):
                entries[i] = cache.put(k, key, f)
                if bar is not None:
                    bar.advance()
            batch.clear()

        try:
            for i in range(len(dataset)):
                s = dataset[i]
                k = sample_key(s)
                entries.append(cache.get(k, key))
                if entries[-1] is not None:
                    if bar is not None:
                        bar.advance()
                    continue
                ts = self._prepare(s)
                if ext.uses_rgb and ts.rgb is None:
                    raise UserInputError(f"training sample {s.key or i} has no RGB image "
                                         f"(the model's modality is {self.modality})")
                if ext.uses_xyz and ts.xyz is None:
                    raise UserInputError(f"training sample {s.key or i} has no point cloud "
                                         f"(the model's modality is {self.modality})")
                if ext.uses_xyz and not bool(cloud_has_points(ts.xyz[None])[0]):
                    # no valid point: stored as all-invalid features (skipped and counted later)
                    from .features.extractor import Features

                    g = self.grid
                    f2d = self._features_for(ts.rgb[None], None, "rgb").f2d if ext.uses_rgb else None
                    empty = Features(f2d, torch.zeros(1, self.config.heads.dim3d, g, g),
                                     torch.zeros(1, g, g, dtype=torch.bool))
                    entries[i] = cache.put(k, key, empty, identity=ext.identity)
                    if bar is not None:
                        bar.advance()
                    continue
                batch.append((i, k, ts))
                if len(batch) >= bs:
                    flush()
            flush()
        finally:
            if bar is not None:
                bar.close()
        return entries

    def fit(self, train_dataset: Sequence[Any], val_dataset: Sequence[Any] | None = None, *,
            cache_dir: str | Path | None = None, checkpoint: str | Path | None = None,
            resume: bool = False, progress: bool = True, threshold_quantile: float = 1.0,
            log=None) -> Any:
        """Train the heads on `train_dataset` (normal samples) and calibrate the thresholds.

        Features are extracted once into the on-disk cache at `cache_dir` (a temporary folder,
        deleted afterwards, when None). `checkpoint`: folder of the per-epoch checkpoint;
        `resume` continues from it. Returns the `training.TrainReport`.
        """
        from .features.cache import FeatureCache
        from .training import fingerprint, train_heads

        if len(train_dataset) == 0:
            raise UserInputError("the training set is empty")
        tmp = None
        if cache_dir is None:
            tmp = Path(tempfile.mkdtemp(prefix="cmdr-iad-features-"))
        try:
            cache = FeatureCache(cache_dir if cache_dir is not None else tmp)
            entries = self._cache_features(train_dataset, cache, progress, "train")
            store = _CachedStore(entries, self.modality)
            run_cfg = self.config.to_dict()
            run_cfg["train"].pop("epochs")  # a resumed run may extend the number of epochs
            fp = fingerprint(run_cfg, self.extractor.cache_key(), [e.sample_key for e in entries])
            heldout = None  # normal validation samples: held-out error per epoch (train_log.csv)
            if val_dataset is not None and len(val_dataset) > 0:
                normal = [i for i in range(len(val_dataset)) if int(getattr(val_dataset[i], "label", 0)) == 0]
                val_entries = self._cache_features(val_dataset, cache, progress, "validation")
                heldout = _CachedStore([val_entries[i] for i in normal], self.modality)
            report = train_heads(dict(self.heads.items()), store, self.config.train,
                                 device=self.device, all_valid=self.modality == "rgb", heldout=heldout,
                                 checkpoint=None if checkpoint is None else Path(checkpoint),
                                 resume=resume, run_fingerprint=fp, progress=progress, log=log)
            self.heads.eval()
            self.info["training"] = report.to_dict()
            if val_dataset is not None and len(val_dataset) > 0:
                self.calibrate(val_dataset, quantile=threshold_quantile, progress=progress,
                               cache=cache)
            else:
                self._calibrate_entries(entries, [0] * len(entries), threshold_quantile,
                                        source="training samples (no validation set given)")
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        return report

    # ------------------------------------------------------------------ calibration

    def calibrate(self, dataset: Sequence[Any], *, quantile: float = 1.0, progress: bool = False,
                  cache=None) -> dict[str, Any]:
        """Set the per-branch thresholds from `dataset` (see the module docstring for the rule)."""
        from .features.cache import FeatureCache

        tmp = None
        if cache is None:
            tmp = Path(tempfile.mkdtemp(prefix="cmdr-iad-features-"))
            cache = FeatureCache(tmp)
        try:
            entries = self._cache_features(dataset, cache, progress, "validation")
            labels = [int(getattr(dataset[i], "label", 0)) for i in range(len(dataset))]
            return self._calibrate_entries(entries, labels, quantile, source="validation samples")
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    @torch.no_grad()
    def _calibrate_entries(self, entries: Sequence[Any], labels: Sequence[int], quantile: float,
                           source: str) -> dict[str, Any]:
        scores: dict[str, list[float]] = {b: [] for b in self.branches()}
        lows: dict[str, list[float]] = {b: [] for b in self.branches()}
        used_labels: dict[str, list[int]] = {b: [] for b in self.branches()}
        for e, lab in zip(entries, labels, strict=True):
            f = e.to_features(self.device)
            has3d = f.f3d is not None and bool(f.valid.any())
            d = self._distances(f.f2d, f.f3d if has3d else None, f.valid if has3d else None)
            d_rgb = None
            for b in self.branches():
                if (b != "rgb" and not has3d) or (b != "xyz" and f.f2d is None):
                    continue
                if b == "rgb" and has3d:  # the RGB branch scores every pixel: its own d_rec2d
                    d_rgb = d_rgb or self._distances(f.f2d, None, None)
                amap, s = self._fuse(d_rgb if b == "rgb" and has3d else d, f.valid, b)
                scores[b].append(float(s[0]))
                used_labels[b].append(int(lab))
                from .model.fusion import mean_nonzero

                norm = amap / mean_nonzero(amap).sqrt()[:, None, None]
                lows[b].append(float(norm.median()))
        cal: dict[str, Any] = {"source": source, "quantile": quantile, "branches": {}}
        for b in self.branches():
            if not scores[b]:
                continue
            t, rule = threshold_from_scores(scores[b], used_labels[b], quantile)
            normal = [s for s, lab in zip(scores[b], used_labels[b], strict=True) if lab != 1]
            self.thresholds[b] = t
            cal["branches"][b] = {
                "threshold": t, "rule": rule, "n": len(scores[b]), "n_normal": len(normal),
                "normal_mean": float(np.mean(normal)) if normal else None,
                "normal_std": float(np.std(normal)) if normal else None,
                "normal_max": float(np.max(normal)) if normal else None,
                "map_low": float(np.median(lows[b])),
            }
        self.calibration = cal
        return cal

    def heatmap_range(self, branch: str) -> tuple[float | None, float | None]:
        """(lo, hi) for colouring `Result.anomaly_map`: typical normal level → threshold."""
        b = (self.calibration.get("branches") or {}).get(branch)
        if not b:
            return None, None
        lo, hi = b["map_low"], b["threshold"]
        return (lo, hi) if hi > lo else (None, None)

    # ------------------------------------------------------------------ save / load

    def save(self, path: str | Path) -> Path:
        """Write the model folder (safetensors heads + JSON metadata) atomically."""
        from .artifact import save_artifact

        tensors = {f"{name}.{k}": v for name, sd in self.head_state_dicts().items() for k, v in sd.items()}
        ext = self.extractor
        meta = {
            "config": self.config.to_dict(),
            "preset": self.config.preset,
            "modality": self.modality,
            "heads": list(self.heads),
            "thresholds": self.thresholds,
            "calibration": self.calibration,
            "backbone": {
                "identity": ext.identity,
                "random_backbones": bool(ext.random_backbones),
                "seed": self.backbone_seed,
                "paths": {k: (None if v is None else str(Path(v).resolve()))
                          for k, v in self.weights_paths.items()},
            },
            "info": self.info,
        }
        out = save_artifact(path, tensors, meta, KIND)
        if self.info.get("training", {}).get("log"):
            from .training import write_train_log

            write_train_log(Path(out) / "train_log.csv", self.info["training"]["log"])
        return out

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "auto",
             dino_weights: str | None = None, point_mae_weights: str | None = None) -> CMDRIAD:
        """Load a model folder written by `save` (safetensors + JSON; nothing is unpickled)."""
        from .artifact import load_artifact
        from .errors import ConfigError

        p = Path(path)
        if not p.exists():
            raise UserInputError(f"model folder not found: {p}")
        tensors, meta = load_artifact(p, KIND)
        try:
            cfg = DetectorConfig.from_dict(meta["config"])
        except (KeyError, ConfigError) as e:
            raise ArtifactError(f"{p}: the stored config is invalid: {e}") from e
        bb = meta.get("backbone") or {}
        paths = bb.get("paths") or {}

        def pick(given: str | None, kind: str) -> str | None:
            if given is not None:
                return given
            saved = paths.get(kind)
            return saved if saved and Path(saved).is_file() else None

        det = cls(cfg, dino_weights=pick(dino_weights, "dino"),
                  point_mae_weights=pick(point_mae_weights, "point_mae"),
                  random_backbones=bool(bb.get("random_backbones")), device=device,
                  backbone_seed=int(bb.get("seed", 0)))
        det._expected_backbone = bb.get("identity")
        states: dict[str, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            name, _, rest = k.partition(".")
            states.setdefault(name, {})[rest] = v
        det.load_head_state_dicts(states, source=str(p))
        det.thresholds = {k: float(v) for k, v in (meta.get("thresholds") or {}).items()}
        det.calibration = meta.get("calibration") or {}
        det.info = meta.get("info") or {}
        det.info.setdefault("environment", meta.get("environment"))
        return det


def threshold_from_scores(scores: Sequence[float], labels: Sequence[int], quantile: float = 1.0
                          ) -> tuple[float, str]:
    """Threshold and the rule used: F1-optimal with both labels, else a quantile of normal scores."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if (y == 1).any() and (y != 1).any():
        best, best_t = -1.0, float(s.max())
        for t in np.unique(s):
            pred = s >= t
            tp = float(np.sum(pred & (y == 1)))
            fp = float(np.sum(pred & (y != 1)))
            fn = float(np.sum(~pred & (y == 1)))
            f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
            if f1 >= best:
                best, best_t = f1, float(t)
        return best_t, f"f1-optimal (F1 {best:.3f} on the labelled validation samples)"
    normal = s[y != 1] if (y != 1).any() else s
    q = min(max(float(quantile), 0.0), 1.0)
    return float(np.quantile(normal, q)), f"quantile {q:g} of the normal validation scores"


class _CachedStore:
    """`training.FeatureStore` over cached entries (memory-mapped, read per batch)."""

    def __init__(self, entries: Sequence[Any], modality: str):
        self.entries = list(entries)
        self.modality = modality

    def __len__(self) -> int:
        return len(self.entries)

    def valid(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.entries[index].valid, dtype=bool))

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor | None]:
        es = [self.entries[i] for i in indices]

        def stack(name: str) -> torch.Tensor | None:
            arrs = [getattr(e, name) for e in es]
            if arrs[0] is None:
                return None
            return torch.from_numpy(np.stack([np.asarray(a, dtype=np.float32) for a in arrs]))

        return {"f2d": stack("f2d") if self.modality != "xyz" else None,
                "f3d": stack("f3d") if self.modality != "rgb" else None,
                "valid": torch.from_numpy(np.stack([np.array(e.valid, dtype=bool) for e in es]))}


class _Bar:
    def __init__(self, total: int | None, desc: str):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.p = Progress(TextColumn(f"[bold]{desc}[/]"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn())
        self.p.__enter__()
        self.task = self.p.add_task(desc, total=total)

    def advance(self) -> None:
        self.p.update(self.task, advance=1)

    def close(self) -> None:
        self.p.__exit__(None, None, None)


def _bar(enabled: bool, total: int | None, desc: str) -> _Bar | None:
    return _Bar(total, desc) if enabled else None
