"""Tracing: kernel_span attributes, errors, W3C traceparent round trip, OTEL_* configuration; and the
per-request facade (monitoring/requests.py): the server span, the ids on every log line, metrics and lines."""

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from hd_compute.monitoring import tracing
from hd_compute.monitoring.logging import configure_logging, get_logger
from hd_compute.monitoring.metrics import MetricsCollector
from hd_compute.monitoring.requests import operation_completed, operation_failed, start_request
from hd_compute.monitoring.tracing import (
    configure_tracing,
    current_trace_id,
    extract_context,
    get_tracer,
    inject_context,
    kernel_span,
    records_spans,
)

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
OTEL_VARS = [
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in OTEL_VARS:
        monkeypatch.delenv(var, raising=False)
    yield
    tracing.shutdown_tracing()


@pytest.fixture
def spans():
    provider = configure_tracing("hdc-test", set_global=False)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def test_kernel_span_attributes(spans):
    with kernel_span("bundle", input_count=100, dimension=10000, attributes={"hdc.device": "cpu"}):
        pass
    (span,) = spans.get_finished_spans()
    assert span.name == "hdc_bundle_operation"
    assert dict(span.attributes) == {
        "hdc.operation": "bundle",
        "hdc.input_count": 100,
        "hdc.dimension": 10000,
        "hdc.device": "cpu",
        "hdc.success": True,
    }
    assert span.status.status_code != StatusCode.ERROR
    assert span.resource.attributes["service.name"] == "hdc-test"


def test_kernel_span_error(spans):
    with pytest.raises(ValueError, match="dimension mismatch"):
        with kernel_span("bind", input_count=2, dimension=64):
            raise ValueError("dimension mismatch")
    (span,) = spans.get_finished_spans()
    assert span.attributes["hdc.success"] is False
    assert span.status.status_code == StatusCode.ERROR
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "ValueError"
    assert event.attributes["exception.message"] == "dimension mismatch"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"operation": "", "input_count": 1, "dimension": 1}, "operation"),
        ({"operation": "bind", "input_count": -1, "dimension": 1}, "input_count"),
        ({"operation": "bind", "input_count": 1, "dimension": 2.5}, "dimension"),
    ],
)
def test_kernel_span_bad_arguments(spans, kwargs, field):
    with pytest.raises(ValueError, match=field):
        with kernel_span(**kwargs):
            pass


