"""The metrics dashboards and SLOs are built on, under their exact names."""

from __future__ import annotations

import time

import pytest
from litestar.testing import TestClient
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.parser import text_string_to_metric_families

from app.asgi import create_app
from app.http.head import Recordline
from app.store.duckdb.store import DuckDBStore
from app.telemetry.metrics import coarse_reason
from tests.conftest import envelope, settings
from tests.fakes import FaultyStore
from tests.telemetry.conftest import RECORD, Observed


@pytest.mark.slow
def test_stored_message_records_its_lag_and_outcome(
    client: TestClient[Recordline], observed: Observed
) -> None:
    published = time.time() - 90
    publish_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(published))
    response = client.post("/pubsub/push", json=envelope(RECORD, publish_time=publish_time))
    assert response.status_code == 204

    assert observed.count("recordline.messages", outcome="stored") == 1
    (lag,) = observed.points("recordline.ingest.lag")
    assert lag.count == 1
    # Published 90 s ago, to the second: the lag lands in the (60, 120] bucket.
    assert 89 <= lag.sum <= 95
    assert lag.explicit_bounds[-1] == 3600
    (rows,) = observed.points("recordline.append.rows")
    assert (rows.count, rows.sum) == (1, 1)
    (duration,) = observed.points("recordline.append.duration")
    assert duration.count == 1
    assert duration.explicit_bounds[0] == 0.001


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (envelope({"id": True}), "id"),
        (envelope({"data": "no id"}), "id"),
        (envelope({"id": "1", "timestamp": "yesterday"}), "timestamp"),
        (envelope([1, 2]), "payload"),
        (envelope(None, raw_data=b"{not json"), "json"),
        (
            {
                "message": {
                    "data": "***",
                    "messageId": "m-1",
                    "publishTime": "2024-04-27T12:00:01Z",
                },
            },
            "base64",
        ),
        (
            # Attributes alone: Pub/Sub leaves `data` out (its reason was the payload's
            # "not JSON: Input data was truncated", counted as `json`).
            {
                "message": {
                    "attributes": {"a": "1"},
                    "messageId": "m-1",
                    "publishTime": "2024-04-27T12:00:01Z",
                }
            },
            "empty",
        ),
    ],
)
def test_rejection_is_counted_with_a_coarse_reason(
    client: TestClient[Recordline], observed: Observed, message: dict[str, object], reason: str
) -> None:
    assert client.post("/pubsub/push", json=message).status_code == 204
    assert client.get("/v1/messages/m-1").json()["status"] == "rejected"
    assert observed.count("recordline.messages", outcome="rejected", reason=reason) == 1
    assert observed.count("recordline.messages", outcome="stored") == 0


def test_store_failure_is_counted_as_retried_with_its_cause(
    client: TestClient[Recordline], store: FaultyStore, observed: Observed
) -> None:
    store.failing = True
    assert client.post("/pubsub/push", json=envelope(RECORD)).status_code == 503
    assert client.post("/pubsub/push", json=envelope(RECORD)).status_code == 503
    assert observed.count("recordline.messages", outcome="retried", reason="store") == 2
    assert observed.points("recordline.ingest.lag") == []


@pytest.mark.slow
def test_deadline_is_counted_as_retried_with_its_cause(
    store: FaultyStore, observed: Observed
) -> None:
    app = create_app(
        settings(RECORDLINE_WRITE_DEADLINE_SECONDS="0.1"), store=store, telemetry=observed.telemetry
    )
    store.delay = 0.5
    with TestClient(app) as client:
        assert client.post("/pubsub/push", json=envelope(RECORD)).status_code == 503
        assert observed.count("recordline.messages", outcome="retried", reason="deadline") == 1


