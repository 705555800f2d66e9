"""The Store contract: what the API relies on, checked on every store alike.

Each test runs once per entry of `STORES` (conftest.py). Nothing here knows
which store it talks to: a behaviour only one store has belongs in that
store's own tests.

A store may keep the `ingest_time` a row was given (the batcher stamps it) or
stamp the row itself when it commits (the serving tier uses the commit
timestamp). So rows are given increasing stamps from the clock, as the batcher
would give them, and every expectation about time is read back from the store:
what must hold is the order, the first copy, and that every read agrees.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import msgspec
import pytest

from app.asgi import create_app
from app.errors import StoreUnavailable
from app.records import Record, Rejection
from app.store import COMPARED_BYTES, MessageStatus, PageQuery, PublisherDuplicate, Store, row_bytes
from app.store.producers import MAX_DECLARED_TAIL, MAX_EPOCHS, EpochEntry
from tests.conftest import envelope, served, settings
from tests.rows import defaulted
from tests.waiting import until

R = TypeVar("R", Record, Rejection)

HOUR = 3_600_000_000
# The last ingest time `stamp` gave.
_stamped = 0


def stamp() -> int:
    """A fresh ingest time, as the batcher stamps one: now, and later than the last.
    (Now plus a counter's last three digits went back in time as the counter wrapped:
    a row made later sorted first, wherever the tests before had left the counter.)"""
    global _stamped
    _stamped = max(time.time_ns() // 1000, _stamped + 1)
    return _stamped


def record(message_id: str, ingest_time: int | None = None, **fields: Any) -> Record:
    ingest_time = stamp() if ingest_time is None else ingest_time
    values: dict[str, Any] = {
        "publish_time": ingest_time - 1_000,
        "id": message_id,
        "data": '"Ejemplo de datos"',
        **fields,
    }
    return Record(message_id=message_id, ingest_time=ingest_time, **values)


def rejection(message_id: str, ingest_time: int | None = None, **fields: Any) -> Rejection:
    ingest_time = stamp() if ingest_time is None else ingest_time
    values: dict[str, Any] = {
        "publish_time": ingest_time - 1_000,
        "data": b"\xffnot json",
        "reason": "payload is not JSON",
        "attributes": '{"k":"v"}',
        **fields,
    }
    return Rejection(message_id=message_id, ingest_time=ingest_time, **values)


def query(after_time: int, after_id: str, *, before: int, limit: int = 100) -> PageQuery:
    return PageQuery(
        after_time=after_time, after_message_id=after_id, before_time=before, limit=limit
    )


def content(row: Record | Rejection) -> dict[str, Any]:
    """Everything a row says but its ingest time; JSON compared as JSON."""
    fields = {name: getattr(row, name) for name in row.__struct_fields__ if name != "ingest_time"}
    if isinstance(row, Record):
        fields["data"] = json.loads(row.data)
    fields["attributes"] = json.loads(row.attributes)
    return fields


async def horizon(store: Store, rows_after: int = 0) -> int:
    """The store's read horizon once it is past `rows_after` (a store that serves
    only committed rows may need a moment); every page is asked below it."""
    await store.barrier()
    # A shared store's horizon may lie ahead of this machine's clock (the
    # serving tier's is its database's), so only its progress is checked.
    for _ in range(500):
        reached = store.read_horizon(time.time_ns() // 1000)
        if reached > rows_after:
            return reached
        await asyncio.sleep(0.01)  # the horizon moves with time itself (a settle window)
    raise AssertionError("the read horizon never passed the rows acknowledged")


async def stored_time(store: Store, message_id: str) -> int:
    await store.barrier()  # as every read of the API does first
    status = await store.message(message_id)
    assert status is not None, message_id
    return status.ingest_time


async def walk(store: Store, *, limit: int, since: int, before: int) -> list[Record]:
    """Every record a follower of page tokens meets from `since` to `before`."""

    async def read(q: PageQuery) -> tuple[list[Record], int, str, int | None]:
        page = await store.page(Record, q)
        return page.rows, page.after_time, page.after_message_id, page.complete_until

    return await _follow(read, limit=limit, since=since, before=before)


async def walk_rejections(store: Store, *, limit: int, since: int, before: int) -> list[Rejection]:
    """The same, through the rejections."""

    async def read(q: PageQuery) -> tuple[list[Rejection], int, str, int | None]:
        page = await store.page(Rejection, q)
        return page.rows, page.after_time, page.after_message_id, page.complete_until

    return await _follow(read, limit=limit, since=since, before=before)


async def _follow(
    read: Callable[[PageQuery], Awaitable[tuple[list[R], int, str, int | None]]],
    *,
    limit: int,
    since: int,
    before: int,
) -> list[R]:
    seen: list[R] = []
    after_time, after_id = since, ""
    for _ in range(1000):
        asked = query(after_time, after_id, before=before, limit=limit)
        rows, page_time, page_id, complete_until = await read(asked)
        check_page(asked, rows, (page_time, page_id), complete_until)
        seen += rows
        after_time, after_id = page_time, page_id
        if (after_time, after_id) == (before, ""):
            return seen
    raise AssertionError("the walk did not end")


def check_page(
    asked: PageQuery,
    rows: Sequence[Record | Rejection],
    resume: tuple[int, str],
    complete_until: int | None,
) -> None:
    """What every page promises whatever it holds: rows after the cursor and below the
    bound, in key order, at most `limit`; a next cursor that moves on and never past
    the bound; a completeness that never claims more than was asked."""
    cursor = (asked.after_time, asked.after_message_id)
    keys = [(r.ingest_time, r.message_id) for r in rows]
    assert len(rows) <= asked.limit
    assert keys == sorted(set(keys)), "rows out of key order, or a key twice"
    assert all(cursor < key and key[0] < asked.before_time for key in keys), (
        f"a row outside the page's range: {cursor} .. {asked.before_time}: {keys}"
    )
    assert cursor < resume <= (asked.before_time, ""), f"resume {resume} from {cursor}"
    assert all(key <= resume for key in keys), "the next page would repeat a row"
    if complete_until is not None:
        assert asked.after_time <= complete_until <= asked.before_time, (
            f"complete until {complete_until}, asked {asked.after_time} .. {asked.before_time}"
        )
        assert resume <= (complete_until, ""), "the next page starts past what is complete"


# As a publisher may write it: key order, spacing and escapes of its own.
DATA_AS_SENT = '{"text": "Ejemplo de datos",  "n": 1.50, "b": [true, null],\n "a": "\\u00e9"}'


@pytest.mark.slow
async def test_rows_round_trip_through_every_read(store: Store, exact_data: bool) -> None:
    since = stamp() - HOUR
    stored = record(
        "m-1",
        timestamp=stamp() - 5_000_000,
        data=DATA_AS_SENT,
        attributes='{"origin": "test", "googclient_schemaname": "projects/p/schemas/s"}',
        subscription="projects/p/subscriptions/s",
        delivery_attempt=2,
        trace_id="0af7651916cd43dd8448eb211c80319c",
        schema="projects/p/schemas/s@r1",
    )
    refused = rejection(
        "m-2",
        subscription="projects/p/subscriptions/s",
        delivery_attempt=3,
        trace_id="0af7651916cd43dd8448eb211c80319d",
        schema="projects/p/schemas/s@r1",
    )
    # Every field set: a field added to the rows fails here until every store keeps it.
    assert defaulted(stored) == defaulted(refused) == set()

    assert list(await store.append([stored, refused])) == [None, None]
    ingested = await stored_time(store, "m-1")
    until = await horizon(store, ingested)

    (read,) = await walk(store, limit=10, since=since, before=until)
    latest = await store.latest("m-1")
    status = await store.message("m-1")
    assert latest is not None
    assert status is not None
    assert status.record is not None
    for row in (read, latest, status.record):
        assert content(row) == content(stored)
        assert row.ingest_time == ingested
        if exact_data:  # else the same JSON value, in the store's own text
            assert row.data == DATA_AS_SENT
    assert (status.status, status.ingest_time, status.reason) == ("stored", ingested, None)
    rejected = await store.message("m-2")
    assert rejected is not None
    assert (rejected.status, rejected.reason) == ("rejected", "payload is not JSON")
    (listed,) = await walk_rejections(store, limit=10, since=since, before=until)
    assert content(listed) == content(refused)  # raw bytes intact
    assert listed.ingest_time == rejected.ingest_time
    assert await store.message("never") is None
    assert await store.latest("never") is None


@pytest.mark.slow
async def test_a_page_read_to_a_byte_budget_ends_once_its_rows_hold_it(store: Store) -> None:
    since = stamp() - HOUR
    # Payloads below and above what a store may hold back from a bounded read until it
    # keeps them (64 KiB on DuckDB), and together past the budget.
    sizes = [10, 100_000, 10, 200_000, 100_000, 10, 10]
    records = [record(f"b-{n}", data=json.dumps("x" * size)) for n, size in enumerate(sizes)]
    refused = [rejection(f"c-{n}", data=b"\xff" * size) for n, size in enumerate(sizes)]
    stored: list[Record | Rejection] = [*records, *refused]
    for row in stored:  # one append each: a time each
        await store.append([row])
    until = await horizon(store, await stored_time(store, "c-6"))
    walked = await _walk_to_budget(store, Record, since=since, before=until, budget=150_000)
    assert [content(r) for r in walked] == [content(r) for r in records]
    listed = await _walk_to_budget(store, Rejection, since=since, before=until, budget=150_000)
    assert [content(r) for r in listed] == [content(r) for r in refused]


async def _walk_to_budget(
    store: Store, kind: type[R], *, since: int, before: int, budget: int
) -> list[R]:
    """Every row of `kind` from `since`, read a page of 5 rows and `budget` bytes at a
    time, each page checked against a read of the same rows without a budget."""
    seen: list[R] = []
    after = (since, "")
    while after != (before, ""):
        whole = await store.page(kind, query(*after, before=before, limit=5))
        asked = PageQuery(
            after_time=after[0],
            after_message_id=after[1],
            before_time=before,
            limit=5,
            max_bytes=budget,
        )
        page = await store.page(kind, asked)
        resume = (page.after_time, page.after_message_id)
        check_page(asked, page.rows, resume, page.complete_until)
        # What a read without a budget answers, or its start.
        kept = len(page.rows)
        assert [content(r) for r in page.rows] == [content(r) for r in whole.rows[:kept]]
        if kept < len(whole.rows):
            # Ended early: its rows hold the budget, and the next page goes on at once.
            assert sum(map(row_bytes, page.rows)) >= budget
            assert resume == (page.rows[-1].ingest_time, page.rows[-1].message_id)
        seen += page.rows
        after = resume
    return seen


# How long after its rows are readable an append may ring the bell: well under every
# window in which a store looks for rows while followers wait (a second on BigQuery),
# so that a store that never rings fails here rather than waking followers late.
RING_SECONDS = 0.25


async def test_an_append_rings_the_bell_once_its_rows_are_readable(store: Store) -> None:
    # Nobody waits: a store that looks for rows only while followers wait does not
    # look here, and only the append's own ring moves the bell.
    seen = store.live.version
    assert list(await store.append([record("m-1")])) == [None]
    await horizon(store, await stored_time(store, "m-1"))
    await until(
        lambda: store.live.version != seen,
        timeout=RING_SECONDS,
        what="the bell to ring for a readable append",
    )
    assert store.live.waiting == 0


@pytest.mark.slow
async def test_the_first_copy_of_a_message_is_the_only_one_any_read_shows(store: Store) -> None:
    since = stamp() - HOUR
    first = [record(f"m-{i:02}", data=f'"first {i}"') for i in range(10)]
    # A batch that carries a message twice keeps its first row.
    await store.append([*first[:5], record("m-03", data='"same batch"')])
    await store.append(first[5:])
    # Redeliveries stored later: with other content, and an exact copy of a
    # row (a resent batch whose answer was lost).
    await store.append([record("m-02", data='"redelivered"'), first[4]])
    await store.append([record("m-07", id="m-07", data='"redelivered"')])
    times = {r.message_id: await stored_time(store, r.message_id) for r in first}
    until = await horizon(store, max(times.values()))

    for limit in (1, 3, 100):
        seen = await walk(store, limit=limit, since=since, before=until)
        assert [(r.message_id, r.data, r.ingest_time) for r in seen] == [
            (r.message_id, r.data, times[r.message_id]) for r in first
        ]
    latest = await store.latest("m-07")
    assert latest is not None
    assert latest.data == '"first 7"'


@pytest.mark.slow
async def test_a_page_is_bounded_and_says_where_the_next_one_starts(store: Store) -> None:
    for i in range(5):
        await store.append([record(f"m-{i}")])
    t = [await stored_time(store, f"m-{i}") for i in range(5)]
    assert t == sorted(t)
    until = await horizon(store, t[-1])
    # After (t1, "m-1"), before t4: the rows between.
    short = await store.page(Record, query(t[1], "m-1", before=t[4], limit=10))
    assert [r.message_id for r in short.rows] == ["m-2", "m-3"]
    # A short page examined its whole range: the next one starts at its end.
    assert (short.after_time, short.after_message_id) == (t[4], "")
    # A full page goes on after its last row.
    full = await store.page(Record, query(t[0] - 1, "", before=until, limit=2))
    assert [r.message_id for r in full.rows] == ["m-0", "m-1"]
    assert (full.after_time, full.after_message_id) == (t[1], "m-1")


async def test_the_cursor_is_exclusive_on_the_whole_key(store: Store) -> None:
    # Rows of one append may share an ingest time; the message id orders them.
    both = stamp()
    await store.append([record("m-5a", both), record("m-0z", both), record("m-1", both)])
    t = await stored_time(store, "m-0z")
    assert await stored_time(store, "m-5a") == t
    await horizon(store, t)
    tie = await store.page(Record, query(t, "m-0z", before=t + 1))
    assert [r.message_id for r in tie.rows] == ["m-1", "m-5a"]


async def test_every_row_below_the_read_horizon_is_readable(store: Store) -> None:
    since = stamp() - HOUR
    for batch in range(4):
        await store.append([record(f"h-{batch}-{i}") for i in range(5)])
    newest = max([await stored_time(store, f"h-3-{i}") for i in range(5)])
    until = await horizon(store, newest)
    seen = await walk(store, limit=7, since=since, before=until)
    assert sorted(r.message_id for r in seen) == sorted(
        f"h-{batch}-{i}" for batch in range(4) for i in range(5)
    )
    assert [(r.ingest_time, r.message_id) for r in seen] == sorted(
        (r.ingest_time, r.message_id) for r in seen
    )


@pytest.mark.slow
async def test_reads_see_acknowledged_writes_once_past_the_barrier(store: Store) -> None:
    for i in range(3):
        await store.append([record(f"w-{i}", id="w")])
        await store.barrier()
        latest = await store.latest("w")
        assert latest is not None
        assert latest.message_id == f"w-{i}"
        status = await store.message(f"w-{i}")
        assert status is not None
        assert status.status == "stored"
        assert await store.seen([f"w-{i}"]) == {f"w-{i}": "stored"}


async def test_latest_breaks_every_tie_the_same_way(store: Store) -> None:
    now = stamp()
    # An event time beats none; the later event time wins.
    await store.append(
        [
            record("a-1", id="a", timestamp=now - 10, data='"old event"'),
            record("a-2", id="a", timestamp=None, publish_time=now + 9),
            record("a-3", id="a", timestamp=now - 5, publish_time=0),
        ]
    )
    # Without event times, the later publish wins.
    await store.append(
        [
            record("b-1", id="b", publish_time=now + 2),
            record("b-2", id="b", publish_time=now + 1),
        ]
    )
    # Same event and publish time: the later write wins.
    await store.append([record("c-2", id="c", timestamp=now, publish_time=now)])
    await store.append([record("c-1", id="c", timestamp=now, publish_time=now)])
    # Everything equal but the message id: the greater one, so the choice never
    # depends on how rows happen to be laid out.
    same = stamp()
    await store.append(
        [record(f"d-{i}", same, id="d", timestamp=now, publish_time=now) for i in (1, 3, 2)]
    )
    await store.barrier()
    winners = {key: await store.latest(key) for key in "abcd"}
    assert {key: r.message_id if r else None for key, r in winners.items()} == {
        "a": "a-3",
        "b": "b-1",
        "c": "c-1",
        "d": "d-3",
    }


async def test_what_became_of_a_message(store: Store) -> None:
    await store.append([rejection("m-1")])
    await store.append([record("m-1")])
    await store.append([rejection("m-2"), record("m-3")])
    await store.append([record("m-3", data='"again"')])
    await store.barrier()
    # A message rejected once and stored since (a replay) is stored.
    status = await store.message("m-1")
    assert status is not None
    assert status.status == "stored"
    assert status.record is not None
    assert status.ingest_time == status.record.ingest_time
    assert await store.message("m-2") == MessageStatus(
        status="rejected",
        ingest_time=(await stored_time(store, "m-2")),
        reason="payload is not JSON",
    )
    # One read for a batch; each message once, however often it is asked for.
    states = await store.seen(["m-1", "m-2", "m-3", "never", "m-2"])
    assert states == {"m-1": "stored", "m-2": "rejected", "m-3": "stored"}
    assert await store.seen([]) == {}


async def test_the_rejections_a_replay_compares_with(store: Store) -> None:
    """Each message's rejection as kept, in one read: its bytes, attributes, publish time
    and subscription as they came, the first of a message rejected on two deliveries;
    none of a message never rejected, nor of one whose data is over COMPARED_BYTES."""
    first = rejection("c-1", data=b'{"amount": "12"}', subscription="projects/p/subscriptions/s")
    await store.append([first, rejection("c-big", data=b"x" * (COMPARED_BYTES + 1))])
    await store.append([rejection("c-edge", data=b"y" * COMPARED_BYTES), record("c-stored")])
    await store.append([rejection("c-1", data=b"second delivery")])
    await store.barrier()
    found = await store.rejections(["c-1", "c-big", "c-edge", "c-stored", "never", "c-1"])
    assert sorted(found) == ["c-1", "c-edge"]
    assert found["c-1"] == msgspec.structs.replace(
        first, ingest_time=await stored_time(store, "c-1")
    )
    assert found["c-edge"].data == b"y" * COMPARED_BYTES
    assert await store.rejections([]) == {}


@pytest.mark.slow
async def test_rejections_page_in_key_order(store: Store) -> None:
    since = stamp() - HOUR
    rows = [rejection(f"x-{i}") for i in range(5)]
    await store.append(rows[:3])
    await store.append([record("ok"), *rows[3:]])
    newest = await stored_time(store, "x-4")
    until = await horizon(store, newest)
    for limit in (2, 100):
        listed = await walk_rejections(store, limit=limit, since=since, before=until)
        assert [content(r) for r in listed] == [content(r) for r in rows]
        assert [(r.ingest_time, r.message_id) for r in listed] == sorted(
            (r.ingest_time, r.message_id) for r in listed
        )


@pytest.mark.slow
async def test_reads_before_the_retention_are_gone(make: Any) -> None:
    # The retention is the API's promise on every store: a bound older than it
    # answers 410 (rows there may be deleted), a read without one starts at it.
    config = settings(RECORDLINE_RETENTION_DAYS="7")
    async with served(create_app(config, store=make(7))) as client:
        body = envelope({"id": "r1", "data": 1}, message_id="m1")
        assert (await client.post("/pubsub/push", json=body)).status_code == 204
        old = await client.get("/v1/records", params={"since": "2000-01-01T00:00:00Z"})
        assert old.status_code == 410
        assert old.json()["parameter"] == "since"
        older = await client.get("/v1/rejections", params={"until": "2000-01-01T00:00:00Z"})
        assert older.status_code == 410
        stored = datetime.fromisoformat((await client.get("/v1/messages/m1")).json()["ingest_time"])
        # A read without a bound starts at the retention, and finds the record as
        # soon as the page is complete past it (a settle window may hold it back).
        for _ in range(500):
            page = (await client.get("/v1/records")).json()
            if page["records"]:
                break
            complete = datetime.fromisoformat(page["complete_until"])
            assert complete <= stored, "complete past a record it left out"
            await asyncio.sleep(0.01)  # the horizon moves with time itself
        assert [r["message_id"] for r in page["records"]] == ["m1"]


@pytest.mark.slow
async def test_appends_in_flight_together_are_each_stored_once(store: Store) -> None:
    # The batcher runs up to `max_in_flight` appends at once; each must keep
    # every row it was given, whichever finishes first.
    since = stamp() - HOUR
    width = max(store.max_in_flight, 1)
    sent: list[str] = []
    for wave in range(4):
        batches = [[record(f"c-{wave}-{i}-{j}") for j in range(3)] for i in range(width)]
        outcomes = await asyncio.gather(*(store.append(batch) for batch in batches))
        assert [list(o) for o in outcomes] == [[None] * 3 for _ in batches]
        sent += [r.message_id for batch in batches for r in batch]
    newest = max([await stored_time(store, m) for m in sent])
    until = await horizon(store, newest)
    seen = await walk(store, limit=5, since=since, before=until)
    assert sorted(r.message_id for r in seen) == sorted(sent)


async def test_a_started_store_is_ready_and_a_closed_one_is_not(make: Any) -> None:
    store = make(0)
    await store.start()
    try:
        await store.check()
        await store.append([record("m-1")])
        await store.check()
    finally:
        await store.close()
    # Closed: every call says the store is unavailable, nothing else.
    with pytest.raises(StoreUnavailable):
        await store.check()
    with pytest.raises(StoreUnavailable):
        await store.append([record("m-2")])
    with pytest.raises(StoreUnavailable):
        await store.page(Record, query(0, "", before=stamp()))


# -- producer sequences (app.store.producers) ---------------------------------------------


def sequenced(
    message_id: str,
    sequence: int,
    *,
    producer: str = "producer-1",
    epoch: int = 0,
    ended: str | None = None,
    rejected: bool = False,
    **fields: Any,
) -> Record | Rejection:
    """A row of a message that carries its producer's sequence: the same message (a
    publisher's retry) whatever its message id, unless `fields` or `origin` differ."""
    attributes = {
        "origin": fields.pop("origin", "test"),
        "recordline-producer": producer,
        "recordline-epoch": str(epoch),
        "recordline-seq": str(sequence),
    }
    if ended is not None:
        attributes["recordline-epoch-ended"] = ended
    text = json.dumps(attributes, separators=(",", ":"))
    if rejected:
        return rejection(message_id, attributes=text, **fields)
    return record(message_id, attributes=text, **{"id": f"{producer}/{epoch}/{sequence}", **fields})


