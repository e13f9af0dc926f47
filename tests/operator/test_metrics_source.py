"""metrics_source against a real Prometheus scraping a real worker process (labels namespace/workload/pod as the
ServiceMonitor's relabelling gives them), and the failure cases: Prometheus stopped, a query error, a
Prometheus that never answers (a silent socket: a fault the real one cannot be made to show), no series."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time

import pytest
from worker_process import WorkerProcess

from hdc_operator.dev.prometheus import prometheus_config, prometheus_process, query
from hdc_operator.metrics_source import MetricsUnavailable, PrometheusMetricsSource, label_selector, queries
from hdc_operator.scaling import History, ScalerConfig, decide

pytestmark = pytest.mark.slow

NS, NAME, POD = "team-a", "encoder", "encoder-7d9f-abcde"
VECTORS_PER_BUNDLE = 16
DIM = 512


def run(coro):
    return asyncio.run(coro)


def observe(url, workload=NAME, **options):
    """One observation through a source that is closed afterwards (the operator keeps one open)."""

    async def go():
        async with PrometheusMetricsSource(url, **options) as source:
            return await source.observe(NS, workload)

    return asyncio.run(go())


def wait_for(predicate, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metrics-source")
    # The benchmark runs its three tests once right away (then hourly), so the capacity gauge settles.
    worker = WorkerProcess(
        tmp, tmp / "state", HDC_BENCHMARK_ENABLED="true", HDC_BENCHMARK_INTERVAL_SECONDS="3600", HDC_DIMENSION=str(DIM)
    ).start()
    config = prometheus_config(
        scrape_interval="1s",
        static_jobs={
            "hdc-workers": {
                "targets": [f"127.0.0.1:{worker.port}"],
                "labels": {"namespace": NS, "workload": NAME, "pod": POD},
            }
        },
    )
    prom = prometheus_process(tmp / "prometheus", config).start()
    try:
        yield worker, prom
    finally:
        prom.stop()
        worker.stop()


def worker_capacity(worker) -> float | None:
    status, body = worker.request("GET", "/metrics")
    for line in body.decode().splitlines():
        if line.startswith("hdc_capacity_ops_per_second "):
            return float(line.split()[1])
    return None


def load(worker, seconds: float) -> int:
    """Bundles of VECTORS_PER_BUNDLE random MAP vectors for `seconds`; returns the requests sent."""
    rng = random.Random(7)
    vectors = [[rng.choice((-1.0, 1.0)) for _ in range(DIM)] for _ in range(VECTORS_PER_BUNDLE)]
    sent, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        status, body = worker.request("POST", "/v1/ops/bundle", {"vectors": vectors, "vsa": "MAP"})
        assert status == 200, body
        sent += 1
        time.sleep(0.02)
    return sent


def test_promql_is_what_the_docs_say():
    q = queries("ns", 'we"ird', 60, 20)
    assert q["demand"] == 'sum(rate(hdc_hypervector_operations_total{namespace="ns", workload="we\\"ird"}[60s]))'
    assert q["capacity"] == 'avg(hdc_capacity_ops_per_second{namespace="ns", workload="we\\"ird"})'
    with pytest.raises(ValueError, match="workload"):
        label_selector("ns", "")
    with pytest.raises(ValueError, match="url"):
        PrometheusMetricsSource("prometheus:9090")


def test_demand_and_capacity_from_a_real_prometheus(stack):
    worker, prom = stack
    # The capacity gauge, once the three first benchmark runs are done, is constant.
    wait_for(lambda: worker_capacity(worker), 120, "the worker's first capacity measurement")
    time.sleep(3)
    capacity = worker_capacity(worker)
    wait_for(
        lambda: query(prom.url, f"hdc_capacity_ops_per_second{label_selector(NS, NAME)} == {capacity!r}"),
        30,
        "Prometheus to scrape the settled capacity",
    )

    idle = observe(prom.url)
    assert idle.unavailable_reason is None, idle
    assert idle.capacity_ops_per_second == pytest.approx(capacity)
    assert idle.replicas_reporting == 1 and idle.demand_ops_per_second >= 0

    thread_result = {}
    t = threading.Thread(target=lambda: thread_result.setdefault("sent", load(worker, 25)))
    t.start()
    time.sleep(22)  # the 20 s window is inside the load; the 60 s one partly
    obs = observe(prom.url)
    # The same windows over the request counter: the demand is in hypervectors, 16 per bundle request.
    sel = label_selector(NS, NAME)
    requests_20s = float(query(prom.url, f"sum(rate(hdc_operation_total{sel}[20s]))")[0]["value"][1])
    t.join()
    assert thread_result["sent"] > 20
    assert obs.unavailable_reason is None, obs
    assert obs.recent_demand_ops_per_second > 0 and obs.demand_ops_per_second > 0
    assert obs.recent_demand_ops_per_second == pytest.approx(VECTORS_PER_BUNDLE * requests_20s, rel=0.15)
    assert obs.recent_demand_ops_per_second > obs.demand_ops_per_second  # the long window still holds idle time
    assert time.time() - obs.sampled_at < 10

    # The scaler on it: the measured capacity and demand give a finite recommendation.
    d = decide(1, obs, ScalerConfig(max_replicas=1000), History(), time.time())
    assert d.metrics_available and d.per_replica_target == pytest.approx(0.7 * capacity)


def test_unknown_workload_has_no_series(stack):
    _, prom = stack
    obs = observe(prom.url, "no-such-workload")
    assert obs.unavailable_reason.startswith("no series") and obs.demand_ops_per_second is None


def test_stale_samples_are_unavailable(stack):
    _, prom = stack
    # Scrapes happen every second; a source that accepts nothing older than 1 ms sees them as stale.
    obs = observe(prom.url, max_age_seconds=0.001)
    assert obs.unavailable_reason.startswith("stale")


def test_query_error_is_a_reason_not_an_exception(stack):
    _, prom = stack

    async def bad():
        source = PrometheusMetricsSource(prom.url)
        try:
            await source.query("sum(rate(")
        finally:
            await source.close()

    with pytest.raises(MetricsUnavailable) as err:
        run(bad())
    assert "failed" in str(err.value) and "sum(rate(" in str(err.value)


def test_silent_prometheus_times_out():
    with socket.socket() as listener:  # accepts connections and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        obs = observe(url, timeout_seconds=0.5)
    assert "did not answer within 0.5 s" in obs.unavailable_reason


def test_prometheus_down_holds_replicas(stack, tmp_path):
    worker, prom = stack
    url = prom.url
    prom.stop()
    try:
        obs = observe(url, timeout_seconds=2)
        assert "unreachable" in obs.unavailable_reason
        history = History(recommendations=((time.time() - 30, 7),))
        d = decide(7, obs, ScalerConfig(), history, time.time())
        assert (d.desired_replicas, d.reason, d.metrics_available) == (7, "MetricsUnavailable", False)
    finally:
        prom.start()  # leaves the stack as it was for any later test


def test_every_scrape_failing_is_unavailable(stack):
    """Last in this module: the worker process is killed, Prometheus keeps scraping it and records up == 0."""
    worker, prom = stack
    worker.stop()
    sel = label_selector(NS, NAME)
    wait_for(lambda: query(prom.url, f"up{sel} == 0"), 30, "Prometheus to record the failed scrapes")
    obs = observe(prom.url)
    assert obs.unavailable_reason == f"no replica of {NS}/{NAME} is up (every scrape fails)"
    assert obs.replicas_reporting == 0
