"""Process-memory helpers (CPU).

glibc's allocator keeps freed heap memory (arena tops, fragmented chunks) mapped after large
temporary tensors are released, so the resident set grows by a few hundred MB after a
paper-size feature extraction although the tensors are gone. `release_memory` hands those free
pages back to the OS with `malloc_trim(0)`; it is a no-op where glibc is not the allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from functools import lru_cache

__all__ = ["release_memory", "resident_mb"]


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


def resident_mb() -> float | None:
    """Current resident set size of this process in MB (Linux `VmRSS`), None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None
