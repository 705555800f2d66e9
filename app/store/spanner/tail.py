"""The newest records, kept in memory by each instance for the followers it serves.

Followers poll the tail. Each poll read from Spanner would make Spanner's
load grow with the number of followers; instead each instance reads what was
committed since its last read, once for every follower that asks at that
moment and at most every `refresh_seconds`, and answers every follower whose
cursor lies in the last `window_seconds` from memory. Spanner's load then
grows with instances, not followers.

Exactness. The cache holds every record with a key after `start` and an
ingest time before `end`. Each refresh reads the records in `[end, now)` at
exactly `now`: every commit before `now` has a timestamp before it, so once
read that range is complete, and the cache answers as one read at `end`
would. A page it serves says it is complete up to `end`, not further.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Awaitable, Callable
from typing import Final

from app.records import Record
from app.store import Page, PageQuery

# Records one refresh may bring; a larger burst empties the cache and the
# followers it would have served read Spanner until they are near the tail.
MAX_ROWS: Final = 50_000

Key = tuple[int, str]
# (since, before, limit) -> every record in [since, before) in key order, or
# None if there are more than limit.
RangeRead = Callable[[int, int, int], Awaitable[list[Record] | None]]


class TailCache:
    """Records of the last `window_seconds`, read from Spanner as followers ask."""

    def __init__(
        self,
        read: RangeRead,
        *,
        window_seconds: float = 60.0,
        refresh_seconds: float = 0.05,
        max_rows: int = MAX_ROWS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._window = int(window_seconds * 1_000_000)
        self._refresh_every = refresh_seconds
        self._max_rows = max_rows
        self._monotonic = monotonic
        self._rows: list[Record] = []
        self._keys: list[Key] = []
        # Empty until the first refresh: nothing lies after (end, "") below end.
        self.start: Key = (0, "")
        self.end = 0
        self._refreshed = -float("inf")
        self._refreshing: asyncio.Task[None] | None = None

    def covers(self, query: PageQuery) -> bool:
        """Whether the cache holds every record after the query's cursor (up to `end`)."""
        return self.end > 0 and (query.after_time, query.after_message_id) >= self.start

    async def page(self, query: PageQuery, now: int, *, past: int = 0) -> Page[Record]:
        """The page after a covered cursor, complete up to min(before_time, end).

        The cache is brought up to `now` first when it is due, or when it does
        not reach past `past` (this instance's own last commit: a client reads
        what it was just acknowledged, whatever the interval).
        """
        # Due, or behind this instance's own commit, or behind the cursor itself
        # (another instance served the page before, further on than this cache).
        behind = self.end <= max(past, query.after_time)
        if query.before_time > self.end and (self._due() or behind):
            await self.refresh(now)
            if self.end <= past < now:
                # It joined a read that began before that commit: read again.
                await self.refresh(now)
        before = min(query.before_time, self.end)
        cursor = (query.after_time, query.after_message_id)
        first = bisect.bisect_right(self._keys, cursor)
        last = bisect.bisect_left(self._keys, (before, ""), lo=first)
        records = self._rows[first : min(last, first + query.limit)]
        if len(records) == query.limit:
            after = (records[-1].ingest_time, records[-1].message_id)
        else:
            after = (before, "")
        return Page(records, *after, complete_until=before)

    def _due(self) -> bool:
        return self._monotonic() - self._refreshed >= self._refresh_every

    async def refresh(self, now: int) -> None:
        """Bring the cache up to `now`, sharing one Spanner read with every caller
        that arrives while it runs."""
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._refresh(now))
        task = self._refreshing
        try:
            await asyncio.shield(task)
        finally:
            if task.done() and self._refreshing is task:
                self._refreshing = None

    async def _refresh(self, now: int) -> None:
        self._refreshed = self._monotonic()
        if not self.end:
            # A cache starts empty, at now: records older than it are read
            # from Spanner until their followers reach it.
            self.start, self.end = (now, ""), now
            return
        if now <= self.end:
            return
        since = self.end
        found = await self._read(since, now, self._max_rows)
        if found is None:
            # More than the cache holds: start afresh after this range.
            self._rows, self._keys = [], []
            self.start, self.end = (now, ""), now
            return
        self._rows += found
        self._keys += [(r.ingest_time, r.message_id) for r in found]
        self.end = now
        self._evict(now - self._window)

    def _evict(self, oldest: int) -> None:
        cut = bisect.bisect_left(self._keys, (oldest, ""))
        cut = max(cut, len(self._keys) - self._max_rows)
        if cut > 0:
            self.start = self._keys[cut - 1]
            del self._rows[:cut], self._keys[:cut]
