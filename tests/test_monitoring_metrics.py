"""MetricsCollector: the exposed names and labels are the seed's contract, parsed from the real exposition."""

import pytest
import torch
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from hd_compute.monitoring.metrics import MetricsCollector

# sample name -> label names (besides le / quantile-as-bucket), exactly as the contract says.
CONTRACT = {
    "hdc_memory_usage_bytes": {"component"},
    "hdc_cpu_usage_percent": set(),
    "hdc_operation_duration_seconds_bucket": {"operation", "le"},
    "hdc_operation_duration_seconds_count": {"operation"},
    "hdc_operation_duration_seconds_sum": {"operation"},
    "hdc_operation_total": {"operation"},
    "hdc_operation_errors_total": {"operation", "error"},
    "hdc_hypervector_operations_total": {"operation"},
    "hdc_throughput_ops_per_second": {"operation"},
    "hdc_latency_percentiles": {"operation", "quantile"},
    "hdc_batch_size_distribution_bucket": {"le"},
    "hdc_batch_size_distribution_count": set(),
    "hdc_batch_size_distribution_sum": set(),
    "hdc_capacity_ops_per_second": set(),
    "hdc_benchmark_duration_seconds": {"test"},
    "hdc_benchmark_degradation_ratio": {"test"},
    "hdc_active_hypervectors": set(),
}
GPU = {"hdc_gpu_memory_usage_bytes": {"device"}, "hdc_gpu_utilization_percent": {"device"}}


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def samples(metrics: MetricsCollector, **kwargs) -> dict:
    """sample name -> list of (labels, value), parsed from the text exposition."""
    body, content_type = metrics.exposition(**kwargs)
    assert content_type.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def value(found, name, **labels):
    matches = [v for lab, v in found.get(name, []) if all(lab.get(k) == str(x) for k, x in labels.items())]
    assert len(matches) == 1, f"{name}{labels}: {found.get(name)}"
    return matches[0]


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def metrics(clock):
    return MetricsCollector(latency_window_seconds=60, clock=clock)


def exercise(m: MetricsCollector):
    m.observe_operation("bundle", 0.015, hypervectors=100)
    m.observe_operation("bind", 0.002, error="ValueError")
    m.observe_batch_size(32)
    m.set_capacity(1234.5)
    m.record_benchmark("bind_32k_dimension", 0.004, 0.25)
    m.set_gauge("active_hypervectors", 7)


def test_exposed_names_and_labels_are_exactly_the_contract(metrics):
    exercise(metrics)
    found = samples(metrics)
    names = set(found)
    if not torch.cuda.is_available():
        assert names == set(CONTRACT), names ^ set(CONTRACT)
    else:
        assert names == set(CONTRACT) | set(GPU), names ^ (set(CONTRACT) | set(GPU))
    for name, entries in found.items():
        expected = (CONTRACT | GPU)[name]
        for labels, _ in entries:
            assert set(labels) == expected, (name, labels)
    assert not any(n.endswith("_created") for n in names)


def test_families_have_the_contract_types(metrics):
    exercise(metrics)
    body, _ = metrics.exposition()
    types = {f.name: f.type for f in text_string_to_metric_families(body.decode())}
    assert types["hdc_operation"] == "counter"  # the parser strips _total from counter families
    assert types["hdc_operation_errors"] == "counter"
    assert types["hdc_hypervector_operations"] == "counter"
    assert types["hdc_operation_duration_seconds"] == "histogram"
    assert types["hdc_batch_size_distribution"] == "histogram"
    assert types["hdc_latency_percentiles"] == "gauge"


def test_counters_increment(metrics):
    metrics.observe_operation("bundle", 0.01, hypervectors=100)
    metrics.observe_operation("bundle", 0.02, hypervectors=50)
    metrics.observe_operation("bundle", 0.03, hypervectors=10, error="RuntimeError")
    found = samples(metrics, update_system=False)
    assert value(found, "hdc_operation_total", operation="bundle") == 3
    assert value(found, "hdc_hypervector_operations_total", operation="bundle") == 150  # failures do not count
    assert value(found, "hdc_operation_errors_total", operation="bundle", error="RuntimeError") == 1
    assert value(found, "hdc_operation_duration_seconds_count", operation="bundle") == 3
    assert value(found, "hdc_operation_duration_seconds_sum", operation="bundle") == pytest.approx(0.06)
    assert value(found, "hdc_operation_duration_seconds_bucket", operation="bundle", le="0.025") == 2


