"""Pages newest first (`order=newest`): every row once, the newest first, on every store."""

from __future__ import annotations

import asyncio
import base64
import random
import time
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient, TestClient

from app.asgi import create_app
from app.budget import Budget
from app.http.head import Recordline
from app.query.charged import READ_COPIES
from app.query.page_token import PageTokens
from app.query.service import RECORDS, Reader
from app.records import Record, Rejection
from app.store.duckdb.store import DuckDBStore
from app.store.pages import row_bytes
from tests.conftest import envelope, settings


def push(client: TestClient[Recordline], n: int, **attributes: str) -> None:
    body = envelope({"id": f"r{n}", "data": n}, message_id=f"m{n:04d}", attributes=attributes)
    assert client.post("/pubsub/push", json=body).status_code == 204


def walk(client: TestClient[Recordline], path: str = "/v1/records", **params: Any) -> list[Any]:
    """Every page of a newest-first read, each page's rows in order."""
    rows: list[Any] = []
    key = "records" if path.endswith("records") else "rejections"
    page = client.get(path, params={"order": "newest", **params}).json()
    rows += page[key]
    while page["next_page_token"] is not None:
        token = page["next_page_token"]
        page = client.get(path, params={**params, "order": "newest", "page_token": token}).json()
        rows += page[key]
    return rows


def keys(rows: list[Any]) -> list[tuple[str, str]]:
    return [(r["ingest_time"], r["message_id"]) for r in rows]


def test_newest_first_pages_hold_every_row_once_the_newest_first(
    client: TestClient[Recordline],
) -> None:
    for n in range(25):
        push(client, n)
    first = client.get("/v1/records", params={"order": "newest", "limit": 7})
    assert first.status_code == 200
    assert (
        first.headers["cache-control"].startswith("no-cache")
        or "no-store" in (first.headers["cache-control"])
    )
    assert [r["message_id"] for r in first.json()["records"]] == [
        f"m{n:04d}" for n in range(24, 17, -1)
    ]
    rows = walk(client, limit=7)
    assert sorted(r["message_id"] for r in rows) == [f"m{n:04d}" for n in range(25)]
    assert keys(rows) == sorted(keys(rows), reverse=True)
    assert len(set(keys(rows))) == 25
    # What comes after the first page is read oldest first from its complete_until.
    push(client, 99)
    since = first.json()["complete_until"]
    after = client.get("/v1/records", params={"since": since}).json()["records"]
    assert [r["message_id"] for r in after] == ["m0099"]


def test_newest_first_keeps_the_filter_and_the_bounds(client: TestClient[Recordline]) -> None:
    for n in range(12):
        push(client, n, colour="red" if n % 3 == 0 else "blue")
    reds = walk(client, limit=2, attribute="colour:red")
    assert [r["message_id"] for r in reds] == ["m0009", "m0006", "m0003", "m0000"]
    every = client.get("/v1/records", params={"limit": 12}).json()["records"]
    since, until = every[4]["ingest_time"], every[9]["ingest_time"]
    bounded = walk(client, limit=3, since=since, until=until)
    assert [r["message_id"] for r in bounded] == [f"m{n:04d}" for n in range(8, 3, -1)]


def test_newest_first_is_a_page_read_and_its_tokens_say_so(client: TestClient[Recordline]) -> None:
    for n in range(3):
        push(client, n)
    waited = client.get("/v1/records", params={"order": "newest", "wait": 1})
    assert waited.status_code == 400
    assert waited.json()["parameter"] == "order"
    streamed = client.get(
        "/v1/records", params={"order": "newest"}, headers={"accept": "text/event-stream"}
    )
    assert streamed.status_code == 400
    assert client.get("/v1/records", params={"order": "latest"}).status_code == 400
    newest = client.get("/v1/records", params={"order": "newest", "limit": 1}).json()
    oldest = client.get("/v1/records", params={"limit": 1}).json()
    # A token reads on only in the order it was issued for.
    mixed = client.get("/v1/records", params={"page_token": newest["next_page_token"]})
    assert mixed.status_code == 400
    assert "order=newest" in mixed.json()["detail"]
    mixed = client.get(
        "/v1/records", params={"order": "newest", "page_token": oldest["next_page_token"]}
    )
    assert mixed.status_code == 400
    # Nor an export or a stream: they read oldest first.
    export = client.get(
        "/v1/export/records", params={"format": "jsonl", "page_token": newest["next_page_token"]}
    )
    assert export.status_code == 400
    # Nor on the other list.
    other = client.get(
        "/v1/rejections", params={"order": "newest", "page_token": newest["next_page_token"]}
    )
    assert other.status_code == 400


