"""The SDK tracer's decisions, with the spans it records kept in plain Python.

A sampled push pays for three spans (its server span, and its share of a
flush and an append span), and the SDK's `Span` is most of that cost: a lock,
bounded containers, every attribute value checked on each call, and a copy of
the whole span when it ends. A server span with its dozen attributes took
~31 µs, a flush with its append span ~49 µs; here ~10 and ~33 µs.

`PlainTracer` makes the decisions of the SDK tracer it wraps (parent, ids,
sampler, limits) and calls its processors as the SDK does (`on_start` with
the live span, `on_end` with a `ReadableSpan`). Only the recorded span is
lighter: a plain dict, whose values go through the SDK's checks only when
they are not plain strings and numbers already, and no copy at the end,
since an ended span takes no more changes. Where the SDK would do more than
this path knows (a tracer its configurator disabled, the SDK's own metrics on
spans), the SDK's own span is used.

tests/telemetry/test_spans.py checks that both tracers export the same spans
for any sequence of calls.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator, Mapping, Sequence
from time import time_ns
from types import TracebackType
from typing import cast

from opentelemetry import context as context_api
from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits
from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util import BoundedList
from opentelemetry.semconv.attributes.exception_attributes import (
    EXCEPTION_ESCAPED,
    EXCEPTION_MESSAGE,
    EXCEPTION_STACKTRACE,
    EXCEPTION_TYPE,
)
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util import types
from opentelemetry.util._decorator import _agnosticcontextmanager

log = logging.getLogger(__name__)

# Attribute values the SDK would store unchanged (a `str` only under the length limit).
_PLAIN = frozenset({str, int, float, bool})
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_DEFAULT = TraceFlags(TraceFlags.DEFAULT)


def plain_tracer(tracer: trace_api.Tracer) -> trace_api.Tracer:
    """`tracer` itself unless it is the SDK's, configured as PlainTracer knows it."""
    if type(tracer) is sdk_trace.Tracer and isinstance(
        getattr(tracer, "_tracer_metrics", None), NoOpTracerMetrics
    ):
        return PlainTracer(tracer)
    return tracer


