"""Probes and read-only endpoints: /livez, /readyz, /health, /metrics, /openapi.json.

/livez answers without touching the worker's state (the kubelet restarts a worker whose loop is stuck, nothing
else); /readyz is 200 only when the worker can serve (see Worker.not_ready_reason); /health runs the seed's
checks and /metrics the exposition on a thread, since both read the system.
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
    result = await asyncio.to_thread(request.app[WORKER].health.check_all)
    return web.json_response(result, status=http_status(result))


@routes.get("/metrics")
async def metrics_route(request: web.Request) -> web.Response:
    body, content_type = await asyncio.to_thread(request.app[WORKER].metrics.exposition)
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


@routes.get("/openapi.json")
async def openapi_route(request: web.Request) -> web.Response:
    return web.json_response(openapi.spec(request.app[WORKER].settings))
