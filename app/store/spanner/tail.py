"""The serving tier's tail: what this instance's followers read, refreshed from Spanner.

Each instance reads what was committed since its last read, once for every
follower that asks then and at most every `refresh_seconds`, and answers every
follower in the last `window_seconds` from memory (`app.store.tail`): Spanner's
load grows with instances, not followers. Each refresh reads `[end, now)` at
exactly `now`, so the tail answers as one read at `end` would.

Design: docs/stores.md#serving-reads
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from app.errors import StoreUnavailable
from app.records import Record
from app.store import Page, PageQuery
from app.store.live import Live
from app.store.tail import MAX_ROWS, Tail

log = logging.getLogger(__name__)

# (since, before, limit) -> every record in [since, before) in key order, or
# None if there are more than limit.
RangeRead = Callable[[int, int, int], Awaitable[list[Record] | None]]


class TailCache:
    """Records of the last `window_seconds`, read from Spanner as followers ask, and
    reported to `live` (the store's: its commits report there too)."""

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
        self.refresh_seconds = refresh_seconds
        self._max_rows = max_rows
        self._monotonic = monotonic
        self._window = int(window_seconds * 1_000_000)
        self.live = Live(Tail(window_seconds=window_seconds, max_rows=max_rows))
        # Empty until the first refresh: the tail is complete up to here.
        self.end = 0
        self._refreshed = -float("inf")
        self._refreshing: asyncio.Task[int] | None = None

    @property
    def start(self) -> tuple[int, str]:
        return self.live.tail.start

    def covers(self, query: PageQuery) -> bool:
        """Whether the cache holds every record after the query's cursor (up to `end`)."""
        return self.end > 0 and self.live.covers(query)

    async def page(self, query: PageQuery, now: int, *, past: int = 0) -> Page[Record]:
        """The page after a covered cursor, complete up to min(before_time, end).

        The cache is brought up to `now` first when it is due, or when it does
        not reach past `past` (this instance's own last commit: a client reads
        what it was just acknowledged, whatever the interval), or past the
        cursor itself (another instance served the page before, further on).
        """
        behind = self.end <= max(past, query.after_time)
        if query.before_time > self.end and (self.due() or behind):
            await self.refresh(now)
            if self.end <= past < now:
                # It joined a read that began before that commit: read again.
                await self.refresh(now)
        return self.live.page(query, self.end)

    async def watch(self, horizon: Callable[[], int]) -> None:
        """While followers wait, bring the cache up to `horizon()` (the store's read
        horizon) once per refresh interval for all of them (`Live.while_followed`):
        what another instance commits reaches them within the interval, and the
        reads grow with instances, never with followers. What a refresh finds is
        reported (readable: waiting followers read again).

        It refreshes only up to the read horizon, where every follower's page
        reaches, so a follower woken reads what woke it: a record reported past a
        page's bound would wake it to an empty page, and no report would come for
        that record again."""

        async def look() -> None:
            try:
                await self.refresh(horizon())
            except StoreUnavailable as exc:
                log.warning("tail not refreshed: %s", exc)

        await self.live.while_followed(look, self.refresh_seconds)

    def due(self) -> bool:
        return self._monotonic() - self._refreshed >= self.refresh_seconds

    async def refresh(self, now: int) -> int:
        """Bring the cache up to `now`, sharing one Spanner read with every caller
        that arrives while it runs; how many records it found."""
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._refresh(now))
        task = self._refreshing
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and self._refreshing is task:
                self._refreshing = None

    async def _refresh(self, now: int) -> int:
        self._refreshed = self._monotonic()
        if not self.end:
            # A cache starts with the records of its window (one read), so a
            # restart is no cliff for the followers near the tail; past what it
            # holds, it starts empty at now, and older records are read from
            # Spanner until their followers reach it.
            since = now - self._window
            warm = await self._read(since, now, self._max_rows)
            if warm is None:
                self.live.readable([], now=now, since=(now, ""))
            else:
                self.live.readable(warm, now=now, since=(since, ""))
            self.end = now
            return 0
        if now <= self.end:
            return 0
        found = await self._read(self.end, now, self._max_rows)
        if found is None:
            # More than the cache holds: start afresh after this range (its
            # followers read them from Spanner).
            self.end = now
            self.live.readable([], now=now, since=(now, ""))
            return 0
        self.end = now
        self.live.readable(found, now=now)  # waiting followers read again, if any found
        return len(found)
