"""Fault injection for alerting tests: added latency and a ratio of failed /v1 operations, set at run time.

Off unless HDC_ADMIN_FAULTS=true (the routes do not exist otherwise). Then:

    PUT    /admin/faults  {"latency_ms": 250, "error_ratio": 0.5, "operations": ["bind"]}   -> the fault now active
    GET    /admin/faults                                                                   -> the fault now active
    DELETE /admin/faults                                                                   -> no fault

latency_ms (>= 0, <= 60000) is slept before the operation runs, inside its measured duration; error_ratio (0..1)
of the matching operations then fail with HTTP 500 and error code "injected_fault" (counted in
hdc_operation_errors_total like any failure). `operations` limits both to those operation names (all /v1
operations when absent or empty). docs/worker-api.md documents the routes; tests/e2e/test_alerts_e2e.py uses them
to make HDC_HighLatency and HDC_HighErrorRate fire in a real Prometheus.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from hd_compute.monitoring.logging import get_logger

from .codec import LIMITS, ApiError
from .middleware import error_response
from .openapi import MAX_LATENCY_MS
from .payload import read_payload

__all__ = ["Fault", "FaultInjector", "FAULTS", "install", "parse_fault"]


@dataclass(frozen=True)
class Fault:
    latency_ms: float = 0.0
    error_ratio: float = 0.0
    operations: frozenset[str] = frozenset()  # empty: every /v1 operation

    @property
    def active(self) -> bool:
        return self.latency_ms > 0 or self.error_ratio > 0

    def as_dict(self) -> dict[str, Any]:
        return {"latency_ms": self.latency_ms, "error_ratio": self.error_ratio, "operations": sorted(self.operations)}


def _number(body: dict, field: str, maximum: float) -> float:
    value = body.get(field, 0)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 <= value <= maximum
    ):
        raise ApiError(
            400, "invalid_field", f"{field}: must be a number between 0 and {maximum:g}, got {value!r}", field=field
        )
    return float(value)


def parse_fault(body: Any) -> Fault:
    """A Fault from a PUT /admin/faults body; ApiError 400 naming the field otherwise."""
    if not isinstance(body, dict):
        raise ApiError(400, "malformed_body", "body: must be a JSON object with latency_ms, error_ratio, operations")
    unknown = sorted(set(body) - {"latency_ms", "error_ratio", "operations"})
    if unknown:
        raise ApiError(
            400,
            "invalid_field",
            f"{unknown[0]}: unknown field; expected latency_ms, error_ratio, operations",
            field=unknown[0],
        )
    operations = body.get("operations", [])
    if not isinstance(operations, list) or not all(isinstance(o, str) and o for o in operations):
        raise ApiError(
            400, "invalid_field", 'operations: must be a list of operation names such as "bind"', field="operations"
        )
    return Fault(_number(body, "latency_ms", MAX_LATENCY_MS), _number(body, "error_ratio", 1.0), frozenset(operations))


class FaultInjector:
    """The active fault of one worker; `before(operation)` runs at the start of every /v1 operation."""

    def __init__(self, seed: int | None = None) -> None:
        self.fault = Fault()
        self._random = random.Random(seed)

    async def before(self, operation: str) -> None:
        fault = self.fault
        if not fault.active or (fault.operations and operation not in fault.operations):
            return
        if fault.latency_ms > 0:
            await asyncio.sleep(fault.latency_ms / 1000.0)
        if fault.error_ratio > 0 and self._random.random() < fault.error_ratio:
            raise ApiError(500, "injected_fault", f"{operation}: failed by the injected fault (PUT /admin/faults)")


FAULTS = web.AppKey("faults", FaultInjector)


async def _get(request: web.Request) -> web.Response:
    return web.json_response(request.app[FAULTS].fault.as_dict())


async def _put(request: web.Request) -> web.Response:
    try:
        fault = parse_fault((await read_payload(request, request.app[LIMITS])).fields)
    except ApiError as exc:
        return error_response(request, exc.status, exc.error, exc.detail)
    request.app[FAULTS].fault = fault
    get_logger("hd_compute.service").warning("fault_injected", **fault.as_dict())
    return web.json_response(fault.as_dict())


async def _delete(request: web.Request) -> web.Response:
    request.app[FAULTS].fault = Fault()
    get_logger("hd_compute.service").warning("fault_cleared")
    return web.json_response(Fault().as_dict())


def install(app: web.Application, enabled: bool) -> None:
    """Adds the injector and the /admin/faults routes to `app` when `enabled` (HDC_ADMIN_FAULTS)."""
    if not enabled:
        return
    app[FAULTS] = FaultInjector()
    app.router.add_route("GET", "/admin/faults", _get)
    app.router.add_route("PUT", "/admin/faults", _put)
    app.router.add_route("DELETE", "/admin/faults", _delete)
