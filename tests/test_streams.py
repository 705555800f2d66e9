"""The Durable Streams read side (/v1/streams/...) point by point, through a real server
on the embedded store: offsets, catch-up chunks, long-poll, SSE, caching, errors."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.asgi import create_app
from app.http.head import Recordline
from app.query import follow
from app.query.offsets import ALPHABET, SEPARATOR, Offsets
from app.query.page_token import PageToken, PageTokens
from app.query.service import RECORDS, Reader, RecordView, record_view, view
from app.query.streams import (
    CURSOR_EPOCH_SECONDS,
    CURSOR_INTERVAL_SECONDS,
    Streams,
    cursor_after,
)
from app.records import MAX_ID_LENGTH, MAX_MICROS, MIN_MICROS, Record
from app.settings import DEFAULT_PAGE_TOKEN_SECRET
from app.store import PageQuery, row_bytes
from app.store.duckdb.store import DuckDBStore
from tests.conftest import long_polling, served, settings
from tests.fakes import FaultyStore
from tests.waiting import until

STREAM = "/v1/streams/records"


def push_body(n: int, *, data: Any = None) -> dict[str, Any]:
    payload = {"id": f"r-{n}", "data": n if data is None else data}
    return {
        "message": {
            "data": base64.b64encode(json.dumps(payload).encode()).decode(),
            "messageId": f"m-{n}",
            "publishTime": "2024-04-27T12:00:01Z",
        },
        "subscription": "projects/p/subscriptions/s",
    }


def invalid_push(n: int) -> dict[str, Any]:
    """A push whose payload is no record: stored as a rejection."""
    return {
        "message": {
            "data": base64.b64encode(b"not json").decode(),
            "messageId": f"bad-{n}",
            "publishTime": "2024-04-27T12:00:01Z",
        }
    }


@pytest.fixture
def store() -> FaultyStore:
    return FaultyStore(DuckDBStore(":memory:"))


@pytest.fixture
def app(store: FaultyStore, monkeypatch: pytest.MonkeyPatch) -> Recordline:
    monkeypatch.setattr(follow, "HEARTBEAT_SECONDS", 0.2)
    return create_app(
        long_polling(settings(RECORDLINE_STREAM_SECONDS="1.5"), 0.5),
        store=store,
    )


@pytest.fixture
async def client(app: Recordline) -> AsyncIterator[httpx.AsyncClient]:
    async with served(app) as client:
        yield client


async def pushed(client: httpx.AsyncClient, *numbers: int) -> None:
    for n in numbers:
        assert (await client.post("/pubsub/push", json=push_body(n))).status_code == 204


def ids(body: list[dict[str, Any]]) -> list[str]:
    return [row["message_id"] for row in body]


async def sse(client: httpx.AsyncClient, **params: str) -> list[tuple[str, str]]:
    """Every event of one SSE stream until the server ends it: (event, data)."""
    events: list[tuple[str, str]] = []
    async with client.stream("GET", STREAM, params={"live": "sse", **params}) as answer:
        assert answer.status_code == 200, await answer.aread()
        assert answer.headers["content-type"].startswith("text/event-stream")
        kind = data = ""
        async for line in answer.aiter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = line.removeprefix("data: ")
            elif not line and kind:
                events.append((kind, data))
                kind = data = ""
    return events


# -- offsets -------------------------------------------------------------------

keys = st.tuples(
    st.integers(0, MAX_MICROS),
    st.one_of(st.just(""), st.text(min_size=1, max_size=40)),
)


@given(keys, keys)
def test_offsets_sort_as_the_positions_they_name(a: tuple[int, str], b: tuple[int, str]) -> None:
    offsets = Offsets("s")
    one, two = offsets.encode("records", *a), offsets.encode("records", *b)
    assert (one < two) == (a < b)
    assert (one == two) == (a == b)
    for offset in (one, two):
        assert set(offset) <= set(ALPHABET + SEPARATOR)
        assert offset not in {"-1", "now"}
    decoded = offsets.decode("records", one)
    assert (decoded.after_time, decoded.after_message_id) == a


def test_an_offset_at_a_time_alone_or_a_pub_sub_message_id_is_short() -> None:
    offsets = Offsets("s")
    assert len(offsets.encode("records", 2**57)) == 27
    assert len(offsets.encode("records", 2**57, "12345678901234567")) < 60


@pytest.mark.slow
async def test_a_malformed_offset_is_a_400_in_every_mode(client: httpx.AsyncClient) -> None:
    for offset in ["a,b", "x/y", "", "a" * 300, "=", "now?", "..........-", "-1-1"]:
        for live in (None, "long-poll", "sse"):
            params = {"offset": offset} | ({"live": live} if live else {})
            answer = await client.get(STREAM, params=params)
            assert answer.status_code == 400, (offset, live, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.json()["parameter"] == "offset"


@pytest.mark.slow
async def test_a_forged_or_altered_offset_or_another_streams_is_a_400(
    client: httpx.AsyncClient,
) -> None:
    await pushed(client, 1)
    real = (await client.get(STREAM)).headers["stream-next-offset"]
    position, _, mac = real.partition(SEPARATOR)
    forged = Offsets("another secret").encode("records", 0)
    altered = position[:-1] + ("A" if position[-1] != "A" else "B") + SEPARATOR + mac
    for offset in (forged, altered):
        answer = await client.get(STREAM, params={"offset": offset})
        assert answer.status_code == 400, offset
    answer = await client.get("/v1/streams/rejections", params={"offset": real})
    assert answer.status_code == 400


@pytest.mark.slow
async def test_an_offset_older_than_the_retention_is_a_410_in_every_mode() -> None:
    app = create_app(
        settings(RECORDLINE_RETENTION_DAYS="1"), store=FaultyStore(DuckDBStore(":memory:"))
    )
    # Signed as the service signs (its secret), naming a time before the retention.
    old = Offsets(DEFAULT_PAGE_TOKEN_SECRET).encode("records", 1_000_000)
    async with served(app) as client:
        for live in (None, "long-poll", "sse"):
            params = {"offset": old} | ({"live": live} if live else {})
            answer = await client.get(STREAM, params=params)
            assert answer.status_code == 410, (live, answer.text)
            assert answer.json()["parameter"] == "offset"


# -- catch-up ----------------------------------------------------------------------


@pytest.mark.slow
async def test_a_chunk_is_the_rows_of_v1_records_in_the_same_order(
    client: httpx.AsyncClient,
) -> None:
    await pushed(client, 3, 1, 2)
    assert (await client.post("/pubsub/push", json=invalid_push(1))).status_code == 204
    answer = await client.get(STREAM)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == (await client.get("/v1/records")).json()["records"]
    assert ids(answer.json()) == ["m-3", "m-1", "m-2"]
    assert answer.headers["stream-up-to-date"] == "true"
    assert answer.headers["cache-control"] == "max-age=60, private, stale-while-revalidate=300"
    same = await client.get(STREAM, params={"offset": "-1"})
    assert same.json() == answer.json()
    rejections = await client.get("/v1/streams/rejections")
    assert rejections.json() == (await client.get("/v1/rejections")).json()["rejections"]
    assert ids(rejections.json()) == ["bad-1"]
    # A rejection may yet be marked stored: revalidated, never kept as it is.
    assert "no-cache" in rejections.headers["cache-control"]


@pytest.mark.slow
async def test_a_chunk_short_of_the_tail_is_immutable_unless_read_from_the_oldest_row(
    client: httpx.AsyncClient,
) -> None:
    # Rows of 3 MiB: two to a chunk (8 MiB at most), so five make three chunks.
    for n in range(5):
        answer = await client.post("/pubsub/push", json=push_body(n, data="x" * 3_000_000))
        assert answer.status_code == 204
    first = await client.get(STREAM, params={"offset": "-1"})
    assert "stream-up-to-date" not in first.headers
    # Where -1 starts moves with the retention: kept a minute, as a chunk at the tail is.
    assert first.headers["cache-control"] == "max-age=60, private, stale-while-revalidate=300"
    offset = first.headers["stream-next-offset"]
    second = await client.get(STREAM, params={"offset": offset})
    assert "stream-up-to-date" not in second.headers
    assert second.headers["cache-control"] == "max-age=31536000, private, immutable"
    last = await client.get(STREAM, params={"offset": second.headers["stream-next-offset"]})
    assert last.headers["stream-up-to-date"] == "true"
    assert last.headers["cache-control"] == "max-age=60, private, stale-while-revalidate=300"
    assert ids(first.json()) + ids(second.json()) + ids(last.json()) == [f"m-{n}" for n in range(5)]


@pytest.mark.slow
async def test_a_reader_at_the_tail_gets_an_empty_array_and_the_offset_it_sent(
    client: httpx.AsyncClient,
) -> None:
    await pushed(client, 1)
    tail = (await client.get(STREAM)).headers["stream-next-offset"]
    answer = await client.get(STREAM, params={"offset": tail})
    assert answer.json() == []
    assert answer.headers["stream-next-offset"] == tail
    assert answer.headers["stream-up-to-date"] == "true"
    await pushed(client, 2)
    after = await client.get(STREAM, params={"offset": tail})
    assert ids(after.json()) == ["m-2"]
    assert after.headers["stream-next-offset"] > tail


async def test_the_tail_moves_when_a_row_becomes_readable_never_with_the_clock(
    client: httpx.AsyncClient,
) -> None:
    await pushed(client, 1)
    first = await client.head(STREAM)
    assert first.status_code == 200
    assert first.headers["cache-control"] == "no-store"
    assert first.content == b""
    await asyncio.sleep(0.05)  # time passes, no row comes: the tail stays (time is the point)
    assert (await client.head(STREAM)).headers["stream-next-offset"] == first.headers[
        "stream-next-offset"
    ]
    now = await client.get(STREAM, params={"offset": "now"})
    assert now.json() == []
    assert now.headers["stream-up-to-date"] == "true"
    assert now.headers["cache-control"] == "no-store"
    assert "etag" not in now.headers
    assert now.headers["stream-next-offset"] == first.headers["stream-next-offset"]
    await pushed(client, 2)
    moved = (await client.head(STREAM)).headers["stream-next-offset"]
    assert moved > first.headers["stream-next-offset"]
    after_now = await client.get(STREAM, params={"offset": now.headers["stream-next-offset"]})
    assert ids(after_now.json()) == ["m-2"]
    assert after_now.headers["stream-next-offset"] == moved


async def test_an_unchanged_chunk_is_a_304(client: httpx.AsyncClient) -> None:
    await pushed(client, 1, 2)
    answer = await client.get(STREAM)
    etag = answer.headers["etag"]
    again = await client.get(STREAM, headers={"if-none-match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["stream-next-offset"] == answer.headers["stream-next-offset"]
    await pushed(client, 3)  # the chunk from -1 now ends further on: a new tag
    grown = await client.get(STREAM, headers={"if-none-match": etag})
    assert grown.status_code == 200
    assert ids(grown.json()) == ["m-1", "m-2", "m-3"]


async def test_streams_are_read_only_and_only_two(client: httpx.AsyncClient) -> None:
    for method in ("PUT", "POST", "DELETE"):
        answer = await client.request(method, STREAM, content=b"[1]")
        assert answer.status_code == 405
        assert answer.headers["allow"] == "GET, HEAD"
    unknown = await client.get("/v1/streams/orders")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    assert (await client.head("/v1/streams/orders")).status_code == 404


@pytest.mark.slow
async def test_a_store_that_does_not_answer_is_a_503_with_retry_after(
    client: httpx.AsyncClient, store: FaultyStore
) -> None:
    store.failing_reads = True
    for live in (None, "long-poll"):
        answer = await client.get(STREAM, params={"live": live} if live else {})
        assert answer.status_code == 503
        assert int(answer.headers["retry-after"]) > 0
    assert (await client.head(STREAM)).status_code == 503


# -- chunks of a far-behind reader ----------------------------------------------------


@pytest.mark.slow
async def test_chunks_end_on_a_whole_microsecond_and_offsets_only_grow() -> None:
    """Chunks of a few rows, through the service layer: every row once, in order, each
    offset greater than the last, and no chunk ending inside a microsecond's rows
    unless that microsecond alone is more than a chunk."""
    store = DuckDBStore(":memory:")
    await store.start()
    try:
        # Rows of 8 microseconds: 1, 3, 2 and 7 rows at the same time among them.
        times = [10, 20, 20, 20, 30, 30, 40, *([50] * 7), 60]
        rows = [
            Record(message_id=f"m-{i:02}", publish_time=t, ingest_time=t, id=str(i))
            for i, t in enumerate(times)
        ]
        await store.append(rows)
        reader = Reader(store, pending_horizon=lambda: 2**62, tokens=PageTokens("s"))
        streams = Streams(reader, Offsets("s"), page_rows=2, chunk_rows=4)
        position: PageToken | None = streams.start(RECORDS, None)
        assert position is not None
        seen: list[str] = []
        offsets: list[str] = []
        sizes: list[int] = []
        while True:
            chunk = await streams.chunk(RECORDS, position)
            got = json.loads(chunk.body)
            seen += ids(got)
            sizes.append(len(got))
            offsets.append(chunk.next_offset)
            position = chunk.after
            if chunk.up_to_date:
                break
        assert seen == [r.message_id for r in rows]
        assert offsets == sorted(set(offsets))
        # Each chunk is cut after its last microsecond known whole (the next row's time
        # differs); the seven rows of 50 are cut inside only because four fill a chunk.
        assert sizes == [1, 3, 3, 4, 3, 1]
        assert len(offsets[3]) > len(offsets[2])  # the one that names a row
    finally:
        await store.close()


# -- cursors -----------------------------------------------------------------------


def test_a_cursor_is_the_interval_or_past_the_one_sent_back() -> None:
    now = CURSOR_EPOCH_SECONDS + 1000 * CURSOR_INTERVAL_SECONDS + 5
    assert cursor_after(None, now=now) == "1000"
    assert cursor_after("999", now=now) == "1000"  # behind: the current interval
    for sent in ("1000", "1500"):  # at or ahead: strictly later, by at most an hour
        later = int(cursor_after(sent, now=now))
        assert int(sent) < later <= int(sent) + 3600 // CURSOR_INTERVAL_SECONDS
    # A long-poll's: the same for every answer to one offset and cursor, whenever asked.
    at = "some-offset"
    named = {cursor_after("1000", now=now + n, at=at) for n in range(3)}
    assert len(named) == 1
    assert 1000 < int(named.pop()) <= 1000 + 3600 // CURSOR_INTERVAL_SECONDS


async def test_a_malformed_cursor_is_a_400(client: httpx.AsyncClient) -> None:
    for cursor in ["x", "-1", "1.5", "9" * 40, ""]:
        for live in ("long-poll", "sse"):
            answer = await client.get(STREAM, params={"live": live, "cursor": cursor})
            assert answer.status_code == 400, (cursor, live)
            assert answer.json()["parameter"] == "cursor"


# -- long-poll ---------------------------------------------------------------------


@pytest.mark.slow
async def test_a_long_poll_answers_as_soon_as_a_row_is_stored(
    app: Recordline, client: httpx.AsyncClient
) -> None:
    await pushed(client, 1)
    tail = (await client.get(STREAM)).headers["stream-next-offset"]
    waiting = asyncio.create_task(
        client.get(STREAM, params={"offset": tail, "live": "long-poll", "cursor": "1"})
    )
    paging = await app.litestar.dependencies["paging"]()
    await until(lambda: paging.followers.open == 1, what="the long-poll to wait")
    await pushed(client, 2)
    answer = await waiting
    assert answer.status_code == 200
    assert ids(answer.json()) == ["m-2"]
    assert answer.headers["stream-up-to-date"] == "true"
    assert int(answer.headers["stream-cursor"]) > 1
    assert answer.headers["stream-next-offset"] > tail


@pytest.mark.slow
async def test_a_long_poll_that_times_out_is_a_204_at_the_same_offset(
    client: httpx.AsyncClient,
) -> None:
    await pushed(client, 1)
    tail = (await client.get(STREAM)).headers["stream-next-offset"]
    started = time.monotonic()
    answer = await client.get(STREAM, params={"offset": tail, "live": "long-poll"})
    assert time.monotonic() - started >= 0.5
    assert answer.status_code == 204
    assert answer.headers["stream-next-offset"] == tail
    assert answer.headers["stream-up-to-date"] == "true"
    assert answer.headers["stream-cursor"].isdigit()
    # offset=now waits at the tail at once, with no first empty answer.
    now = await client.get(STREAM, params={"offset": "now", "live": "long-poll"})
    assert now.status_code == 204
    assert now.headers["stream-next-offset"] == tail


@pytest.mark.slow
async def test_a_behind_long_poll_answers_at_once_and_live_reads_count_as_followers() -> None:
    app = create_app(
        long_polling(settings(RECORDLINE_MAX_FOLLOWERS="1"), 5),
        store=DuckDBStore(":memory:"),
    )
    async with served(app) as client:
        await pushed(client, 1)
        answer = await client.get(STREAM, params={"live": "long-poll"})
        assert ids(answer.json()) == ["m-1"]
        tail = answer.headers["stream-next-offset"]
        waiting = asyncio.create_task(
            client.get(STREAM, params={"offset": tail, "live": "long-poll"})
        )
        paging = await app.litestar.dependencies["paging"]()
        await until(lambda: paging.followers.open == 1, what="the long-poll to wait")
        for live in ("long-poll", "sse"):
            full = await client.get(STREAM, params={"offset": tail, "live": live})
            assert full.status_code == 503
            assert "retry-after" in full.headers
        await pushed(client, 2)
        assert ids((await waiting).json()) == ["m-2"]


# -- SSE ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_sse_sends_data_then_control_and_ends_within_its_time(
    client: httpx.AsyncClient,
) -> None:
    await pushed(client, 1, 2)

    async def push_later() -> None:
        await asyncio.sleep(0.3)
        await pushed(client, 3)

    later = asyncio.create_task(push_later())
    started = time.monotonic()
    events = await sse(client, offset="-1", cursor="5")
    await later
    assert time.monotonic() - started < 5  # ended by the server (1.5 s here)
    kinds = [kind for kind, _ in events]
    assert kinds == ["data", "control", "data", "control"]
    assert ids(json.loads(events[0][1])) == ["m-1", "m-2"]
    assert ids(json.loads(events[2][1])) == ["m-3"]
    first, second = json.loads(events[1][1]), json.loads(events[3][1])
    assert first["upToDate"] is True
    assert int(first["streamCursor"]) > 5
    assert first["streamNextOffset"] < second["streamNextOffset"]
    assert int(second["streamCursor"]) > int(first["streamCursor"])
    # Resumed from the last offset: nothing again until a row comes.
    resumed = await sse(client, offset=second["streamNextOffset"])
    assert [kind for kind, _ in resumed] == ["control"]
    assert json.loads(resumed[0][1])["streamNextOffset"] == second["streamNextOffset"]


@pytest.mark.slow
async def test_sse_from_now_says_where_the_tail_is_first(client: httpx.AsyncClient) -> None:
    await pushed(client, 1)
    tail = (await client.head(STREAM)).headers["stream-next-offset"]
    events = await sse(client, offset="now")
    assert events[0][0] == "control"
    control = json.loads(events[0][1])
    assert control["streamNextOffset"] == tail
    assert control["upToDate"] is True
    assert all(kind == "control" for kind, _ in events)


@pytest.mark.slow
async def test_an_sse_stream_whose_reads_fail_ends_and_resumes_from_its_last_offset(
    client: httpx.AsyncClient, store: FaultyStore
) -> None:
    await pushed(client, 1)
    seen: list[tuple[str, str]] = []
    async with client.stream("GET", STREAM, params={"live": "sse"}) as answer:
        async for line in answer.aiter_lines():
            if line.startswith("data: "):
                seen.append(("data", line))
                if len(seen) == 2:  # data and control sent: the store stops answering
                    store.failing_reads = True
    store.failing_reads = False
    control = json.loads(seen[1][1].removeprefix("data: "))
    await pushed(client, 2)
    resumed = await sse(client, offset=control["streamNextOffset"])
    assert ids(json.loads(resumed[0][1])) == ["m-2"]


def test_offsets_refuse_ids_longer_than_any_stored() -> None:
    offsets = Offsets("s")
    too_long = offsets.encode("records", 1, "x" * (MAX_ID_LENGTH + 1))
    with pytest.raises(Exception, match="out of range"):
        offsets.decode("records", too_long)


def test_an_offset_names_only_url_safe_characters() -> None:
    offsets = Offsets("s")
    for key in [(0, ""), (2**58, "é/?&=,"), (123, "12345")]:
        assert re.fullmatch(r"[A-Za-z0-9._-]+", offsets.encode("records", *key))


@given(
    st.builds(
        Record,
        message_id=st.text(max_size=20),
        publish_time=st.integers(MIN_MICROS, MAX_MICROS),
        ingest_time=st.integers(0, MAX_MICROS),
        id=st.text(max_size=20),
        timestamp=st.none() | st.integers(MIN_MICROS, MAX_MICROS),
        data=st.sampled_from(['"x"', "1", '{"a": [1, 2.5e3]}', "null"]),
        attributes=st.sampled_from(["{}", '{"k": "v"}']),
        subscription=st.none() | st.text(max_size=10),
        delivery_attempt=st.none() | st.integers(1, 100),
        trace_id=st.none() | st.text(max_size=32),
        schema=st.none() | st.text(max_size=10),
    )
)
def test_a_record_is_viewed_alike_the_quick_way_and_the_general_one(record: Record) -> None:
    assert record_view(record) == view(RecordView, record)


@pytest.mark.slow
async def test_a_restarted_store_holds_its_tail_again_at_once(tmp_path: Any) -> None:
    """After a restart, the records of the tail's window are in memory from the start (a
    follower near the tail reads no query), and the tail answers as DuckDB does."""
    path = str(tmp_path / "records.duckdb")
    now = time.time_ns() // 1000
    old = Record(message_id="old", publish_time=now, ingest_time=now - 3_600_000_000, id="o")
    recent = [
        Record(message_id=f"m-{i}", publish_time=now, ingest_time=now - 1000 + i, id=str(i))
        for i in range(5)
    ]
    first = DuckDBStore(path)
    await first.start()
    await first.append([old, *recent])
    await first.close()
    second = DuckDBStore(path)
    await second.start()
    try:
        assert len(second.live.tail) == 5  # the window's, not the hour-old one
        query = PageQuery(after_time=now - 2000, after_message_id="", before_time=now, limit=10)
        assert second.live.covers(query)
        from_memory = await second.page(Record, query)
        assert [r.message_id for r in from_memory.rows] == [r.message_id for r in recent]
        assert from_memory.rows == recent
    finally:
        await second.close()


async def test_a_chunk_holds_about_its_bytes_at_most_and_one_row_at_least() -> None:
    """An SSE stream's events are bounded in bytes (a slow reader holds one), and any
    chunk holds a row however large: the stream always moves on."""
    store = DuckDBStore(":memory:")
    await store.start()
    try:
        big = '"' + "x" * 1000 + '"'
        rows = [
            Record(message_id=f"m-{i:02}", publish_time=i, ingest_time=10 + i, id=str(i), data=big)
            for i in range(12)
        ]
        await store.append(rows)
        reader = Reader(store, pending_horizon=lambda: 2**62, tokens=PageTokens("s"))
        streams = Streams(reader, Offsets("s"))
        position: PageToken | None = streams.start(RECORDS, None)
        assert position is not None
        sizes, seen = [], []
        while True:
            chunk = await streams.chunk(RECORDS, position, max_bytes=4_000)
            sizes.append(chunk.rows)
            seen += ids(json.loads(chunk.body))
            position = chunk.after
            if chunk.up_to_date:
                break
        assert seen == [r.message_id for r in rows]
        assert max(sizes) == 3  # ~1,330 bytes a row: three fit in about 4,000
        one = await streams.chunk(RECORDS, streams.start(RECORDS, None), max_bytes=10)
        assert one.rows == 1
    finally:
        await store.close()


async def test_chunks_of_rows_of_every_size_hold_their_bytes_and_each_row_once() -> None:
    """Rows about 64 KiB (a byte either side, non-ASCII among them), small ones, and runs
    of rows in one microsecond, read in chunks of a few budgets: every row comes once, in
    order, and a chunk of more than one row holds no more than its bytes."""
    store = DuckDBStore(":memory:")
    await store.start()
    try:
        rows = []
        for i in range(60):
            size = 64 * 1024 + i % 3 - 1 if i % 4 == 1 else 7 * i
            text = "é" * (size // 2) if i % 8 == 1 else "x" * size
            rows.append(
                Record(
                    message_id=f"m-{i:02}",
                    publish_time=i,
                    ingest_time=10 + i // 6,  # six rows a microsecond
                    id=str(i),
                    data=json.dumps(text, ensure_ascii=False),
                    attributes=json.dumps({"ü": "ß" * i}, ensure_ascii=False),
                )
            )
        await store.append(rows)
        reader = Reader(store, pending_horizon=lambda: 2**62, tokens=PageTokens("s"))
        streams = Streams(reader, Offsets("s"), page_rows=8, chunk_rows=20)
        by_id = {r.message_id: row_bytes(r) for r in rows}
        for budget in (1, 70_000, 150_000, 400_000, 10**8):
            position: PageToken | None = streams.start(RECORDS, None)
            assert position is not None
            seen: list[str] = []
            while True:
                chunk = await streams.chunk(RECORDS, position, max_bytes=budget)
                got = ids(json.loads(chunk.body))
                assert len(got) <= 1 or sum(by_id[i] for i in got) <= budget, (budget, got)
                seen += got
                position = chunk.after
                if chunk.up_to_date:
                    break
            assert seen == [r.message_id for r in rows], budget
    finally:
        await store.close()


@pytest.mark.slow
async def test_a_follower_that_takes_nothing_is_cut_off_not_buffered(app: Recordline) -> None:
    """A client that stops reading its SSE stream is paused (one event held, the next
    not made) and, after the instance's limit, cut off: it counts as a follower no more."""
    paging = await app.litestar.dependencies["paging"]()
    paging.followers.slow_seconds = 1.0  # this instance's limit, short for the test
    async with served(app) as client:
        _, writer = await asyncio.open_connection(client.base_url.host, client.base_url.port)
        # Reads nothing once its request is sent: the server's sends fill the buffers.
        writer.transport.pause_reading()
        writer.write(f"GET {STREAM}?live=sse HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        await until(lambda: paging.followers.open == 1, what="the stream to open")
        big = "x" * 20_000
        for n in range(600):  # ~12 MB: more than every buffer on the way holds
            answer = await client.post("/pubsub/push", json=push_body(n, data=big))
            assert answer.status_code == 204
            if not paging.followers.open:
                break
        await until(lambda: paging.followers.open == 0, timeout=30, what="the cut-off")
        writer.close()


async def test_a_head_of_an_event_stream_is_its_head_alone_and_follows_nothing(
    app: Recordline,
) -> None:
    """HEAD with `Accept: text/event-stream` is answered the GET's head and ends there:
    no follower made, no seat held, the connection free for its next request."""
    paging = await app.litestar.dependencies["paging"]()
    async with served(app, bounded=True) as client:
        host = client.base_url.host
        reader, writer = await asyncio.open_connection(host, client.base_url.port)
        head = (
            f"HEAD /v1/records?since=2024-04-27T00:00:00Z HTTP/1.1\r\nHost: {host}\r\n"
            "Accept: text/event-stream\r\n\r\n"
        )
        writer.write(head.encode())
        said = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 1.0)
        # Well before the stream's own end (RECORDLINE_STREAM_SECONDS, 1.5 s here).
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        then = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 1.0)
        followers = paging.followers.open
        writer.close()
    lines = said.decode("latin-1").lower().split("\r\n")
    assert lines[0] == "http/1.1 200 ok"
    assert "content-type: text/event-stream; charset=utf-8" in lines
    assert "vary: accept" in lines
    assert not any(line.startswith("content-length") for line in lines)
    assert then.startswith(b"HTTP/1.1 200")
    assert followers == 0
