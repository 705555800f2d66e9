"""A filter on a keyed hash: a reader who is shown `hmac:…` for a masked member or
attribute finds the rows that show it (docs/reading.md#the-filter-language).

The store holds no key, so it is asked a looser filter and the service matches each
row it reads: every answer here is held to the reader's own unfiltered read, filtered
in the test by what each row shows, on every read that takes a filter."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import httpx
import pytest

from app.asgi import create_app
from app.http.head import Recordline
from app.query.mask import PSEUDONYM_PREFIX, Mask, Pseudonyms
from app.query.offsets import Offsets
from app.query.page_token import PageTokens
from app.query.service import KEYED_READS, RECORDS, Reader
from app.query.streams import Streams
from app.records import Record
from app.store.duckdb.store import DuckDBStore
from app.store.filters import RowFilter
from tests.conftest import served, settings
from tests.fakes import FaultyStore, LeavesUnread
from tests.test_select import events_of
from tests.waiting import until

SECRET = "a-push-secret-long-enough"
OPERATOR = {"Authorization": f"Bearer {SECRET}"}
# Record n's customer: one in GAP is Alice, so more rows lie between two of hers than
# a page's keyed reads examine (`KEYED_READS` reads of LIMIT rows).
LIMIT = 5
GAP = KEYED_READS * LIMIT + 9
COUNT = 3 * GAP + 4
ALICE = "alice@example.com"


def email_of(n: int) -> str | None:
    if n % GAP == 3:
        return ALICE
    return None if n % 7 == 0 else f"user{n % 4}@example.com"


def push_body(n: int) -> dict[str, Any]:
    customer: dict[str, Any] = {"name": f"c{n}"}
    email = email_of(n)
    if email is not None:
        customer["email"] = email
    payload = {"id": f"r-{n}", "data": {"customer": customer, "n": n, "secret": f"s{n % 3}"}}
    return {
        "message": {
            "data": base64.b64encode(json.dumps(payload).encode()).decode(),
            "messageId": f"m-{n:04}",
            "publishTime": "2024-04-27T12:00:01Z",
            "attributes": {"client-ip": f"10.0.0.{n % 5}"},
        },
        "subscription": "projects/p/subscriptions/s",
    }


@pytest.fixture
def app(store: FaultyStore) -> Recordline:
    loaded = settings(
        RECORDLINE_PUSH_TOKEN=SECRET,
        RECORDLINE_MASK_FIELDS="customer.email:hash,secret",
        RECORDLINE_MASK_ATTRIBUTES="client-ip:hash",
        RECORDLINE_STREAM_SECONDS="3",
    )
    return create_app(loaded, store=store)


@pytest.fixture
async def client(app: Recordline) -> AsyncIterator[httpx.AsyncClient]:
    async with served(app) as client:
        for start in range(0, COUNT, 50):
            answers = await asyncio.gather(
                *(
                    client.post("/pubsub/push", params={"token": SECRET}, json=push_body(n))
                    for n in range(start, min(start + 50, COUNT))
                )
            )
            assert all(a.status_code == 204 for a in answers), [a.text for a in answers]
        yield client


async def everything(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Every record as the reader is shown it, oldest first, without a filter."""
    shown: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 1000}
    while True:
        page = (await client.get("/v1/records", params=params)).json()
        shown += page["records"]
        if not page["records"] or page["next_page_token"] is None:
            return shown
        params = {"limit": 1000, "page_token": page["next_page_token"]}


def email(row: dict[str, Any]) -> Any:
    return row["data"]["customer"].get("email")


async def walk(
    client: httpx.AsyncClient, where: str, **more: str
) -> tuple[list[dict[str, Any]], int]:
    """The rows of every page of a filtered read, and how many pages came back empty
    with a token to go on. Oldest first, it ends with a page that finds nothing and says
    it is complete up to the newest record; newest first, with no token."""
    newest = (await client.get("/v1/records", params={"order": "newest", "limit": 1})).json()
    end = datetime.fromisoformat(newest["records"][0]["ingest_time"])
    rows: list[dict[str, Any]] = []
    empty = 0
    params: dict[str, Any] = {"where": where, "limit": LIMIT, **more}
    for _ in range(COUNT):
        answer = await client.get("/v1/records", params=params)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        rows += page["records"]
        token = page["next_page_token"]
        if token is None:
            return rows, empty
        if not page["records"]:
            if datetime.fromisoformat(page["complete_until"]) > end:
                return rows, empty
            empty += 1
        params = {"page_token": token, "limit": LIMIT, **more}
    raise AssertionError("the walk did not end")


