"""The bell a store rings when rows may have become readable: followers wait on it.

A follower that found nothing new waits for the bell instead of asking again:
a commit on this instance rings it at once, a store that learns of other
instances' commits (the serving tier's tail, refreshed while anyone waits)
rings it when it finds rows. A ring only says "read again": the read itself
comes from the store's tail in memory, so a thousand waiting followers cost
one read between them, not a thousand.

`version` grows with every ring; a follower notes it before it reads and
waits for it to grow, so a ring between its read and its wait is not lost.
"""

from __future__ import annotations

import asyncio
import contextlib


class Bell:
    def __init__(self) -> None:
        self.version = 0
        self.waiting = 0
        self._rung = asyncio.Event()
        # Set while someone waits: a store that has to look for other instances'
        # commits does so only then.
        self.wanted = asyncio.Event()

    def ring(self) -> None:
        self.version += 1
        rung, self._rung = self._rung, asyncio.Event()
        rung.set()

    async def wait(self, seen: int, within: float) -> bool:
        """Return once the bell rang since `version` was `seen` (True), or after
        `within` seconds (False)."""
        if self.version != seen:
            return True
        rung = self._rung
        self.waiting += 1
        self.wanted.set()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await rung.wait()
        finally:
            self.waiting -= 1
            if not self.waiting:
                self.wanted.clear()
        return self.version != seen