def test_duration_histogram_is_what_prometheus_client_histogram_writes(metrics):
    """The durations are kept as plain bucket counts and added in bulk; the exposition must be the one a
    prometheus_client Histogram with the same buckets writes for the same values, bucket bounds included
    (a value equal to a bound counts in that bucket)."""
    from prometheus_client import Histogram
    from prometheus_client.exposition import generate_latest

    from hd_compute.monitoring.metrics import DURATION_BUCKETS

    registry = CollectorRegistry()
    reference = Histogram("hdc_operation_duration_seconds", "Operation execution time", ["operation"],
                          buckets=DURATION_BUCKETS, registry=registry)
    values = {"bundle": [*DURATION_BUCKETS, 0.0, 0.00003, 0.0042, 31.0, 1e-9],
              "bind": [0.002, 0.002, 0.7], "similarity": []}
    metrics.declare_operations(["similarity"])
    reference.labels("similarity")
    for operation, seconds in values.items():
        for s in seconds:
            metrics.observe_operation(operation, s, hypervectors=1)
            reference.labels(operation).observe(s)
    metrics.record_operation_duration("bind", 2.5)  # the seed's call, in milliseconds
    reference.labels("bind").observe(0.0025)

    def family(body: bytes) -> list[str]:
        return sorted(line for line in body.decode().splitlines()
                      if line.startswith("hdc_operation_duration_seconds") and "_created" not in line)

    expected = family(generate_latest(registry))
    assert len(expected) == 3 * (len(DURATION_BUCKETS) + 3)
    assert family(metrics.exposition(update_system=False)[0]) == expected


def test_latency_percentiles_over_the_sliding_window(metrics, clock):
    for ms in range(1, 101):  # 1 ms .. 100 ms
        metrics.observe_operation("bind", ms / 1000, hypervectors=2)
    found = samples(metrics, update_system=False)
    # Linear interpolation between ranks, in milliseconds (the seed's alert compares with 100 ms).
    assert value(found, "hdc_latency_percentiles", operation="bind", quantile="0.5") == pytest.approx(50.5)
    assert value(found, "hdc_latency_percentiles", operation="bind", quantile="0.95") == pytest.approx(95.05)
    assert value(found, "hdc_latency_percentiles", operation="bind", quantile="0.99") == pytest.approx(99.01)
    # 200 hypervectors in a window that has existed for 0 s (counted as 1 s, never a division by ~0).
    assert value(found, "hdc_throughput_ops_per_second", operation="bind") == pytest.approx(200)

    clock.now += 30
    for _ in range(10):
        metrics.observe_operation("bind", 0.5, hypervectors=2)
    found = samples(metrics, update_system=False)
    assert value(found, "hdc_latency_percentiles", operation="bind", quantile="0.99") == pytest.approx(500)
    assert value(found, "hdc_throughput_ops_per_second", operation="bind") == pytest.approx(220 / 30)

    clock.now += 45  # the first 100 leave the 60 s window; only the ten 500 ms ones remain
    found = samples(metrics, update_system=False)
    for q in ("0.5", "0.95", "0.99"):
        assert value(found, "hdc_latency_percentiles", operation="bind", quantile=q) == pytest.approx(500)
    assert value(found, "hdc_throughput_ops_per_second", operation="bind") == pytest.approx(20 / 60)

    clock.now += 61  # everything expired: the series disappear rather than report stale values
    found = samples(metrics, update_system=False)
    assert "hdc_latency_percentiles" not in found


def test_seed_calls(metrics):
    metrics.record_operation_duration("bundle", 15.2)
    metrics.record_memory_usage("hypervector_storage", 4096)
    metrics.record_device_utilization("cuda", 80.0)
    metrics.record_device_utilization("cpu", 42.0)
    metrics.increment_counter("operations_total", labels={"operation": "bundle"})
    metrics.increment_counter("hdc_operation_errors_total", labels={"operation": "bind", "error": "OOM"}, amount=2)
    metrics.increment_counter("hypervector_operations_total", labels={"operation": "bundle"}, amount=10)
    metrics.set_gauge("active_hypervectors", 12)
    metrics.set_gauge("memory_usage_bytes", 99, labels={"component": "item_memory"})
    metrics.set_gauge("capacity_ops_per_second", 5000)
    found = samples(metrics, update_system=False)
    assert value(found, "hdc_operation_duration_seconds_sum", operation="bundle") == pytest.approx(0.0152)
    assert value(found, "hdc_latency_percentiles", operation="bundle", quantile="0.5") == pytest.approx(15.2)
    assert value(found, "hdc_memory_usage_bytes", component="hypervector_storage") == 4096
    assert value(found, "hdc_memory_usage_bytes", component="item_memory") == 99
    assert value(found, "hdc_gpu_utilization_percent", device="cuda") == 80
    assert value(found, "hdc_cpu_usage_percent") == 42
    assert value(found, "hdc_operation_total", operation="bundle") == 1
    assert value(found, "hdc_operation_errors_total", operation="bind", error="OOM") == 2
    assert value(found, "hdc_hypervector_operations_total", operation="bundle") == 10
    assert value(found, "hdc_active_hypervectors") == 12
    assert value(found, "hdc_capacity_ops_per_second") == 5000


