"""Observability for the worker: metrics (MetricsCollector), health (HealthChecker), structured logs,
traces and the continuous benchmark. Monitoring wraps engine calls; it never changes them.

The seed document's import paths work: `from hd_compute.monitoring import HealthChecker, MetricsCollector`.
They are imported on first use, so `hd_compute.monitoring.logging` stays importable without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {"HealthChecker": ".health", "HealthThresholds": ".health", "MetricsCollector": ".metrics"}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, globals(), _EXPORTS)


if TYPE_CHECKING:
    from .health import HealthChecker, HealthThresholds
    from .metrics import MetricsCollector
