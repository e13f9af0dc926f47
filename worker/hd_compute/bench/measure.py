"""Timing, peak memory and copy bandwidth, measured the same way for every implementation."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable

import torch

from hd_compute.runtime import set_allocator_mode


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, *, repeats: int, warmup: int = 1) -> float:
    """Median wall-clock seconds of `repeats` calls after `warmup` calls, with a warm allocator."""
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
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Extra memory at the peak of one call, beyond what was in use before it (MB).

    CUDA: torch's allocator peak. CPU: the process's resident-set high-water mark (VmHWM), reset first
    through /proc/self/clear_refs; None where Linux does not offer that.
    """
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    set_allocator_mode("exact")
    before = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return None
    result = fn()
    peak = _status_kib("VmHWM")
    del result
    if before is None or peak is None:
        return None
    return max(0.0, (peak - before) / 1024)


def copy_bandwidth_gb_s(device: torch.device, *, megabytes: int = 512, repeats: int = 5) -> float:
    """Sustained copy bandwidth (bytes read + written per second) of a large tensor copy."""
    elements = max(1, megabytes * 2**20 // 4)
    source = torch.ones(elements, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    seconds = time_call(lambda: target.copy_(source), device, repeats=repeats)
    return 2 * source.numel() * 4 / seconds / 1e9


def machine_description(device: torch.device) -> dict[str, str | int]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    description: dict[str, str | int] = {
        "cpu": cpu,
        "cores": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        description["gpu"] = torch.cuda.get_device_name(device)
    return description
