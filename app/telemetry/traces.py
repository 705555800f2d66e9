"""Traces: a server span per request, linked to the publisher, and the flushes it joins.

The path of one message through Cloud Trace:

    publisher span ◄─link── POST /pubsub/push (server span, in the caller's trace)
                                   ▲ link
                   recordline.flush (one per batch) ─► recordline.store.append

The server span is started by Litestar's OpenTelemetry plugin, with a
middleware of ours (`ServerSpans`); it continues the trace of the incoming `traceparent` or
Cloud Run's `X-Cloud-Trace-Context`, so the stored row's `trace_id` is the one
Cloud Run's request log shows. The publisher's span arrives as a message
attribute and is linked, not adopted as parent: a Pub/Sub delivery is a new
operation, and a redelivery an hour later should not stretch the publisher's
trace.
"""

from __future__ import annotations

import contextvars
import functools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from litestar import Litestar
from litestar.exceptions import HTTPException
from litestar.middleware.base import AbstractMiddleware
from litestar.plugins.opentelemetry import OpenTelemetryConfig
from litestar.plugins.opentelemetry.middleware import OpenTelemetryInstrumentationMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from litestar.utils import normalize_path
from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.propagators.cloud_trace_propagator import CloudTraceFormatPropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import sampling
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from app.ingest.envelope import PushedMessage
from app.telemetry.spans import PlainTracer

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


# -- HTTP ---------------------------------------------------------------------


class ServerSpans(OpenTelemetryInstrumentationMiddleware):
    """The plugin's middleware, made for this path: one SERVER span per request.

    Litestar's default wraps opentelemetry-instrumentation-asgi, which on a
    push costs ~300 µs of a ~200 µs request (measured with `bench telemetry`):
    it runs both propagators, collects a dozen attributes through getters,
    wraps every ASGI message and checks its own exclusion lists. This one
    starts the span in the caller's context; only a sampled span is then
    described (attributes, status, its name by route). It runs where the
    plugin's config says (`scopes`, `exclude`, `exclude_opt_key`), tested
    inline as Litestar's own middleware wrapper would.
    """

    def __init__(self, app: ASGIApp, config: OpenTelemetryConfig) -> None:
        # Not the parent's __init__: it would build the ASGI instrumentation.
        AbstractMiddleware.__init__(
            self,
            app=app,
            scopes=config.scopes,
            exclude=config.exclude,
            exclude_opt_key=config.exclude_opt_key,
        )
        self._tracer = config.tracer or trace.get_tracer(
            __name__, tracer_provider=config.tracer_provider
        )
        self._details = config.scope_span_details_extractor
        self._sampler = (
            self._tracer.sampler
            if isinstance(self._tracer, sdk_trace.Tracer | PlainTracer)
            else None
        )
        self._follows_callers = follows_remote_callers(self._sampler)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The middleware's `__call__` (set after the class, see `_bypassed`)."""
        if self._bypassed(scope):
            await self.app(scope, receive, send)
            return
        parent, caller, user_agent = _caller(scope["headers"])
        method = str(scope.get("method", ""))
        span = self._start(parent, caller, method)
        token = context.attach(parent if span is None else trace.set_span_in_context(span))
        try:
            if span is not None and span.is_recording():
                await self._recorded(span, method, user_agent, scope, receive, send)
            else:
                await self.app(scope, receive, send)
        finally:
            context.detach(token)

    def _bypassed(self, scope: Scope) -> bool:
        """Litestar's own test of `scopes`, `exclude` and `exclude_opt_key`, inline.

        Litestar wraps the `__call__` of every AbstractMiddleware in a generic
        version of this test (two more calls and a frame per request, a push
        resuming through it twice); `_serve`, set as `__call__` after the class
        body, runs this one instead.
        """
        if scope["type"] not in self.scopes:
            return True
        if (
            self.exclude_opt_key
            and (handler := scope.get("route_handler")) is not None
            and handler.opt.get(self.exclude_opt_key)
        ):
            return True
        return (
            self.exclude_pattern is not None
            and self.exclude_pattern.search(scope["path"]) is not None
        )

    def _start(self, parent: Context, caller: CallerSpan | None, method: str) -> trace.Span | None:
        """The server span, or None when the sampler drops a request its caller started.

        Most pushes: Cloud Run samples at most 0.1 requests a second per
        instance, and the default sampler follows it. A span that is not
        recorded is never exported; the SDK would still build one (~13 µs)
        only to carry the caller's trace id, which the caller's own context
        carries as well. A sampler that decides as the caller did (every
        `parentbased_*` one) is not even asked (~2 µs): the SDK asks it again
        when it starts a span.
        """
        if caller is not None and self._sampler is not None:
            if self._follows_callers:
                dropped = not caller.trace_flags.sampled
            else:
                decision = self._sampler.should_sample(
                    parent, caller.get_span_context().trace_id, method, SpanKind.SERVER
                ).decision
                dropped = decision is sampling.Decision.DROP
            if dropped:
                return None
        return self._tracer.start_span(method, context=parent, kind=SpanKind.SERVER)

    async def _recorded(
        self,
        span: trace.Span,
        method: str,
        user_agent: bytes | None,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """Run the request under a sampled span: describe it, record its status, end it.

        Its attributes are set once, at the end, in one call (with the SDK's
        own span, each call takes a lock and checks every value).
        """
        status: int | None = None

        async def send_and_observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_observe)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        else:
            if status is not None and status >= 500:  # a 4xx is the caller's error
                span.set_status(StatusCode.ERROR)
        finally:
            # Named once routed: the lookup is paid by sampled spans only.
            name, route_attributes = self._details(scope)
            attributes: dict[str, Any] = {
                "http.request.method": method,
                "url.path": scope["path"],
                **route_attributes,
            }
            if client := scope.get("client"):
                attributes["client.address"] = client[0]
            if user_agent:
                attributes["user_agent.original"] = user_agent.decode("latin-1")
            if status is not None:
                attributes["http.response.status_code"] = status
            span.update_name(name)
            span.set_attributes(attributes)
            span.end()


