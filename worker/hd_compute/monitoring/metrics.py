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

Over 400 lines because it is every metric of the contract in one place: their declarations, the seed's calls,
the worker's calls and the collectors computed at scrape time.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from typing import Callable, Iterable, Mapping

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, choose_encoder, generate_latest

__all__ = ["MetricsCollector", "StateMetrics", "QUANTILES", "DURATION_BUCKETS", "BATCH_SIZE_BUCKETS"]

QUANTILES = (0.5, 0.95, 0.99)
# Seconds: from 50 us (one bind on a GPU) to 30 s (a huge cleanup on a CPU).
DURATION_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

# increment_counter names (the seed's, without "hdc_") -> the metric family; "operations_total" is the seed's
# example.
_COUNTER_NAMES = {
    "operation_total": "hdc_operation",
    "operations_total": "hdc_operation",
    "operation_errors_total": "hdc_operation_errors",
    "hypervector_operations_total": "hdc_hypervector_operations",
}
# set_gauge names -> the metric family. Latency percentiles and throughput are computed, never set.
_GAUGE_NAMES = {
    "active_hypervectors": "hdc_active_hypervectors",
    "memory_usage_bytes": "hdc_memory_usage_bytes",
    "cpu_usage_percent": "hdc_cpu_usage_percent",
    "gpu_memory_usage_bytes": "hdc_gpu_memory_usage_bytes",
    "gpu_utilization_percent": "hdc_gpu_utilization_percent",
    "capacity_ops_per_second": None,  # set_capacity
    "benchmark_duration_seconds": "hdc_benchmark_duration_seconds",
    "benchmark_degradation_ratio": "hdc_benchmark_degradation_ratio",
    "benchmark_peak_memory_bytes": "hdc_benchmark_peak_memory_bytes",
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


def _check_count(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{field} must be a non-negative integer, got {value!r}")
    return value


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default 'linear' method)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class _WithoutCreated:
    """Exposes another registry's metrics without the `_created` samples prometheus_client adds next to
    counters and histograms (they would be metric names outside the contract). A collector of our own rather
    than prometheus_client.disable_created_metrics(), which would change every registry of the process."""

    def __init__(self, inner: CollectorRegistry) -> None:
        self._inner = inner

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        for family in self._inner.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


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
            labels=["operation", "quantile"],
        )
        throughput = GaugeMetricFamily(
            "hdc_throughput_ops_per_second",
            f"Hypervector operations per second over the last {self._owner.latency_window_seconds:g} s",
            labels=["operation"],
        )
        for operation, (percentiles, rate) in sorted(self._owner.window_snapshot().items()):
            for q, value in percentiles.items():
                latency.add_metric([operation, f"{q:g}"], value)
            throughput.add_metric([operation], rate)
        yield latency
        yield throughput
        capacity = GaugeMetricFamily(
            "hdc_capacity_ops_per_second", "Hypervector operations per second this replica can sustain (measured)"
        )
        if self._owner.capacity is not None:
            capacity.add_metric([], self._owner.capacity)
        yield capacity


class _OperationSeries:
    """The labelled children of one operation (labels() takes a lock and builds a key: once per operation,
    not per request) and its sliding window of (time, duration ms, hypervectors)."""

    __slots__ = ("duration", "total", "hypervectors", "errors", "window")

    def __init__(self, owner: "MetricsCollector", operation: str) -> None:
        self.duration = owner.operation_duration_seconds.labels(operation)
        self.total = owner.operation_total.labels(operation)
        self.hypervectors = owner.hypervector_operations_total.labels(operation)
        self.errors: dict[str, Counter] = {}  # error code -> its child of hdc_operation_errors_total
        self.window: deque[tuple[float, float, int]] = deque()


# Seconds a state write's commit or a read's wait for a state version takes: from a local SQLite commit to the
# longest wait a read may be given (HDC_READ_WAIT_SECONDS is at most 60).
STATE_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)
STATE_LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "hdc_state_version": (),
    "hdc_state_lag_versions": (),
    "hdc_state_lag_seconds": (),
    "hdc_state_store_reachable": (),
    "hdc_state_catch_up_seconds": (),
    "hdc_state_commit_seconds": (),
    "hdc_state_catch_up_wait_seconds": (),
    "hdc_state_store_errors": ("reason",),
}


