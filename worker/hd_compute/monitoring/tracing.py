"""OpenTelemetry tracing of the worker, configured by the standard OTEL_* environment variables.

    provider = configure_tracing("hdc-worker")             # once, at startup
    with kernel_span("bundle", input_count=100, dimension=10000):
        result = hd.bundle(...)

A request's SERVER span is opened by the per-request facade (monitoring/requests.py), through the same tracer.

Spans are exported over OTLP/HTTP when OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT is set
(the exporter itself reads those, OTEL_EXPORTER_OTLP_*_HEADERS, *_TIMEOUT, *_CERTIFICATE ...).
OTEL_TRACES_EXPORTER=none|console|otlp overrides the choice. OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG pick
the sampler, OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES the resource, OTEL_BSP_* the batch processor,
OTEL_PROPAGATORS the propagation format (W3C tracecontext + baggage by default) and OTEL_SDK_DISABLED=true turns
tracing into no-ops (no ids at all).

Without any span processor (no exporter configured, none added), recording a span would be work whose result
nobody reads. The provider's sampler then answers DROP (`ExportedOnlySampler`), so the SDK hands out
non-recording spans, which still carry real ids: the caller's trace id (or a new one) and a new span id. Log
lines take their trace_id and span_id from them, and `inject_context` propagates them. Their trace flags say
"not sampled", which is true: nothing records them. As soon as a processor is added (an exporter), the
configured sampler decides again and spans are recorded with their hdc.* attributes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Sampler, SamplingResult
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

__all__ = [
    "configure_tracing",
    "shutdown_tracing",
    "get_tracer",
    "kernel_span",
    "extract_context",
    "inject_context",
    "current_trace_id",
    "records_spans",
    "WorkerTracerProvider",
    "ExportedOnlySampler",
    "TRACER_NAME",
]

TRACER_NAME = "hd_compute"


class ExportedOnlySampler(Sampler):
    """The configured sampler while the provider exports spans; DROP (non-recording spans with real ids) while
    nothing would receive them. Decides per span, so an exporter added later takes effect at once."""

    def __init__(self, configured: Sampler, provider: WorkerTracerProvider) -> None:
        self.configured = configured
        self._provider = provider

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        sampler = self.configured if self._provider.span_processors else ALWAYS_OFF
        return sampler.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"ExportedOnly{{{self.configured.get_description()}}}"


class WorkerTracerProvider(TracerProvider):
    """The SDK's TracerProvider (sampler from OTEL_TRACES_SAMPLER, OTEL_SDK_DISABLED honoured), knowing its span
    processors (`span_processors`), with its sampler wrapped in ExportedOnlySampler."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.span_processors: list[SpanProcessor] = []
        self.sampler = ExportedOnlySampler(self.sampler, self)  # before any tracer is made: they copy it
        # OTEL_SDK_DISABLED=true: the SDK hands out no-op tracers (no ids at all)
        self.enabled = not isinstance(self.get_tracer(TRACER_NAME), trace.NoOpTracer)

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        super().add_span_processor(span_processor)
        self.span_processors.append(span_processor)

    @property
    def is_light(self) -> bool:
        """True when spans go nowhere (tracing on, no span processor): the SDK hands out non-recording spans
        that carry real ids."""
        return self.enabled and not self.span_processors


_provider: TracerProvider | None = None
# (provider, its tracer): TracerProvider.get_tracer takes a lock and builds a scope on every call
_tracer_of: tuple[TracerProvider, trace.Tracer] | None = None


