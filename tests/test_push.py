"""The acknowledgement contract, through the HTTP route."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import duckdb
import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st
from litestar import Litestar, Response, post
from litestar.datastructures import Cookie, ResponseHeader
from litestar.plugins.problem_details import ProblemDetailsConfig, ProblemDetailsPlugin
from litestar.testing import AsyncTestClient, TestClient

from app.asgi import create_app
from app.errors import QueueFull, RecordlineError, Throttled
from app.http.head import Recordline
from app.ingest.batcher import Batcher, BatchLimits
from app.ingest.envelope import is_attribute
from app.ingest.payload import Payloads
from app.ingest.schemas import SchemaNotFound, SchemaRevision, Schemas
from app.ingest.service import Ingest
from app.ingest.shape import FieldPaths
from app.problems import Problems
from app.records import MAX_ID_LENGTH, Record, Rejection
from app.routes.ingest import STORED, push_routes
from app.settings import QUEUED_ROW_BYTES, BatchSettings, Settings
from app.store import RowOutcome
from tests.conftest import envelope, served, settings
from tests.fakes import FaultyStore
from tests.fuzz.budget import EXAMPLES
from tests.uploads import Upload
from tests.uploads import post as asgi_post
from tests.waiting import until

RECORD = {"id": "1", "timestamp": "2024-04-27T12:00:00Z", "data": "Ejemplo de datos"}


def test_stored_message_is_acknowledged_and_readable(client: TestClient[Recordline]) -> None:
    response = client.post("/pubsub/push", json=envelope(RECORD, attributes={"origin": "demo"}))
    assert response.status_code == 204

    record = client.get("/v1/records/1").json()
    assert record["message_id"] == "m-1"
    assert record["data"] == "Ejemplo de datos"
    assert record["attributes"] == {"origin": "demo"}
    assert record["timestamp"] == "2024-04-27T12:00:00Z"
    assert record["publish_time"] == "2024-04-27T12:00:01Z"
    assert record["subscription"] == "projects/demo/subscriptions/records-push"
    status = client.get("/v1/messages/m-1").json()
    assert status["status"] == "stored"


def test_a_stored_push_is_answered_204_and_nothing_else(client: TestClient[Recordline]) -> None:
    for i in range(3):  # the answer is made once: each push gets it whole
        response = client.post("/pubsub/push", json=envelope(RECORD, message_id=f"m-{i}"))
        assert (response.status_code, response.content) == (204, b"")
        assert not response.headers  # what Litestar answers a handler's None with


def test_the_pushs_answer_keeps_what_a_layer_adds() -> None:
    layered = Litestar(
        [post("/", status_code=204)(_stored)],
        response_headers=[ResponseHeader(name="x-layer", value="kept")],
        response_cookies=[Cookie(key="c", value="v")],
    )
    with TestClient(layered) as client:
        response = client.post("/")
    assert response.status_code == 204
    assert response.headers["x-layer"] == "kept"
    assert response.cookies["c"] == "v"


async def _stored() -> Response[None]:
    return STORED


class _FullQueue:
    """An ingest whose system's queue has no room (taken by another push between the
    head's look and the route)."""

    def reserve(self, declared: int | None) -> int:
        raise QueueFull("0 rows are waiting to be stored and 1 push is being read")


def test_a_push_refused_for_a_full_queue_spends_none_of_its_systems_throttle() -> None:
    spent: list[bool] = []

    def pace(*, spend: bool = True) -> RecordlineError | None:
        spent.append(spend)
        return None

    ingest = cast("Ingest", _FullQueue())
    problems = ProblemDetailsConfig(
        exception_to_problem_detail_map=Problems(max_body_bytes=1024).exception_map
    )
    app = Litestar(push_routes(ingest, throttled=pace), plugins=[ProblemDetailsPlugin(problems)])
    with TestClient(app) as client:
        answer = client.post("/pubsub/push", json=envelope(RECORD))
    assert answer.status_code == 503, answer.text
    assert answer.json()["type"] == "/problems/queue-full"
    assert spent == []  # looked at by nobody, counted for nothing


