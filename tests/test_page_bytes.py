"""Pages, events and chunks are bounded in bytes as well as rows, and resume exactly.

A page holds at most PAGE_BYTES of rows (`app.store.row_bytes`), or as many as the
process's budget has room for, or its first row alone when that is larger; a
stream's event SSE_EVENT_BYTES, a chunk CHUNK_BYTES. Fewer rows than `limit` then,
and the token (or offset) goes on after the last one it holds: a follower meets
every row once. On the embedded store and the serving tier, from storage and from
the tail in memory.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.asgi import create_app
from app.budget import Charge
from app.http.head import Recordline
from app.query.charged import READ_COPIES
from app.query.service import PAGE_BYTES
from app.query.streams import CHUNK_BYTES
from app.records import Record
from app.routes.follow import SSE_EVENT_BYTES
from app.store import ROW_BYTES, row_bytes
from tests.conftest import envelope, served, settings
from tests.fakes import FaultyStore

MIB = 1024 * 1024


@pytest.fixture
def app(store: FaultyStore) -> Recordline:
    return create_app(settings(RECORDLINE_STREAM_SECONDS="2"), store=store)


@pytest.fixture
async def client(app: Recordline) -> AsyncIterator[httpx.AsyncClient]:
    async with served(app) as client:
        yield client


async def push(client: httpx.AsyncClient, message_id: str, size: int) -> None:
    """A record whose `data` is a JSON string of `size` characters."""
    body = envelope({"id": message_id, "data": "x" * size}, message_id=message_id)
    assert (await client.post("/pubsub/push", json=body)).status_code == 204


async def reject(client: httpx.AsyncClient, message_id: str, size: int) -> None:
    """A rejection of `size` bytes that are no JSON."""
    body = envelope(None, message_id=message_id, raw_data=b"\xff" * size)
    assert (await client.post("/pubsub/push", json=body)).status_code == 204


def shown(size: int) -> int:
    """What a record of `push` counts as in a page (`row_bytes`)."""
    return row_bytes(Record(message_id="m", publish_time=0, ingest_time=0, id="r", data="x" * size))


async def walk(
    client: httpx.AsyncClient, path: str, rows: str, **params: Any
) -> list[tuple[list[str], httpx.Response]]:
    """Every page from `params` on, following each token: the message ids of each."""
    pages: list[tuple[list[str], httpx.Response]] = []
    page = await client.get(path, params={"limit": 1000, **params})
    while True:
        assert page.status_code == 200, page.text
        ids = [r["message_id"] for r in page.json()[rows]]
        if not ids:
            return pages
        pages.append((ids, page))
        page = await client.get(path, params={"page_token": page.json()["next_page_token"]})


@pytest.mark.slow
@pytest.mark.parametrize("where", ["storage", "tail"])
async def test_a_page_holds_what_its_bytes_allow_and_its_token_goes_on_after_its_last_row(
    client: httpx.AsyncClient, where: str
) -> None:
    # Two records of 1.5 MiB are within the budget, three are not.
    size = 3 * MIB // 2
    assert 2 * shown(size) <= PAGE_BYTES < 3 * shown(size)
    for n in range(5):
        await push(client, f"m-{n}", size)
    # From the first row kept (storage), or from the first of these (the tail in memory).
    first = (await client.get("/v1/records", params={"limit": 1})).json()["records"][0]
    since = {} if where == "storage" else {"since": first["ingest_time"]}
    pages = await walk(client, "/v1/records", "records", **since)
    assert [ids for ids, _ in pages] == [["m-0", "m-1"], ["m-2", "m-3"], ["m-4"]]
    # A page its bytes ended can never change, as a page of `limit` rows; the tail can.
    for _, page in pages[:2]:
        assert "immutable" in page.headers["cache-control"]
        assert "etag" in page.headers
    assert pages[-1][1].headers["cache-control"] == "no-cache"


async def five_rows_and_room_for_two(app: Recordline, client: httpx.AsyncClient) -> Charge:
    """Five records of 100 KB stored, and the budget held (the Charge returned) so that
    reads may take room for 250 KB of rows (twice over) beyond their least: two of
    those records fit, three do not."""
    size, room = 100_000, 250_000
    assert 2 * shown(size) <= room < 3 * shown(size)
    for n in range(5):
        await push(client, f"m-{n}", size)
    budget = app.budget
    assert budget is not None
    held = Charge(budget)
    assert held.take(budget.read_most - READ_COPIES * room, budget.most)
    return held


@pytest.mark.slow
async def test_a_page_cut_short_by_the_room_the_process_has_is_final_and_goes_on_after_it(
    app: Recordline, client: httpx.AsyncClient
) -> None:
    held = await five_rows_and_room_for_two(app, client)
    pages = await walk(client, "/v1/records", "records")
    assert [ids for ids, _ in pages] == [["m-0", "m-1"], ["m-2", "m-3"], ["m-4"]]
    # As final as a page its own bytes ended: complete up to its last row.
    for _, page in pages[:2]:
        assert "immutable" in page.headers["cache-control"]
        assert page.json()["complete_until"] == page.json()["records"][-1]["ingest_time"]
    held.release()
    pages = await walk(client, "/v1/records", "records")
    assert [ids for ids, _ in pages] == [[f"m-{n}" for n in range(5)]]


@pytest.mark.slow
async def test_a_row_larger_than_the_budget_is_a_page_of_its_own(
    client: httpx.AsyncClient,
) -> None:
    # A rejection, the largest row every store keeps (the serving tier refuses a record
    # of more than 2,621,440 characters, and keeps it as a rejection): 4 MiB of bytes,
    # 5.6 MB of base 64.
    large = 4 * MIB
    await reject(client, "small-0", 10)
    await reject(client, "large", large)
    await reject(client, "small-1", 10)
    pages = await walk(client, "/v1/rejections", "rejections")
    assert [ids for ids, _ in pages] == [["small-0"], ["large"], ["small-1"]]
    assert len(base64.b64decode(pages[1][1].json()["rejections"][0]["data"])) == large


@pytest.mark.slow
async def test_rejections_are_paged_by_their_bytes_as_shown_in_base64(
    client: httpx.AsyncClient,
) -> None:
    # 1,000,000 bytes are 1,333,336 characters of base 64: three fit a page, four do not.
    size = 1_000_000
    assert 3 * (4 * size // 3 + ROW_BYTES) < PAGE_BYTES < 4 * (4 * size // 3)
    for n in range(4):
        await reject(client, f"bad-{n}", size)
    pages = await walk(client, "/v1/rejections", "rejections")
    assert [ids for ids, _ in pages] == [["bad-0", "bad-1", "bad-2"], ["bad-3"]]


@pytest.mark.slow
async def test_each_event_of_a_stream_of_pages_holds_at_most_its_bytes(
    client: httpx.AsyncClient,
) -> None:
    # Two records of 600 KB are more than an event holds.
    size = 600_000
    assert shown(size) < SSE_EVENT_BYTES < 2 * shown(size)
    for n in range(3):
        await push(client, f"m-{n}", size)
    pages: list[list[str]] = []
    async with client.stream(
        "GET", "/v1/records", params={"limit": 1000}, headers={"accept": "text/event-stream"}
    ) as stream:
        async for line in stream.aiter_lines():
            if line.startswith("data: ") and '"records"' in line:
                pages.append([r["message_id"] for r in json.loads(line[6:])["records"]])
    assert pages == [["m-0"], ["m-1"], ["m-2"]]


@pytest.mark.slow
async def test_a_chunk_of_a_stream_holds_at_most_its_bytes_and_its_offset_goes_on(
    client: httpx.AsyncClient,
) -> None:
    # Three records of 2.6 MB are within a chunk, four are not (and a record's text is
    # at most 2,621,440 characters on the serving tier).
    size = 2_600_000
    assert 3 * shown(size) <= CHUNK_BYTES < 4 * shown(size)
    for n in range(7):
        await push(client, f"m-{n}", size)
    chunks: list[list[str]] = []
    offset = "-1"
    while True:
        chunk = await client.get("/v1/streams/records", params={"offset": offset})
        ids = [r["message_id"] for r in chunk.json()]
        if not ids:
            break
        chunks.append(ids)
        offset = chunk.headers["stream-next-offset"]
    # Each write of this test is a microsecond of its own: a chunk ends at any row.
    assert chunks == [["m-0", "m-1", "m-2"], ["m-3", "m-4", "m-5"], ["m-6"]]


@pytest.mark.slow
async def test_a_chunk_cut_short_by_the_room_the_process_has_ends_there(
    app: Recordline, client: httpx.AsyncClient
) -> None:
    # As a page. The chunk ends with the read cut short, rather than reading on 250 KB
    # at a time up to CHUNK_BYTES.
    held = await five_rows_and_room_for_two(app, client)
    chunks: list[list[str]] = []
    offset = "-1"
    while True:
        chunk = await client.get("/v1/streams/records", params={"offset": offset})
        assert chunk.status_code == 200, chunk.text
        ids = [r["message_id"] for r in chunk.json()]
        if not ids:
            break
        chunks.append(ids)
        offset = chunk.headers["stream-next-offset"]
    held.release()
    # Each chunk holds what one read had room for (what the budget held besides, the
    # answer before it being sent, varies), and the offsets meet every record once.
    assert [i for ids in chunks for i in ids] == [f"m-{n}" for n in range(5)]
    assert max(map(len, chunks)) == 2, chunks


@pytest.mark.parametrize("count", [63, 64, 65, 129])
async def test_duckdb_reads_a_page_to_its_bytes_exactly_across_its_fetches(count: int) -> None:
    """DuckDB returns a page's rows a few at a time (as many as the room left holds at
    INLINE_BYTES each, 64 at most): whatever the batch, the page keeps rows one by one
    until they hold its bytes, and is full exactly when they do (or when it has `limit`
    rows), as counted by `row_bytes`; payloads past INLINE_BYTES are read by key."""
    from app.store import PageQuery
    from app.store.duckdb.store import DuckDBStore

    store = DuckDBStore(":memory:")
    await store.start()
    try:
        rows = [
            Record(
                message_id=f"m-{i:04}",
                publish_time=i,
                ingest_time=10 + i,
                id=str(i),
                # From a few bytes to past INLINE_BYTES (64 KiB), a few far past it: a
                # batch sized for the room at 64 KiB a row goes past it with one of those.
                data=json.dumps("x" * (300_000 if i % 16 == 5 else i * 7_919 % 70_000)),
                attributes=json.dumps({"k": "é" * (i % 5)}, ensure_ascii=False),
            )
            for i in range(count)
        ]
        await store.append(rows)
        await store.barrier()  # applied: the tail lets them go, older than its window
        sizes = [row_bytes(row) for row in rows]
        budgets = {1, sizes[0], sum(sizes[:64]), sum(sizes[:65]) - 1, sum(sizes), 10**9}
        # Reached by one of the large rows inside a batch, more rows fetched after it.
        budgets |= {sum(sizes[:k]) + room for k in (5, 21, 37) for room in (150_000, 250_000)}
        for max_bytes in sorted(budgets):
            for limit in (count, count + 1, 64):
                query = PageQuery(
                    after_time=0,
                    after_message_id="",
                    before_time=10**9,
                    limit=limit,
                    max_bytes=max_bytes,
                )
                assert not store.live.covers(query)
                page = await store.page(Record, query)
                # One at a time until they hold max_bytes (the first whatever its size).
                kept, total = 0, 0
                while kept < min(limit, count) and total < max_bytes:
                    total += sizes[kept]
                    kept += 1
                assert page.rows == rows[:kept], (max_bytes, limit)
                full = total >= max_bytes or kept >= limit
                expected = (rows[kept - 1].ingest_time, rows[kept - 1].message_id)
                assert (page.after_time, page.after_message_id) == (
                    expected if full else (10**9, "")
                ), (max_bytes, limit)
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["records", "rejections"])
async def test_duckdb_pages_walk_every_row_once_whatever_their_sizes(kind: str) -> None:
    """Rows of payloads about INLINE_BYTES (one byte either side, in UTF-8 or base 64),
    non-ASCII attributes, many of them in one microsecond: walked page by page to a
    byte budget, every row comes once, in key order, and each page resumes as `filled`
    says of its rows (the store's own count of their bytes agreeing with `row_bytes`)."""
    from app.records import Rejection
    from app.store import PageQuery
    from app.store.duckdb.sql import INLINE_BYTES
    from app.store.duckdb.store import DuckDBStore

    store = DuckDBStore(":memory:")
    await store.start()
    try:
        rows: list[Any] = []
        for i in range(48):
            # Payloads of INLINE_BYTES + (-1, 0, 1, ...), some 2-byte characters in them.
            size = INLINE_BYTES + i % 5 - 2 if i % 3 else 10 + i
            text = ("é" * (size // 2) + "x" * (size % 2)) if i % 2 else "y" * size
            shared = {
                "message_id": f"m-{i:03}",
                "publish_time": i,
                "ingest_time": 100 + i // 16,  # 16 rows a microsecond
                "attributes": json.dumps({"clé": "ü" * (i % 7)}, ensure_ascii=False),
            }
            if kind == "records":
                rows.append(Record(**shared, id=str(i), data=json.dumps(text, ensure_ascii=False)))
            else:
                rows.append(Rejection(**shared, data=text.encode()[: size + i % 2], reason="r"))
        table: Any = Record if kind == "records" else Rejection
        await store.append(rows)
        await store.barrier()  # applied: the tail lets records go, older than its window
        sizes = [row_bytes(row) for row in rows]
        last = (rows[-1].ingest_time, rows[-1].message_id)
        for max_bytes in (1, sizes[1] + 1, 3 * INLINE_BYTES, sum(sizes[:17]), 10**9):
            for limit in (7, 16, 100):
                seen: list[Any] = []
                after: tuple[int, str] = (0, "")
                while True:
                    query = PageQuery(
                        after_time=after[0],
                        after_message_id=after[1],
                        before_time=10**6,
                        limit=limit,
                        max_bytes=max_bytes,
                    )
                    # The tail let the records go (older than its window): it covers
                    # only what follows the last, and DuckDB reads the rest.
                    assert table is Rejection or store.live.covers(query) == (after >= last)
                    page = await store.page(table, query)
                    assert (page.after_time, page.after_message_id) == query.resume(page.rows)
                    seen += page.rows
                    if not page.after_message_id:
                        break
                    after = (page.after_time, page.after_message_id)
                assert seen == rows, (max_bytes, limit)
    finally:
        await store.close()


async def test_duckdb_reads_little_past_a_page_s_bytes_whatever_the_rows_attributes() -> None:
    """What DuckDB's read of a page makes in Python past the rows it keeps is within a
    few rows, when each row's attributes are as large as a push may send (100 of them,
    each value 1,024 characters of 4 bytes in UTF-8): attributes past INLINE_BYTES are
    read by key, as payloads are, not fetched with each of a batch of rows and let go.
    (A row read alone makes about 4 to 5 times its size on the way; a batch of 16 with
    their attributes made 20 to 33.)"""
    import tracemalloc

    from app.store import PageQuery
    from app.store.duckdb.store import DuckDBStore

    store = DuckDBStore(":memory:")
    await store.start()
    try:
        attributes = json.dumps(
            {f"k{j:02}": "\U0001f600" * 1024 for j in range(100)}, ensure_ascii=False
        )
        rows = [
            Record(
                message_id=f"m-{i:02}",
                publish_time=i,
                ingest_time=10 + i,
                id=str(i),
                attributes=attributes,
            )
            for i in range(40)
        ]
        await store.append(rows)
        await store.barrier()  # applied: the tail lets them go, older than its window
        largest = max(map(row_bytes, rows))
        for max_bytes in (64 * 1024, 4 * MIB):
            query = PageQuery(
                after_time=0, after_message_id="", before_time=10**9, limit=40, max_bytes=max_bytes
            )
            assert not store.live.covers(query)
            tracemalloc.start()
            try:
                page = await store.page(Record, query)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            held = sum(map(row_bytes, page.rows))
            assert peak < held + 6 * largest, (max_bytes, len(page.rows), peak, held)
            # Each row whole, its attributes read by key.
            assert page.rows == rows[: len(page.rows)]
    finally:
        await store.close()


@pytest.mark.parametrize("max_bytes", [1, 10**6])
def test_a_duckdb_page_whose_large_row_expired_meanwhile_is_read_again(max_bytes: int) -> None:
    """A page reads its payloads past INLINE_BYTES by key after its rows: a row expired
    (retention deletes it) between the two is not in the page, read again without it,
    rather than a row without data that fails the read (`row_bytes` of None, a 500)."""
    import duckdb

    from app.store.duckdb.sql import BOUNDED_PAGE_SQL, ddl, payload_size, read_within

    database = duckdb.connect(":memory:")
    try:
        database.execute(ddl("records", Record))
        large = json.dumps("x" * 70_000)
        for n, data in enumerate([large, '"small"', large]):
            database.execute(
                "INSERT INTO records (message_id, publish_time, ingest_time, id, data, attributes) "
                "VALUES ($id, make_timestamptz(1), make_timestamptz(10), $id, $data, '{}')",
                {"id": f"m-{n}", "data": data},
            )

        class Expiring:
            """A reader's cursor whose first row is expired by another connection just
            before the large payloads are read by key."""

            def __init__(self, cursor: Any) -> None:
                self.cursor = cursor

            def execute(self, sql: str, params: Any) -> Any:
                if "unnest($ids)" in sql:
                    database.cursor().execute("DELETE FROM records WHERE message_id = 'm-0'")
                return self.cursor.execute(sql, params)

            def __getattr__(self, name: str) -> Any:
                return getattr(self.cursor, name)

        params = {"after_time": 0, "after_message_id": "", "before_time": 10**9, "limit": 10}
        rows, _ = read_within(
            Expiring(database.cursor()),  # type: ignore[arg-type]
            BOUNDED_PAGE_SQL[Record],
            params,
            Record,
            max_bytes,
            payload_size(Record),
        )
        # One row reaches a byte; all that are left are within a megabyte.
        assert [r.data for r in rows] == ['"small"', large][: 1 if max_bytes == 1 else 2]
        assert database.execute("SELECT count(*) FROM records").fetchone() == (2,)
    finally:
        database.close()
