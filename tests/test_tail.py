"""The tail in memory (`app.store.tail`) holds its bytes at most, and pages to a budget."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from pathlib import Path
from time import perf_counter, time_ns

import duckdb
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import StoreUnavailable
from app.records import Record
from app.store import PageQuery, row_bytes
from app.store.duckdb.store import DuckDBStore
from app.store.filters import RowFilter
from app.store.tail import BEGINNING, PAYLOADS_MATCHED_AT_MOST, Key, Tail, held
from tests.waiting import until

MIB = 1024 * 1024
HOUR = 3_600_000_000


def record(n: int, size: int) -> Record:
    """The `n`th record, stored at n + 1, of `size` characters of data, and the message
    data it came from (as the push path makes it)."""
    return Record(
        message_id=f"m-{n:02}",
        publish_time=n,
        ingest_time=n + 1,
        id="r",
        data="x" * size,
        received=b"x" * size,
    )


def test_the_tail_holds_its_bytes_at_most_dropping_the_oldest() -> None:
    # Once bounded by its rows alone (50,000): 50,000 records of 10 MB.
    tail = Tail(max_bytes=10 * MIB)
    tail.reset(0)
    tail.add([record(n, MIB) for n in range(10)], now=11)
    assert held(record(0, MIB)) > 2 * MIB  # what it shows, and the data it came from
    assert 0 < tail.bytes <= 10 * MIB
    assert tail.bytes == sum(held(record(n, MIB)) for n in range(10 - len(tail), 10))
    # What it no longer holds is read from the store: it covers from the last one dropped.
    kept = 10 - len(tail)
    assert tail.start == (kept, f"m-{kept - 1:02}")
    assert not tail.covers(PageQuery(after_time=0, after_message_id="", before_time=99, limit=9))
    page = tail.page(
        PageQuery(
            after_time=tail.start[0], after_message_id=tail.start[1], before_time=99, limit=99
        ),
        99,
    )
    assert [r.message_id for r in page.rows] == [f"m-{n:02}" for n in range(kept, 10)]


def test_an_expression_on_payloads_is_matched_here_on_a_few_mib_at_most() -> None:
    # Matching decodes each payload on the event loop: past the bound, the store's SQL
    # reads the page (off the loop). An expression that reads no payload is matched
    # here over the whole tail, as `attribute=` is.
    tail = Tail()
    tail.reset(0)
    tail.add([record(n, MIB) for n in range(8)], now=9)

    def asked(where: str, after: int) -> PageQuery:
        return PageQuery(
            after_time=after,
            after_message_id="",
            before_time=99,
            limit=9,
            filter=RowFilter(where=where),
        )

    assert tail.covers(asked("id = 'r'", 0))
    assert not tail.covers(asked("data = 'x'", 0))
    assert not tail.covers(asked("id = 'r' OR EXISTS data.x", 0))
    # The rows after the cursor hold less than the bound: matched here.
    fit = PAYLOADS_MATCHED_AT_MOST // row_bytes(record(0, MIB))
    near = 9 - fit  # the last `fit` rows lie after it
    assert tail.covers(asked("data = 'x'", near))
    assert not tail.covers(asked("data = 'x'", near - 1))
    page = tail.page(asked("data = 'x'", near), 99)
    assert [r.message_id for r in page.rows] == []


def test_a_page_of_the_tail_ends_once_its_rows_hold_the_budget() -> None:
    tail = Tail()
    tail.reset(0)
    tail.add([record(n, MIB) for n in range(6)], now=7)
    budget = 3 * MIB
    assert 2 * row_bytes(record(0, MIB)) < budget <= 3 * row_bytes(record(0, MIB))
    asked = PageQuery(after_time=0, after_message_id="", before_time=99, limit=99, max_bytes=budget)
    page = tail.page(asked, 99)
    # Full at the row that reaches the budget: the next page goes on after it.
    assert [r.message_id for r in page.rows] == ["m-00", "m-01", "m-02"]
    assert (page.after_time, page.after_message_id) == (3, "m-02")
    rest = tail.page(
        PageQuery(
            after_time=3, after_message_id="m-02", before_time=99, limit=99, max_bytes=budget
        ),
        99,
    )
    assert [r.message_id for r in rest.rows] == ["m-03", "m-04", "m-05"]
    # Three rows hold the budget again: full, though the tail has no more.
    assert (rest.after_time, rest.after_message_id) == (6, "m-05")
    last = tail.page(
        PageQuery(
            after_time=6, after_message_id="m-05", before_time=99, limit=99, max_bytes=budget
        ),
        99,
    )
    assert (last.rows, last.after_time, last.after_message_id) == ([], 99, "")


def totals_hold(tail: Tail) -> None:
    """The tail's running totals are what each row it holds counts as (`row_bytes`),
    from the first it let go of."""
    totals = [tail._before, *tail._ends]
    assert [b - a for a, b in itertools.pairwise(totals)] == [row_bytes(r) for r in tail._rows]


def reference_page(rows: list[Record], query: PageQuery, until: int) -> tuple[list[str], Key]:
    """What a page of `rows` (every row held, in key order) is, written out plainly: the
    rows after the cursor before min(before_time, until), `limit` at most, ending at the
    first whose bytes with those before it reach `max_bytes`."""
    before = min(query.before_time, until)
    cursor = (query.after_time, query.after_message_id)
    after = [r for r in rows if cursor < (r.ingest_time, r.message_id) < (before, "")]
    page = after[: query.limit]
    full = len(page) == query.limit
    if query.max_bytes is not None:
        total = 0
        for at, row in enumerate(page):
            total += row_bytes(row)
            if total >= query.max_bytes:
                full, page = True, page[: at + 1]
                break
    end = (page[-1].ingest_time, page[-1].message_id) if full else (before, "")
    return [r.message_id for r in page], end


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 60), st.integers(0, 400), st.booleans()), max_size=40),
    st.data(),
)
def test_a_page_of_the_tail_is_the_plain_page_of_what_it_holds(
    batches: list[tuple[int, int, bool]], data: st.DataObject
) -> None:
    """Whatever order rows arrive in (late ones among them) and whatever was let go of,
    a page to a budget is the one the plain reading of the held rows gives."""
    tail = Tail(window_seconds=0.00003, max_bytes=6_000)
    tail.reset(0)
    now = 0
    for n, (time, size, nonascii) in enumerate(batches):
        now = max(now, time)
        row = Record(
            message_id=f"m-{n:02}",
            publish_time=0,
            ingest_time=time,
            id="r",
            data=("é" if nonascii else "x") * size,
        )
        tail.add([row], now=now)
    assert [(r.ingest_time, r.message_id) for r in tail._rows] == sorted(tail._keys)
    totals_hold(tail)
    times = st.integers(0, 70)
    query = PageQuery(
        after_time=data.draw(times),
        after_message_id=data.draw(st.sampled_from(["", "m-05", "m-99"])),
        before_time=data.draw(times),
        limit=data.draw(st.integers(1, 50)),
        max_bytes=data.draw(st.none() | st.integers(1, 5_000)),
    )
    if not tail.covers(query):
        return
    until = data.draw(times)
    page = tail.page(query, until)
    assert ([r.message_id for r in page.rows], (page.after_time, page.after_message_id)) == (
        reference_page(tail._rows, query, until)
    )


def test_late_rows_behind_a_full_tail_are_added_in_one_pass() -> None:
    """A batch of records stored late (a frame applied after later ones were shown)
    behind a tail of 49,000: each late row's running total is not made by a pass over
    every row after it (1,000 passes of 49,000 took 3.8 s of the event loop), and the
    totals and pages are those of the rows held."""
    tail = Tail(window_seconds=3600)
    tail.reset(0)

    def record(at: int, n: int) -> Record:
        return Record(message_id=f"m-{n:07}", publish_time=0, ingest_time=at, id="r", data="{}")

    tail.add([record(1_000 + n, n) for n in range(49_000)], now=100_000)
    late = [record(500 + n, 100_000 + n) for n in range(1_000)]
    started = perf_counter()
    tail.add(late, now=100_000)
    took = perf_counter() - started
    assert took < 1.0, f"{took:.2f} s"
    totals = [tail._before, *tail._ends]
    assert [b - a for a, b in itertools.pairwise(totals)] == [row_bytes(r) for r in tail._rows]
    query = PageQuery(after_time=0, after_message_id="", before_time=2**40, limit=50_000)
    budget = msgspec.structs.replace(query, max_bytes=10_000_000)
    page = tail.page(budget, 2**40)
    assert ([r.message_id for r in page.rows], (page.after_time, page.after_message_id)) == (
        reference_page(tail._rows, budget, 2**40)
    )
    assert [r.ingest_time for r in tail.page(query, 2**40).rows][:2] == [500, 501]


async def test_a_store_with_nothing_older_than_the_window_is_read_from_memory_from_its_first_record(
    tmp_path: Path,
) -> None:
    """A DuckDB store whose records all lie within the tail's window (one just made, or
    restarted before its records grew old) answers a reader from its first record from
    memory; once it holds an older one, or starts holding one, that reader reads DuckDB.
    Either way the reader gets every record."""
    path = str(tmp_path / "records.duckdb")
    now = time_ns() // 1000
    everything = PageQuery(after_time=0, after_message_id="", before_time=now + HOUR, limit=100)

    def at(name: str, ingest_time: int) -> Record:
        return Record(message_id=name, publish_time=0, ingest_time=ingest_time, id=name)

    async def read(store: DuckDBStore) -> list[str]:
        return [r.message_id for r in (await store.page(Record, everything)).rows]

    store = DuckDBStore(path)
    await store.start()
    try:
        assert store.live.covers(everything)  # just made: it holds nothing older
        await store.append([at("young", now)])
        await store.barrier()
        assert store.live.covers(everything)
        assert await read(store) == ["young"]
    finally:
        await store.close()
    store = DuckDBStore(path)
    await store.start()
    try:
        assert store.live.covers(everything)  # restarted, its one record within the window
        assert await read(store) == ["young"]
        window = store.live.tail.window
        await store.append([at("old", now - 2 * window)])
        await store.barrier()
        assert not store.live.covers(everything)  # let go of at once: DuckDB has it
        assert await read(store) == ["old", "young"]
    finally:
        await store.close()
    store = DuckDBStore(path)
    await store.start()
    try:
        assert not store.live.covers(everything)  # restarted holding an older record
        assert await read(store) == ["old", "young"]
    finally:
        await store.close()


async def test_a_store_restarted_holding_a_record_older_than_the_window_applies_its_appends(
    tmp_path: Path,
) -> None:
    """Restarted holding a record older than the tail's window (as almost every store is),
    a DuckDB store applies what it is sent next, and its readers read it."""
    path = str(tmp_path / "records.duckdb")
    now = time_ns() // 1000
    everything = PageQuery(after_time=0, after_message_id="", before_time=now + HOUR, limit=100)

    def at(name: str, ingest_time: int) -> Record:
        return Record(message_id=name, publish_time=0, ingest_time=ingest_time, id=name)

    store = DuckDBStore(path)
    await store.start()
    try:
        await store.append([at("old", now - HOUR)])
        await store.barrier()
    finally:
        await store.close()
    store = DuckDBStore(path)
    await store.start()
    try:
        await store.append([at("young", now)])
        await store.barrier()  # StoreUnavailable if it is never applied
        assert [r.message_id for r in (await store.page(Record, everything)).rows] == [
            "old",
            "young",
        ]
    finally:
        await store.close()


async def test_a_duckdb_store_s_pages_are_what_it_was_sent_whichever_of_the_tail_or_duckdb_answers(
    tmp_path: Path,
) -> None:
    """A DuckDB file across restarts, sent records young, older than the tail's window
    and later than now, redeliveries among them (the first copy kept), some appends while
    a follower waits (shown once journaled), its tail holding all of them or fewer (by
    rows or bytes), its clock stepped back a day, forward an hour or back five minutes
    in some runs: from any cursor, before every key included, as it starts and after
    each append, a walk of its pages reads each record it was sent once, in key order,
    up to the read horizon, and DuckDB holds exactly those."""
    path = str(tmp_path / "records.duckdb")
    rng = random.Random(7)
    sent: dict[str, Record] = {}  # the first copy of each message
    names = itertools.count()

    async def walk(store: DuckDBStore, after: Key, before: int) -> list[str]:
        seen: list[str] = []
        while True:
            query = PageQuery(
                after_time=after[0], after_message_id=after[1], before_time=before, limit=3
            )
            page = await store.page(Record, query)
            seen += [r.message_id for r in page.rows]
            if (page.after_time, page.after_message_id) == after or page.after_time >= before:
                return seen
            after = (page.after_time, page.after_message_id)

    async def check(store: DuckDBStore, where: str) -> None:
        now = time_ns() // 1000
        horizon = store.read_horizon(now)
        ordered = sorted(sent.values(), key=lambda r: (r.ingest_time, r.message_id))
        keys: list[Key] = [BEGINNING, (0, ""), (now - store.live.tail.window, "")]
        keys += [(r.ingest_time, r.message_id) for r in rng.sample(ordered, min(3, len(ordered)))]
        keys.append(store.live.tail.start)
        for after in keys:
            expected = [
                r.message_id
                for r in ordered
                if (r.ingest_time, r.message_id) > after and r.ingest_time < horizon
            ]
            assert await walk(store, after, horizon) == expected, (where, after)

    for life, (step, max_rows, max_bytes) in enumerate(
        [
            (0, 1000, MIB),
            (-24 * HOUR, 6, MIB),
            (0, 1000, 3000),
            (HOUR, 6, MIB),
            (-HOUR // 12, 1000, 3000),
            (0, 1000, MIB),
        ]
    ):
        store = DuckDBStore(path, clock=lambda step=step: time_ns() + step * 1000)
        store.live.tail.max_rows, store.live.tail.max_bytes = max_rows, max_bytes
        window = store.live.tail.window
        await store.start()
        try:
            await check(store, f"started, life {life}")
            for step in range(6):
                now = time_ns() // 1000
                batch = []
                for _ in range(rng.randint(1, 4)):
                    when = rng.choice(
                        [
                            now - rng.randrange(window // 2),  # young
                            now - rng.randint(2, 50) * window,  # older than the window
                            now + rng.randrange(window // 2),  # later than now
                        ]
                    )
                    if sent and rng.random() < 0.25:  # a redelivery, stamped anew
                        name = rng.choice(sorted(sent))
                    else:
                        name = f"m-{next(names):03}"
                    data = json.dumps("x" * rng.randrange(1000))
                    batch.append(
                        Record(
                            message_id=name,
                            publish_time=0,
                            ingest_time=when,
                            id=name,
                            data=data,
                            received=data.encode(),
                        )
                    )
                follower = None
                if step % 2:
                    live = store.live
                    follower = asyncio.create_task(live.wait(live.version, 30))
                    await until(lambda live=live: live.waiting, what="a follower to wait")
                await store.append(batch)
                for row in batch:
                    sent.setdefault(row.message_id, row)
                await store.barrier()
                if follower is not None:
                    await follower
                await check(store, f"life {life}, step {step}")
        finally:
            await store.close()
    with duckdb.connect(path, read_only=True) as con:
        stored = con.execute(
            "SELECT message_id FROM records ORDER BY ingest_time, message_id"
        ).fetchall()
    ordered = sorted(sent.values(), key=lambda r: (r.ingest_time, r.message_id))
    assert [m for (m,) in stored] == [r.message_id for r in ordered]


async def test_a_closed_duckdb_store_answers_no_page_from_its_tail(tmp_path: Path) -> None:
    """Closed, a DuckDB store whose tail holds every record it has answers a page of them
    as it answers one of DuckDB: StoreUnavailable, not the records memory still holds."""
    now = time_ns() // 1000
    store = DuckDBStore(str(tmp_path / "records.duckdb"))
    await store.start()
    await store.append([Record(message_id="m", publish_time=0, ingest_time=now, id="r")])
    await store.barrier()
    everything = PageQuery(after_time=0, after_message_id="", before_time=now + 1, limit=10)
    assert [r.message_id for r in (await store.page(Record, everything)).rows] == ["m"]
    await store.close()
    assert store.live.covers(everything)  # memory holds it still
    with pytest.raises(StoreUnavailable):
        await store.page(Record, everything)