def test_traceparent_extract_and_inject_round_trip(spans):
    headers = {"Traceparent": PARENT, "tracestate": "vendor=1"}  # any capitalisation
    ctx = extract_context(headers)
    with get_tracer().start_as_current_span("child", context=ctx):
        assert current_trace_id() == TRACE_ID
        out = inject_context({})
    version, trace_id, span_id, flags = out["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert span_id != "b7ad6b7169203331"  # the child's own span id
    assert out["tracestate"] == "vendor=1"
    (child,) = spans.get_finished_spans()
    assert child.parent.span_id == int("b7ad6b7169203331", 16)
    assert format(child.context.span_id, "016x") == span_id


def test_server_span_continues_the_callers_trace(spans):
    with start_request("POST", "/v1/bundle", {"traceparent": PARENT}, "c-1") as served:
        with kernel_span("bundle", input_count=3, dimension=100):
            pass
        served.status = 200
    kernel, server = spans.get_finished_spans()
    assert server.kind == SpanKind.SERVER and server.name == "POST /v1/bundle"
    assert dict(server.attributes) == {
        "http.request.method": "POST",
        "http.route": "/v1/bundle",
        "hdc.correlation_id": "c-1",
        "http.response.status_code": 200,
    }
    assert server.status.status_code == StatusCode.UNSET
    assert server.context.trace_id == kernel.context.trace_id == int(TRACE_ID, 16)
    assert kernel.parent.span_id == server.context.span_id
    assert server.parent.span_id == int("b7ad6b7169203331", 16)


def test_no_traceparent_starts_a_new_trace(spans):
    assert current_trace_id() is None
    with start_request("GET", "/health", {}, "c-1"):
        assert current_trace_id() not in (None, TRACE_ID)
    assert current_trace_id() is None


def test_server_errors_and_exceptions_mark_the_server_span(spans):
    with start_request("POST", "/v1/ops/bind", {}, "c-1") as served:
        served.status = 503
    with pytest.raises(RuntimeError, match="kaboom"):
        with start_request("POST", "/v1/ops/bind", {}, "c-2"):
            raise RuntimeError("kaboom")
    unavailable, failed = spans.get_finished_spans()
    assert unavailable.status.status_code == StatusCode.ERROR
    assert unavailable.attributes["http.response.status_code"] == 503
    assert failed.status.status_code == StatusCode.ERROR and failed.events[0].name == "exception"


@pytest.fixture
def otlp_receiver():
    """A local HTTP server standing in for a collector: the paths the exporter posts to."""
    posted = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            posted.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", posted
    server.shutdown()


def export_one_span(provider) -> None:
    with get_tracer().start_as_current_span("s"):
        pass
    assert provider.force_flush(10_000)


def test_otlp_exporter_only_with_an_endpoint(monkeypatch, otlp_receiver):
    endpoint, posted = otlp_receiver
    provider = configure_tracing(set_global=False)
    assert provider.span_processors == [] and not records_spans()  # no endpoint: ids for the logs, no export
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    provider = configure_tracing(set_global=False)
    assert len(provider.span_processors) == 1 and records_spans()
    export_one_span(provider)
    assert posted == ["/v1/traces"]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{endpoint}/custom")
    export_one_span(configure_tracing(set_global=False))
    assert posted == ["/v1/traces", "/custom"]
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert configure_tracing(set_global=False).span_processors == []


def test_sampler_service_name_and_disable(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "hdc-worker-gpu")
    provider = configure_tracing(set_global=False)
    assert provider.resource.attributes["service.name"] == "hdc-worker-gpu"
    with kernel_span("bind", 1, 8) as span:
        assert not span.is_recording()
    monkeypatch.delenv("OTEL_TRACES_SAMPLER")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector.invalid:4318")
    provider = configure_tracing(set_global=False)
    assert provider.span_processors == [] and not records_spans()
    with kernel_span("bind", 1, 8) as span:
        assert not span.get_span_context().is_valid
    with start_request("GET", "/health", {}, "c-1") as served:
        assert not served.span.get_span_context().is_valid and current_trace_id() is None
    with start_request("GET", "/health", {"traceparent": PARENT}, "c-1") as served:  # OpenTelemetry's no-op API
        assert served.span.get_span_context().span_id == int("b7ad6b7169203331", 16)  # passes the caller's on


def test_unsupported_settings_are_named(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER"):
        configure_tracing(set_global=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        configure_tracing(set_global=False)


def test_without_processors_spans_are_not_recorded_but_carry_the_trace():
    """No exporter: the SDK's spans are non-recording (nothing would read them) and no attributes are built
    for them, yet the caller's trace continues, ids reach the logs and propagate. Their flags say 'not
    sampled': this worker records nothing."""
    provider = configure_tracing(set_global=False)
    assert not records_spans()
    with start_request("POST", "/v1/ops/bind", {"TraceParent": PARENT, "tracestate": "vendor=1"}, "c-1") as served:
        server = served.span
        assert not server.is_recording()
        assert current_trace_id() == TRACE_ID
        server_id = server.get_span_context().span_id
        assert server_id not in (0, int("b7ad6b7169203331", 16))
        with kernel_span("bind", input_count=2, dimension=64) as kernel:
            assert not kernel.is_recording() and current_trace_id() == TRACE_ID
            assert kernel.get_span_context().span_id not in (0, server_id)
        out = inject_context({})
    assert out["traceparent"] == f"00-{TRACE_ID}-{server_id:016x}-00"
    assert out["tracestate"] == "vendor=1"
    assert current_trace_id() is None  # detached on exit
    with start_request("GET", "/health", {"traceparent": "garbage"}, "c-2"):  # unreadable: a new trace
        assert current_trace_id() not in (None, TRACE_ID)
    assert "ExportedOnly" in provider.sampler.get_description()


def test_spans_are_recorded_once_an_exporter_is_added():
    provider = configure_tracing(set_global=False)
    with kernel_span("bind", 1, 8) as span:
        assert not span.is_recording()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert records_spans()
    with start_request("POST", "/v1/ops/bind", {"traceparent": PARENT}, "c-1"):
        with kernel_span("bind", 1, 8) as span:
            assert span.is_recording()
    kernel, server = exporter.get_finished_spans()
    assert kernel.attributes["hdc.operation"] == "bind" and kernel.attributes["hdc.success"] is True
    assert server.context.trace_id == kernel.context.trace_id == int(TRACE_ID, 16)


def test_the_configured_sampler_decides_once_spans_are_exported(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    provider = configure_tracing(set_global=False)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with start_request("GET", "/x", {}, "c-1"):
        assert current_trace_id() is not None  # ids for the logs all the same
        assert int(inject_context({})["traceparent"][-2:], 16) & 1 == 0  # not sampled
    assert exporter.get_finished_spans() == ()


# --- the per-request facade: ids on every line, one call at each end -------------------------------------------


@pytest.fixture
def log_lines(capsys):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    configure_logging("INFO", "json")

    def read():
        return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]

    yield read
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


@pytest.mark.parametrize("exported", [False, True])
def test_every_line_of_a_request_carries_its_ids_on_the_loop_and_the_kernel_thread(log_lines, exported):
    import asyncio
    import contextvars

    provider = configure_tracing(set_global=False)
    if exported:
        provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))

    async def serve(cid: str, headers: dict):
        with start_request("POST", "/v1/ops/bind", headers, cid) as served:
            get_logger("hd_compute.service").info("on_the_loop")
            await asyncio.sleep(0)  # another request runs meanwhile
            ctx = contextvars.copy_context()  # what the kernel runner hands its thread
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: ctx.run(logging.getLogger("hd_compute.kernels").warning, "on the kernel thread")
            )
            served.status = 200
            return served.span.get_span_context()

    async def both():
        return await asyncio.gather(serve("c-1", {"traceparent": PARENT}), serve("c-2", {}))

    first, second = asyncio.run(both())
    get_logger("hd_compute.service").info("after")
    entries = log_lines()
    by_cid = {}
    for e in entries[:-1]:
        by_cid.setdefault(e["correlation_id"], []).append(e)
    assert sorted(by_cid) == ["c-1", "c-2"] and all(len(v) == 2 for v in by_cid.values())
    for cid, span_context in (("c-1", first), ("c-2", second)):
        for e in by_cid[cid]:
            assert e["trace_id"] == f"{span_context.trace_id:032x}" and e["span_id"] == f"{span_context.span_id:016x}"
    assert by_cid["c-1"][0]["trace_id"] == TRACE_ID
    assert {"correlation_id", "trace_id", "span_id"}.isdisjoint(entries[-1])


