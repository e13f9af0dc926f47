"""The per-request observability facade: one call when a request starts, one when its operation ends.

    with start_request("POST", "/v1/ops/bind", request.headers, correlation_id) as served:
        ...                                                  # every log line carries the request's ids
        operation_completed(metrics, "bind", seconds, hypervectors=2, fields={"dimension": 10000, ...})
        served.status = response.status
    operation_failed(metrics, "bind", seconds, "invalid_argument", fields={"status": 400, ...})

`start_request` makes the request's SERVER span current (a child of the caller's W3C traceparent when the
headers carry one; the configured propagators read them) and binds the correlation id to structlog's context,
so every line logged while serving it, on the event loop or on the kernel thread, carries correlation_id,
trace_id and span_id. Leaving the block ends the span (with the response's status, ERROR on a 5xx or an
exception) and unbinds the id.

Without an exporter the span is one of the SDK's non-recording spans (tracing.ExportedOnlySampler): real ids
for the log lines, nothing recorded, and no attributes built for it.

`operation_completed` records the duration histogram, the operation and hypervector counters and the sliding
window (MetricsCollector.observe_operation) and writes one hypervector_operation_completed line;
`operation_failed` counts the failure under its error code and writes a request_failed warning.

Everything goes through the libraries' public APIs; the saving is structural: the service makes these calls
once per request, nothing more.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .logging import OPERATION_COMPLETED, LoggerCache
from .metrics import MetricsCollector
from .tracing import extract_context, get_tracer, records_spans

__all__ = ["start_request", "ServedRequest", "operation_completed", "operation_failed", "REQUEST_FAILED", "LOGGER_NAME"]

LOGGER_NAME = "hd_compute.service"
REQUEST_FAILED = "request_failed"

_log = LoggerCache(LOGGER_NAME)


class ServedRequest:
    """The request being served, from start_request to the end of its `with` block. Set `status` to the
    response's HTTP status before the block ends (the span's http.response.status_code)."""

    __slots__ = ("span", "status", "_context_token", "_log_tokens")

    def __init__(self, span: Span, context_token: object, log_tokens: Mapping[str, Any]) -> None:
        self.span = span
        self.status: int | None = None
        self._context_token = context_token
        self._log_tokens = log_tokens

    def __enter__(self) -> ServedRequest:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        span = self.span
        try:
            if span.is_recording():
                if self.status is not None:
                    span.set_attribute("http.response.status_code", self.status)
                if exc is not None:
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                elif self.status is not None and self.status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            span.end()
        finally:
            otel_context.detach(self._context_token)  # type: ignore[arg-type]
            structlog.contextvars.reset_contextvars(**self._log_tokens)


def start_request(method: str, route: str, headers: Mapping[str, str], correlation_id: str) -> ServedRequest:
    """Opens the request's SERVER span `"<method> <route>"` as the current span (child of the caller's trace
    from `headers`) and binds `correlation_id` for the log lines; use the result as a context manager."""
    parent = extract_context(headers)
    attributes = None
    if records_spans():  # only a recorded span keeps its attributes
        attributes = {"http.request.method": method, "http.route": route, "hdc.correlation_id": correlation_id}
    span = get_tracer().start_span(f"{method} {route}", context=parent, kind=SpanKind.SERVER, attributes=attributes)
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    return ServedRequest(span, token, structlog.contextvars.bind_contextvars(correlation_id=correlation_id))


def operation_completed(
    metrics: MetricsCollector, operation: str, seconds: float, *, hypervectors: int, fields: Mapping[str, Any]
) -> None:
    """A successful operation: its metrics, and its hypervector_operation_completed line with `fields` (the
    contract's operation, dimension, input_count, duration_ms, device; the worker adds status) after
    operation and duration_ms."""
    metrics.observe_operation(operation, seconds, hypervectors=hypervectors)
    _log().info(OPERATION_COMPLETED, operation=operation, duration_ms=round(seconds * 1000, 3), **fields)


def operation_failed(
    metrics: MetricsCollector, operation: str, seconds: float, error: str, *, fields: Mapping[str, Any] | None = None
) -> None:
    """A failed operation: its duration, counted under `error` (the error code; failed work adds no
    hypervectors), and a request_failed warning with `fields` unless `fields` is None (the caller logged the
    failure its own way)."""
    metrics.observe_operation(operation, seconds, error=error)
    if fields is not None:
        _log().warning(REQUEST_FAILED, operation=operation, error=error, **fields)
