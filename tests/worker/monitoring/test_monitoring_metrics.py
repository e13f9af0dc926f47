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
    "hdc_benchmark_peak_memory_bytes": {"test"},
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
    m.record_benchmark("bind_32k_dimension", 0.004, 0.25, peak_memory_bytes=64 << 20)
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


def test_duration_buckets_and_declared_operations(metrics):
    """The contract's buckets (50 us ... 30 s, a value equal to a bound counts in that bucket), and operations
    declared before any request export their series at zero (an idle replica has a rate of 0, not no series)."""
    from hd_compute.monitoring.metrics import DURATION_BUCKETS

    metrics.declare_operations(["similarity"])
    metrics.observe_operation("bundle", 0.001, hypervectors=1)
    metrics.observe_operation("bundle", 31.0, hypervectors=1)
    found = samples(metrics, update_system=False)
    bundle = {
        labels["le"]: v
        for labels, v in found["hdc_operation_duration_seconds_bucket"]
        if labels["operation"] == "bundle"
    }
    assert [float(le) for le in bundle] == [*DURATION_BUCKETS, float("inf")]
    assert bundle["0.0005"] == 0 and bundle["0.001"] == 1 and bundle["30.0"] == 1 and bundle["+Inf"] == 2
    assert value(found, "hdc_operation_total", operation="similarity") == 0
    assert value(found, "hdc_hypervector_operations_total", operation="similarity") == 0
    assert value(found, "hdc_operation_duration_seconds_count", operation="similarity") == 0


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


@pytest.mark.parametrize(
    "call, field",
    [
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
    ],
)
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


def test_concurrent_writers_and_readers_lose_nothing(clock):
    """Requests observe on the event loop and the kernel thread while /metrics reads on another thread: every
    observation is counted once, and the sliding window holds only what is younger than the window."""
    import threading

    m = MetricsCollector(latency_window_seconds=60, clock=clock)

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
    assert m.registry.get_sample_value("hdc_operation_total", {"operation": "bind"}) == 8_000
    assert m.registry.get_sample_value("hdc_operation_duration_seconds_count", {"operation": "bind"}) == 8_000
    assert m.registry.get_sample_value("hdc_hypervector_operations_total", {"operation": "bind"}) == 8_000
    assert m.window_snapshot()["bind"][1] == pytest.approx(8_000)  # a window younger than 1 s counts as 1 s
    clock.now += 61
    m.observe_operation("bind", 0.001, hypervectors=3)  # the expired ones leave as new ones come, read or not
    assert m.window_snapshot()["bind"][1] == pytest.approx(3 / 60)


def test_benchmark_peak_memory_is_absent_until_measured(metrics):
    metrics.record_benchmark("bind_32k_dimension", 0.004, 0.0)  # a platform that cannot measure it
    assert "hdc_benchmark_peak_memory_bytes" not in samples(metrics, update_system=False)
    metrics.record_benchmark("bind_32k_dimension", 0.004, 0.0, peak_memory_bytes=123)
    found = samples(metrics, update_system=False)
    assert value(found, "hdc_benchmark_peak_memory_bytes", test="bind_32k_dimension") == 123
    metrics.set_gauge("benchmark_peak_memory_bytes", 456, labels={"test": "bind_32k_dimension"})  # the seed's call
    found = samples(metrics, update_system=False)
    assert value(found, "hdc_benchmark_peak_memory_bytes", test="bind_32k_dimension") == 456
    with pytest.raises(ValueError, match="peak_memory_bytes"):
        metrics.record_benchmark("bind_32k_dimension", 0.004, 0.0, peak_memory_bytes=-1)


def test_label_names_of_every_declared_family(metrics):
    """label_names answers for families with no sample yet (a CPU worker's GPU gauges), as the exposition
    would label them."""
    assert metrics.label_names["hdc_gpu_utilization_percent"] == ("device",)
    assert metrics.label_names["hdc_operation_errors"] == ("operation", "error")
    assert metrics.label_names["hdc_latency_percentiles"] == ("operation", "quantile")
    exercise(metrics)
    body, _ = metrics.exposition(update_system=False)
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            assert set(s.labels) - {"le"} == set(metrics.label_names[family.name]), (family.name, s.labels)
