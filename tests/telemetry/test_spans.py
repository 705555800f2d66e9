"""PlainTracer exports what the SDK's own tracer would, for any sequence of calls."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from app.telemetry import Telemetry
from app.telemetry.spans import PlainSpan, PlainTracer, plain_tracer


@pytest.fixture(autouse=True, scope="module")
def _quiet() -> Iterator[None]:
    """Both tracers warn of every value they drop or change; hundreds of examples do that."""
    logger = logging.getLogger("opentelemetry")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


class SeededIds(IdGenerator):
    """The same ids for both tracers, so their spans compare equal."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def generate_span_id(self) -> int:
        return self._random.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self._random.getrandbits(128) or 1


class Twin:
    """One tracer of each kind, configured alike, each exporting to memory."""

    def __init__(self, sampler: Sampler, limits: SpanLimits, seed: int) -> None:
        self.exported: list[InMemorySpanExporter] = []
        self.tracers: list[trace.Tracer] = []
        for wrap in (lambda t: t, plain_tracer):
            exporter = InMemorySpanExporter()
            provider = TracerProvider(
                sampler=sampler, span_limits=limits, id_generator=SeededIds(seed)
            )
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            self.exported.append(exporter)
            self.tracers.append(wrap(provider.get_tracer("t", "1.0")))
        assert isinstance(self.tracers[1], PlainTracer)

    def both(self, act: Callable[[trace.Tracer], Any]) -> list[Any]:
        return [act(tracer) for tracer in self.tracers]

    def finished(self) -> list[list[dict[str, Any]]]:
        return [[exported_form(s) for s in e.get_finished_spans()] for e in self.exported]


def exported_form(span: ReadableSpan) -> dict[str, Any]:
    """Everything an exporter reads from a finished span."""
    return {
        "name": span.name,
        "context": span.context,
        "parent": span.parent,
        "kind": span.kind,
        "start": span.start_time,
        "end": span.end_time,
        "status": (span.status.status_code, span.status.description),
        "attributes": list((span.attributes or {}).items()),  # in order: the oldest goes first
        "dropped_attributes": span.dropped_attributes,
        "events": [
            (e.name, e.timestamp, dict(e.attributes or {}), e.dropped_attributes)
            for e in span.events
        ],
        "dropped_events": span.dropped_events,
        "links": [(k.context, dict(k.attributes or {}), k.dropped_attributes) for k in span.links],
        "dropped_links": span.dropped_links,
        "resource": span.resource.attributes,
        "scope": span.instrumentation_scope,
    }


class Odd:
    def __str__(self) -> str:
        return "odd"


keys = st.one_of(st.text(max_size=4), st.integers(0, 3))
scalars = st.one_of(
    st.text(max_size=12),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.binary(max_size=4),
    st.just(Odd()),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.tuples(st.text(), st.integers()))
attribute_maps = st.dictionaries(keys, values, max_size=5)
span_contexts = st.builds(
    SpanContext,
    trace_id=st.integers(0, 2**128 - 1),
    span_id=st.integers(0, 2**64 - 1),
    is_remote=st.booleans(),
    trace_flags=st.sampled_from([TraceFlags(0), TraceFlags(1), TraceFlags(3)]),
    trace_state=st.sampled_from([None, TraceState([("k", "v")])]),
)
statuses = st.one_of(
    st.builds(Status, st.sampled_from(list(StatusCode)), st.sampled_from([None, "why"])),
    st.sampled_from(list(StatusCode)),
)
times = st.integers(1, 2**62)
calls = st.one_of(
    st.tuples(st.just("set_attribute"), keys, values),
    st.tuples(st.just("set_attributes"), attribute_maps),
    st.tuples(st.just("add_event"), st.text(max_size=4), attribute_maps, times),
    st.tuples(st.just("add_link"), span_contexts, st.one_of(st.none(), attribute_maps)),
    st.tuples(st.just("update_name"), st.text(max_size=6)),
    st.tuples(st.just("set_status"), statuses),
    st.tuples(st.just("record_exception"), st.sampled_from([ValueError, KeyError]), times),
    st.tuples(st.just("end"), times),
)
limits = st.builds(
    SpanLimits,
    max_span_attributes=st.sampled_from([0, 1, 3, None]),
    max_span_attribute_length=st.sampled_from([0, 2, None]),
    max_events=st.sampled_from([0, 1, 3, None]),
    max_links=st.sampled_from([0, 1, 3, None]),
    max_event_attributes=st.sampled_from([1, None]),
    max_link_attributes=st.sampled_from([1, None]),
    max_attribute_length=st.sampled_from([2, None]),
)
samplers = st.sampled_from([ALWAYS_ON, ALWAYS_OFF, DEFAULT_ON, ParentBased(TraceIdRatioBased(0.5))])
parents = st.one_of(
    st.none(), span_contexts.map(lambda c: trace.set_span_in_context(NonRecordingSpan(c)))
)