class _NoSchemas:
    """A schema registry no push of these tests names."""

    async def revision(self, name: str, revision_id: str) -> SchemaRevision:
        raise SchemaNotFound(name)

    async def close(self) -> None:
        pass


class _NeverAppended:
    """A store no row reaches: the batcher that would append to it never starts."""

    async def append(self, rows: Sequence[Record | Rejection]) -> Sequence[RowOutcome]:
        raise AssertionError("no push of these tests is stored")


def _one_push_of_room(max_body: int) -> Ingest:
    """An ingest whose queue has room for exactly one push still being read, of a body
    up to `max_body` bytes, and nothing more (its batcher never started: nothing is
    stored)."""
    size = 2 * max_body + QUEUED_ROW_BYTES
    limits = BatchLimits(max_rows=1, max_bytes=size, queue_rows=1, queue_bytes=size)
    batcher = Batcher(_NeverAppended(), limits, deadline=1.0)
    paths = FieldPaths(id_field="id", time_field="timestamp")
    return Ingest(batcher, Payloads(paths, Schemas(_NoSchemas(), timeout=1)), max_body=max_body)


async def _chunks(length: int) -> AsyncIterator[bytes]:
    """A body of `length` bytes sent chunked: its head declares no length."""
    yield b"x" * (length - 1)
    yield b"x"


class _CutOff:
    """A push's body whose connection ends after its first bytes (as `Upload` is read)."""

    def __init__(self, body: bytes) -> None:
        self._said: Iterator[dict[str, Any]] = iter(
            [{"type": "http.request", "body": body[:10], "more_body": True}]
        )

    async def receive(self) -> dict[str, Any]:
        return next(self._said, {"type": "http.disconnect"})


async def _disconnected_mid_body(app: Litestar) -> int:
    """What a push whose connection ends after part of its body is answered (the status
    the server would have sent, had its client stayed)."""
    body = json.dumps(envelope(RECORD)).encode()
    headers = {"content-type": "application/json", "content-length": str(len(body))}
    upload = cast("Upload", _CutOff(body))
    status, _, _ = await asgi_post(cast("Recordline", app), upload, headers=headers)
    assert isinstance(status, int)
    return status


@pytest.mark.parametrize("path", ["/pubsub/push", "/v1/replay"])
async def test_a_body_whose_connection_ends_part_way_is_the_senders_400(path: str) -> None:
    # On every route that reads a body: the sender's doing, never an unexpected 500.
    settings = Settings.load({"RECORDLINE_STORE": "memory:"})
    async with AsyncTestClient(create_app(settings)) as client:
        body = json.dumps(envelope(RECORD)).encode()
        headers = {"content-type": "application/json", "content-length": str(len(body))}
        upload = cast("Upload", _CutOff(body))
        status, _, answer = await asgi_post(client.app, upload, headers=headers, path=path)
    assert status == 400, answer
    assert json.loads(answer)["detail"] == "the connection ended before the body did"


async def test_refused_pushes_give_back_the_room_they_reserved() -> None:
    # Throttled (429), not an envelope (400), longer than declared room (413), and a
    # connection gone mid-body: each reserved its row's room on its head, and each
    # must give it back, or a queue with room for one push refuses every push after.
    throttling = True

    def pace(*, spend: bool = True) -> RecordlineError | None:
        return Throttled("slowed", retry_after=1) if throttling else None

    max_body = 4096
    ingest = _one_push_of_room(max_body)
    problems = ProblemDetailsConfig(
        exception_to_problem_detail_map=Problems(max_body_bytes=max_body).exception_map
    )
    app = Litestar(
        push_routes(ingest, throttled=pace),
        plugins=[ProblemDetailsPlugin(problems)],
        request_max_body_size=max_body,
    )
    statuses: list[int] = []
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=cast("Any", app)), base_url="http://testserver"
    ) as client:
        for _ in range(20):
            push = await client.post("/pubsub/push", json=envelope(RECORD))
            statuses.append(push.status_code)
        throttling = False
        for _ in range(20):
            push = await client.post("/pubsub/push", content=b"{not json")
            statuses.append(push.status_code)
            chunked = await client.post("/pubsub/push", content=_chunks(max_body + 1))
            statuses.append(chunked.status_code)
            statuses.append(await _disconnected_mid_body(app))
    # A connection gone is the sender's doing: 400, not an error of the service's.
    assert set(statuses) == {429, 400, 413}, statuses
    assert ingest.room(max_body) is None  # all of its room, given back
    ingest.unreserve(ingest.reserve(max_body))


