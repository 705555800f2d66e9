"""A record's view as DuckDB makes it (`PageQuery.shown`, for a stream's chunks) is the
view the API makes of the row, byte for byte, whatever the row holds; and a page so read
is cut where a page read the usual way is."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import duckdb
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.query.page_token import PageToken
from app.query.service import _RECORD_VIEW_FIELDS, RECORDS, RecordView, record_views, view
from app.query.streams import Chunk, Streams
from app.records import Record
from app.store import most_bytes, row_bytes
from app.store.duckdb.inserts import _arrow
from app.store.duckdb.sql import (
    BOUNDED_PAGE_SQL,
    INLINE_BYTES,
    ddl,
    payload_size,
    read_shown,
    read_within,
)

# The times a view can show: 0001-01-01 to 9999-12-31, in microseconds.
FIRST, LAST = -62_135_596_800_000_000, 253_402_300_799_999_999
times = st.one_of(
    st.integers(FIRST, LAST),
    st.integers(FIRST // 1_000_000, LAST // 1_000_000).map(lambda s: s * 1_000_000),
)
texts = st.text(max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def json_texts(draw: st.DrawFn, values: st.SearchStrategy[Any] = json_values) -> str:
    """JSON as a publisher may have written it: any spacing, escaped or not."""
    return json.dumps(
        draw(values), ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 1]))
    )


@st.composite
def records(draw: st.DrawFn) -> list[Record]:
    count = draw(st.integers(1, 12))
    ids = draw(st.lists(texts, min_size=count, max_size=count, unique=True))
    return [
        Record(
            message_id=message_id,
            publish_time=draw(times),
            ingest_time=draw(times),
            id=draw(texts),
            timestamp=draw(st.none() | times),
            data=draw(json_texts()),
            attributes=draw(json_texts(st.dictionaries(texts, texts, max_size=3))),
            subscription=draw(st.none() | texts),
            delivery_attempt=draw(st.none() | st.integers(-(2**63), 2**63 - 1)),
            trace_id=draw(st.none() | texts),
            schema=draw(st.none() | texts),
        )
        for message_id in ids
    ]


def escaped_otherwise(rows: list[Record]) -> bool:
    """Whether a text column of `rows` holds a character DuckDB's JSON escapes in capitals
    (msgspec: `\\u001f`, DuckDB: `\\u001F`)."""
    texts = [t for r in rows for t in (r.message_id, r.id, r.subscription, r.trace_id, r.schema)]
    return any(re.search("[\x0b\x0e\x0f\x1a-\x1f]", t or "") for t in texts)


@pytest.fixture(scope="module")
def database() -> Iterator[duckdb.DuckDBPyConnection]:
    """One database for every example (a new one is a tenth of a second)."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'America/Los_Angeles'")  # a time is shown in UTC whatever
    con.execute(ddl("records", Record))
    yield con
    con.close()


def stored(con: duckdb.DuckDBPyConnection, rows: list[Record]) -> duckdb.DuckDBPyConnection:
    """A table of `rows` alone."""
    con.execute("DELETE FROM records")
    con.from_arrow(_arrow(rows, Record)).insert_into("records")
    return con


def everything(limit: int = 1000, max_bytes: int = 2**40) -> dict[str, Any]:
    return {
        "after_time": FIRST - 1,
        "after_message_id": "",
        "before_time": LAST + 1,
        "limit": limit,
        "max_bytes": max_bytes,
    }


def usual(con: duckdb.DuckDBPyConnection, params: dict[str, Any]) -> tuple[list[Record], bool]:
    rest = {k: v for k, v in params.items() if k != "max_bytes"}
    return read_within(
        con, BOUNDED_PAGE_SQL[Record], rest, Record, params["max_bytes"], payload_size(Record)
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records())
def test_a_view_made_in_duckdb_is_the_api_s_view_byte_for_byte(
    database: duckdb.DuckDBPyConnection, rows: list[Record]
) -> None:
    con = stored(database, rows)
    found = read_shown(con, _RECORD_VIEW_FIELDS, everything())
    # Such a page is read the usual way, and only such a page.
    assert (found is None) == escaped_otherwise(rows)
    if found is None:
        return
    shown, reached = found
    read, _ = usual(con, everything())
    assert msgspec.json.encode([s.view for s in shown]) == msgspec.json.encode(record_views(read))
    # The key and the weight of each, as the usual read has them.
    assert [(s.ingest_time, s.message_id, s.size, s.most) for s in shown] == [
        (r.ingest_time, r.message_id, row_bytes(r), most_bytes([r])) for r in read
    ]
    assert not reached


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records(), st.integers(1, 4000), st.integers(1, 12))
def test_a_page_made_in_duckdb_ends_where_the_usual_page_ends(
    database: duckdb.DuckDBPyConnection, rows: list[Record], max_bytes: int, limit: int
) -> None:
    con = stored(database, rows)
    params = everything(limit, max_bytes)
    found = read_shown(con, _RECORD_VIEW_FIELDS, params)
    read, read_reached = usual(con, params)
    assert (found is None) == escaped_otherwise(read)
    if found is None:
        return
    shown, reached = found
    assert [s.message_id for s in shown] == [r.message_id for r in read]
    assert reached == read_reached


