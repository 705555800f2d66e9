"""The tail cache on its own: a reader that the test holds and releases."""

from __future__ import annotations

import asyncio

import msgspec

from app.records import Record
from app.store import PageQuery
from app.store.spanner.tail import TailCache
from tests.waiting import until


def record(message_id: str, ingest_time: int) -> Record:
    return Record(message_id=message_id, publish_time=ingest_time, ingest_time=ingest_time, id="r")


async def test_a_client_reads_its_own_commit_even_when_a_refresh_was_already_running() -> None:
    committed: list[Record] = []
    gate = asyncio.Event()

    async def read(since: int, before: int, limit: int) -> list[Record] | None:
        await gate.wait()
        found = [r for r in committed if since <= r.ingest_time < before]
        return found if len(found) <= limit else None

    cache = TailCache(read, refresh_seconds=3600)
    gate.set()
    await cache.refresh(1_000)  # the cache starts at t = 1,000, warmed with nothing
    gate.clear()
    # A follower's refresh up to 2,000 is under way when a commit lands at 2,500.
    follower = asyncio.create_task(cache.refresh(2_000))
    await asyncio.sleep(0)
    committed.append(record("m-1", 2_500))
    query = PageQuery(after_time=1_000, after_message_id="", before_time=3_000, limit=10)
    own = asyncio.create_task(cache.page(query, 3_000, past=2_500))
    await asyncio.sleep(0)
    gate.set()
    await follower
    page = await own
    # The page the committing client reads holds its record, and claims no
    # more than was read.
    assert [r.message_id for r in page.rows] == ["m-1"]
    assert page.complete_until == 3_000


class Committed:
    """What Spanner holds, read the way the tail reads it; every read's bound is kept."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.bounds: list[int] = []

    async def read(self, since: int, before: int, limit: int) -> list[Record] | None:
        self.bounds.append(before)
        found = [r for r in self.records if since <= r.ingest_time < before]
        return found if len(found) <= limit else None


async def test_a_refresh_that_finds_records_rings_whoever_asked_for_it() -> None:
    spanner = Committed()
    cache = TailCache(spanner.read, refresh_seconds=3600)
    await cache.refresh(1_000)
    rung = cache.live.version
    assert await cache.refresh(2_000) == 0
    assert cache.live.version == rung  # nothing found, nobody woken
    spanner.records.append(record("m-1", 2_500))
    # A follower's own read finds it: the others waiting then are told too.
    query = PageQuery(after_time=1_000, after_message_id="", before_time=3_000, limit=10)
    page = await cache.page(query, 3_000, past=2_500)
    assert [r.message_id for r in page.rows] == ["m-1"]
    assert cache.live.version == rung + 1


async def test_a_burst_larger_than_the_tail_rings_too() -> None:
    spanner = Committed()
    cache = TailCache(spanner.read, refresh_seconds=3600, max_rows=2)
    await cache.refresh(1_000)
    rung = cache.live.version
    spanner.records += [record(f"m-{i}", 1_500 + i) for i in range(3)]
    await cache.refresh(2_000)
    # The tail starts afresh after them; their followers read them from Spanner.
    assert cache.start == (2_000, "")
    assert cache.live.version == rung + 1


async def test_a_follower_woken_by_the_watch_reads_what_woke_it() -> None:
    # The store's read horizon lags its clock (Spanner serves a read a little in
    # the past at once): a follower's page ends there. A refresh past it would
    # ring for a record the page cannot hold yet, and never ring for it again.
    spanner = Committed()
    cache = TailCache(spanner.read, refresh_seconds=0.001)
    lag = 10_000
    clock = [1_000_000]

    def horizon() -> int:
        return clock[0] - lag

    await cache.refresh(horizon())
    watching = asyncio.create_task(cache.watch(horizon))
    try:
        after = PageQuery(after_time=horizon(), after_message_id="", before_time=0, limit=10)
        seen = cache.live.version
        page = await cache.page(msgspec.structs.replace(after, before_time=horizon()), horizon())
        assert page.rows == []
        waiting = asyncio.create_task(cache.live.wait(seen, 30))
        # Committed between the horizon and the clock: not readable yet.
        spanner.records.append(record("m-1", clock[0] - lag // 2))
        clock[0] += lag // 4
        # The watch refreshes up to it, finding nothing.
        await until(lambda: cache.end >= horizon(), timeout=10, interval=0.001, what="a refresh")
        await asyncio.sleep(0.01)  # a wake-up that should not come is waited out: time itself
        assert not waiting.done()
        clock[0] += lag
        assert await asyncio.wait_for(waiting, 10)
        page = await cache.page(msgspec.structs.replace(after, before_time=horizon()), horizon())
        assert [r.message_id for r in page.rows] == ["m-1"]
        assert max(spanner.bounds) <= horizon()  # never refreshed past the horizon
    finally:
        watching.cancel()
