"""Attacks on records' shared encoded views and the tail's running totals: a stream's
chunks are the same bytes whether the views were made before from the tail in memory
and read again from DuckDB, or made now (large rows, control characters, non-ASCII);
the tail filled, reset and cut by its row bound pages as the plain reading of its rows."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.query.offsets import Offsets
from app.query.page_token import PageTokens
from app.query.service import EncodedViews, Reader
from app.query.streams import Streams
from app.records import Record
from app.store import PageQuery
from app.store.duckdb.store import DuckDBStore
from app.store.tail import Tail
from tests.test_shown_rows import chunks_to_the_tail
from tests.test_tail import reference_page, totals_hold


def _rows(now: int) -> list[Record]:
    texts = [
        '{"a" : 1,  "b":[1,2 ]}',
        json.dumps({"t": "\u00e9\u2028\x1f\x0b" * 3}, ensure_ascii=False),
        json.dumps({"t": "\u00e9\u2028\x1f\x0b" * 3}),
        json.dumps({"big": "\u00e9x\x1f" * 30_000}, ensure_ascii=False),
        '{"n": 1.0e3, "m": -0.0, "u": "\\u0041"}',
        '"just a string"',
        "null",
    ]
    return [
        Record(
            message_id=f"m-{i:03}",
            publish_time=1_000_000 * i,
            ingest_time=now + i // 2,
            id=f"r-{i}\u00e9\x1f",
            timestamp=None if i % 2 else -123_456_789 * i,
            data=texts[i % len(texts)],
            attributes=json.dumps({"k\x1f": "\u00e9" * (i % 3)}, ensure_ascii=i % 2 == 0),
            subscription="projects/p/subscriptions/s\x0b",
        )
        for i in range(28)
    ]


async def _stream(store: DuckDBStore, views: EncodedViews | None) -> list[bytes]:
    reader = Reader(store, pending_horizon=lambda: 2**62, tokens=PageTokens("s"), encoded=views)
    streams = Streams(reader, Offsets("s"), page_rows=5, chunk_rows=7, chunk_bytes=90_000)
    return [c.body + b"|" + c.next_offset.encode() for c in await chunks_to_the_tail(streams)]


@pytest.mark.parametrize("behind", [False, True], ids=["tail", "duckdb"])
async def test_views_made_from_the_tail_read_again_from_duckdb(behind: bool) -> None:
    store = DuckDBStore(":memory:")
    await store.start()
    try:
        now = time.time_ns() // 1000 + 1_000
        await store.append(_rows(now))
        views = EncodedViews()
        first = await _stream(store, views)  # from the tail, views made
        assert len(views) > 0
        if behind:
            store.live.tail.reset(2**61)  # every page a query of DuckDB now
        again = await _stream(store, views)
        fresh = await _stream(store, None)
        assert again == fresh
        assert first == fresh
    finally:
        await store.close()


_row = st.tuples(st.integers(1, 60), st.integers(0, 300), st.booleans(), st.booleans())


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.lists(_row, max_size=5)),
            st.tuples(st.just("fill"), st.lists(_row, max_size=8)),
            st.tuples(st.just("reset"), st.integers(0, 60)),
        ),
        max_size=25,
    ),
    st.integers(1, 12),
    st.data(),
)
def test_a_tail_filled_reset_and_cut_by_rows_pages_plainly(
    ops: list[tuple[str, object]], max_rows: int, data: st.DataObject
) -> None:
    tail = Tail(window_seconds=0.00003, max_bytes=4_000, max_rows=max_rows)
    tail.reset(0)
    now, n = 0, 0

    def made(spec: tuple[int, int, bool, bool]) -> Record:
        nonlocal n
        n += 1
        time_, size, nonascii, received = spec
        return Record(
            message_id=f"m-{n:03}",
            publish_time=0,
            ingest_time=time_,
            id="r",
            data=("é" if nonascii else "x") * size,
            received=b"y" * size if received else None,
        )

    for op, arg in ops:
        if op == "add":
            batch = [made(s) for s in arg]  # type: ignore[attr-defined]
            now = max([now, *(r.ingest_time for r in batch)])
            tail.add(batch, now=now)
        elif op == "fill":
            batch = sorted((made(s) for s in arg), key=lambda r: (r.ingest_time, r.message_id))  # type: ignore[attr-defined]
            tail.fill((0, ""), batch)
        else:
            tail.reset(arg)  # type: ignore[arg-type]
        totals_hold(tail)
        assert len(tail) <= max_rows
    times = st.integers(0, 70)
    query = PageQuery(
        after_time=data.draw(times),
        after_message_id=data.draw(st.sampled_from(["", "m-005", "m-999"])),
        before_time=data.draw(times),
        limit=data.draw(st.integers(1, 50)),
        max_bytes=data.draw(st.none() | st.integers(-5, 3_000)),
    )
    if not tail.covers(query):
        return
    until = data.draw(times)
    page = tail.page(query, until)
    assert ([r.message_id for r in page.rows], (page.after_time, page.after_message_id)) == (
        reference_page(tail._rows, query, until)
    )