async def epochs(store: Store, producer: str = "producer-1") -> list[EpochEntry]:
    assert store.completeness is not None
    found = await store.completeness.producer(producer)
    assert found is not None, producer
    assert found.producer == producer
    return found.epochs


@pytest.mark.slow
async def test_a_producers_message_is_stored_once_under_the_id_of_its_first_copy(
    store: Store,
) -> None:
    since = stamp() - HOUR
    assert list(await store.append([sequenced("s-a", 0), sequenced("s-b", 1)])) == [None, None]
    # A publisher's retry of 1 (the same message under a new message id), a
    # redelivery of 0 (its own id), and the next message; then the retry delivered
    # again.
    later = await store.append([sequenced("s-c", 1), sequenced("s-a", 0), sequenced("s-d", 2)])
    again = await store.append([sequenced("s-c", 1)])
    if store.completeness is None:
        # No system of record settles sequences as it commits: every copy is stored
        # (reads leave out later copies of a message id only; records_unique both).
        assert list(later) == [None, None, None]
        assert list(again) == [None]
        await store.barrier()
        assert await store.seen(["s-c"]) == {"s-c": "stored"}
        return
    duplicate = PublisherDuplicate("producer-1", 0, 1)
    assert list(later) == [duplicate, None, None]
    assert list(again) == [duplicate]
    newest = await stored_time(store, "s-d")
    until = await horizon(store, newest)
    seen = await walk(store, limit=2, since=since, before=until)
    assert [r.message_id for r in seen] == ["s-a", "s-b", "s-d"]
    assert await store.message("s-c") is None
    assert await store.seen(["s-a", "s-c"]) == {"s-a": "stored"}
    (entry,) = await epochs(store)
    assert (entry.epoch, entry.highest, entry.contiguous, entry.gaps) == (0, 2, 2, [])
    assert (entry.stored, entry.rejected, entry.duplicates, entry.zombies) == (3, 0, 2, 0)
    assert (entry.conflicts, entry.conflicted) == (0, [])
    audit = await store.completeness.audit(since, stamp() + HOUR, cutoff=stamp(), limit=10)
    assert sum(h.stored for h in audit.hours) == 3
    assert sum(h.duplicates for h in audit.hours) == 2
    assert (audit.conflict_ranges, audit.missing_ranges) == (0, 0)


