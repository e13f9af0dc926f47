"""Prometheus metrics of the worker, under the names of the seed (docs/monitoring.md lists each one).

    metrics = MetricsCollector()                       # its own CollectorRegistry unless one is given
    metrics.observe_operation("bundle", 0.0152, hypervectors=100)   # one call per completed request/kernel
    metrics.observe_operation("bind", 0.003, error="ValueError")    # a failed one
    body, content_type = metrics.exposition()          # what GET /metrics answers

The seed's own calls work too: ``record_operation_duration('bundle', 15.2)`` (milliseconds),
``record_memory_usage('hypervector_storage', n)``, ``record_device_utilization('cuda', 80)``,
``increment_counter('operations_total', labels={'operation': 'bundle'})`` and
``set_gauge('active_hypervectors', count)``. Names are the seed's without the ``hdc_`` prefix (the prefix is
accepted too); an unknown name, or labels that do not match the metric's, raise ValueError naming them.

The exposed metric names are exactly the contract's: counters are declared so that prometheus_client's
``_total`` suffix lands on the contract name, and the ``*_created`` series prometheus_client would add next to
every counter and histogram are left out (they would be extra metric names in the text format).

Latency percentiles (milliseconds, as the seed's alert ``hdc_latency_percentiles{quantile="0.95"} > 100``
expects) and throughput (hypervector operations per second) are computed at scrape time over a sliding window
of ``latency_window_seconds``. GPU gauges come from NVML (nvidia-ml-py) and exist only where a GPU does.
"""

from __future__ import annotations

import math
import os
import threading
import time
from bisect import bisect_left
from collections import deque
from typing import Callable, Iterable, Mapping

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, generate_latest, CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from ._queues import drain

__all__ = ["MetricsCollector", "QUANTILES", "DURATION_BUCKETS", "BATCH_SIZE_BUCKETS"]

QUANTILES = (0.5, 0.95, 0.99)
# Seconds: from 50 us (one bind on a GPU) to 30 s (a huge cleanup on a CPU).
DURATION_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
_DURATION_LE = [floatToGoString(b) for b in DURATION_BUCKETS] + ["+Inf"]  # the le labels prometheus_client writes
_APPLY_AFTER = 10_000  # observe_operation records waiting at most (a worker nobody scrapes stays bounded)

# increment_counter names (the seed's, without "hdc_") -> attribute; "operations_total" is the seed's example.
_COUNTER_NAMES = {
    "operation_total": "operation_total",
    "operations_total": "operation_total",
    "operation_errors_total": "operation_errors_total",
    "hypervector_operations_total": "hypervector_operations_total",
}
# set_gauge names -> attribute. Latency percentiles and throughput are computed, never set.
_GAUGE_NAMES = {
    "active_hypervectors": "active_hypervectors",
    "memory_usage_bytes": "memory_usage_bytes",
    "cpu_usage_percent": "cpu_usage_percent",
    "gpu_memory_usage_bytes": "gpu_memory_usage_bytes",
    "gpu_utilization_percent": "gpu_utilization_percent",
    "capacity_ops_per_second": None,  # set_capacity
    "benchmark_duration_seconds": "benchmark_duration_seconds",
    "benchmark_degradation_ratio": "benchmark_degradation_ratio",
}


