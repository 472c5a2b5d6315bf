"""Attempts as OpenTelemetry spans: `[tracing] enabled = true`, with `pip install 'jobd[otel]'`.

Imported only through `jobd.tracing.open_tracer`. Each attempt is a span named
`run TYPE`, a child of the span whose `traceparent` the job was submitted with (a root
span when it had none), current in the attempt's task so that a handler's own spans are
its children. Spans leave through the SDK's batch processor, on its own thread, to the
OTLP/HTTP exporter, both configured by the standard variables: OTEL_EXPORTER_OTLP_ENDPOINT
(or ..._TRACES_ENDPOINT), ..._HEADERS, ..._TIMEOUT, OTEL_SERVICE_NAME (default "jobd"),
OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_SCHEDULE_DELAY and the other OTEL_BSP_* limits. The
provider also becomes the process's global one, so plugins that trace export with it.
"""

from __future__ import annotations

from opentelemetry import context, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from jobd.job import Job
from jobd.store import Outcome

_TRACER_NAME = "jobd"
_DEFAULT_SERVICE = "jobd"
# The outcomes of an attempt that failed: its span's status is an error.
_FAILED = frozenset({Outcome.RETRIED.value, Outcome.FAILED.value})


class _Attempt:
    """An attempt's span, and the context token that makes it current in its task."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self._token = context.attach(trace.set_span_in_context(span))

    def finish(self, outcome: str, error: str | None) -> None:
        span = self._span
        span.set_attribute("jobd.job.outcome", outcome)
        if error is not None:
            span.set_attribute("jobd.job.error", error)
        if outcome in _FAILED:
            span.set_status(trace.StatusCode.ERROR, error)
        elif outcome == Outcome.COMPLETED.value:
            span.set_status(trace.StatusCode.OK)
        span.end()
        context.detach(self._token)


class OtelTracer:
    def __init__(self, provider: TracerProvider, version: str) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer(_TRACER_NAME, version)
        self._propagator = TraceContextTextMapPropagator()

    def start(self, job: Job) -> _Attempt:
        parent = None
        if job.traceparent is not None:
            parent = self._propagator.extract({"traceparent": job.traceparent})
        span = self._tracer.start_span(
            f"run {job.type}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "jobd.job.id": str(job.id),
                "jobd.job.type": job.type,
                "jobd.job.queue": job.queue,
                "jobd.job.attempt": job.attempts,
            },
        )
        return _Attempt(span)

    def shutdown(self) -> None:
        self._provider.shutdown()


def start_tracing(version: str) -> OtelTracer:
    """A tracer exporting over OTLP/HTTP as the OTEL_* variables say."""
    resource = Resource.create({SERVICE_VERSION: version})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: _DEFAULT_SERVICE}))  # OTEL_SERVICE_NAME unset
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return OtelTracer(provider, version)