# Set after the class body, where Litestar no longer wraps it (see ServerSpans._bypassed).
ServerSpans.__call__ = ServerSpans._serve  # type: ignore[method-assign,assignment]


def _caller(
    headers: Iterable[tuple[bytes, bytes]],
) -> tuple[Context, CallerSpan | None, bytes | None]:
    """The caller's context and span (None if it sent none), and its user agent.

    Read in one pass over the headers, by `incoming_caller`'s rules.
    """
    traceparent = tracestate = cloud = user_agent = None
    for key, value in headers:
        if key == b"traceparent":
            traceparent = value.decode("latin-1")
        elif key == b"x-cloud-trace-context":
            cloud = value.decode("latin-1")
        elif key == b"user-agent":
            user_agent = value
        elif key == b"tracestate":
            tracestate = value.decode("latin-1")
    caller = incoming_caller(traceparent, tracestate, cloud)
    if caller is None:
        return Context(), None, user_agent
    return trace.set_span_in_context(caller, Context()), caller, user_agent


def follows_remote_callers(sampler: sampling.Sampler | None) -> bool:
    """Whether `sampler` samples a request exactly when its remote caller did.

    True of ParentBased with its defaults for remote callers (every
    `parentbased_*` sampler here); any other, ServerSpans asks.
    """
    return (
        isinstance(sampler, sampling.ParentBased)
        and getattr(sampler, "_remote_parent_sampled", None) is sampling.ALWAYS_ON
        and getattr(sampler, "_remote_parent_not_sampled", None) is sampling.ALWAYS_OFF
    )


_TRACEPARENT_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_FLAGS = {f"{flags:02x}": TraceFlags(flags) for flags in range(256)}
_NO_TRACE = "0" * 32
_NO_SPAN = "0" * 16


class CallerSpan(NonRecordingSpan):
    """A remote caller's span: the request's parent, and current if the request has no span.

    Nearly every push comes from a caller that did not sample it (Cloud Run
    samples at most 0.1 requests a second per instance), and then needs only
    the caller's trace id in hex, for the stored row, and its flags, to drop
    the server span. So its SpanContext (two hex parses and the SDK's checks,
    ~12k instructions a push in `bench instructions`) is built when something
    first asks for it: a child span, a sampler, a log line.
    """

    def __init__(self, trace_id_hex: str, span_id_hex: str, trace_flags: TraceFlags) -> None:
        # Not the parent's __init__: `_context` is built on first use.
        self.trace_id_hex = trace_id_hex
        self.span_id_hex = span_id_hex
        self.trace_flags = trace_flags

    @classmethod
    def of(cls, context: SpanContext) -> CallerSpan:
        span = cls(f"{context.trace_id:032x}", f"{context.span_id:016x}", context.trace_flags)
        span.__dict__["_context"] = context  # with its trace state, as the propagator read it
        return span

    @functools.cached_property
    def _context(self) -> SpanContext:  # type: ignore[override]
        return SpanContext(
            int(self.trace_id_hex, 16),
            int(self.span_id_hex, 16),
            is_remote=True,
            trace_flags=self.trace_flags,
        )


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
    """The caller's span as `propagator` reads it from `carrier`; None if not valid."""
    found = trace.get_current_span(propagator.extract(carrier, context=Context()))
    context = found.get_span_context()
    return CallerSpan.of(context) if context.is_valid else None