def test_operation_completed_and_failed(log_lines):
    configure_tracing(set_global=False)
    metrics = MetricsCollector()
    with start_request("POST", "/v1/ops/bundle", {}, "c-1"):
        operation_completed(
            metrics,
            "bundle",
            0.0152,
            hypervectors=100,
            fields={"dimension": 10000, "input_count": 100, "device": "cpu", "status": 200},
        )
        operation_failed(metrics, "bundle", 0.001, "invalid_argument", fields={"status": 400, "detail": "vectors: x"})
        operation_failed(metrics, "bundle", 0.001, "cuda_out_of_memory")  # logged by the caller its own way
    completed, failed = log_lines()
    assert {
        k: completed[k]
        for k in (
            "event",
            "level",
            "logger",
            "operation",
            "dimension",
            "input_count",
            "duration_ms",
            "device",
            "status",
            "correlation_id",
        )
    } == {
        "event": "hypervector_operation_completed",
        "level": "info",
        "logger": "hd_compute.service",
        "operation": "bundle",
        "dimension": 10000,
        "input_count": 100,
        "duration_ms": 15.2,
        "device": "cpu",
        "status": 200,
        "correlation_id": "c-1",
    }
    assert {k: failed[k] for k in ("event", "level", "operation", "error", "status", "detail")} == {
        "event": "request_failed",
        "level": "warning",
        "operation": "bundle",
        "error": "invalid_argument",
        "status": 400,
        "detail": "vectors: x",
    }
    value = metrics.registry.get_sample_value
    assert value("hdc_operation_total", {"operation": "bundle"}) == 3
    assert value("hdc_hypervector_operations_total", {"operation": "bundle"}) == 100
    assert value("hdc_operation_errors_total", {"operation": "bundle", "error": "invalid_argument"}) == 1
    assert value("hdc_operation_errors_total", {"operation": "bundle", "error": "cuda_out_of_memory"}) == 1
    assert value("hdc_operation_duration_seconds_count", {"operation": "bundle"}) == 3