async def test_another_message_under_a_taken_sequence_is_stored_and_named_a_conflict(
    store: Store,
) -> None:
    """Nothing ties a producer id to who publishes it: a message under a sequence
    another message took is not a retry unless it is the same message. Both are
    stored, whichever came first, and the sequence is named in conflict."""
    if store.completeness is None:
        return
    since = stamp() - HOUR
    # A forger takes sequence 1 first; the producer's own message 1 comes after it,
    # then its retry, the forger's retry, and a third message under 1.
    assert list(await store.append([sequenced("real-0", 0)])) == [None]
    assert list(await store.append([sequenced("forged-1", 1, data='"forged"')])) == [None]
    outcomes = await store.append(
        [
            sequenced("real-1", 1),
            sequenced("real-1-retry", 1),
            sequenced("forged-1-retry", 1, data='"forged"'),
            sequenced("other-1", 1, origin="elsewhere"),
            sequenced("real-2", 2),
        ]
    )
    duplicate = PublisherDuplicate("producer-1", 0, 1)
    assert list(outcomes) == [None, duplicate, duplicate, None, None]
    await store.barrier()
    held = await store.seen(["real-1", "forged-1", "other-1", "real-1-retry", "forged-1-retry"])
    assert held == {"real-1": "stored", "forged-1": "stored", "other-1": "stored"}
    (entry,) = await epochs(store)
    assert (entry.highest, entry.gaps, entry.stored, entry.duplicates) == (2, [], 5, 2)
    assert entry.conflicts == 2
    assert [(g.first, g.last) for g in entry.conflicted] == [(1, 1)]
    audit = await store.completeness.audit(since, stamp() + HOUR, cutoff=stamp(), limit=10)
    assert (audit.conflict_ranges, audit.conflicting_sequences) == (1, 1)
    (named,) = audit.conflicts
    assert (named.producer, named.epoch, named.kind, named.first, named.last) == (
        "producer-1",
        0,
        "conflict",
        1,
        1,
    )
    assert sum(h.conflicts for h in audit.hours) == 2
    worst = await store.completeness.worst(cutoff=stamp(), since=since, top=10)
    assert worst.conflicts == {"producer-1": 1}
    later = await store.completeness.worst(cutoff=stamp(), since=stamp() + HOUR, top=10)
    assert later.conflicts == {}


