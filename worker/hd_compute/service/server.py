"""Running the worker: start-up, the continuous benchmark, signals, slow clients and the graceful shutdown.

Slow clients (slowloris): a connection whose request head is not complete HDC_HEADER_TIMEOUT_SECONDS after it
opened, or after its previous response, is closed. That is aiohttp's keep-alive timeout (AppRunner's
keepalive_timeout): its timer starts when a connection is made and again after each response, and closes the
connection when it fires while no request has been parsed; aiohttp has no separate header timeout, so the same
setting also closes idle keep-alive connections. A body that does not arrive within HDC_BODY_TIMEOUT_SECONDS is
the handler's 408 (payload.read_body).

SIGTERM (or SIGINT): /readyz turns 503, the listening socket closes (no new connections), the requests in
flight finish (up to 60 % of HDC_SHUTDOWN_GRACE_SECONDS, bodies still arriving included; then the rest are
cancelled), idle connections close, the micro-batcher drains, the
benchmark stops, every memory and classifier is snapshotted, and the process exits - all within
HDC_SHUTDOWN_GRACE_SECONDS; if the snapshot would overrun it, the process exits anyway with status 1 (the
previous snapshots, written after every mutating request, are intact).
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import time

from aiohttp import web

from hd_compute.monitoring.logging import configure_logging, flush_logs, get_logger
from hd_compute.monitoring.tracing import configure_tracing, shutdown_tracing
from hd_compute.runtime import set_allocator_mode

from .app import WORKER, Worker, create_app
from .config import WorkerSettings

REQUEST_SHARE_OF_GRACE = 0.6


def log():
    return get_logger("hd_compute.service.server")


def _attach_benchmark(app: web.Application, worker: Worker) -> None:
    """Starts the ContinuousBenchmark once the worker is ready; it yields to traffic via is_busy."""
    from hd_compute.monitoring.benchmark import ContinuousBenchmark

    s = worker.settings
    holder: dict[str, object] = {}

    def build() -> ContinuousBenchmark:
        kwargs = dict(database_url=s.benchmark_url, is_busy=worker.is_busy)
        try:  # the worker's model and device, where the benchmark accepts them
            bench = ContinuousBenchmark(
                worker.metrics, vsa=s.vsa, dimension=s.dimension, device=worker.device, **kwargs
            )
        except TypeError:
            bench = ContinuousBenchmark(worker.metrics, **kwargs)
        for test in ("bundle_10k_vectors", "bind_32k_dimension", "similarity_batch_1000"):
            bench.schedule_test(
                test, s.benchmark_interval_seconds, alert_threshold_degradation=s.benchmark_degradation_threshold
            )
        return bench

    async def start_when_ready() -> None:
        while not worker.ready:
            if worker.shutting_down or worker.startup_error:
                return
            await asyncio.sleep(0.2)
        try:
            bench = await asyncio.to_thread(build)
            holder["bench"] = bench
            await bench.start()
        except Exception as exc:  # noqa: BLE001 - the benchmark is an aid, never a reason to stop serving
            log().error("benchmark_start_failed", error=f"{type(exc).__name__}: {exc}")

    async def on_startup(app: web.Application) -> None:
        holder["task"] = asyncio.get_running_loop().create_task(start_when_ready())

    async def on_shutdown(app: web.Application) -> None:
        task = holder.get("task")
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        bench = holder.get("bench")
        if bench is not None:
            try:
                await asyncio.wait_for(bench.stop(), timeout=max(1.0, s.shutdown_grace_seconds / 4))
            except Exception as exc:  # noqa: BLE001
                log().warning("benchmark_stop_failed", error=f"{type(exc).__name__}: {exc}")

    app.on_startup.append(on_startup)
    app.on_shutdown.insert(0, on_shutdown)


async def serve_async(settings: WorkerSettings) -> int:
    app = create_app(settings)
    worker = app[WORKER]
    if settings.benchmark_enabled:
        _attach_benchmark(app, worker)
    grace = settings.shutdown_grace_seconds
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=max(0.5, grace * 0.1),
        keepalive_timeout=settings.header_timeout_seconds,
        auto_decompress=False,  # a compressed body is refused (payload.read_payload), never inflated on the loop
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
    await site.start()
    port = bound_port(runner, settings.port)
    log().info(
        "worker_listening",
        host=settings.host,
        port=port,
        vsa=settings.vsa,
        dimension=settings.dimension,
        device=str(worker.device),
        state_dir=worker.store.state_dir,
        pid=os.getpid(),
    )
    freeze_task = asyncio.get_running_loop().create_task(freeze_heap_when_ready(worker))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await stop.wait()

    started = time.monotonic()
    log().info(
        "shutdown_started", signal=received[0] if received else None, in_flight=worker.in_flight, grace_seconds=grace
    )
    # 1. Stop accepting: close the listening sockets (open connections stay up) and fail /readyz.
    worker.shutting_down = True
    freeze_task.cancel()
    for site in list(runner.sites):
        await site.stop()
    # 2. Let the requests in flight finish, including those whose body is still arriving (aiohttp's own
    #    shutdown drops the rest of a body, so it runs only once they are done or their share of time is up).
    request_deadline = started + grace * REQUEST_SHARE_OF_GRACE
    while worker.in_flight > 0 and time.monotonic() < request_deadline:
        await asyncio.sleep(0.02)
    if worker.in_flight > 0:
        log().warning("shutdown_requests_cancelled", in_flight=worker.in_flight)
    # 3. Close connections, drain the batcher, stop the benchmark, snapshot (on_shutdown / on_cleanup hooks).
    try:
        await asyncio.wait_for(runner.cleanup(), timeout=max(0.1, grace - (time.monotonic() - started)))
    except asyncio.TimeoutError:
        log().error("shutdown_grace_exceeded", grace_seconds=grace)
        _flush_and_exit(1)
    log().info("shutdown_completed", duration_ms=round((time.monotonic() - started) * 1000, 1))
    try:
        shutdown_tracing()  # flushes spans still buffered for export
    except Exception:  # noqa: BLE001
        pass
    flush_logs()
    return 0


def bound_port(runner: web.AppRunner, configured: int) -> int:
    """The port the runner's site listens on (the one the OS chose when HDC_PORT=0)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:  # (host, port) or (host, port, flow, scope)
            return int(address[1])
    return configured


