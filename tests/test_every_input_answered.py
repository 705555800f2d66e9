"""Every input ends in a definite answer, and nothing stored breaks a read.

A push is stored (204), kept as a rejection naming the rule and the field
(204), or, only when the envelope itself is unusable, refused with a 400 that
says why. Each case here was once a 500 (a nack: the message looped into the
dead-letter topic) or a row that broke every later read.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar.testing import TestClient

from app.asgi import create_app
from app.errors import StoreUnavailable
from app.http.head import Recordline
from app.ingest.envelope import PushedMessage
from app.ingest.payload import PayloadValues
from app.ingest.service import to_row
from app.records import Record, Rejection
from app.store.duckdb.store import DuckDBStore
from tests.conftest import envelope, settings


def push_bytes(client: TestClient[Recordline], data: bytes, message_id: str, **extra: Any) -> Any:
    body = envelope(None, raw_data=data, message_id=message_id, **extra)
    return client.post("/pubsub/push", json=body)


def everything_reads(client: TestClient[Recordline]) -> list[dict[str, Any]]:
    """Walk every page of records and rejections, and look each record up: all 200."""
    records: list[dict[str, Any]] = []
    for path, key in (("/v1/records", "records"), ("/v1/rejections", "rejections")):
        params: dict[str, Any] = {"since": "1970-01-01T00:00:00Z", "limit": 2}
        while True:
            page = client.get(path, params=params)
            assert page.status_code == 200, page.text
            body = page.json()
            if key == "records":
                records += body[key]
            if not body[key]:
                break
            params = {"page_token": body["next_page_token"], "limit": 2}
    for record in records:
        assert client.get(f"/v1/records/{record['id']}").status_code == 200
        assert client.get(f"/v1/messages/{record['message_id']}").status_code == 200
    return records


def rejected_because(client: TestClient[Recordline], message_id: str) -> str:
    answer = client.get(f"/v1/messages/{message_id}")
    assert answer.status_code == 200, answer.text
    status = answer.json()
    assert status["status"] == "rejected", status
    reason: str = status["reason"]
    return reason


@pytest.mark.parametrize(
    "event_time",
    [
        "9999-12-31T23:59:59-14:00",  # year 10000 once in UTC
        "0001-01-01T00:00:00+00:01",  # year 0 once in UTC
    ],
)
def test_an_event_time_no_store_holds_is_a_rejection_and_reads_go_on(
    client: TestClient[Recordline], event_time: str
) -> None:
    assert push_bytes(client, b'{"id": "ok"}', "m-ok").status_code == 204
    payload = json.dumps({"id": "far", "timestamp": event_time}).encode()
    assert push_bytes(client, payload, "m-far").status_code == 204
    reason = rejected_because(client, "m-far")
    assert "`$.timestamp`" in reason
    assert "outside" in reason
    assert [r["id"] for r in everything_reads(client)] == ["ok"]


def test_the_edges_of_the_range_are_stored_and_read_back(client: TestClient[Recordline]) -> None:
    for message_id, event_time in (
        ("first", "0001-01-01T00:00:00Z"),
        ("last", "9999-12-31T23:59:59.999999Z"),
        ("shifted", "9999-12-31T09:59:59+00:00"),
    ):
        payload = json.dumps({"id": message_id, "timestamp": event_time}).encode()
        assert push_bytes(client, payload, message_id).status_code == 204
        assert client.get(f"/v1/records/{message_id}").json()["timestamp"] == event_time.replace(
            "+00:00", "Z"
        )
    assert len(everything_reads(client)) == 3


def test_an_event_time_out_of_range_under_a_mapping_names_its_field() -> None:
    app = create_app(settings(RECORDLINE_ID_FIELD="order", RECORDLINE_TIME_FIELD="at"))
    with TestClient(app) as client:
        payload = json.dumps({"order": "o-1", "at": "9999-12-31T23:59:59-14:00"}).encode()
        assert push_bytes(client, payload, "m-1").status_code == 204
        assert "`$.at`" in rejected_because(client, "m-1")
        everything_reads(client)


@pytest.mark.parametrize("publish_time", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+00:01"])
def test_a_publish_time_no_store_holds_is_an_unusable_envelope(
    client: TestClient[Recordline], publish_time: str
) -> None:
    wrapped = push_bytes(client, b'{"id": "1"}', "m-1", publish_time=publish_time)
    assert wrapped.status_code == 400
    assert "publishTime" in wrapped.json()["detail"]
    unwrapped = client.post(
        "/pubsub/push",
        content=b'{"id": "1"}',
        headers={"x-goog-pubsub-message-id": "m-2", "x-goog-pubsub-publish-time": publish_time},
    )
    assert unwrapped.status_code == 400
    assert "publish-time" in unwrapped.json()["detail"]
    assert client.get("/v1/messages/m-1").status_code == 404
    everything_reads(client)


@pytest.mark.slow
def test_invalid_utf8_inside_the_data_is_a_rejection(client: TestClient[Recordline]) -> None:
    raw = b'{"id": "1", "data": "caf\xe9"}'
    assert push_bytes(client, raw, "m-1").status_code == 204
    assert "not JSON" in rejected_because(client, "m-1")
    # Kept exactly as received, to replay once the publisher is fixed.
    page = client.get("/v1/rejections", params={"since": "2000-01-01T00:00:00Z"}).json()
    assert base64.b64decode(page["rejections"][0]["data"]) == raw


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_data_nested_deeper_than_bigquery_holds_is_a_rejection(
    client: TestClient[Recordline],
) -> None:
    for message_id, depth in (("m-500", 500), ("m-501", 501), ("m-1000", 1000), ("m-5000", 5000)):
        raw = b'{"id": "%s", "data": %s}' % (message_id.encode(), nested(depth))
        assert push_bytes(client, raw, message_id).status_code == 204
    assert client.get("/v1/messages/m-500").json()["status"] == "stored"
    for message_id in ("m-501", "m-1000", "m-5000"):
        assert "nested more than 500 levels" in rejected_because(client, message_id)
    # Brackets inside strings are text, not nesting.
    text = json.dumps({"id": "s", "data": ["[" * 600, '\\"[' * 600]}).encode()
    assert push_bytes(client, text, "m-text").status_code == 204
    assert client.get("/v1/messages/m-text").json()["status"] == "stored"
    everything_reads(client)


@pytest.mark.slow
def test_a_whole_payload_nested_too_deep_is_a_rejection_under_a_mapping() -> None:
    with TestClient(create_app(settings(RECORDLINE_ID_FIELD="order"))) as client:
        raw = b'{"order": "o", "x": %s}' % nested(2000)
        assert push_bytes(client, raw, "m-1").status_code == 204
        assert "nested more than 500 levels" in rejected_because(client, "m-1")


def test_an_envelope_nested_too_deep_is_a_400(client: TestClient[Recordline]) -> None:
    body = b'{"message": {"messageId": "m-1", "publishTime": "2024-04-27T12:00:01Z", "x": %s}}'
    response = client.post(
        "/pubsub/push",
        content=body % nested(3000),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert "nested too deeply" in response.json()["detail"]


@pytest.mark.parametrize("attempt", [2**31, 2**63, 2**64 + 1, -1])
def test_a_delivery_attempt_out_of_range_is_a_400_and_the_store_goes_on(
    client: TestClient[Recordline], attempt: int
) -> None:
    response = push_bytes(client, b'{"id": "1"}', "m-1", deliveryAttempt=attempt)
    assert response.status_code == 400
    assert "deliveryAttempt" in response.json()["detail"]
    header = client.post(
        "/pubsub/push",
        content=b'{"id": "1"}',
        headers={
            "x-goog-pubsub-message-id": "m-1",
            "x-goog-pubsub-publish-time": "2024-04-27T12:00:01Z",
            "x-goog-pubsub-delivery-attempt": str(attempt),
        },
    )
    assert header.status_code == 400
    assert "delivery-attempt" in header.json()["detail"]
    assert push_bytes(client, b'{"id": "2"}', "m-2", deliveryAttempt=5).status_code == 204
    assert client.get("/v1/records/2").json()["delivery_attempt"] == 5
    assert client.get("/readyz").status_code == 200


@pytest.mark.slow
def test_attributes_beyond_what_pubsub_allows_are_an_unusable_envelope(
    client: TestClient[Recordline],
) -> None:
    for attributes in ({"k" * 257: "v"}, {"k": "v" * 1025}):
        response = push_bytes(client, b'{"id": "1"}', "m-1", attributes=attributes)
        assert response.status_code == 400, response.text
    assert (
        push_bytes(client, b'{"id": "1"}', "m-1", attributes={"k" * 256: "v" * 1024}).status_code
        == 204
    )


def test_a_subscription_name_longer_than_any_is_an_unusable_envelope(
    client: TestClient[Recordline],
) -> None:
    body = envelope({"id": "1"})
    body["subscription"] = "projects/p/subscriptions/" + "s" * 2000
    assert client.post("/pubsub/push", json=body).status_code == 400


def test_times_no_store_holds_read_from_the_start_or_to_the_end(
    client: TestClient[Recordline],
) -> None:
    # RFC 3339 times of the years 1 to 9999, outside them once in UTC: valid by the
    # OpenAPI document (a date-time), so taken, as the same bound at the edge would be.
    assert push_bytes(client, b'{"id": "1"}', "m-1").status_code == 204
    for params, ids in (
        ({"until": "9999-12-31T23:59:59-14:00"}, ["1"]),
        ({"since": "0001-01-01T00:00:00+00:01"}, ["1"]),
        ({"since": "9999-12-31T23:59:59-14:00"}, []),
    ):
        response = client.get("/v1/records", params=params)
        assert response.status_code == 200, (params, response.text)
        assert [r["id"] for r in response.json()["records"]] == ids, params


@pytest.mark.slow
async def test_a_store_that_stopped_applying_writes_is_not_ready() -> None:
    store = DuckDBStore(":memory:")
    await store.start()
    try:
        await store.check()
        # Past what validation lets through: INT64 holds no such attempt.
        unstorable = Record(
            message_id="m-1", publish_time=0, ingest_time=1, id="1", delivery_attempt=2**63
        )
        await store.append([unstorable])
        with pytest.raises(StoreUnavailable):
            await store.barrier()
        with pytest.raises(StoreUnavailable, match="cannot be applied"):
            await store.check()
    finally:
        await store.close()


class BrokenReader:
    """A reader with a bug: it raises what no reader may."""

    schema = None

    def read(self, data: bytes) -> PayloadValues:
        raise KeyError("a bug")


def test_a_reader_bug_keeps_the_message_as_a_rejection() -> None:
    message = PushedMessage(
        message_id="m-1", publish_time=0, data=b"{}", raw_data=b"{}", attributes={}
    )
    row = to_row(message, 1, trace_id=None, reader=BrokenReader())
    assert isinstance(row, Rejection)
    assert row.data == b"{}"
    assert "KeyError" in row.reason


# -- replay -----------------------------------------------------------------------


def replayed(
    data: bytes, message_id: str, publish_time: str = "2024-04-27T12:00:01Z"
) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "publish_time": publish_time,
        "data": base64.b64encode(data).decode(),
    }


@pytest.mark.parametrize("dry_run", [False, True])
def test_replay_names_what_it_cannot_take_and_sends_the_rest(
    client: TestClient[Recordline], dry_run: bool
) -> None:
    batch = [
        replayed(b'{"id": "1", "data": "caf\xe9"}', "bad-utf8"),
        replayed(b'{"id": "2", "data": %s}' % nested(1000), "deep"),
        replayed(json.dumps({"id": "3", "timestamp": "9999-12-31T23:59:59-14:00"}).encode(), "far"),
        replayed(b'{"id": "4"}', "good"),
    ]
    answer = client.post("/v1/replay", json={"messages": batch, "dry_run": dry_run})
    assert answer.status_code == 200, answer.text
    outcomes = {
        r["message_id"]: (r["outcome"], r.get("reason", "")) for r in answer.json()["results"]
    }
    assert outcomes["good"] == ("stored", "")
    for message_id in ("bad-utf8", "deep", "far"):
        assert outcomes[message_id][0] == "rejected"
        assert outcomes[message_id][1]
    expected = 404 if dry_run else 200
    assert client.get("/v1/records/4").status_code == expected
    everything_reads(client)


def test_replay_of_a_publish_time_no_store_holds_names_the_message(
    client: TestClient[Recordline],
) -> None:
    batch = [
        replayed(b'{"id": "1"}', "ok"),
        replayed(b'{"id": "2"}', "far", "9999-12-31T23:59:59-14:00"),
    ]
    answer = client.post("/v1/replay", json={"messages": batch})
    assert answer.status_code == 400
    assert answer.json()["field"] == "messages[1].publish_time"
    everything_reads(client)


@pytest.mark.parametrize(
    "body",
    [
        b'{"messages": %s}' % nested(3000),
        b'{"messages": [{"message_id": "a\xff", "publish_time": "2024-04-27T12:00:01Z"}]}',
    ],
)
def test_a_replay_body_that_cannot_be_read_is_a_400(
    client: TestClient[Recordline], body: bytes
) -> None:
    response = client.post("/v1/replay", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


def test_an_id_no_path_can_name_is_refused(client: TestClient[Recordline]) -> None:
    # `/v1/messages/%2F` reaches the router as `/v1/messages//`, whose trailing
    # slashes it drops: such an id could be stored but never looked up.
    for message_id in ("/", "//"):
        response = push_bytes(client, b'{"id": "1"}', message_id)
        assert response.status_code == 400
        assert "only slashes" in response.json()["detail"]
    assert push_bytes(client, b'{"id": "/"}', "m-1").status_code == 204
    assert "only slashes" in rejected_because(client, "m-1")
    # Ids with a slash among other characters, or of dots, are fine.
    for message_id, record_id in (("m-2", "a/"), ("m-3", "/a"), ("m-4", "."), ("m-5", "..")):
        body = json.dumps({"id": record_id}).encode()
        assert push_bytes(client, body, message_id).status_code == 204
        assert client.get(f"/v1/messages/{message_id}").json()["status"] == "stored"


def test_a_publish_time_later_than_the_push_is_a_rejection(client: TestClient[Recordline]) -> None:
    # Deduplication looks for a message's earlier copies after its publish
    # time: a later one hid nothing, and a follower read the message twice.
    for attempt in range(2):
        response = push_bytes(
            client,
            b'{"id": "1"}',
            "m-1",
            publish_time="3519-12-22T08:44:32Z",
            deliveryAttempt=attempt + 1,
        )
        assert response.status_code == 204
    assert "publishTime" in rejected_because(client, "m-1")
    assert everything_reads(client) == []
    # Within the clocks' margin of now, it is stored.
    soon = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    assert push_bytes(client, b'{"id": "2"}', "m-2", publish_time=soon).status_code == 204
    assert client.get("/v1/messages/m-2").json()["status"] == "stored"
