"""Training loop of the heads: each head has its own optimiser and its own loss (paper §3.4).

Which heads learn what (features as tokens, (B, G·G, C)):

| head        | input | target | progress name |
|-------------|-------|--------|---------------|
| `map2Dto3D` | F2D   | F3D    | `map3d`       |
| `map3Dto2D` | F3D   | F2D    | `map2d`       |
| `Dec2D`     | F2D   | F2D    | `rec2d`       |
| `Dec3D`     | F3D   | F3D    | `rec3d`       |

The loss is the masked cosine loss over valid pixels (a pixel is valid when its 3D feature is
not all-zero; RGB-only training uses every pixel). Samples without any valid pixel carry no
training signal and are skipped and counted before training starts.

Repeatability: the heads are initialised by the caller under `seed`; every epoch re-seeds the
torch RNG (dropout) with `seed + epoch` and shuffles with its own generator, so a run resumed
from the checkpoint of epoch k continues exactly as the uninterrupted run would have.
Checkpoints (heads + optimiser states, safetensors + JSON, never pickled) are written after
every epoch through `cmdr_iad.artifact`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from .artifact import load_artifact, save_artifact
from .config import TrainConfig
from .errors import ArtifactError, UserInputError
from .model.distances import masked_head_loss

CHECKPOINT_KIND = "cmdr-iad-train-checkpoint"

# head → (input feature, target feature, progress name)
TASKS: dict[str, tuple[str, str, str]] = {
    "map2Dto3D": ("f2d", "f3d", "map3d"),
    "map3Dto2D": ("f3d", "f2d", "map2d"),
    "Dec2D": ("f2d", "f2d", "rec2d"),
    "Dec3D": ("f3d", "f3d", "rec3d"),
}


class FeatureStore(Protocol):
    """Random access to the cached features of a training set."""

    def __len__(self) -> int: ...

    def valid(self, index: int) -> torch.Tensor:
        """(G, G) bool valid-pixel mask of one sample (cheap: no feature read)."""
        ...

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor | None]:
        """{"f2d": (B, C2, G, G) | None, "f3d": (B, C3, G, G) | None, "valid": (B, G, G) bool}."""
        ...


def tokens(f: torch.Tensor) -> torch.Tensor:
    """(B, C, G, G) → (B, G·G, C), row-major (token n is pixel (n // G, n % G))."""
    return f.flatten(2).transpose(1, 2)


@dataclass
class TrainReport:
    epochs: int
    samples: int
    skipped_no_valid: int
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: mean loss per head
    skipped_steps: dict[str, int] = field(default_factory=dict)
    resumed_from_epoch: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "samples": self.samples,
                "skipped_no_valid": self.skipped_no_valid, "history": self.history,
                "skipped_steps": self.skipped_steps, "resumed_from_epoch": self.resumed_from_epoch}


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


# --------------------------------------------------------------------------- checkpoints


def _flatten_optimizer(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], Any]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{prefix}{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor],
                       prefix: str, meta: Mapping[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        if name.startswith(prefix):
            pid, key = name[len(prefix):].split(".", 1)
            state.setdefault(int(pid), {})[key] = t
    for pid, d in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(d)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(path: Path, heads: Mapping[str, nn.Module], opts: Mapping[str, torch.optim.Optimizer],
                    epoch: int, history: list[dict[str, float]], fingerprint: str) -> None:
    tensors: dict[str, torch.Tensor] = {}
    opt_meta: dict[str, Any] = {}
    for name, head in heads.items():
        for k, v in head.state_dict().items():
            tensors[f"head.{name}.{k}"] = v
        t, m = _flatten_optimizer(opts[name], f"opt.{name}.")
        tensors.update(t)
        opt_meta[name] = m
    save_artifact(path, tensors, {"epoch": epoch, "history": history, "optimizers": opt_meta,
                                  "fingerprint": fingerprint}, CHECKPOINT_KIND)


def load_checkpoint(path: Path, heads: Mapping[str, nn.Module], opts: Mapping[str, torch.optim.Optimizer],
                    fingerprint: str) -> tuple[int, list[dict[str, float]]]:
    """Restore heads and optimisers; returns (epochs done, loss history)."""
    tensors, meta = load_artifact(path, CHECKPOINT_KIND)
    if meta.get("fingerprint") != fingerprint:
        raise UserInputError(
            f"the training checkpoint {path} belongs to another run (different config, data or "
            "backbone weights); delete it or train without --resume")
    for name, head in heads.items():
        pre = f"head.{name}."
        sd = {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}
        try:
            head.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ArtifactError(f"training checkpoint {path} does not fit head {name}: {e}") from e
        _restore_optimizer(opts[name], tensors, f"opt.{name}.", meta["optimizers"][name])
    return int(meta["epoch"]), list(meta.get("history", []))


def fingerprint(*parts: Any) -> str:
    """Stable short hash of JSON-able parts (config, data keys, backbone identity)."""
    import hashlib

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- loop


def train_heads(
    heads: Mapping[str, nn.Module],
    store: FeatureStore,
    cfg: TrainConfig,
    *,
    device: torch.device | str = "cpu",
    all_valid: bool = False,
    checkpoint: Path | None = None,
    resume: bool = False,
    run_fingerprint: str = "",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainReport:
    """Train every head in `heads` (names from `TASKS`) on the features of `store`.

    `all_valid`: every pixel takes part in the loss (RGB-only models, which have no 3D mask).
    `checkpoint`: folder of the per-epoch checkpoint; with `resume` an existing one is continued.
    """
    device = torch.device(device)
    unknown = set(heads) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown heads {sorted(unknown)}")
    n = len(store)
    usable: list[int] = []
    for i in range(n):
        if all_valid or bool(store.valid(i).any()):
            usable.append(i)
    skipped = n - len(usable)
    if not usable:
        raise UserInputError(f"none of the {n} training samples has a valid 3D point; nothing to train on")
    if skipped and log:
        log(f"{skipped} of {n} training samples have no valid 3D point and are skipped")

    opts = {name: make_optimizer(h.parameters(), cfg) for name, h in heads.items()}
    start, history = 0, []
    if resume and checkpoint is not None and checkpoint.exists():
        start, history = load_checkpoint(checkpoint, heads, opts, run_fingerprint)
        if log:
            log(f"resuming from the checkpoint of epoch {start}")
    report = TrainReport(cfg.epochs, len(usable), skipped, history,
                         {name: 0 for name in heads}, resumed_from_epoch=start)
    for h in heads.values():
        h.to(device).train()

    bar = _Progress(progress, total=(cfg.epochs - start) * math.ceil(len(usable) / cfg.batch_size),
                    names=[TASKS[h][2] for h in heads])
    with bar:
        for epoch in range(start, cfg.epochs):
            torch.manual_seed(cfg.seed + epoch)
            gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
            order = [usable[i] for i in torch.randperm(len(usable), generator=gen).tolist()]
            sums = {name: 0.0 for name in heads}
            counts = {name: 0 for name in heads}
            for b0 in range(0, len(order), cfg.batch_size):
                feats = store.batch(order[b0:b0 + cfg.batch_size])
                tok = {k: None if feats[k] is None else tokens(feats[k].to(device, torch.float32))
                       for k in ("f2d", "f3d")}
                valid = feats["valid"].to(device).flatten(1)
                if all_valid:
                    valid = torch.ones_like(valid, dtype=torch.bool)
                for name, head in heads.items():
                    src, dst, _ = TASKS[name]
                    loss = masked_head_loss(head, tok[src], tok[dst], valid)
                    if loss is None or not torch.isfinite(loss):
                        report.skipped_steps[name] += 1
                        continue
                    opts[name].zero_grad(set_to_none=True)
                    loss.backward()
                    opts[name].step()
                    sums[name] += float(loss.detach())
                    counts[name] += 1
                bar.step(epoch + 1, cfg.epochs, {TASKS[k][2]: sums[k] / max(1, counts[k]) for k in heads})
            means = {TASKS[k][2]: sums[k] / max(1, counts[k]) for k in heads}
            history.append(means)
            if log and not progress:
                log(f"epoch {epoch + 1}/{cfg.epochs} " + " ".join(f"{k} {v:.4f}" for k, v in means.items()))
            if checkpoint is not None:
                save_checkpoint(checkpoint, heads, opts, epoch + 1, history, run_fingerprint)
    for h in heads.values():
        h.eval()
    report.history = history
    return report


class _Progress:
    """A rich progress bar showing the epoch and the running loss of every head (or nothing)."""

    def __init__(self, enabled: bool, total: int, names: list[str]):
        self.enabled = enabled and total > 0
        self.total = total
        self.names = names
        self._p = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._p = Progress(TextColumn("[bold]train[/] epoch {task.fields[epoch]}"), BarColumn(),
                               MofNCompleteColumn(), TimeElapsedColumn(),
                               TextColumn("{task.fields[losses]}"), transient=False)
            self._p.__enter__()
            self._task = self._p.add_task("train", total=self.total, epoch="", losses="")
        return self

    def step(self, epoch: int, epochs: int, losses: Mapping[str, float]) -> None:
        if self._p is not None:
            text = " ".join(f"{k} {v:.4f}" for k, v in losses.items())
            self._p.update(self._task, advance=1, epoch=f"{epoch}/{epochs}", losses=text)

    def __exit__(self, *exc: Any) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)