async def test_an_epoch_owed_sequences_is_never_retired_to_make_room(store: Store) -> None:
    """An epoch with a gap stays however many come, and a message of a new epoch
    when none may go is stored all the same."""
    if store.completeness is None:
        return
    # Epoch 1 has a gap (sequence 1 never came): evidence of loss.
    await store.append([sequenced("v-0", 0, epoch=1), sequenced("v-2", 2, epoch=1)])
    # Eight more epochs, each one message: seven are kept, the eighth finds none done
    # with (each heard of within the hour, no end declared) and is untracked.
    for epoch in range(2, 2 + MAX_EPOCHS):
        await store.append([sequenced(f"f-{epoch}", 0, epoch=epoch)])
    kept = {e.epoch: e for e in await epochs(store)}
    live = sorted(e for e, entry in kept.items() if not entry.retired)
    assert len(live) == MAX_EPOCHS
    assert 1 in live
    assert [(g.first, g.last) for g in kept[1].gaps] == [(1, 1)]
    # The producer's own retry of sequence 2 is still told apart.
    again = await store.append([sequenced("v-2-retry", 2, epoch=1)])
    assert list(again) == [PublisherDuplicate("producer-1", 1, 2)]
    # With epoch 1, eight epochs each owed a sequence: a message of a ninth is stored,
    # with no place in the ledger.
    for epoch in range(20, 20 + MAX_EPOCHS - 1):
        await store.append([sequenced(f"g-{epoch}", 1, epoch=epoch)])
    kept = {e.epoch: e for e in await epochs(store)}
    newest = max(e for e, entry in kept.items() if not entry.retired)
    before = kept[newest].untracked
    assert list(await store.append([sequenced("late", 0, epoch=99)])) == [None]
    await store.barrier()
    assert await store.seen(["late"]) == {"late": "stored"}
    kept = {e.epoch: e for e in await epochs(store)}
    assert 99 not in kept
    assert 1 in kept
    assert kept[1].gaps
    assert kept[newest].untracked == before + 1


