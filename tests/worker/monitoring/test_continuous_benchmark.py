"""ContinuousBenchmark: results in SQLite and a real PostgreSQL, baseline and degradation, capacity, the
scheduler yielding to traffic, the printed history, bad input.

No timing assertions: degradations are created by a callable that sleeps 50x longer after a few runs.
PostgreSQL: HDC_TEST_POSTGRES_URL when set, else a throwaway cluster started from Debian's postgresql
package (initdb + pg_ctl, as the postgres user when the tests run as root).
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time

import pytest
import structlog
from postgres_support import PostgresError, PostgresServer
from prometheus_client import CollectorRegistry
from rich.console import Console

from hd_compute.monitoring.benchmark import ContinuousBenchmark, parse_interval, print_history
from hd_compute.monitoring.metrics import MetricsCollector


class SlowAfter:
    """A callable that sleeps `fast` seconds for its first `calls` calls and `slow` seconds afterwards."""

    def __init__(self, calls: int, fast: float = 0.002, slow: float = 0.1):
        self.calls, self.fast, self.slow, self.count = calls, fast, slow, 0
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.count += 1
            count = self.count
        time.sleep(self.fast if count <= self.calls else self.slow)


def sample(metrics: MetricsCollector, name: str, labels: dict | None = None) -> float | None:
    return metrics.registry.get_sample_value(name, labels or {})


def make_bench(url: str, **kwargs) -> tuple[ContinuousBenchmark, MetricsCollector]:
    metrics = MetricsCollector(CollectorRegistry())
    kwargs = {"repeats": 1, "warmup": 0, "device": "cpu", **kwargs}
    return ContinuousBenchmark(metrics, database_url=url, **kwargs), metrics


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'state' / 'benchmarks.db'}"


# --- a real PostgreSQL server -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres_url():
    external = os.environ.get("HDC_TEST_POSTGRES_URL")
    if external:
        yield external
        return
    try:
        with PostgresServer.started() as server:
            yield server.url(driver="")  # no driver: the benchmark store picks psycopg 3
    except PostgresError as exc:
        pytest.fail(f"{exc} (or set HDC_TEST_POSTGRES_URL=postgresql+psycopg://user@host:port/db)", pytrace=False)


# --- storage ------------------------------------------------------------------------------------------------


def check_round_trip(url: str) -> None:
    bench, _ = make_bench(url)
    bench.schedule_test("echo", interval=60, fn=lambda: None, ops_per_run=7)
    bench.schedule_test("sleepy", interval="1m", fn=lambda: time.sleep(0.001))
    written = [bench.run_once("echo"), bench.run_once("sleepy"), bench.run_once("echo")]

    reader, _ = make_bench(url)  # a second instance (a restarted worker) reads what the first one stored
    echo = reader.history("echo")
    assert [r.started_at for r in echo] == [written[0].started_at, written[2].started_at]
    assert [r.duration_seconds for r in echo] == [written[0].duration_seconds, written[2].duration_seconds]
    assert all(r.ops_per_run == 7 and r.vsa == "MAP" and r.device == "cpu" and r.started_at.tzinfo for r in echo)
    assert [r.test for r in reader.history()] == ["echo", "sleepy", "echo"]
    assert [r.test for r in reader.history(limit=1)] == ["echo"]
    assert reader.history("sleepy")[0].duration_seconds >= 0.001


def test_results_stored_and_read_back_sqlite(sqlite_url, tmp_path):
    check_round_trip(sqlite_url)
    assert (tmp_path / "state" / "benchmarks.db").is_file()


def test_default_database_is_sqlite_in_the_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HDC_STATE_DIR", str(tmp_path / "hdc-state"))
    bench = ContinuousBenchmark(MetricsCollector(CollectorRegistry()), device="cpu", repeats=1, warmup=0)
    bench.schedule_test("noop", interval=1, fn=lambda: None)
    bench.run_once("noop")
    assert bench.database_url == f"sqlite:///{tmp_path / 'hdc-state' / 'benchmarks.db'}"
    assert (tmp_path / "hdc-state" / "benchmarks.db").is_file()


def test_results_stored_and_read_back_postgresql(postgres_url, sqlite_url):
    bench, _ = make_bench(sqlite_url)
    bench.store_results_to_database(connection_string=postgres_url)
    assert bench.database_url.startswith("postgresql+psycopg://")
    check_round_trip(postgres_url)
    # and straight from the server, not through SQLAlchemy
    import psycopg

    with psycopg.connect(postgres_url.replace("+psycopg", "")) as conn:
        tests = [row[0] for row in conn.execute("SELECT test FROM hdc_benchmark_runs ORDER BY id")]
    assert tests[-3:] == ["echo", "sleepy", "echo"]
    out = io.StringIO()
    print_history(postgres_url, "sleepy", console=Console(file=out, width=200))
    assert "sleepy" in out.getvalue() and "trend" in out.getvalue()


# --- baseline, degradation, capacity --------------------------------------------------------------------------


def test_degradation_against_stored_baseline_is_exported_and_logged(sqlite_url):
    slow = SlowAfter(calls=6)  # three runs of one timed call and one call for the peak memory
    bench, metrics = make_bench(sqlite_url, baseline_runs=3)
    bench.schedule_test("slowing", interval=1, alert_threshold_degradation=0.5, fn=slow)
    first = [bench.run_once("slowing") for _ in range(3)]
    assert first[0].degradation_ratio == 0.0  # the first run is its own baseline
    baseline = sorted(r.duration_seconds for r in first)[1]

    # A restarted worker finds the baseline in the database; its runs are 50x slower now.
    restarted, metrics = make_bench(sqlite_url, baseline_runs=3)
    restarted.schedule_test("slowing", interval=1, alert_threshold_degradation=0.5, fn=slow)
    with structlog.testing.capture_logs() as logs:
        result = restarted.run_once("slowing")
    assert result.baseline_seconds == pytest.approx(baseline)
    assert result.degradation_ratio == pytest.approx((result.duration_seconds - baseline) / baseline)
    assert result.degradation_ratio > 0.5 and result.degraded
    slowing = {"test": "slowing"}
    assert sample(metrics, "hdc_benchmark_degradation_ratio", slowing) == pytest.approx(result.degradation_ratio)
    assert sample(metrics, "hdc_benchmark_duration_seconds", slowing) == pytest.approx(result.duration_seconds)
    events = {entry["event"]: entry for entry in logs}
    assert events["performance_measurement"]["degradation_ratio"] == pytest.approx(result.degradation_ratio, abs=1e-4)
    assert events["performance_degradation_detected"]["operation"] == "slowing"
    body, _ = metrics.exposition()
    assert b'hdc_benchmark_degradation_ratio{test="slowing"}' in body

    assert restarted.run_once("slowing").degraded  # two of the last three are slow: the trend says so
    out = io.StringIO()
    printed = print_history(sqlite_url, console=Console(file=out, width=200))
    text = out.getvalue()
    assert len(printed) == 5
    for r in printed:
        assert f"{r.duration_seconds * 1e3:.3f}" in text
    assert "trend" in text and "DEGRADED" in text


def test_capacity_is_the_lowest_throughput_of_the_tests(sqlite_url):
    bench, metrics = make_bench(sqlite_url)
    bench.schedule_test("many", interval=1, fn=lambda: time.sleep(0.001), ops_per_run=1000)
    bench.schedule_test("few", interval=1, fn=lambda: time.sleep(0.001), ops_per_run=1)
    many = bench.run_once("many")
    assert sample(metrics, "hdc_capacity_ops_per_second") == pytest.approx(1000 / many.duration_seconds)
    few = bench.run_once("few")
    assert few.ops_per_second == pytest.approx(1 / few.duration_seconds)
    assert sample(metrics, "hdc_capacity_ops_per_second") == pytest.approx(min(few.ops_per_second, many.ops_per_second))


@pytest.mark.parametrize("vsa", ["MAP", "BSC"])
def test_standard_tests_run_on_the_configured_model(sqlite_url, vsa):
    bench, metrics = make_bench(sqlite_url, vsa=vsa, scale=0.01)
    for name, ops in [("bundle_10k_vectors", 100), ("bind_32k_dimension", 10), ("similarity_batch_1000", 10)]:
        bench.schedule_test(name, interval="1h")
        result = bench.run_once(name)
        assert (result.vsa, result.ops_per_run, result.degradation_ratio) == (vsa, ops, 0.0)
        assert sample(metrics, "hdc_benchmark_duration_seconds", {"test": name}) == result.duration_seconds
    assert sample(metrics, "hdc_capacity_ops_per_second") > 0


# --- the background scheduler ---------------------------------------------------------------------------------


async def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_scheduler_defers_while_busy_and_runs_when_idle(sqlite_url):
    busy = threading.Event()
    busy.set()
    calls = []
    bench, metrics = make_bench(sqlite_url, is_busy=busy.is_set)
    bench.schedule_test("background", interval=0.05, fn=lambda: calls.append(1))

    async def scenario():
        await bench.start()
        await asyncio.sleep(0.3)
        assert calls == [] and bench.history("background") == []  # busy: nothing ran
        assert bench.deferrals["background"] > 0
        busy.clear()
        await wait_for(lambda: len(bench.history("background")) >= 2)
        await bench.stop()
        ran = len(calls)
        await asyncio.sleep(0.2)
        assert len(calls) == ran  # stopped

    asyncio.run(scenario())
    assert len(bench.history("background")) >= 2
    assert sample(metrics, "hdc_benchmark_duration_seconds", {"test": "background"}) is not None


def test_run_in_progress_is_abandoned_when_traffic_arrives(sqlite_url):
    busy = threading.Event()
    calls = []

    def fn():  # traffic arrives during the first timed call
        calls.append(1)
        if len(calls) == 1:
            busy.set()

    bench, _ = make_bench(sqlite_url, is_busy=busy.is_set, repeats=3)
    bench.schedule_test("yielding", interval=0.05, fn=fn)

    async def scenario():
        await bench.start()
        await wait_for(lambda: bench.deferrals["yielding"] >= 2)
        assert calls == [1] and bench.history("yielding") == []  # abandoned, not stored
        busy.clear()
        await wait_for(lambda: len(bench.history("yielding")) >= 1)
        await bench.stop()

    asyncio.run(scenario())
    assert len(calls) >= 5  # the abandoned call, then at least one full run: 3 timed calls and 1 for the memory


def test_peak_memory_of_the_operation_is_exported_and_logged(sqlite_url):
    """hdc_benchmark_peak_memory_bytes{test} is what one call needs at its peak beyond what was in use before it:
    a call that builds and drops a 64 MiB tensor shows about 64 MiB, however large the process is."""
    import torch

    size = 64 << 20
    bench, metrics = make_bench(sqlite_url)
    bench.schedule_test("allocating", interval=60, fn=lambda: torch.ones(size // 4, dtype=torch.float32).sum())
    bench.schedule_test("idle", interval=60, fn=lambda: None)
    with structlog.testing.capture_logs() as logs:
        allocating = bench.run_once("allocating")
        idle = bench.run_once("idle")
    assert 0.9 * size < allocating.peak_memory_bytes < 2 * size  # page-level accounting, other pages move too
    assert idle.peak_memory_bytes < size // 8  # nothing of the process's own hundreds of MB
    assert sample(metrics, "hdc_benchmark_peak_memory_bytes", {"test": "allocating"}) == allocating.peak_memory_bytes
    assert sample(metrics, "hdc_benchmark_peak_memory_bytes", {"test": "idle"}) == idle.peak_memory_bytes
    (line, _) = [entry for entry in logs if entry["event"] == "performance_measurement"]
    assert line["memory_usage_mb"] == pytest.approx(allocating.peak_memory_bytes / 2**20, abs=1e-3)


def test_a_run_is_abandoned_when_traffic_arrives_during_its_memory_call(sqlite_url):
    busy = threading.Event()
    calls = []

    def fn():  # the second call of a run (repeats=1) is the one measured for memory
        calls.append(1)
        if len(calls) == 2:
            busy.set()

    bench, metrics = make_bench(sqlite_url, is_busy=busy.is_set)
    bench.schedule_test("interrupted", interval=60, fn=fn)

    async def scenario():
        await bench.start()
        await wait_for(lambda: bench.deferrals["interrupted"] >= 1)
        await bench.stop()

    asyncio.run(scenario())
    assert calls == [1, 1] and bench.history("interrupted") == []
    assert sample(metrics, "hdc_benchmark_peak_memory_bytes", {"test": "interrupted"}) is None


# --- bad input and the empty history ---------------------------------------------------------------------------


def test_bad_input_names_the_argument(sqlite_url):
    bench, _ = make_bench(sqlite_url)
    for interval in (0, -1, float("nan"), "soon", None, True):
        with pytest.raises(ValueError, match="interval"):
            bench.schedule_test("x", interval=interval, fn=lambda: None)
    with pytest.raises(ValueError, match="name 'bundle_performance' is not a standard test"):
        bench.schedule_test("bundle_performance", interval="1h")
    with pytest.raises(ValueError, match="name"):
        bench.schedule_test("", interval=1, fn=lambda: None)
    with pytest.raises(ValueError, match="alert_threshold_degradation"):
        bench.schedule_test("x", interval=1, alert_threshold_degradation=-0.1, fn=lambda: None)
    with pytest.raises(ValueError, match="fn"):
        bench.schedule_test("x", interval=1, fn="not callable")
    with pytest.raises(ValueError, match="name 'nope' is not a scheduled test"):
        bench.run_once("nope")
    for url in ("not a url", "mysql://u@h/db", "postgresql+psycopg2://u@h/db", "postgresql://u@h", ""):
        with pytest.raises(ValueError, match="connection_string"):
            bench.store_results_to_database(url)
        with pytest.raises(ValueError, match="database_url"):
            ContinuousBenchmark(MetricsCollector(CollectorRegistry()), database_url=url)
    assert parse_interval("1h") == 3600 and parse_interval("30s") == 30 and parse_interval(0.05) == 0.05
    # the seed document's spelling still works
    bench.schedule_test(test_name="bind_32k_dimension", interval="1h", alert_threshold_degradation=0.1)
    assert "bind_32k_dimension" in bench.tests


def test_print_history_without_runs(tmp_path):
    out = io.StringIO()
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert print_history(missing, console=Console(file=out, width=200)) == []
    assert "no benchmark runs" in out.getvalue()
    assert not (tmp_path / "none.db").exists()
