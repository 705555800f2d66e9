"""Following's store side (`app.store.live`): what a store reports reaches the tail and
wakes its followers; the store learns only whether anyone follows."""

from __future__ import annotations

import asyncio

from app.records import Record, Rejection
from app.store import PageQuery
from app.store.live import FOLLOWED_SECONDS, Live
from app.store.tail import Tail
from tests.waiting import until

EVERYTHING = PageQuery(after_time=0, after_message_id="", before_time=2**62, limit=100)


def record(message_id: str, ingest_time: int) -> Record:
    return Record(message_id=message_id, publish_time=0, ingest_time=ingest_time, id="r")


def rejection(message_id: str, ingest_time: int) -> Rejection:
    return Rejection(message_id=message_id, publish_time=0, ingest_time=ingest_time, reason="x")


async def test_rows_reported_readable_wake_every_follower_and_records_join_the_tail() -> None:
    live = Live(Tail())
    live.readable([], now=0, since=(0, ""))  # a tail that starts at 0, empty
    seen = live.version
    waits = [asyncio.ensure_future(live.wait(seen, 30)) for _ in range(3)]
    await until(lambda: live.waiting == 3, interval=0)
    live.readable([record("m-2", 20), rejection("x-1", 15), record("m-1", 10)], now=30)
    assert await asyncio.gather(*waits) == [True, True, True]
    assert live.waiting == 0
    assert live.covers(EVERYTHING)
    # Records only, in key order whatever order they were reported in.
    assert [r.message_id for r in live.page(EVERYTHING, 2**62).rows] == ["m-1", "m-2"]
    # Reported since `seen`: a wait returns at once.
    assert await asyncio.wait_for(live.wait(seen, 30), 1) is True


async def test_nothing_reported_wakes_nobody_and_rows_held_elsewhere_wake_them() -> None:
    live = Live()
    seen = live.version
    live.readable([], now=0)
    assert live.version == seen
    wait = asyncio.ensure_future(live.wait(seen, 30))
    await until(lambda: live.waiting, interval=0)
    live.arrived()  # another instance's commits, say: the followers' reads find them
    assert await wait
    # A store with no tail of its own covers no page: each is a query.
    assert not live.covers(EVERYTHING)


async def test_a_tail_started_afresh_holds_only_what_follows_its_start() -> None:
    live = Live(Tail())
    live.readable([record("m-1", 10)], now=10, since=(0, ""))
    live.readable([], now=50, since=(50, ""))  # lost track of what came since: from 50 on
    assert not live.covers(EVERYTHING)
    after = PageQuery(after_time=50, after_message_id="", before_time=2**62, limit=100)
    assert live.covers(after)
    live.readable([record("m-0", 40), record("m-2", 60)], now=60)
    assert [r.message_id for r in live.page(after, 2**62).rows] == ["m-2"]


async def test_a_cancelled_wait_counts_no_more() -> None:
    live = Live()
    wait = asyncio.ensure_future(live.wait(live.version, 30))
    await until(lambda: live.waiting == 1, interval=0)
    assert live.followed
    wait.cancel()
    await asyncio.gather(wait, return_exceptions=True)
    assert live.waiting == 0
    assert not live.followed


async def test_a_store_is_followed_while_someone_waits_and_a_moment_after_it_was_woken() -> None:
    now = [1000.0]
    live = Live(clock=lambda: now[0])
    assert not live.followed
    live.arrived()  # nobody to wake: no follower read follows it
    assert not live.followed
    wait = asyncio.ensure_future(live.wait(live.version, 30))
    await until(lambda: live.waiting, interval=0)
    assert live.followed
    live.arrived()
    assert await wait
    # Woken, the follower reads before it waits again: followed all the same.
    assert live.waiting == 0
    assert live.followed
    now[0] += FOLLOWED_SECONDS - 0.01
    assert live.followed
    now[0] += 0.02
    assert not live.followed


async def test_a_store_looks_for_rows_only_while_someone_waits_once_for_all_of_them() -> None:
    live = Live()
    looks = 0

    async def look() -> None:
        nonlocal looks
        looks += 1
        live.arrived()  # found rows: the followers read again

    looking = asyncio.ensure_future(live.while_followed(look, 0.01))
    try:
        await asyncio.sleep(0.05)  # nobody waits: no look
        assert looks == 0
        waits = [asyncio.ensure_future(live.wait(live.version, 30)) for _ in range(3)]
        assert await asyncio.wait_for(asyncio.gather(*waits), 5) == [True, True, True]
        assert looks == 1  # one look woke all three
        await asyncio.sleep(0.05)  # nobody waits again: no more looks
        assert looks == 1
    finally:
        looking.cancel()
