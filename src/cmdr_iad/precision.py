"""Numeric precision of the matmul-heavy work: one setting, one place.

``fp32`` (default) is exact. ``bf16`` runs the network layers under autocast in bfloat16 (CPU
with native bf16 — AMX or AVX-512 BF16 — or CUDA with bf16 support); ``fp16`` is CUDA only.
Geometry, distance maps, fusion and metrics stay float32 whatever the setting, and optimiser
state and master weights stay float32 in training. Where the hardware lacks bf16 the caller is
told once and fp32 runs: never a silent fallback.

Where reduced precision applies (the one inference path, `inference.InferencePath`, and the
training step): the ViT, Point-MAE's group encoder and transformer blocks, and the four heads
run under :func:`autocast`; their outputs are cast back to float32 where they leave the
network (`features`, `model.distances`). The geometry (FPS, k-NN, 3-NN interpolation weights,
`features.geometry`) is decorated with :func:`full_precision`, so it runs in float32 even
inside an autocast region. Autocast rather than bf16 copies of the weights: one code path for
every precision, at nearly the same speed. Measured on an AVX-512 BF16 CPU (2 threads), an
``nn.Linear(1152→960)`` on a head chunk of 512 rows: fp32 163 GFLOP/s, autocast bf16 656,
bf16 weights with the input cast per call 679 (3.5 % faster; 2048 and 8192 rows: equal within
1 %).

``emulate=True`` (tests and the deviation benchmark only) runs bf16 on a CPU without native
support: the numerics are those of bf16, the speed is not (emulated bf16 matmuls run ~10× slower
than fp32).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import lru_cache, wraps
from typing import TypeVar

import torch

from .errors import UserInputError

__all__ = ["PRECISIONS", "cpu_bf16_support", "precision_support", "resolve_precision", "autocast",
           "full_precision", "to_float32"]

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_F = TypeVar("_F", bound=Callable[..., object])


@lru_cache(maxsize=1)
def cpu_bf16_support() -> str | None:
    """The CPU's native bf16 feature ("amx_bf16" or "avx512_bf16"), or None (Linux flags)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None
    for name in ("amx_bf16", "avx512_bf16"):
        if name in flags:
            return name
    return None


def precision_support(device: torch.device | str = "cpu") -> dict[str, object]:
    """What ``device`` offers, for reports: ``{"device", "bf16_native", "bf16_feature", "fp16"}``
    (the CPU's bf16 feature flag, or the CUDA capability)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        cap = torch.cuda.get_device_capability(dev)
        return {"device": str(dev), "bf16_native": bool(torch.cuda.is_bf16_supported()),
                "bf16_feature": f"sm_{cap[0]}{cap[1]}", "fp16": True}
    feat = cpu_bf16_support()
    return {"device": "cpu", "bf16_native": feat is not None, "bf16_feature": feat, "fp16": False}


def resolve_precision(precision: str, device: torch.device | str,
                      say: Callable[[str], None] | None = None, *, emulate: bool = False) -> str:
    """The precision that will run on ``device``: ``precision``, or "fp32" after telling ``say``
    (one line) when the hardware has no native bf16. With ``emulate`` bf16 runs anyway on such a
    CPU (``say`` is told that it is emulated). Raises `UserInputError` for an unknown name or
    fp16 off CUDA."""
    if precision not in PRECISIONS:
        raise UserInputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dev = torch.device(device)
    if precision == "fp16" and dev.type != "cuda":
        raise UserInputError("--precision fp16 is only offered on CUDA; use bf16 on CPU")
    if precision != "bf16":
        return precision
    ok = torch.cuda.is_bf16_supported() if dev.type == "cuda" else cpu_bf16_support() is not None
    if ok:
        return precision
    where = "this GPU" if dev.type == "cuda" else "this CPU (no AMX or AVX-512 BF16)"
    if emulate and dev.type == "cpu":
        if say is not None:
            say(f"bf16 is not supported natively on {where}: emulated (bf16 numerics, not its speed)")
        return precision
    if say is not None:
        say(f"bf16 is not supported natively on {where}: running fp32")
    return "fp32"


def autocast(device: torch.device | str, precision: str) -> AbstractContextManager[object]:
    """Autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return nullcontext()
    dev = torch.device(device)
    if precision == "fp16" and dev.type != "cuda":
        raise UserInputError("fp16 autocast is only offered on CUDA; use bf16 on CPU")
    return torch.autocast(device_type=dev.type, dtype=_DTYPES[precision])


def full_precision(fn: _F) -> _F:
    """Decorator: ``fn`` runs with autocast disabled on CPU and CUDA (float32 stays float32), for
    the work that must stay exact whatever the precision (geometry, distances)."""

    @wraps(fn)
    def run(*args: object, **kwargs: object) -> object:
        with torch.autocast("cpu", enabled=False):
            if torch.cuda.is_available():
                with torch.autocast("cuda", enabled=False):
                    return fn(*args, **kwargs)
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]


def to_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float32 (no copy when it already is): where a network output leaves autocast."""
    return t if t.dtype == torch.float32 else t.float()
