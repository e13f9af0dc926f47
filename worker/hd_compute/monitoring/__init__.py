"""Observability for the worker: metrics (MetricsCollector), health (HealthChecker), structured logs,
traces, the per-request facade over them (requests.py), the continuous benchmark and its timing primitives
(timing.py, which hdc-bench uses too). Monitoring wraps engine calls; it never changes them, and it imports
neither the service nor the bench.

The seed document's import paths work: `from hd_compute.monitoring import HealthChecker, MetricsCollector`.
They are imported on first use, so `hd_compute.monitoring.logging` stays importable without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {"HealthChecker": ".health", "HealthThresholds": ".health", "MetricsCollector": ".metrics"}
__all__ = ["HealthChecker", "HealthThresholds", "MetricsCollector"]  # = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, globals(), _EXPORTS)


if TYPE_CHECKING:
    from .health import HealthChecker, HealthThresholds
    from .metrics import MetricsCollector
