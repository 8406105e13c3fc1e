"""Speed and memory protocol of the paper (Table 4), on CPU and CUDA.

Protocol: the average time per sample over ``samples`` test samples, from the raw arrays
(original resolution) through the transforms, the frozen encoders, the four heads and the fusion
up to the anomaly map and image score — the one inference path, ``CMDRIAD.predict_many`` →
``inference.InferencePath.score`` — synchronised on CUDA, after one untimed warm-up batch.
With ``stages`` the same timed loop charges each stage (transforms, features, heads, fusion,
output) through the path's timer hook (`inference.StageTimer`), so the stage times add up to the
measured total (``unaccounted`` is the rest: generator plumbing). Peak memory: on CPU the peak
resident set size (Linux ``VmHWM``, reset after the model is built, so it covers inference with
the weights resident), on CUDA ``torch.cuda.max_memory_allocated``. Each configuration is best
measured in a fresh process (:func:`run_isolated`, what the CLI does) so that peaks do not mix.

Also reported:

- ``flops_per_sample``: FLOPs of the full, unskipped architecture (:mod:`cmdr_iad.flops`); fast
  paths skip part of it, so the same number is used for every mode and ratios stay comparable.
- ``matmul_gflops``: dense fp32 matmul throughput (:func:`cmdr_iad.machine.matmul_gflops`)
  measured in the same process with the same threads, before and after the timed loop (the
  larger value is used, the conservative choice for the fraction on a shared machine).
- ``matmul_fraction`` = flops_per_sample / (seconds_per_sample × matmul_gflops × 1e9): the share
  of the machine's matmul peak the pipeline achieves (above 1 when skipped work outweighs the
  overheads).

Threads: on CPU ``torch.set_num_threads`` is set to the number of physical cores unless the user
set ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` or passes ``threads``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import UserInputError
from .flops import count_flops
from .inference import HEAD_PATHS, StageTimer
from .machine import configure_threads, machine_info, matmul_gflops, physical_cores, sync
from .memory import PeakMemory
from .precision import PRECISIONS, resolve_precision

__all__ = [
    "HEAD_MODES",
    "PRECISIONS",
    "BenchResult",
    "physical_cores",
    "configure_threads",
    "matmul_gflops",
    "PeakMemory",
    "count_flops",
    "benchmark_samples",
    "run",
    "run_isolated",
    "format_table",
]

HEAD_MODES = HEAD_PATHS
"""``exact``: the heads at valid pixels only (the default path); ``reference``: dense features,
every head on every pixel (`inference.HEAD_PATHS`). ``fast`` is the old name of ``exact``."""


# --------------------------------------------------------------------------- inputs


def benchmark_samples(count: int, *, size: int = 800, seed: int = 0, distinct: int = 3,
                      modality: str = "rgb+xyz", valid_fraction: float | None = None) -> list[Any]:
    """``count`` raw samples like MVTec 3D-AD test samples: synthetic scans (``size``² pixels,
    like the 800×800 MVTec 3D-AD captures) with the table plane removed by the dataset
    preprocessing (as the paper's data), cycling over ``distinct`` generated scans.

    ``valid_fraction``: give each cloud exactly that share of valid pixels (one compact object,
    `data.synthetic.cloud_with_valid_fraction`); preprocessed MVTec 3D-AD samples are typically
    30–60 % valid, the generated scans alone ~17 %. None keeps the scans as generated."""
    from .data.cloud_prep import preprocess_cloud
    from .data.sample import Sample
    from .data.synthetic import SHAPES, cloud_with_valid_fraction, synth_sample

    if count < 1:
        raise UserInputError(f"samples must be >= 1, got {count}")
    if valid_fraction is not None and not 0.0 < valid_fraction <= 1.0:
        raise UserInputError(f"the valid fraction must be in (0, 1], got {valid_fraction}")
    made = []
    for i in range(min(count, max(1, distinct))):
        s = synth_sample(SHAPES[i % len(SHAPES)], seed=(seed, i), size=(size, size),
                         defect="crack" if i % 2 else None)
        xyz = preprocess_cloud(s.xyz)
        if valid_fraction is not None:
            xyz = cloud_with_valid_fraction(xyz, valid_fraction)
        made.append(Sample(rgb=s.rgb if modality != "xyz" else None,
                           xyz=xyz if modality != "rgb" else None, gt=s.gt, label=int(i % 2),
                           key=f"bench_{i}"))
    return [made[i % len(made)] for i in range(count)]


def grid_valid_fraction(samples: Sequence[Any], grid: int, transforms: str) -> float | None:
    """Mean share of grid pixels with a 3D point after the transforms (None without xyz)."""
    from .data.transforms import xyz_to_tensor

    fr = [float((xyz_to_tensor(s.xyz, grid, transforms) != 0).all(0).float().mean())
          for s in samples if s.xyz is not None]
    return float(np.mean(fr)) if fr else None


# --------------------------------------------------------------------------- protocol


@dataclass
class BenchResult:
    preset: str
    modality: str
    device: str
    batch_size: int
    samples: int
    threads: int
    heads: str
    precision: str
    compiled: bool
    seconds_per_sample: float
    fps: float
    peak_memory_mb: float
    memory_kind: str
    flops_per_sample: int
    flops_by_part: dict[str, int]
    matmul_gflops: float
    matmul_gflops_before: float
    matmul_gflops_after: float
    matmul_fraction: float
    resident_mb_after_build: float
    valid_fraction: float | None
    sample_size: int
    random_backbones: bool
    stages: dict[str, float] = field(default_factory=dict)
    deviation: dict[str, float] | None = None
    machine: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _compile_heads(det: Any, notes: list[str]) -> bool:
    """torch.compile the token-wise parts of the heads (the bulk of their FLOPs); False if it fails."""
    try:
        for head in det.heads.values():
            if hasattr(head, "_mlp"):
                head._mlp = torch.compile(head._mlp, dynamic=True)
            if hasattr(head, "reconstruct"):
                head.reconstruct = torch.compile(head.reconstruct, dynamic=True)
        return True
    except Exception as e:  # pragma: no cover - depends on the toolchain
        notes.append(f"torch.compile unavailable ({type(e).__name__}: {e}); ran uncompiled")
        return False


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _timed_predict(det: Any, samples: Sequence[Any], batch_size: int, device: torch.device,
                   heads: str, timer: StageTimer | None,
                   keep: bool = True) -> tuple[float, list[Any]]:
    """Seconds for predicting every sample through ``det.predict_many`` (the one inference
    path), with ``timer`` charged per stage; results are kept only with ``keep`` (each holds an
    original-size anomaly map, which would otherwise add to the measured peak)."""
    results: list[Any] = []
    sync(device)
    t = time.perf_counter()
    for batch in _batches(samples, batch_size):
        for r in det.predict_many(batch, batch_size=batch_size, heads=heads, timer=timer):
            if keep:
                results.append(r)
    sync(device)
    return time.perf_counter() - t, results


def run(preset: str = "paper", modality: str = "rgb+xyz", *, samples: int = 5, batch_size: int = 1,
        device: str = "cpu", random_backbones: bool = True, heads: str = "exact",
        precision: str = "fp32", compile: bool = False, threads: int | None = None,
        sample_size: int = 800, valid_fraction: float | None = None, stages: bool = False,
        deviation: bool | None = None,
        dino_weights: str | None = None, point_mae_weights: str | None = None,
        seed: int = 0, emulate: bool = False) -> BenchResult:
    """Benchmark one configuration in this process. See the module docstring for the protocol.

    ``heads``: "exact" (heads at valid pixels only) or "reference" (every head on every pixel);
    ``precision``: "fp32" (exact), "bf16" (autocast; CPU or CUDA) or "fp16" (autocast, CUDA);
    ``compile``: torch.compile the token-wise head layers; ``stages``: also time each stage;
    ``deviation``: compare the maps and scores with the exact fp32 path (default: when
    precision or compile change the numerics); ``valid_fraction``: the share of valid pixels
    of each generated cloud (`benchmark_samples`; None: as generated, ~17 %); ``emulate``: run
    bf16 numerics on a CPU without native bf16 (for deviation figures; its times are not bf16's).
    """
    from . import presets
    from .detector import CMDRIAD
    from .device import resolve_device

    heads = "exact" if heads == "fast" else heads  # the old name, kept for one release
    if heads not in HEAD_MODES:
        raise UserInputError(f"heads must be one of {HEAD_MODES}, got {heads!r}")
    path_heads = heads
    if precision not in PRECISIONS:
        raise UserInputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if batch_size < 1:
        raise UserInputError(f"batch size must be >= 1, got {batch_size}")
    dev = resolve_device(device)
    n_threads = configure_threads(threads)
    notes: list[str] = []
    resolve_precision(precision, dev, emulate=emulate)  # bad names fail before any work
    cfg = presets.get(preset, modality)
    data = benchmark_samples(samples, size=sample_size, seed=seed, modality=modality,
                             valid_fraction=valid_fraction)
    vf = grid_valid_fraction(data, cfg.features.grid_size, cfg.features.transforms)
    mem = PeakMemory(dev)

    det = CMDRIAD(cfg, dino_weights=dino_weights, point_mae_weights=point_mae_weights,
                  random_backbones=random_backbones, device=dev)
    _ = det.extractor  # build the encoders now (not part of the per-sample time)
    resident = mem.rss_mb()
    precision = det.set_precision(precision, notes.append, emulate=emulate)  # says so if not native
    compiled = _compile_heads(det, notes) if compile else False
    mm_before = matmul_gflops(dev)
    # warm-up (allocator, lazy init, compilation)
    list(det.predict_many(data[:batch_size], batch_size=batch_size, heads=path_heads))
    if deviation is None:
        deviation = precision != "fp32" or compiled
    timer = StageTimer(dev) if stages else None
    mem.reset()
    seconds, results = _timed_predict(det, data, batch_size, dev, path_heads, timer,
                                      keep=bool(deviation))
    peak = mem.peak_mb()
    if not mem.resettable:
        notes.append("peak RSS could not be reset: the value is the process-lifetime peak")
    st: dict[str, float] = {}
    if timer is not None:
        st = {k: v / len(data) for k, v in timer.seconds.items()}
        st["unaccounted"] = max(0.0, seconds / len(data) - sum(st.values()))
    mm_after = matmul_gflops(dev)
    flops = count_flops(cfg)  # after the peak: its meta-device networks import sympy (~40 MB)
    dev_info = None
    if deviation:
        dev_info = _deviation(det, data, results, batch_size)
    mm = max(mm_before, mm_after)
    sps = seconds / len(data)
    return BenchResult(
        preset=preset, modality=modality, device=str(dev), batch_size=batch_size,
        samples=len(data), threads=n_threads, heads=heads, precision=precision, compiled=compiled,
        seconds_per_sample=sps, fps=1.0 / sps, peak_memory_mb=peak,
        memory_kind=mem.kind,
        flops_per_sample=flops["total"], flops_by_part=flops, matmul_gflops=mm,
        matmul_gflops_before=mm_before, matmul_gflops_after=mm_after,
        matmul_fraction=flops["total"] / (sps * mm * 1e9), resident_mb_after_build=resident,
        valid_fraction=vf, sample_size=sample_size, random_backbones=bool(det.extractor.random_backbones),
        stages=st, deviation=dev_info, machine=machine_info(dev), notes=notes)


def _deviation(det: Any, data: Sequence[Any], results: Sequence[Any], batch_size: int) -> dict[str, float]:
    """Largest deviation of maps and scores from the exact fp32 path (same samples)."""
    ran = det.precision
    det.precision = "fp32"
    try:
        with torch.no_grad():
            exact = list(det.predict_many(data, batch_size=batch_size))
    finally:
        det.precision = ran
    map_rel, score_rel = 0.0, 0.0
    for a, b in zip(results, exact, strict=True):
        scale = float(np.abs(b.map_grid).max()) or 1.0
        map_rel = max(map_rel, float(np.abs(a.map_grid - b.map_grid).max()) / scale)
        score_rel = max(score_rel, abs(a.score - b.score) / (abs(b.score) or 1.0))
    return {"map_max_rel": map_rel, "score_max_rel": score_rel}


# --------------------------------------------------------------------------- isolation


def run_isolated(timeout: float | None = None, **kwargs: Any) -> BenchResult:
    """:func:`run` in a fresh Python process (clean peak memory); same keyword arguments."""
    cmd = [sys.executable, "-m", "cmdr_iad.benchmark", "--worker", json.dumps(kwargs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        if proc.returncode == 2:
            raise UserInputError(tail[0])
        raise RuntimeError(f"benchmark worker failed (exit {proc.returncode}): {tail[0]}")
    return BenchResult(**json.loads(lines[-1]))


def format_table(results: Sequence[BenchResult]) -> str:
    """A plain-text table, one row per result."""
    head = ("preset", "modality", "device", "B", "heads", "prec", "valid", "s/sample", "FPS", "peak MB",
            "GFLOP/sample", "matmul GF/s", "fraction")
    rows = [head]
    for r in results:
        rows.append((r.preset, r.modality, r.device, str(r.batch_size), r.heads,
                     r.precision + ("+compile" if r.compiled else ""),
                     "-" if r.valid_fraction is None else f"{100 * r.valid_fraction:.0f} %",
                     f"{r.seconds_per_sample:.3f}", f"{r.fps:.2f}", f"{r.peak_memory_mb:.0f}",
                     f"{r.flops_per_sample / 1e9:.0f}", f"{r.matmul_gflops:.0f}",
                     f"{100 * r.matmul_fraction:.0f} %"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows)


def _worker(argv: Sequence[str]) -> int:
    from .errors import CmdrIadError

    if len(argv) != 2 or argv[0] != "--worker":
        print("usage: python -m cmdr_iad.benchmark --worker JSON", file=sys.stderr)
        return 2
    try:
        res = run(**json.loads(argv[1]))
    except CmdrIadError as e:
        print(str(e), file=sys.stderr)
        return 2
    print(json.dumps(res.to_dict()))
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through run_isolated
    sys.exit(_worker(sys.argv[1:]))