async def test_newer_epochs_never_retire_one_still_publishing(store: Store) -> None:
    """Eight newer epochs (a forger's, say) retire no epoch still heard of whose end
    nobody declared: its lost sequence stays named and its retries told apart."""
    if store.completeness is None:
        return
    for n in range(5):
        await store.append([sequenced(f"v-{n}", n, epoch=10)])
    for k in range(MAX_EPOCHS):
        await store.append([sequenced(f"f-{k}", 0, epoch=11 + k)])
    for n in (6, 7, 8, 9):
        assert list(await store.append([sequenced(f"v-{n}", n, epoch=10)])) == [None]
    again = await store.append([sequenced("v-7-retry", 7, epoch=10)])
    assert list(again) == [PublisherDuplicate("producer-1", 10, 7)]
    kept = {e.epoch: e for e in await epochs(store)}
    assert not kept[10].retired
    assert [(g.first, g.last) for g in kept[10].gaps] == [(5, 5)]
    assert 11 + MAX_EPOCHS - 1 not in kept
    newest = max(e for e, entry in kept.items() if not entry.retired)
    assert kept[newest].untracked == 1


async def test_disagreeing_ends_are_a_conflict_and_the_largest_is_owed(store: Store) -> None:
    """A declaration of an epoch's end cannot hide a tail another one said was owed, nor
    add more than MAX_DECLARED_TAIL past what was seen."""
    if store.completeness is None:
        return
    since = stamp() - HOUR
    await store.append([sequenced("e0-0", 0, epoch=100)])
    # A forged 100:1 first, then the producer's own 100:6, then an absurd count.
    await store.append([sequenced("e1-0", 0, epoch=200, ended="100:1")])
    await store.append([sequenced("e1-1", 1, epoch=200, ended="100:6")])
    first, _ = await epochs(store)
    assert (first.end, first.ends, first.end_conflict) == (6, [1, 6], True)
    assert first.end_said is not None
    (tail,) = first.missing(first.end_said, grace=0)
    assert (tail.first, tail.last) == (1, 5)
    # Past what the producer could have sent unseen: nothing more is owed.
    for n, count in enumerate([MAX_DECLARED_TAIL + 2, 2**63 - 1], start=2):
        await store.append([sequenced(f"e1-{n}", n, epoch=200, ended=f"100:{count}")])
        first, _ = await epochs(store)
        assert first.end_said is not None
        (tail,) = first.missing(first.end_said, grace=0)
        assert (tail.first, tail.last) == (1, 5)
    # A million past the highest seen can be: a tail a producer lost in a crash.
    await store.append([sequenced("e1-4", 4, epoch=200, ended=f"100:{MAX_DECLARED_TAIL + 1}")])
    first, _ = await epochs(store)
    assert first.end_said is not None
    audit = await store.completeness.audit(since, stamp() + HOUR, cutoff=first.end_said, limit=10)
    assert sum(audit.missing_by_hour.values()) == MAX_DECLARED_TAIL
    assert audit.conflicting_ends == 1
    assert [(c.kind, c.first, c.last) for c in audit.conflicts] == [("ends", 1, 2**63 - 1)]


