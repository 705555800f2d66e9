"""Traces: a server span per request, linked to the publisher, and the flushes it joins.

The path of one message through Cloud Trace:

    publisher span ◄─link── POST /pubsub/push (server span, in the caller's trace)
                                   ▲ link
                   recordline.flush (one per batch) ─► recordline.store.append

The server span is Litestar's OpenTelemetry plugin's (the ASGI
instrumentation); it continues the trace of the incoming `traceparent` or
Cloud Run's `X-Cloud-Trace-Context`, so the stored row's `trace_id` is the one
Cloud Run's request log shows. The publisher's span arrives as a message
attribute and is linked, not adopted as parent: a Pub/Sub delivery is a new
operation, and a redelivery an hour later should not stretch the publisher's
trace.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from litestar import Litestar
from litestar.exceptions import HTTPException
from litestar.types import Scope
from litestar.utils import normalize_path
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.cloud_trace_propagator import CloudTraceFormatPropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import sampling
from opentelemetry.trace import Link, SpanContext, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from app.ingest.envelope import PushedMessage

# Pub/Sub's client libraries, with tracing on, carry the publisher's context in
# these message attributes (W3C format).
PUBLISHER_TRACEPARENT = "googclient_traceparent"
PUBLISHER_TRACESTATE = "googclient_tracestate"

# Cloud Trace keeps at most 128 links per span (so does the SDK by default); a
# flush of 1,000 rows links the first 128 requests and counts the rest.
MAX_FLUSH_LINKS = 128

_w3c = TraceContextTextMapPropagator()
# Reads `traceparent` and Cloud Run's `X-Cloud-Trace-Context`. When both
# arrive (Cloud Run sets both, with the same trace), the W3C header wins
# because it comes last. One instance, so installing it twice is a no-op.
REQUEST_PROPAGATOR = CompositePropagator([CloudTraceFormatPropagator(), _w3c])


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


def configure_http_instrumentation() -> None:
    """Set the two things the ASGI instrumentation reads only from the process.

    It extracts the caller's context with the *global* propagator
    (`opentelemetry.propagate.extract`) and takes neither a propagator nor a
    getter of ours, so the one that reads X-Cloud-Trace-Context has to be
    global. Every app in the process wants the same one, so sharing it is
    harmless; OTEL_PROPAGATORS is not consulted, as these two headers are
    what Cloud Run sends.

    It also names attributes and metrics after the stable HTTP conventions
    (`http.response.status_code`, `http.server.request.duration` by
    `http.route`) only when OTEL_SEMCONV_STABILITY_OPT_IN says so, and reads
    that once, when the first app is built; an operator's own value wins.
    """
    if propagate.get_global_textmap() is not REQUEST_PROPAGATOR:
        propagate.set_global_textmap(REQUEST_PROPAGATOR)
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")


def route_span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    """`POST /pubsub/push`, `GET /v1/records/{record_id}`: a server span named by its route.

    The plugin's middleware wraps the router, so the span starts before
    routing has put `path_template` in the scope. The route is looked up here
    in the router's own cache, which the router then hits again (<1 µs). A
    path without a route (404, 405) names the span by its method alone, so
    a scan of random paths adds no span names.
    """
    method = str(scope.get("method", ""))  # only HTTP scopes reach it
    try:
        route = Litestar.from_scope(scope).asgi_router.handle_routing(
            path=normalize_path(scope["path"]), method=method
        )
    except HTTPException:
        return method, {}
    return _route_details(method, route[4])


@functools.cache
def _route_details(method: str, template: str) -> tuple[str, dict[str, Any]]:
    # Name and attributes depend only on the route: built once per route. The
    # instrumentation copies the attributes, never changes them.
    return f"{method} {template}", {"http.route": template}


# -- push -------------------------------------------------------------------


def push_received(
    message: PushedMessage, body_bytes: int, headers: Mapping[str, str]
) -> str | None:
    """Describe the push on the current server span; return its trace id (32 hex).

    The trace id is the incoming `traceparent`'s when there is one, and exists
    even when the span is not sampled, so every row leads to its request. With
    tracing off there is no server span, and it comes from the headers.
    """
    span = trace.get_current_span()
    span_context = span.get_span_context()
    if not span_context.is_valid:
        return incoming_trace_id(headers)
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


_HEX = frozenset("0123456789abcdef")
_NO_TRACE = "0" * 32


def incoming_trace_id(headers: Mapping[str, str]) -> str | None:
    """The caller's trace id: W3C `traceparent`, else Cloud Run's X-Cloud-Trace-Context.

    A direct parse (~1 µs): the propagators cost ~14 µs, on every push.
    """
    for value in (headers.get("traceparent", "")[3:35], headers.get("x-cloud-trace-context", "")):
        trace_id = value.split("/", 1)[0].lower()
        if len(trace_id) == 32 and trace_id != _NO_TRACE and _HEX.issuperset(trace_id):
            return trace_id
    return None


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
