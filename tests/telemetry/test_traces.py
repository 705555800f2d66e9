"""From the publisher's span to the stored row, through Cloud Trace's eyes."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from litestar.datastructures import Headers
from litestar.testing import TestClient
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from app.asgi import create_app
from app.http.head import Recordline
from app.telemetry import Telemetry
from app.telemetry.traces import (
    caller_span,
    follows_callers,
    incoming_caller,
    incoming_trace_id,
    sampler,
)
from tests.conftest import envelope, served, settings
from tests.fakes import FaultyStore
from tests.telemetry.conftest import RECORD, Observed
from tests.waiting import until

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"
PUBLISHER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PUBLISHER_SPAN_ID = "00f067aa0ba902b7"


async def accepted(pushes: int, observed: Observed, store: FaultyStore) -> None:
    """Until `pushes` rows wait in the batcher's queue or in the store's held append."""

    def rows() -> int:
        (depth,) = observed.points("recordline.queue.depth")
        assert isinstance(depth.value, int)
        return depth.value + store.appending

    await until(lambda: rows() == pushes, what=f"{pushes} pushes queued or appending")


def test_push_continues_the_incoming_trace_and_the_row_keeps_its_id(
    client: TestClient[Recordline], observed: Observed
) -> None:
    response = client.post(
        "/pubsub/push", json=envelope(RECORD), headers={"traceparent": TRACEPARENT}
    )
    assert response.status_code == 204

    (server,) = observed.finished("POST /pubsub/push")
    assert server.kind is SpanKind.SERVER
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert server.parent is not None
    assert f"{server.parent.span_id:016x}" == PARENT_SPAN_ID
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 204
    assert server.attributes["messaging.system"] == "gcp_pubsub"
    assert server.attributes["messaging.message.id"] == "m-1"
    assert server.attributes["messaging.operation.type"] == "process"
    assert (
        server.attributes["messaging.destination.subscription.name"]
        == "projects/demo/subscriptions/records-push"
    )
    assert server.attributes["messaging.message.body.size"] > 0

    status = client.get("/v1/messages/m-1").json()
    assert status["record"]["trace_id"] == TRACE_ID


def test_both_trace_headers_agree_on_the_traceparent(
    client: TestClient[Recordline], observed: Observed
) -> None:
    # Cloud Run sends both; should they ever differ, the W3C header wins.
    other = f"{'1' * 32}/1;o=1"
    headers = {"traceparent": TRACEPARENT, "X-Cloud-Trace-Context": other}
    assert client.post("/pubsub/push", json=envelope(RECORD), headers=headers).status_code == 204
    (server,) = observed.finished("POST /pubsub/push")
    assert f"{server.context.trace_id:032x}" == TRACE_ID


def test_nothing_global_changes(observed: Observed) -> None:
    textmap, provider = propagate.get_global_textmap(), trace.get_tracer_provider()
    with TestClient(create_app(settings(), telemetry=observed.telemetry)) as client:
        client.post("/pubsub/push", json=envelope(RECORD), headers={"traceparent": TRACEPARENT})
    assert observed.finished("POST /pubsub/push")
    assert propagate.get_global_textmap() is textmap
    assert trace.get_tracer_provider() is provider


def test_a_malformed_traceparent_falls_back_to_cloud_runs_header(
    client: TestClient[Recordline], observed: Observed
) -> None:
    headers = {"traceparent": "00-nonsense-01", "X-Cloud-Trace-Context": f"{TRACE_ID}/17;o=1"}
    assert client.post("/pubsub/push", json=envelope(RECORD), headers=headers).status_code == 204
    (server,) = observed.finished("POST /pubsub/push")
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert server.parent is not None
    assert server.parent.span_id == 17


def test_delivery_attempt_is_recorded(client: TestClient[Recordline], observed: Observed) -> None:
    client.post("/pubsub/push", json=envelope(RECORD, deliveryAttempt=3))
    (server,) = observed.finished("POST /pubsub/push")
    assert server.attributes is not None
    assert server.attributes["messaging.gcp_pubsub.message.delivery_attempt"] == 3


def test_publisher_span_from_message_attributes_is_linked(
    client: TestClient[Recordline], observed: Observed
) -> None:
    attributes = {
        "googclient_traceparent": f"00-{PUBLISHER_TRACE_ID}-{PUBLISHER_SPAN_ID}-01",
        "googclient_tracestate": "vendor=value",
    }
    response = client.post(
        "/pubsub/push",
        json=envelope(RECORD, attributes=attributes),
        headers={"traceparent": TRACEPARENT},
    )
    assert response.status_code == 204

    (server,) = observed.finished("POST /pubsub/push")
    (link,) = server.links
    assert f"{link.context.trace_id:032x}" == PUBLISHER_TRACE_ID
    assert f"{link.context.span_id:016x}" == PUBLISHER_SPAN_ID
    assert link.context.trace_state.get("vendor") == "value"
    # Linked, not adopted: the push stays in the trace Cloud Run started.
    assert f"{server.context.trace_id:032x}" == TRACE_ID


def test_a_malformed_publisher_traceparent_is_ignored(
    client: TestClient[Recordline], observed: Observed
) -> None:
    attributes = {"googclient_traceparent": "00-not-a-trace-01"}
    response = client.post("/pubsub/push", json=envelope(RECORD, attributes=attributes))
    assert response.status_code == 204
    (server,) = observed.finished("POST /pubsub/push")
    assert server.links == ()


# Cloud Run writes the trace id in lower case; an upper-case one names the same trace.
@pytest.mark.parametrize("trace_id", [TRACE_ID, TRACE_ID.upper()])
def test_cloud_run_trace_header_is_honoured(
    client: TestClient[Recordline], observed: Observed, trace_id: str
) -> None:
    # X-Cloud-Trace-Context carries the span id in decimal.
    header = f"{trace_id}/{int(PARENT_SPAN_ID, 16)};o=1"
    response = client.post(
        "/pubsub/push", json=envelope(RECORD), headers={"X-Cloud-Trace-Context": header}
    )
    assert response.status_code == 204

    (server,) = observed.finished("POST /pubsub/push")
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert server.parent is not None
    assert f"{server.parent.span_id:016x}" == PARENT_SPAN_ID
    assert client.get("/v1/records/1").json()["trace_id"] == TRACE_ID


def test_without_an_incoming_trace_the_row_gets_the_new_trace(
    client: TestClient[Recordline], observed: Observed
) -> None:
    client.post("/pubsub/push", json=envelope(RECORD))
    (server,) = observed.finished("POST /pubsub/push")
    assert server.parent is None
    assert client.get("/v1/records/1").json()["trace_id"] == f"{server.context.trace_id:032x}"


async def test_flush_span_links_every_request_it_served(
    app: Recordline, store: FaultyStore, observed: Observed
) -> None:
    # Hold the store so the pushes pile up into one batch.
    store.release.clear()
    async with served(app) as client:
        pushes = [
            asyncio.create_task(
                client.post("/pubsub/push", json=envelope({"id": str(n)}, message_id=f"m-{n}"))
            )
            for n in range(5)
        ]
        await accepted(5, observed, store)
        store.release.set()
        responses = await asyncio.gather(*pushes)
    assert [r.status_code for r in responses] == [204] * 5

    servers = {s.context.span_id for s in observed.finished("POST /pubsub/push")}
    flushes = observed.finished("recordline.flush")
    linked = {link.context.span_id for f in flushes for link in f.links}
    assert linked == servers
    assert sum(f.attributes["recordline.batch.rows"] for f in flushes) == 5  # type: ignore[index]
    assert any(f.attributes["recordline.batch.rows"] > 1 for f in flushes)  # type: ignore[index]
    # The store's append is a child of its flush.
    appends = observed.finished("recordline.store.append")
    assert {a.parent.span_id for a in appends if a.parent} == {f.context.span_id for f in flushes}


async def test_a_flush_is_traced_when_one_request_it_serves_is(
    app: Recordline, store: FaultyStore, observed: Observed
) -> None:
    unsampled = {"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-00"}
    store.release.clear()
    async with served(app) as client:
        pushes = [
            asyncio.create_task(
                client.post(
                    "/pubsub/push",
                    json=envelope({"id": str(n)}, message_id=f"m-{n}"),
                    headers=unsampled if n else {},
                )
            )
            for n in range(4)
        ]
        await accepted(4, observed, store)
        store.release.set()
        assert [r.status_code for r in await asyncio.gather(*pushes)] == [204] * 4
    (sampled,) = observed.finished("POST /pubsub/push")
    flushes = observed.finished("recordline.flush")
    # Only the flush serving the sampled push is traced, linked to it alone.
    assert [[link.context for link in f.links] for f in flushes] == [[sampled.context]]
    (append,) = observed.finished("recordline.store.append")
    assert append.parent is not None
    assert append.parent.span_id == flushes[0].context.span_id


def test_failed_append_marks_the_spans_as_errors(
    client: TestClient[Recordline], store: FaultyStore, observed: Observed
) -> None:
    store.failing = True
    assert client.post("/pubsub/push", json=envelope(RECORD)).status_code == 503
    (server,) = observed.finished("POST /pubsub/push")
    assert not server.status.is_ok
    (flush,) = observed.finished("recordline.flush")
    assert not flush.status.is_ok
    assert any(e.name == "exception" for e in flush.events)


def test_queries_are_traced_with_the_rows_they_return(
    client: TestClient[Recordline], observed: Observed
) -> None:
    for n in range(3):
        client.post("/pubsub/push", json=envelope({"id": str(n)}, message_id=f"m-{n}"))
    assert client.get("/v1/records").status_code == 200

    (server,) = observed.finished("GET /v1/records")
    (query,) = observed.finished("recordline.store.page")
    assert query.parent is not None
    assert query.parent.span_id == server.context.span_id
    assert query.attributes is not None
    assert query.attributes["db.response.returned_rows"] == 3


def test_server_spans_are_named_by_route_template(
    client: TestClient[Recordline], observed: Observed
) -> None:
    client.post("/pubsub/push", json=envelope(RECORD))
    assert client.get("/v1/records/1").status_code == 200
    assert client.get("/v1/messages/m-1").status_code == 200

    (record,) = observed.finished("GET /v1/records/{record_id}")
    assert record.attributes is not None
    assert record.attributes["http.route"] == "/v1/records/{record_id}"
    assert record.attributes["http.response.status_code"] == 200
    (message,) = observed.finished("GET /v1/messages/{message_id}")
    assert message.attributes is not None
    assert message.attributes["http.route"] == "/v1/messages/{message_id}"


def test_a_path_without_a_route_is_not_traced(
    client: TestClient[Recordline], observed: Observed
) -> None:
    # Answered by the router before any route runs: a scan of random paths
    # adds no spans (Cloud Run's request log still shows each).
    assert client.get("/v1/nowhere/1").status_code == 404
    assert client.delete("/v1/records").status_code == 405
    assert observed.finished() == []


def test_health_endpoints_metrics_and_docs_are_not_traced(
    client: TestClient[Recordline], observed: Observed
) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    client.get("/metrics")
    assert client.get("/docs/openapi.json").status_code == 200
    assert observed.finished() == []


def test_with_tracing_off_the_callers_trace_id_comes_from_either_header(
    store: FaultyStore,
) -> None:
    app = create_app(settings(), store=store, telemetry=Telemetry())
    assert Telemetry().middleware() == []
    cases = {
        "w3c": ({"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"}, "ab" * 16),
        "cloud": ({"x-cloud-trace-context": f"{'EF' * 16}/123;o=1"}, "ef" * 16),
        "zero": ({"traceparent": f"00-{'0' * 32}-{'cd' * 8}-01"}, None),
        "garbage": ({"x-cloud-trace-context": "not-a-trace"}, None),
    }
    with TestClient(app) as client:
        for message_id, (headers, expected) in cases.items():
            body = envelope(RECORD, message_id=message_id)
            assert client.post("/pubsub/push", json=body, headers=headers).status_code == 204
            stored = client.get(f"/v1/messages/{message_id}").json()["record"]
            assert stored["trace_id"] == expected, message_id


def _hex(size: int) -> st.SearchStrategy[str]:
    """Valid lowercase hex of `size` digits, or hex that W3C refuses (upper case, wrong length)."""
    return st.one_of(
        st.text("0123456789abcdef", min_size=size, max_size=size),
        st.text("0123456789abcdefABCDEF", min_size=size - 1, max_size=size + 1),
        st.just("0" * size),
    )


@given(
    st.one_of(st.none(), st.builds(lambda t, s, f: f"00-{t}-{s}-{f}", _hex(32), _hex(16), _hex(2))),
    st.one_of(st.none(), st.just("vendor=value")),
    st.one_of(
        st.none(),
        st.builds(
            lambda t, s, o: f"{t}/{s}{o}",
            st.text("0123456789abcdefABCDEF", min_size=31, max_size=33) | st.just("0" * 32),
            st.integers(0, 2**64).map(str) | st.just("x"),
            st.sampled_from(["", ";o=0", ";o=1", ";O=1"]),
        ),
    ),
)
def test_with_tracing_off_the_row_keeps_the_trace_id_tracing_on_would_continue(
    traceparent: str | None, tracestate: str | None, cloud: str | None
) -> None:
    raw = [(b"content-type", b"application/json")]
    for name, value in (
        (b"traceparent", traceparent),
        (b"tracestate", tracestate),
        (b"x-cloud-trace-context", cloud),
    ):
        if value is not None:
            raw.append((name, value.encode()))
    caller = incoming_caller(traceparent, tracestate, cloud)
    assert incoming_trace_id(Headers(raw)) == (None if caller is None else caller.trace_id_hex)


@pytest.mark.slow
@given(
    st.one_of(
        st.builds(
            lambda version, trace_id, span_id, flags, tail: (
                f"{version}-{trace_id}-{span_id}-{flags}{tail}"
            ),
            st.sampled_from(["00", "01", "ff", "0"]),
            _hex(32) | st.just("g" * 32),
            _hex(16),
            _hex(2),
            st.sampled_from(["", "-extra", " "]),
        ),
        st.text(max_size=60),
    ),
    st.one_of(st.none(), st.just("vendor=value")),
)
def test_the_fast_traceparent_reader_agrees_with_the_sdk_propagator(
    traceparent: str, tracestate: str | None
) -> None:
    _agrees_with_the_propagator(traceparent, tracestate)


@given(
    st.builds(
        lambda trace_id, span_id, flags: f"00-{trace_id}-{span_id}-{flags:02x}",
        st.text("0123456789abcdef", min_size=32, max_size=32),
        st.text("0123456789abcdef", min_size=16, max_size=16),
        st.integers(0, 255),
    ),
    st.one_of(st.none(), st.just("vendor=value")),
)
def test_every_valid_traceparent_is_read_as_the_sdk_propagator_reads_it(
    traceparent: str, tracestate: str | None
) -> None:
    # Most random inputs above are invalid; these are what Cloud Run sends.
    _agrees_with_the_propagator(traceparent, tracestate)


def _agrees_with_the_propagator(traceparent: str, tracestate: str | None) -> None:
    carrier = {"traceparent": traceparent}
    if tracestate is not None:
        carrier["tracestate"] = tracestate
    expected = trace.get_current_span(
        TraceContextTextMapPropagator().extract(carrier, context=Context())
    ).get_span_context()
    caller = caller_span(traceparent, tracestate)
    if not expected.is_valid:
        assert caller is None
        return
    assert caller is not None
    assert caller.span_context == expected
    # What a push the caller did not sample reads without building the context.
    assert caller is not None
    assert caller.trace_id_hex == f"{expected.trace_id:032x}"
    assert caller.trace_flags == expected.trace_flags


def test_a_push_the_caller_did_not_sample_has_no_span_but_keeps_the_trace_id(
    client: TestClient[Recordline], observed: Observed
) -> None:
    # Cloud Run's front end sends a traceparent on every request and flags
    # only a few sampled; the default sampler follows the flag.
    unsampled = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-00"
    response = client.post(
        "/pubsub/push", json=envelope(RECORD), headers={"traceparent": unsampled}
    )
    assert response.status_code == 204
    assert observed.finished("POST /pubsub/push") == []
    assert client.get("/v1/messages/m-1").json()["record"]["trace_id"] == TRACE_ID
    # Nor has the flush that stored it: no trace leads there.
    assert observed.finished("recordline.flush") == []
    assert observed.finished("recordline.store.append") == []


def test_a_query_the_caller_did_not_sample_is_not_traced_either(
    client: TestClient[Recordline], observed: Observed
) -> None:
    # The caller's span is the parent the SDK's sampler sees: had it been lost,
    # the query span would start a trace of its own, sampled.
    unsampled = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-00"
    sampled = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"
    assert client.get("/v1/records", headers={"traceparent": unsampled}).status_code == 200
    assert observed.finished("recordline.store.page") == []
    assert client.get("/v1/records", headers={"traceparent": sampled}).status_code == 200
    (query,) = observed.finished("recordline.store.page")
    assert f"{query.context.trace_id:032x}" == TRACE_ID


@pytest.mark.parametrize(
    ("name", "follows"),
    [
        ("parentbased_always_on", True),
        ("parentbased_always_off", True),
        ("parentbased_traceidratio", True),
        ("always_on", False),
        ("traceidratio", False),
    ],
)
def test_only_parent_based_samplers_are_skipped_for_a_remote_caller(
    name: str, follows: bool
) -> None:
    # ServerSpans decides from the caller's flag alone only for these.
    assert follows_callers(sampler(name, 0.5)) is follows


def test_a_sampler_that_keeps_what_the_caller_dropped_is_obeyed() -> None:
    observed = Observed(sampler=ALWAYS_ON)
    app = create_app(settings(), telemetry=observed.telemetry)
    unsampled = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-00"
    with TestClient(app) as client:
        headers = {"traceparent": unsampled}
        assert (
            client.post("/pubsub/push", json=envelope(RECORD), headers=headers).status_code == 204
        )
    (server,) = observed.finished("POST /pubsub/push")
    assert f"{server.context.trace_id:032x}" == TRACE_ID
