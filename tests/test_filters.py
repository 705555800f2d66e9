"""Filtered reads through the API: `/v1/records`, `/v1/rejections` and the streams keep
the rows a filter matches, a page token (or offset) carries its filter, and a filter is
input: bounded, and refused with a 400 naming the parameter."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from litestar import Litestar

from app.asgi import create_app
from app.query import follow
from app.query.page_token import MAX_TOKEN_LENGTH, PageToken, PageTokens
from app.settings import DEFAULT_PAGE_TOKEN_SECRET
from app.store.filters import MAX_CONDITIONS, MAX_FILTER_BYTES, RowFilter
from app.store.where import parse
from tests.conftest import delivered, served, settings
from tests.fakes import FaultyStore
from tests.test_follow import events

EVENTS = "text/event-stream"


def push_body(n: int, *, valid: bool = True, **attributes: str) -> dict[str, Any]:
    payload = {"id": f"r-{n % 3}", "data": n} if valid else {"no": "id"}
    data = base64.b64encode(json.dumps(payload).encode()).decode()
    return {
        "message": {
            "data": data,
            "messageId": f"m-{n:03}",
            "publishTime": "2024-04-27T12:00:01Z",
            "attributes": {
                "recordline-producer": f"p{n % 2}",
                "recordline-epoch": "0",
                "recordline-seq": str(n // 2),
                "colour": ["red", "green", "blue"][n % 3],
                "a.b": "dotted" if n % 4 == 0 else "plain",
                **attributes,
            },
        },
        "subscription": "projects/p/subscriptions/s",
    }


@pytest.fixture
def app(store: FaultyStore, monkeypatch: pytest.MonkeyPatch) -> Litestar:
    monkeypatch.setattr(follow, "HEARTBEAT_SECONDS", 0.2)
    return create_app(settings(RECORDLINE_STREAM_SECONDS="2"), store=store)


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with served(app) as client:
        yield client


async def pushed(client: httpx.AsyncClient, numbers: range, **kwargs: Any) -> None:
    for n in numbers:
        answer = await delivered(client, push_body(n, **kwargs))
        assert answer.status_code == 204, answer.text


async def walk(client: httpx.AsyncClient, path: str, params: Any, rows: str) -> list[str]:
    """Every row a follower of `next_page_token` meets, sending the token alone."""
    page = (await client.get(path, params=params)).json()
    seen = [r["message_id"] for r in page[rows]]
    while page[rows]:
        page = (await client.get(path, params={"page_token": page["next_page_token"]})).json()
        seen += [r["message_id"] for r in page[rows]]
    return seen


@pytest.mark.slow
@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"attribute": "colour:red"}, [0, 3, 6, 9, 12, 15]),
        ({"attribute": ["colour:red", "recordline-producer:p1"]}, [3, 9, 15]),
        ({"producer": "p1"}, [1, 3, 5, 7, 9, 11, 13, 15]),
        ({"producer": "p0", "attribute": "a.b:dotted"}, [0, 4, 8, 12]),
        ({"record_id": "r-2"}, [2, 5, 8, 11, 14]),
        ({"message_id": "m-007"}, [7]),
        ({"record_id": "r-1", "message_id": "m-004"}, [4]),
        ({"attribute": "colour:purple"}, []),
        ({"attribute": "colour:"}, []),
        # The filter language: an OR, a range, and beside another filter.
        ({"where": "data > 10 OR attributes.colour = 'red'"}, [0, 3, 6, 9, 11, 12, 13, 14, 15]),
        ({"where": "data >= 4 AND data < 7", "producer": "p0"}, [4, 6]),
        ({"where": "NOT (id IN ('r-0', 'r-1')) AND attributes['a.b'] STARTS WITH 'dot'"}, [8]),
        ({"where": "EXISTS data.amount OR data = 'seven'"}, []),
    ],
)
async def test_a_filter_keeps_its_rows_page_after_page(
    client: httpx.AsyncClient, params: dict[str, Any], expected: list[int]
) -> None:
    await pushed(client, range(16))
    want = [f"m-{n:03}" for n in expected]
    assert await walk(client, "/v1/records", {**params, "limit": 2}, "records") == want
    # The filter's parameters sent again with each token are the same filter.
    page = (await client.get("/v1/records", params={**params, "limit": 1})).json()
    if page["records"]:
        again = {**params, "page_token": page["next_page_token"], "limit": 100}
        rest = (await client.get("/v1/records", params=again)).json()
        assert [r["message_id"] for r in page["records"] + rest["records"]] == want


def test_true_and_false_are_words_read_in_any_case_as_the_others() -> None:
    # docs/reading.md: "Words are read in any case"; `= TRUE` was a syntax error.
    for text in ("TRUE", "True", "tRuE"):
        assert parse(f"data.flag = {text}") == parse("data.flag = true")
    assert parse("data.flag IN (FALSE, true)") == parse("data.flag IN (false, true)")
    # A member so named is a member still.
    assert parse("data.TRUE = 1").operand.path == ("TRUE",)  # type: ignore[union-attr]


@pytest.mark.slow
async def test_a_publisher_s_odd_json_filters_as_every_store_reads_it(
    client: httpx.AsyncClient,
) -> None:
    # The contract's `data` is stored as sent: an integer of 400 digits made every read
    # comparing it a 500 (the matcher read it as a float, and overflowed); 1e400 read as
    # no payload at all; of a member sent twice, the matcher read the last, every
    # store's SQL the first.
    for n, data in enumerate(['{"n":1' + "0" * 400 + "}", '{"n":-1e400}', '{"n":1,"n":2}']):
        body = push_body(n)
        payload = f'{{"id": "r-{n}", "data": {data}}}'.encode()
        body["message"]["data"] = base64.b64encode(payload).decode()
        assert (await delivered(client, body)).status_code == 204
    for where, expected in [
        ("data.n > 1e300", ["m-000"]),
        ("data.n < -1e300", ["m-001"]),
        ("data.n = 1", ["m-002"]),
        ("data.n = 2", []),
        ("EXISTS data.n", ["m-000", "m-001", "m-002"]),
    ]:
        answer = await client.get("/v1/records", params={"where": where})
        assert answer.status_code == 200, answer.text
        assert [r["message_id"] for r in answer.json()["records"]] == expected, where


@pytest.mark.slow
async def test_a_filtered_follower_meets_each_matching_row_once_while_writes_go_on(
    client: httpx.AsyncClient,
) -> None:
    seen: list[str] = []
    token = None
    for round_ in range(5):
        await pushed(client, range(round_ * 7, round_ * 7 + 7))
        params = {"page_token": token} if token else {"producer": "p0", "limit": 3}
        page = (await client.get("/v1/records", params=params)).json()
        seen += [r["message_id"] for r in page["records"]]
        while len(page["records"]) == 3:
            page = (
                await client.get("/v1/records", params={"page_token": page["next_page_token"]})
            ).json()
            seen += [r["message_id"] for r in page["records"]]
        token = page["next_page_token"]
    assert seen == [f"m-{n:03}" for n in range(35) if n % 2 == 0]


async def test_a_token_sent_with_another_filter_is_refused(client: httpx.AsyncClient) -> None:
    await pushed(client, range(4))
    first = (await client.get("/v1/records", params={"producer": "p0", "limit": 1})).json()
    token = first["next_page_token"]
    for other in (
        {"producer": "p1"},
        {"attribute": "colour:red"},
        {"record_id": "r-0"},
        {"where": "producer = 'p0'"},
    ):
        refused = await client.get("/v1/records", params={"page_token": token, **other})
        assert refused.status_code == 400, other
        problem = refused.json()
        assert problem["parameter"] == "page_token"
        assert "another filter" in problem["detail"]
    # An unfiltered token sent with a filter would skip the rows before it that match.
    plain = (await client.get("/v1/records", params={"limit": 1})).json()["next_page_token"]
    refused = await client.get("/v1/records", params={"page_token": plain, "producer": "p0"})
    assert refused.status_code == 400
    # A token of /v1/records is refused by /v1/rejections, filtered or not.
    refused = await client.get("/v1/rejections", params={"page_token": token})
    assert refused.status_code == 400


@pytest.mark.slow
async def test_a_token_whose_expression_this_release_does_not_read_is_a_400_naming_it(
    client: httpx.AsyncClient,
) -> None:
    # Tokens are sealed, but one of another release (or signed with a leaked key) may
    # carry an expression this release does not read: it was a 400 naming `where`, a
    # parameter the client never sent, or a stream cut after its 200.
    await pushed(client, range(2))
    await delivered(client, push_body(9, valid=False))
    for listing, where in (
        ("records", "data.n >"),
        ("records", "reason = 'x'"),
        ("rejections", "data.n = 1"),
    ):
        cursor = PageToken(0, "", listing=listing, filter=RowFilter(where=where))
        token = PageTokens(DEFAULT_PAGE_TOKEN_SECRET).encode(cursor)
        for params, headers in (
            ({"page_token": token}, {}),
            ({}, {"Last-Event-ID": token, "accept": EVENTS}),
        ):
            path = f"/v1/{listing}"
            refused = await client.get(path, params=params, headers=headers)
            assert refused.status_code == 400, (path, where, refused.text)
            problem = refused.json()
            assert problem["parameter"] in ("page_token", "Last-Event-ID"), problem
            assert "start again" in problem["detail"]


@pytest.mark.slow
async def test_rejections_filter_by_attribute_producer_and_message(
    client: httpx.AsyncClient,
) -> None:
    await pushed(client, range(6), valid=False)
    await pushed(client, range(6, 8))
    rows = "rejections"
    assert await walk(client, "/v1/rejections", {"producer": "p1", "limit": 1}, rows) == [
        "m-001",
        "m-003",
        "m-005",
    ]
    assert await walk(client, "/v1/rejections", {"attribute": "colour:green"}, rows) == [
        "m-001",
        "m-004",
    ]
    assert await walk(client, "/v1/rejections", {"message_id": "m-002"}, rows) == ["m-002"]


async def test_a_waiting_page_waits_for_a_row_its_filter_keeps(
    client: httpx.AsyncClient,
) -> None:
    await pushed(client, range(2))
    tail = (await client.get("/v1/records", params={"producer": "p1", "limit": 100})).json()
    assert [r["message_id"] for r in tail["records"]] == ["m-001"]
    waiting = asyncio.create_task(
        client.get("/v1/records", params={"page_token": tail["next_page_token"], "wait": 20})
    )
    await pushed(client, range(2, 3))  # p0: not for this page
    await asyncio.sleep(0)
    assert not waiting.done()
    await pushed(client, range(3, 4))
    page = (await waiting).json()
    assert [r["message_id"] for r in page["records"]] == ["m-003"]


@pytest.mark.slow
async def test_a_filtered_event_stream_sends_only_its_rows(client: httpx.AsyncClient) -> None:
    await pushed(client, range(4))
    seen: list[str] = []
    last = None
    async for event in events(client, attribute="colour:green"):
        if event.get("event") == "page":
            seen += [r["message_id"] for r in json.loads(event["data"])["records"]]
            last = event["id"]
    assert seen == ["m-001"]
    await pushed(client, range(4, 8))
    resumed: list[str] = []
    async for event in events(client, headers={"last-event-id": str(last)}):
        if event.get("event") == "page":
            resumed += [r["message_id"] for r in json.loads(event["data"])["records"]]
    assert resumed == ["m-004", "m-007"]


@pytest.mark.slow
async def test_a_filtered_stream_s_offsets_are_its_own(client: httpx.AsyncClient) -> None:
    await pushed(client, range(8))
    path = "/v1/streams/records"
    chunk = await client.get(path, params={"offset": "-1", "producer": "p1"})
    assert chunk.status_code == 200
    assert [r["message_id"] for r in chunk.json()] == ["m-001", "m-003", "m-005", "m-007"]
    offset = chunk.headers["stream-next-offset"]
    await pushed(client, range(8, 10))
    more = await client.get(path, params={"offset": offset, "producer": "p1"})
    assert [r["message_id"] for r in more.json()] == ["m-009"]
    # Read with another filter, or none, the offset is refused.
    for other in ({"producer": "p0"}, {}):
        refused = await client.get(path, params={"offset": offset, **other})
        assert refused.status_code == 400, other
        assert refused.json()["parameter"] == "offset"
    plain = (await client.get(path, params={"offset": "-1"})).headers["stream-next-offset"]
    refused = await client.get(path, params={"offset": plain, "producer": "p1"})
    assert refused.status_code == 400
    # HEAD names the tail in the filtered stream's own offsets.
    head = await client.head(path, params={"producer": "p1"})
    tail = await client.get(
        path, params={"offset": head.headers["stream-next-offset"], "producer": "p1"}
    )
    assert tail.status_code == 200
    assert tail.json() == []


# Refused before any store is asked (the typed field's by the store, which the serving
# tier refuses alike: tests/store_contract/test_filters.py): on the embedded store alone.
@pytest.mark.slow
@pytest.mark.parametrize("store", ["memory"], indirect=True)
@pytest.mark.parametrize(
    ("path", "params", "parameter"),
    [
        ("/v1/records", {"attribute": "no-colon"}, "attribute"),
        ("/v1/records", {"attribute": ":value"}, "attribute"),
        ("/v1/records", {"attribute": 'a"b:v'}, "attribute"),
        ("/v1/records", {"attribute": "a\\b:v"}, "attribute"),
        ("/v1/records", {"attribute": "a\x01:v"}, "attribute"),
        ("/v1/records", {"attribute": "k" * 257 + ":v"}, "attribute"),
        ("/v1/records", {"attribute": "k:" + "v" * 1025}, "attribute"),
        ("/v1/records", {"attribute": [f"k{i}:v" for i in range(MAX_CONDITIONS + 1)]}, "attribute"),
        (
            "/v1/records",
            {"attribute": [f"k{i}:{'v' * 1000}" for i in range(MAX_FILTER_BYTES // 1000 + 1)]},
            "attribute",
        ),
        ("/v1/records", {"producer": ""}, "producer"),
        ("/v1/records", {"producer": "p" * 257}, "producer"),
        ("/v1/records", {"producer": ["a", "b"]}, "producer"),
        ("/v1/records", {"record_id": ""}, "record_id"),
        ("/v1/records", {"message_id": "m" * 1025}, "message_id"),
        ("/v1/records", {"field": "amount"}, "field"),
        ("/v1/records", {"field": "1x:5"}, "field"),
        ("/v1/records", {"field": "a..b:5"}, "field"),
        ("/v1/records", {"field": ".".join(["a"] * 16) + ":5"}, "field"),
        # No typed columns on this store (no topic schema): a field names none.
        ("/v1/records", {"field": "amount:5"}, "field"),
        ("/v1/rejections", {"record_id": "r-1"}, "record_id"),
        ("/v1/rejections", {"field": "amount:5"}, "field"),
        ("/v1/streams/records", {"attribute": "no-colon"}, "attribute"),
        ("/v1/streams/rejections", {"record_id": "r-1"}, "record_id"),
        # The filter language's.
        ("/v1/records", {"where": "data.n >"}, "where"),
        ("/v1/records", {"where": "data.n = 1 AND"}, "where"),
        ("/v1/records", {"where": "data.n == 1"}, "where"),
        ("/v1/records", {"where": "colour = 'red'"}, "where"),
        ("/v1/records", {"where": "attributes.colour = 1"}, "where"),
        ("/v1/records", {"where": "attributes.a.b = 'x'"}, "where"),
        ("/v1/records", {"where": "data.flag < true"}, "where"),
        ("/v1/records", {"where": "publish_time > '1h'"}, "where"),
        ("/v1/records", {"where": "publish_time > '2024-04-27T12:00:00'"}, "where"),
        # ISO 8601 forms RFC 3339 has not (a week, no separators, an hour alone).
        ("/v1/records", {"where": "publish_time > '2024-W17-6T12:00:00Z'"}, "where"),
        ("/v1/records", {"where": "publish_time > '20240427T120000Z'"}, "where"),
        ("/v1/records", {"where": "publish_time > '2024-04-27T12+00:00'"}, "where"),
        ("/v1/records", {"where": "data.s CONTAINS ''"}, "where"),
        ("/v1/records", {"where": "ingest_time < '0001-01-01T00:00:00+01:00'"}, "where"),
        ("/v1/records", {"where": "data.n = 1e999"}, "where"),
        ("/v1/records", {"where": 'data["a\\"b"] = 1'}, "where"),
        ("/v1/records", {"where": r'data.s = "\ud800"'}, "where"),
        ("/v1/records", {"where": "reason = 'x'"}, "where"),
        ("/v1/records", {"where": "NOT " * 12 + "data.n = 1"}, "where"),
        ("/v1/records", {"where": " OR ".join(["data.n = 1"] * 33)}, "where"),
        ("/v1/records", {"where": "data.n IN (" + ", ".join(["1"] * 33) + ")"}, "where"),
        ("/v1/records", {"where": "data." + ".".join(["a"] * 16) + " = 1"}, "where"),
        ("/v1/records", {"where": "data.s = '" + "v" * 1020 + "'"}, "where"),
        ("/v1/records", {"where": "   "}, "where"),
        ("/v1/records", {"where": ["data.n = 1", "data.n = 2"]}, "where"),
        ("/v1/rejections", {"where": "id = 'r-1'"}, "where"),
        ("/v1/rejections", {"where": "data.n = 1"}, "where"),
        ("/v1/streams/records", {"where": "data.n ="}, "where"),
        ("/v1/streams/rejections", {"where": "timestamp > '2024-01-01T00:00:00Z'"}, "where"),
        ("/v1/export/records", {"where": "data.n ="}, "where"),
    ],
)
async def test_a_filter_that_cannot_be_one_is_a_400_naming_it(
    client: httpx.AsyncClient, path: str, params: dict[str, Any], parameter: str
) -> None:
    await pushed(client, range(1))
    answer = await client.get(path, params=params)
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["parameter"] == parameter, answer.json()
    # A stream refuses it before it begins, with the same 400.
    if path.startswith("/v1/records"):
        streamed = await client.get(path, params=params, headers={"accept": "text/event-stream"})
        assert streamed.status_code == 400


async def test_parentheses_alone_nest_nothing(client: httpx.AsyncClient) -> None:
    # They group, and add no level: as many as the text holds are one condition.
    await pushed(client, range(3))
    deep = "(" * 400 + "data = 1" + ")" * 400
    answer = await client.get("/v1/records", params={"where": deep})
    assert [r["message_id"] for r in answer.json()["records"]] == ["m-001"]


async def test_the_largest_filter_s_token_is_one_the_service_takes_back(
    client: httpx.AsyncClient,
) -> None:
    await pushed(client, range(3), big="v" * 1000)
    # A value near the filter's whole budget: every page's token carries it, and the
    # token is one the service takes back (so is one of a filter of 3-byte characters).
    largest = "big:" + "v" * 1000
    page = (await client.get("/v1/records", params={"attribute": largest, "limit": 1})).json()
    seen = [r["message_id"] for r in page["records"]]
    while page["records"]:
        token = page["next_page_token"]
        assert len(token) <= MAX_TOKEN_LENGTH
        page = (await client.get("/v1/records", params={"page_token": token})).json()
        seen += [r["message_id"] for r in page["records"]]
    assert seen == ["m-000", "m-001", "m-002"]
    wide = "k:" + "☃" * (MAX_FILTER_BYTES // 3)
    answer = await client.get("/v1/records", params={"attribute": wide})
    assert answer.status_code == 200
    assert len(answer.json()["next_page_token"]) <= MAX_TOKEN_LENGTH