def apply(span: trace.Span, call: tuple[Any, ...]) -> None:
    match call:
        case ("add_event", name, attributes, timestamp):
            span.add_event(name, attributes, timestamp)
        case ("record_exception", error, timestamp):
            try:
                raise error("why")  # a new one each time: a raise adds to its traceback
            except Exception as caught:
                span.record_exception(caught, timestamp=timestamp)
        case ("end", end_time):
            span.end(end_time)
        case (method, *arguments):
            getattr(span, method)(*arguments)


@settings(max_examples=400, deadline=None)
@given(
    sampler=samplers,
    span_limits=limits,
    seed=st.integers(0, 2**32),
    parent=parents,
    kind=st.sampled_from(list(SpanKind)),
    attributes=st.one_of(st.none(), attribute_maps),
    links=st.lists(st.tuples(span_contexts, st.one_of(st.none(), attribute_maps)), max_size=4),
    started=times,
    script=st.lists(calls, max_size=12),
)
def test_plain_tracer_exports_what_the_sdk_would(
    sampler: Sampler,
    span_limits: SpanLimits,
    seed: int,
    parent: Context | None,
    kind: SpanKind,
    attributes: dict[Any, Any] | None,
    links: list[tuple[SpanContext, dict[Any, Any] | None]],
    started: int,
    script: list[tuple[Any, ...]],
) -> None:
    twin = Twin(sampler, span_limits, seed)
    sdk_span, plain_span = twin.both(
        lambda tracer: tracer.start_span(
            "s",
            context=parent,
            kind=kind,
            attributes=attributes,
            links=[Link(c, a) for c, a in links],  # a Link each: the SDK changes the ones it gets
            start_time=started,
        )
    )
    assert type(plain_span) is (PlainSpan if sdk_span.is_recording() else NonRecordingSpan)
    assert plain_span.get_span_context() == sdk_span.get_span_context()
    for call in [*script, ("end", started + 1)]:
        apply(sdk_span, call)
        apply(plain_span, call)
        assert plain_span.is_recording() == sdk_span.is_recording()
    sdk, plain = twin.finished()
    assert plain == sdk


@pytest.mark.parametrize("record_exception", [True, False])
@pytest.mark.parametrize("set_status_on_exception", [True, False])
def test_an_exception_leaving_the_span_is_recorded_as_the_sdk_records_it(
    record_exception: bool, set_status_on_exception: bool
) -> None:
    twin = Twin(ALWAYS_ON, SpanLimits(), seed=7)

    def fail(tracer: trace.Tracer) -> None:
        with tracer.start_as_current_span(
            "outer",
            start_time=1,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ):
            inner = tracer.start_span("inner", start_time=2)
            with pytest.raises(KeyError, match="inner"), inner:  # the span's own __exit__
                raise KeyError("inner")
            assert trace.get_current_span().get_span_context().span_id == (
                inner.parent.span_id  # type: ignore[attr-defined]
            )
            raise ValueError("outer")

    def fail_in_current_span(tracer: trace.Tracer) -> None:
        with pytest.raises(ValueError, match="outer"):
            fail(tracer)

    twin.both(fail_in_current_span)
    sdk, plain = twin.finished()
    for spans in (sdk, plain):  # end times and stack traces are the run's own
        for span in spans:
            span["end"] = None
            span["events"] = [(name, attrs.keys()) for name, _, attrs, _ in span["events"]]
    assert plain == sdk
    assert [s["name"] for s in plain] == ["inner", "outer"]
    assert plain[0]["status"][0] is StatusCode.ERROR
    outer_status = StatusCode.ERROR if set_status_on_exception else StatusCode.UNSET
    assert plain[1]["status"][0] is outer_status


def test_the_service_records_its_spans_plainly_and_only_sdk_tracers_are_replaced() -> None:
    telemetry = Telemetry(tracer_provider=TracerProvider())
    assert isinstance(telemetry.tracer, PlainTracer)
    with telemetry.tracer.start_as_current_span("s") as span:
        assert type(span) is PlainSpan
    off = Telemetry()
    assert not isinstance(off.tracer, PlainTracer)
    no_op = trace.NoOpTracer()
    assert plain_tracer(no_op) is no_op
