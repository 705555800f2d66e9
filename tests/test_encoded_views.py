"""Records' views encoded once and shared (`app.query.service.EncodedViews`): the same
bytes as the API's views whether made now or before, each system's its own, within the
process's bound, and a stream's chunks the same with them or without."""

from __future__ import annotations

import gc
import json
import sys
import time
import tracemalloc

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.query.offsets import Offsets
from app.query.page_token import PageTokens
from app.query.service import (
    ENCODED_ENTRY_BYTES,
    EncodedViews,
    Reader,
    counted,
    record_views,
)
from app.query.streams import Streams
from app.records import Record
from app.store import most_bytes, row_bytes
from app.store.duckdb.store import DuckDBStore
from tests.test_shown_rows import assert_views_of, chunks_to_the_tail, records


def encoded(rows: list[Record]) -> list[bytes]:
    return [msgspec.json.encode(v) for v in record_views(rows)]


def shown(views: EncodedViews, owner: str, rows: list[Record]) -> list[bytes]:
    """The views of `rows` as `views` gives them, checked to count as the records do."""
    got = views.of(owner, rows)
    assert [(s.ingest_time, s.message_id) for s in got] == [
        (r.ingest_time, r.message_id) for r in rows
    ]
    assert [s.size for s in got] == [row_bytes(r) for r in rows]
    assert [s.most for s in got] == [most_bytes([r]) for r in rows]
    assert most_bytes(got) == most_bytes(rows)
    return [bytes(s.view) for s in got]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records(), st.data())
def test_a_view_encoded_before_is_the_api_s_view_byte_for_byte(
    rows: list[Record], data: st.DataObject
) -> None:
    views = EncodedViews()
    # Some rows read first, then all of them: made now and made before alike.
    first = data.draw(st.lists(st.sampled_from(rows), unique_by=id)) if rows else []
    assert shown(views, "a", first) == encoded(first)
    assert shown(views, "a", rows) == encoded(rows)
    assert shown(views, "a", rows) == encoded(rows)
    # Another store's records with the same keys are its own.
    other = [msgspec.structs.replace(r, id=r.id + "!", data='{"other":1}') for r in rows]
    assert shown(views, "b", other) == encoded(other)
    assert shown(views, "a", rows) == encoded(rows)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records(), min_size=1, max_size=8), st.integers(0, 4000))
def test_what_is_held_stays_within_the_bound_and_is_counted_exactly(
    pages: list[list[Record]], max_bytes: int
) -> None:
    views = EncodedViews(max_bytes)
    # A store holds one row under a key (ingest time, message id): a later page's record
    # of a key an earlier page read is that row again, never another one.
    stored: dict[tuple[int, str], Record] = {}
    pages = [[stored.setdefault((r.ingest_time, r.message_id), r) for r in page] for page in pages]
    for page in pages:
        # The page read twice over (a row twice in one read is held once).
        assert shown(views, "s", page + page) == encoded(page + page)
        assert views.bytes <= max_bytes
        held = views._held
        assert views.bytes == sum(map(counted, held.values()))


def test_the_longest_held_go_first() -> None:
    rows = [
        Record(message_id=f"m-{i:02}", publish_time=i, ingest_time=i, id="r", data="{}")
        for i in range(1, 11)  # each view of the same length
    ]
    one = counted(EncodedViews().of("s", rows[:1])[0])  # each counted the same
    views = EncodedViews(max_bytes=3 * one)
    views.of("s", rows)
    assert len(views) == 3
    assert [key[1] for key in views._held] == [8, 9, 10]


@pytest.mark.parametrize("shared", [True, False], ids=["shared views", "made each read"])
async def test_a_stream_s_chunks_are_the_same_with_views_made_before(shared: bool) -> None:
    """From the tail in memory, read twice over by two readers: every chunk the API's
    views of its rows, byte for byte, whether the views were made for it or before."""
    rows = [
        Record(
            message_id=f"m-{i:03}",
            publish_time=1_000_000 * i,
            ingest_time=i // 3,
            id=f"r-{i}",
            timestamp=None if i % 2 else -123_456_789 * i,
            data=json.dumps({"n": i, "text": "é\x1f" * (i % 4)}),
            attributes=json.dumps({"k": str(i)}),
        )
        for i in range(60)
    ]
    store = DuckDBStore(":memory:")
    await store.start()
    views = EncodedViews() if shared else None
    try:
        now = time.time_ns() // 1000 + 1_000  # after the tail's start: within it
        rows = [msgspec.structs.replace(r, ingest_time=now + r.ingest_time) for r in rows]
        await store.append(rows)
        made: list[list[str]] = []
        for _ in range(2):
            reader = Reader(
                store, pending_horizon=lambda: 2**62, tokens=PageTokens("s"), encoded=views
            )
            streams = Streams(reader, Offsets("s"), page_rows=7, chunk_rows=9, chunk_bytes=4096)
            assert_views_of(rows, [chunk.body for chunk in await chunks_to_the_tail(streams)])
            if views is not None:
                # The rows read from the tail (the first, older than it, from DuckDB,
                # which makes their JSON itself), made by the first reader alone.
                made.append(sorted(key[2] for key in views._held))
        if views is not None:
            assert made[0] == made[1] == [r.message_id for r in rows][-len(made[0]) :]
            assert len(made[0]) > len(rows) // 2
    finally:
        await store.close()


def test_what_an_entry_is_counted_as_is_no_less_than_it_takes() -> None:
    """The bound is of memory: each view is counted as its JSON, its message id and
    ENCODED_ENTRY_BYTES, no less than tracemalloc sees an entry take."""
    rows = [
        Record(
            message_id=f"projects/p/messages/{i:012}",
            publish_time=i,
            ingest_time=1_700_000_000_000_000 + i,
            id=f"id-{i}",
            data=json.dumps({"n": i, "text": "x" * 200}),
            attributes='{"k":"v"}',
        )
        for i in range(5_000)
    ]
    views = EncodedViews(max_bytes=2**40)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        views.of(object(), rows)
        taken = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert taken <= views.bytes
    assert (
        views.bytes
        == sum(len(s.view) + sys.getsizeof(s.message_id) for s in views._held.values())
        + len(rows) * ENCODED_ENTRY_BYTES
    )


@pytest.mark.parametrize(
    ("message_id", "data"),
    [
        ("é" * 1024, "{}"),  # the longest message id a push may send, not ASCII
        ("m" * 1024, "{}"),
        ("m-1", json.dumps({"text": "x" * 5_000})),  # msgspec's output grown, not cut
    ],
    ids=["long non-ASCII ids", "long ids", "5 KB payloads"],
)
def test_what_is_held_once_the_records_are_gone_is_within_what_is_counted(
    message_id: str, data: str
) -> None:
    """The records read are let go of (the tail moved on): what the views alone hold,
    their keys' message ids and their JSON's bytes as allocated, is within the count."""
    views = EncodedViews(max_bytes=2**40)
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        rows = [
            Record(
                message_id=f"{message_id}{i:06}"[-len(message_id) :],
                publish_time=i,
                ingest_time=1_700_000_000_000_000 + i,
                id=f"id-{i}",
                data=data,
                attributes='{"k":"v"}',
            )
            for i in range(2_000)
        ]
        views.of(object(), rows)
        del rows
        gc.collect()
        taken = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(views) == 2_000
    assert taken <= views.bytes