def _flush_and_exit(code: int) -> None:
    flush_logs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve(settings: WorkerSettings) -> int:
    """Configures logging and tracing, then serves until SIGTERM/SIGINT; returns the exit status."""
    configure_logging(settings.log_level, settings.log_format, settings.log_file)
    configure_tracing("hdc-worker")
    set_allocator_mode("warm")
    os.makedirs(settings.state_dir, exist_ok=True)
    share_the_gil_quickly()
    return asyncio.run(serve_async(settings))


# Container allocations (net of frees) between two young-generation collections; CPython's default is 700.
GC_YOUNG_THRESHOLD = 20_000


async def freeze_heap_when_ready(worker: Worker, poll_seconds: float = 0.2) -> bool:
    """Once the worker is ready, moves every object alive then (modules, torch, the loaded state) out of the
    garbage collector's sight with gc.freeze(): otherwise a full collection walks them all in the middle of
    serving, a pause every request in flight waits for. Returns whether it froze.

    It also collects the young generation every GC_YOUNG_THRESHOLD allocations instead of CPython's 700: with
    tens of requests in flight, every 700 allocations catch many of their objects alive, which are promoted and
    walked again by the older generations' collections, so the collector ran every few dozen requests.
    docs/benchmarks.md has the measurements."""
    while not worker.ready:
        if worker.shutting_down or worker.startup_error:
            return False
        await asyncio.sleep(poll_seconds)
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
    return True


# How long a thread that wants the GIL waits before it makes the holder let go (CPython's default: 5 ms).
GIL_SWITCH_INTERVAL_SECONDS = 0.0002


def share_the_gil_quickly() -> None:
    """Lets the kernel thread get the GIL back within 0.2 ms instead of 5 ms while the event loop is busy.

    A kernel call (e.g. ItemMemory.search) is some twenty torch operations, and each gives the GIL up while it
    computes and needs it back afterwards. With the default interval a busy event loop keeps it for up to
    5 ms every time, so a kernel call next to a busy loop takes many times longer than alone (docs/benchmarks.md
    has the measurement). The number of switches stays one per torch operation, so the event loop pays a little
    per kernel call.
    """
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)
