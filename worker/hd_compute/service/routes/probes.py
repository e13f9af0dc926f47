"""Probes and read-only endpoints: /livez, /readyz, /health, /metrics, /openapi.json.

/livez answers without touching the worker's state (the kubelet restarts a worker whose loop is stuck, nothing
else, so an unreachable state store never fails it); /readyz is 200 only when the worker can serve (see
Worker.not_ready_reason: caught up with the state store, which answers); /health runs the seed's checks and adds
`state` (backend, applied version, lag), and /metrics the exposition on a thread, since both read the system.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from hd_compute.monitoring.health import http_status

from .. import openapi
from ..worker import WORKER

routes = web.RouteTableDef()


@routes.get("/livez")
async def livez(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    reason = request.app[WORKER].not_ready_reason()
    if reason is None:
        return web.json_response({"ready": True})
    return web.json_response({"ready": False, "reason": reason}, status=503)


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    worker = request.app[WORKER]
    result = await asyncio.to_thread(worker.health.check_all)
    result["state"] = worker.store.status()  # the state backend, its applied version and lag (an added field)
    return web.json_response(result, status=http_status(result))


@routes.get("/metrics")
async def metrics_route(request: web.Request) -> web.Response:
    worker = request.app[WORKER]
    worker.store.status()  # sets the state gauges (hdc_state_version, hdc_state_lag_versions)
    worker.update_state_gauges()
    body, content_type = await asyncio.to_thread(worker.metrics.exposition)
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


@routes.get("/openapi.json")
async def openapi_route(request: web.Request) -> web.Response:
    return web.json_response(openapi.spec(request.app[WORKER].settings))