def test_rejections_read_newest_first(client: TestClient[Recordline]) -> None:
    for n in range(5):
        body = {
            "message": {
                "data": base64.b64encode(b"not json %d" % n).decode(),
                "messageId": f"bad{n}",
                "publishTime": "2024-01-01T00:00:00Z",
            },
            "subscription": "projects/p/subscriptions/s",
        }
        assert client.post("/pubsub/push", json=body).status_code == 204
    rows = walk(client, "/v1/rejections", limit=2)
    assert [r["message_id"] for r in rows] == [f"bad{n}" for n in range(4, -1, -1)]


async def test_newest_first_over_rows_of_one_microsecond_and_sparse_times() -> None:
    # Rows stored at chosen times: many in one microsecond, some a day or a year apart,
    # read newest first by pages of every size, each case's rows found by its attribute.
    store = DuckDBStore(":memory:")
    app = create_app(settings(), store=store)
    chooser = random.Random(7)
    base = 1_700_000_000_000_000
    async with AsyncTestClient(app) as client:
        for case in range(24):
            times = [
                base
                + chooser.choice([0, 1, 2, 999_999, 86_400_000_000, 31_536_000_000_000])
                + chooser.randrange(3)
                for _ in range(chooser.randrange(0, 40))
            ]
            rows: list[Record | Rejection] = [
                Record(
                    message_id=f"c{case}-{i:03d}",
                    publish_time=t,
                    ingest_time=t,
                    id=str(i),
                    data="1",
                    attributes=f'{{"case":"{case}"}}',
                )
                for i, t in enumerate(times)
            ]
            if rows:
                await store.append(rows)
            limit = chooser.choice([1, 2, 3, 7, 50, 1000])
            seen: list[tuple[int, str]] = []
            params: dict[str, Any] = {
                "order": "newest",
                "limit": limit,
                "attribute": f"case:{case}",
            }
            while True:
                page = (await client.get("/v1/records", params=params)).json()
                assert len(page["records"]) <= limit
                seen += [(r["ingest_time"], r["message_id"]) for r in page["records"]]
                if page["next_page_token"] is None:
                    break
                params = {"order": "newest", "limit": limit, "page_token": page["next_page_token"]}
            ids = [message_id for _, message_id in seen]
            expected = sorted(rows, key=lambda r: (r.ingest_time, r.message_id), reverse=True)
            assert ids == [r.message_id for r in expected], (case, limit)


async def test_a_burst_long_ago_is_found_on_the_first_page() -> None:
    # A nightly job's 5,000 rows in half a second, a year ago, nothing since: the first
    # page holds the newest of them, not an empty page and a token to go on with.
    store = DuckDBStore(":memory:")
    app = create_app(settings(), store=store)
    start = time.time_ns() // 1000 - 365 * 86_400_000_000
    rows: list[Record | Rejection] = [
        Record(message_id=f"b{i:05d}", publish_time=0, ingest_time=start + i * 100, id=str(i))
        for i in range(5000)
    ]
    async with AsyncTestClient(app) as client:
        for at in range(0, len(rows), 1000):
            await store.append(rows[at : at + 1000])
        page = (await client.get("/v1/records", params={"order": "newest", "limit": 50})).json()
    assert [r["message_id"] for r in page["records"]] == [
        f"b{i:05d}" for i in range(4999, 4949, -1)
    ]


async def test_a_walk_is_gone_when_its_ceiling_leaves_the_retention_not_its_floor() -> None:
    # The oldest row kept is a moment from the retention's edge: a walk of the newest
    # rows goes on after it passes the edge, and ends at the edge; a token whose next
    # rows are past the edge is 410.
    store = DuckDBStore(":memory:")
    app = create_app(settings(RECORDLINE_RETENTION_DAYS="1"), store=store)
    day = 86_400_000_000
    async with AsyncTestClient(app) as client:
        now = time.time_ns() // 1000
        edge = now - day + 1_500_000
        rows: list[Record | Rejection] = [
            Record(message_id=f"old{i}", publish_time=0, ingest_time=edge + i, id=f"o{i}")
            for i in range(2)
        ]
        rows += [
            Record(
                message_id=f"new{i}", publish_time=0, ingest_time=now - 10_000_000 + i, id=str(i)
            )
            for i in range(4)
        ]
        await store.append(rows)
        params: dict[str, Any] = {"order": "newest", "limit": 2}
        first = (await client.get("/v1/records", params=params)).json()
        assert [r["message_id"] for r in first["records"]] == ["new3", "new2"]
        rest = {**params, "until": first["records"][0]["ingest_time"], "limit": 4}
        late = (await client.get("/v1/records", params=rest)).json()
        assert [r["message_id"] for r in late["records"]] == ["new2", "new1", "new0", "old1"]
        await asyncio.sleep(2)
        second = await client.get(
            "/v1/records", params={**params, "page_token": first["next_page_token"]}
        )
        assert second.status_code == 200
        assert [r["message_id"] for r in second.json()["records"]] == ["new1", "new0"]
        assert second.json()["next_page_token"] is None
        gone = await client.get(
            "/v1/records", params={**params, "page_token": late["next_page_token"]}
        )
        assert gone.status_code == 410
        assert gone.json()["parameter"] == "page_token"


