"""Micro-benchmark of the worker's per-request costs on the event loop: spans, the log line, metrics, and the
decoding of .npz query bodies (docs/benchmarks.md, "Where the time of a request went").

Run: PYTHONPATH=worker python benchmarks/service_micro.py
Against another version of the package (the "before" column), with its worker/ directory extracted by
`git archive <rev> worker | tar -x -C /tmp/old`: PYTHONPATH=/tmp/old/worker python benchmarks/service_micro.py
(the script only uses functions that existed before the speed work; the rows of the worker's present request
path - light span ids, the request scope, the completion line - are timed where the package has them).
Prints the best of 3 means, in µs. Tracing is configured without an exporter (the default), logs go to
/dev/null as JSON lines. Timed alone in a loop, these costs are several times lower than what the same calls
add to the event loop of a serving worker (docs/benchmarks.md).
"""

from __future__ import annotations

import io
import os
import sys
import timeit

import numpy as np


def best_us(fn, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=3)) / number * 1e6


def main() -> None:
    from multidict import CIMultiDict, CIMultiDictProxy

    from hd_compute.monitoring.logging import (bind_request_context, clear_request_context, configure_logging,
                                               get_logger)
    from hd_compute.monitoring.metrics import MetricsCollector
    from hd_compute.monitoring.tracing import configure_tracing, current_trace_id, kernel_span, server_span
    from hd_compute.service.codec import _from_storage, _read_npz
    from hd_compute.vsa import get_model

    configure_tracing("hdc-micro", set_global=False)
    configure_logging("INFO", "json")
    out, sys.stdout = sys.stdout, open(os.devnull, "w")  # the log lines
    metrics = MetricsCollector()
    headers = CIMultiDictProxy(CIMultiDict({
        "Host": "127.0.0.1:8080", "Content-Type": "application/x-npz", "Accept": "application/json",
        "Content-Length": "10234", "User-Agent": "Python/3.11 aiohttp/3.14", "Accept-Encoding": "gzip, deflate",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}))
    log = get_logger("hd_compute.service")

    def spans() -> None:
        with server_span("POST /v1/memories/{name}/query", headers, attributes={"http.request.method": "POST"}):
            current_trace_id()
            with kernel_span("memory_query", 1, 10000):
                pass

    def log_line() -> None:
        log.info("hypervector_operation_completed", operation="memory_query", dimension=10000, input_count=1,
                 duration_ms=1.234, device="cpu", status=200)

    def observe() -> None:
        metrics.observe_operation("memory_query", 0.001, hypervectors=1)

    def request() -> None:  # what the middleware and the operation wrapper add to one request
        with server_span("POST /v1/memories/{name}/query", headers, attributes={"http.request.method": "POST"}):
            bind_request_context("c-1", current_trace_id())
            with kernel_span("memory_query", 1, 10000):
                pass
            observe()
            log_line()
        clear_request_context()

    rows = [("server span + kernel span", best_us(spans, 2000)),
            ("one hypervector_operation_completed log line", best_us(log_line, 2000)),
            ("observe_operation", best_us(observe, 5000)),
            ("all per-request observability", best_us(request, 2000))]
    rows += present_request_path(headers, metrics)
    plain = CIMultiDictProxy(CIMultiDict((k, v) for k, v in headers.items() if k != "traceparent"))
    rows += [(f"{name}, no traceparent", us) for name, us in present_request_path(plain, metrics)]
    rng = np.random.default_rng(0)
    for n in (1, 64):
        bodies = {
            "MAP": np.where(rng.random((n, 10000)) < 0.5, 1, -1).astype(np.int8),
            "BSC": rng.integers(0, 1 << 62, (n, 157)) & np.array([-1] * 156 + [(1 << 16) - 1]),
        }
        for vsa, array in bodies.items():
            buf = io.BytesIO()
            np.savez(buf, queries=array)
            raw, model = buf.getvalue(), get_model(vsa)
            decoded = _read_npz(raw, 1 << 30)["queries"]
            rows.append((f"read .npz body, {vsa}, {n} queries", best_us(lambda: _read_npz(raw, 1 << 30), 500)))
            rows.append((f"check and convert, {vsa}, {n} queries",
                         best_us(lambda: _from_storage(decoded, "queries", model, 10000, 10000), 500)))
    sys.stdout.close()
    sys.stdout = out
    print(f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name, us in rows:
        print(f"{name:68s} {us:9.1f} us")


def present_request_path(headers, metrics) -> list[tuple[str, float]]:
    """What the worker's request path does since 1b04647 (service/app.py), outside an event loop (so each line
    is written at once instead of with its loop iteration's others); [] for versions without it."""
    try:
        from hd_compute.monitoring.logging import REQUEST_SCOPE, RequestScope, log_request_line
        from hd_compute.monitoring.tracing import light_span_ids
    except ImportError:
        return []
    fields = {"operation": "memory_query", "dimension": 10000, "input_count": 1, "duration_ms": 1.234,
              "device": "cpu", "status": 200}

    def scope() -> None:
        token = REQUEST_SCOPE.set(RequestScope("c-1", *light_span_ids(headers)))
        REQUEST_SCOPE.reset(token)

    def line() -> None:
        log_request_line("hd_compute.service", "hypervector_operation_completed", dict(fields))

    def request() -> None:
        token = REQUEST_SCOPE.set(RequestScope("c-1", *light_span_ids(headers)))
        try:
            metrics.observe_operation("memory_query", 0.001, hypervectors=1)
            log_request_line("hd_compute.service", "hypervector_operation_completed", dict(fields))
        finally:
            REQUEST_SCOPE.reset(token)

    if light_span_ids(headers) is None:  # spans are recorded: the worker opens server_span, timed above
        return []
    return [("light span ids + request scope (present path)", best_us(scope, 5000)),
            ("completion line via log_request_line (present path)", best_us(line, 2000)),
            ("all per-request observability (present path)", best_us(request, 2000))]


if __name__ == "__main__":
    main()
