"""Process-memory helpers (CPU).

glibc's allocator keeps freed heap memory (arena tops, fragmented chunks) mapped after large
temporary tensors are released, so the resident set grows by a few hundred MB after a
paper-size feature extraction although the tensors are gone. `release_memory` hands those free
pages back to the OS with `malloc_trim(0)`; it is a no-op where glibc is not the allocator.
`PeakMemory` measures the peak of a code region (CPU peak RSS, CUDA max allocated).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["release_memory", "resident_mb", "PeakMemory"]


@lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's `malloc_trim`, or None (not Linux, musl, or no libc found)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def release_memory(collect: bool = False) -> bool:
    """Return freed heap memory to the OS (glibc `malloc_trim(0)`; `gc.collect()` first when
    `collect`). Cheap (a few ms); call it between pipeline stages. Returns True when memory was
    released, False when nothing could be (or the platform has no glibc)."""
    if collect:
        gc.collect()
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False


def _status_mb(key: str) -> float | None:
    """A ``/proc/self/status`` field in MB (e.g. "VmRSS", "VmHWM"), None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def resident_mb() -> float | None:
    """Current resident set size of this process in MB (Linux `VmRSS`), None elsewhere."""
    return _status_mb("VmRSS")


class PeakMemory:
    """Peak memory of a code region in MB.

    CPU: the peak resident set size of the process (``VmHWM``), reset at :meth:`reset` through
    ``/proc/self/clear_refs`` when the kernel allows it (otherwise the process-lifetime peak,
    ``resettable`` False). CUDA: ``torch.cuda.max_memory_allocated`` (reset at :meth:`reset`).
    """

    def __init__(self, device: Any = "cpu") -> None:
        import torch

        self.device = torch.device(device)
        self.resettable = True

    @property
    def kind(self) -> str:
        """What :meth:`peak_mb` measures: "cuda_max_allocated", "cpu_peak_rss" (since
        :meth:`reset`) or "cpu_process_peak_rss" (the kernel refused the reset)."""
        if self.device.type == "cuda":
            return "cuda_max_allocated"
        return "cpu_peak_rss" if self.resettable else "cpu_process_peak_rss"

    def rss_mb(self) -> float:
        v = _status_mb("VmRSS")
        if v is None:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        return v

    def reset(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.resettable = False

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        v = _status_mb("VmHWM")
        if v is None:
            import resource

            self.resettable = False
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        return v
