"""Traces: a server span per request, linked to the publisher, and the flushes it joins.

`ServerSpans` continues the trace of the incoming `traceparent` or Cloud Run's
`X-Cloud-Trace-Context`, so a stored row's `trace_id` is the one Cloud Run's
request log shows; the publisher's span is linked, not adopted as parent (a
redelivery an hour later should not stretch the publisher's trace). A push its
caller did not sample starts no span: its ids are kept in `UNSAMPLED_CALLER`.

Design: docs/observability.md
"""

from __future__ import annotations

import contextvars
import functools
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.cloud_trace_propagator import CloudTraceFormatPropagator
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

# Pub/Sub's client libraries, with tracing on, carry the publisher's context in
# these message attributes (W3C format).
PUBLISHER_TRACEPARENT = "googclient_traceparent"
PUBLISHER_TRACESTATE = "googclient_tracestate"
# Cloud Trace keeps at most 128 links per span (so does the SDK by default); a
# flush of 1,000 rows links the first 128 requests and counts the rest.
MAX_FLUSH_LINKS = 128

_w3c = TraceContextTextMapPropagator()
_cloud = CloudTraceFormatPropagator()


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


def follows_callers(chosen: sampling.Sampler) -> bool:
    """Whether `chosen` samples a request exactly when its remote caller did.

    True of ParentBased with its default samplers for remote parents (every
    `parentbased_*` one), read from the description the SDK publishes for it.
    """
    description = chosen.get_description()
    return description.startswith("ParentBased{") and (
        ",remoteParentSampled:AlwaysOnSampler,remoteParentNotSampled:AlwaysOffSampler,"
        in description
    )


# -- the caller ----------------------------------------------------------------


class CallerSpan:
    """A remote caller's span, as a request's trace headers name it.

    A push the caller did not sample needs only its trace id in hex (for the
    row) and its flags; the SpanContext (two hex parses and the API's checks,
    ~12k instructions) is built only if something asks for it: a server span
    as its parent, a log line.
    """

    def __init__(self, trace_id_hex: str, span_id_hex: str, flags: TraceFlags) -> None:
        self.trace_id_hex = trace_id_hex
        self.span_id_hex = span_id_hex
        self.trace_flags = flags

    @functools.cached_property
    def span_context(self) -> SpanContext:
        return SpanContext(
            int(self.trace_id_hex, 16),
            int(self.span_id_hex, 16),
            is_remote=True,
            trace_flags=self.trace_flags,
        )


_TRACEPARENT_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_FLAGS = {f"{flags:02x}": TraceFlags(flags) for flags in range(256)}
_NO_TRACE, _NO_SPAN = "0" * 32, "0" * 16


def caller_span(traceparent: str, tracestate: str | None = None) -> CallerSpan | None:
    """The W3C caller's span, or None if `traceparent` is not valid.

    Version 00 without a `tracestate` (what Cloud Run and Pub/Sub send) is
    read here in ~1 µs; anything else goes to the SDK's propagator (~5 µs),
    which this agrees with on every input (tests/telemetry/test_traces.py).
    """
    if tracestate is None and (m := _TRACEPARENT_00.fullmatch(traceparent)):
        trace_id, span_id, flags = m.groups()
        if trace_id == _NO_TRACE or span_id == _NO_SPAN:
            return None
        return CallerSpan(trace_id, span_id, _FLAGS[flags])
    carrier = {"traceparent": traceparent}
    if tracestate is not None:
        carrier["tracestate"] = tracestate
    return _extracted(_w3c, carrier)


def _extracted(propagator: TextMapPropagator, carrier: dict[str, str]) -> CallerSpan | None:
    found = trace.get_current_span(propagator.extract(carrier, context=Context()))
    span_context = found.get_span_context()
    if not span_context.is_valid:
        return None
    span = CallerSpan(
        f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}", span_context.trace_flags
    )
    span.span_context = span_context  # with its trace state, as the propagator read it
    return span


def incoming_caller(
    traceparent: str | None, tracestate: str | None, cloud: str | None
) -> CallerSpan | None:
    """The caller's span from a request's trace headers, or None if it sent no valid one.

    A valid `traceparent` wins over Cloud Run's `X-Cloud-Trace-Context`
    (`TRACE_ID/SPAN_ID;o=FLAGS`; Cloud Run sends both, for the same trace).
    Google's propagator reads that header's hex in lower case only, and an
    upper-case id names the same trace, so it is lowered first.
    """
    caller = None if traceparent is None else caller_span(traceparent, tracestate)
    if caller is None and cloud is not None:
        caller = _extracted(_cloud, {"x-cloud-trace-context": cloud.lower()})
    return caller


def incoming_trace_id(headers: Mapping[str, str]) -> str | None:
    """The caller's trace id with tracing off: the one the server span would continue."""
    caller = incoming_caller(
        headers.get("traceparent"), headers.get("tracestate"), headers.get("x-cloud-trace-context")
    )
    return None if caller is None else caller.trace_id_hex


# The caller's span while a request it did not sample runs: what a row and a log
# line need, without the OpenTelemetry context (~5,000 instructions a push to
# attach and detach) that nothing downstream would read.
UNSAMPLED_CALLER: contextvars.ContextVar[CallerSpan | None] = contextvars.ContextVar(
    "recordline_unsampled_caller", default=None
)


def current_caller() -> SpanContext | None:
    """The span a log line belongs to: the current span, or an unsampled caller's."""
    found = trace.get_current_span().get_span_context()
    if found.is_valid:
        return found
    caller = UNSAMPLED_CALLER.get()
    return None if caller is None else caller.span_context


# -- HTTP ---------------------------------------------------------------------


