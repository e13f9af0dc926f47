"""Timing, peak memory and copy bandwidth, measured the same way for every implementation."""

from __future__ import annotations

import os
import platform
from typing import Callable

import torch

from hd_compute.monitoring.timing import peak_memory_bytes, synchronize, time_call

__all__ = ["synchronize", "time_call", "peak_memory_mb", "copy_bandwidth_gb_s", "machine_description"]


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Extra memory at the peak of one call, beyond what was in use before it (MB); None where the platform
    cannot tell. monitoring.timing.peak_memory_bytes says how it is measured on CUDA and on a CPU."""
    extra = peak_memory_bytes(fn, device)
    return None if extra is None else extra / 2**20


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
