"""The per-request observability glue of the worker, and router errors as JSON.

Every request gets a correlation id (X-Correlation-ID when it is a plausible one, else a new uuid4; echoed in the
response), and, through the monitoring facade (monitoring/requests.py, one call per request), a server span (the
caller's W3C traceparent honoured) that is current while it is served and the correlation id bound for its log
lines. The /v1 operations report through `record_completed` / `record_failed` (service/operations.py calls them)
and open their kernel spans through `op_kernel_span` / `batch_tag` / `batch_span`. HDC_OBSERVABILITY=false
skips the span, log context, metrics and log line of successful requests (errors are still counted).
Router errors (404 of an unknown path, 405 of a known path with another method) answer the same JSON error body
as every other error, and a 405 keeps its Allow header.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from aiohttp import web
from opentelemetry import trace

from hd_compute.monitoring.logging import LoggerCache
from hd_compute.monitoring.requests import LOGGER_NAME, operation_completed, operation_failed, start_request
from hd_compute.monitoring.tracing import kernel_span, records_spans

from .codec import error_body

if TYPE_CHECKING:
    from .operations import Op

CORRELATION_HEADER = "X-Correlation-ID"
CORRELATION_ID = web.RequestKey("correlation_id", str)
_CID_RE = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")

log = LoggerCache(LOGGER_NAME)  # log().info(...): bound once per logging set-up

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def correlation_id(request: web.Request) -> str:
    return request.get(CORRELATION_ID) or "unknown"


def error_response(
    request: web.Request, status: int, error: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The JSON error every failure answers: {"error", "detail", "correlation_id"}."""
    return web.json_response(error_body(error, detail, correlation_id(request)), status=status, headers=headers)


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))  # the version and variant bits
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant


def _new_correlation_id() -> str:
    """A random (version 4) UUID from Python's PRNG: no getrandom syscall per request; not a secret."""
    h = "%032x" % (random.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def observability_middleware(in_flight: Callable[[int, bool], None], enabled: bool) -> Any:
    """The aiohttp middleware. `in_flight(delta, is_operation)` counts the requests being served (the worker's
    shutdown waits for them; its benchmark yields to /v1 operations); `enabled` is HDC_OBSERVABILITY."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get(CORRELATION_HEADER, "")
        cid = given if _CID_RE.fullmatch(given) else _new_correlation_id()
        request[CORRELATION_ID] = cid
        is_op = request.path.startswith("/v1/")
        in_flight(1, is_op)
        try:
            if not enabled:  # no server span, no log context
                response = await _handle(request, handler)
            else:
                resource = request.match_info.route.resource
                route = resource.canonical if resource is not None else "unmatched"
                with start_request(request.method, route, request.headers, cid) as served:
                    response = await _handle(request, handler)
                    served.status = response.status
            response.headers[CORRELATION_HEADER] = cid
            return response
        finally:
            in_flight(-1, is_op)

    return middleware


async def _handle(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:  # router 404/405 and friends: JSON like every other error
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(
            request,
            exc.status,
            _http_error_code(exc.status),
            f"{request.method} {request.path}: {exc.reason}",
            headers=headers,
        )


def _http_error_code(status: int) -> str:
    return {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(status, "http_error")


# -- what the /v1 operations report ---------------------------------------------------------------------------


def record_completed(op: Op, seconds: float, status: int) -> None:
    """A successful operation: its metrics and its hypervector_operation_completed line (observability on only)."""
    worker = op.worker
    if not worker.settings.observability:
        return
    operation_completed(
        worker.metrics,
        op.name,
        seconds,
        hypervectors=max(op.input_count, 1),
        fields={
            "dimension": op.dimension,
            "input_count": op.input_count,
            "device": worker.device_name,
            "status": status,
        },
    )


def record_failed(op: Op, seconds: float, status: int, error: str, detail: str, *, log_it: bool = True) -> None:
    """A failed operation: counted whatever HDC_OBSERVABILITY says, and a request_failed line unless the caller
    logged it its own way."""
    fields = {"status": status, "detail": detail} if log_it else None
    operation_failed(op.worker.metrics, op.name, seconds, error, fields=fields)


def log_failure(event: str, **fields: Any) -> None:
    """An error line of the service's logger (an unexpected exception, a device out of memory)."""
    log().error(event, **fields)


def log_exception(event: str, **fields: Any) -> None:
    """An error line with the exception being handled."""
    log().exception(event, **fields)


def _spans_wanted(op: Op) -> bool:
    # Without an exporter nothing would record a kernel span: the request's non-recording server span gives the
    # log lines their ids.
    return op.worker.settings.observability and records_spans()


def op_kernel_span(op: Op) -> AbstractContextManager[Any]:
    """The kernel span around one unbatched kernel call of `op`."""
    if not _spans_wanted(op):
        return contextlib.nullcontext()
    return kernel_span(op.name, op.input_count, op.dimension or 0)


def batch_tag(op: Op) -> Any:
    """What `op` hands the micro-batcher for the kernel span of its batch (None: no span)."""
    if not _spans_wanted(op):
        return None
    return (op.name, op.dimension or 0, trace.get_current_span().get_span_context())


def batch_span(tags: list[Any], rows: int) -> AbstractContextManager[Any]:
    """The kernel span of one micro-batched kernel call: a child of the first request's span, linked to the
    spans of all the requests it computed, with hdc.input_count = the rows of the call."""
    first = tags[0]
    if first is None:
        return contextlib.nullcontext()
    operation, dimension, parent = first
    return kernel_span(
        operation,
        rows,
        dimension,
        parent=parent,
        links=[t[2] for t in tags if t is not None],
        attributes={"hdc.batch_requests": len(tags)},
    )
