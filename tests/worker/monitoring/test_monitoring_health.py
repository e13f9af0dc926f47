"""HealthChecker: the seed's JSON shape, configurable thresholds, and `python -m hd_compute.health` exit codes."""

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timezone

import paths
import psutil
import pytest
import torch

from hd_compute.monitoring.health import HealthChecker, HealthThresholds, http_status

WORKER = paths.REPO / "worker"
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def test_shape_and_keys_on_a_cpu_worker():
    result = HealthChecker().check_all()
    assert set(result) == {"status", "timestamp", "checks"}
    assert set(result["checks"]) == {"cuda", "memory", "disk", "system"}
    assert all(isinstance(v, str) for v in result["checks"].values())
    assert result["checks"]["cuda"] == "not_required"
    assert result["checks"]["system"] == "operational"
    assert result["status"] in ("healthy", "degraded")
    assert ISO_Z.match(result["timestamp"]), result["timestamp"]
    stamp = datetime.strptime(result["timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert abs((datetime.now(timezone.utc) - stamp).total_seconds()) < 120
    json.dumps(result)  # serialisable as is


def test_memory_threshold_makes_it_degraded():
    result = HealthChecker(HealthThresholds(memory_percent=0.0001)).check_all()
    assert result["checks"]["memory"] == "high"
    assert result["status"] == "degraded"
    assert http_status(result) == 200


def test_disk_threshold_below_current_use_makes_it_degraded():
    used = psutil.disk_usage("/").percent
    assert used > 0
    result = HealthChecker(HealthThresholds(disk_percent=used / 2)).check_all()
    assert result["checks"]["disk"] == "high"
    assert result["status"] == "degraded"
    relaxed = HealthChecker(HealthThresholds(memory_percent=100, disk_percent=100)).check_all()
    assert relaxed["checks"]["disk"] == "normal" or used >= 100


def test_missing_disk_path_is_unknown_and_degraded(tmp_path):
    result = HealthChecker(HealthThresholds(disk_path=str(tmp_path / "nope"))).check_all()
    assert result["checks"]["disk"] == "unknown"
    assert result["status"] == "degraded"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_required_cuda_missing_is_unhealthy():
    result = HealthChecker(require_cuda=True).check_all()
    assert result["checks"]["cuda"] == "unavailable"
    assert result["status"] == "unhealthy"
    assert http_status(result) == 503


@pytest.mark.gpu
def test_required_cuda_present():
    assert HealthChecker(require_cuda=True).check_all()["checks"]["cuda"] in ("available", "low_memory")
    starved = HealthChecker(HealthThresholds(cuda_memory_mb=1e9), require_cuda=True).check_all()
    assert starved["checks"]["cuda"] == "low_memory"
    assert starved["status"] == "degraded"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"memory_percent": 101}, "memory_percent"),
        ({"disk_percent": -1}, "disk_percent"),
        ({"cuda_memory_mb": float("nan")}, "cuda_memory_mb"),
        ({"disk_path": ""}, "disk_path"),
    ],
)
def test_bad_thresholds_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        HealthThresholds(**kwargs)


def test_thresholds_from_env():
    t = HealthThresholds.from_env(
        {
            "HDC_HEALTH_CUDA_MEMORY_MB": "2048",
            "HDC_HEALTH_MEMORY_PERCENT": "75",
            "HDC_HEALTH_DISK_PERCENT": "60.5",
            "HDC_HEALTH_DISK_PATH": "/tmp",
        }
    )
    assert t == HealthThresholds(cuda_memory_mb=2048, memory_percent=75, disk_percent=60.5, disk_path="/tmp")
    assert HealthThresholds.from_env({}) == HealthThresholds()
    assert HealthChecker.from_env({"HDC_HEALTH_REQUIRE_CUDA": "true"}).require_cuda is True
    assert HealthChecker.from_env({}).require_cuda is False
    assert HealthChecker.from_env({"HDC_DEVICE": "cuda:1"}).require_cuda is True
    assert HealthChecker.from_env({"HDC_DEVICE": "cuda", "HDC_HEALTH_REQUIRE_CUDA": "false"}).require_cuda is False
    assert HealthChecker.from_env({"HDC_DEVICE": "auto"}).require_cuda is False
    with pytest.raises(ValueError, match="HDC_HEALTH_MEMORY_PERCENT"):
        HealthThresholds.from_env({"HDC_HEALTH_MEMORY_PERCENT": "lots"})
    with pytest.raises(ValueError, match="HDC_HEALTH_DISK_PERCENT"):
        HealthThresholds.from_env({"HDC_HEALTH_DISK_PERCENT": "150"})
    with pytest.raises(ValueError, match="HDC_HEALTH_REQUIRE_CUDA"):
        HealthChecker.from_env({"HDC_HEALTH_REQUIRE_CUDA": "maybe"})


def run_module(**env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("HDC_HEALTH_") and k != "HDC_DEVICE"}
    full["PYTHONPATH"] = str(WORKER) + os.pathsep + full.get("PYTHONPATH", "")
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "hd_compute.health"], env=full, capture_output=True, text=True, timeout=120
    )


def test_module_exits_0_when_healthy_or_degraded():
    proc = run_module(HDC_HEALTH_MEMORY_PERCENT="0.0001")  # degraded still serves: exit 0
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "degraded"
    assert result["checks"]["memory"] == "high"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_module_exits_1_when_unhealthy():
    proc = run_module(HDC_HEALTH_REQUIRE_CUDA="true")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "unhealthy"
    assert result["checks"]["cuda"] == "unavailable"


def test_module_exits_1_on_invalid_settings():
    proc = run_module(HDC_HEALTH_DISK_PERCENT="abc")
    assert proc.returncode == 1
    assert "HDC_HEALTH_DISK_PERCENT" in proc.stderr