def _check_label(field: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be a non-empty string, got {value!r}")
    return value


def _check_number(field: str, value: object, *, minimum: float | None = 0.0, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{field} must be >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{field} must be <= {maximum}, got {value!r}")
    return float(value)


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default 'linear' method)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class _Durations:
    """hdc_operation_duration_seconds of one operation: observations per bucket (DURATION_BUCKETS, then +Inf,
    not cumulative) and their sum. A plain record rather than a prometheus_client Histogram: the queued
    observations are added in bulk, a bisect and two additions each instead of Histogram.observe's lock and
    loop over the buckets (a quarter of what a request's metrics cost)."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * len(_DURATION_LE)
        self.total = 0.0

    def add(self, seconds: float) -> None:
        self.counts[bisect_left(DURATION_BUCKETS, seconds)] += 1  # a bucket holds the values <= its bound
        self.total += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for le, n in zip(_DURATION_LE, self.counts):
            running += n
            out.append((le, running))
        return out


class _WithoutCreated:
    """Exposes another registry's metrics without the `_created` samples prometheus_client adds, and the
    operation duration histograms, after applying the observations waiting in the owner's queue."""

    def __init__(self, owner: "MetricsCollector", inner: CollectorRegistry):
        self._owner, self._inner = owner, inner

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        self._owner.apply_observations()
        for family in self._inner.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family
        yield self._owner._duration_family()


class _WindowCollector:
    """hdc_latency_percentiles{operation,quantile} and hdc_throughput_ops_per_second{operation}, at scrape time."""

    def __init__(self, owner: "MetricsCollector"):
        self._owner = owner

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        latency = GaugeMetricFamily(
            "hdc_latency_percentiles",
            f"Operation latency percentiles in milliseconds over the last {self._owner.latency_window_seconds:g} s",
            labels=["operation", "quantile"])
        throughput = GaugeMetricFamily(
            "hdc_throughput_ops_per_second",
            f"Hypervector operations per second over the last {self._owner.latency_window_seconds:g} s",
            labels=["operation"])
        for operation, (percentiles, rate) in sorted(self._owner.window_snapshot().items()):
            for q, value in percentiles.items():
                latency.add_metric([operation, f"{q:g}"], value)
            throughput.add_metric([operation], rate)
        yield latency
        yield throughput
        capacity = GaugeMetricFamily("hdc_capacity_ops_per_second",
                                     "Hypervector operations per second this replica can sustain (measured)")
        if self._owner._capacity is not None:
            capacity.add_metric([], self._owner._capacity)
        yield capacity


class MetricsCollector:
    """All hdc_* metrics of one worker, in `registry` (a fresh CollectorRegistry when none is given)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, latency_window_seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.latency_window_seconds = _check_number("latency_window_seconds", latency_window_seconds)
        if self.latency_window_seconds <= 0:
            raise ValueError(f"latency_window_seconds must be > 0, got {latency_window_seconds!r}")
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        # operation -> deque of (time, duration_ms, hypervectors)
        self._window: dict[str, deque[tuple[float, float, int]]] = {}
        self._durations: dict[str, _Durations] = {}  # hdc_operation_duration_seconds, by operation (under _lock)
        self._process = psutil.Process(os.getpid())
        self._cpu_sample: tuple[float, float] | None = None  # (wall time, process cpu seconds)
        self._nvml_handles: list | None = None  # None: not tried yet; []: no GPU
        self._children: dict[str, tuple] = {}  # operation -> its labelled total/hypervector counter children
        # observe_operation's records, applied to the metrics when they are read (deque: appends and pops are
        # atomic, so the request path takes no lock)
        self._observations: deque[tuple[str, float, int, str | None, float]] = deque()

        inner = CollectorRegistry()
        r = {"registry": inner}
        # System
        self.memory_usage_bytes = Gauge("hdc_memory_usage_bytes", "Memory consumption by component, in bytes",
                                        ["component"], **r)
        self.cpu_usage_percent = Gauge("hdc_cpu_usage_percent",
                                       "CPU used by the worker process, in percent of one core", **r)
        self.gpu_memory_usage_bytes = Gauge("hdc_gpu_memory_usage_bytes", "GPU memory in use, in bytes (if a GPU exists)",
                                            ["device"], **r)
        self.gpu_utilization_percent = Gauge("hdc_gpu_utilization_percent", "GPU utilization, in percent",
                                             ["device"], **r)
        # Operations (hdc_operation_duration_seconds{operation}: _Durations, exposed by _duration_family)
        self.operation_total = Counter("hdc_operation_total", "Total operations by type", ["operation"], **r)
        self.operation_errors_total = Counter("hdc_operation_errors", "Failed operations by type and error",
                                              ["operation", "error"], **r)
        self.hypervector_operations_total = Counter("hdc_hypervector_operations",
                                                    "Hypervectors processed by operations", ["operation"], **r)
        # Performance
        self.batch_size_distribution = Histogram("hdc_batch_size_distribution", "Micro-batch sizes",
                                                 buckets=BATCH_SIZE_BUCKETS, **r)
        self._capacity: float | None = None  # hdc_capacity_ops_per_second: absent until measured
        self.benchmark_duration_seconds = Gauge("hdc_benchmark_duration_seconds",
                                                "Latest continuous-benchmark duration of one call", ["test"], **r)
        self.benchmark_degradation_ratio = Gauge("hdc_benchmark_degradation_ratio",
                                                 "(current - baseline) / baseline of a continuous benchmark", ["test"],
                                                 **r)
        self.active_hypervectors = Gauge("hdc_active_hypervectors", "Hypervectors held by the worker", **r)

        self.registry.register(_WithoutCreated(self, inner))
        self.registry.register(_WindowCollector(self))

    # --- the seed's API ---------------------------------------------------------------------------------------
    def record_operation_duration(self, operation: str, duration_ms: float) -> None:
        """Duration histogram and latency window only (no counters); `observe_operation` does everything."""
        _check_label("operation", operation)
        ms = _check_number("duration_ms", duration_ms)
        with self._lock:
            self._durations_of(operation).add(ms / 1000.0)
        self._remember(operation, ms, 0)

    def record_memory_usage(self, component: str, memory_bytes: int) -> None:
        self.memory_usage_bytes.labels(_check_label("component", component)).set(
            _check_number("memory_bytes", memory_bytes))

    def record_device_utilization(self, device: str, percent: float) -> None:
        """'cpu' sets hdc_cpu_usage_percent; any other device ('cuda', 'cuda:0') hdc_gpu_utilization_percent."""
        _check_label("device", device)
        if device == "cpu":
            self.cpu_usage_percent.set(_check_number("percent", percent))
        else:
            self.gpu_utilization_percent.labels(device).set(_check_number("percent", percent, maximum=100.0))

    def increment_counter(self, name: str, labels: Mapping[str, str] | None = None, amount: float = 1) -> None:
        metric = self._lookup(name, _COUNTER_NAMES, "counter")
        self._labelled(metric, name, labels).inc(_check_number("amount", amount))

    def set_gauge(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        metric = self._lookup(name, _GAUGE_NAMES, "gauge")
        if metric is None:  # capacity_ops_per_second
            if labels:
                raise ValueError(f"metric {name!r} takes no labels, got {sorted(labels)}")
            self.set_capacity(value)
            return
        self._labelled(metric, name, labels).set(_check_number("value", value, minimum=None))

    # --- the worker's API -------------------------------------------------------------------------------------
    def _operation_children(self, operation: str) -> tuple:
        # labels() takes a lock and builds a key: once per operation, not per request
        children = self._children.get(operation)
        if children is None:
            children = self._children[operation] = (self.operation_total.labels(operation),
                                                    self.hypervector_operations_total.labels(operation))
            with self._lock:
                self._durations_of(operation)
        return children

    def _durations_of(self, operation: str) -> _Durations:
        """(Under _lock.)"""
        durations = self._durations.get(operation)
        if durations is None:
            durations = self._durations[operation] = _Durations()
        return durations

    def _duration_family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily("hdc_operation_duration_seconds", "Operation execution time",
                                       labels=["operation"])
        with self._lock:
            rows = [(operation, d.cumulative(), d.total) for operation, d in sorted(self._durations.items())]
        for operation, buckets, total in rows:
            family.add_metric([operation], buckets, total)
        return family

    def declare_operations(self, operations: Iterable[str]) -> None:
        """Exports the per-operation series at zero before the first request, so an idle replica (a fresh one,
        or one that never got traffic) has a throughput of 0 rather than no series: an HPA on their rate needs
        a value for every pod to scale down."""
        for operation in operations:
            self._operation_children(_check_label("operation", operation))

    def observe_operation(self, operation: str, seconds: float, *, hypervectors: int = 1,
                          error: str | None = None) -> None:
        """One completed request or kernel: duration, counts, errors, and the sliding window."""
        _check_label("operation", operation)
        seconds = _check_number("seconds", seconds)
        if isinstance(hypervectors, bool) or not isinstance(hypervectors, int) or hypervectors < 0:
            raise ValueError(f"hypervectors must be a non-negative integer, got {hypervectors!r}")
        if error is not None:
            _check_label("error", error)
        self._observations.append((operation, seconds, hypervectors, error, self._clock()))
        if len(self._observations) >= _APPLY_AFTER:
            self.apply_observations()

    def apply_observations(self) -> None:
        """Applies the recorded observe_operation calls to the histogram, counters and window. Reading the
        metrics (exposition, the registry's collect, window_snapshot) calls it first, so a reader never sees the
        difference; the request path pays for an append instead of three metric updates and a lock, and the
        counters are incremented once per operation for all the records applied together."""
        taken = drain(self._observations)
        if not taken:
            return
        # operation -> ([records, hypervectors], its durations, its window)
        targets: dict[str, tuple[list[int], _Durations, deque]] = {}
        errors: list[tuple[str, str]] = []
        with self._lock:
            for operation, seconds, hypervectors, error, at in taken:
                target = targets.get(operation)
                if target is None:
                    target = targets[operation] = ([0, 0], self._durations_of(operation),
                                                   self._window.setdefault(operation, deque()))
                count, durations, window = target
                durations.add(seconds)
                count[0] += 1
                if error is not None:
                    errors.append((operation, error))
                    hypervectors = 0  # failed work is not throughput
                count[1] += hypervectors
                window.append((at, seconds * 1000.0, hypervectors))
            now = self._clock()
            for _, _, window in targets.values():
                self._expire(window, now)
        for operation, ((records, hypervectors), _, _) in targets.items():
            total, hypervector_total = self._operation_children(operation)
            total.inc(records)
            if hypervectors:
                hypervector_total.inc(hypervectors)
        for operation, error in errors:
            self.operation_errors_total.labels(operation, error).inc()

    def observe_batch_size(self, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"size must be a non-negative integer, got {size!r}")
        self.batch_size_distribution.observe(size)

    def set_capacity(self, ops_per_second: float) -> None:
        self._capacity = _check_number("ops_per_second", ops_per_second)

    def record_benchmark(self, test: str, duration_seconds: float, degradation_ratio: float) -> None:
        _check_label("test", test)
        self.benchmark_duration_seconds.labels(test).set(_check_number("duration_seconds", duration_seconds))
        self.benchmark_degradation_ratio.labels(test).set(
            _check_number("degradation_ratio", degradation_ratio, minimum=-1.0))

    def update_system_metrics(self) -> None:
        """Process memory and CPU; GPU memory and utilization from NVML where a GPU exists (else absent)."""
        mem = self._process.memory_info()
        self.memory_usage_bytes.labels("process").set(mem.rss)
        vm = psutil.virtual_memory()
        self.memory_usage_bytes.labels("system_used").set(vm.total - vm.available)
        # CPU over the time since the previous sample (at least 0.5 s, so that back-to-back calls keep a value).
        now, cpu = time.monotonic(), sum(self._process.cpu_times()[:2])
        if self._cpu_sample is None:  # first call: the average since the process started
            since = max(1e-3, time.time() - self._process.create_time())
            self.cpu_usage_percent.set(100.0 * cpu / since)
            self._cpu_sample = (now, cpu)
        elif now - self._cpu_sample[0] >= 0.5:
            self.cpu_usage_percent.set(max(0.0, 100.0 * (cpu - self._cpu_sample[1]) / (now - self._cpu_sample[0])))
            self._cpu_sample = (now, cpu)
        for index, handle in enumerate(self._gpus()):
            try:
                import pynvml

                info = pynvml.nvmlDeviceGetMemoryInfo(handle)
                util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            except Exception:  # a GPU that stopped answering: keep the last values rather than fail a scrape
                continue
            device = f"cuda:{index}"
            self.gpu_memory_usage_bytes.labels(device).set(info.used)
            self.gpu_utilization_percent.labels(device).set(util.gpu)

    def window_snapshot(self) -> dict[str, tuple[dict[float, float], float]]:
        """operation -> ({quantile: latency ms}, hypervector ops per second) over the sliding window."""
        self.apply_observations()
        now = self._clock()
        span = max(1.0, min(self.latency_window_seconds, now - self._started))
        out = {}
        with self._lock:
            for operation, entries in self._window.items():
                self._expire(entries, now)
                if not entries:
                    continue
                durations = sorted(d for _, d, _ in entries)
                out[operation] = ({q: _quantile(durations, q) for q in QUANTILES},
                                  sum(n for _, _, n in entries) / span)
        return out

    def exposition(self, accept: str | None = None, *, update_system: bool = True) -> tuple[bytes, str]:
        """(body, content type) for GET /metrics; OpenMetrics when `accept` asks for it."""
        if update_system:
            self.update_system_metrics()
        if accept:
            encoder, content_type = choose_encoder(accept)
            return encoder(self.registry), content_type
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    # --- internals --------------------------------------------------------------------------------------------
    def _remember(self, operation: str, duration_ms: float, hypervectors: int, at: float | None = None) -> None:
        """Adds to the sliding window an observation made at `at` (now when None)."""
        now = self._clock()
        with self._lock:
            entries = self._window.setdefault(operation, deque())
            entries.append((now if at is None else at, duration_ms, hypervectors))
            self._expire(entries, now)

    def _expire(self, entries: deque, now: float) -> None:
        limit = now - self.latency_window_seconds
        while entries and entries[0][0] < limit:
            entries.popleft()

    def _lookup(self, name: str, table: dict[str, str], kind: str):
        key = name[4:] if isinstance(name, str) and name.startswith("hdc_") else name
        if key not in table:
            known = ", ".join(sorted(table))
            raise ValueError(f"unknown {kind} metric {name!r}; known {kind}s: {known}")
        return getattr(self, table[key]) if table[key] else None

    @staticmethod
    def _labelled(metric, name: str, labels: Mapping[str, str] | None):
        expected = tuple(metric._labelnames)
        given = dict(labels or {})
        missing = [k for k in expected if k not in given]
        extra = [k for k in given if k not in expected]
        if missing or extra:
            raise ValueError(f"metric {name!r} takes labels {list(expected)}; "
                             f"missing {missing}, unexpected {extra}")
        for k, v in given.items():
            _check_label(f"label {k!r}", v)
        return metric.labels(**given) if expected else metric

    def _gpus(self) -> list:
        if self._nvml_handles is None:
            handles = []
            try:
                import pynvml

                pynvml.nvmlInit()
                handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            except Exception:  # no driver, no library, no GPU: the GPU gauges stay absent
                handles = []
            self._nvml_handles = handles
        return self._nvml_handles