async def test_the_ledger_names_the_gaps_until_they_close(store: Store) -> None:
    if store.completeness is None:
        return  # no ledger: said by the test above
    # Out of order, a copy within one batch, a rejection (accounted for, not missing).
    outcomes = await store.append(
        [
            sequenced("g-0", 0),
            sequenced("g-3", 3),
            sequenced("g-3b", 3),
            sequenced("g-5", 5, rejected=True),
            sequenced("g-8", 8),
        ]
    )
    assert list(outcomes) == [None, None, PublisherDuplicate("producer-1", 0, 3), None, None]
    (entry,) = await epochs(store)
    assert [(g.first, g.last) for g in entry.gaps] == [(1, 2), (4, 4), (6, 7)]
    assert (entry.contiguous, entry.highest, entry.stored, entry.rejected) == (0, 8, 3, 1)
    opened = entry.gaps[0].opened
    # Missing once older than the grace period, not before.
    assert entry.missing(opened + 10, grace=60_000_000) == []
    assert [(g.first, g.last) for g in entry.missing(opened + 60_000_000, 60_000_000)] == [
        (1, 2),
        (4, 4),
        (6, 7),
    ]
    # Filling a gap from its middle and its edges: the ranges left keep their age.
    await store.append([sequenced("g-6", 6)])
    await store.append([sequenced("g-1", 1), sequenced("g-4", 4), sequenced("g-7", 7)])
    (entry,) = await epochs(store)
    assert [(g.first, g.last, g.opened) for g in entry.gaps] == [(2, 2, opened)]
    await store.append([sequenced("g-2", 2)])
    (entry,) = await epochs(store)
    assert (entry.contiguous, entry.gaps, entry.stored, entry.rejected) == (8, [], 8, 1)