@pytest.mark.parametrize("column", ["data", "attributes"])
def test_a_row_too_large_to_make_into_text_in_duckdb_is_read_the_usual_way(
    database: duckdb.DuckDBPyConnection, column: str
) -> None:
    large = json.dumps({"k": "x" * INLINE_BYTES})
    rows = [
        Record(message_id="m-1", publish_time=1, ingest_time=1, id="r-1"),
        Record(message_id="m-2", publish_time=2, ingest_time=2, id="r-2", **{column: large}),
    ]
    con = stored(database, rows)
    assert read_shown(con, _RECORD_VIEW_FIELDS, everything()) is None
    # Within the bytes of the first alone, the page is that row, made in DuckDB.
    found = read_shown(con, _RECORD_VIEW_FIELDS, everything(max_bytes=1))
    assert found is not None
    assert [s.message_id for s in found[0]] == ["m-1"]


async def test_a_stream_far_behind_reads_the_api_s_views_whatever_path_each_row_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the service layer, rows older than the tail in memory: a stream's chunks
    hold each record's view as the API makes it, in order, once, whether its read's
    views were made in DuckDB or, for a page with a row too large or a control
    character, the usual way."""
    from app.query.offsets import Offsets
    from app.query.page_token import PageTokens
    from app.query.service import Reader, RecordView, view
    from app.query.streams import Streams
    from app.store.duckdb.store import DuckDBStore

    rows = [
        Record(
            message_id=f"m-{i:03}",
            publish_time=1_000_000 * i,
            ingest_time=1_000 + i // 3,  # three rows a microsecond, in 1970
            id=f"r-{i}" + ("\x1f" if i == 17 else ""),
            timestamp=None if i % 2 else -123_456_789 * i,
            data=json.dumps({"n": i, "big": "x" * (INLINE_BYTES if i == 30 else i)}),
            attributes=json.dumps({"k": str(i)}),
            subscription="projects/p/subscriptions/s",
            delivery_attempt=i % 5 or None,
        )
        for i in range(60)
    ]
    from app.store.duckdb import reads

    taken: list[bool] = []  # each read's: made in DuckDB, or not

    def read_shown_seen(*args: Any) -> Any:
        found = read_shown(*args)
        taken.append(found is not None)
        return found

    monkeypatch.setattr(reads, "read_shown", read_shown_seen)
    store = DuckDBStore(":memory:")
    await store.start()
    try:
        await store.append(rows)
        reader = Reader(store, pending_horizon=lambda: 2**62, tokens=PageTokens("s"))
        streams = Streams(reader, Offsets("s"), page_rows=7, chunk_rows=9, chunk_bytes=4096)
        bodies = [chunk.body for chunk in await chunks_to_the_tail(streams)]
        shown = [element for body in bodies for element in msgspec.json.decode(body)]
        expected = [msgspec.json.decode(msgspec.json.encode(view(RecordView, r))) for r in rows]
        assert shown == expected
        # And byte for byte, each chunk as the API's views of its rows encode.
        assert_views_of(rows, bodies)
        # Both ways were taken.
        assert True in taken
        assert False in taken
    finally:
        await store.close()


async def test_a_stream_far_behind_is_cut_into_the_same_chunks_whichever_way_it_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A chunk's rows and next offset are those of the same rows read the usual way (as
    the tail in memory has them): a read's views made in DuckDB count what the read
    holds as the usual way counts it, so a chunk takes no other reads. Here a first read
    of one row that counts as exactly the chunk's bytes (`most_bytes`) ends the chunk
    either way, its offset naming that row."""
    from app.query.offsets import Offsets
    from app.query.page_token import PageTokens
    from app.query.service import RECORDS, Reader
    from app.query.streams import Streams
    from app.store.duckdb import reads
    from app.store.duckdb.store import DuckDBStore

    small = '"' + "x" * 41 + '"'  # with "{}": 4 * 45 + ROW_BYTES = 500 at most
    rows = [
        Record(message_id="m-1", publish_time=1, ingest_time=10, id="r-1", data=small),
        Record(
            message_id="m-2", publish_time=2, ingest_time=20, id="r-2", data='"' + "y" * 400 + '"'
        ),
    ]
    store = DuckDBStore(":memory:")
    await store.start()
    try:
        await store.append(rows)

        async def chunks() -> list[tuple[bytes, str]]:
            reader = Reader(store, pending_horizon=lambda: 2**62, tokens=PageTokens("s"))
            streams = Streams(reader, Offsets("s"))
            position: PageToken | None = streams.start(RECORDS, None)
            assert position is not None
            found = []
            while True:
                chunk = await streams.chunk(RECORDS, position, max_bytes=500)
                found.append((chunk.body, chunk.next_offset))
                position = chunk.after
                if chunk.up_to_date:
                    return found

        made_in_duckdb = await chunks()
        monkeypatch.setattr(reads, "read_shown", lambda *args: None)
        assert made_in_duckdb == await chunks()
    finally:
        await store.close()


async def chunks_to_the_tail(streams: Streams) -> list[Chunk]:
    """The records stream's chunks, read from its first record until one is up to date."""
    position: PageToken | None = streams.start(RECORDS, None)
    assert position is not None
    chunks: list[Chunk] = []
    while True:
        chunk = await streams.chunk(RECORDS, position)
        chunks.append(chunk)
        position = chunk.after
        if chunk.up_to_date:
            return chunks


def assert_views_of(rows: list[Record], bodies: list[bytes]) -> None:
    """Each of `bodies`, in turn, is the API's views of the next of `rows` (at least one)
    encoded byte for byte, and together they hold every row."""
    at = 0
    for body in bodies:
        count = len(msgspec.json.decode(body))
        assert count
        assert body == msgspec.json.encode([view(RecordView, r) for r in rows[at : at + count]])
        at += count
    assert at == len(rows)
