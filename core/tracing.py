"""Traces (OpenTelemetry), optional at run time, shared by the API and the workers.

With ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, ``setup`` installs the OpenTelemetry SDK with an OTLP/HTTP exporter and
each job is one trace::

    submit (API, the client's ``traceparent`` as parent) -> enqueue -> job (worker: dequeue to done)
        -> store.write (each result file) -> finish (the record's FINISH: the done event)
    forward (worker, one per batched network forward, its own trace) -- linked to the job span of every job in it

The trace context travels with the job in its record (the field ``traceparent``, W3C format), written by the
submission's one pipeline: no extra Redis command. Unset (the default), ``active`` is False, nothing of
OpenTelemetry is imported, and every helper here returns at once.
"""

from __future__ import annotations

import atexit
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

TRACEPARENT_RE = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")

#: True once a tracer is installed (``setup`` with an endpoint, or ``install`` in a test)
active = False
_tracer: Any = None
_provider: Any = None


def setup(endpoint: str | None, service: str) -> bool:
    """Export this process's spans to the OTLP/HTTP collector at ``endpoint`` (``http://host:4318``, or the
    full ``.../v1/traces``) as service ``OTEL_SERVICE_NAME`` (default ``service``); False (and nothing imported)
    without an endpoint."""
    if not endpoint:
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    url = endpoint if endpoint.rstrip("/").endswith("/v1/traces") else endpoint.rstrip("/") + "/v1/traces"
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    install(provider)
    atexit.register(provider.shutdown)
    return True


def install(provider: Any) -> None:
    """Trace with ``provider`` (an SDK ``TracerProvider``; tests give one with an in-memory exporter)."""
    global active, _tracer, _provider
    _provider, _tracer, active = provider, provider.get_tracer("diffusion-service"), True


def uninstall() -> None:
    global active, _tracer, _provider
    active, _tracer, _provider = False, None, None


def _context(traceparent: str | None) -> Any:
    """The OpenTelemetry context of a W3C ``traceparent`` (None: the current context)."""
    if not traceparent or not TRACEPARENT_RE.fullmatch(traceparent):
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})


def _kind(name: str) -> Any:
    from opentelemetry.trace import SpanKind

    return getattr(SpanKind, name.upper())


@contextmanager
def span(
    name: str, *, parent: str | None = None, kind: str = "internal", attributes: dict[str, Any] | None = None
) -> Iterator[Any]:
    """A span around the block, current inside it: a child of ``parent`` (a W3C traceparent) when given and
    valid, else of the current span. Yields None when tracing is off."""
    if not active:
        yield None
        return
    with _tracer.start_as_current_span(
        name, context=_context(parent), kind=_kind(kind), attributes=attributes
    ) as current:
        yield current


def traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span (None when tracing is off or no span is current)."""
    if not active:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


def current() -> Any:
    """The current span's context (for a link), or None."""
    if not active:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


def record(
    name: str, start_ns: int, end_ns: int, *, links: Sequence[Any] = (), attributes: dict[str, Any] | None = None
) -> None:
    """A finished span of its own trace, from ``start_ns`` to ``end_ns`` (``time.time_ns()``), linked to the span
    contexts ``links``: one batched forward, linked to every job in it."""
    if not active:
        return
    from opentelemetry import context as otel_context
    from opentelemetry.trace import Link

    one = _tracer.start_span(
        name,
        context=otel_context.Context(),
        links=[Link(c) for c in links if c is not None],
        attributes=attributes,
        start_time=start_ns,
    )
    one.end(end_time=end_ns)
