"""The Store contract: what the API relies on, checked on every store alike.

Each test runs once per entry of `STORES` (conftest.py). Nothing here knows
which store it talks to: a behaviour only one store has belongs in that
store's own tests.
"""

from __future__ import annotations

import json
import time
from typing import Any

from app.asgi import create_app
from app.records import Record, Rejection
from app.store import MessageStatus, PageQuery, Store
from tests.conftest import envelope, served, settings

BASE_TIME = 1_714_219_200_000_000  # 2024-04-27T12:00:00Z, µs
HOUR = 3_600_000_000
END = BASE_TIME + HOUR


def record(message_id: str, ingest_time: int, **fields: Any) -> Record:
    values: dict[str, Any] = {
        "publish_time": ingest_time - 1_000,
        "id": message_id,
        "data": '"Ejemplo de datos"',
        **fields,
    }
    return Record(message_id=message_id, ingest_time=ingest_time, **values)


def rejection(message_id: str, ingest_time: int, **fields: Any) -> Rejection:
    values: dict[str, Any] = {
        "publish_time": ingest_time - 1_000,
        "data": b"\xffnot json",
        "reason": "payload is not JSON",
        "attributes": '{"k":"v"}',
        **fields,
    }
    return Rejection(message_id=message_id, ingest_time=ingest_time, **values)


def query(
    after_time: int = 0, after_id: str = "", *, before: int = END, limit: int = 100
) -> PageQuery:
    return PageQuery(
        after_time=after_time, after_message_id=after_id, before_time=before, limit=limit
    )


def same(read: Record | None, written: Record) -> bool:
    """Equal rows; JSON columns compared as JSON (a store may respace them)."""
    if read is None:
        return False

    def normal(row: Record) -> dict[str, Any]:
        fields = {name: getattr(row, name) for name in row.__struct_fields__}
        return {**fields, "data": json.loads(row.data), "attributes": json.loads(row.attributes)}

    return normal(read) == normal(written)


async def walk(store: Store, *, limit: int, before: int = END) -> list[Record]:
    """Every record a follower of page tokens meets, from the start to `before`."""
    seen: list[Record] = []
    after_time, after_id = 0, ""
    for _ in range(1000):
        page = await store.page(query(after_time, after_id, before=before, limit=limit))
        seen += page.records
        assert (page.after_time, page.after_message_id) > (after_time, after_id), "no progress"
        after_time, after_id = page.after_time, page.after_message_id
        if (after_time, after_id) == (before, ""):
            return seen
    raise AssertionError("the walk did not end")


async def walk_rejections(store: Store, *, limit: int) -> list[Rejection]:
    seen: list[Rejection] = []
    after_time, after_id = 0, ""
    for _ in range(1000):
        page = await store.rejections(query(after_time, after_id, limit=limit))
        seen += page.rejections
        assert (page.after_time, page.after_message_id) > (after_time, after_id), "no progress"
        after_time, after_id = page.after_time, page.after_message_id
        if (after_time, after_id) == (END, ""):
            return seen
    raise AssertionError("the walk did not end")


async def test_rows_round_trip_through_every_read(store: Store) -> None:
    stored = record(
        "m-1",
        BASE_TIME,
        timestamp=BASE_TIME - 5_000_000,
        data='{"text": "Ejemplo de datos", "n": 1}',
        attributes='{"origin": "test"}',
        subscription="projects/p/subscriptions/s",
        delivery_attempt=2,
        trace_id="0af7651916cd43dd8448eb211c80319c",
    )
    refused = rejection("m-2", BASE_TIME + 1, subscription="projects/p/subscriptions/s")

    assert list(await store.append([stored, refused])) == [None, None]
    await store.barrier()

    (read,) = (await store.page(query())).records
    assert same(read, stored)
    assert same(await store.latest("m-1"), stored)
    status = await store.message("m-1")
    assert status is not None
    assert status.status == "stored"
    assert status.ingest_time == BASE_TIME
    assert status.reason is None
    assert same(status.record, stored)
    assert await store.message("m-2") == MessageStatus(
        status="rejected", ingest_time=BASE_TIME + 1, reason="payload is not JSON"
    )
    assert (await store.rejections(query())).rejections == [refused]  # raw bytes intact
    assert await store.message("never") is None
    assert await store.latest("never") is None


async def test_the_first_copy_of_a_message_is_the_only_one_any_read_shows(store: Store) -> None:
    first = [record(f"m-{i:02}", BASE_TIME + i * 1_000, data=f'"first {i}"') for i in range(10)]
    # A batch that carries a message twice keeps its first row.
    await store.append([*first[:5], record("m-03", BASE_TIME + 20_000, data='"same batch"')])
    await store.append(first[5:])
    # Redeliveries stored later: with other content, and an exact copy of a
    # row (a resent batch whose answer was lost).
    await store.append([record("m-02", BASE_TIME + 50_000, data='"redelivered"'), first[4]])
    await store.append([record("m-07", BASE_TIME + 60_000, id="m-07", data='"redelivered"')])
    await store.barrier()

    for limit in (1, 3, 100):
        seen = await walk(store, limit=limit)
        assert [(r.message_id, r.ingest_time, r.data) for r in seen] == [
            (r.message_id, r.ingest_time, r.data) for r in first
        ]
    status = await store.message("m-02")
    assert status is not None
    assert status.ingest_time == BASE_TIME + 2_000
    latest = await store.latest("m-07")
    assert latest is not None
    assert latest.data == '"first 7"'


