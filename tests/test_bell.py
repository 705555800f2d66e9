"""The bell followers wait on: a ring wakes every waiter of its moment, each wait
ends at its own time or its stop, and a wait holds no task or timer of its own."""

from __future__ import annotations

import asyncio
from typing import Any

from app.store.bell import Bell
from tests.waiting import until


async def test_a_ring_wakes_every_waiter_and_a_ring_before_the_wait_is_not_lost() -> None:
    bell = Bell()
    seen = bell.version
    waits = [asyncio.ensure_future(bell.wait(seen, 30)) for _ in range(3)]
    await until(lambda: bell.waiting == 3, interval=0)
    bell.ring()
    assert await asyncio.gather(*waits) == [True, True, True]
    assert bell.waiting == 0
    # Rung since `seen`: the wait returns at once.
    assert await asyncio.wait_for(bell.wait(seen, 30), 1) is True


async def test_each_wait_ends_at_its_own_time_in_the_order_of_its_deadlines() -> None:
    bell = Bell()
    loop = asyncio.get_running_loop()
    started = loop.time()
    ended: dict[float, float] = {}

    async def wait(within: float) -> None:
        assert await bell.wait(bell.version, within) is False
        ended[within] = loop.time() - started

    # The longest first: the bell's one timer is moved earlier by each later wait.
    await asyncio.gather(wait(0.3), wait(0.2), wait(0.1))
    assert list(ended) == [0.1, 0.2, 0.3]
    for within, after in ended.items():
        assert after >= within - 0.002, ended
    assert bell.waiting == 0


async def test_a_stop_ends_only_its_own_wait_and_leaves_nothing_on_the_stop() -> None:
    bell = Bell()
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()
    stopped = asyncio.ensure_future(bell.wait(bell.version, 30, stop))
    other = asyncio.ensure_future(bell.wait(bell.version, 30))
    await until(lambda: bell.waiting == 2, interval=0)
    stop.set_result(None)
    assert await asyncio.wait_for(stopped, 1) is False
    assert not other.done()
    assert bell.waiting == 1
    # A stop already done: no wait at all.
    assert await asyncio.wait_for(bell.wait(bell.version, 30, stop), 1) is False
    bell.ring()
    assert await other is True


class CountedStop(asyncio.Future[None]):
    """A stop that counts the callbacks on it."""

    held = 0

    def add_done_callback(self, fn: Any, *, context: Any = None) -> None:
        self.held += 1
        super().add_done_callback(fn, context=context)

    def remove_done_callback(self, fn: Any) -> int:
        removed = super().remove_done_callback(fn)
        self.held -= removed
        return removed


async def test_a_thousand_waits_on_one_stop_leave_no_callback_on_it() -> None:
    """A follower waits on the bell again and again with the same `stop`: each wait
    takes its callback off the stop when it ends, rung or timed out."""
    bell = Bell()
    stop = CountedStop()
    for n in range(1000):
        wait = asyncio.ensure_future(bell.wait(bell.version, 0.001 if n % 2 else 30, stop))
        await until(lambda: bell.waiting == 1, interval=0)
        assert stop.held == 1
        if n % 2 == 0:
            bell.ring()
        assert await wait is (n % 2 == 0)
    assert stop.held == 0
    assert bell.waiting == 0


async def test_a_cancelled_wait_counts_no_more() -> None:
    bell = Bell()
    wait = asyncio.ensure_future(bell.wait(bell.version, 30))
    await until(lambda: bell.waiting == 1, interval=0)
    wait.cancel()
    await asyncio.gather(wait, return_exceptions=True)
    assert bell.waiting == 0
