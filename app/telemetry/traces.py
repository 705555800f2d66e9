"""Traces: a server span per request, linked to the publisher, and the flushes it joins.

The path of one message through Cloud Trace:

    publisher span ◄─link── POST /pubsub/push (server span, in the caller's trace)
                                   ▲ link
                   recordline.flush (one per batch) ─► recordline.store.append

The push span continues the trace of the incoming `traceparent` or Cloud Run's
`X-Cloud-Trace-Context`, so the stored row's `trace_id` is the one Cloud Run's
request log shows. The publisher's span arrives as a message attribute and is
linked, not adopted as parent: a Pub/Sub delivery is a new operation, and a
redelivery an hour later should not stretch the publisher's trace.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send
from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.propagators.cloud_trace_propagator import CloudTraceFormatPropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import sampling
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    Tracer,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from app.ingest.envelope import PushedMessage

log = logging.getLogger("recordline.http")

# Pub/Sub's client libraries, with tracing on, carry the publisher's context in
# these message attributes (W3C format).
PUBLISHER_TRACEPARENT = "googclient_traceparent"
PUBLISHER_TRACESTATE = "googclient_tracestate"

# Cloud Trace keeps at most 128 links per span (so does the SDK by default); a
# flush of 1,000 rows links the first 128 requests and counts the rest.
MAX_FLUSH_LINKS = 128

_w3c = TraceContextTextMapPropagator()


def propagator() -> TextMapPropagator:
    """Reads `traceparent` and Cloud Run's `X-Cloud-Trace-Context`.

    When both arrive (Cloud Run sets both, with the same trace), the W3C
    header wins because it comes last.
    """
    return CompositePropagator([CloudTraceFormatPropagator(), _w3c])


def sampler(name: str, ratio: float) -> sampling.Sampler:
    match name:
        case "always_on":
            return sampling.ALWAYS_ON
        case "always_off":
            return sampling.ALWAYS_OFF
        case "traceidratio":
            return sampling.TraceIdRatioBased(ratio)
        case "parentbased_always_off":
            return sampling.ParentBased(sampling.ALWAYS_OFF)
        case "parentbased_traceidratio":
            return sampling.ParentBased(sampling.TraceIdRatioBased(ratio))
        case _:
            return sampling.ParentBased(sampling.ALWAYS_ON)


# -- HTTP ---------------------------------------------------------------------

_CARRIED_HEADERS = frozenset({b"traceparent", b"tracestate", b"x-cloud-trace-context"})


class TracingMiddleware:
    """One SERVER span per HTTP request, current while the handler runs.

    Leaner than the generic ASGI instrumentation (no spans around `receive`
    and `send`, no per-request URL rebuilding): the push route's whole budget
    is ~170 µs per request. It runs after routing, so the span is named by
    the route template, and a 404 is not traced.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        tracer: Tracer,
        propagator: TextMapPropagator,
        untraced: frozenset[str],
    ) -> None:
        self.app = app
        self._tracer = tracer
        self._propagator = propagator
        self._untraced = untraced
        self._routes: dict[tuple[str, str], tuple[str, dict[str, str]]] = {}

    def _route(self, method: str, template: str) -> tuple[str, dict[str, str]]:
        # Name and attributes depend only on the route: built once per route.
        key = (method, template)
        found = self._routes.get(key)
        if found is None:
            attributes = {"http.request.method": method, "http.route": template}
            found = self._routes[key] = (f"{method} {template}", attributes)
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["path"] in self._untraced:
            await self.app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _CARRIED_HEADERS
        }
        parent = _parent(carrier, self._propagator)
        method = scope["method"]
        name, attributes = self._route(method, scope.get("path_template", scope["path"]))
        span = self._tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        token = context.attach(trace.set_span_in_context(span, parent))
        try:
            if not span.is_recording() and not log.isEnabledFor(logging.DEBUG):
                await self.app(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500

            async def send_and_note_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_and_note_status)
            except Exception as exc:
                span.record_exception(exc)
                raise
            finally:
                if span.is_recording():
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(StatusCode.ERROR)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug(
                        "%s %s %d",
                        method,
                        scope["path"],
                        status,
                        extra={"fields": {"httpRequest": _http_request(scope, status, started)}},
                    )
        finally:
            context.detach(token)
            span.end()