def test_issue_example_envelope(client: TestClient[Recordline]) -> None:
    body = (
        '{"message":{"data":"eyJpZCI6IjEiLCJ0aW1lc3RhbXAiOiIyMDI0LTA0LTI3VDEyOjAwOjAwWiIsImRhdGEi'
        'OiJFamVtcGxvIGRlIGRhdG9zIn0=","messageId":"m-1","publishTime":"2024-04-27T12:00:01Z",'
        '"attributes":{"origin":"demo"}},"subscription":"projects/demo/subscriptions/records-push"}'
    )
    response = client.post(
        "/pubsub/push", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 204
    page = client.get("/v1/records", params={"since": "2024-01-01T00:00:00Z"}).json()
    assert [r["id"] for r in page["records"]] == ["1"]


def test_data_of_any_json_type_is_kept_exactly(client: TestClient[Recordline]) -> None:
    values = [{"nested": [1, 2.5, None, True]}, [1, "two"], 42, "text", None, {"ñ": "ü€"}]
    for n, value in enumerate(values):
        payload = {"id": f"r{n}", "data": value}
        response = client.post("/pubsub/push", json=envelope(payload, message_id=f"m{n}"))
        assert response.status_code == 204
    for n, value in enumerate(values):
        assert client.get(f"/v1/records/r{n}").json()["data"] == value


def test_invalid_payload_is_stored_as_rejection_and_acknowledged(
    client: TestClient[Recordline],
) -> None:
    cases = {
        "no-id": ({"data": 1}, "`id`"),
        "empty-id": ({"id": "", "data": 1}, "$.id"),
        "bool-id": ({"id": True}, "$.id"),
        "fraction-id": ({"id": 7.5}, "$.id"),
        "bad-time": ({"id": "x", "timestamp": "yesterday"}, "$.timestamp"),
        "naive-time": ({"id": "x", "timestamp": "2024-04-27T12:00:00"}, "$.timestamp"),
        "not-object": ([1, 2], "payload"),
    }
    for message_id, (payload, field) in cases.items():
        response = client.post("/pubsub/push", json=envelope(payload, message_id=message_id))
        assert response.status_code == 204, message_id
        status = client.get(f"/v1/messages/{message_id}").json()
        assert status["status"] == "rejected", message_id
        assert field in status["reason"], (message_id, status["reason"])


@pytest.mark.slow
@pytest.mark.parametrize("mapping", [False, True], ids=["contract", "mapping"])
def test_an_integer_id_is_its_digits_by_the_contract_and_under_a_mapping(mapping: bool) -> None:
    # The same rule either way: text as it is, an integer as its digits (JSON
    # holds integers of any size exactly); any other number, or a boolean, is
    # refused naming the field, and so are more digits than an id may have.
    field = "order_id" if mapping else "id"
    config = settings(RECORDLINE_ID_FIELD=field) if mapping else settings()
    big = 12345678901234567890123
    stored = {"m-7": 7, "m-neg": -12, "m-big": big, "m-text": "7x"}
    refused = {"m-frac": 7.5, "m-bool": True, "m-long": int("9" * (MAX_ID_LENGTH + 1))}
    with TestClient(create_app(config)) as client:
        for message_id, value in {**stored, **refused}.items():
            body = envelope({field: value, "data": 1}, message_id=message_id)
            assert client.post("/pubsub/push", json=body).status_code == 204
        for message_id, value in stored.items():
            status = client.get(f"/v1/messages/{message_id}").json()
            assert status["status"] == "stored", (message_id, status)
            assert status["record"]["id"] == str(value)
        assert client.get("/v1/records/7").json()["message_id"] == "m-7"
        assert client.get(f"/v1/records/{big}").json()["message_id"] == "m-big"
        for message_id in refused:
            status = client.get(f"/v1/messages/{message_id}").json()
            assert status["status"] == "rejected", (message_id, status)
            assert f"$.{field}" in status["reason"], status["reason"]
        too_long = client.get("/v1/messages/m-long").json()["reason"]
        assert f"more than {MAX_ID_LENGTH}" in too_long


def test_undecodable_data_is_rejected_with_its_bytes(duckdb_path: Path) -> None:
    not_json = envelope(None, message_id="not-json", raw_data=b"{oops")
    not_utf8 = envelope(None, message_id="not-utf8", raw_data=b'{"id": "\xff"}')
    not_base64 = envelope(None, message_id="not-base64")
    not_base64["message"]["data"] = "***not base64***"
    app = create_app(settings(RECORDLINE_STORE=f"duckdb://{duckdb_path}"))
    with TestClient(app) as client:
        for body in (not_json, not_utf8, not_base64):
            assert client.post("/pubsub/push", json=body).status_code == 204
        reasons = {
            m: client.get(f"/v1/messages/{m}").json()["reason"]
            for m in ("not-json", "not-utf8", "not-base64")
        }
    assert "not JSON" in reasons["not-json"]
    assert "not JSON" in reasons["not-utf8"]
    assert "base64" in reasons["not-base64"]
    # The bytes are kept exactly, so a fixed consumer can replay them.
    with duckdb.connect(str(duckdb_path), read_only=True) as con:
        kept = dict(con.execute("SELECT message_id, data FROM rejected").fetchall())
    assert kept == {
        "not-json": b"{oops",
        "not-utf8": b'{"id": "\xff"}',
        "not-base64": b"***not base64***",
    }


@pytest.mark.parametrize("mapping", [False, True], ids=["contract", "mapping"])
def test_half_a_character_is_named_where_the_decoder_says_truncated(mapping: bool) -> None:
    # A lone high surrogate's escape is no character (JSON text is Unicode): the decoder
    # refuses it as "Input data was truncated", which tells a publisher nothing. A
    # payload truly cut short still says so; an escaped backslash before `ud800` is text.
    config = settings(RECORDLINE_ID_FIELD="order_id") if mapping else settings()
    key = "order_id" if mapping else "id"
    half = f'{{"{key}":"h","data":{{"a":"\\ud800"}}}}'.encode()
    cut = f'{{"{key}":"c","data":"ab'.encode()
    text = f'{{"{key}":"t","data":"\\\\ud800"}}'.encode()
    with TestClient(create_app(config)) as client:
        for message_id, data in {"half": half, "cut": cut, "text": text}.items():
            body = envelope(None, message_id=message_id, raw_data=data)
            assert client.post("/pubsub/push", json=body).status_code == 204
        reasons = {m: client.get(f"/v1/messages/{m}").json().get("reason") for m in ("half", "cut")}
        assert client.get("/v1/messages/text").json()["status"] == "stored"
    offset = half.index(b"\\ud800")
    # Where, and what is wrong there, naming nothing the payload holds.
    assert reasons["half"] == (
        f"payload is not JSON: half of a character at byte {offset}: an escape of a high "
        "surrogate (\\uD800 to \\uDBFF) with no low one after it, which JSON text cannot hold"
    )
    assert reasons["cut"] == "payload is not JSON: Input data was truncated"


def test_half_a_character_is_named_anywhere_and_a_payload_cut_short_is_truncated() -> None:
    # The decoder names a lone high surrogate where six bytes or more follow its escape,
    # and says "truncated" where fewer do: both are named alike, at the escape's byte,
    # in any payload's size. A payload whose bytes end after the escape, or part way
    # through a low one's after it, was cut short: the rest of its character may be
    # what is missing.
    from app.ingest.payload import not_json

    def reason(data: bytes) -> str:
        with pytest.raises(msgspec.DecodeError) as refused:
            msgspec.json.decode(data)
        return str(not_json(data, refused.value))

    head = b'{"id":"c","data":"'
    for tail in (b"", b"\\", b"\\u", b"\\ud", b"\\uDC", b"\\udc0"):
        assert reason(head + b"\\ud800" + tail).endswith("Input data was truncated"), tail
    for tail in (b'"', b'"}', b"\\\\", b"\\u0", b"\\ud8", b"\\uda", b' and more text"}'):
        assert f"half of a character at byte {len(head)}:" in reason(head + b"\\ud800" + tail)
    # A megabyte before it, or after it.
    big = b"a" * 1_000_000
    assert f"at byte {len(head) + len(big)}:" in reason(head + big + b'\\uDBFF"}')
    assert f"at byte {len(head)}:" in reason(head + b"\\uDBFF" + big + b'"}')
    # An escaped backslash before `ud800` is text: a cut there is truncated.
    assert reason(head + b"\\\\ud800").endswith("Input data was truncated")
    # As the contract reads it: `data` skipped unread (the decoder's words differ there)
    # and an id, each with text after the escape.
    from app.ingest.payload import CONTRACT
    from app.ingest.shape import Invalid

    for payload in (
        b'{"id":"c","data":"\\ud800 then more text"}',
        b'{"id":"\\ud800 then more text","data":1}',
    ):
        at = payload.index(b"\\u")
        with pytest.raises(Invalid) as refused:
            CONTRACT.read(payload)
        assert f"half of a character at byte {at}:" in str(refused.value)
    # Past 64 backslashes before it, no publisher's text: the decoder's words, in µs.
    assert reason(head + b"\\" * 10_000 + b'\\ud800"}').endswith("Input data was truncated")


def test_not_an_envelope_is_400_problem(client: TestClient[Recordline]) -> None:
    for body in (
        b"not json",
        b"[]",
        b'{"message": 5}',
        b'{"message": {"data": "e30="}}',
        b'{"message": {"messageId": "x"}}',
        b'{"message": {"messageId": "x", "publishTime": "soon"}}',
        "\xff".encode("latin-1"),
    ):
        response = client.post(
            "/pubsub/push", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, body
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["status"] == 400


@pytest.mark.parametrize(
    ("id_fields", "said"),
    [
        ({}, "`$.message.messageId` is missing"),
        ({"messageId": ""}, "`$.message.messageId` is empty"),
        ({"messageId": "", "message_id": ""}, "`$.message.messageId` is empty"),
        ({"message_id": ""}, "`$.message.message_id` is empty"),
        ({"messageId": "m-1", "message_id": "/"}, "`$.message.message_id` is only slashes"),
    ],
)
def test_a_message_id_sent_empty_is_said_to_be_empty_not_missing(
    client: TestClient[Recordline], id_fields: dict[str, str], said: str
) -> None:
    body = {"message": {"data": "e30=", "publishTime": "2024-04-27T12:00:01Z", **id_fields}}
    response = client.post("/pubsub/push", json=body)
    assert response.status_code == 400
    assert said in response.json()["detail"]


@pytest.mark.parametrize("data", [None, ""])
def test_a_message_without_data_is_rejected_as_having_none(
    client: TestClient[Recordline], data: str | None
) -> None:
    # Pub/Sub delivers a message of attributes alone with no `data`; it was
    # rejected as "payload is not JSON: Input data was truncated".
    body = envelope(None, message_id="no-data", attributes={"kind": "ping"})
    if data is None:
        del body["message"]["data"]
    else:
        body["message"]["data"] = data
    assert client.post("/pubsub/push", json=body).status_code == 204
    status = client.get("/v1/messages/no-data").json()
    assert status["status"] == "rejected"
    assert status["reason"].startswith("message.data: absent or empty"), status["reason"]
    unwrapped = {
        "x-goog-pubsub-message-id": "no-body",
        "x-goog-pubsub-publish-time": "2024-04-27T12:00:01Z",
    }
    assert client.post("/pubsub/push", content=b"", headers=unwrapped).status_code == 204
    reason = client.get("/v1/messages/no-body").json()["reason"]
    assert reason.startswith("message.data: absent or empty"), reason


def test_unknown_envelope_fields_are_tolerated(client: TestClient[Recordline]) -> None:
    body = envelope(RECORD, futureField={"a": 1}, deliveryAttempt=3)
    body["message"]["somethingNew"] = True
    body["message"]["orderingKey"] = "k"
    assert client.post("/pubsub/push", json=body).status_code == 204
    assert client.get("/v1/records/1").json()["delivery_attempt"] == 3


def test_unwrapped_push_with_metadata_headers(client: TestClient[Recordline]) -> None:
    headers = {
        "content-type": "application/octet-stream",
        "x-goog-pubsub-message-id": "u-1",
        "x-goog-pubsub-publish-time": "2024-04-27T12:00:01.123Z",
        "x-goog-pubsub-subscription-name": "projects/demo/subscriptions/raw",
        "origin-system": "billing",
        "x-forwarded-for": "10.0.0.1",
    }
    response = client.post("/pubsub/push", content=json.dumps(RECORD), headers=headers)
    assert response.status_code == 204
    record = client.get("/v1/records/1").json()
    assert record["message_id"] == "u-1"
    assert record["publish_time"] == "2024-04-27T12:00:01.123000Z"
    assert record["subscription"] == "projects/demo/subscriptions/raw"
    # The publisher's Content-Type attribute is the body's type (Pub/Sub's own example).
    assert record["attributes"] == {
        "origin-system": "billing",
        "content-type": "application/octet-stream",
    }


UNWRAPPED = {
    "x-goog-pubsub-message-id": "u-1",
    "x-goog-pubsub-publish-time": "2024-04-27T12:00:01.123Z",
}
# Attributes named as what a browser sends: on an unwrapped push they are a
# publisher's, since no browser is on a push's path.
BROWSER_NAMED_ATTRIBUTES = {
    "origin": "hdr",
    "referer": "https://billing.example/checkout",
    "sec-fetch-site": "cross-site",
    "sec-fetch-mode": "no-cors",
    "sec-fetch-dest": "empty",
    "sec-fetch-user": "?1",
    "dnt": "1",
    "if-none-match": '"v7"',
    "content-type": "application/json",
    "content-language": "es",
    "x-requested-with": "billing",
}


def test_an_unwrapped_push_keeps_attributes_named_as_a_browsers_headers(
    client: TestClient[Recordline],
) -> None:
    # Loopback, no push authentication: the service that is most careful of browsers.
    headers = {**UNWRAPPED, **BROWSER_NAMED_ATTRIBUTES}
    response = client.post("/pubsub/push", content=json.dumps(RECORD), headers=headers)
    assert response.status_code == 204, response.text
    assert client.get("/v1/records/1").json()["attributes"] == BROWSER_NAMED_ATTRIBUTES


# A header's name is a token (RFC 9110 §5.6.2); an attribute's value, visible ASCII.
TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
# What frames the request itself, whose value the sender's HTTP client writes (a Host of
# `/` is no request at all): never a publisher's attribute on the wire.
FRAMING = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "content-type",
        "content-encoding",
        "connection",
        "expect",
        "te",
        "trailer",
        "upgrade",
    }
)
header_legal_names = st.text(TCHAR, min_size=1, max_size=40).filter(
    lambda name: not name.startswith("x-goog-pubsub-") and name.lower() not in FRAMING
)
attribute_values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)


