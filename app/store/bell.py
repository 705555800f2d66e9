"""The bell a store rings when rows may have become readable: followers wait on it.

A commit on this instance rings it at once; a store that learns of other
instances' commits (the serving tier's tail) rings it when it finds rows. A ring
only says "read again", and the read comes from the tail in memory: a thousand
waiting followers cost one read. `version` grows with every ring; a follower notes
it before it reads and waits for it to grow, so a ring in between is not lost.
A ring is a future every waiter of that moment shares: waiting makes no task.

Design: docs/reading.md#following-the-tail
"""

from __future__ import annotations

import asyncio


class Bell:
    def __init__(self) -> None:
        self.version = 0
        self.waiting = 0
        # Done at the next ring; made by the first waiter after a ring.
        self._rung: asyncio.Future[None] | None = None
        # Set while someone waits: a store that has to look for other instances'
        # commits does so only then.
        self.wanted = asyncio.Event()

    def ring(self) -> None:
        self.version += 1
        rung, self._rung = self._rung, None
        if rung is not None and not rung.done():
            rung.set_result(None)

    async def wait(
        self, seen: int, within: float, stop: asyncio.Future[None] | None = None
    ) -> bool:
        """Return once the bell rang since `version` was `seen` (True), or after
        `within` seconds or once `stop` is done (False)."""
        if self.version != seen:
            return True
        if self._rung is None:
            self._rung = asyncio.get_running_loop().create_future()
        waiting: set[asyncio.Future[None]] = {self._rung}
        if stop is not None:
            waiting.add(stop)
        self.waiting += 1
        self.wanted.set()
        try:
            await asyncio.wait(waiting, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.waiting -= 1
            if not self.waiting:
                self.wanted.clear()
        return self.version != seen
