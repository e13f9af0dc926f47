"""Where the continuous benchmark keeps its runs, and reading them back (`hdc-worker bench`).

    engine = make_engine("sqlite:///state/benchmarks.db", "database_url", create=True)
    runs = read_history(engine, "bind_32k_dimension", limit=20)
    print_history("postgresql+psycopg://hdc@db/hdc")     # tables and trends, what `hdc-worker bench` prints

SQLAlchemy 2 ORM, one table `hdc_benchmark_runs`, SQLite or PostgreSQL through psycopg 3. Kept apart from the
benchmark itself (monitoring/benchmark.py), which measures and exports.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import DateTime, Float, Integer, String, create_engine, inspect, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool

__all__ = [
    "BenchmarkRun",
    "BenchmarkResult",
    "DEFAULT_STATE_DIR",
    "default_database_url",
    "masked_url",
    "make_engine",
    "read_history",
    "sparkline",
    "trend",
    "print_history",
]

DEFAULT_STATE_DIR = "./hdc-state"


# ---------------------------------------------------------------------------------------------------------
# storage (SQLAlchemy 2 ORM; SQLite or PostgreSQL)


class _Base(DeclarativeBase):
    pass


class BenchmarkRun(_Base):
    """One stored run. `machine`, `vsa` and `dimension` key the baseline: a run is compared only with runs
    of the same test on the same kind of hardware and model. `replica` (the host name) is for reading."""

    __tablename__ = "hdc_benchmark_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    test: Mapped[str] = mapped_column(String(128), index=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    duration_seconds: Mapped[float] = mapped_column(Float)
    ops_per_run: Mapped[int] = mapped_column(Integer)
    ops_per_second: Mapped[float] = mapped_column(Float)
    baseline_seconds: Mapped[float] = mapped_column(Float)
    degradation_ratio: Mapped[float] = mapped_column(Float)
    alert_threshold: Mapped[float] = mapped_column(Float)
    vsa: Mapped[str] = mapped_column(String(16))
    dimension: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(32))
    machine: Mapped[str] = mapped_column(String(256))
    replica: Mapped[str] = mapped_column(String(256))


@dataclass(frozen=True)
class BenchmarkResult:
    test: str
    started_at: datetime
    duration_seconds: float
    ops_per_run: int
    ops_per_second: float
    baseline_seconds: float
    degradation_ratio: float
    alert_threshold: float
    vsa: str
    dimension: int
    device: str
    machine: str
    replica: str
    # bytes at the peak of one call beyond what was in use before it (monitoring.timing.peak_memory_bytes); only
    # the run that measured it knows it (the stored history has no such column), None where unmeasurable
    peak_memory_bytes: int | None = None

    @property
    def degraded(self) -> bool:
        return self.degradation_ratio > self.alert_threshold

    @classmethod
    def from_row(cls, row: BenchmarkRun) -> "BenchmarkResult":
        started = row.started_at if row.started_at.tzinfo else row.started_at.replace(tzinfo=timezone.utc)
        return cls(
            row.test,
            started,
            row.duration_seconds,
            row.ops_per_run,
            row.ops_per_second,
            row.baseline_seconds,
            row.degradation_ratio,
            row.alert_threshold,
            row.vsa,
            row.dimension,
            row.device,
            row.machine,
            row.replica,
        )


def default_database_url(state_dir: str | None = None) -> str:
    """sqlite:///<state dir>/benchmarks.db, the state dir being HDC_STATE_DIR (./hdc-state by default)."""
    state_dir = state_dir or os.environ.get("HDC_STATE_DIR") or DEFAULT_STATE_DIR
    return "sqlite:///" + os.path.join(os.path.abspath(state_dir), "benchmarks.db")


def masked_url(url) -> str:
    return url.render_as_string(hide_password=True)