async def test_a_rejection_fixed_and_stored_under_its_id_is_counted_stored_once(
    store: Store,
) -> None:
    """A message rejected as sent, then fixed and replayed under its message id (a
    record now): the epoch counts it stored, not rejected, and never twice."""
    if store.completeness is None:
        return
    since = stamp() - HOUR
    await store.append(
        [sequenced("f-0", 0), sequenced("f-1", 1, rejected=True), sequenced("f-2", 2)]
    )
    (entry,) = await epochs(store)
    assert (entry.contiguous, entry.stored, entry.rejected) == (2, 2, 1)
    # The fix, stored under its message id; then the same replay again, and the
    # rejection delivered again as it came.
    assert list(await store.append([sequenced("f-1", 1)])) == [None]
    await store.append([sequenced("f-1", 1)])
    await store.append([sequenced("f-1", 1, rejected=True)])
    await store.barrier()
    assert await store.seen(["f-1"]) == {"f-1": "stored"}
    (entry,) = await epochs(store)
    assert (entry.contiguous, entry.gaps, entry.stored, entry.rejected) == (2, [], 3, 0)
    assert (entry.duplicates, entry.conflicts) == (0, 0)
    audit = await store.completeness.audit(since, stamp() + HOUR, cutoff=stamp(), limit=10)
    # Each hour says what happened in it: the rejection, then the store.
    assert sum(h.stored for h in audit.hours) == 3
    assert sum(h.rejected for h in audit.hours) == 1


