"""The access record kept in the system's own store, and read back by operators.

`AccessKeeper` holds each line the access log writes (app.http.access) until its own
loop writes them to the store a batch at a time: a request is answered whether or not its
line is kept yet; lines a refusing store leaves waiting are bounded in bytes (past it the
newest are dropped, counted and said by `/readyz`; Cloud Logging still has each), and
what waits as the app stops is written in the stop's budget. `AccessReads` is `GET
/v1/access`: the lines newest first, a page at a time.

Design: docs/security.md#who-read-what
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import time
from collections import deque
from datetime import datetime
from typing import Any, Final

import msgspec

from app.errors import BadParameter, NotFound, StoreUnavailable
from app.query.page_token import PageToken, PageTokens
from app.query.served import served
from app.records import DAY_MICROS, micros, rfc3339_micros
from app.store import Store
from app.store.access import (
    ACCESS_RETENTION_DAYS,
    MOST_LINES,
    AccessLine,
    AccessQuery,
    KeepsAccess,
)
from app.store.backoff import Backoff
from app.store.supervisor import LoopObserver

log = logging.getLogger(__name__)

# Lines are written a batch at a time, at most so many a call, every so often (at once
# once a batch is full), each write given so long.
BATCH_LINES: Final = 500
KEEP_EVERY_SECONDS: Final = 2.0
KEEP_SECONDS: Final = 10.0
# What may wait for the store, in bytes the process holds for the lines (their JSON and
# HELD_PER_LINE each): a few minutes of a busy system's lines (some 300 bytes of JSON
# each), nothing beside a page's bytes. A process's: a cell's systems share it
# (ACCESS_SHARE_LEAST_BYTES each at least).
MOST_WAITING_BYTES: Final = 4 * 1024 * 1024
# What a line waiting holds besides its JSON (its place in line, its time, its number,
# the three fields a read filters on, a principal of its own), counted with it: the
# bound is what the process holds, not a fraction of it (the log's entry it was made
# of, several times its JSON, is not held).
HELD_PER_LINE: Final = 320
ACCESS_SHARE_LEAST_BYTES: Final = 64 * 1024
# A line waiting longer than this says the record is behind (`/readyz`'s warning).
LATE_SECONDS: Final = 60.0
# A page of the record, unless the caller asks for fewer.
DEFAULT_LINES: Final = 100
# The time a page reads at most: a week of lines, some 700 MB at the busiest a store
# keeps (100 MB a day), within RECORDLINE_QUERY_MAX_BYTES_BILLED's 2 GiB.
WINDOW_MICROS: Final = 7 * 86_400_000_000
# How far ahead of this instance's clock another's may have stamped a line.
CLOCKS_AGREE_MICROS: Final = 60_000_000
# Writes that failed in a row back off from the interval to this.
BACKOFF_MAX_SECONDS: Final = 60.0

_encode = msgspec.json.Encoder().encode


class AccessKeeper:
    """The lines of one system's access record on their way to its store."""

    def __init__(
        self,
        store: KeepsAccess,
        *,
        observer: LoopObserver | None = None,
        most_bytes: int = MOST_WAITING_BYTES,
        clock: Any = time.time_ns,
    ) -> None:
        self._store = store
        self._most = most_bytes
        # Told of each failed write, as a loop's restart (the loop-restarting ticket).
        self._observer = observer
        self._clock = clock
        # Lines made here are told apart from every other instance's by this.
        self._instance = os.urandom(6).hex()
        self._numbered = 0
        # Each line waiting: when its request ended (ns), its number, its JSON, and the
        # fields a read filters on (action, principal, status); not the log's entry, whose
        # objects hold several times its JSON.
        self._waiting: deque[tuple[int, int, bytes, str, str | None, int]] = deque()
        self._bytes = 0
        self.dropped = 0
        self._full = asyncio.Event()
        self._failing: str | None = None
        self._backoff = Backoff(KEEP_EVERY_SECONDS, BACKOFF_MAX_SECONDS)
        self._pause = KEEP_EVERY_SECONDS

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def add(self, entry: dict[str, Any]) -> None:
        """Keep `entry`, a line of the access log, once the loop writes it (its JSON
        made here, the rest of the line there: every read answered rows calls this)."""
        text = _encode(entry)
        size = len(text) + HELD_PER_LINE
        if self._bytes + size > self._most:
            self._drop()
            return
        self._bytes += size
        self._numbered += 1
        self._waiting.append(
            (
                self._clock(),
                self._numbered,
                text,
                entry["action"],
                entry["principal"],
                entry["status"],
            )
        )
        if len(self._waiting) >= BATCH_LINES:
            self._full.set()

    def _drop(self) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.error(
                "the access record's store is behind: %d lines dropped from it so far "
                "(each is still on the recordline.access log)",
                self.dropped,
            )

    def _line(self, waiting: tuple[int, int, bytes, str, str | None, int]) -> AccessLine:
        """A line waiting as the store keeps it: a write tried again sends the same
        lines, ids and all."""
        nanos, number, text, action, principal, status = waiting
        return AccessLine(
            time=nanos // 1000,
            id=f"{self._instance}-{number:012d}",
            action=action,
            principal=principal,
            status=status,
            entry=text.decode(),
        )

    async def forever(self) -> None:
        """Write what waits, a batch at a time, every KEEP_EVERY_SECONDS (at once when
        a batch is full), backing off while the store refuses."""
        while True:
            if self._failing is None:
                # A full batch ends the pause early.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._pause):
                        await self._full.wait()
            else:
                # The store refused: the pause is a backoff's, however many wait.
                await asyncio.sleep(self._pause)
            self._full.clear()
            try:
                await self.write()
            except (StoreUnavailable, TimeoutError) as exc:
                self._failing = str(exc) or type(exc).__name__
                self._pause = self._backoff.next()
                log.error(
                    "the access loop failed to keep %d lines; trying again in %.1f s: %s",
                    len(self._waiting),
                    self._pause,
                    self._failing,
                )
                if self._observer is not None:
                    self._observer.restarted("access")
            else:
                self._failing = None
                self._backoff.reset()
                self._pause = KEEP_EVERY_SECONDS

    async def write(self, within: float = KEEP_SECONDS) -> None:
        """Write every line waiting, a batch a call, each call given `within` seconds;
        a batch that fails is kept waiting, first in line."""
        while self._waiting:
            batch = [self._line(w) for w in itertools.islice(self._waiting, BATCH_LINES)]
            async with asyncio.timeout(within):
                await self._store.keep_access(batch)
            for _ in batch:
                self._bytes -= len(self._waiting.popleft()[2]) + HELD_PER_LINE

    async def close(self, within: float) -> None:
        """Write what waits, within `within` seconds; what is left is said and lost
        to the store (Cloud Logging has it)."""
        try:
            async with asyncio.timeout(max(within, 0.0)):
                await self.write(within=max(within, 0.0))
        except (StoreUnavailable, TimeoutError) as exc:
            log.error(
                "the access record's last %d lines were not kept as the service stopped "
                "(each is on the recordline.access log): %s",
                len(self._waiting),
                str(exc) or type(exc).__name__,
            )

    def warnings(self) -> list[str]:
        """What `/readyz` says of the record while it is behind."""
        said = []
        if self._waiting:
            late = (self._clock() - self._waiting[0][0]) / 1e9
            if late > LATE_SECONDS or self._failing is not None:
                said.append(
                    f"the access record is not being kept: {len(self._waiting)} lines "
                    f"waiting, the oldest {late:.0f} s"
                    + (f" ({self._failing})" if self._failing else "")
                )
        if self.dropped:
            said.append(
                f"the access record's store dropped {self.dropped} lines since the start "
                "(each is on the recordline.access log)"
            )
        return said