class StateMetrics:
    """The state store's metrics (docs/state.md), exported only by a worker that follows a store
    (`MetricsCollector.state()`), so a collector without one exports exactly the families it always had."""

    def __init__(self, registry: CollectorRegistry) -> None:
        inner = CollectorRegistry()
        self.version = Gauge(
            "hdc_state_version", "The state version this replica has applied (every write up to it)", registry=inner
        )
        self.lag_versions = Gauge(
            "hdc_state_lag_versions",
            "Committed state versions this replica has heard of and not applied yet",
            registry=inner,
        )
        self.lag_seconds = Gauge(
            "hdc_state_lag_seconds",
            "How long this replica has known of a committed state version it has not applied yet (0: caught up)",
            registry=inner,
        )
        self.store_reachable = Gauge(
            "hdc_state_store_reachable",
            "1 while this replica reads the state store's log (at least every few seconds), else 0",
            registry=inner,
        )
        self.catch_up_seconds = Gauge(
            "hdc_state_catch_up_seconds",
            "Duration of this replica's last catch-up with the state store (at start: before it turned ready)",
            registry=inner,
        )
        self.commit_seconds = Histogram(
            "hdc_state_commit_seconds",
            "Duration of a write's transaction in the state store, until its commit",
            registry=inner,
            buckets=STATE_SECONDS_BUCKETS,
        )
        self.catch_up_wait_seconds = Histogram(
            "hdc_state_catch_up_wait_seconds",
            "How long a read that asked for X-HDC-Min-State-Version waited for this replica to apply it",
            registry=inner,
            buckets=STATE_SECONDS_BUCKETS,
        )
        self.store_errors = Counter(
            "hdc_state_store_errors",
            "State store failures by reason (unavailable on a write, follow on reading the log, not_caught_up)",
            ("reason",),
            registry=inner,
        )
        registry.register(_WithoutCreated(inner))

    def set_follower(
        self, applied_version: int, lag_versions: int, lag_seconds: float, reachable: bool, catch_up_seconds: float
    ) -> None:
        self.version.set(_check_count("applied_version", applied_version))
        self.lag_versions.set(_check_count("lag_versions", lag_versions))
        self.lag_seconds.set(_check_number("lag_seconds", lag_seconds))
        self.store_reachable.set(1 if reachable else 0)
        self.catch_up_seconds.set(_check_number("catch_up_seconds", catch_up_seconds))

    def observe_commit(self, seconds: float) -> None:
        self.commit_seconds.observe(_check_number("seconds", seconds))

    def observe_catch_up_wait(self, seconds: float) -> None:
        self.catch_up_wait_seconds.observe(_check_number("seconds", seconds))

    def count_store_error(self, reason: str, amount: int = 1) -> None:
        self.store_errors.labels(_check_label("reason", reason)).inc(_check_count("amount", amount))