async def test_every_read_finds_the_rows_that_show_a_hash(client: httpx.AsyncClient) -> None:
    shown = await everything(client)
    assert len(shown) == COUNT
    hashed = email(shown[3])
    assert hashed.startswith(PSEUDONYM_PREFIX)
    assert ALICE not in json.dumps(shown)
    wanted = [r for r in shown if email(r) == hashed]
    assert [r["id"] for r in wanted] == [f"r-{n}" for n in range(COUNT) if email_of(n) == ALICE]
    where = f"data.customer.email = '{hashed}'"

    rows, empty = await walk(client, where)
    assert rows == wanted
    # Pages that examined their reads' rows and kept none, each with a token on.
    assert empty >= 1
    newest, _ = await walk(client, where, order="newest")
    assert newest == wanted[::-1]

    # A stream of pages (for RECORDLINE_STREAM_SECONDS), and the Durable Streams' chunks.
    sse = await client.get(
        "/v1/records",
        params={"where": where, "limit": LIMIT},
        headers={"Accept": "text/event-stream"},
    )
    assert [r for page in events_of(sse.text, "page") for r in page["records"]] == wanted
    chunk = await client.get("/v1/streams/records", params={"offset": "-1", "where": where})
    streamed = chunk.json()
    while chunk.headers.get("stream-up-to-date") != "true":
        offset = chunk.headers["stream-next-offset"]
        chunk = await client.get("/v1/streams/records", params={"offset": offset, "where": where})
        streamed += chunk.json()
    assert streamed == wanted

    export = await client.get("/v1/export/records", params={"format": "jsonl", "where": where})
    assert export.status_code == 200, export.text
    exported = [json.loads(line) for line in export.text.splitlines()]
    assert [r["id"] for r in exported if "id" in r] == [r["id"] for r in wanted]
    table = await client.get(
        "/v1/export/records", params={"format": "csv", "where": where, "columns": "id"}
    )
    assert [line["id"] for line in csv.DictReader(io.StringIO(table.text))] == [
        r["id"] for r in wanted
    ]


QUESTIONS: list[tuple[str, Callable[[dict[str, Any], str, str], bool]]] = [
    ("data.customer.email != '{h}'", lambda r, h, _: email(r) not in (None, h)),
    ("NOT (data.customer.email = '{h}')", lambda r, h, _: email(r) != h),
    ("data.customer.email IN ('{h}', '{g}')", lambda r, h, g: email(r) in (h, g)),
    (
        "data.customer.email = '{h}' OR data.n < 5",
        lambda r, h, _: email(r) == h or r["data"]["n"] < 5,
    ),
    (
        "data.n >= 40 AND NOT (data.customer.email = '{h}' OR id = 'r-50')",
        lambda r, h, _: r["data"]["n"] >= 40 and not (email(r) == h or r["id"] == "r-50"),
    ),
    ("attributes[\"client-ip\"] = '{g}'", lambda r, _, g: r["attributes"]["client-ip"] == g),
]


@pytest.mark.parametrize(("question", "keeps"), QUESTIONS, ids=[q for q, _ in QUESTIONS])
async def test_a_hash_compared_with_others_keeps_what_the_reader_would_find(
    client: httpx.AsyncClient,
    question: str,
    keeps: Callable[[dict[str, Any], str, str], bool],
) -> None:
    shown = await everything(client)
    hashed = email(shown[3])
    other = email(shown[1]) if "client-ip" not in question else shown[2]["attributes"]["client-ip"]
    assert other.startswith(PSEUDONYM_PREFIX)
    where = question.format(h=hashed, g=other)
    rows, _ = await walk(client, where)
    assert rows == [r for r in shown if keeps(r, hashed, other)]


async def test_a_follower_goes_on_past_rows_it_does_not_keep_and_is_woken_by_one(
    app: Recordline, client: httpx.AsyncClient
) -> None:
    shown = await everything(client)
    hashed = email(shown[3])
    where = f"data.customer.email = '{hashed}'"
    # After Alice's first row: more rows up to her next than a read's keyed reads take.
    first = await client.get("/v1/records", params={"where": where, "limit": 1})
    assert [r["id"] for r in first.json()["records"]] == ["r-3"]
    asked = 0

    async def follow(token: str) -> tuple[list[dict[str, Any]], str]:
        nonlocal asked
        params: dict[str, Any] = {"page_token": token, "wait": "20", "limit": LIMIT}
        while True:
            asked += 1
            page = (await client.get("/v1/records", params=params)).json()
            params = {"page_token": page["next_page_token"], "wait": "20", "limit": LIMIT}
            if page["records"]:
                return page["records"], page["next_page_token"]

    # A wait that examined rows and kept none is answered at once, its token on after
    # them: the next finds her (where it waited, its 20 s would pass for each).
    found, _ = await asyncio.wait_for(follow(first.json()["next_page_token"]), 15)
    assert [r["id"] for r in found] == [f"r-{GAP + 3}"]
    assert asked == 2
    # At the tail, woken by the push of a row it keeps after many it does not.
    later = (await walk(client, where))[0][-1]
    tail = await client.get("/v1/records", params={"where": where, "since": later["ingest_time"]})
    waiting = asyncio.ensure_future(follow(tail.json()["next_page_token"]))
    paging = await app.litestar.dependencies["paging"](operator=False)
    await until(lambda: paging.followers.open == 1, what="the follower to wait")
    others = [n for n in range(COUNT, COUNT + 2 * GAP) if email_of(n) != ALICE][:GAP]
    alice = next(n for n in range(COUNT, COUNT + 2 * GAP) if email_of(n) == ALICE)
    for n in [*others, alice]:
        answer = await client.post("/pubsub/push", params={"token": SECRET}, json=push_body(n))
        assert answer.status_code == 204
    found, _ = await asyncio.wait_for(waiting, 60)
    assert [r["id"] for r in found] == [f"r-{alice}"]