class CountedPages(DuckDBStore):
    """The embedded store, counting the pages it is asked for."""

    pages = 0

    async def page(self, kind: Any, query: Any) -> Any:
        self.pages += 1
        return await super().page(kind, query)


async def test_a_small_page_in_a_crowded_microsecond_costs_few_reads() -> None:
    # 5,000 rows of one microsecond, read a row at a time: each page reads the
    # microsecond a read's worth of rows at a time, not a page's `limit` at a time.
    store = CountedPages(":memory:")
    app = create_app(settings(), store=store)
    at = time.time_ns() // 1000 - 5_000_000
    rows: list[Record | Rejection] = [
        Record(message_id=f"s{i:05d}", publish_time=0, ingest_time=at, id=str(i))
        for i in range(5000)
    ]
    async with AsyncTestClient(app) as client:
        for start in range(0, len(rows), 1000):
            await store.append(rows[start : start + 1000])
        params: dict[str, Any] = {"order": "newest", "limit": 1}
        for expected in ("s04999", "s04998", "s04997"):
            before = store.pages
            page = (await client.get("/v1/records", params=params)).json()
            assert [r["message_id"] for r in page["records"]] == [expected]
            assert store.pages - before <= 60
            params = {"order": "newest", "limit": 1, "page_token": page["next_page_token"]}


_WALKS = iter(range(10**9))


@pytest.mark.slow
@hypothesis.settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(
    first=st.integers(0, 12),
    steps=st.lists(st.tuples(st.integers(1, 5), st.integers(0, 3)), max_size=8),
)
def test_a_walk_serves_every_row_once_while_rows_arrive_at_the_top(
    client: TestClient[Recordline], first: int, steps: list[tuple[int, int]]
) -> None:
    # Rows pushed before the first page, then pages of each `limit` with some rows
    # pushed between them: the walk holds the rows before its first page once each,
    # newest first, and reading oldest first from its complete_until, the others once.
    walk_id = str(next(_WALKS))
    sent: list[str] = []

    def send(count: int) -> None:
        for _ in range(count):
            message_id = f"w{walk_id}-{len(sent):03d}"
            body = envelope({"id": message_id}, message_id=message_id, attributes={"w": walk_id})
            assert client.post("/pubsub/push", json=body).status_code == 204
            sent.append(message_id)

    send(first)
    before = len(sent)
    params: dict[str, Any] = {"order": "newest", "attribute": f"w:{walk_id}", "limit": 1}
    seen: list[Any] = []
    complete_until = None
    token = None
    for limit, arriving in [*steps, *([(1000, 0)] * (first + 2))]:
        asked = {**params, "limit": limit, **({} if token is None else {"page_token": token})}
        answer = client.get("/v1/records", params=asked)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        complete_until = complete_until or page["complete_until"]
        assert len(page["records"]) <= limit
        seen += page["records"]
        token = page["next_page_token"]
        if token is None:
            break
        params = {"order": "newest", "limit": limit}
        send(arriving)
    assert token is None
    assert keys(seen) == sorted(keys(seen), reverse=True)
    assert [r["message_id"] for r in seen] == sent[:before][::-1]
    after = client.get(
        "/v1/records", params={"since": complete_until, "attribute": f"w:{walk_id}", "limit": 1000}
    ).json()["records"]
    assert [r["message_id"] for r in after] == sent[before:]


async def test_the_rows_of_a_crowded_microsecond_a_page_holds_are_charged_to_the_budget() -> None:
    # 2,000 rows of 1 kB and 4 of 1 MB in one microsecond: the newest, read last, are
    # what the page holds, and the budget is charged for them while it holds them.
    store = DuckDBStore(":memory:")
    await store.start()
    budget = Budget(512 * 1024 * 1024)
    reader = Reader(
        store,
        pending_horizon=lambda: 2**62,
        tokens=PageTokens("a-secret-long-enough-for-tokens"),
        budget=budget,
    )
    at = time.time_ns() // 1000 - 5_000_000
    rows: list[Record | Rejection] = [
        Record(
            message_id=f"b{i:04d}",
            publish_time=0,
            ingest_time=at,
            id=str(i),
            data='"' + "x" * (1_000_000 if i >= 2000 else 1000) + '"',
        )
        for i in range(2004)
    ]
    try:
        for start in range(0, len(rows), 1000):
            await store.append(rows[start : start + 1000])
        page = await reader.newest_page(
            RECORDS, since=None, until=None, limit=1000, page_token=None
        )
        shown = {r.message_id for r in page.records}
        assert [r.message_id for r in page.records][:5] == [f"b{i}" for i in range(2003, 1998, -1)]
        held = sum(row_bytes(r) for r in rows if r.message_id in shown)
        assert budget.held >= READ_COPIES * held
        assert page.next_page_token is not None
    finally:
        await store.close()
