"""OpenTelemetry tracing of the worker, configured by the standard OTEL_* environment variables.

    provider = configure_tracing("hdc-worker")             # once, at startup
    with server_span("POST /v1/bundle", request.headers):  # continues the caller's W3C trace, if any
        with kernel_span("bundle", input_count=100, dimension=10000):
            result = hd.bundle(...)

Spans are exported over OTLP/HTTP when OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT is set
(the exporter itself reads those, OTEL_EXPORTER_OTLP_*_HEADERS, *_TIMEOUT, *_CERTIFICATE ...); without an
endpoint spans are created (trace ids reach the logs) but not exported. OTEL_TRACES_EXPORTER=none|console|otlp
overrides the choice. OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG pick the sampler, OTEL_SERVICE_NAME and
OTEL_RESOURCE_ATTRIBUTES the resource, OTEL_BSP_* the batch processor, OTEL_PROPAGATORS the propagation format
(W3C tracecontext + baggage by default) and OTEL_SDK_DISABLED=true turns tracing into no-ops.

Without any span processor (no exporter configured, none added), recording a span would be work whose result
nobody reads, so `server_span` and `kernel_span` take a light path instead: a non-recording span with a real
span context (the caller's trace id from traceparent, or a new one; a new span id; the parent's trace flags,
or the sampler's decision for a new trace) is made current, so logs carry trace_id/span_id and `inject_context` propagates it exactly as
with the SDK's spans, at a tenth of the cost. As soon as a processor is added to the provider (an exporter),
every span is a full SDK span again, with its hdc.* attributes.
"""

from __future__ import annotations

import contextlib
import os
from typing import ContextManager, Iterator, Mapping, MutableMapping, Sequence

from multidict import CIMultiDict, CIMultiDictProxy

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "configure_tracing", "shutdown_tracing", "get_tracer", "kernel_span", "server_span",
    "extract_context", "inject_context", "current_trace_id", "records_spans", "light_span_ids", "TRACER_NAME",
]

TRACER_NAME = "hd_compute"