def configure_tracing(service_name: str = "hdc-worker", *, set_global: bool = True) -> WorkerTracerProvider:
    """Builds the TracerProvider from the OTEL_* variables; `get_tracer()` uses it from then on.

    set_global=False keeps OpenTelemetry's process-wide provider untouched (tests; the global one can be set
    only once per process).
    """
    global _provider
    if not isinstance(service_name, str) or not service_name:
        raise ValueError(f"service_name must be a non-empty string, got {service_name!r}")
    # OTEL_SERVICE_NAME, when set, wins over the argument; the sampler comes from OTEL_TRACES_SAMPLER(_ARG).
    name = os.environ.get("OTEL_SERVICE_NAME") or service_name
    provider = WorkerTracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    if provider.enabled:
        exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if exporter_name not in ("", "otlp", "console", "none"):
            raise ValueError(f"OTEL_TRACES_EXPORTER must be otlp, console or none, got {exporter_name!r}")
        if exporter_name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif exporter_name == "otlp" or (exporter_name == "" and endpoint):
            protocol = (
                os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            )
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
    """The worker's tracer: the configured provider's, else the global provider's."""
    global _tracer_of
    provider = _provider
    if provider is None:
        return trace.get_tracer_provider().get_tracer(TRACER_NAME)
    cached = _tracer_of
    if cached is None or cached[0] is not provider:
        cached = _tracer_of = (provider, provider.get_tracer(TRACER_NAME))
    return cached[1]


def records_spans() -> bool:
    """Whether spans go anywhere: False without a span processor and with OTEL_SDK_DISABLED=true.

    Work done only to build a span (a kernel span, the micro-batcher's span of a batch of requests, a request
    span's attributes) is skipped when this is False."""
    provider = _provider
    if isinstance(provider, WorkerTracerProvider):
        return provider.enabled and bool(provider.span_processors)
    return True


def _check(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{field} must be a non-negative integer, got {value!r}")


def kernel_span(
    operation: str,
    input_count: int,
    dimension: int,
    *,
    attributes: Mapping[str, object] | None = None,
    parent: SpanContext | None = None,
    links: Sequence[SpanContext] = (),
) -> contextlib.AbstractContextManager[Span]:
    """Span `hdc_<operation>_operation` with hdc.operation, hdc.input_count, hdc.dimension and hdc.success.

    An exception inside sets hdc.success False, records the exception, marks the span ERROR and propagates.
    `parent` makes it a child of that span instead of the current one, and `links` point at the spans it also
    served (one kernel call of the micro-batcher computes the queries of several requests).
    """
    if not isinstance(operation, str) or not operation:
        raise ValueError(f"operation must be a non-empty string, got {operation!r}")
    _check("input_count", input_count)
    _check("dimension", dimension)
    attrs = {"hdc.operation": operation, "hdc.input_count": input_count, "hdc.dimension": dimension}
    attrs.update(attributes or {})
    context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent is not None and parent.is_valid else None
    return _kernel_span(f"hdc_{operation}_operation", attrs, context, [Link(sc) for sc in links if sc.is_valid])


@contextlib.contextmanager
def _kernel_span(
    name: str, attrs: dict[str, Any], context: otel_context.Context | None, links: Sequence[Link]
) -> Iterator[Span]:
    with get_tracer().start_as_current_span(
        name, context=context, attributes=attrs, links=links, record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            yield span
        except BaseException as exc:
            span.set_attribute("hdc.success", False)
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        span.set_attribute("hdc.success", True)


class _CaseInsensitiveGetter(Getter[Mapping[str, Any]]):
    """Header lookup that works for plain dicts with any capitalisation and for multidicts."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
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

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier.keys())


_GETTER = _CaseInsensitiveGetter()


def extract_context(headers: Mapping[str, str]) -> otel_context.Context:
    """The OpenTelemetry context carried by request headers (W3C traceparent/tracestate, baggage)."""
    return propagate.extract(headers, getter=_GETTER)


def inject_context(
    headers: MutableMapping[str, str] | None = None, context: otel_context.Context | None = None
) -> MutableMapping[str, str]:
    """Adds traceparent (and tracestate, baggage) for the current or given context to `headers`; returns them."""
    carrier: MutableMapping[str, str] = {} if headers is None else headers
    propagate.inject(carrier, context=context)
    return carrier


def current_trace_id() -> str | None:
    """The current span's trace id as 32 hex digits (what the logs carry), or None outside a valid span."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
