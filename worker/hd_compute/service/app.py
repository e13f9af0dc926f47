"""The worker's aiohttp application: the route tables of service/routes/, the per-request middleware, the fault
injector when asked for, and the worker's start-up and clean-up hooks.

Start-up loads the snapshots and warms up in the background (/livez answers at once, /readyz once both are done);
shutdown turns /readyz 503 at once; clean-up (after the requests in flight) writes the final snapshot.
docs/worker-api.md is the reference for every route.
"""

from __future__ import annotations

from aiohttp import web

from hd_compute.monitoring.health import HealthChecker
from hd_compute.monitoring.metrics import MetricsCollector

from .codec import BODIES, LIMITS, BodyBudget, Limits
from .config import WorkerSettings
from .faults import install as install_faults
from .middleware import batch_span, observability_middleware
from .operations import OPERATIONS
from .routes import ROUTE_TABLES
from .worker import WORKER, Worker

__all__ = ["BODIES", "OPERATIONS", "WORKER", "Worker", "create_app"]


def create_app(
    settings: WorkerSettings | None = None,
    *,
    metrics: MetricsCollector | None = None,
    health: HealthChecker | None = None,
) -> web.Application:
    settings = settings or WorkerSettings.from_env()
    worker = Worker(settings, metrics=metrics, health=health, operations=OPERATIONS, around_batch=batch_span)

    def in_flight(delta: int, is_operation: bool) -> None:
        worker.in_flight += delta
        if is_operation:
            worker.in_flight_ops += delta

    # client_max_size: aiohttp's guard for bodies read through its own API (PUT /admin/faults); the /v1 routes read
    # theirs with payload.read_body, under the limits of LIMITS.
    app = web.Application(
        middlewares=[observability_middleware(in_flight, settings.observability)],
        client_max_size=settings.max_body_bytes,
    )
    app[WORKER] = worker
    app[LIMITS] = limits = Limits.from_settings(settings)
    app[BODIES] = BodyBudget(limits.inflight_body_bytes)
    for table in ROUTE_TABLES:
        app.add_routes(table)
    install_faults(app, settings.admin_faults)

    async def on_startup(app: web.Application) -> None:
        worker.begin_start()

    async def on_shutdown(app: web.Application) -> None:
        worker.shutting_down = True  # /readyz turns 503 at once

    async def on_cleanup(app: web.Application) -> None:
        await worker.stop()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app
