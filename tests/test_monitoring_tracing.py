"""Tracing: kernel_span attributes, errors, W3C traceparent round trip, OTEL_* configuration."""

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from hd_compute.monitoring import tracing
from hd_compute.monitoring.tracing import (
    configure_tracing, current_trace_id, extract_context, get_tracer, inject_context, kernel_span, server_span,
)

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
OTEL_VARS = ["OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
             "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_TRACES_SAMPLER",
             "OTEL_TRACES_SAMPLER_ARG", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"]


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


def processors(provider):
    return [p for p in provider._active_span_processor._span_processors]


def test_kernel_span_attributes(spans):
    with kernel_span("bundle", input_count=100, dimension=10000, attributes={"hdc.device": "cpu"}):
        pass
    (span,) = spans.get_finished_spans()
    assert span.name == "hdc_bundle_operation"
    assert dict(span.attributes) == {"hdc.operation": "bundle", "hdc.input_count": 100, "hdc.dimension": 10000,
                                     "hdc.device": "cpu", "hdc.success": True}
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


@pytest.mark.parametrize("kwargs, field", [
    ({"operation": "", "input_count": 1, "dimension": 1}, "operation"),
    ({"operation": "bind", "input_count": -1, "dimension": 1}, "input_count"),
    ({"operation": "bind", "input_count": 1, "dimension": 2.5}, "dimension"),
])
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
    with server_span("POST /v1/bundle", {"traceparent": PARENT}):
        with kernel_span("bundle", input_count=3, dimension=100):
            pass
    kernel, server = spans.get_finished_spans()
    assert server.kind == SpanKind.SERVER
    assert server.context.trace_id == kernel.context.trace_id == int(TRACE_ID, 16)
    assert kernel.parent.span_id == server.context.span_id
    assert server.parent.span_id == int("b7ad6b7169203331", 16)


def test_no_traceparent_starts_a_new_trace(spans):
    assert current_trace_id() is None
    with server_span("GET /health", {}):
        assert current_trace_id() not in (None, TRACE_ID)


def test_otlp_exporter_only_with_an_endpoint(monkeypatch):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = configure_tracing(set_global=False)
    assert processors(provider) == []  # no endpoint: spans for the logs, nothing exported
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector.invalid:4318")
    provider = configure_tracing(set_global=False)
    (processor,) = processors(provider)
    exporter = processor._batch_processor._exporter
    assert isinstance(exporter, OTLPSpanExporter)
    assert exporter._endpoint == "http://collector.invalid:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://other.invalid:4318/custom")
    (processor,) = processors(configure_tracing(set_global=False))
    assert processor._batch_processor._exporter._endpoint == "http://other.invalid:4318/custom"
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert processors(configure_tracing(set_global=False)) == []


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
    assert processors(provider) == []
    with kernel_span("bind", 1, 8) as span:
        assert not span.get_span_context().is_valid