_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def _parent(carrier: dict[str, str], propagator: TextMapPropagator) -> Context:
    """The caller's context. A lone `traceparent` (plus Cloud Run's
    X-Cloud-Trace-Context, which it overrides anyway) is parsed here: ~1 µs,
    against ~14 µs through the propagator chain, on every request."""
    if not carrier:
        return Context()
    traceparent = carrier.get("traceparent")
    if traceparent is not None and "tracestate" not in carrier:
        found = _TRACEPARENT.fullmatch(traceparent)
        if found is not None:
            trace_id, span_id, flags = (int(g, 16) for g in found.groups())
            if trace_id and span_id:
                remote = SpanContext(
                    trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags & 1)
                )
                return trace.set_span_in_context(NonRecordingSpan(remote), Context())
    return propagator.extract(carrier, context=Context())


def _http_request(scope: HTTPScope, status: int, started: float) -> dict[str, Any]:
    """Cloud Logging's HttpRequest shape."""
    headers = dict(scope["headers"])
    return {
        "requestMethod": scope["method"],
        "requestUrl": scope["path"],
        "status": status,
        "latency": f"{time.perf_counter() - started:.6f}s",
        "userAgent": headers.get(b"user-agent", b"").decode("latin-1"),
        "protocol": f"HTTP/{scope.get('http_version', '1.1')}",
    }


# -- push -------------------------------------------------------------------


def push_received(message: PushedMessage, body_bytes: int) -> str | None:
    """Describe the push on the current server span; return its trace id (32 hex).

    The trace id is the incoming `traceparent`'s when there is one, and exists
    even when the span is not sampled, so every row leads to its request.
    """
    span = trace.get_current_span()
    span_context = span.get_span_context()
    if not span_context.is_valid:
        return None
    if span.is_recording():
        attributes: dict[str, str | int] = {
            "messaging.system": "gcp_pubsub",
            "messaging.operation.type": "process",
            "messaging.message.id": message.message_id,
            "messaging.message.body.size": body_bytes,
        }
        if message.subscription:
            attributes["messaging.destination.subscription.name"] = message.subscription
        if message.delivery_attempt is not None:
            attributes["messaging.gcp_pubsub.message.delivery_attempt"] = message.delivery_attempt
        if message.ordering_key:
            attributes["messaging.gcp_pubsub.message.ordering_key"] = message.ordering_key
        span.set_attributes(attributes)
        publisher = publisher_span(message.attributes)
        if publisher is not None:
            span.add_link(publisher)
    return f"{span_context.trace_id:032x}"


def publisher_span(attributes: Mapping[str, str]) -> SpanContext | None:
    """The publisher's span, from the attributes Pub/Sub's client libraries set."""
    traceparent = attributes.get(PUBLISHER_TRACEPARENT)
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent}
    if tracestate := attributes.get(PUBLISHER_TRACESTATE):
        carrier["tracestate"] = tracestate
    found = trace.get_current_span(_w3c.extract(carrier, context=Context())).get_span_context()
    return found if found.is_valid else None


# -- group commit -------------------------------------------------------------


class FlushTracer:
    """The batcher's FlushObserver: one span per flush, linked to the pushes it serves.

    A flush serves many requests from many traces, so it starts a trace of its
    own and links each request's span; the store's append span is its child.
    """

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def submitted(self) -> SpanContext | None:
        # Called in the request's context. Only sampled spans reach Cloud
        # Trace, so only they are worth a link.
        found = trace.get_current_span().get_span_context()
        return found if found.trace_flags.sampled else None

    @contextmanager
    def flushing(self, origins: Sequence[object]) -> Iterator[None]:
        requests = [o for o in origins if isinstance(o, SpanContext)]
        with self._tracer.start_as_current_span(
            "recordline.flush",
            context=Context(),
            links=[Link(o) for o in requests[:MAX_FLUSH_LINKS]],
            attributes={
                "recordline.batch.rows": len(origins),
                "recordline.batch.unlinked": max(0, len(requests) - MAX_FLUSH_LINKS),
            },
        ):
            yield


# -- store --------------------------------------------------------------------


def record_query(
    *,
    rows: int | None = None,
    bytes_processed: int | None = None,
    job_id: str | None = None,
) -> None:
    """Add what a store knows about its query to the current query span.

    The store's `page`, `latest` and `message` run inside a query span (see
    app.telemetry.store), so a store calls this from inside them, e.g. the
    BigQuery store with the job's `total_bytes_processed` and `job_id`.
    """
    span = trace.get_current_span()
    if not span.is_recording():
        return
    attributes: dict[str, str | int] = {}
    if rows is not None:
        attributes["db.response.returned_rows"] = rows
    if bytes_processed is not None:
        attributes["gcp.bigquery.total_bytes_processed"] = bytes_processed
    if job_id is not None:
        attributes["gcp.bigquery.job.id"] = job_id
    span.set_attributes(attributes)
