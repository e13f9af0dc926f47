"""`hdc-worker`: serve the HDC worker API, or print the continuous benchmark's history.

hdc-worker serve --port 8080 --vsa MAP --dimension 10000      # flags override the HDC_* variables
hdc-worker bench --test bind_32k_dimension                     # history + trend from the benchmark store
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from .config import SettingsError, WorkerSettings

app = typer.Typer(
    name="hdc-worker",
    add_completion=False,
    no_args_is_help=True,
    help="The HDC worker: an HTTP API over hd_compute (see docs/worker-api.md).",
)


@app.command()
def serve(
    dimension: Optional[int] = typer.Option(None, help="Default dimension [HDC_DIMENSION, 10000]"),
    vsa: Optional[str] = typer.Option(None, help="Default VSA model: MAP, BSC, HRR, FHRR [HDC_VSA, MAP]"),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda, cuda:N [HDC_DEVICE, auto]"),
    host: Optional[str] = typer.Option(None, help="Listen address [HDC_HOST, 0.0.0.0]"),
    port: Optional[int] = typer.Option(None, help="Listen port (0: any free port) [HDC_PORT, 8080]"),
    max_body_bytes: Optional[int] = typer.Option(None, help="Request body limit [HDC_MAX_BODY_BYTES, 67108864]"),
    max_json_body_bytes: Optional[int] = typer.Option(
        None, help="JSON body limit (parsed on the event loop) [HDC_MAX_JSON_BODY_BYTES, 4194304]"
    ),
    max_inflight_body_bytes: Optional[int] = typer.Option(
        None, help="Bodies held by all requests together [HDC_MAX_INFLIGHT_BODY_BYTES, 268435456]"
    ),
    max_response_bytes: Optional[int] = typer.Option(
        None, help="Encoded response limit [HDC_MAX_RESPONSE_BYTES, 67108864]"
    ),
    max_allocation_bytes: Optional[int] = typer.Option(
        None, help="What one request may make the worker allocate [HDC_MAX_ALLOCATION_BYTES, 1073741824]"
    ),
    header_timeout_seconds: Optional[float] = typer.Option(
        None, help="Request head deadline [HDC_HEADER_TIMEOUT_SECONDS, 15]"
    ),
    body_timeout_seconds: Optional[float] = typer.Option(
        None, help="Request body deadline after its head [HDC_BODY_TIMEOUT_SECONDS, 30]"
    ),
    state_dir: Optional[str] = typer.Option(
        None, help="SQLite state store when no database URL is given [HDC_STATE_DIR, ./hdc-state]"
    ),
    state_backend: Optional[str] = typer.Option(
        None,
        help="none, local (SQLite in the state dir) or postgres [HDC_STATE_BACKEND, postgres with a URL, else local]",
    ),
    database_url: Optional[str] = typer.Option(
        None,
        help="PostgreSQL state store of all replicas (the variable keeps a password off ps) [HDC_STATE_DATABASE_URL]",
    ),
    read_wait_seconds: Optional[float] = typer.Option(
        None, help="Longest wait for an X-HDC-Min-State-Version [HDC_READ_WAIT_SECONDS, 2]"
    ),
    idempotency_ttl_seconds: Optional[float] = typer.Option(
        None, help="How long an Idempotency-Key's answer is kept [HDC_IDEMPOTENCY_TTL_SECONDS, 86400]"
    ),
    batch_max_size: Optional[int] = typer.Option(None, help="Micro-batch rows [HDC_BATCH_MAX_SIZE, 256]"),
    batch_max_wait_ms: Optional[float] = typer.Option(
        None, help="Micro-batch wait while the kernel is idle [HDC_BATCH_MAX_WAIT_MS, 0]"
    ),
    health_cuda_memory_mb: Optional[float] = typer.Option(None, help="[HDC_HEALTH_CUDA_MEMORY_MB, 1000]"),
    health_memory_percent: Optional[float] = typer.Option(None, help="[HDC_HEALTH_MEMORY_PERCENT, 90]"),
    health_disk_percent: Optional[float] = typer.Option(None, help="[HDC_HEALTH_DISK_PERCENT, 85]"),
    log_level: Optional[str] = typer.Option(None, help="[HDC_LOG_LEVEL, INFO]"),
    log_format: Optional[str] = typer.Option(None, help="json or console [HDC_LOG_FORMAT, json]"),
    log_file: Optional[str] = typer.Option(None, help="Also log to this rotating file [HDC_LOG_FILE]"),
    observability: Optional[bool] = typer.Option(
        None,
        "--observability/--no-observability",
        help="Per-request metrics, spans and log lines [HDC_OBSERVABILITY, true]",
    ),
    benchmark_enabled: Optional[bool] = typer.Option(
        None, "--benchmark/--no-benchmark", help="Continuous benchmark [HDC_BENCHMARK_ENABLED, true]"
    ),
    benchmark_interval_seconds: Optional[float] = typer.Option(None, help="[HDC_BENCHMARK_INTERVAL_SECONDS, 300]"),
    benchmark_degradation_threshold: Optional[float] = typer.Option(
        None, help="[HDC_BENCHMARK_DEGRADATION_THRESHOLD, 0.1]"
    ),
    benchmark_database_url: Optional[str] = typer.Option(
        None, help="[HDC_BENCHMARK_DATABASE_URL, sqlite in the state dir]"
    ),
    shutdown_grace_seconds: Optional[float] = typer.Option(None, help="[HDC_SHUTDOWN_GRACE_SECONDS, 25]"),
) -> None:
    """Serve the worker API until SIGTERM."""
    overrides = {k: v for k, v in locals().items()}
    prefer_passive_openmp_waits()  # first: checking HDC_STATE_DATABASE_URL loads torch
    try:
        settings = WorkerSettings.from_env(overrides)
    except SettingsError as exc:
        typer.echo(f"hdc-worker: invalid configuration: {exc}", err=True)
        raise typer.Exit(2) from None
    from .server import serve as run_server

    raise typer.Exit(run_server(settings))


def prefer_passive_openmp_waits(environ=os.environ) -> bool:
    """OMP_WAIT_POLICY=PASSIVE unless the environment sets it; True when it was set here.

    Between two parallel regions, OpenMP threads spin by default. In a worker the event loop, the kernel thread
    and torch's OpenMP threads share the cores, and spinning threads take them from the event loop: on the
    2-core machine of docs/benchmarks.md, the worker used twice the CPU per request with spinning waits. It
    must happen before torch (and with it libgomp, which reads the variable once) is loaded.
    """
    if "OMP_WAIT_POLICY" in environ or "torch" in sys.modules:
        return False
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


@app.command()
def bench(
    database_url: Optional[str] = typer.Option(
        None, help="Benchmark store [HDC_BENCHMARK_DATABASE_URL, sqlite in HDC_STATE_DIR]"
    ),
    test: Optional[str] = typer.Option(None, help="Only this test"),
) -> None:
    """Print the continuous benchmark's stored history and trend."""
    from hd_compute.monitoring.benchmark import print_history

    try:
        settings = WorkerSettings.from_env({"benchmark_database_url": database_url})
    except SettingsError as exc:
        typer.echo(f"hdc-worker: invalid configuration: {exc}", err=True)
        raise typer.Exit(2) from None
    print_history(settings.benchmark_url, test)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