@given(
    attributes=st.dictionaries(header_legal_names, attribute_values, max_size=20),
    browser=st.sampled_from([{}, BROWSER_NAMED_ATTRIBUTES]),
)
@examples(max_examples=EXAMPLES * 2, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_attribute_name_refuses_an_unwrapped_push(
    client: TestClient[Recordline], attributes: dict[str, str], browser: dict[str, str]
) -> None:
    # Any names a publisher may give its attributes: the push is stored, with every one
    # that is not the delivery path's own or a credential's.
    sent = {**browser, **attributes}
    message_id = f"u-{abs(hash(tuple(sent.items())))}"
    headers = {**UNWRAPPED, "x-goog-pubsub-message-id": message_id, **sent}
    response = client.post("/pubsub/push", content=json.dumps(RECORD), headers=headers)
    assert response.status_code == 204, response.text
    stored = client.get(f"/v1/messages/{message_id}").json()["record"]["attributes"]
    assert stored == {name: value for name, value in sent.items() if is_attribute(name)}
    assert set(BROWSER_NAMED_ATTRIBUTES) & set(browser) <= set(stored)


async def test_only_a_wrapped_push_is_judged_by_what_a_browser_says() -> None:
    # With its token or without: a page that learned the token must not push through its
    # reader's browser. An unwrapped push's browser-named headers are its attributes.
    app = create_app(settings(RECORDLINE_PUSH_TOKEN="push-secret-0123456789"))
    cross_site = {"origin": "http://attacker.example", "sec-fetch-site": "cross-site"}
    async with served(app) as client:
        answer = await client.post(
            "/pubsub/push?token=push-secret-0123456789",
            json=envelope({"id": "2"}, message_id="m-2"),
            headers=cross_site,
        )
        assert answer.status_code == 403, answer.text
        answer = await client.post(
            "/pubsub/push?token=push-secret-0123456789",
            content=json.dumps({"id": "3"}),
            headers={**UNWRAPPED, "x-goog-pubsub-message-id": "u-3", **cross_site},
        )
        assert answer.status_code == 204, answer.text
        stored = (await client.get("/v1/messages/u-3")).json()["record"]["attributes"]
        assert stored == cross_site
        # Without the token, it is refused as not Pub/Sub's first.
        answer = await client.post("/pubsub/push", json=envelope(RECORD), headers=cross_site)
        assert answer.status_code == 401, answer.text


async def test_no_page_of_another_site_is_let_send_the_push_metadata() -> None:
    # What tells an unwrapped push from a browser's write: a page of another site may
    # send `x-goog-pubsub-message-id` only after a preflight the service consents to,
    # and it consents to none.
    async with served(create_app(settings())) as client:
        answer = await client.options(
            "/pubsub/push",
            headers={
                "origin": "http://attacker.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "x-goog-pubsub-message-id",
            },
        )
        assert answer.status_code < 500
        assert not any(name.startswith("access-control-allow") for name in answer.headers)


# Every header that carries a caller's credential, as a client or a proxy sends it.
CREDENTIAL_HEADERS = {
    "Cookie": "session=s3cr3t",
    "Proxy-Authorization": "Basic dXNlcjpwYXNz",
    "X-Serverless-Authorization": "Bearer eyJhbGciOi.eyJlbWFpbCI.SIGNATURE_REMOVED_BY_GOOGLE",
    "X-Api-Key": "AIzaSyD-0123456789",
    "X-Auth-Token": "t0k3n",
    "X-Access-Token": "t0k3n",
    "X-CSRF-Token": "t0k3n",
    "X-Amzn-Oidc-Data": "eyJ0eXAiOi",
    "X-Amz-Security-Token": "IQoJb3JpZ2luX2Vj",
    "Apikey": "AIzaSyD-0123456789",
    "X-Vault-Token": "hvs.CAESI",
    "Authentication": "Basic dXNlcjpwYXNz",
    "X-Ms-Token-Aad-Id-Token": "eyJ0eXAiOi",
    "X-Auth-Request-Access-Token": "ya29.a0Af",
    "X-Endpoint-API-UserInfo": "eyJlbWFpbCI6ImFAYi5jIn0",
    "X-B3-TraceId": "80f198ee56343ba864fe8b2a57d3eff7",
    "Baggage": "user.email=a@b.c",
    "X-Session-Id": "s3ss10n",
    "Client-Secret": "s3cr3t",
}


def test_no_credential_header_of_an_unwrapped_push_is_stored_as_an_attribute(
    client: TestClient[Recordline],
) -> None:
    headers = {
        "x-goog-pubsub-message-id": "u-1",
        "x-goog-pubsub-publish-time": "2024-04-27T12:00:01.123Z",
        "origin-system": "billing",
        **CREDENTIAL_HEADERS,
    }
    response = client.post("/pubsub/push", content=json.dumps(RECORD), headers=headers)
    assert response.status_code == 204
    # Served to every reader: only the publisher's attribute is there.
    assert client.get("/v1/records/1").json()["attributes"] == {"origin-system": "billing"}
    assert client.get("/v1/messages/u-1").json()["record"]["attributes"] == {
        "origin-system": "billing"
    }


@pytest.mark.slow
def test_store_failure_is_503_with_retry_after_and_nothing_acknowledged(
    client: TestClient[Recordline], store: FaultyStore
) -> None:
    store.failing = True
    response = client.post("/pubsub/push", json=envelope(RECORD))
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["status"] == 503
    assert client.get("/readyz").status_code == 503
    store.failing = False
    assert client.get("/v1/messages/m-1").status_code == 404
    # Pub/Sub redelivers; now it is stored.
    assert client.post("/pubsub/push", json=envelope(RECORD)).status_code == 204
    assert client.get("/v1/messages/m-1").json()["status"] == "stored"
    assert client.get("/readyz").status_code == 200


async def queue_depth(client: httpx.AsyncClient) -> int:
    """The rows the batcher holds, as /metrics reports them."""
    text = (await client.get("/metrics")).text
    (line,) = [line for line in text.splitlines() if line.startswith("recordline_queue_depth{")]
    return int(float(line.rsplit(" ", 1)[1]))


async def test_full_queue_is_503_and_accepted_rows_still_land(store: FaultyStore) -> None:
    # A queue of two rows (QUEUE_MAX_ROWS in the service), built as create_app takes it.
    two_rows = msgspec.structs.replace(settings(), batch=BatchSettings(queue_rows=2))
    app = create_app(two_rows, store=store)
    store.release.clear()  # appends stall, so the queue fills up behind them
    async with served(app) as client:
        pushes = [
            asyncio.create_task(
                client.post("/pubsub/push", json=envelope({"id": str(n)}, message_id=f"q{n}"))
            )
            for n in range(6)
        ]

        # Two rows wait in the queue (a third may already sit in the stalled
        # append, depending on when the flusher ran); the rest bounce at once.
        async def accounted() -> bool:
            answered = sum(t.done() for t in pushes)
            return answered + store.appending + await queue_depth(client) == len(pushes)

        await until(accounted, what="every push answered, queued or in the stalled append")
        refused = [t for t in pushes if t.done()]
        assert len(refused) in (3, 4)
        assert all(t.result().status_code == 503 for t in refused)
        assert all("queue" in t.result().json()["title"].lower() for t in refused)
        store.release.set()
        answers = [(await t).status_code for t in pushes]
        assert answers.count(204) == 6 - len(refused)
        for n, task in enumerate(pushes):
            status = (await client.get(f"/v1/messages/q{n}")).status_code
            assert status == (200 if task.result().status_code == 204 else 404)


@pytest.mark.slow
def test_write_deadline_gives_503(store: FaultyStore) -> None:
    app = create_app(settings(RECORDLINE_WRITE_DEADLINE_SECONDS="0.2"), store=store)
    store.delay = 1.0
    with TestClient(app) as client:
        response = client.post("/pubsub/push", json=envelope(RECORD))
        assert response.status_code == 503
        assert "deadline" in response.json()["title"].lower()


def test_decoded_base64_payload_roundtrip(client: TestClient[Recordline]) -> None:
    payload = {"id": "b", "data": {"blob": base64.b64encode(bytes(range(256))).decode()}}
    assert client.post("/pubsub/push", json=envelope(payload)).status_code == 204
    assert client.get("/v1/records/b").json()["data"] == payload["data"]
