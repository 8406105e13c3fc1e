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

Step order, masks and optimisers follow the authors' `train.py` (checked by
`tests/test_training_parity.py` against a reading of that loop): per batch, each head in
`TASKS` order runs forward, its loss, zero_grad, backward and its own Adam step (default
settings apart from `lr`); every loss of an RGB+3D model is masked by the missing-3D mask; the
heads are in train mode (dropout, BatchNorm batch statistics). Deliberate difference: a sample
with no valid pixel is skipped and counted (the authors' loop crashes in `backward()` on it).

Per epoch, `TrainReport.log` records the mean loss of every head, the epoch time, the skipped
samples/steps and, when a held-out store of normal samples is given, the held-out mean loss of
every head (eval mode), with a first row "epoch 0" holding the held-out losses before training;
`write_train_log` writes it as `train_log.csv`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from .artifact import load_artifact, save_artifact
from .config import TrainConfig
from .errors import ArtifactError, UserInputError
from .fileio import write_text_atomic
from .model.distances import masked_head_loss
from .precision import autocast, resolve_precision
from .progress import progress as progress_bar

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
    log: list[dict[str, Any]] = field(default_factory=list)  # per epoch: see `LOG_COLUMNS`
    valid_fraction: float = 1.0  # mean share of training pixels in the loss mask
    precision: str = "fp32"  # the precision the heads trained in (after `resolve_precision`)

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "samples": self.samples,
                "skipped_no_valid": self.skipped_no_valid, "history": self.history,
                "skipped_steps": self.skipped_steps, "resumed_from_epoch": self.resumed_from_epoch,
                "log": self.log, "valid_fraction": self.valid_fraction, "precision": self.precision}


RAW_CLOUD_FRACTION = 0.95
"""Above this mean share of valid training pixels the clouds are reported as looking raw."""

_NAMES = tuple(t[2] for t in TASKS.values())
LOG_COLUMNS: tuple[str, ...] = (
    ("epoch", "seconds", "samples", "skipped_samples", "skipped_steps")
    + tuple(f"loss_{n}" for n in _NAMES) + tuple(f"heldout_{n}" for n in _NAMES))
"""Columns of `train_log.csv`: loss_* = mean training loss of the epoch, heldout_* = mean loss
on the held-out normal samples after the epoch (empty when the head or the held-out set is absent)."""


def train_log_csv(report: TrainReport | Sequence[Mapping[str, Any]]) -> str:
    """`report.log` (or such rows) as CSV text: header `LOG_COLUMNS`, one row per epoch."""
    rows = report.log if isinstance(report, TrainReport) else report
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, restval="", extrasaction="ignore",
                       lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v))
                    for k, v in row.items()})
    return buf.getvalue()


def write_train_log(path: str | Path, report: TrainReport | Sequence[Mapping[str, Any]]) -> Path:
    """`train_log_csv` written atomically to ``path``."""
    return write_text_atomic(path, train_log_csv(report))


def read_train_log(path: str | Path) -> list[dict[str, float | None]]:
    """Rows of a `train_log.csv` as numbers (None for empty cells)."""
    with open(path, newline="") as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
                for row in csv.DictReader(f)]


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
                    epoch: int, history: list[dict[str, float]], fingerprint: str,
                    log: list[dict[str, Any]] | None = None) -> None:
    tensors: dict[str, torch.Tensor] = {}
    opt_meta: dict[str, Any] = {}
    for name, head in heads.items():
        for k, v in head.state_dict().items():
            tensors[f"head.{name}.{k}"] = v
        t, m = _flatten_optimizer(opts[name], f"opt.{name}.")
        tensors.update(t)
        opt_meta[name] = m
    save_artifact(path, tensors, {"epoch": epoch, "history": history, "optimizers": opt_meta,
                                  "fingerprint": fingerprint, "log": log or []}, CHECKPOINT_KIND)


def load_checkpoint(path: Path, heads: Mapping[str, nn.Module], opts: Mapping[str, torch.optim.Optimizer],
                    fingerprint: str) -> tuple[int, list[dict[str, float]], list[dict[str, Any]]]:
    """Restore heads and optimisers; returns (epochs done, loss history, per-epoch log)."""
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
    return int(meta["epoch"]), list(meta.get("history", [])), list(meta.get("log", []))