def test_queries_are_timed_by_route(client: TestClient[Recordline], observed: Observed) -> None:
    client.post("/pubsub/push", json=envelope(RECORD))
    client.get("/v1/records")
    client.get("/v1/records/1")
    client.get("/v1/messages/m-1")
    client.get("/v1/rejections")
    routes = {p.attributes["route"]: p.count for p in observed.points("recordline.query.duration")}
    assert routes == {
        "/v1/records": 1,
        "/v1/records/{record_id}": 1,
        "/v1/messages/{message_id}": 1,
        "/v1/rejections": 1,
    }


def test_every_store_call_is_written_out_and_every_read_has_a_route() -> None:
    # Nothing is forwarded in silence: a method added to the Store protocol
    # fails here until ObservedStore says how it is observed.
    import inspect

    from app.store import Store
    from app.telemetry import Telemetry
    from app.telemetry.store import READ_METHODS, ObservedStore

    protocol = {
        name
        for name, member in vars(Store).items()
        if not name.startswith("_") and inspect.isfunction(member)
    } | set(Store.__annotations__)
    observed = Telemetry().observe(DuckDBStore(":memory:"))
    # Methods written out in the class; attributes set from the inner store.
    written = set(vars(ObservedStore)) | set(vars(observed))
    assert protocol <= written, f"not observed: {protocol - written}"
    reads = {
        name
        for name in protocol
        if inspect.iscoroutinefunction(getattr(Store, name, None))
        and name not in {"start", "close", "check", "barrier", "append"}
    }
    assert reads == set(READ_METHODS)


def test_queue_depth_and_watermark_lag_are_gauges(
    client: TestClient[Recordline], observed: Observed
) -> None:
    (depth,) = observed.points("recordline.queue.depth")
    assert depth.value == 0
    (watermark,) = observed.points("recordline.watermark.lag")
    # Nothing pending on a local store: the horizon is now.
    assert 0 <= watermark.value < 5


def _ago(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds))


def test_canary_age_is_reported_once_a_canary_is_stored_and_grows_without_one(
    client: TestClient[Recordline], observed: Observed
) -> None:
    # Real traffic alone says nothing about the canary: no point, which the
    # absence alert sees.
    client.post("/pubsub/push", json=envelope(RECORD, message_id="real-1", publish_time=_ago(5)))
    assert observed.points("recordline.canary.age") == []

    canary = {"id": "recordline-canary", "data": {"canary": True}}
    response = client.post(
        "/pubsub/push",
        json=envelope(
            canary,
            message_id="canary-1",
            publish_time=_ago(30),
            attributes={"recordline-canary": "1"},
        ),
    )
    assert response.status_code == 204
    # Stored like any record.
    assert client.get("/v1/messages/canary-1").json()["status"] == "stored"
    (age,) = observed.points("recordline.canary.age")
    assert 29 <= age.value < 35

    # A newer canary moves it back.
    client.post(
        "/pubsub/push",
        json=envelope(
            canary,
            message_id="canary-2",
            publish_time=_ago(2),
            attributes={"recordline-canary": "1"},
        ),
    )
    (age,) = observed.points("recordline.canary.age")
    assert 1 <= age.value < 7

    # A stalled pipeline: no canary arrives, real traffic or not, and the age grows.
    client.post("/pubsub/push", json=envelope(RECORD, message_id="real-2", publish_time=_ago(0)))
    observed.ahead += 60
    (later,) = observed.points("recordline.canary.age")
    assert later.value == pytest.approx(age.value + 60, abs=1)


def test_pages_carry_their_freshness_in_a_header(client: TestClient[Recordline]) -> None:
    client.post("/pubsub/push", json=envelope(RECORD))
    response = client.get("/v1/records")
    assert response.headers["Recordline-Complete-Until"] == response.json()["complete_until"]


