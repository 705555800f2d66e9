"""What readers who are not operators do not see: a masked payload field or attribute is
absent from every read of theirs (pages, look-ups, streams, events, exports), and
present for an operator; where nothing tells operators apart, nothing is masked."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar

from app.asgi import create_app
from app.errors import MaskedFilter
from app.query import follow
from app.query.mask import MASKED, Mask
from app.query.select import refuse_masked, selection_of
from app.store.duckdb.store import DuckDBStore
from tests.conftest import served, settings
from tests.fakes import FaultyStore
from tests.rows import shown_record, shown_rejection

SECRET = "a-push-secret-long-enough"
OPERATOR = {"Authorization": f"Bearer {SECRET}"}
# What a reader must never see, and what it still sees.
HIDDEN = ("alice@example.com", "4111-1111", "10.0.0.7", "bob@example.com")
SHOWN = ("kept-value", "eu-west")


def push_body(message_id: str, payload: bytes) -> dict[str, Any]:
    return {
        "message": {
            "data": base64.b64encode(payload).decode(),
            "messageId": message_id,
            "publishTime": "2024-04-27T12:00:01Z",
            "attributes": {"client-ip": "10.0.0.7", "region": "eu-west"},
        },
        "subscription": "projects/p/subscriptions/s",
    }


RECORD = json.dumps(
    {
        "id": "r-1",
        "data": {
            "email": "alice@example.com",
            "lines": [{"card": "4111-1111", "note": "kept-value"}],
            "emails": "not-a-masked-name",
        },
    }
).encode()
# A rejection whose payload is JSON (with no id), and one that is not.
REJECTED_JSON = json.dumps({"no_id": True, "email": "bob@example.com"}).encode()
REJECTED_BYTES = b"\x00\x01 bob@example.com \xff"


@pytest.fixture
def app(store: FaultyStore, monkeypatch: pytest.MonkeyPatch) -> Litestar:
    monkeypatch.setattr(follow, "HEARTBEAT_SECONDS", 0.2)
    return create_app(
        settings(
            RECORDLINE_PUSH_TOKEN=SECRET,
            RECORDLINE_MASK_FIELDS="email, card",
            RECORDLINE_MASK_ATTRIBUTES="client-ip",
            RECORDLINE_STREAM_SECONDS="1",
        ),
        store=store,
    )


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with served(app) as client:
        for message_id, payload in (
            ("m-1", RECORD),
            ("m-2", REJECTED_JSON),
            ("m-3", REJECTED_BYTES),
        ):
            pushed = await client.post(
                "/pubsub/push", params={"token": SECRET}, json=push_body(message_id, payload)
            )
            assert pushed.status_code == 204
        yield client


async def everything(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    """What every read shows this caller, as text (rejections' payloads decoded)."""
    texts = []
    for path, params in (
        ("/v1/records", {}),
        ("/v1/records/r-1", {}),
        ("/v1/messages/m-1", {}),
        ("/v1/streams/records", {"offset": "-1"}),
        ("/v1/export/records", {"format": "csv"}),
        ("/v1/export/records", {"format": "jsonl", "columns": "data.email,attributes"}),
    ):
        answer = await client.get(path, params=params, headers=headers)
        assert answer.status_code == 200, (path, answer.text)
        texts.append(answer.text)
    for path in ("/v1/rejections", "/v1/streams/rejections", "/v1/export/rejections"):
        params = {"format": "jsonl"} if "export" in path else {}
        if "streams" in path:
            params = {"offset": "-1"}
        answer = await client.get(path, params=params, headers=headers)
        assert answer.status_code == 200, (path, answer.text)
        texts.append(answer.text)
        body = answer.json() if not path.startswith("/v1/export") else None
        rows = [json.loads(line) for line in answer.text.splitlines()] if body is None else body
        rows = rows["rejections"] if isinstance(rows, dict) else rows
        texts += [base64.b64decode(row["data"]).decode("latin-1") for row in rows]
    async with client.stream(
        "GET", "/v1/records", headers={"accept": "text/event-stream", **headers}
    ) as events:
        texts.append("".join([line async for line in events.aiter_lines()]))
    return "\n".join(texts)


@pytest.mark.slow
async def test_a_masked_field_is_absent_for_a_reader_and_there_for_an_operator(
    client: httpx.AsyncClient,
) -> None:
    reader = await everything(client, {})
    for value in HIDDEN:
        assert value not in reader, value
    for value in SHOWN:
        assert value in reader, value
    assert MASKED in reader
    # A member whose name only starts like a masked one is not masked.
    assert "not-a-masked-name" in reader
    operator = await everything(client, OPERATOR)
    for value in (*HIDDEN, *SHOWN):
        assert value in operator, value
    # A wrong token is a reader's: masked, not refused.
    wrong = await client.get("/v1/records/r-1", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 200
    assert "alice@example.com" not in wrong.text


@pytest.mark.slow
async def test_a_rejection_not_json_is_withheld_and_one_that_is_masked(
    client: httpx.AsyncClient,
) -> None:
    rows = (await client.get("/v1/rejections")).json()["rejections"]
    data = {row["message_id"]: base64.b64decode(row["data"]) for row in rows}
    assert json.loads(data["m-2"]) == {"no_id": True, "email": MASKED}
    assert data["m-3"] == b""
    operator = (await client.get("/v1/rejections", headers=OPERATOR)).json()["rejections"]
    assert {row["message_id"]: base64.b64decode(row["data"]) for row in operator} == {
        "m-2": REJECTED_JSON,
        "m-3": REJECTED_BYTES,
    }


def test_a_mask_reaches_every_depth_and_leaves_what_it_does_not_name() -> None:
    mask = Mask(["secret"], ["ip"])
    raw = json.dumps({"a": [{"secret": 1, "b": {"secret": {"x": 2}}}], "secrets": 3}).encode()
    view = shown_record(raw, attributes=b'{"ip":"1.2.3.4","ipv6":"::1"}')
    masked = mask.view(view)
    assert json.loads(bytes(masked.data)) == {
        "a": [{"secret": MASKED, "b": {"secret": MASKED}}],
        "secrets": 3,
    }
    assert json.loads(bytes(masked.attributes)) == {"ip": MASKED, "ipv6": "::1"}
    # What holds no masked name is the same object, not decoded again.
    plain = Mask(["nothing-here"])
    assert plain.view(view) is view
    # What is not JSON is withheld, text (which may name a value otherwise) or not.
    rejection = shown_rejection(b"plain text")
    assert mask.view(rejection).data == b""
    binary = msgspec.structs.replace(rejection, data=b"\xff\x00")
    assert mask.view(binary).data == b""


async def test_with_no_authentication_nothing_is_masked_and_the_log_says_so(
    store: FaultyStore, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        app = create_app(settings(RECORDLINE_MASK_FIELDS="email"), store=store)
    assert "mask nothing here" in caplog.text
    async with served(app) as client:
        pushed = await client.post("/pubsub/push", json=push_body("m-1", RECORD))
        assert pushed.status_code == 204
        assert "alice@example.com" in (await client.get("/v1/records/r-1")).text


@pytest.mark.parametrize(
    "payload",
    [
        b"{'email': 'alice@example.com'}",  # Python's repr
        b"email: alice@example.com\n",  # YAML
        b"email=alice%40example.com&n=1",  # a form
        b"{email: 'alice@example.com', n: 1,}",  # JSON5
        b"alice@example.com",
        b'{"n": 1} {"email": "alice@example.com"}',  # JSON, then more
    ],
)
def test_a_rejection_of_text_that_is_not_json_is_withheld(payload: bytes) -> None:
    # Its fields cannot be found in text of another shape: none of it reaches a reader.
    rejection = shown_rejection(payload, reason="not JSON")
    assert Mask(["email"]).view(rejection).data == b""
    # JSON naming no masked member is passed as it is.
    kept = msgspec.structs.replace(rejection, data=b'{"n": 1, "emails": ["x"]}')
    assert Mask(["email"]).view(kept).data == b'{"n": 1, "emails": ["x"]}'


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "params", "parameter"),
    [
        ("/v1/records", {"attribute": "client-ip:10.0.0.7"}, "attribute"),
        ("/v1/rejections", {"attribute": "client-ip:10.0.0.7"}, "attribute"),
        ("/v1/records", {"field": "email:alice@example.com"}, "field"),
        ("/v1/records", {"field": "lines.card:4111-1111"}, "field"),
        ("/v1/export/records", {"field": "customer.email:a"}, "field"),
        ("/v1/streams/records", {"offset": "-1", "attribute": "client-ip:10.0.0.7"}, "attribute"),
        ("/v1/records", {"where": "attributes['client-ip'] STARTS WITH '10.'"}, "where"),
        ("/v1/rejections", {"where": "attributes[\"Client-IP\"] = '10.0.0.7'"}, "where"),
        ("/v1/records", {"where": "id = 'r-1' OR data.email CONTAINS '@'"}, "where"),
        ("/v1/records", {"where": "NOT EXISTS data.lines.card"}, "where"),
        # Text in a payload may hold a masked member inside: a part or an order of it,
        # or text naming one, would tell it.
        ("/v1/records", {"where": "data.note CONTAINS 'a@b'"}, "where"),
        ("/v1/records", {"where": "data.note STARTS WITH '{'"}, "where"),
        ("/v1/records", {"where": "data.note > 'a'"}, "where"),
        ("/v1/records", {"where": 'data.note = \'{"email": "a@b"}\''}, "where"),
        ("/v1/records", {"where": "data.note IN ('x', 'email=a@b')"}, "where"),
        ("/v1/export/records", {"where": "data.customer.email > 'a'"}, "where"),
        ("/v1/streams/records", {"offset": "-1", "where": "data.email = 'a'"}, "where"),
        # How many rows such a filter keeps tells as much as the rows.
        ("/v1/counts/records", {"since": "1h", "attribute": "client-ip:10.0.0.7"}, "attribute"),
        ("/v1/counts/records", {"since": "1h", "where": "data.email = 'a'"}, "where"),
        (
            "/v1/counts/rejections",
            {"since": "1h", "where": "attributes['client-ip'] = 'x'"},
            "where",
        ),
        # A reason is shown with the literals it quotes withheld.
        ("/v1/rejections", {"where": "reason CONTAINS 'bob'"}, "where"),
    ],
)
async def test_a_reader_may_not_filter_on_a_masked_value(
    client: httpx.AsyncClient, path: str, params: dict[str, str], parameter: str
) -> None:
    # Which rows such a filter keeps would tell the masked value, one guess at a time.
    answer = await client.get(path, params=params)
    assert answer.status_code == 403, answer.text
    assert answer.json()["type"] == "/problems/masked-filter"
    assert answer.json()["parameter"] == parameter
    # An operator sees the value, and may ask for it.
    assert (await client.get(path, params=params, headers=OPERATOR)).status_code != 403
    # A name that is not masked is a filter like any other.
    kept = await client.get("/v1/records", params={"attribute": "region:eu-west"})
    assert [r["id"] for r in kept.json()["records"]] == ["r-1"]
    kept = await client.get("/v1/records", params={"where": "attributes.region = 'eu-west'"})
    assert [r["id"] for r in kept.json()["records"]] == ["r-1"]
    # A number or a boolean is shown as it is unless its member is masked, by name; so is
    # text the mask shows whole, compared whole.
    for text in ("data.n > 1", "data.lines = 'x'", "data = 'x' OR data.plan != 'gold'"):
        assert (await client.get("/v1/records", params={"where": text})).status_code == 200


STREAM = "/v1/streams/records"


@pytest.mark.slow
async def test_a_reader_holding_an_operators_chunk_is_not_told_it_is_the_same_as_its_own(
    client: httpx.AsyncClient,
) -> None:
    # The same offsets name the same rows, shown otherwise to a reader: its tag differs,
    # so a cache holding the operator's chunk is never told to show it to a reader.
    operator = await client.get(STREAM, params={"offset": "-1"}, headers=OPERATOR)
    reader = await client.get(STREAM, params={"offset": "-1"})
    assert operator.headers["etag"] != reader.headers["etag"]
    again = await client.get(
        STREAM, params={"offset": "-1"}, headers={"if-none-match": operator.headers["etag"]}
    )
    assert again.status_code == 200
    assert again.text == reader.text
    for value in HIDDEN:
        assert value not in again.text


@pytest.mark.slow
async def test_a_member_named_by_digits_reads_no_array_element_under_a_masked_path() -> None:
    # `lines.pin` masks every line's pin (a path walks through arrays) and no step of it
    # is `0`, so a reader may name `lines["0"].pin`: it must read an object's member
    # named "0", never the first line, or `> N` would tell the first pin by halves.
    store = DuckDBStore(":memory:")
    store.live.tail.max_rows = 0  # every page is read by DuckDB's SQL
    app = create_app(
        settings(RECORDLINE_PUSH_TOKEN=SECRET, RECORDLINE_MASK_FIELDS="lines.pin"), store=store
    )
    payload = json.dumps({"id": "r-1", "data": {"lines": [{"pin": 4321}]}}).encode()
    async with served(app) as client:
        pushed = await client.post(
            "/pubsub/push", params={"token": SECRET}, json=push_body("m-1", payload)
        )
        assert pushed.status_code == 204
        assert "4321" not in (await client.get("/v1/records")).text
        for where in ('data.lines["0"].pin > 4000', 'EXISTS data.lines["0"]'):
            for headers in ({}, OPERATOR):
                answer = await client.get("/v1/records", params={"where": where}, headers=headers)
                assert answer.status_code == 200, answer.text
                assert answer.json()["records"] == [], (where, headers)


def test_a_member_named_with_a_masked_path_s_dots_may_not_be_filtered_on() -> None:
    # A path masks a member named with some of its dots (`{"customer.ssn": …}`, or
    # `{"customer.address": {"zip": …}}` for `customer.address.zip`): a where= naming
    # one so compared its number, shown masked, one guess at a time.
    mask = Mask(["customer.ssn", "customer.address.zip"])
    payload = b'{"customer.ssn": 123456789, "customer.address": {"zip": 98765}}'
    shown = bytes(mask.view(shown_record(payload)).data)
    assert b"123456789" not in shown
    assert b"98765" not in shown
    for where in (
        'data["customer.ssn"] > 100000000',
        'data["customer.address"].zip < 50000',
        'EXISTS data["customer.address"]',
        'data.customer["address.zip"] = 98765',
    ):
        assert mask.told_by(where) is not None, where
    # A member that only starts like one is not masked, nor refused.
    assert mask.told_by('data["customer.ssns"] > 1') is None


def test_a_reason_is_compared_by_a_reader_only_whole_with_text_that_quotes_nothing() -> None:
    # A reader sees a rejection's reason with each literal it quotes withheld (a
    # decoder's own words may quote what it could not read): compared by a part, an
    # order, or whole with text quoting one, it told the literal one guess at a time.
    reason = "field 3: invalid value '4111-1111' for int64"
    for mask in (Mask(["email"]), Mask(attributes=["client-ip"])):
        assert "4111" not in mask.view(shown_rejection(b"x", reason=reason)).reason
        for where in (
            "reason CONTAINS '4111'",
            "reason STARTS WITH 'field 3: invalid value ''4'",
            "reason ENDS WITH '1'' for int64'",
            "reason >= 'field 3: invalid value ''5'",
            f"reason = {json.dumps(reason)}",
            f"reason IN ('x', {json.dumps(reason)})",
        ):
            assert mask.told_by(where) is not None, where
        for where in (
            "reason = 'payload is not JSON'",
            "reason IN ('a', 'b') OR reason != 'c'",
            "EXISTS reason",
        ):
            assert mask.told_by(where) is None, where


@pytest.mark.parametrize(
    ("path", "select"),
    [
        ("/v1/records", 'id,attributes["client-ip"]'),
        ("/v1/records", 'attributes["Client-IP"]'),
        ("/v1/records", "data.email"),
        ("/v1/records", "id,data.lines.card"),
        ("/v1/records/r-1", "data.email"),
        ("/v1/messages/m-1", 'attributes["client-ip"]'),
        ("/v1/rejections", 'attributes["client-ip"]'),
        ("/v1/streams/records", "data.email"),
    ],
)
async def test_a_reader_may_not_select_a_masked_value(
    client: httpx.AsyncClient, path: str, select: str
) -> None:
    answer = await client.get(path, params={"select": select})
    assert answer.status_code == 403, answer.text
    assert answer.json()["type"] == "/problems/masked-filter"
    assert answer.json()["parameter"] == "select"
    # An operator sees the value, and may select it.
    allowed = await client.get(path, params={"select": select}, headers=OPERATOR)
    assert allowed.status_code == 200, allowed.text


async def test_what_a_reader_selects_around_a_masked_value_is_masked_inside(
    client: httpx.AsyncClient,
) -> None:
    for select in ("data", "id,data.lines", "attributes", "data.emails,attributes.region"):
        for path in ("/v1/records", "/v1/streams/records", "/v1/records/r-1"):
            params = {"select": select} | ({"offset": "-1"} if "streams" in path else {})
            answer = await client.get(path, params=params)
            assert answer.status_code == 200, answer.text
            for hidden in HIDDEN:
                assert hidden not in answer.text, (select, path)
    (row,) = (await client.get("/v1/records", params={"select": "id,data.lines"})).json()["records"]
    assert row == {"id": "r-1", "data": {"lines": [{"card": MASKED, "note": "kept-value"}]}}
    # An operator's projection of the same is whole.
    answer = await client.get("/v1/records", params={"select": "data.lines"}, headers=OPERATOR)
    assert "4111-1111" in answer.text


def test_a_path_at_inside_or_through_a_masked_path_is_refused_and_one_around_it_is_not() -> None:
    mask = Mask(fields=["customer.email", "token"], attributes=["client-ip"])
    fields = ["id", "data", "attributes"]
    for text in (
        "data.customer.email",
        "data.customer.email.domain",
        'data["customer.email"]',
        "data.a.token",
        'attributes["CLIENT-IP"]',
    ):
        with pytest.raises(MaskedFilter):
            refuse_masked(selection_of(text, fields), mask)
    for text in ("data", "data.customer", "data.customer.name", "attributes", "attributes.x"):
        refuse_masked(selection_of(text, fields), mask)
