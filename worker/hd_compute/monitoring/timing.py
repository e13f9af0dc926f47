"""Timing and peak memory of one call, measured the same way by the continuous benchmark and by hdc-bench.

    seconds = time_call(fn, device, repeats=3)      # median wall-clock seconds, CUDA synchronized
    extra = peak_memory_bytes(fn, device)           # bytes at the peak of one call beyond what was in use before

These live in monitoring (not in bench) because the worker's continuous benchmark needs them and monitoring
sits below bench in the layering: bench imports them from here.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from hd_compute.runtime import set_allocator_mode

__all__ = ["synchronize", "time_call", "peak_memory_bytes"]

_CLEAR_REFS = "/proc/self/clear_refs"
_RESET_PEAK_RSS = "5"  # clear_refs command: reset the resident-set high-water mark (VmHWM) to the current RSS


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work (CUDA); nothing to wait for on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, *, repeats: int, warmup: int = 1) -> float:
    """Median wall-clock seconds of `repeats` calls after `warmup` calls, with a warm allocator (freed memory
    is reused, so page faults of fresh mappings are not part of the time)."""
    set_allocator_mode("warm")
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _status_kib(field: str) -> int | None:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM), in KiB; None where there is no such file."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Memory at the peak of one call of `fn` beyond what was in use just before it, in bytes: what the call
    itself needs (its temporaries and result), not what the process held already (its inputs, the worker's
    state, torch and the libraries). None where the platform cannot tell.

    CUDA: torch's caching allocator counts every tensor it hands out, so the peak is its own statistic
    (max_memory_allocated after reset_peak_memory_stats) minus memory_allocated before the call.

    CPU: torch allocates CPU tensors with malloc, so Python's tracemalloc never sees them, and torch keeps no
    CPU allocator statistics. What does see them is the kernel's accounting of the process's resident pages.
    The resident set as such is the wrong figure (it is mostly the interpreter, torch and the worker's state:
    an idle worker's RSS says nothing about an operation), but its high-water mark, reset just before the
    call (/proc/self/clear_refs, Linux), minus the resident set just before, is the memory the call added at
    its peak. For that, freed blocks must go back to the system at once and new ones must be fresh pages,
    so the allocator is put in "exact" mode for the call (runtime.set_allocator_mode; it also trims what the
    warm mode kept) and back in "warm" mode afterwards, the mode the worker and the timings use. The mark is
    the whole process's: the caller measures when nothing else is running (the continuous benchmark runs
    only while the worker is idle and discards a run when traffic arrived meanwhile). None where
    clear_refs or /proc/self/status is missing (not Linux, or a kernel without it).
    """
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - before)
    set_allocator_mode("exact")
    try:
        before = _status_kib("VmRSS")
        try:
            with open(_CLEAR_REFS, "w") as refs:
                refs.write(_RESET_PEAK_RSS)
        except OSError:
            return None
        result = fn()
        peak = _status_kib("VmHWM")
        del result
    finally:
        set_allocator_mode("warm")
    if before is None or peak is None:
        return None
    return max(0, (peak - before) * 1024)
