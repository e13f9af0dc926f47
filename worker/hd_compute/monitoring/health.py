"""Health of a worker, in the seed's JSON shape (docs/monitoring.md, "Health").

    checker = HealthChecker(HealthThresholds(memory_percent=90, disk_percent=85), require_cuda=False)
    result = checker.check_all()
    # {"status": "healthy", "timestamp": "2025-08-02T10:30:00Z",
    #  "checks": {"cuda": "not_required", "memory": "normal", "disk": "normal", "system": "operational"}}
    http_status(result)  # 200 for healthy and degraded, 503 for unhealthy

Each check is one word:

    cuda    not_required (CPU worker) | available | low_memory (free GPU memory < cuda_memory_mb: degraded)
            | unavailable (required but absent: unhealthy) | error (unhealthy)
    memory  normal | high (used >= memory_percent of the container's limit, else of the machine: degraded)
            | unknown (degraded)
    disk    normal | high (used >= disk_percent of disk_path's file system: degraded) | unknown (degraded)
    system  operational | error (a tiny torch computation failed: unhealthy)

`HealthChecker.from_env()` reads HDC_HEALTH_CUDA_MEMORY_MB, HDC_HEALTH_MEMORY_PERCENT, HDC_HEALTH_DISK_PERCENT,
HDC_HEALTH_DISK_PATH and HDC_HEALTH_REQUIRE_CUDA (the operator sets the last one to true on GPU workers; when it
is unset, CUDA is required exactly when HDC_DEVICE is cuda or cuda:N).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

import psutil

__all__ = ["HealthThresholds", "HealthChecker", "http_status", "ENV_VARIABLES"]

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"

# field -> environment variable
ENV_VARIABLES = {
    "cuda_memory_mb": "HDC_HEALTH_CUDA_MEMORY_MB",
    "memory_percent": "HDC_HEALTH_MEMORY_PERCENT",
    "disk_percent": "HDC_HEALTH_DISK_PERCENT",
    "disk_path": "HDC_HEALTH_DISK_PATH",
    "require_cuda": "HDC_HEALTH_REQUIRE_CUDA",
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

_CGROUP = Path("/sys/fs/cgroup")


def _number(field: str, value: object, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{field} must be a non-negative finite number, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{field} must be <= {maximum}, got {value!r}")
    return float(value)


def parse_bool(name: str, text: str) -> bool:
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false, got {text!r}")


@dataclass
class HealthThresholds:
    """cuda_memory_mb: least free GPU memory; *_percent: most used memory / disk before 'high'."""

    cuda_memory_mb: float = 1000
    memory_percent: float = 90
    disk_percent: float = 85
    disk_path: str = "/"

    def __post_init__(self):
        self.cuda_memory_mb = _number("cuda_memory_mb", self.cuda_memory_mb)
        self.memory_percent = _number("memory_percent", self.memory_percent, 100)
        self.disk_percent = _number("disk_percent", self.disk_percent, 100)
        if not isinstance(self.disk_path, str) or not self.disk_path:
            raise ValueError(f"disk_path must be a non-empty path, got {self.disk_path!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "HealthThresholds":
        env = os.environ if environ is None else environ
        kwargs: dict[str, object] = {}
        for f in fields(cls):
            var = ENV_VARIABLES[f.name]
            if var not in env:
                continue
            if f.name == "disk_path":
                kwargs[f.name] = env[var]
                continue
            try:
                kwargs[f.name] = float(env[var])
            except ValueError:
                raise ValueError(f"{var} must be a number, got {env[var]!r}") from None
        try:
            return cls(**kwargs)
        except ValueError as exc:
            field = str(exc).split(" ", 1)[0]
            raise ValueError(f"{ENV_VARIABLES.get(field, field)}: {exc}") from None


def _container_memory_percent() -> float | None:
    """Working set / limit of this cgroup (v2, then v1), as Kubernetes counts it; None without a limit."""
    try:
        v2 = _CGROUP / "memory.max"
        if v2.exists():
            limit_text = v2.read_text().strip()
            if limit_text == "max":
                return None
            usage = int((_CGROUP / "memory.current").read_text())
            stat_key = "inactive_file"
            limit = int(limit_text)
        else:
            v1 = _CGROUP / "memory" / "memory.limit_in_bytes"
            if not v1.exists():
                return None
            limit = int(v1.read_text())
            if limit >= psutil.virtual_memory().total:  # "no limit" is a huge number in v1
                return None
            usage = int((_CGROUP / "memory" / "memory.usage_in_bytes").read_text())
            stat_key = "total_inactive_file"
        stat_file = v2.with_name("memory.stat") if v2.exists() else _CGROUP / "memory" / "memory.stat"
        inactive = 0
        for line in stat_file.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == stat_key:
                inactive = int(value)
        return 100.0 * max(0, usage - inactive) / limit if limit > 0 else None
    except (OSError, ValueError):
        return None


def memory_used_percent() -> float:
    percent = _container_memory_percent()
    return percent if percent is not None else psutil.virtual_memory().percent


class HealthChecker:
    def __init__(self, thresholds: HealthThresholds | None = None, *, require_cuda: bool = False, cuda_device: int = 0):
        self.thresholds = thresholds if thresholds is not None else HealthThresholds()
        if not isinstance(require_cuda, bool):
            raise ValueError(f"require_cuda must be a bool, got {require_cuda!r}")
        self.require_cuda = require_cuda
        self.cuda_device = cuda_device

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "HealthChecker":
        env = os.environ if environ is None else environ
        var = ENV_VARIABLES["require_cuda"]
        # Unset: required exactly when the worker is told to compute on CUDA (HDC_DEVICE=cuda or cuda:N).
        default = "true" if env.get("HDC_DEVICE", "").strip().lower().startswith("cuda") else "false"
        require = parse_bool(var, env.get(var, default))
        return cls(HealthThresholds.from_env(env), require_cuda=require)

    # --- the checks -------------------------------------------------------------------------------------------
    def check_cuda(self) -> str:
        if not self.require_cuda:
            return "not_required"
        try:
            import torch

            if not torch.cuda.is_available() or torch.cuda.device_count() <= self.cuda_device:
                return "unavailable"
            free = self._cuda_free_bytes()
        except Exception:
            return "error"
        return "low_memory" if free < self.thresholds.cuda_memory_mb * 1024 * 1024 else "available"

    def _cuda_free_bytes(self) -> int:
        # NVML first: it does not create a CUDA context (that would cost the health probe seconds and memory).
        try:
            import pynvml

            pynvml.nvmlInit()
            try:
                return pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(self.cuda_device)).free
            finally:
                pynvml.nvmlShutdown()
        except Exception:
            import torch

            return torch.cuda.mem_get_info(self.cuda_device)[0]

    def check_memory(self) -> str:
        try:
            return "high" if memory_used_percent() >= self.thresholds.memory_percent else "normal"
        except Exception:
            return "unknown"

    def check_disk(self) -> str:
        try:
            used = psutil.disk_usage(self.thresholds.disk_path).percent
        except Exception:
            return "unknown"
        return "high" if used >= self.thresholds.disk_percent else "normal"

    def check_system(self) -> str:
        try:
            import torch

            ok = float(torch.ones(4).sum()) == 4.0
        except Exception:
            return "error"
        return "operational" if ok else "error"

    def check_all(self) -> dict:
        checks = {
            "cuda": self.check_cuda(),
            "memory": self.check_memory(),
            "disk": self.check_disk(),
            "system": self.check_system(),
        }
        if checks["cuda"] in ("unavailable", "error") or checks["system"] != "operational":
            status = UNHEALTHY
        elif checks["cuda"] == "low_memory" or checks["memory"] != "normal" or checks["disk"] != "normal":
            status = DEGRADED
        else:
            status = HEALTHY
        timestamp = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        return {"status": status, "timestamp": timestamp, "checks": checks}


def http_status(result: Mapping) -> int:
    """200 for healthy and degraded (keep serving), 503 for unhealthy."""
    return 503 if result.get("status") == UNHEALTHY else 200