def fingerprint(*parts: Any) -> str:
    """Stable short hash of JSON-able parts (config, data keys, backbone identity)."""
    import hashlib

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- loop


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of `n` usable samples in `epoch` (its own generator, resumable)."""
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    return torch.randperm(n, generator=gen).tolist()


def _batch_tokens(store: FeatureStore, indices: Sequence[int], device: torch.device,
                  all_valid: bool) -> tuple[dict[str, torch.Tensor | None], torch.Tensor]:
    """Tokens {"f2d", "f3d"} (B, G·G, C) | None and the loss mask (B, G·G) bool of a batch."""
    feats = store.batch(indices)
    tok = {k: None if feats[k] is None else tokens(feats[k].to(device, torch.float32))
           for k in ("f2d", "f3d")}
    valid = feats["valid"].to(device).flatten(1)
    if all_valid:
        valid = torch.ones_like(valid, dtype=torch.bool)
    return tok, valid


def prefetch_batches(store: FeatureStore, batches: Sequence[Sequence[int]], device: torch.device,
                     all_valid: bool, enabled: bool = True
                     ) -> Iterator[tuple[dict[str, torch.Tensor | None], torch.Tensor]]:
    """`_batch_tokens` of each batch of indices, in order. With ``enabled``, a background
    thread reads (and rebuilds, for the compact store) the next batch while the caller trains
    on the current one, so an epoch is bound by the heads' compute; at most two batches are in
    memory. The batches are the same tensors either way (`store.batch` uses no RNG)."""
    if not enabled:
        for idx in batches:
            yield _batch_tokens(store, idx, device, all_valid)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cmdr-iad-prefetch") as pool:
        def submit(k: int) -> Future | None:
            if k >= len(batches):
                return None
            return pool.submit(_batch_tokens, store, batches[k], device, all_valid)

        nxt = submit(0)
        for k in range(len(batches)):
            current = nxt.result()  # type: ignore[union-attr]
            nxt = submit(k + 1)
            yield current


@torch.no_grad()
def heldout_losses(heads: Mapping[str, nn.Module], store: FeatureStore, *, batch_size: int = 1,
                   device: torch.device | str = "cpu", all_valid: bool = False) -> dict[str, float]:
    """Mean training loss of every head on a held-out store (eval mode, pooled over valid rows).

    Returns {progress name: mean loss}; the heads' train/eval mode is restored afterwards.
    """
    device = torch.device(device)
    modes = {name: h.training for name, h in heads.items()}
    sums = {name: 0.0 for name in heads}
    rows = {name: 0 for name in heads}
    try:
        for h in heads.values():
            h.eval()
        for b0 in range(0, len(store), batch_size):
            tok, valid = _batch_tokens(store, range(b0, min(len(store), b0 + batch_size)), device,
                                       all_valid)
            n = int(valid.sum())
            for name, head in heads.items():
                src, dst, _ = TASKS[name]
                loss = masked_head_loss(head, tok[src], tok[dst], valid)
                if loss is not None:
                    sums[name] += float(loss) * n
                    rows[name] += n
    finally:
        for name, h in heads.items():
            h.train(modes[name])
    return {TASKS[k][2]: (sums[k] / rows[k] if rows[k] else math.nan) for k in heads}


_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@contextmanager
def dense_norm_gradients(heads: Mapping[str, nn.Module]) -> Iterator[None]:
    """Hand every BatchNorm layer of `heads` a contiguous output gradient while training.

    Works around a wrong CPU BatchNorm backward in PyTorch (seen in 2.14): at batch size 1,
    Decoder2D's tokens → grid view gives the BatchNorm output gradient the degenerate
    channels-last strides (C, 1, W·C, C), and the backward then returns wrong input and weight
    gradients (errors of the gradients' own size; `tests/test_training.py` pins it). A
    contiguous copy of that gradient is the same values in the layout the kernel handles.
    """
    def on_forward(_module: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
        if out.requires_grad:
            out.register_hook(lambda g: g.contiguous())

    handles = [m.register_forward_hook(on_forward)
               for h in heads.values() for m in h.modules() if isinstance(m, _NORMS)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


StepHook = Callable[[int, int, Mapping[str, float]], None]


def train_heads(
    heads: Mapping[str, nn.Module],
    store: FeatureStore,
    cfg: TrainConfig,
    *,
    device: torch.device | str = "cpu",
    all_valid: bool = False,
    heldout: FeatureStore | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
    run_fingerprint: str = "",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_step: StepHook | None = None,
    prefetch: bool = True,
) -> TrainReport:
    """Train every head in `heads` (names from `TASKS`) on the features of `store`.

    `all_valid`: every pixel takes part in the loss (RGB-only models, which have no 3D mask).
    `heldout`: normal samples not trained on; their mean loss per head goes into `report.log`
    after every epoch. `checkpoint`: folder of the per-epoch checkpoint; with `resume` an
    existing one is continued. `on_step(epoch, batch, {head name: loss})` is called after each
    batch with the losses of the heads that stepped. `prefetch`: read the next batch in a
    background thread while the heads train (`prefetch_batches`; same results as without).
    `cfg.precision` "bf16" / "fp16": each head's forward and loss under autocast (weights and
    Adam state stay fp32; `precision.resolve_precision` says so and runs fp32 where the
    hardware has no native bf16); the precision that ran is `report.precision`.
    """
    device = torch.device(device)
    unknown = set(heads) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown heads {sorted(unknown)}")
    n = len(store)
    usable = [i for i in range(n) if all_valid or bool(store.valid(i).any())]
    skipped = n - len(usable)
    if not usable:
        raise UserInputError(f"none of the {n} training samples has a valid 3D point; nothing to train on")
    if skipped and log:
        log(f"{skipped} of {n} training samples have no valid 3D point and are skipped")
    frac = 1.0 if all_valid else float(sum(float(store.valid(i).float().mean()) for i in usable) / len(usable))
    if frac > RAW_CLOUD_FRACTION and log:
        log(f"{100 * frac:.0f} % of the training pixels have a 3D point: the clouds look raw (table "
            "or background plane still in). The paper trains on preprocessed clouds (`cmdr-iad "
            "preprocess`); on raw ones the heads mostly learn the plane and detect worse.")

    precision = resolve_precision(cfg.precision, device, log)
    opts = {name: make_optimizer(h.parameters(), cfg) for name, h in heads.items()}
    start, history, epoch_log = 0, [], []
    if resume and checkpoint is not None and checkpoint.exists():
        start, history, epoch_log = load_checkpoint(checkpoint, heads, opts, run_fingerprint)
        if log:
            log(f"resuming from the checkpoint of epoch {start}")
    report = TrainReport(cfg.epochs, len(usable), skipped, history,
                         {name: 0 for name in heads}, resumed_from_epoch=start, log=epoch_log,
                         valid_fraction=frac, precision=precision)
    for h in heads.values():
        h.to(device).train()

    if heldout is not None and len(heldout) > 0 and start == 0 and not epoch_log:
        held = heldout_losses(heads, heldout, batch_size=cfg.batch_size, device=device,
                              all_valid=all_valid)  # epoch 0: the untrained level
        epoch_log.append({"epoch": 0, "seconds": 0.0, "samples": len(usable), "skipped_samples": skipped,
                          "skipped_steps": 0, **{f"heldout_{k}": v for k, v in held.items()}})
    steps = math.ceil(len(usable) / cfg.batch_size)
    with progress_bar((cfg.epochs - start) * steps, "train", enabled=progress) as bar, \
            dense_norm_gradients(heads):
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            torch.manual_seed(cfg.seed + epoch)  # dropout
            order = [usable[i] for i in epoch_order(len(usable), cfg.seed, epoch)]
            sums = {name: 0.0 for name in heads}
            counts = {name: 0 for name in heads}
            skipped_before = sum(report.skipped_steps.values())
            batches = [order[b0:b0 + cfg.batch_size] for b0 in range(0, len(order), cfg.batch_size)]
            for b, (tok, valid) in enumerate(prefetch_batches(store, batches, device, all_valid,
                                                              enabled=prefetch)):
                stepped: dict[str, float] = {}
                for name, head in heads.items():
                    src, dst, _ = TASKS[name]
                    with autocast(device, precision):
                        loss = masked_head_loss(head, tok[src], tok[dst], valid)
                    if loss is not None:
                        loss = loss.float()
                    if loss is None or not torch.isfinite(loss):
                        report.skipped_steps[name] += 1
                        continue
                    opts[name].zero_grad(set_to_none=True)
                    loss.backward()
                    opts[name].step()
                    stepped[name] = float(loss.detach())
                    sums[name] += stepped[name]
                    counts[name] += 1
                if on_step is not None:
                    on_step(epoch, b, stepped)
                bar.advance(info=f"epoch {epoch + 1}/{cfg.epochs} " + " ".join(
                    f"{TASKS[k][2]} {sums[k] / max(1, counts[k]):.4f}" for k in heads))
            means = {TASKS[k][2]: sums[k] / max(1, counts[k]) for k in heads}
            history.append(means)
            row: dict[str, Any] = {"epoch": epoch + 1, "samples": len(usable),
                                   "skipped_samples": skipped,
                                   "skipped_steps": sum(report.skipped_steps.values()) - skipped_before}
            row.update({f"loss_{k}": v for k, v in means.items()})
            if heldout is not None and len(heldout) > 0:
                held = heldout_losses(heads, heldout, batch_size=cfg.batch_size, device=device,
                                      all_valid=all_valid)
                row.update({f"heldout_{k}": v for k, v in held.items()})
            row["seconds"] = time.perf_counter() - t0
            epoch_log.append(row)
            if log and not progress:
                log(f"epoch {epoch + 1}/{cfg.epochs} " + " ".join(f"{k} {v:.4f}" for k, v in means.items()))
            if checkpoint is not None:
                save_checkpoint(checkpoint, heads, opts, epoch + 1, history, run_fingerprint, epoch_log)
    for h in heads.values():
        h.eval()
    report.history = history
    report.log = epoch_log
    return report
