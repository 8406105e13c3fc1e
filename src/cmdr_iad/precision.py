"""Numeric precision of the matmul-heavy work: one setting, one place.

``fp32`` (default) is exact. ``bf16`` runs the network layers under autocast in bfloat16 (CPU
with native bf16 — AMX or AVX-512 BF16 — or CUDA with bf16 support); ``fp16`` is CUDA only.
Geometry, distance maps, fusion and metrics stay float32 whatever the setting, and optimiser
state and master weights stay float32 in training. Where the hardware lacks bf16 the caller is
told once and fp32 runs: never a silent fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import lru_cache

import torch

from .errors import UserInputError

__all__ = ["PRECISIONS", "cpu_bf16_support", "resolve_precision", "autocast"]

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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


def resolve_precision(precision: str, device: torch.device | str,
                      say: Callable[[str], None] | None = None) -> str:
    """The precision that will run on ``device``: ``precision``, or "fp32" after telling ``say``
    (one line) when the hardware has no native bf16. Raises `UserInputError` for an unknown
    name or fp16 off CUDA."""
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
    if say is not None:
        where = "this GPU" if dev.type == "cuda" else "this CPU (no AMX or AVX-512 BF16)"
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