class PlainTracer(trace_api.Tracer):
    """The SDK `Tracer`'s `start_span`, with a `PlainSpan` for what it records."""

    def __init__(self, tracer: sdk_trace.Tracer) -> None:
        self.sdk = tracer
        self.sampler = tracer.sampler
        self.id_generator = tracer.id_generator
        self.span_processor = tracer.span_processor
        self.limits: SpanLimits = tracer._span_limits
        self.scope = tracer._instrumentation_scope
        self.info = tracer.instrumentation_info

    def start_span(
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace_api.Span:
        sdk = self.sdk
        if not sdk._is_enabled():
            return sdk.start_span(
                name, context, kind, attributes, links, start_time, record_exception,
                set_status_on_exception,
            )  # fmt: skip
        links = links or ()
        parent: SpanContext | None = trace_api.get_current_span(context).get_span_context()
        if parent is not None and not isinstance(parent, SpanContext):
            raise TypeError("parent_span_context must be a SpanContext or None.")
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = self.id_generator.generate_trace_id()
            random_trace_id = self.id_generator.is_trace_id_random()
        else:
            trace_id = parent.trace_id
            random_trace_id = parent.trace_flags.random_trace_id
        sampled = self.sampler.should_sample(context, trace_id, name, kind, attributes, links)
        flags = _SAMPLED if sampled.decision is Decision.RECORD_AND_SAMPLE else _DEFAULT
        if random_trace_id:
            flags = TraceFlags(flags | TraceFlags.RANDOM_TRACE_ID)
        span_context = SpanContext(
            trace_id,
            self.id_generator.generate_span_id(),
            is_remote=False,
            trace_flags=flags,
            trace_state=sampled.trace_state,
        )
        if sampled.decision is Decision.DROP:
            return trace_api.NonRecordingSpan(span_context)
        span = PlainSpan(
            self,
            name,
            span_context,
            parent,
            kind,
            sampled.attributes,
            links,
            start_time if start_time is not None else time_ns(),
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        )
        # Processors are typed for the SDK's Span; they get what it offers them.
        self.span_processor.on_start(span, parent_context=context)  # type: ignore[arg-type]
        return span

    @_agnosticcontextmanager  # as the SDK's: also a decorator, of sync and async functions
    def start_as_current_span(
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace_api.Span]:
        span = self.start_span(
            name, context, kind, attributes, links, start_time, record_exception,
            set_status_on_exception,
        )  # fmt: skip
        with trace_api.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current


class PlainSpan(trace_api.Span, ReadableSpan):
    """A recorded span: the SDK `Span`'s behaviour, without its per-call overheads.

    One task owns a span at a time here (a request, a flush), so there is no
    lock; once ended it takes no more changes, so it is handed to `on_end`
    as it is, where the SDK hands a copy.
    """

    # What every span starts with; set on the instance when it changes.
    _status = Status(StatusCode.UNSET)  # immutable, shared as ReadableSpan's default is
    _end_time: int | None = None
    _dropped_attributes = 0
    # Most spans have neither: the SDK's own bounded lists (they drop the
    # oldest and count what they drop) are made for the first one.
    _events: Sequence[Event] = ()
    _links: Sequence[Link] = ()

    def __init__(
        self,
        tracer: PlainTracer,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: types.Attributes,
        links: Sequence[Link],
        start_time: int,
        *,
        record_exception: bool,
        set_status_on_exception: bool,
    ) -> None:
        # Not ReadableSpan.__init__: the same fields, set directly.
        self._tracer = tracer
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._resource = tracer.sdk.resource
        self._instrumentation_info = tracer.info
        self._instrumentation_scope = tracer.scope
        self._start_time = start_time
        self._record_exception = record_exception
        self._set_status_on_exception = set_status_on_exception
        self._attributes: dict[str, types.AnyValue] = {}
        if attributes:
            self._set(attributes)
        for link in links:
            if link:
                self._add_link(link.context, link.attributes)

    # -- what the SDK's processors and exporters read ---------------------------

    @property
    def dropped_attributes(self) -> int:
        return self._dropped_attributes

    def __repr__(self) -> str:
        return f'{type(self).__name__}(name="{self._name}", context={self._context})'

    # -- trace_api.Span -----------------------------------------------------------

    def get_span_context(self) -> SpanContext:
        return cast(SpanContext, self._context)

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        if self._ended("set_attributes"):
            return
        self._set(attributes)

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if self._ended("set_attribute"):
            return
        if type(key) is not str or not key:
            # BoundedAttributes' own item check: it drops a key that is not a
            # str here, where `set_attributes` would convert it.
            one = BoundedAttributes(None, immutable=False)
            one[key] = value
            self._dropped_attributes += one.dropped
            self._set(one)
            return
        self._set({key: value})

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._ended("add_event"):
            return
        limits = self._tracer.limits
        checked = BoundedAttributes(
            limits.max_event_attributes,
            attributes,
            max_value_len=limits.max_attribute_length,
            immutable=True,
        )
        if not isinstance(self._events, BoundedList):
            self._events = BoundedList(limits.max_events)
        self._events.append(Event(name, checked, timestamp))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self._ended("add_link"):
            return
        self._add_link(context, attributes)

    def update_name(self, name: str) -> None:
        if self._ended("update_name"):
            return
        self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._ended("set_status"):
            return
        if self._status.status_code is StatusCode.OK:
            return  # an OK status is final
        if isinstance(status, Status):
            if status.status_code is StatusCode.UNSET:
                return
            if description is not None:
                log.warning(
                    "Description %s ignored. Use either `Status` or `(StatusCode, Description)`",
                    description,
                )
            self._status = status
        elif status is not StatusCode.UNSET:
            self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        described: dict[str, types.AnyValue] = {
            EXCEPTION_TYPE: f"{module}.{qualname}" if module and module != "builtins" else qualname,
            EXCEPTION_MESSAGE: str(exception),
            EXCEPTION_STACKTRACE: "".join(traceback.format_exception(exception)),
            EXCEPTION_ESCAPED: str(escaped),
        }
        if attributes:
            described.update(attributes)
        self.add_event("exception", described, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._start_time is None:
            raise RuntimeError("Calling end() on a not started span.")
        if self._end_time is not None:
            log.warning("Calling end() on an ended span.")
            return
        self._end_time = end_time if end_time is not None else time_ns()
        processor = self._tracer.span_processor
        processor._on_ending(self)  # type: ignore[arg-type]
        processor.on_end(self)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        # As the SDK's Span: an exception leaving `with span:` is recorded.
        if exc_val is not None and self.is_recording():
            if self._record_exception:
                self.record_exception(exception=exc_val, escaped=True)
            if self._set_status_on_exception:
                self.set_status(
                    Status(StatusCode.ERROR, f"{exc_type.__name__ if exc_type else ''}: {exc_val}")
                )
        super().__exit__(exc_type, exc_val, exc_tb)

    # -----------------------------------------------------------------------------

    def _ended(self, method: str) -> bool:
        if self._end_time is None:
            return False
        log.warning("Tried calling %s on an ended span.", method)
        return True

    def _set(self, attributes: Mapping[str, types.AnyValue]) -> None:
        """Store attributes as BoundedAttributes would: checked, within the limits."""
        limits = self._tracer.limits
        maxlen = limits.max_span_attributes
        if maxlen == 0:
            self._dropped_attributes += len(attributes)
            return
        max_len = limits.max_span_attribute_length
        for key, value in attributes.items():
            if (
                type(key) is not str
                or not key
                or type(value) not in _PLAIN
                or (max_len is not None and type(value) is str and len(value) > max_len)
            ):
                # Not plain: the SDK's own checks (truncated, converted or dropped).
                checked = BoundedAttributes(None, attributes, max_value_len=max_len)
                self._dropped_attributes += checked.dropped
                attributes = checked
                break
        stored = self._attributes
        for key, value in attributes.items():
            if key in stored:
                del stored[key]  # a key set again moves to the end, as in BoundedAttributes
            elif maxlen is not None and len(stored) >= maxlen:
                del stored[next(iter(stored))]  # and the oldest makes room
                self._dropped_attributes += 1
            stored[key] = value

    def _add_link(self, context: SpanContext, attributes: types.Attributes) -> None:
        if not (context and (context.is_valid or attributes or context.trace_state)):
            return  # what the SDK's _is_valid_link refuses
        limits = self._tracer.limits
        checked = BoundedAttributes(
            limits.max_link_attributes,
            attributes,
            max_value_len=limits.max_attribute_length,
            immutable=True,
        )
        if not isinstance(self._links, BoundedList):
            self._links = BoundedList(limits.max_links)
        self._links.append(Link(context, checked))
