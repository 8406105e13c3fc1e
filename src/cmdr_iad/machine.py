"""Facts about the machine a measurement runs on: cores, threads, CPU name, matmul throughput."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from .errors import UserInputError

__all__ = ["physical_cores", "configure_threads", "cpu_name", "sync", "matmul_gflops", "machine_info"]


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


def sync(device: torch.device) -> None:
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
        sync(device)
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        sync(device)
        per = max(time.perf_counter() - t, 1e-6)
        n = max(1, int(min_seconds / per))
        best = 0.0
        for _ in range(repeats):
            sync(device)
            t = time.perf_counter()
            for _ in range(n):
                torch.mm(a, b, out=c)
            sync(device)
            best = max(best, n * flops / (time.perf_counter() - t))
        return best / 1e9
    finally:
        if tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = tf32


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "physical_cores": physical_cores(),
            "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    from .precision import precision_support

    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()  # the kernels torch picked
    info["precision_support"] = precision_support(device)  # native bf16: AMX / AVX-512 BF16
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:  # pragma: no cover
        pass
    return info
