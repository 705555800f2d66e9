"""The bell followers wait on (`app.store.live` rings it as stores report rows).

A ring only says "read again" (a thousand followers, one read); a follower notes
`version` before it reads and waits for it to grow, so no ring is lost. Waiting
makes no task: one future a waiter, and one timer for the earliest deadline.
docs/reading.md#following-the-tail
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools

# A deadline this close is due: a loop may run a timer up to its clock's
# resolution early, and the waiter then waits again for what is left.
DUE_EARLY_SECONDS = 0.001


def _wake(woken: asyncio.Future[None], *_: object) -> None:
    if not woken.done():
        woken.set_result(None)


class Bell:
    def __init__(self) -> None:
        self.version = 0
        self.waiting = 0
        # Each waiter of this moment: (deadline, arrival, future), the earliest first.
        # A ring wakes them all; one woken otherwise (`stop`) stays until its deadline.
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()
        # The loop's timer for the earliest deadline, while there is one.
        self._timer: asyncio.TimerHandle | None = None

    def ring(self) -> None:
        self.version += 1
        waiters, self._waiters = self._waiters, []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for _, _, woken in waiters:
            _wake(woken)

    async def wait(
        self, seen: int, within: float, stop: asyncio.Future[None] | None = None
    ) -> bool:
        """Return once the bell rang since `version` was `seen` (True), or after
        `within` seconds or once `stop` is done (False)."""
        if self.version != seen:
            return True
        if stop is not None and stop.done():
            return False
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        deadline = loop.time() + within
        heapq.heappush(self._waiters, (deadline, next(self._arrivals), woken))
        if self._timer is None or deadline < self._timer.when():
            self._arm(loop, deadline)
        stopped = None
        if stop is not None:
            stopped = functools.partial(_wake, woken)
            stop.add_done_callback(stopped)
        self.waiting += 1
        try:
            await woken
        finally:
            if stopped is not None and stop is not None:
                stop.remove_done_callback(stopped)
            self.waiting -= 1
        return self.version != seen

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._due, loop)

    def _due(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wake the waiters whose time is up, and set the timer for the next."""
        self._timer = None
        waiters = self._waiters
        now = loop.time() + DUE_EARLY_SECONDS
        while waiters and waiters[0][0] <= now:
            _wake(heapq.heappop(waiters)[2])
        if waiters:
            self._arm(loop, waiters[0][0])
