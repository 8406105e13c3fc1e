"""`CMDRIAD`: the detector a user works with — fit, predict, save, load.

Glue only: the frozen extractor (`features.extractor`) and the heads (`model.heads`) make the
one inference path (`inference.InferencePath`); training extracts features once through the
cache (`features.store`) and trains each head (`training.train_heads`); thresholds come from
`calibration`; results are built by `result`; the model folder is written by `artifact`.
See `inference` for the scoring branches and `calibration` for the threshold rule.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .config import DetectorConfig
from .device import resolve_device
from .errors import ArtifactError, ConfigError, UserInputError, WeightsError
from .inference import (
    BRANCHES,
    BranchChoice,
    InferencePath,
    choose_branch,
    cloud_has_points,
)
from .progress import progress as progress_bar
from .result import Result, build_result

KIND = "cmdr-iad-detector"
TRAIN_LOG = "train_log.csv"
"""Per-epoch losses of the four heads, held-out normal error, epoch time, skipped samples."""

__all__ = ["CMDRIAD", "Result", "KIND"]


class CMDRIAD:
    """CMDR-IAD detector.

    CMDRIAD(config, *, dino_weights=None, point_mae_weights=None, random_backbones=False,
            device="auto", backbone_seed=0, extractor=None)
    """

    def __init__(self, config: DetectorConfig, *, dino_weights: str | None = None,
                 point_mae_weights: str | None = None, random_backbones: bool = False,
                 device: str | torch.device = "auto", backbone_seed: int = 0,
                 extractor: Any = None) -> None:
        from .model.heads import build_heads

        self.config = config.validate()
        self.device = resolve_device(device)
        self.weights_paths = {"dino": dino_weights, "point_mae": point_mae_weights}
        self.random_backbones = bool(random_backbones)
        self.backbone_seed = int(backbone_seed)
        self._extractor = extractor
        self._path: InferencePath | None = None
        self.precision = "fp32"  # of inference; `set_precision` changes it
        from .model.fusion import VARIANTS

        if self.config.score.variant not in VARIANTS:
            raise ConfigError(f"unknown fusion variant {self.config.score.variant!r}; use one of "
                              f"{', '.join(VARIANTS)}")
        h = self.config.heads
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.train.seed)
            try:
                self.heads = build_heads(self.modality, self.grid, h.dim2d, h.dim3d, h.num_heads,
                                         h.window_size)
            except ValueError as e:  # the networks' own checks: a config that cannot build
                raise ConfigError(f"the heads config does not build: {e}") from e
        self.heads.to(self.device).eval()
        self.thresholds: dict[str, float] = {}
        self.calibration: dict[str, Any] = {}
        self.info: dict[str, Any] = {}
        self._expected_backbone: dict[str, Any] | None = None

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

    @property
    def path(self) -> InferencePath:
        """The one inference path over this model's extractor and heads (rebuilt when the scoring
        config changes, e.g. an ablation variant set on `config`)."""
        if (self._path is None or self._path.score_cfg != self.config.score
                or self._path.precision != self.precision):
            self._path = InferencePath(self.extractor, self.heads, self.config.score, self.modality,
                                       self.device, self.precision)
        return self._path

    def set_precision(self, precision: str, say=None, *, emulate: bool = False) -> str:
        """Set the inference precision ("fp32" exact, default; "bf16"; "fp16" on CUDA) and return
        the one that will run: `precision.resolve_precision` tells ``say`` (one line) and keeps
        fp32 where the hardware has no native bf16 (``emulate``: run bf16 numerics anyway, for
        deviation checks). Raises `UserInputError` for an unknown name or fp16 off CUDA."""
        from .precision import resolve_precision

        self.precision = resolve_precision(precision, self.device, say, emulate=emulate)
        return self.precision

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

    def branches(self) -> tuple[str, ...]:
        """Scoring branches this model supports (its modality first)."""
        return BRANCHES[self.modality]

    def choose_branch(self, has_rgb: bool, has_xyz: bool, xyz_empty: bool = False) -> BranchChoice:
        """Which branch scores a sample with these inputs (see `inference.choose_branch`)."""
        return choose_branch(self.modality, has_rgb, has_xyz, xyz_empty)

    # ------------------------------------------------------------------ heads

    def head_state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: head.state_dict() for name, head in self.heads.items()}

    def load_head_state_dicts(self, states: Mapping[str, Mapping[str, torch.Tensor]],
                              source: str = "weights") -> None:
        """Load official-layout state dicts strictly; any mismatch → ArtifactError."""
        from .model.heads import load_strict

        want, got = set(self.heads), set(states)
        if want != got:
            raise ArtifactError(f"{source}: heads {sorted(got)} do not match the {self.modality} "
                                f"model's heads {sorted(want)}")
        for name, head in self.heads.items():
            try:
                load_strict(head, states[name], f"weights of {name}")
            except ValueError as e:
                raise ArtifactError(f"{source}: the weights do not fit the model config (preset "
                                    f"{self.config.preset}, grid {self.grid}): {e}") from e
        self.heads.to(self.device).eval()

    # ------------------------------------------------------------------ scoring

    def _prepare(self, sample: Any):
        from .data.transforms import transform_sample

        return transform_sample(sample, self.config.features)

    def score_tensors(self, rgb: torch.Tensor | None, xyz: torch.Tensor | None,
                      branch: str | None = None, *, heads: str = "exact", timer=None) -> dict[str, Any]:
        """Score a batch of transformed tensors (the step `predict` takes after the transforms).

        rgb: (B, 3, S, S) normalised, xyz: (B, 3, G, G) organised cloud. Returns
        {"map_grid": Ψ (B, G, G), "score": (B,), "valid": (B, G, G), "distances": {...},
        "branch": str, "missing_modality": str | None, "notes": [...]}.
        """
        choice = BranchChoice(branch) if branch is not None else self.choose_branch(
            rgb is not None, xyz is not None, xyz is not None and not bool(cloud_has_points(xyz).all()))
        sc = self.path.score(rgb, xyz, branch=choice.branch, heads=heads, timer=timer)
        return {"map_grid": sc.map_grid, "score": sc.score, "valid": sc.valid,
                "distances": sc.distances, "branch": sc.branch,
                "missing_modality": choice.missing_modality, "notes": choice.notes}

    def predict(self, sample: Any, *, heads: str = "exact") -> Result:
        """Score one raw `Sample` (original-resolution arrays)."""
        return next(self.predict_many([sample], batch_size=1, heads=heads))

    def predict_many(self, samples: Iterable[Any], batch_size: int | None = None,
                     progress: bool = False, total: int | None = None, *, heads: str = "exact",
                     timer=None, cache=None) -> Iterator[Result]:
        """Score samples in batches of the same branch; yields one `Result` per sample, in order.

        heads: "exact" (default) or "reference" (`inference.HEAD_PATHS`); timer: a stage timer
        (`inference.StageTimer`) charged with "transforms", "features", "heads", "fusion" and
        "output". cache: a feature cache (`features.store.open_cache`): samples scored with the
        model's own branch take their features from it (extracted into it once, shared with
        every model of the same encoders, e.g. the cells of a grid; same values up to float32
        rounding of F2D).
        """
        from contextlib import nullcontext

        stage = timer or (lambda name: nullcontext())
        bs = batch_size or max(1, self.config.train.batch_size)
        fcfg = self.config.features
        pending: list[tuple[Any, BranchChoice, Any]] = []

        def flush(bar) -> Iterator[Result]:
            if not pending:
                return
            branch = pending[0][1].branch
            ts_list = [p[0] for p in pending]
            if cache is not None and branch == self.modality and heads == "exact":
                from .features.store import cache_features, entry_rows

                with stage("features"):
                    entries = cache_features(self.extractor, [p[2] for p in pending], cache,
                                             self._prepare, batch_size=len(pending), what="test")
                    rows = [entry_rows(e, self.device) for e in entries]
                sc = self.path.score(branch=branch, features=rows, heads=heads, timer=timer)
            else:
                rgb = torch.stack([t.rgb for t in ts_list]) if branch != "xyz" else None
                xyz = torch.stack([t.xyz for t in ts_list]) if branch != "rgb" else None
                sc = self.path.score(rgb, xyz, branch=branch, heads=heads, timer=timer)
            for i, (ts, choice, _) in enumerate(pending):
                with stage("output"):
                    res = build_result(ts, sc, i, choice, self.thresholds.get(branch),
                                       fcfg.transforms, self.grid)
                yield res
                bar.advance()
            pending.clear()

        with progress_bar(total, "predict", enabled=progress) as bar:
            for s in samples:
                with stage("transforms"):
                    ts = self._prepare(s)
                    empty = ts.xyz is not None and not bool(cloud_has_points(ts.xyz[None])[0])
                    choice = self.choose_branch(ts.rgb is not None, ts.xyz is not None, empty)
                if pending and (pending[0][1].branch != choice.branch or len(pending) >= bs):
                    yield from flush(bar)
                pending.append((ts, choice, s))
            yield from flush(bar)

    # ------------------------------------------------------------------ training

    def _cache(self, dataset: Sequence[Any], cache, show_progress: bool, what: str) -> list[Any]:
        from .features.store import cache_features

        return cache_features(self.extractor, dataset, cache, self._prepare,
                              batch_size=self.config.train.batch_size,
                              show_progress=show_progress, what=what)

    def fit(self, train_dataset: Sequence[Any], val_dataset: Sequence[Any] | None = None, *,
            cache_dir: str | Path | None = None, checkpoint: str | Path | None = None,
            resume: bool = False, progress: bool = True, threshold_quantile: float = 1.0,
            log=None, feature_dtype: str = "float32") -> Any:
        """Train the heads on `train_dataset` (normal samples) and calibrate the thresholds.

        Features are extracted once into the compact on-disk cache at `cache_dir` (a temporary
        folder, deleted afterwards, when None; `feature_dtype` "float16" halves it, rounding the
        features); the expected size is logged and a filesystem without room for it stops the run
        (`UserInputError`) before any extraction. `checkpoint`: folder of the per-epoch checkpoint;
        `resume` continues from it. Returns the `training.TrainReport`.
        """
        from .features.store import (
            CachedSampleStore,
            check_cache_space,
            expected_cache_bytes,
            open_cache,
        )
        from .training import fingerprint, train_heads

        if len(train_dataset) == 0:
            raise UserInputError("the training set is empty")
        n_samples = len(train_dataset) + (0 if val_dataset is None else len(val_dataset))
        need = expected_cache_bytes(self.config.features, self.modality, n_samples, dtype=feature_dtype)
        where = cache_dir if cache_dir is not None else tempfile.gettempdir()
        if log:
            log(f"feature cache: {where}, at most {need / 1e6:.0f} MB for {n_samples} samples "
                "(less when entries exist or pixels lack 3D points)")
        check_cache_space(where, need)
        with open_cache(cache_dir, dtype=feature_dtype) as cache:
            entries = self._cache(train_dataset, cache, progress, "train")
            store = CachedSampleStore(entries, self.modality)
            run_cfg = self.config.to_dict()
            run_cfg["train"].pop("epochs")  # a resumed run may extend the number of epochs
            fp = fingerprint(run_cfg, self.extractor.cache_key(), [e.sample_key for e in entries],
                             *([feature_dtype] if feature_dtype != "float32" else []))
            heldout = None  # normal validation samples: held-out error per epoch (train_log.csv)
            if val_dataset is not None and len(val_dataset) > 0:
                normal = [i for i in range(len(val_dataset))
                          if int(getattr(val_dataset[i], "label", 0)) == 0]
                val_entries = self._cache(val_dataset, cache, progress, "validation")
                heldout = CachedSampleStore([val_entries[i] for i in normal], self.modality)
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
        return report

    # ------------------------------------------------------------------ calibration

    def calibrate(self, dataset: Sequence[Any], *, quantile: float = 1.0, progress: bool = False,
                  cache=None) -> dict[str, Any]:
        """Set the per-branch thresholds from `dataset` (rule: `calibration`)."""
        from .features.store import open_cache

        with open_cache(cache=cache) as c:
            entries = self._cache(dataset, c, progress, "validation")
            labels = [int(getattr(dataset[i], "label", 0)) for i in range(len(dataset))]
            return self._calibrate_entries(entries, labels, quantile, source="validation samples")

    def _calibrate_entries(self, entries: Sequence[Any], labels: Sequence[int], quantile: float,
                           source: str) -> dict[str, Any]:
        from .calibration import calibrate
        from .features.store import entry_rows

        items = ((entry_rows(e, self.device), lab) for e, lab in zip(entries, labels, strict=True))
        thresholds, cal = calibrate(self.path, items, self.branches(), quantile, source)
        self.thresholds.update(thresholds)
        self.calibration = cal
        return cal

    def heatmap_range(self, branch: str) -> tuple[float | None, float | None]:
        """(lo, hi) for colouring `Result.anomaly_map`: typical normal level → threshold."""
        from .calibration import heatmap_range

        return heatmap_range(self.calibration, branch)

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
        extra = {}
        if (self.info.get("training") or {}).get("log"):
            from .training import train_log_csv

            extra[TRAIN_LOG] = train_log_csv(self.info["training"]["log"]).encode()
        return save_artifact(path, tensors, meta, KIND, extra_files=extra)

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
            stored = dict(meta["config"])
            # saved before score.smoothing existed: scored with the chains in grid pixels
            stored["score"] = {"smoothing": "pixels", **(stored.get("score") or {})}
            cfg = DetectorConfig.from_dict(stored)
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