class WorkerTracerProvider(TracerProvider):
    """The SDK's TracerProvider, knowing whether anything consumes its spans (see `is_light`)."""

    def __init__(self, *args, enabled: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.enabled = enabled
        self.has_processors = False

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        super().add_span_processor(span_processor)
        self.has_processors = True

    @property
    def is_light(self) -> bool:
        """True when spans would be recorded for no one: tracing on, but no span processor at all."""
        return self.enabled and not self.has_processors


_provider: TracerProvider | None = None


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() == "true"


def configure_tracing(service_name: str = "hdc-worker", *, set_global: bool = True) -> TracerProvider:
    """Builds the TracerProvider from the OTEL_* variables; `get_tracer()` uses it from then on.

    set_global=False keeps OpenTelemetry's process-wide provider untouched (tests; the global one can be set
    only once per process).
    """
    global _provider
    if not isinstance(service_name, str) or not service_name:
        raise ValueError(f"service_name must be a non-empty string, got {service_name!r}")
    # OTEL_SERVICE_NAME, when set, wins over the argument; the sampler comes from OTEL_TRACES_SAMPLER(_ARG).
    name = os.environ.get("OTEL_SERVICE_NAME") or service_name
    disabled = _env_true("OTEL_SDK_DISABLED")
    provider = WorkerTracerProvider(resource=Resource.create({SERVICE_NAME: name}), enabled=not disabled)
    if not disabled:
        exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if exporter_name not in ("", "otlp", "console", "none"):
            raise ValueError(f"OTEL_TRACES_EXPORTER must be otlp, console or none, got {exporter_name!r}")
        if exporter_name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif exporter_name == "otlp" or (exporter_name == "" and endpoint):
            protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
            if protocol != "http/protobuf":
                raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: only http/protobuf is supported, got {protocol!r}")
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if set_global:
        trace.set_tracer_provider(provider)
    if _provider is not None and _provider is not provider:
        _provider.shutdown()
    _provider = provider
    return provider


def shutdown_tracing() -> None:
    """Flushes and stops the configured provider (at worker shutdown)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None


def get_tracer() -> trace.Tracer:
    provider = _provider if _provider is not None else trace.get_tracer_provider()
    return provider.get_tracer(TRACER_NAME)


def _check(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{field} must be a non-negative integer, got {value!r}")


def kernel_span(operation: str, input_count: int, dimension: int, *,
                attributes: Mapping[str, object] | None = None, parent: SpanContext | None = None,
                links: Sequence[SpanContext] = ()) -> ContextManager[Span]:
    """Span `hdc_<operation>_operation` with hdc.operation, hdc.input_count, hdc.dimension and hdc.success.

    An exception inside sets hdc.success False, records the exception, marks the span ERROR and propagates.
    `parent` makes it a child of that span instead of the current one, and `links` point at the spans it also
    served (one kernel call of the micro-batcher computes the queries of several requests).
    """
    if not isinstance(operation, str) or not operation:
        raise ValueError(f"operation must be a non-empty string, got {operation!r}")
    _check("input_count", input_count)
    _check("dimension", dimension)
    light = _light_provider()
    if light is not None:
        return _LightSpan(light, f"hdc_{operation}_operation", None, SpanKind.INTERNAL)
    attrs = {"hdc.operation": operation, "hdc.input_count": input_count, "hdc.dimension": dimension}
    attrs.update(attributes or {})
    context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent is not None and parent.is_valid else None
    return _recorded_kernel_span(f"hdc_{operation}_operation", attrs, context,
                                 [Link(sc) for sc in links if sc.is_valid])


@contextlib.contextmanager
def _recorded_kernel_span(name: str, attrs: dict, context: otel_context.Context | None = None,
                          links: Sequence[Link] = ()) -> Iterator[Span]:
    with get_tracer().start_as_current_span(name, context=context, attributes=attrs, links=links,
                                            record_exception=False, set_status_on_exception=False) as span:
        try:
            yield span
        except BaseException as exc:
            span.set_attribute("hdc.success", False)
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        span.set_attribute("hdc.success", True)


def records_spans() -> bool:
    """Whether spans go anywhere: False on the light path (no span processor) and with OTEL_SDK_DISABLED=true.

    Work done only to build a span (e.g. the micro-batcher's kernel span for a batch of requests) is skipped
    when this is False."""
    provider = _provider
    if isinstance(provider, WorkerTracerProvider):
        return provider.enabled and provider.has_processors
    return True


def server_span(name: str, headers: Mapping[str, str] | None = None, *,
                attributes: Mapping[str, object] | None = None) -> ContextManager[Span]:
    """A SERVER span for one request, child of the caller's trace when `headers` carry a traceparent."""
    light = _light_provider()
    if light is not None:
        return _LightSpan(light, name, extract_context(headers or {}), SpanKind.SERVER)
    return get_tracer().start_as_current_span(name, context=extract_context(headers or {}), kind=SpanKind.SERVER,
                                              attributes=dict(attributes or {}))


def light_span_ids(headers: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """(trace_id, span_id) as hex for a request's light server span, or None when spans are recorded (an
    exporter is configured: open `server_span` instead) or tracing is disabled.

    The worker's request path on the light path: no span object and no attached context, only the ids its log
    lines carry: the caller's trace id when the headers carry the configured propagators' fields (W3C
    traceparent by default), else a new one; always a new span id."""
    provider = _light_provider()
    if provider is None:
        return None
    ids = provider.id_generator
    trace_id = 0
    if headers:
        fields, is_w3c = _global_propagator_facts()
        if _carries_any(headers, fields):
            trace_id = _w3c_trace_id(headers) if is_w3c else _extracted_trace_id(headers)
    # "%x" % n: a quarter of what format(n, "032x") costs
    return "%032x" % (trace_id or ids.generate_trace_id()), "%016x" % ids.generate_span_id()


def _extracted_trace_id(headers: Mapping[str, str]) -> int:
    """The trace id of the context the global propagator extracts from `headers`; 0 when there is none."""
    parent = trace.get_current_span(extract_context(headers)).get_span_context()
    return parent.trace_id if parent.is_valid else 0


# TraceContextTextMapPropagator's own pattern and limit (None, and no fast path, if a version lacks them)
_TRACEPARENT_RE = getattr(TraceContextTextMapPropagator, "_TRACEPARENT_HEADER_FORMAT_RE", None)
_TRACEPARENT_MAXIMUM_LENGTH = getattr(TraceContextTextMapPropagator, "_TRACEPARENT_MAXIMUM_LENGTH", 512)


def _w3c_trace_id(headers: Mapping[str, str]) -> int:
    """What _extracted_trace_id gives under OpenTelemetry's default propagators (W3C trace context + baggage),
    read from the traceparent header with the same rules as TraceContextTextMapPropagator.extract (its own
    pattern and length limit; zero ids, version ff, and extra fields after version 00 are no parent): 1.6 us
    instead of 8.9 us (timeit, the 2-core EPYC of docs/benchmarks.md), which the context, span and span context
    built for every traced request cost. tests/test_monitoring_tracing.py checks both agree on generated headers."""
    values = _GETTER.get(headers, "traceparent")
    if not values or len(values[0]) > _TRACEPARENT_MAXIMUM_LENGTH:
        return 0
    match = _TRACEPARENT_RE.search(values[0])
    if not match:
        return 0
    version, trace_id, span_id, _flags, rest = match.groups()
    if trace_id == "0" * 32 or span_id == "0" * 16 or version == "ff" or (version == "00" and rest):
        return 0
    return int(trace_id, 16)


# (the global propagator, the header names it reads, whether it is OpenTelemetry's default W3C one)
_facts_of: tuple[object, frozenset[str], bool] | None = None


def _global_propagator_facts() -> tuple[frozenset[str], bool]:
    """The header names the global propagator reads (lower case), and whether it is OpenTelemetry's default
    (OTEL_PROPAGATORS unset or "tracecontext,baggage"; or "tracecontext"), where only traceparent decides the
    caller's trace (baggage carries none). Worked out again only when the global propagator changes."""
    global _facts_of
    propagator = propagate.get_global_textmap()
    if _facts_of is None or _facts_of[0] is not propagator:
        kinds = [type(part) for part in getattr(propagator, "_propagators", [propagator])]
        is_w3c = _TRACEPARENT_RE is not None and kinds in (
            [TraceContextTextMapPropagator, W3CBaggagePropagator], [TraceContextTextMapPropagator])
        _facts_of = (propagator, frozenset(f.lower() for f in propagator.fields), is_w3c)
    return _facts_of[1], _facts_of[2]


def _carries_any(headers: Mapping[str, str], fields: frozenset[str]) -> bool:
    """Whether `headers` hold any of `fields` (lower-case names; cheap enough to ask on every request)."""
    if isinstance(headers, (CIMultiDict, CIMultiDictProxy)):  # case-insensitive lookups
        for f in fields:
            if f in headers:
                return True
        return False
    return any(isinstance(k, str) and k.lower() in fields for k in headers)


def _light_provider() -> WorkerTracerProvider | None:
    provider = _provider
    return provider if isinstance(provider, WorkerTracerProvider) and provider.is_light else None


_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)


class _LightSpan:
    """Context manager for a current, non-recording span with a valid context: the parent's trace (or a new
    one), a new span id. A root span's flags are the sampler's verdict; a child inherits its parent's flags
    (what ParentBased, the default sampler, decides). Nothing is recorded."""

    __slots__ = ("_provider", "_name", "_parent", "_kind", "_token")

    def __init__(self, provider: WorkerTracerProvider, name: str, parent: otel_context.Context | None,
                 kind: SpanKind) -> None:
        self._provider, self._name, self._parent, self._kind = provider, name, parent, kind

    def __enter__(self) -> Span:
        parent = self._parent
        parent_sc = trace.get_current_span(parent).get_span_context()
        ids = self._provider.id_generator
        if parent_sc.is_valid:
            trace_id, trace_state, flags = parent_sc.trace_id, parent_sc.trace_state, parent_sc.trace_flags
        else:
            trace_id, trace_state = ids.generate_trace_id(), None
            decision = self._provider.sampler.should_sample(parent, trace_id, self._name, self._kind).decision
            flags = _SAMPLED if decision == Decision.RECORD_AND_SAMPLE else _NOT_SAMPLED
        span = NonRecordingSpan(SpanContext(trace_id, ids.generate_span_id(), is_remote=False, trace_flags=flags,
                                            trace_state=trace_state))
        self._token = otel_context.attach(trace.set_span_in_context(span, parent))
        return span

    def __exit__(self, *exc_info) -> None:
        otel_context.detach(self._token)


class _CaseInsensitiveGetter(Getter):
    """Header lookup that works for plain dicts with any capitalisation and for multidicts."""

    def get(self, carrier, key):
        value = carrier.get(key)
        if value is None and not isinstance(carrier, (CIMultiDict, CIMultiDictProxy)):  # those ignore case
            lowered = key.lower()
            for k, v in carrier.items():
                if isinstance(k, str) and k.lower() == lowered:
                    value = v
                    break
        if value is None:
            return None
        return list(value) if isinstance(value, (list, tuple)) else [value]

    def keys(self, carrier):
        return list(carrier.keys())


_GETTER = _CaseInsensitiveGetter()


def extract_context(headers: Mapping[str, str]) -> otel_context.Context:
    """The OpenTelemetry context carried by request headers (W3C traceparent/tracestate, baggage)."""
    return propagate.extract(headers, getter=_GETTER)


def inject_context(headers: MutableMapping[str, str] | None = None,
                   context: otel_context.Context | None = None) -> MutableMapping[str, str]:
    """Adds traceparent (and tracestate, baggage) for the current or given context to `headers`; returns them."""
    carrier = {} if headers is None else headers
    propagate.inject(carrier, context=context)
    return carrier


def current_trace_id() -> str | None:
    """The current span's trace id as 32 hex digits (what the logs carry), or None outside a valid span."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