@pytest.mark.parametrize("call, field", [
    (lambda m: m.increment_counter("bogus_total"), "bogus_total"),
    (lambda m: m.set_gauge("hdc_no_such_gauge", 1), "hdc_no_such_gauge"),
    (lambda m: m.set_gauge("latency_percentiles", 1), "latency_percentiles"),  # computed, not settable
    (lambda m: m.increment_counter("operations_total"), "operation"),  # missing label
    (lambda m: m.increment_counter("operations_total", labels={"operation": "b", "x": "y"}), "x"),
    (lambda m: m.increment_counter("operations_total", labels={"operation": "b"}, amount=-1), "amount"),
    (lambda m: m.observe_operation("bundle", float("nan")), "seconds"),
    (lambda m: m.observe_operation("", 0.1), "operation"),
    (lambda m: m.observe_operation("bundle", 0.1, hypervectors=-3), "hypervectors"),
    (lambda m: m.observe_batch_size(2.5), "size"),
    (lambda m: m.record_device_utilization("cuda:0", 180), "percent"),
])
def test_bad_names_and_values_raise_naming_them(metrics, call, field):
    with pytest.raises(ValueError, match=field):
        call(metrics)


def test_capacity_absent_until_measured(metrics):
    found = samples(metrics, update_system=False)
    assert "hdc_capacity_ops_per_second" not in found
    metrics.set_capacity(10.0)
    assert value(samples(metrics, update_system=False), "hdc_capacity_ops_per_second") == 10


def test_system_metrics(metrics):
    found = samples(metrics)  # exposition() updates them
    assert value(found, "hdc_memory_usage_bytes", component="process") > 10 * 1024 * 1024
    assert value(found, "hdc_cpu_usage_percent") >= 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_gpu_gauges_absent_without_gpu(metrics):
    found = samples(metrics)
    assert "hdc_gpu_memory_usage_bytes" not in found
    assert "hdc_gpu_utilization_percent" not in found


@pytest.mark.gpu
def test_gpu_gauges_present_with_gpu(metrics):
    found = samples(metrics)
    assert value(found, "hdc_gpu_memory_usage_bytes", device="cuda:0") > 0
    assert 0 <= value(found, "hdc_gpu_utilization_percent", device="cuda:0") <= 100


def test_given_registry_and_openmetrics(clock):
    registry = CollectorRegistry()
    m = MetricsCollector(registry, clock=clock)
    assert m.registry is registry
    m.observe_operation("bundle", 0.001)
    assert registry.get_sample_value("hdc_operation_total", {"operation": "bundle"}) == 1
    body, content_type = m.exposition("application/openmetrics-text", update_system=False)
    assert content_type.startswith("application/openmetrics-text")
    assert b'hdc_operation_total{operation="bundle"} 1.0' in body
    assert body.rstrip().endswith(b"# EOF")


def test_two_collectors_do_not_collide(clock):
    a, b = MetricsCollector(clock=clock), MetricsCollector(clock=clock)
    a.observe_operation("bundle", 0.001)
    assert b.registry.get_sample_value("hdc_operation_total", {"operation": "bundle"}) is None


def test_observations_are_applied_when_read_even_from_many_threads(monkeypatch):
    """observe_operation only queues its record; every reader (exposition, the registry, the window) applies the
    queue first, nothing is lost or counted twice under concurrent writers and readers, and a worker that is
    never scraped keeps the queue bounded."""
    import threading

    from hd_compute.monitoring import metrics as metrics_module

    monkeypatch.setattr(metrics_module, "_APPLY_AFTER", 500)
    m = MetricsCollector()
    m.observe_operation("bind", 0.002, hypervectors=3)
    assert m.registry.get_sample_value("hdc_operation_total", {"operation": "bind"}) == 1
    assert m.registry.get_sample_value("hdc_hypervector_operations_total", {"operation": "bind"}) == 3

    def write():
        for _ in range(2_000):
            m.observe_operation("bind", 0.001, hypervectors=1)

    def read():
        for _ in range(50):
            m.exposition(update_system=False)
            m.window_snapshot()

    threads = [threading.Thread(target=write) for _ in range(4)] + [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(m._observations) < 500  # bounded without a reader
    assert m.registry.get_sample_value("hdc_operation_total", {"operation": "bind"}) == 8_001
    assert m.registry.get_sample_value("hdc_operation_duration_seconds_count", {"operation": "bind"}) == 8_001
    assert m.registry.get_sample_value("hdc_hypervector_operations_total", {"operation": "bind"}) == 8_003
    assert m.window_snapshot()["bind"][1] > 0
