"""Observability for the worker: metrics (MetricsCollector), health (HealthChecker), structured logs,
traces and the continuous benchmark. Monitoring wraps engine calls; it never changes them.

The seed document's import paths work: `from hd_compute.monitoring import HealthChecker, MetricsCollector`.
"""

from .health import HealthChecker, HealthThresholds
from .metrics import MetricsCollector

__all__ = ["HealthChecker", "HealthThresholds", "MetricsCollector"]