async def test_a_stream_of_small_chunks_goes_on_past_rows_it_does_not_keep() -> None:
    store = DuckDBStore(":memory:")
    await store.start()
    try:
        rows = [
            Record(
                message_id=f"m-{n:03}",
                publish_time=10 + n,
                ingest_time=10 + n,
                id=str(n),
                data=json.dumps({"customer": {"email": ALICE if n % 97 == 5 else "bob"}}),
            )
            for n in range(300)
        ]
        await store.append(rows)
        keys = Pseudonyms("a-mask-key")
        mask = Mask(["customer.email:hash"], pseudonyms=keys)
        reader = Reader(store, pending_horizon=lambda: 2**62, tokens=PageTokens("s"), mask=mask)
        streams = Streams(reader, Offsets("s"), page_rows=2, chunk_rows=4)
        keep = RowFilter(where=f"data.customer.email = '{keys.of(ALICE)}'")
        position = streams.start(RECORDS, None, keep)
        assert position is not None
        seen: list[str] = []
        for _ in range(len(rows)):
            chunk = await streams.chunk(RECORDS, position, max_bytes=4 * 400)
            seen += [r["id"] for r in json.loads(chunk.body)]
            position = chunk.after
            if chunk.up_to_date:
                break
        assert seen == ["5", "102", "199", "296"]
    finally:
        await store.close()


async def test_a_hash_filter_asks_nothing_a_reader_was_not_shown(
    client: httpx.AsyncClient,
) -> None:
    shown = await everything(client)
    hashed = email(shown[3])
    refused = {
        # The value itself, a part or an order of the hash, a member withheld.
        f"data.customer.email = '{ALICE}'": 403,
        "data.customer.email STARTS WITH 'hmac:'": 403,
        f"data.customer.email > '{hashed}'": 403,
        f"data.customer = '{hashed}'": 403,
        f"data.secret = '{hashed}'": 403,
        f"data.customer.email.x = '{hashed}'": 403,
        f"data.customer.email = '{hashed.upper()}'": 403,
    }
    for where, status in refused.items():
        answer = await client.get("/v1/records", params={"where": where})
        assert answer.status_code == status, (where, answer.text)
    # A count is the store's, which holds no key: refused, saying so.
    counted = await client.get(
        "/v1/counts/records",
        params={"where": f"data.customer.email = '{hashed}'", "since": "2000-01-01T00:00:00Z"},
    )
    assert counted.status_code == 400, counted.text
    assert "keyed hash" in counted.json()["detail"]
    # An operator sees values whole: a hash is compared with them as they are.
    whole = await client.get(
        "/v1/records", params={"where": f"data.customer.email = '{hashed}'"}, headers=OPERATOR
    )
    assert whole.status_code == 200
    assert whole.json()["records"] == []


async def test_a_projection_reads_what_the_service_matches_a_hash_in() -> None:
    # On a store that leaves unread what a page shows none of, a page of `id` alone with
    # a filter on a hash reads the payload (or the attributes) all the same: the service
    # matches the hash on each row it reads, the store never does.
    loaded = settings(
        RECORDLINE_PUSH_TOKEN=SECRET,
        RECORDLINE_MASK_FIELDS="customer.email:hash,secret",
        RECORDLINE_MASK_ATTRIBUTES="client-ip:hash",
    )
    async with served(create_app(loaded, store=LeavesUnread(DuckDBStore(":memory:")))) as client:
        for n in range(COUNT):
            answer = await client.post("/pubsub/push", params={"token": SECRET}, json=push_body(n))
            assert answer.status_code == 204, answer.text
        shown = await everything(client)
        hashed, ip = email(shown[3]), shown[2]["attributes"]["client-ip"]
        for where, keeps in (
            (f"data.customer.email = '{hashed}'", lambda r: email(r) == hashed),
            (f"attributes[\"client-ip\"] = '{ip}'", lambda r: r["attributes"]["client-ip"] == ip),
        ):
            wanted = [{"id": r["id"]} for r in shown if keeps(r)]
            assert wanted
            rows, _ = await walk(client, where, select="id")
            assert rows == wanted, where
            newest, _ = await walk(client, where, select="id", order="newest")
            assert newest == wanted[::-1], where
            export = await client.get(
                "/v1/export/records", params={"format": "jsonl", "where": where, "select": "id"}
            )
            assert [json.loads(line) for line in export.text.splitlines()] == wanted, where
