"""Micro-benchmark of what one request pays for observability on the worker's event loop: the per-request facade
(monitoring/requests.py: start_request + operation_completed), and each stock library call it makes, so that the
cost can be told per library call (docs/benchmarks.md, "Observability on stock libraries").

Run: PYTHONPATH=worker .venv/bin/python benchmarks/service_micro.py
Prints the load average, then the best of 5 means, in µs, of each row. Logs go to /dev/null as JSON lines: stdout
only (structlog's processors and one write per line; standard records through the logging handler), or with a
log file as well (HDC_LOG_FILE: every line through the standard handlers). "no exporter": tracing as the
worker configures it without OTEL_EXPORTER_OTLP_ENDPOINT (non-recording spans with real ids); "exporter": a
BatchSpanProcessor whose exporter drops the spans, so the request path pays for recording and queueing them, not
for sending them.
Timed alone in a loop these costs are lower than what the same calls add to a serving event loop
(docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import os
import sys
import timeit
from collections.abc import Callable

from multidict import CIMultiDict, CIMultiDictProxy

NUMBER = 3000
HEADERS = {
    "Host": "127.0.0.1:8080",
    "Content-Type": "application/x-npz",
    "Accept": "application/json",
    "Content-Length": "10234",
    "User-Agent": "Python/3.11 aiohttp/3.14",
    "Accept-Encoding": "gzip, deflate",
}
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
FIELDS = {"dimension": 10000, "input_count": 1, "device": "cpu", "status": 200}


def best_us(fn: Callable[[], object], number: int = NUMBER) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def headers(traced: bool) -> CIMultiDictProxy[str]:
    extra = {"traceparent": TRACEPARENT} if traced else {}
    return CIMultiDictProxy(CIMultiDict({**HEADERS, **extra}))


def facade_rows(metrics, label: str) -> list[tuple[str, float]]:
    """What one request pays through the facade, with and without a caller's traceparent."""
    from hd_compute.monitoring.requests import operation_completed, start_request

    rows = []
    for traced in (False, True):
        h = headers(traced)
        suffix = f"{label}, {'traceparent' if traced else 'no traceparent'}"

        def start_only(h: CIMultiDictProxy[str] = h) -> None:
            with start_request("POST", "/v1/memories/{name}/query", h, "c-1") as served:
                served.status = 200

        def request(h: CIMultiDictProxy[str] = h) -> None:
            with start_request("POST", "/v1/memories/{name}/query", h, "c-1") as served:
                operation_completed(metrics, "memory_query", 0.001234, hypervectors=1, fields=FIELDS)
                served.status = 200

        rows.append((f"facade: start_request + end ({suffix})", best_us(start_only)))
        rows.append((f"facade: one request, start + operation_completed ({suffix})", best_us(request)))
    return rows


def library_rows(metrics, label: str) -> list[tuple[str, float]]:
    """The stock calls the facade makes, each alone."""
    import structlog
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    from hd_compute.monitoring.tracing import extract_context, get_tracer

    tracer = get_tracer()
    traced, plain = headers(True), headers(False)
    parent = extract_context(traced)
    span = tracer.start_span("POST /x", context=parent, kind=SpanKind.SERVER)
    histogram = metrics.operation_duration_seconds.labels("memory_query")
    counter = metrics.operation_total.labels("memory_query")

    def attach_detach() -> None:
        otel_context.detach(otel_context.attach(trace.set_span_in_context(span, parent)))

    def start_end() -> None:
        tracer.start_span("POST /x", context=parent, kind=SpanKind.SERVER).end()

    def bind_reset() -> None:
        structlog.contextvars.reset_contextvars(**structlog.contextvars.bind_contextvars(correlation_id="c-1"))

    return [
        ("propagate.extract, traceparent (OpenTelemetry)", best_us(lambda: extract_context(traced))),
        ("propagate.extract, no traceparent (OpenTelemetry)", best_us(lambda: extract_context(plain))),
        (f"tracer.start_span + span.end, server span ({label})", best_us(start_end)),
        ("context.attach + detach (OpenTelemetry)", best_us(attach_detach)),
        ("bind_contextvars + reset_contextvars (structlog)", best_us(bind_reset)),
        ("Histogram child .observe (prometheus_client)", best_us(lambda: histogram.observe(0.001))),
        ("Counter child .inc (prometheus_client)", best_us(lambda: counter.inc())),
        (
            "MetricsCollector.observe_operation (3 metrics + window)",
            best_us(lambda: metrics.observe_operation("memory_query", 0.001, hypervectors=1)),
        ),
    ]


def log_rows(label: str) -> list[tuple[str, float]]:
    from hd_compute.monitoring.logging import OPERATION_COMPLETED, LoggerCache

    log = LoggerCache("hd_compute.service")
    access = logging.getLogger("aiohttp.access")
    return [
        (
            f"one hypervector_operation_completed line, structlog ({label})",
            best_us(lambda: log().info(OPERATION_COMPLETED, operation="memory_query", duration_ms=1.234, **FIELDS)),
        ),
        (
            f"one standard record, e.g. aiohttp's access log ({label})",
            best_us(lambda: access.info('%s "%s" %s', "127.0.0.1", "POST /v1/memories/m/query HTTP/1.1", 200)),
        ),
    ]


class _Dropping:
    """A span exporter that drops what it gets (the batch processor's queueing is what the request pays)."""

    def export(self, spans):
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def main() -> None:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from hd_compute.monitoring.logging import configure_logging
    from hd_compute.monitoring.metrics import MetricsCollector
    from hd_compute.monitoring.tracing import configure_tracing, shutdown_tracing

    for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER"):
        os.environ.pop(var, None)
    out, sys.stdout = sys.stdout, open(os.devnull, "w")  # the log lines
    metrics = MetricsCollector()
    rows: list[tuple[str, float]] = []
    try:
        configure_logging("INFO", "json")
        provider = configure_tracing("hdc-micro", set_global=False)
        rows += facade_rows(metrics, "no exporter")
        rows += library_rows(metrics, "no exporter")
        rows += log_rows("stdout")
        provider.add_span_processor(BatchSpanProcessor(_Dropping()))
        rows += facade_rows(metrics, "exporter")
        rows += library_rows(metrics, "exporter")[2:3]
        shutdown_tracing()
        configure_tracing("hdc-micro", set_global=False)
        configure_logging("INFO", "json", file=os.devnull)
        rows += facade_rows(metrics, "no exporter, HDC_LOG_FILE")[1:2]
        rows += log_rows("stdout + HDC_LOG_FILE")
    finally:
        sys.stdout.close()
        sys.stdout = out
    print(f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name, us in rows:
        print(f"{name:88s} {us:7.1f} us")


if __name__ == "__main__":
    main()