def _parse_url(value: object, argument: str):
    """Validates a database URL: SQLite, or PostgreSQL through psycopg 3 (postgresql:// is taken to mean it)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"{argument} must be a database URL such as sqlite:///path/benchmarks.db or "
            f"postgresql+psycopg://user@host/db, got {value!r}"
        )
    try:
        url = make_url(value.strip())
    except ArgumentError:
        raise ValueError(
            f"{argument} is not a database URL: {value!r} (expected sqlite:///path/benchmarks.db "
            f"or postgresql+psycopg://user@host/db)"
        ) from None
    backend, _, driver = url.drivername.partition("+")
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        url = url.set(drivername="postgresql+psycopg")
        if not url.database:
            raise ValueError(f"{argument} names no database: {masked_url(url)} (append /<database name>)")
    elif backend == "sqlite" and driver in ("", "pysqlite"):
        pass
    else:
        raise ValueError(
            f"{argument} must use sqlite:// or postgresql+psycopg:// (psycopg 3), "
            f"got {url.drivername}:// in {masked_url(url)}"
        )
    return url


def make_engine(value: str, argument: str, *, create: bool) -> Engine:
    url = _parse_url(value, argument)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") and create:
        os.makedirs(os.path.dirname(os.path.abspath(url.database)), exist_ok=True)
    options: dict = {"pool_pre_ping": True}
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        # one in-memory database shared by the measuring threads (mostly for experiments)
        options = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
    try:
        engine = create_engine(url, **options)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise ValueError(f"{argument} cannot be used ({masked_url(url)}): {exc}") from None
    if create:
        _Base.metadata.create_all(engine)
    return engine


# ---------------------------------------------------------------------------------------------------------
# reading the history (hdc-worker bench)


def read_history(engine: Engine, name: str | None, limit: int) -> list[BenchmarkResult]:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ValueError(f"limit must be a positive int, got {limit!r}")
    query = select(BenchmarkRun).order_by(BenchmarkRun.started_at.desc(), BenchmarkRun.id.desc()).limit(limit)
    if name is not None:
        query = query.where(BenchmarkRun.test == name)
    with Session(engine) as session:
        rows = [BenchmarkResult.from_row(row) for row in session.scalars(query)]
    return rows[::-1]


_SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    if not values:
        return ""
    low, high = min(values), max(values)
    span = high - low
    return "".join(_SPARKS[0 if span == 0 else min(7, int((v - low) / span * 8))] for v in values)


def trend(results: list[BenchmarkResult], recent: int = 3) -> str:
    """One line: the recent runs against the baseline, and the direction of the whole history."""
    if not results:
        return "no runs"
    last = results[-recent:]
    ratio = statistics.median(r.degradation_ratio for r in last)
    threshold = results[-1].alert_threshold
    if ratio > threshold:
        verdict = "DEGRADED"
    elif ratio < -threshold:
        verdict = "improved"
    else:
        verdict = "stable"
    slope = ""
    if len(results) >= 3:
        durations = [r.duration_seconds for r in results]
        per_run = statistics.linear_regression(range(len(durations)), durations).slope
        slope = f", {per_run / results[-1].baseline_seconds * 100:+.2f} % of baseline per run over {len(results)} runs"
    return f"{verdict}: {ratio * 100:+.1f} % vs baseline (median of last {len(last)}){slope}"


def print_history(
    database_url: str, test: str | None = None, *, limit: int = 20, console=None
) -> list[BenchmarkResult]:
    """Prints each test's stored runs (the latest `limit`) and its trend; returns the runs printed."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    url = _parse_url(database_url, "database_url")
    if (
        url.get_backend_name() == "sqlite"
        and url.database not in (None, "", ":memory:")
        and not os.path.exists(url.database)
    ):
        console.print(f"no benchmark runs stored in {masked_url(url)} (the file does not exist)")
        return []
    engine = make_engine(database_url, "database_url", create=False)
    try:
        if not inspect(engine).has_table(BenchmarkRun.__tablename__):
            console.print(f"no benchmark runs stored in {masked_url(engine.url)}")
            return []
        if test is None:
            with Session(engine) as session:
                names = sorted(session.scalars(select(BenchmarkRun.test).distinct()))
        else:
            names = [test]
        printed: list[BenchmarkResult] = []
        for name in names:
            results = read_history(engine, name, limit)
            if not results:
                console.print(f"no runs of {name!r} stored in {masked_url(engine.url)}")
                continue
            last = results[-1]
            table = Table(title=f"{name}  ({last.vsa}, D={last.dimension}, {last.device}, {last.machine})")
            for column in ("started (UTC)", "replica", "duration ms", "baseline ms", "degradation", "ops/s"):
                table.add_column(column, justify="left" if column in ("started (UTC)", "replica") else "right")
            for r in results:
                flag = " !" if r.degraded else ""
                table.add_row(
                    r.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                    r.replica,
                    f"{r.duration_seconds * 1e3:.3f}",
                    f"{r.baseline_seconds * 1e3:.3f}",
                    f"{r.degradation_ratio * 100:+.1f} %{flag}",
                    f"{r.ops_per_second:,.0f}",
                )
            console.print(table)
            console.print(f"trend {sparkline([r.duration_seconds for r in results])}  {trend(results)}")
            printed.extend(results)
        return printed
    finally:
        engine.dispose()