async def test_a_new_epoch_says_where_the_last_one_ended_and_an_old_one_is_a_zombie(
    store: Store,
) -> None:
    if store.completeness is None:
        return
    await store.append([sequenced("e0-0", 0), sequenced("e0-1", 1)])
    # The producer restarts as epoch 1 and says epoch 0 published 4 messages.
    await store.append([sequenced("e1-0", 0, epoch=1, ended="0:4")])
    # A message of epoch 0 still on its way, or a zombie publisher: stored, flagged.
    assert list(await store.append([sequenced("e0-2", 2)])) == [None]
    # A later epoch that says nothing of how epoch 1 ended.
    await store.append([sequenced("e2-0", 0, epoch=2)])
    await store.barrier()
    assert await store.seen(["e0-2"]) == {"e0-2": "stored"}
    first, second, third = await epochs(store)
    assert (first.epoch, first.end, first.highest, first.zombies) == (0, 4, 2, 1)
    # Sequence 3 never came: missing at the end of epoch 0, once the grace is over.
    assert first.end_said is not None
    (tail,) = first.missing(first.end_said, grace=0)
    assert (tail.first, tail.last) == (3, 3)
    assert (second.epoch, second.end, second.zombies) == (1, None, 0)
    assert (third.epoch, third.end) == (2, None)


@pytest.mark.slow
async def test_the_ledger_lists_every_producer_in_pages(store: Store) -> None:
    if store.completeness is None:
        return
    names = [f"p-{i:02}" for i in range(7)]
    await store.append([sequenced(f"l-{n}", 0, producer=n) for n in reversed(names)])
    await store.append([sequenced("l-x", 1, producer="p-03", epoch=4)])
    listed: list[str] = []
    after = ""
    for _ in range(10):
        page = await store.completeness.producers(after, 3)
        assert len(page) <= 3
        if not page:
            break
        listed += [p.producer for p in page]
        after = page[-1].producer
    assert listed == names
    assert [e.epoch for e in await epochs(store, "p-03")] == [0, 4]
    assert await store.completeness.producer("nobody") is None
