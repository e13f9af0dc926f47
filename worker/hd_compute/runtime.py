"""Process-level tuning of the CPU memory allocator (glibc), used by hdc-bench and the worker.

torch allocates large CPU tensors with malloc; glibc serves them with fresh mmap()s whose pages fault in
(and are zeroed by the kernel) on first touch, which adds page faults and zeroing to every call of a
memory-bound operation (binding large int8 batches, say). A "warm" allocator keeps freed blocks in the heap
for reuse; an "exact" one returns every large block to the OS, so the resident-set high-water mark measures an
operation's peak memory exactly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# glibc caps M_MMAP_THRESHOLD at HEAP_MAX (32 MiB on 64-bit unless changed); larger values are refused.
WARM_MMAP_THRESHOLD = 32 << 20
WARM_TRIM_THRESHOLD = 1 << 30
EXACT_MMAP_THRESHOLD = 128 << 10


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - glibc only
        return libc
    except (OSError, AttributeError):
        return None


def set_allocator_mode(mode: str) -> bool:
    """'warm' (reuse freed memory) or 'exact' (return it at once); False where glibc's mallopt is absent."""
    libc = _libc()
    if libc is None:
        return False
    if mode == "warm":
        return _mallopt(libc, WARM_MMAP_THRESHOLD, WARM_TRIM_THRESHOLD)
    if mode == "exact":
        ok = _mallopt(libc, EXACT_MMAP_THRESHOLD, EXACT_MMAP_THRESHOLD)
        libc.malloc_trim(0)  # hand back what the warm mode kept, so the resident set starts from what is live
        return ok
    raise ValueError(f"mode must be 'warm' or 'exact', got {mode!r}")


def _mallopt(libc: ctypes.CDLL, mmap_threshold: int, trim_threshold: int) -> bool:
    """Sets both thresholds; True when glibc accepted both."""
    mmap_ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
    return mmap_ok and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold))