class AccessLineView(msgspec.Struct, kw_only=True):
    """A line of the access record as `GET /v1/access` shows it."""

    time: str
    id: str
    line: msgspec.Raw


class AccessPage(msgspec.Struct, kw_only=True):
    lines: list[AccessLineView]
    next_page_token: str | None


class AccessReads:
    """`GET /v1/access`: one system's access record, newest first."""

    def __init__(
        self, store: Store | KeepsAccess, tokens: PageTokens, *, clock: Any = time.time_ns
    ) -> None:
        self._store = store if isinstance(store, KeepsAccess) else None
        self._tokens = tokens
        self._clock = clock

    def _token(self, low: int, asked: str, time: int, line_id: str) -> str:
        """A page token going on before (`time`, `line_id`), no older than `low`."""
        return self._tokens.encode(
            PageToken(
                after_time=low,
                after_message_id=asked,
                until=time,
                listing="access",
                newest=True,
                before_message_id=line_id,
            )
        )

    async def page(
        self,
        *,
        since: datetime | None,
        until: datetime | None,
        action: str | None,
        principal: str | None,
        limit: int,
        page_token: str | None,
    ) -> AccessPage:
        if self._store is None:
            raise NotFound("this store keeps no access record: it is on the recordline.access log")
        asked = _asked(action, principal)
        if page_token is not None:
            token = self._tokens.decode(page_token)
            if token.listing != "access":
                raise BadParameter("page_token", f"was issued by /v1/{token.listing or 'records'}")
            if token.after_message_id != asked:
                raise BadParameter(
                    "page_token", "was issued with another action or principal; send those again"
                )
            low, high = token.after_time, token.until or 0
            before: tuple[int, str] | None = (high, token.before_message_id)
            high += 1
        else:
            # No line is older than the record keeps, nor later than now (and the
            # clocks of the instances that wrote them agree within seconds).
            now = self._clock() // 1000 + CLOCKS_AGREE_MICROS
            oldest = max(now - (ACCESS_RETENTION_DAYS + 1) * DAY_MICROS, 0)
            low = oldest if since is None else max(_micros(since), oldest)
            high = now if until is None else min(_micros(until), now)
            before = None
            # As asked, not as bounded: a range wholly later than now, or older than the
            # record keeps, holds none (an empty page); it is no range ending before it starts.
            if until is not None and since is not None and until <= since:
                raise BadParameter("until", "must be later than since")
        # A page reads one window of time at most, the newest of what is asked: what a
        # read bills is bounded (BigQuery's, by the days it reaches) however old the
        # record, and a window that holds fewer lines than asked ends the page with a
        # token to the window before it.
        start = max(low, high - WINDOW_MICROS)
        query = AccessQuery(
            since=start,
            until=high,
            before=before,
            action=action,
            principal=principal,
            limit=limit,
        )
        lines = await self._store.access_page(query) if high > start else []
        # Who read the record is on it too.
        served(len(lines), masked=False)
        next_token = None
        if len(lines) == limit:
            last = lines[-1]
            next_token = self._token(low, asked, last.time, last.id)
        elif start > low:
            # Every line of the window read: on from its start (before it, any id).
            next_token = self._token(low, asked, start, "")
        return AccessPage(
            lines=[
                AccessLineView(
                    time=rfc3339_micros(line.time),
                    id=line.id,
                    line=msgspec.Raw(line.entry.encode()),
                )
                for line in lines
            ],
            next_page_token=next_token,
        )


def _asked(action: str | None, principal: str | None) -> str:
    """What a page token says of the action and principal asked (a digest of them):
    every later page keeps them."""
    said = _encode([action, principal])
    return hashlib.sha256(said).hexdigest()[:32]


def _micros(when: datetime) -> int:
    # No line is older than the epoch.
    return max(micros(when), 0)


__all__ = ["MOST_LINES", "AccessKeeper", "AccessPage", "AccessReads"]