def test_unsupported_settings_are_named(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER"):
        configure_tracing(set_global=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        configure_tracing(set_global=False)


def test_without_processors_spans_are_light_but_carry_the_trace():
    """No exporter: nothing is recorded, yet the caller's trace continues, ids reach the logs and propagate."""
    provider = configure_tracing(set_global=False)
    assert provider.is_light
    with server_span("POST /v1/ops/bind", {"TraceParent": PARENT, "tracestate": "vendor=1"}) as server:
        assert not server.is_recording()
        assert current_trace_id() == TRACE_ID
        server_id = server.get_span_context().span_id
        assert server_id not in (0, int("b7ad6b7169203331", 16))
        with kernel_span("bind", input_count=2, dimension=64) as kernel:
            assert current_trace_id() == TRACE_ID
            assert kernel.get_span_context().span_id not in (0, server_id)
            out = inject_context({})
        assert inject_context({})["traceparent"] == f"00-{TRACE_ID}-{server_id:016x}-01"
    version, trace_id, span_id, flags = out["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01") and span_id == f"{kernel.get_span_context().span_id:016x}"
    assert out["tracestate"] == "vendor=1"
    assert current_trace_id() is None  # detached on exit
    # no traceparent: a new trace; an unsampled caller stays unsampled
    with server_span("GET /health", {}):
        assert current_trace_id() not in (None, TRACE_ID)
    with server_span("GET /health", {"traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-00"}):
        assert inject_context({})["traceparent"].endswith("-00")


def test_light_spans_turn_into_recorded_spans_once_an_exporter_is_added():
    provider = configure_tracing(set_global=False)
    with kernel_span("bind", 1, 8) as span:
        assert not span.is_recording()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert not provider.is_light
    with server_span("POST /v1/ops/bind", {"traceparent": PARENT}):
        with kernel_span("bind", 1, 8) as span:
            assert span.is_recording()
    kernel, server = exporter.get_finished_spans()
    assert kernel.attributes["hdc.operation"] == "bind" and kernel.attributes["hdc.success"] is True
    assert server.context.trace_id == kernel.context.trace_id == int(TRACE_ID, 16)


def test_sampler_decides_the_flags_of_light_spans(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    configure_tracing(set_global=False)
    with server_span("GET /x", {}):
        assert current_trace_id() is not None
        assert inject_context({})["traceparent"].endswith("-00")


def test_light_span_ids_continue_the_callers_trace_without_a_span():
    """The worker's request path without an exporter: only the ids its log lines carry, no span object."""
    from multidict import CIMultiDict, CIMultiDictProxy

    from hd_compute.monitoring.tracing import light_span_ids

    provider = configure_tracing(set_global=False)
    trace_id, span_id = light_span_ids({"TraceParent": PARENT, "tracestate": "vendor=1"})
    assert trace_id == TRACE_ID and len(span_id) == 16 and span_id not in ("0" * 16, "b7ad6b7169203331")
    assert light_span_ids(CIMultiDictProxy(CIMultiDict({"traceparent": PARENT})))[0] == TRACE_ID
    new_trace, new_span = light_span_ids({"Accept": "application/json"})
    assert len(new_trace) == 32 and new_trace not in ("0" * 32, TRACE_ID) and new_span != span_id
    assert light_span_ids({"traceparent": "garbage"})[0] not in (TRACE_ID, "0" * 32)  # unreadable: a new trace
    assert current_trace_id() is None  # nothing was attached
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    assert light_span_ids({"traceparent": PARENT}) is None  # spans are recorded now: open server_span instead


HEX = "0123456789abcdef"


def _traceparents():
    """traceparent values around the W3C format: valid ones and each way of being invalid or odd."""
    from hypothesis import strategies as st

    def hex_text(n):
        return st.text(alphabet=HEX, min_size=n, max_size=n)

    version = st.one_of(st.sampled_from(["00", "01", "ff", "0g", "0", "000", "FF"]), hex_text(2))
    trace_id = st.one_of(hex_text(32), st.just("0" * 32), hex_text(31), st.just(TRACE_ID.upper()))
    span_id = st.one_of(hex_text(16), st.just("0" * 16), hex_text(17))
    flags = st.one_of(st.sampled_from(["00", "01", "0x"]), hex_text(2))
    rest = st.sampled_from(["", "-", "-future", " ", "\t ", "\n", "x", "-" + "a" * 600])
    lead = st.sampled_from(["", " ", "\t", "x"])
    built = st.tuples(lead, version, trace_id, span_id, flags, rest).map(
        lambda t: f"{t[0]}{t[1]}-{t[2]}-{t[3]}-{t[4]}{t[5]}")
    return st.one_of(built, st.text(max_size=80))


def test_the_w3c_fast_path_reads_the_trace_as_opentelemetry_extracts_it():
    """Under the default propagators light_span_ids reads traceparent itself; it must agree with what
    OpenTelemetry's own extraction gives for every header, valid or not, in any case of the header's name."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from multidict import CIMultiDict, CIMultiDictProxy

    assert tracing._global_propagator_facts()[1]  # OTEL_PROPAGATORS unset: tracecontext + baggage

    @settings(max_examples=600, deadline=None)
    @given(value=_traceparents(), name=st.sampled_from(["traceparent", "TraceParent"]),
           second=st.one_of(st.none(), st.just(PARENT)), baggage=st.booleans())
    def agree(value, name, second, baggage):
        pairs = [(name, value)] + ([("traceparent", second)] if second else []) + \
            ([("baggage", "k=v")] if baggage else [])
        for headers in (CIMultiDictProxy(CIMultiDict(pairs)), dict(pairs[:1] + pairs[2:])):
            assert tracing._w3c_trace_id(headers) == tracing._extracted_trace_id(headers), (value, headers)

    agree()
    assert tracing._w3c_trace_id({"traceparent": PARENT}) == int(TRACE_ID, 16)
    assert tracing._w3c_trace_id({"traceparent": f"ff-{TRACE_ID}-b7ad6b7169203331-01"}) == 0
    assert tracing._w3c_trace_id({"traceparent": PARENT + "-extra"}) == 0  # version 00 has exactly four fields
    assert tracing._w3c_trace_id({"traceparent": "01" + PARENT[2:] + "-extra"}) == int(TRACE_ID, 16)
    too_long = "01" + PARENT[2:] + "-" + "a" * 600  # over OpenTelemetry's 512 characters: no parent
    assert tracing._w3c_trace_id({"traceparent": too_long}) == tracing._extracted_trace_id({"traceparent": too_long}) == 0


def test_light_span_ids_follow_a_propagator_that_is_not_the_default(monkeypatch):
    """Another global propagator (here: baggage only, which carries no trace) decides through OpenTelemetry's
    extraction, not the traceparent fast path."""
    from opentelemetry import propagate
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator

    from hd_compute.monitoring.tracing import light_span_ids

    configure_tracing(set_global=False)
    default = propagate.get_global_textmap()
    try:
        propagate.set_global_textmap(CompositePropagator([W3CBaggagePropagator()]))
        assert not tracing._global_propagator_facts()[1]
        trace_id, _ = light_span_ids({"traceparent": PARENT, "baggage": "k=v"})
        assert trace_id != TRACE_ID and len(trace_id) == 32  # baggage carries no trace: a new one
    finally:
        propagate.set_global_textmap(default)
    assert tracing._global_propagator_facts()[1] and light_span_ids({"traceparent": PARENT})[0] == TRACE_ID


def test_light_span_ids_are_none_when_tracing_is_disabled(monkeypatch):
    from hd_compute.monitoring.tracing import light_span_ids

    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    configure_tracing(set_global=False)
    assert light_span_ids({"traceparent": PARENT}) is None
