"""Following's store side: the tail (the newest records in memory), the bell followers
wait on, and whether anyone follows, fed by every store through two calls.

A store only reports: `readable`, rows that became readable here (new records join the
tail), and `arrived`, rows that may be readable that it does not hold (another
instance's commits, a settle window passed). Either wakes the waiting followers
(`app.query.follow`). A store asks back `followed` (DuckDB shows journaled records to
the tail only then); one that learns of rows by looking looks only `while_followed`.
Design: docs/reading.md#following-the-tail
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable

from app.records import Record, Rejection
from app.store.bell import Bell
from app.store.pages import Page, PageQuery
from app.store.tail import Key, Tail

# A follower woken this recently is taken to be reading, to wait again next
# (`followed`): a ring leaves no one waiting for the moment of that read.
FOLLOWED_SECONDS = 1.0


class Live:
    """What one store's followers wait on, and read at the tail (`tail`: empty where the
    store reports no rows as readable, and every page is a query, BigQuery's)."""

    def __init__(
        self, tail: Tail | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.tail = tail if tail is not None else Tail()
        self._bell = Bell()
        # Followers waiting now, and set while there are any (`while_followed`).
        self.waiting = 0
        self._waited = asyncio.Event()
        # When a ring last woke someone, by `clock` (seconds).
        self._clock = clock
        self._woke_at = -math.inf

    # -- what stores report ------------------------------------------------------

    def readable(
        self, rows: Iterable[Record | Rejection], *, now: int, since: Key | None = None
    ) -> None:
        """`rows` are readable here from now on (µs, the store's clock: the tail holds
        the window before it), each new record of them the copy the store keeps, in
        any order. With `since`, the tail starts afresh: `rows` hold every record after
        it (a store warming its tail as it starts, or one that lost track of it).
        Waiting followers read again, if anything became readable."""
        rows = list(rows)
        records = [r for r in rows if type(r) is Record]
        if since is not None:
            self.tail.fill(since, records)
        else:
            self.tail.add(records, now=now)
        if rows or since is not None:
            self._ring()

    def arrived(self, rows: Iterable[Record | Rejection] | None = None) -> None:
        """Rows may have become readable that are not held here (`rows`, where the store
        knows which; None where it cannot tell): waiting followers read again, and the
        store's reads find them."""
        self._ring()

    @property
    def followed(self) -> bool:
        """Whether followers want rows now: someone waits, or was woken within
        FOLLOWED_SECONDS and is likely reading before it waits again."""
        return bool(self.waiting) or self._clock() - self._woke_at < FOLLOWED_SECONDS

    async def while_followed(self, look: Callable[[], Awaitable[object]], every: float) -> None:
        """For ever: while followers wait, `look` for rows every `every` seconds, once
        for all of them (it reports what it finds). For a store that learns of rows by
        looking (another instance's commits, a settle window that passes), so its looks
        grow with instances, never with followers; none while nobody waits."""
        while True:
            await self._waited.wait()
            await asyncio.sleep(every)
            if self.waiting:
                await look()

    def _ring(self) -> None:
        if self._bell.waiting:
            self._woke_at = self._clock()
        self._bell.ring()

    # -- what followers ask ------------------------------------------------------

    @property
    def version(self) -> int:
        """Grows with every report of rows: a follower notes it before it reads and
        waits for it to grow, so no report is lost between the two."""
        return self._bell.version

    async def wait(
        self, seen: int, within: float, stop: asyncio.Future[None] | None = None
    ) -> bool:
        """Return once rows were reported since `version` was `seen` (True), or after
        `within` seconds or once `stop` is done (False)."""
        if self._bell.version != seen:
            return True
        if stop is not None and stop.done():
            return False
        self.waiting += 1
        self._waited.set()
        try:
            return await self._bell.wait(seen, within, stop)
        finally:
            self.waiting -= 1
            if not self.waiting:
                self._waited.clear()

    def covers(self, query: PageQuery) -> bool:
        """Whether the tail holds every record after the query's cursor (`Tail.covers`)."""
        return self.tail.covers(query)

    def page(self, query: PageQuery, until: int) -> Page[Record]:
        """The tail's page after a covered cursor, complete up to min(before_time, until)."""
        return self.tail.page(query, until)