class MetricsCollector:
    """All hdc_* metrics of one worker, in `registry` (a fresh CollectorRegistry when none is given).

    `label_names` maps each declared metric family (as prometheus_client names it: counters without their
    `_total`) to its label names, for readers that need the labels of a family that has no sample yet."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        latency_window_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.latency_window_seconds = _check_number("latency_window_seconds", latency_window_seconds)
        if self.latency_window_seconds <= 0:
            raise ValueError(f"latency_window_seconds must be > 0, got {latency_window_seconds!r}")
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()  # the sliding windows and the series table
        self._series: dict[str, _OperationSeries] = {}
        self._process = psutil.Process(os.getpid())
        self._cpu_sample: tuple[float, float] | None = None  # (wall time, process cpu seconds)
        self._nvml_handles: list | None = None  # None: not tried yet; []: no GPU
        self.capacity: float | None = None  # hdc_capacity_ops_per_second: absent until measured
        self.label_names: dict[str, tuple[str, ...]] = {}
        self._families: dict[str, Counter | Gauge | Histogram] = {}  # family name -> metric (set_gauge, ...)

        inner = CollectorRegistry()

        def declare(kind, name: str, documentation: str, labels: tuple[str, ...] = (), **kwargs):
            metric = kind(name, documentation, labels, registry=inner, **kwargs)
            self.label_names[name] = labels
            self._families[name] = metric
            return metric

        # System
        self.memory_usage_bytes = declare(
            Gauge, "hdc_memory_usage_bytes", "Memory consumption by component, in bytes", ("component",)
        )
        self.cpu_usage_percent = declare(
            Gauge, "hdc_cpu_usage_percent", "CPU used by the worker process, in percent of one core"
        )
        self.gpu_memory_usage_bytes = declare(
            Gauge, "hdc_gpu_memory_usage_bytes", "GPU memory in use, in bytes (if a GPU exists)", ("device",)
        )
        self.gpu_utilization_percent = declare(
            Gauge, "hdc_gpu_utilization_percent", "GPU utilization, in percent", ("device",)
        )
        # Operations. Counters are named without `_total`: prometheus_client appends it to the samples.
        self.operation_duration_seconds = declare(
            Histogram,
            "hdc_operation_duration_seconds",
            "Operation execution time",
            ("operation",),
            buckets=DURATION_BUCKETS,
        )
        self.operation_total = declare(Counter, "hdc_operation", "Total operations by type", ("operation",))
        self.operation_errors_total = declare(
            Counter, "hdc_operation_errors", "Failed operations by type and error", ("operation", "error")
        )
        self.hypervector_operations_total = declare(
            Counter, "hdc_hypervector_operations", "Hypervectors processed by operations", ("operation",)
        )
        # Performance (latency percentiles, throughput and capacity: _WindowCollector)
        self.batch_size_distribution = declare(
            Histogram, "hdc_batch_size_distribution", "Micro-batch sizes", buckets=BATCH_SIZE_BUCKETS
        )
        self.benchmark_duration_seconds = declare(
            Gauge, "hdc_benchmark_duration_seconds", "Latest continuous-benchmark duration of one call", ("test",)
        )
        self.benchmark_degradation_ratio = declare(
            Gauge,
            "hdc_benchmark_degradation_ratio",
            "(current - baseline) / baseline of a continuous benchmark",
            ("test",),
        )
        self.benchmark_peak_memory_bytes = declare(
            Gauge,
            "hdc_benchmark_peak_memory_bytes",
            "Peak memory of one call of a continuous-benchmark test beyond what was in use before it, in bytes",
            ("test",),
        )
        self.active_hypervectors = declare(Gauge, "hdc_active_hypervectors", "Hypervectors held by the worker")
        for name, labels in {
            "hdc_latency_percentiles": ("operation", "quantile"),
            "hdc_throughput_ops_per_second": ("operation",),
            "hdc_capacity_ops_per_second": (),
        }.items():
            self.label_names[name] = labels

        self.registry.register(_WithoutCreated(inner))
        self.registry.register(_WindowCollector(self))
        self.label_names.update(STATE_LABEL_NAMES)
        self._state: StateMetrics | None = None

    def state(self) -> StateMetrics:
        """The state store's metrics, registered on the first call."""
        with self._lock:
            if self._state is None:
                self._state = StateMetrics(self.registry)
            return self._state

    # --- the seed's API ---------------------------------------------------------------------------------------
    def record_operation_duration(self, operation: str, duration_ms: float) -> None:
        """Duration histogram and latency window only (no counters); `observe_operation` does everything."""
        series = self._series_of(_check_label("operation", operation))
        ms = _check_number("duration_ms", duration_ms)
        series.duration.observe(ms / 1000.0)
        self._remember(series, ms, 0)

    def record_memory_usage(self, component: str, memory_bytes: int) -> None:
        self.memory_usage_bytes.labels(_check_label("component", component)).set(
            _check_number("memory_bytes", memory_bytes)
        )

    def record_device_utilization(self, device: str, percent: float) -> None:
        """'cpu' sets hdc_cpu_usage_percent; any other device ('cuda', 'cuda:0') hdc_gpu_utilization_percent."""
        _check_label("device", device)
        if device == "cpu":
            self.cpu_usage_percent.set(_check_number("percent", percent))
        else:
            self.gpu_utilization_percent.labels(device).set(_check_number("percent", percent, maximum=100.0))

    def increment_counter(self, name: str, labels: Mapping[str, str] | None = None, amount: float = 1) -> None:
        family = self._lookup(name, _COUNTER_NAMES, "counter")
        self._labelled(family, name, labels).inc(_check_number("amount", amount))

    def set_gauge(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        family = self._lookup(name, _GAUGE_NAMES, "gauge")
        if family is None:  # capacity_ops_per_second
            if labels:
                raise ValueError(f"metric {name!r} takes no labels, got {sorted(labels)}")
            self.set_capacity(value)
            return
        self._labelled(family, name, labels).set(_check_number("value", value, minimum=None))

    # --- the worker's API -------------------------------------------------------------------------------------
    def declare_operations(self, operations: Iterable[str]) -> None:
        """Exports the per-operation series at zero before the first request, so an idle replica (a fresh one,
        or one that never got traffic) has a throughput of 0 rather than no series: an HPA on their rate needs
        a value for every pod to scale down."""
        for operation in operations:
            self._series_of(_check_label("operation", operation))

    def observe_operation(
        self, operation: str, seconds: float, *, hypervectors: int = 1, error: str | None = None
    ) -> None:
        """One completed request or kernel: its duration, the operation and hypervector counters (a failed one:
        the error counter of its `error` code instead of hypervectors, since failed work is not throughput),
        and the sliding window of the latency percentiles and throughput."""
        _check_label("operation", operation)
        seconds = _check_number("seconds", seconds)
        hypervectors = _check_count("hypervectors", hypervectors)
        if error is not None:
            _check_label("error", error)
        series = self._series_of(operation)
        series.duration.observe(seconds)
        series.total.inc()
        if error is not None:
            errors = series.errors.get(error)
            if errors is None:
                errors = series.errors[error] = self.operation_errors_total.labels(operation, error)
            errors.inc()
            hypervectors = 0
        elif hypervectors:
            series.hypervectors.inc(hypervectors)
        self._remember(series, seconds * 1000.0, hypervectors)

    def observe_batch_size(self, size: int) -> None:
        self.batch_size_distribution.observe(_check_count("size", size))

    def set_capacity(self, ops_per_second: float) -> None:
        self.capacity = _check_number("ops_per_second", ops_per_second)

    def record_benchmark(
        self, test: str, duration_seconds: float, degradation_ratio: float, peak_memory_bytes: int | None = None
    ) -> None:
        """A continuous-benchmark run of `test`: the duration of one call, its degradation against the baseline
        and, when it was measured, the call's peak memory (hdc_benchmark_peak_memory_bytes)."""
        _check_label("test", test)
        self.benchmark_duration_seconds.labels(test).set(_check_number("duration_seconds", duration_seconds))
        self.benchmark_degradation_ratio.labels(test).set(
            _check_number("degradation_ratio", degradation_ratio, minimum=-1.0)
        )
        if peak_memory_bytes is not None:
            self.benchmark_peak_memory_bytes.labels(test).set(_check_count("peak_memory_bytes", peak_memory_bytes))

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
        now = self._clock()
        span = max(1.0, min(self.latency_window_seconds, now - self._started))
        out = {}
        with self._lock:
            for operation, series in self._series.items():
                entries = series.window
                self._expire(entries, now)
                if not entries:
                    continue
                durations = sorted(d for _, d, _ in entries)
                out[operation] = ({q: _quantile(durations, q) for q in QUANTILES}, sum(n for _, _, n in entries) / span)
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
    def _series_of(self, operation: str) -> _OperationSeries:
        series = self._series.get(operation)
        if series is None:
            with self._lock:
                series = self._series.get(operation)
                if series is None:
                    series = self._series[operation] = _OperationSeries(self, operation)
        return series

    def _remember(self, series: _OperationSeries, duration_ms: float, hypervectors: int) -> None:
        """Adds an observation made now to the operation's sliding window and drops the expired ones, so a
        window holds at most `latency_window_seconds` of observations whether or not anyone reads it."""
        now = self._clock()
        with self._lock:
            series.window.append((now, duration_ms, hypervectors))
            self._expire(series.window, now)

    def _expire(self, entries: deque, now: float) -> None:
        limit = now - self.latency_window_seconds
        while entries and entries[0][0] < limit:
            entries.popleft()

    def _lookup(self, name: str, table: dict[str, str | None], kind: str) -> str | None:
        key = name[4:] if isinstance(name, str) and name.startswith("hdc_") else name
        if key not in table:
            known = ", ".join(sorted(table))
            raise ValueError(f"unknown {kind} metric {name!r}; known {kind}s: {known}")
        return table[key]

    def _labelled(self, family: str, name: str, labels: Mapping[str, str] | None):
        expected = self.label_names[family]
        given = dict(labels or {})
        missing = [k for k in expected if k not in given]
        extra = [k for k in given if k not in expected]
        if missing or extra:
            raise ValueError(f"metric {name!r} takes labels {list(expected)}; missing {missing}, unexpected {extra}")
        for k, v in given.items():
            _check_label(f"label {k!r}", v)
        metric = self._families[family]
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
