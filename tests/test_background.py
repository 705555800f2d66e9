"""What keeps background work bounded: backoff between attempts, daemon threads for
blocking clients, and the supervisor that restarts a store's loops."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import pytest

from app.errors import StoreUnavailable
from app.records import Record
from app.store import PageQuery
from app.store.backoff import Backoff
from app.store.duckdb.store import DuckDBStore
from app.store.supervisor import Supervisor
from app.threads import DaemonThreads
from tests.waiting import until


def test_backoff_doubles_to_its_ceiling_never_below_half_and_starts_over() -> None:
    lows = Backoff(1.0, 8.0, draw=lambda: 0.0)
    assert [lows.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    highs = Backoff(1.0, 8.0, draw=lambda: 0.999999)
    assert [round(highs.next(), 3) for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert highs.failures == 5
    highs.reset()
    assert (round(highs.next(), 3), highs.failures) == (1.0, 1)
    with pytest.raises(ValueError, match="initial <= maximum"):
        Backoff(2.0, 1.0)


def test_a_call_that_never_returns_does_not_hold_up_a_stop() -> None:
    threads = DaemonThreads(2, prefix="test")
    stuck = threading.Event()
    started = threads.submit(stuck.wait)
    queued = [threads.submit(stuck.wait) for _ in range(3)]
    until_started = threading.Event()
    threads.submit(until_started.set)  # queued behind the two stuck threads
    assert threads.busy == 2
    threads.shutdown(wait=False, cancel_futures=True)
    # What had not started is cancelled; the stuck calls are daemons, left behind.
    assert all(future.cancelled() for future in queued[1:])
    assert not started.done()
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("test_"))
    with pytest.raises(RuntimeError, match="after shutdown"):
        threads.submit(print)
    stuck.set()
    assert started.result(timeout=5) is True


@pytest.mark.slow
async def test_a_loop_that_fails_is_restarted_with_backoff_and_named_while_down() -> None:
    now = [0.0]
    restarted: list[str] = []

    class Observer:
        def restarted(self, loop: str) -> None:
            restarted.append(loop)

    supervisor = Supervisor(observer=Observer(), monotonic=lambda: now[0])
    await supervisor.start()
    runs = [0]
    calm = asyncio.Event()

    async def flaky() -> None:
        runs[0] += 1
        if runs[0] <= 2:
            raise RuntimeError(f"injected failure {runs[0]}")
        calm.set()
        await asyncio.Event().wait()  # runs for good from the third start

    supervisor.run("flaky", flaky, interval=10.0)
    await until(lambda: len(restarted) == 1, what="the first restart")
    assert supervisor.down() == []  # failing, but not yet for longer than its interval
    now[0] += 11.0
    assert supervisor.down() == ["flaky (RuntimeError: injected failure 1) for 11 s"]
    await asyncio.wait_for(calm.wait(), timeout=30)
    assert restarted == ["flaky", "flaky"]
    assert supervisor.restarts("flaky") == 2
    now[0] += 10.0  # a run as long as its interval ends the streak
    assert supervisor.down() == []
    await supervisor.close()


def test_backoff_leaves_the_shared_random_generator_alone() -> None:
    # Its jitter came from `random.random`: a background loop's draw changed the state
    # a test framework had seeded, which Hypothesis reports as a deprecated use of
    # `random` when it happens while a strategy draws.
    import random

    state = random.getstate()
    waits = [Backoff(0.1, 1.0).next() for _ in range(5)]
    assert random.getstate() == state
    assert all(0.05 <= wait <= 0.1 for wait in waits)


@pytest.mark.slow
async def test_a_loop_down_for_longer_than_its_interval_is_told_so_once_a_streak() -> None:
    now = [0.0]
    supervisor = Supervisor(monotonic=lambda: now[0])
    await supervisor.start()
    told: list[float] = []
    fail = [True]
    calm = asyncio.Event()

    async def step_down() -> None:
        told.append(now[0])

    async def failing() -> None:
        now[0] += 6.0  # each run fails six (clock) seconds after it starts
        if fail[0]:
            raise RuntimeError("injected: a bug")
        calm.set()
        await asyncio.Event().wait()

    supervisor.run("exporter", failing, interval=10.0, on_down=step_down)
    # Failing since its first run ended (6 s): down once that is over 10 s ago, at the
    # third failure (18 s), and told so then, once however long the streak goes on.
    await until(lambda: supervisor.restarts("exporter") >= 4, timeout=60, what="restarts")
    assert told == [18.0]
    fail[0] = False
    await asyncio.wait_for(calm.wait(), timeout=60)
    now[0] += 10.0  # a run as long as its interval ends the streak
    assert supervisor.down() == []
    await supervisor.close()


async def test_a_duckdb_applier_that_fails_is_restarted_and_named_while_down() -> None:
    restarted: list[str] = []
    broken = [False]

    class Observer:
        def restarted(self, loop: str) -> None:
            restarted.append(loop)

    def clock() -> int:
        # The applier reads the clock for the tail once a batch is in DuckDB: a
        # failure there is one nothing on its path catches.
        if broken[0]:
            raise RuntimeError("injected clock failure")
        return 5_000_000_000

    store = DuckDBStore(":memory:", clock=clock, loops=Observer(), apply_every=0.01)
    await store.start()
    try:
        record = Record(message_id="m", publish_time=1, ingest_time=4_000_000, id="a", data="[1]")
        broken[0] = True
        await store.append([record])  # durable once journaled, before it is applied
        down = await until(lambda: unready(store), what="readiness naming the applier")
        assert "applier (RuntimeError: injected clock failure)" in down
        assert set(restarted) == {"applier"}
        broken[0] = False
        assert await until(lambda: store.latest("a")) == record
        await until(lambda: ready(store), what="readiness once the applier runs again")
        # The batch it failed in was finished, not inserted again: its record
        # reached the tail, which a follower reads.
        query = PageQuery(after_time=0, after_message_id="", before_time=10**12, limit=10)
        assert store.live.covers(query)
        assert (await store.page(Record, query)).rows == [record]
    finally:
        await store.close()


async def unready(store: DuckDBStore) -> str:
    """Why the store is not ready; empty if it is."""
    try:
        await store.check()
    except StoreUnavailable as exc:
        return str(exc)
    return ""


async def ready(store: DuckDBStore) -> bool:
    return await unready(store) == ""


async def test_a_finite_loop_ends_when_its_body_returns_and_any_other_is_restarted() -> None:
    supervisor = Supervisor()
    await supervisor.start()
    runs = {"once": 0, "forever": 0}

    def returning(name: str) -> Callable[[], Awaitable[None]]:
        async def body() -> None:
            runs[name] += 1

        return body

    supervisor.run("once", returning("once"), interval=10.0, finite=True)
    supervisor.run("forever", returning("forever"), interval=10.0)
    # A loop that should never return is restarted when it does; by then, a finite one
    # restarted as well would have run twice too.
    await until(lambda: runs["forever"] >= 2, what="the returning loop started again")
    assert runs["once"] == 1
    assert supervisor.restarts("once") == 0
    assert supervisor.restarts("forever") == runs["forever"]  # each return a failure
    await supervisor.close()