class ServerSpans:
    """Plain ASGI middleware: a SERVER span per request, named by its route, in the caller's trace.

    Installed on the routers whose requests are worth a trace (push and reads,
    see app.asgi), so probes, scrapes and the docs never reach it. It runs
    after routing (`path_template` is known), so a path without a route (404,
    405) is answered without a span. Attributes are given once, when the span
    starts, and the status code when the response starts.
    """

    def __init__(self, app: ASGIApp, *, tracer: Tracer, follow_callers: bool) -> None:
        self.app = app
        self.tracer = tracer
        self.follow_callers = follow_callers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])  # the last of a repeated header wins
        traceparent, cloud = headers.get(b"traceparent"), headers.get(b"x-cloud-trace-context")
        tracestate = headers.get(b"tracestate")
        caller = incoming_caller(
            None if traceparent is None else traceparent.decode("latin-1"),
            None if tracestate is None else tracestate.decode("latin-1"),
            None if cloud is None else cloud.decode("latin-1"),
        )
        if caller is not None and self.follow_callers and not caller.trace_flags.sampled:
            token = UNSAMPLED_CALLER.set(caller)  # the caller decided: nothing is recorded
            try:
                await self.app(scope, receive, send)
            finally:
                UNSAMPLED_CALLER.reset(token)
            return
        method, route = str(scope.get("method")), scope["path_template"]
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "http.route": route,
            "url.path": scope["path"],
        }
        if client := scope.get("client"):
            attributes["client.address"] = client[0]
        if user_agent := headers.get(b"user-agent"):
            attributes["user_agent.original"] = user_agent.decode("latin-1")
        parent = Context()
        if caller is not None:
            parent = trace.set_span_in_context(NonRecordingSpan(caller.span_context), parent)
        with self.tracer.start_as_current_span(
            f"{method} {route}", context=parent, kind=SpanKind.SERVER, attributes=attributes
        ) as span:

            async def observed(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                    if message["status"] >= 500:  # a 4xx is the caller's error
                        span.set_status(StatusCode.ERROR)
                await send(message)

            await self.app(scope, receive, observed if span.is_recording() else send)


# -- push -------------------------------------------------------------------


class Delivery(Protocol):
    """What a push span says about the message it delivered (ingest's PushedMessage)."""

    @property
    def message_id(self) -> str: ...
    @property
    def attributes(self) -> Mapping[str, str]: ...
    @property
    def subscription(self) -> str | None: ...
    @property
    def delivery_attempt(self) -> int | None: ...
    @property
    def ordering_key(self) -> str | None: ...


def push_received(message: Delivery, body_bytes: int, headers: Mapping[str, str]) -> str | None:
    """Describe the push on the current server span; return its trace id (32 hex).

    The trace id is the caller's when it sent one, and exists even when the
    span is not sampled, so every row leads to its request. With tracing off
    there is no server span, and it comes from the headers.
    """
    if (caller := UNSAMPLED_CALLER.get()) is not None:
        return caller.trace_id_hex
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
        if (publisher := publisher_span(message.attributes)) is not None:
            span.add_link(publisher)
    return f"{span_context.trace_id:032x}"


def untraced_push(message: Delivery, body_bytes: int, headers: Mapping[str, str]) -> str | None:
    """`push_received` with tracing off: no span to describe, and the caller's trace id."""
    return incoming_trace_id(headers)


# push_received or untraced_push.
PushTraces = Callable[[Delivery, int, Mapping[str, str]], str | None]


def publisher_span(attributes: Mapping[str, str]) -> SpanContext | None:
    """The publisher's span, from the attributes Pub/Sub's client libraries set."""
    traceparent = attributes.get(PUBLISHER_TRACEPARENT)
    if not traceparent:
        return None
    span = caller_span(traceparent, attributes.get(PUBLISHER_TRACESTATE) or None)
    return None if span is None else span.span_context


# -- group commit -------------------------------------------------------------


class FlushTracer:
    """The batcher's FlushObserver: one span per flush, linked to the pushes it serves.

    A flush serves many requests from many traces, so it starts a trace of its
    own and links each request's span; the store's append span is its child.
    A flush that serves no sampled request is not traced: no trace would lead
    to it (append latency and batch sizes are metrics), and a span per flush
    would otherwise reach Cloud Trace hundreds of times a second.
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
        if not requests:
            yield
            return
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
    bytes_billed: int | None = None,
    job_id: str | None = None,
) -> None:
    """Add what a store knows about its query to the current query span.

    The store's reads run inside a query span (app.telemetry.store), so a store
    calls this from inside them, e.g. the BigQuery store with each query's
    bytes and its job or query id. Bytes billed also go to
    `recordline.query.bytes_billed`, by route, whether or not the span is
    sampled.
    """
    if bytes_billed and (cost := QUERY_COST.get()) is not None:
        cost.bytes_billed += bytes_billed
    span = trace.get_current_span()
    if not span.is_recording():
        return
    attributes: dict[str, str | int] = {}
    if rows is not None:
        attributes["db.response.returned_rows"] = rows
    if bytes_processed is not None:
        attributes["gcp.bigquery.total_bytes_processed"] = bytes_processed
    if bytes_billed is not None:
        attributes["gcp.bigquery.total_bytes_billed"] = bytes_billed
    if job_id is not None:
        attributes["gcp.bigquery.job.id"] = job_id
    span.set_attributes(attributes)


class QueryCost:
    """What the queries behind one store call were billed, summed."""

    __slots__ = ("bytes_billed",)

    def __init__(self) -> None:
        self.bytes_billed = 0


# Set by the query span around a store call; a store's `record_query` adds to it.
QUERY_COST: contextvars.ContextVar[QueryCost | None] = contextvars.ContextVar(
    "recordline_query_cost", default=None
)
