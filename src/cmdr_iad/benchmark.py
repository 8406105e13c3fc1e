"""Speed and memory protocol of the paper (Table 4), on CPU and CUDA.

Protocol: the average time per sample over ``samples`` test samples, from the raw arrays
(original resolution) through the transforms, the frozen encoders, the four heads and the fusion
up to the anomaly map and image score — the real inference path, ``CMDRIAD.predict_many`` —
synchronised on CUDA, after one untimed warm-up batch. Peak memory: on CPU the peak resident set
size (Linux ``VmHWM``, reset after the model is built, so it covers inference with the weights
resident), on CUDA ``torch.cuda.max_memory_allocated``. Each configuration is best measured in
a fresh process (:func:`run_isolated`, what the CLI does) so that peaks do not mix.

Also reported:

- ``flops_per_sample``: FLOPs of the full, unskipped architecture (every head on every pixel, as
  the reference computes), counted by ``torch.utils.flop_counter.FlopCounterMode`` over one
  sample of the networks built on the ``meta`` device (so it costs nothing). It counts the dense
  algebra — matmuls, convolutions, attention (2 FLOPs per multiply-add) — of the ViT, Point-MAE
  and the four heads; the geometry (FPS, k-NN, interpolation), the transforms and the fusion's
  box filters are elementwise work and not counted. Fast paths skip part of this work, so the same
  number is used for every mode and the ratios stay comparable.
- ``matmul_gflops``: dense fp32 matmul throughput (square 2048 matrices) measured in the same
  process with the same threads, before and after the timed loop (the larger value is used, the
  conservative choice for the fraction on a shared machine).
- ``matmul_fraction`` = flops_per_sample / (seconds_per_sample × matmul_gflops × 1e9): the share
  of the machine's matmul peak the pipeline achieves (above 1 when skipped work outweighs the
  overheads).

Threads: on CPU ``torch.set_num_threads`` is set to the number of physical cores unless the user
set ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` or passes ``threads``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserInputError

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

HEAD_MODES = ("fast", "reference")
PRECISIONS = ("fp32", "bf16", "fp16")


# --------------------------------------------------------------------------- machine


def physical_cores() -> int:
    """Physical cores available to this process (Linux topology; falls back to logical CPUs)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
    cores = set()
    for c in cpus:
        base = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
        try:
            cores.add((base.joinpath("physical_package_id").read_text().strip(),
                       base.joinpath("core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(c)))
    return max(1, len(cores))


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: ``threads`` if given, else physical cores unless the user
    set ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` (then torch's own choice is kept). Returns the count."""
    if threads is not None:
        if threads < 1:
            raise UserInputError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))
    elif not (os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS")):
        torch.set_num_threads(physical_cores())
    return torch.get_num_threads()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device | str = "cpu", size: int = 2048, min_seconds: float = 0.5,
                  repeats: int = 3) -> float:
    """Dense fp32 matmul throughput in GFLOP/s: best of ``repeats`` timings of ≥ ``min_seconds``.

    On CUDA TF32 is switched off for the measurement (true fp32).
    """
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device)
    b = torch.randn(size, size, generator=gen).to(device)
    c = torch.empty(size, size, device=device)
    flops = 2.0 * size**3
    tf32 = torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else None
    try:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
        torch.mm(a, b, out=c)
        _sync(device)
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        _sync(device)
        per = max(time.perf_counter() - t, 1e-6)
        n = max(1, int(min_seconds / per))
        best = 0.0
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            for _ in range(n):
                torch.mm(a, b, out=c)
            _sync(device)
            best = max(best, n * flops / (time.perf_counter() - t))
        return best / 1e9
    finally:
        if tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = tf32


class PeakMemory:
    """Peak memory of a code region in MB.

    CPU: the peak resident set size of the process (``VmHWM``), reset at :meth:`reset` through
    ``/proc/self/clear_refs`` when the kernel allows it (otherwise the process-lifetime peak,
    ``resettable`` False). CUDA: ``torch.cuda.max_memory_allocated`` (reset at :meth:`reset`).
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.resettable = True

    @staticmethod
    def _status(key: str) -> float | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return None

    def rss_mb(self) -> float:
        v = self._status("VmRSS")
        if v is None:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        return v

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.resettable = False

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        v = self._status("VmHWM")
        if v is None:
            import resource

            self.resettable = False
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        return v


# --------------------------------------------------------------------------- FLOPs


def count_flops(config: Any) -> dict[str, int]:
    """FLOPs per sample of the full architecture of ``config`` (a `DetectorConfig`).

    Returns ``{"vit", "point_mae", "map2Dto3D", "map3Dto2D", "Dec2D", "Dec3D", "total"}`` (the
    parts the modality uses). Networks are built on the meta device and run once at batch 1 under
    ``FlopCounterMode``; heads take their plain ``forward`` (every pixel).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from .detector import build_heads

    cfg = config
    fc, hc = cfg.features, cfg.heads
    n = fc.grid_size * fc.grid_size
    out: dict[str, int] = {}

    def count(fn) -> int:
        with FlopCounterMode(display=False) as counter:
            fn()
        return int(counter.get_total_flops())

    meta = torch.device("meta")
    with torch.device(meta), torch.no_grad():
        if cfg.uses_rgb:
            import timm

            vit = timm.create_model(fc.vit_name, pretrained=False, num_classes=0, img_size=fc.rgb_size)
            rgb = torch.empty(1, 3, fc.rgb_size, fc.rgb_size)
            out["vit"] = count(lambda: vit.forward_features(rgb))
        if cfg.uses_xyz:
            from .features.point_mae import PointMAE

            pm = PointMAE(num_group=fc.num_group, group_size=fc.group_size)
            pm.encoder.split_second_conv = False  # count the architecture, not our shortcut
            nb = torch.empty(1, fc.num_group, fc.group_size, 3)
            ce = torch.empty(1, fc.num_group, 3)
            out["point_mae"] = count(lambda: pm(nb, ce, bn="running"))
        heads = build_heads(cfg)
        t2 = torch.empty(1, n, hc.dim2d)
        t3 = torch.empty(1, n, hc.dim3d)
        inputs = {"map2Dto3D": t2, "map3Dto2D": t3, "Dec2D": t2, "Dec3D": t3}
        for name, head in heads.items():
            head.eval()
            out[name] = count(lambda h=head, x=inputs[name]: h(x))
    out["total"] = sum(out.values())
    return out


# --------------------------------------------------------------------------- inputs


def benchmark_samples(count: int, *, size: int = 800, seed: int = 0, distinct: int = 3,
                      modality: str = "rgb+xyz") -> list[Any]:
    """``count`` raw samples like MVTec 3D-AD test samples: synthetic scans (``size``² pixels,
    like the 800×800 MVTec 3D-AD captures) with the table plane removed by the dataset
    preprocessing (as the paper's data), cycling over ``distinct`` generated scans."""
    from .data.preprocess import preprocess_cloud
    from .data.sample import Sample
    from .data.synthetic import SHAPES, synth_sample

    if count < 1:
        raise UserInputError(f"samples must be >= 1, got {count}")
    made = []
    for i in range(min(count, max(1, distinct))):
        s = synth_sample(SHAPES[i % len(SHAPES)], seed=(seed, i), size=(size, size),
                         defect="crack" if i % 2 else None)
        xyz = preprocess_cloud(s.xyz)
        made.append(Sample(rgb=s.rgb if modality != "xyz" else None,
                           xyz=xyz if modality != "rgb" else None, gt=s.gt, label=int(i % 2),
                           key=f"bench_{i}"))
    return [made[i % len(made)] for i in range(count)]


def valid_fraction(samples: Sequence[Any], grid: int, transforms: str) -> float | None:
    """Mean share of grid pixels with a 3D point after the transforms (None without xyz)."""
    from .data.transforms import xyz_to_tensor

    fr = [float((xyz_to_tensor(s.xyz, grid, transforms) != 0).all(0).float().mean())
          for s in samples if s.xyz is not None]
    return float(np.mean(fr)) if fr else None


# --------------------------------------------------------------------------- head paths


@contextmanager
def head_mode(det: Any, mode: str):
    """Run ``det`` (a `CMDRIAD`) with the given head path: "fast" (the exact fast paths) or
    "reference" (every head on every pixel), through its ``fast_heads`` switch."""
    if mode not in HEAD_MODES:
        raise UserInputError(f"heads must be one of {HEAD_MODES}, got {mode!r}")
    old = det.fast_heads
    det.fast_heads = mode == "fast"
    try:
        yield
    finally:
        det.fast_heads = old


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


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise UserInputError("fp16 autocast is only offered on CUDA; use bf16 on CPU")
    return torch.autocast(device_type=device.type, dtype=dtype)


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
                   precision: str, keep: bool = True) -> tuple[float, list[Any]]:
    """Seconds for predicting every sample; the results are kept only with ``keep`` (each holds
    an original-size anomaly map, which would otherwise add to the measured peak)."""
    results: list[Any] = []
    _sync(device)
    t = time.perf_counter()
    with _autocast(device, precision):
        for batch in _batches(samples, batch_size):
            for r in det.predict_many(batch, batch_size=batch_size):
                if keep:
                    results.append(r)
    _sync(device)
    return time.perf_counter() - t, results


def stage_times(det: Any, samples: Sequence[Any], device: torch.device, heads: str = "fast",
                precision: str = "fp32") -> dict[str, float]:
    """Seconds per sample of each stage, composed from the public pieces the detector chains:
    transforms → features (encoders + assembly) → heads (four distance maps) → fusion."""
    from .data.transforms import transform_sample
    from .model.distances import plain_distance_maps, sample_distance_maps
    from .model.fusion import score

    cfg = det.config
    ext = det.extractor
    acc = {"transforms": 0.0, "features": 0.0, "heads": 0.0, "fusion": 0.0}

    def tick(name: str, t0: float) -> float:
        _sync(device)
        now = time.perf_counter()
        acc[name] += now - t0
        return now

    with torch.no_grad(), _autocast(device, precision):
        for s in samples:
            _sync(device)
            t = time.perf_counter()
            ts = transform_sample(s, cfg.features)
            t = tick("transforms", t)
            rgb = None if ts.rgb is None else ts.rgb[None]
            xyz = None if ts.xyz is None else ts.xyz[None]
            if heads == "fast":  # the detector's path: token sources, heads on valid rows
                f = ext.extract_rows(rgb, xyz)
                t = tick("features", t)
                valid = f.valid
                d = sample_distance_maps(det.heads, f.f2d, f.f3d, valid)
                d = {k: m[None] for k, m in d.items()}
                valid = valid[None] if f.f3d is not None else None
            else:
                f = ext.extract(rgb, xyz)
                t = tick("features", t)
                valid = f.valid if f.f3d is not None else None
                d = plain_distance_maps(det.heads, f.f2d, f.f3d)
            del f
            t = tick("heads", t)
            variant = cfg.score.variant if cfg.modality == "rgb+xyz" else f"{cfg.modality}_only"
            score(d.get("d_map2d"), d.get("d_map3d"), d.get("d_rec2d"), d.get("d_rec3d"),
                  valid, variant, temperature=cfg.score.temperature)
            tick("fusion", t)
    return {k: v / len(samples) for k, v in acc.items()}


def run(preset: str = "paper", modality: str = "rgb+xyz", *, samples: int = 5, batch_size: int = 1,
        device: str = "cpu", random_backbones: bool = True, heads: str = "fast",
        precision: str = "fp32", compile: bool = False, threads: int | None = None,
        sample_size: int = 800, stages: bool = False, deviation: bool | None = None,
        dino_weights: str | None = None, point_mae_weights: str | None = None,
        seed: int = 0) -> BenchResult:
    """Benchmark one configuration in this process. See the module docstring for the protocol.

    ``heads``: "fast" (exact fast paths) or "reference" (every head on every pixel);
    ``precision``: "fp32" (exact), "bf16" (autocast; CPU or CUDA) or "fp16" (autocast, CUDA);
    ``compile``: torch.compile the token-wise head layers; ``stages``: also time each stage;
    ``deviation``: compare the maps and scores with the exact fp32 fast path (default: when
    precision or compile change the numerics).
    """
    from . import presets
    from .detector import CMDRIAD
    from .device import resolve_device

    if heads not in HEAD_MODES:
        raise UserInputError(f"heads must be one of {HEAD_MODES}, got {heads!r}")
    if precision not in PRECISIONS:
        raise UserInputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if batch_size < 1:
        raise UserInputError(f"batch size must be >= 1, got {batch_size}")
    dev = resolve_device(device)
    n_threads = configure_threads(threads)
    notes: list[str] = []
    cfg = presets.get(preset, modality)
    flops = count_flops(cfg)
    data = benchmark_samples(samples, size=sample_size, seed=seed, modality=modality)
    vf = valid_fraction(data, cfg.features.grid_size, cfg.features.transforms)
    mem = PeakMemory(dev)

    det = CMDRIAD(cfg, dino_weights=dino_weights, point_mae_weights=point_mae_weights,
                  random_backbones=random_backbones, device=dev)
    _ = det.extractor  # build the encoders now (not part of the per-sample time)
    resident = mem.rss_mb()
    compiled = _compile_heads(det, notes) if compile else False
    if not hasattr(det, "fast_heads"):
        notes.append("the detector has no fast_heads switch: its distance step was swapped for "
                     "the chosen head path during the benchmark")
    mm_before = matmul_gflops(dev)
    with head_mode(det, heads):
        with _autocast(dev, precision):  # warm-up (allocator, lazy init, compilation)
            list(det.predict_many(data[:batch_size], batch_size=batch_size))
        if deviation is None:
            deviation = precision != "fp32" or compiled
        mem.reset()
        seconds, results = _timed_predict(det, data, batch_size, dev, precision, keep=bool(deviation))
        peak = mem.peak_mb()
        if not mem.resettable:
            notes.append("peak RSS could not be reset: the value is the process-lifetime peak")
        st = stage_times(det, data[:min(len(data), 3)], dev, heads, precision) if stages else {}
    mm_after = matmul_gflops(dev)
    dev_info = None
    if deviation:
        dev_info = _deviation(det, data, results, batch_size)
    mm = max(mm_before, mm_after)
    sps = seconds / len(data)
    return BenchResult(
        preset=preset, modality=modality, device=str(dev), batch_size=batch_size,
        samples=len(data), threads=n_threads, heads=heads, precision=precision, compiled=compiled,
        seconds_per_sample=sps, fps=1.0 / sps, peak_memory_mb=peak,
        memory_kind="cuda_max_allocated" if dev.type == "cuda" else "cpu_peak_rss",
        flops_per_sample=flops["total"], flops_by_part=flops, matmul_gflops=mm,
        matmul_gflops_before=mm_before, matmul_gflops_after=mm_after,
        matmul_fraction=flops["total"] / (sps * mm * 1e9), resident_mb_after_build=resident,
        valid_fraction=vf, sample_size=sample_size, random_backbones=bool(det.extractor.random_backbones),
        stages=st, deviation=dev_info, machine=machine_info(dev), notes=notes)


def _deviation(det: Any, data: Sequence[Any], results: Sequence[Any], batch_size: int) -> dict[str, float]:
    """Largest deviation of maps and scores from the exact fp32 fast path (same samples)."""
    with head_mode(det, "fast"), torch.no_grad():
        exact = list(det.predict_many(data, batch_size=batch_size))
    map_rel, score_rel = 0.0, 0.0
    for a, b in zip(results, exact, strict=True):
        scale = float(np.abs(b.map_grid).max()) or 1.0
        map_rel = max(map_rel, float(np.abs(a.map_grid - b.map_grid).max()) / scale)
        score_rel = max(score_rel, abs(a.score - b.score) / (abs(b.score) or 1.0))
    return {"map_max_rel": map_rel, "score_max_rel": score_rel}


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "physical_cores": physical_cores(),
            "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:  # pragma: no cover
        pass
    return info


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
    head = ("preset", "modality", "device", "B", "heads", "prec", "s/sample", "FPS", "peak MB",
            "GFLOP/sample", "matmul GF/s", "fraction")
    rows = [head]
    for r in results:
        rows.append((r.preset, r.modality, r.device, str(r.batch_size), r.heads,
                     r.precision + ("+compile" if r.compiled else ""),
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
