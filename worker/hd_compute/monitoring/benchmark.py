"""Continuous benchmark: the worker measures itself in the background and keeps the history.

    bench = ContinuousBenchmark(metrics, is_busy=batcher.is_busy)
    bench.schedule_test("bind_32k_dimension", interval="1h", alert_threshold_degradation=0.1)
    bench.store_results_to_database("postgresql+psycopg://hdc@db/hdc")   # default: SQLite in the state dir
    await bench.start() ... await bench.stop()

Each run times one test (a standard seed case run through the functional API on this worker's VSA model and
device, or any callable), stores the result through SQLAlchemy, compares it with the test's baseline (the
median of its first `baseline_runs` stored runs on the same machine, model and dimension) and exports

    hdc_benchmark_duration_seconds{test}       median seconds of one call
    hdc_benchmark_degradation_ratio{test}      (current - baseline) / baseline; 0.25 = 25 % slower
    hdc_benchmark_peak_memory_bytes{test}      memory one call needs at its peak beyond what was in use before
    hdc_capacity_ops_per_second                hypervector operations per second this replica can do

The peak memory is measured on one more, untimed call after the timed ones (timing.peak_memory_bytes: torch's
allocator statistics on CUDA, the process's reset resident-set high-water mark on a CPU), so the memory alert
of a baseline judges the operation, not the whole worker process.

The capacity is the lowest throughput among the latest runs of the scheduled tests, in hypervectors per
second (the unit of hdc_hypervector_operations_total), so that an autoscaler divides demand by it.

Benchmarks yield to real traffic: a run is deferred while `is_busy()` is true and abandoned (not stored)
when traffic arrives between two timed calls. Measurements run in a thread (asyncio.to_thread), one at a time.
The stored runs and their reading live in benchmark_store.py; `print_history(url)` (behind `hdc-worker bench`,
importable from here too) prints the stored history and its trend.

Over 400 lines because the benchmark's schedule, its tests and their measurement are one piece that reads top to
bottom; the stored runs and their reading are in benchmark_store.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import re
import socket
import statistics
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable

import torch
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from .benchmark_store import (
    BenchmarkResult,
    BenchmarkRun,
    default_database_url,
    make_engine,
    masked_url,
    print_history,
    read_history,
)
from .logging import PERFORMANCE_MEASUREMENT, get_logger
from .timing import peak_memory_bytes, time_call

if TYPE_CHECKING:
    from hd_compute.monitoring.metrics import MetricsCollector

__all__ = [
    "ContinuousBenchmark",
    "BenchmarkPreempted",
    "BenchmarkResult",
    "STANDARD_TESTS",
    "parse_interval",
    "standard_test",
    "print_history",
    "default_database_url",
]


def _log():
    # Fetched per use so that logging configured (or captured) after import applies.
    return get_logger("hd_compute.monitoring.benchmark")


DEFAULT_BASELINE_RUNS = 5

# The seed's standard cases ("Performance Baselines"), as in hd_compute.bench.cases: name -> (count, dim).
# `scale` shrinks the counts (never the dimension) for a lighter background load.
STANDARD_TESTS = {
    "bundle_10k_vectors": (10_000, 10_000),  # multiset of 10,000 hypervectors
    "bind_32k_dimension": (1_000, 32_768),  # 1,000 pairs bound
    "similarity_batch_1000": (1_000, 10_000),  # 1,000 queries x 1,000 items
}


class BenchmarkPreempted(Exception):
    """A background run was abandoned because real traffic arrived (or the benchmark is stopping)."""


# ---------------------------------------------------------------------------------------------------------
# tests


@dataclass
class _Test:
    name: str
    interval: float
    alert_threshold: float
    prepare: Callable[[], Callable[[], object]]  # builds the inputs, returns the call to time
    ops_per_run: int


def parse_interval(value: object, argument: str = "interval") -> float:
    """Seconds > 0: a number, or a string such as '300', '30s', '5m', '1h', '1d' (the seed writes '1h')."""
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*", value)
        if match:
            factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2) or "s"]
            seconds = float(match.group(1)) * factor
    if seconds is None:
        raise ValueError(f"{argument} must be a number of seconds or a duration like '30s', '5m', '1h', got {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{argument} must be > 0 seconds, got {value!r}")
    return seconds


def standard_test(
    name: str, vsa: str, device: torch.device, *, scale: float = 1.0
) -> tuple[Callable[[], Callable[[], object]], int]:
    """A seed case through the functional API: (prepare, hypervector operations per call).

    prepare() generates the inputs (not timed) and returns the call to time; inputs are dropped after each
    run so that an idle worker does not hold hundreds of megabytes for its benchmark.
    """
    import hd_compute as hd

    count, dim = STANDARD_TESTS[name]
    count = max(1, round(count * scale))
    if name == "bundle_10k_vectors":

        def prepare():
            x = hd.random(count, dim, vsa, seed=0, device=device)
            return lambda: hd.multiset(x)
    elif name == "bind_32k_dimension":

        def prepare():
            a = hd.random(count, dim, vsa, seed=1, device=device)
            b = hd.random(count, dim, vsa, seed=2, device=device)
            return lambda: hd.bind(a, b)
    else:

        def prepare():
            queries = hd.random(count, dim, vsa, seed=3, device=device)
            items = hd.random(count, dim, vsa, seed=4, device=device)
            similarity = hd.hamming_similarity if vsa == "BSC" else hd.cosine_similarity
            return lambda: similarity(queries, items)

    return prepare, count


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    import platform

    return f"{platform.machine()} x{os.cpu_count()}"


# ---------------------------------------------------------------------------------------------------------
# the benchmark


class ContinuousBenchmark:
    """Background performance tests for one worker; see the module docstring.

    metrics: the worker's MetricsCollector (a new one when None).
    database_url: where results go (SQLite under HDC_STATE_DIR by default); store_results_to_database switches.
    is_busy: True while real traffic is being served; runs wait for it to turn False.
    vsa, dimension, device: the worker's configuration; the standard tests use its VSA model and device
        (dimension is recorded and keys the baseline; the standard tests keep the seed's dimensions).
    scale: fraction of the seed cases' vector counts the standard tests use (1.0 = the seed's sizes).
    baseline_runs: the baseline is the median of the first this-many stored runs.
    repeats, warmup: timed calls per run (the median is the result) and untimed calls before them.
    """

    def __init__(
        self,
        metrics: "MetricsCollector | None" = None,
        *,
        database_url: str | None = None,
        is_busy: Callable[[], bool] = lambda: False,
        vsa: str = "MAP",
        dimension: int = 10_000,
        device: str | torch.device = "auto",
        scale: float = 1.0,
        baseline_runs: int = DEFAULT_BASELINE_RUNS,
        repeats: int = 3,
        warmup: int = 1,
        busy_poll_seconds: float = 1.0,
    ) -> None:
        from hd_compute.device import resolve_device
        from hd_compute.errors import check_non_negative_int, check_positive_int
        from hd_compute.vsa import get_model

        if metrics is None:
            from hd_compute.monitoring.metrics import MetricsCollector

            metrics = MetricsCollector()
        if not callable(is_busy):
            raise ValueError(f"is_busy must be a callable returning bool, got {type(is_busy).__name__}")
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 0 < scale <= 1:
            raise ValueError(f"scale must be a number in (0, 1], got {scale!r}")
        self.metrics = metrics
        self.is_busy = is_busy
        self.vsa = get_model(vsa).name
        self.dimension = check_positive_int(dimension, "dimension")
        self.device = resolve_device(device)
        self.scale = float(scale)
        self.baseline_runs = check_positive_int(baseline_runs, "baseline_runs")
        self.repeats = check_positive_int(repeats, "repeats")
        self.warmup = check_non_negative_int(warmup, "warmup")
        self.busy_poll_seconds = parse_interval(busy_poll_seconds, "busy_poll_seconds")
        self.machine = _machine(self.device)
        self.replica = os.environ.get("HOSTNAME") or socket.gethostname()
        self.tests: dict[str, _Test] = {}
        self.deferrals: dict[str, int] = {}  # runs put off (or abandoned) because the worker was busy
        self._baselines: dict[str, float] = {}  # settled baselines (baseline_runs stored runs exist)
        self._capacity: dict[str, float] = {}  # test -> latest hypervector ops/s
        self._run_lock = threading.Lock()  # one measurement at a time, also across direct run_once calls
        self._stopping = threading.Event()
        self._stop_event: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self.database_url = ""
        self._engine: Engine | None = None
        self._connect(database_url if database_url is not None else default_database_url(), "database_url")

    # -- configuration ------------------------------------------------------------------------------------

    def _connect(self, value: str, argument: str) -> None:
        engine = make_engine(value, argument, create=True)
        old, self._engine = self._engine, engine
        self.database_url = masked_url(engine.url)
        self._baselines.clear()
        if old is not None:
            old.dispose()

    def store_results_to_database(self, connection_string: str) -> None:
        """Stores results (from now on) in this database: sqlite:///path or postgresql+psycopg://user@host/db.

        The table is created when missing; baselines are read from the runs already stored there.
        """
        self._connect(connection_string, "connection_string")
        _log().info("benchmark_database_configured", database_url=self.database_url)

    def schedule_test(
        self,
        name: str | None = None,
        interval: float | str | None = None,
        alert_threshold_degradation: float = 0.1,
        fn: Callable[[], object] | None = None,
        *,
        ops_per_run: int | None = None,
        test_name: str | None = None,
    ) -> None:
        """Runs test `name` every `interval` (seconds, or '30s'/'5m'/'1h') once start() is awaited.

        fn None: one of the standard tests (bundle_10k_vectors, bind_32k_dimension, similarity_batch_1000).
        fn given: it is called and timed as it is; ops_per_run says how many hypervector operations one call
        does (1 by default) for the capacity metric. A run slower than the baseline by more than
        alert_threshold_degradation (0.1 = 10 %) is logged as performance_degradation_detected.
        test_name is the seed document's spelling of name.
        """
        if test_name is not None:
            if name is not None and name != test_name:
                raise ValueError(f"name ({name!r}) and test_name ({test_name!r}) disagree; pass one of them")
            name = test_name
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", name):
            raise ValueError(f"name must be 1-128 letters, digits or _.:- characters, got {name!r}")
        if interval is None:
            raise ValueError("interval is required (seconds, or a duration like '5m')")
        seconds = parse_interval(interval, "interval")
        threshold = alert_threshold_degradation
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float))
            or not math.isfinite(threshold)
            or threshold <= 0
        ):
            raise ValueError(f"alert_threshold_degradation must be a number > 0 (0.1 = 10 % slower), got {threshold!r}")
        if fn is None:
            if name not in STANDARD_TESTS:
                raise ValueError(
                    f"name {name!r} is not a standard test ({', '.join(STANDARD_TESTS)}); "
                    f"pass fn to benchmark your own callable"
                )
            if ops_per_run is not None:
                raise ValueError("ops_per_run is fixed for the standard tests; pass it only with fn")
            prepare, ops = standard_test(name, self.vsa, self.device, scale=self.scale)
        else:
            if not callable(fn):
                raise ValueError(f"fn must be callable, got {type(fn).__name__}")
            ops = 1 if ops_per_run is None else ops_per_run
            if isinstance(ops, bool) or not isinstance(ops, int) or ops <= 0:
                raise ValueError(f"ops_per_run must be a positive int, got {ops_per_run!r}")
            prepare = lambda: fn  # noqa: E731
        if self._tasks:
            raise RuntimeError("schedule_test must be called before start()")
        self.tests[name] = _Test(name, seconds, float(threshold), prepare, ops)
        self.deferrals.setdefault(name, 0)

    # -- measuring ------------------------------------------------------------------------------------------

    def run_once(self, name: str) -> BenchmarkResult:
        """Runs scheduled test `name` now (regardless of traffic), stores and exports the result."""
        if name not in self.tests:
            raise ValueError(f"name {name!r} is not a scheduled test; scheduled: {', '.join(self.tests) or 'none'}")
        return self._run(self.tests[name], preemptible=False)

    def _check_preempted(self, preemptible: bool) -> None:
        if self._stopping.is_set() or (preemptible and self.is_busy()):
            raise BenchmarkPreempted

    def _run(self, test: _Test, *, preemptible: bool) -> BenchmarkResult:
        with self._run_lock:
            self._check_preempted(preemptible)
            started_at = datetime.now(timezone.utc)
            call = test.prepare()
            try:
                if self.warmup:
                    time_call(call, self.device, repeats=1, warmup=self.warmup - 1)
                samples = []
                for _ in range(self.repeats):
                    self._check_preempted(preemptible)  # yield to traffic between timed calls
                    samples.append(time_call(call, self.device, repeats=1, warmup=0))
                # One more call, untimed, for its peak memory: measuring it changes the allocator's mode. The
                # mark is the process's, so a run that traffic interrupted is discarded.
                self._check_preempted(preemptible)
                peak = peak_memory_bytes(call, self.device)
                self._check_preempted(preemptible)
            finally:
                del call
            duration = statistics.median(samples)
            return self._record(test, started_at, duration, peak)

    def _baseline(self, session: Session, test: _Test, current: float) -> float:
        settled = self._baselines.get(test.name)
        if settled is not None:
            return settled
        first = session.scalars(
            select(BenchmarkRun.duration_seconds)
            .where(
                BenchmarkRun.test == test.name,
                BenchmarkRun.machine == self.machine,
                BenchmarkRun.vsa == self.vsa,
                BenchmarkRun.dimension == self.dimension,
                BenchmarkRun.ops_per_run == test.ops_per_run,
            )
            .order_by(BenchmarkRun.started_at, BenchmarkRun.id)
            .limit(self.baseline_runs)
        ).all()
        if len(first) >= self.baseline_runs:
            self._baselines[test.name] = statistics.median(first)
            return self._baselines[test.name]
        return statistics.median([*first, current])  # still collecting: this run counts towards the baseline

    def _record(self, test: _Test, started_at: datetime, duration: float, peak: int | None) -> BenchmarkResult:
        assert self._engine is not None
        with Session(self._engine) as session, session.begin():
            baseline = self._baseline(session, test, duration)
            ratio = (duration - baseline) / baseline if baseline > 0 else 0.0
            ops_per_second = test.ops_per_run / duration if duration > 0 else math.inf
            row = BenchmarkRun(
                test=test.name,
                started_at=started_at,
                duration_seconds=duration,
                ops_per_run=test.ops_per_run,
                ops_per_second=ops_per_second,
                baseline_seconds=baseline,
                degradation_ratio=ratio,
                alert_threshold=test.alert_threshold,
                vsa=self.vsa,
                dimension=self.dimension,
                device=str(self.device),
                machine=self.machine,
                replica=self.replica,
            )
            session.add(row)
            session.flush()
            result = dataclasses.replace(BenchmarkResult.from_row(row), peak_memory_bytes=peak)
        self.metrics.record_benchmark(test.name, duration, ratio, peak_memory_bytes=peak)
        if math.isfinite(result.ops_per_second):
            self._capacity[test.name] = result.ops_per_second
            self.metrics.set_capacity(min(self._capacity.values()))
        _log().info(
            PERFORMANCE_MEASUREMENT,
            operation=test.name,
            duration_ms=round(duration * 1e3, 3),
            baseline_ms=round(baseline * 1e3, 3),
            degradation_ratio=round(ratio, 4),
            throughput_ops_per_sec=round(result.ops_per_second, 1),
            memory_usage_mb=None if peak is None else round(peak / 2**20, 3),
            vsa=self.vsa,
            device=str(self.device),
        )
        if result.degraded:
            _log().warning(
                "performance_degradation_detected",
                operation=test.name,
                degradation_ratio=round(ratio, 4),
                alert_threshold_degradation=test.alert_threshold,
                duration_ms=round(duration * 1e3, 3),
                baseline_ms=round(baseline * 1e3, 3),
            )
        return result

    def history(self, name: str | None = None, limit: int = 100) -> list[BenchmarkResult]:
        """The latest `limit` stored runs (of test `name`, or of all tests), oldest first."""
        assert self._engine is not None
        return read_history(self._engine, name, limit)

    # -- background scheduling -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts one background task per scheduled test; the first run is due at once (when idle)."""
        if self._tasks:
            raise RuntimeError("the continuous benchmark is already running")
        self._stopping.clear()
        self._stop_event = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._loop(test), name=f"hdc-benchmark-{test.name}") for test in self.tests.values()
        ]
        _log().info("benchmark_started", tests=list(self.tests), database_url=self.database_url)

    async def stop(self, timeout: float = 30.0) -> None:
        """Stops the background runs; a run in progress is abandoned at its next timed call."""
        if not self._tasks:
            return
        self._stopping.set()
        assert self._stop_event is not None
        self._stop_event.set()
        done, pending = await asyncio.wait(self._tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        self._tasks = []
        self._stopping.clear()

    async def _sleep(self, seconds: float) -> bool:
        """Sleeps; True when stop() was called meanwhile."""
        assert self._stop_event is not None
        try:
            await asyncio.wait_for(self._stop_event.wait(), timeout=seconds)
            return True
        except asyncio.TimeoutError:
            return False

    async def _loop(self, test: _Test) -> None:
        poll = min(self.busy_poll_seconds, test.interval)
        while not self._stopping.is_set():
            try:
                busy = bool(self.is_busy())
            except Exception as exc:  # a broken probe counts as busy: never benchmark over traffic
                _log().error("benchmark_busy_probe_failed", test=test.name, error=f"{type(exc).__name__}: {exc}")
                busy = True
            if busy:
                self.deferrals[test.name] += 1
                if await self._sleep(poll):
                    return
                continue
            try:
                await asyncio.to_thread(self._run, test, preemptible=True)
            except BenchmarkPreempted:
                if self._stopping.is_set():
                    return
                self.deferrals[test.name] += 1
                _log().debug("benchmark_deferred", test=test.name, reason="traffic")
                continue
            except Exception as exc:  # a failing benchmark must never take the worker down
                _log().error("benchmark_failed", test=test.name, error=f"{type(exc).__name__}: {exc}")
            if await self._sleep(test.interval):
                return