def test_prometheus_text_is_served_at_metrics(store: FaultyStore) -> None:
    # The default: OTEL_METRICS_EXPORTER=prometheus, readable without any collector.
    with TestClient(create_app(settings(), store=store)) as client:
        client.post("/pubsub/push", json=envelope(RECORD))
        response = client.get("/metrics")
    assert response.status_code == 200
    # One charset, the version of the format generate_latest writes, as
    # prometheus_client itself serves it.
    assert response.headers["content-type"] == CONTENT_TYPE_PLAIN_0_0_4
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = response.text
    names = {family.name for family in text_string_to_metric_families(text)}
    assert "recordline_messages" in names
    assert "recordline_ingest_lag_seconds_bucket" in text
    assert stored_count(text) == 1
    assert "recordline_queue_depth" in text
    assert "recordline_canary_age" not in text


def test_the_openapi_document_says_metrics_are_prometheus_text(store: FaultyStore) -> None:
    with TestClient(create_app(settings(), store=store)) as client:
        document = client.get("/docs/openapi.json").json()
    answer = document["paths"]["/metrics"]["get"]["responses"]["200"]
    assert list(answer["content"]) == ["text/plain; version=0.0.4"]
    assert answer["content"]["text/plain; version=0.0.4"]["schema"]["type"] == "string"


def test_prometheus_text_shows_the_canary_age(store: FaultyStore) -> None:
    with TestClient(create_app(settings(), store=store)) as client:
        client.post(
            "/pubsub/push",
            json=envelope(
                {"id": "recordline-canary"},
                publish_time=_ago(10),
                attributes={"recordline-canary": "1"},
            ),
        )
        text = client.get("/metrics").text
    (line,) = [
        line for line in text.splitlines() if line.startswith("recordline_canary_age_seconds{")
    ]
    assert 9 <= float(line.rsplit(" ", 1)[1]) < 20


@pytest.mark.slow
def test_two_apps_in_one_process_keep_their_own_metrics(store: FaultyStore) -> None:
    first = create_app(settings(), store=store)
    second = create_app(settings(), store=FaultyStore(DuckDBStore(":memory:")))
    with TestClient(first) as one, TestClient(second) as two:
        one.post("/pubsub/push", json=envelope(RECORD))
        assert stored_count(one.get("/metrics").text) == 1
        assert stored_count(two.get("/metrics").text) == 0


def stored_count(prometheus_text: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in prometheus_text.splitlines()
        if line.startswith("recordline_messages_total{") and 'outcome="stored"' in line
    )


def test_no_metrics_route_without_prometheus(store: FaultyStore) -> None:
    app = create_app(settings(OTEL_METRICS_EXPORTER="none"), store=store)
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 404


def test_coarse_reason_names_the_first_field() -> None:
    assert coarse_reason("payload: Expected `str`, got `int` - at `$.id`") == "id"
    assert coarse_reason("payload: Object missing required field `id`") == "id"
    assert coarse_reason("payload: Expected `object`, got `array`") == "payload"
    assert coarse_reason("payload is not JSON: malformed") == "json"
    assert coarse_reason("message.data: not valid base64") == "base64"


class _FailsToClose(FaultyStore):
    async def close(self) -> None:
        await super().close()
        raise OSError("injected: the store failed to close")


def test_a_store_that_fails_to_close_still_leaves_telemetry_flushed(observed: Observed) -> None:
    store = _FailsToClose(DuckDBStore(":memory:"))
    app = create_app(settings(), store=store, telemetry=observed.telemetry)

    def serve_one_push() -> None:
        with TestClient(app) as client:
            assert client.post("/pubsub/push", json=envelope(RECORD)).status_code == 204
            assert observed.exported.data is None  # nothing exported while it runs

    with pytest.raises(ExceptionGroup) as raised:
        serve_one_push()
    assert raised.group_contains(OSError, match="failed to close")
    # Shut down after the store's failure: what was counted reached the exporter.
    assert observed.exported.data is not None
    names = {
        m.name
        for resource in observed.exported.data.resource_metrics
        for scope in resource.scope_metrics
        for m in scope.metrics
    }
    assert "recordline.messages" in names