def incoming_caller(
    traceparent: str | None, tracestate: str | None, cloud: str | None
) -> CallerSpan | None:
    """The caller's span from a request's trace headers, or None if it sent no valid one.

    A valid `traceparent` wins over Cloud Run's X-Cloud-Trace-Context (Cloud
    Run sends both, for the same trace); the tracing path (`_caller`) and the
    row's trace id with tracing off (`incoming_trace_id`) both read it here.
    """
    caller = None if traceparent is None else caller_span(traceparent, tracestate)
    if caller is None and cloud is not None:
        caller = cloud_run_span(cloud)
    return caller


def cloud_run_span(header: str) -> CallerSpan | None:
    """The caller's span from Cloud Run's `X-Cloud-Trace-Context`, or None if not valid.

    `TRACE_ID/SPAN_ID;o=FLAGS`, the trace id in hex. Cloud Run writes it in
    lower case; an upper-case id names the same trace, but Google's propagator
    reads lower case only, so the header is lowered first (W3C's
    `traceparent`, by contrast, is invalid in upper case).
    """
    return _extracted(_cloud, {"x-cloud-trace-context": header.lower()})


def remote_span(traceparent: str, tracestate: str | None = None) -> SpanContext | None:
    """The W3C caller's SpanContext, or None if `traceparent` is not valid."""
    span = caller_span(traceparent, tracestate)
    return None if span is None else span.get_span_context()


def route_span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    """`POST /pubsub/push`, `GET /v1/records/{record_id}`: a server span named by its route.

    Read from the scope once the router has put `path_template` there; before
    that (or if it never did: a request refused by a middleware), the route is
    looked up in the router's own cache. A path without a route (404, 405)
    names the span by its method alone, so a scan of random paths adds no span
    names.
    """
    method = str(scope.get("method", ""))  # only HTTP scopes reach it
    template = scope.get("path_template")
    if template is None:
        try:
            route = Litestar.from_scope(scope).asgi_router.handle_routing(
                path=normalize_path(scope["path"]), method=method
            )
        except HTTPException:
            return method, {}
        template = route[4]
    return _route_details(method, template)


@functools.cache
def _route_details(method: str, template: str) -> tuple[str, dict[str, Any]]:
    # Name and attributes depend only on the route: built once per route. The
    # middleware copies the attributes, never changes them.
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
    if type(span) is CallerSpan:  # the request has no span of its own: not sampled
        return span.trace_id_hex
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


def incoming_trace_id(headers: Mapping[str, str]) -> str | None:
    """The caller's trace id with tracing off: the one the server span would continue."""
    caller = incoming_caller(
        headers.get("traceparent"), headers.get("tracestate"), headers.get("x-cloud-trace-context")
    )
    return None if caller is None else caller.trace_id_hex


def publisher_span(attributes: Mapping[str, str]) -> SpanContext | None:
    """The publisher's span, from the attributes Pub/Sub's client libraries set."""
    traceparent = attributes.get(PUBLISHER_TRACEPARENT)
    if not traceparent:
        return None
    return remote_span(traceparent, attributes.get(PUBLISHER_TRACESTATE) or None)


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
        span = trace.get_current_span()
        if type(span) is CallerSpan and not span.trace_flags.sampled:
            return None  # the usual push, without building the caller's context
        found = span.get_span_context()
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

    The store's `page`, `latest` and `message` run inside a query span (see
    app.telemetry.store), so a store calls this from inside them, e.g. the
    BigQuery store with each query's bytes and its job or query id. Bytes
    billed also go to `recordline.query.bytes_billed`, by route, whether or
    not the span is sampled.
    """
    if bytes_billed:
        cost = QUERY_COST.get()
        if cost is not None:
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