async def test_a_page_is_bounded_and_says_where_the_next_one_starts(store: Store) -> None:
    await store.append([record(f"m-{i}", BASE_TIME + i) for i in range(5)])
    await store.barrier()
    # After (BASE_TIME + 1, "m-1"), before BASE_TIME + 4: the rows between.
    short = await store.page(query(BASE_TIME + 1, "m-1", before=BASE_TIME + 4, limit=10))
    assert [r.message_id for r in short.records] == ["m-2", "m-3"]
    # A short page examined its whole range: the next one starts at its end.
    assert (short.after_time, short.after_message_id) == (BASE_TIME + 4, "")
    # A full page goes on after its last row.
    full = await store.page(query(BASE_TIME, "", limit=2))
    assert [r.message_id for r in full.records] == ["m-0", "m-1"]
    assert (full.after_time, full.after_message_id) == (BASE_TIME + 1, "m-1")
    # The cursor is exclusive on the whole key: equal times order by message id.
    await store.append([record("m-5a", BASE_TIME + 1), record("m-0z", BASE_TIME + 1)])
    await store.barrier()
    tie = await store.page(query(BASE_TIME + 1, "m-0z", before=BASE_TIME + 2))
    assert [r.message_id for r in tie.records] == ["m-1", "m-5a"]


async def test_every_row_below_the_read_horizon_is_readable(store: Store) -> None:
    now = time.time_ns() // 1000
    rows = [record(f"h-{i}", now - 1_000_000 + i) for i in range(20)]
    await store.append(rows)
    await store.barrier()
    horizon = store.read_horizon(now)
    assert horizon <= now
    assert horizon > max(r.ingest_time for r in rows), "acknowledged rows held back"
    seen = await walk(store, limit=7, before=horizon)
    assert [r.message_id for r in seen] == [r.message_id for r in rows]


async def test_reads_see_acknowledged_writes_once_past_the_barrier(store: Store) -> None:
    for i in range(3):
        await store.append([record(f"w-{i}", BASE_TIME + i, id="w")])
        await store.barrier()
        latest = await store.latest("w")
        assert latest is not None
        assert latest.message_id == f"w-{i}"
        status = await store.message(f"w-{i}")
        assert status is not None
        assert status.status == "stored"
        assert await store.seen([f"w-{i}"]) == {f"w-{i}": "stored"}


async def test_latest_breaks_every_tie_the_same_way(store: Store) -> None:
    await store.append(
        [
            # An event time beats none; the later event time wins.
            record("a-1", BASE_TIME, id="a", timestamp=BASE_TIME - 10, data='"old event"'),
            record("a-2", BASE_TIME + 1, id="a", timestamp=None, publish_time=BASE_TIME + 9),
            record("a-3", BASE_TIME + 2, id="a", timestamp=BASE_TIME - 5, publish_time=0),
            # Without event times, the later publish wins.
            record("b-1", BASE_TIME + 3, id="b", publish_time=BASE_TIME + 2),
            record("b-2", BASE_TIME + 4, id="b", publish_time=BASE_TIME + 1),
            # Same event and publish time: the later write wins.
            record("c-2", BASE_TIME + 5, id="c", timestamp=BASE_TIME, publish_time=BASE_TIME),
            record("c-1", BASE_TIME + 6, id="c", timestamp=BASE_TIME, publish_time=BASE_TIME),
            # Everything equal but the message id: the greater one, so the
            # choice never depends on how rows happen to be laid out.
            record("d-1", BASE_TIME + 7, id="d", timestamp=BASE_TIME, publish_time=BASE_TIME),
            record("d-3", BASE_TIME + 7, id="d", timestamp=BASE_TIME, publish_time=BASE_TIME),
            record("d-2", BASE_TIME + 7, id="d", timestamp=BASE_TIME, publish_time=BASE_TIME),
        ]
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
    await store.append([rejection("m-1", BASE_TIME), record("m-1", BASE_TIME + 10)])
    await store.append(
        [rejection("m-2", BASE_TIME + 20), record("m-3", BASE_TIME + 30)],
    )
    await store.append([record("m-3", BASE_TIME + 40)])
    await store.barrier()
    # A message rejected once and stored since (a replay) is stored.
    status = await store.message("m-1")
    assert status is not None
    assert (status.status, status.ingest_time) == ("stored", BASE_TIME + 10)
    rejected = await store.message("m-2")
    assert rejected is not None
    assert (rejected.status, rejected.reason) == (
        "rejected",
        "payload is not JSON",
    )
    # One read for a batch; each message once, however often it is asked for.
    states = await store.seen(["m-1", "m-2", "m-3", "never", "m-2"])
    assert states == {"m-1": "stored", "m-2": "rejected", "m-3": "stored"}
    assert await store.seen([]) == {}


async def test_rejections_page_in_key_order(store: Store) -> None:
    rows = [rejection(f"x-{i}", BASE_TIME + i * 1_000) for i in range(5)]
    await store.append(rows[:3])
    await store.append([record("ok", BASE_TIME + 1), *rows[3:]])
    await store.barrier()
    for limit in (2, 100):
        assert await walk_rejections(store, limit=limit) == rows


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
        assert (
            await client.get("/v1/rejections", params={"until": "2000-01-01T00:00:00Z"})
        ).status_code == 410
        page = (await client.get("/v1/records")).json()
        assert [r["message_id"] for r in page["records"]] == ["m1"]
