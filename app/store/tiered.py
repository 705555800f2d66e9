"""BigQuery with a serving tier: Spanner holds the recent rows readers ask for.

BigQuery stays the analytics store, written through the Storage Write API as
without the tier; Spanner (`app.store.spanner`) takes every row first and
serves every read of its retention, in milliseconds and at a price that does
not grow with followers or with the table.

Writing. A group commit is one Spanner transaction, then one append of the
same rows to BigQuery, each row carrying Spanner's commit timestamp as its
`ingest_time`. The batch is acknowledged only when both are durable; a
failure of either is a 503 and Pub/Sub delivers again. A redelivered message
Spanner holds already is appended to BigQuery again as Spanner holds it (same
content, same ingest time), so no acknowledged message is ever in one store
and missing from the other; BigQuery's reads collapse such identical copies.

Reading. `serving_since` is where Spanner's reads begin: the dedupe window
and a day before now, rounded down to a day. A cursor at or after it reads
Spanner: one read at an exact time, so a page is complete up to its bound and
no settle window is needed. An older cursor reads BigQuery up to that day,
where no row can still land: every row is appended with an ingest time at
most a write deadline old. Look-ups ask Spanner, and BigQuery only about
rows older than Spanner's reach, whose answers cannot change until the next
day begins and are kept until then.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import msgspec

from app.errors import StoreUnavailable
from app.records import DAY_MICROS, Record, Rejection
from app.store import MessageState, MessageStatus, Page, PageQuery, R, RowOutcome
from app.store.bigquery.store import BigQueryStore
from app.store.copies import ConflictObserver, differing
from app.store.spanner.serving import SchemaMismatch, SpannerServing
from app.store.spanner.tail import TailCache

log = logging.getLogger(__name__)
T = TypeVar("T")


# Pages are read at a time this far behind now: Spanner's leader serves such a
# read at once, where a read at "now" may wait out its clock's uncertainty
# (a few milliseconds). A follower sees a commit this much later, no more.
READ_LAG_MICROS: Final = 10_000

# How long start waits for Spanner to show its schema before going on without
# it (readiness stays red, pushes get 503, until it answers).
_VERIFY_AT_START_SECONDS: Final = 5.0

# Look-ups of rows older than Spanner's reach kept at most; each answer holds
# one record, so 10,000 is a few megabytes.
_OLD_ANSWERS: Final = 10_000


def _rank(record: Record) -> tuple[bool, int, int, int, str]:
    # The order `latest` picks by: an event time beats none, then the later
    # event, publish, write and message id (the same as every store's SQL).
    return (
        record.timestamp is not None,
        record.timestamp or 0,
        record.publish_time,
        record.ingest_time,
        record.message_id,
    )


class _OldAnswers:
    """Answers about rows older than Spanner's reach, until that reach moves."""

    def __init__(self) -> None:
        self._since = -1
        self._answers: collections.OrderedDict[object, Any] = collections.OrderedDict()

    async def get(self, since: int, key: object, load: Callable[[], Awaitable[T]]) -> T:
        if since != self._since:
            self._since, self._answers = since, collections.OrderedDict()
        if key in self._answers:
            self._answers.move_to_end(key)
            answer: T = self._answers[key]
            return answer
        answer = await load()
        self._answers[key] = answer
        while len(self._answers) > _OLD_ANSWERS:
            self._answers.popitem(last=False)
        return answer


class TieredStore:
    """A Store on Spanner (recent rows, every read of them) and BigQuery (all rows)."""

    # Spanner commits a group in one transaction at a time per slot; more
    # slots only abort each other on the same keys.
    max_in_flight = 2
    stamps_at_commit = True

    def __init__(
        self,
        serving: SpannerServing,
        analytics: BigQueryStore,
        *,
        write_deadline_seconds: float,
        dedupe_window_seconds: float,
        tail: TailCache | None = None,
        clock: Callable[[], int] = time.time_ns,
        conflicts: ConflictObserver | None = None,
    ) -> None:
        self.serving = serving
        self._conflicts = conflicts
        self.analytics = analytics
        self._write_deadline = write_deadline_seconds
        self._reach = int((dedupe_window_seconds + 86_400) * 1_000_000)
        self._clock = clock
        self.tail = tail or TailCache(serving.rows_between)
        self._old = _OldAnswers()
        # The commit time of the newest row this instance acknowledged.
        self._acknowledged = 0
        # Why Spanner's schema is not known to be right yet, or None once it is.
        self._unverified: str | None = "not started"

    def _now(self) -> int:
        return self._clock() // 1000

    def serving_since(self, now: int) -> int:
        """Where Spanner's reads begin (µs): the dedupe window and a day ago, at midnight."""
        return (now - self._reach) // DAY_MICROS * DAY_MICROS

    # -- life cycle ------------------------------------------------------------

    async def start(self) -> None:
        await self.analytics.start()
        await self.serving.start()
        try:
            async with asyncio.timeout(_VERIFY_AT_START_SECONDS):
                await self._verify()
        except (TimeoutError, StoreUnavailable) as exc:
            # Spanner unreachable is not a reason to stop: readiness says so and
            # pushes get 503 until it answers. A wrong schema is (SchemaMismatch).
            self._unverified = f"Spanner unreachable: {exc}" if str(exc) else "Spanner unreachable"
            log.error("serving tier not ready: %s", self._unverified)

    async def _verify(self) -> None:
        await self.serving.verify()
        if self._unverified is not None:
            log.info("serving tier ready: %s", self.serving.database.path)
        self._unverified = None

    async def close(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self.analytics.close)
            stack.push_async_callback(self.serving.close)

    async def check(self) -> None:
        await self.analytics.check()
        if self._unverified is not None:
            try:
                await self._verify()
            except SchemaMismatch as exc:
                raise StoreUnavailable(str(exc)) from exc
            except StoreUnavailable as exc:
                raise StoreUnavailable(f"serving tier not ready: {exc}") from exc
        else:
            await self.serving.ping()

    def _ready(self) -> None:
        if self._unverified is not None:
            raise StoreUnavailable(f"serving tier not ready: {self._unverified}")

    async def barrier(self) -> None:
        # An append returns once both stores committed it.
        return None

    def read_horizon(self, now: int) -> int:
        # Past this instance's own last commit at least: a client reads what it
        # was just told is stored. That commit's timestamp may be ahead of this
        # machine's clock (it is Spanner's); a read there waits, if need be,
        # until Spanner can serve it, and is complete up to it.
        return max(now - READ_LAG_MICROS, self._acknowledged + 1)

    # -- writing ---------------------------------------------------------------

    async def append(self, rows: Sequence[Record | Rejection]) -> Sequence[RowOutcome]:
        self._ready()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._write_deadline
        committed = await self.serving.commit(rows, within=self._write_deadline)
        if self._conflicts is not None:
            # Spanner hands back the copy it holds: a redelivery's is the same.
            for given, held in zip(rows, committed.rows, strict=True):
                if differing(held, given):
                    self._conflicts(held, given)
        # Spanner holds them now; BigQuery gets the same rows, stamped alike, in
        # what is left of the deadline.
        outcomes = await self.analytics.append(committed.rows, deadline=deadline)
        newest = max(row.ingest_time for row in committed.rows)
        self._acknowledged = max(self._acknowledged, newest)
        return outcomes

    # -- reading ---------------------------------------------------------------

    async def page(self, kind: type[R], query: PageQuery) -> Page[R]:
        now = self._now()
        since = self.serving_since(now)
        if query.after_time >= since:
            return await self._recent(kind, query, now)
        old: Page[R] = await self.analytics.page(kind, _before(query, since))
        if len(old.rows) == query.limit:
            return old
        if (old.after_time, old.after_message_id) != (since, "") or query.before_time <= since:
            # Short, and not yet at Spanner's rows: complete up to where it ended.
            return msgspec.structs.replace(old, complete_until=old.after_time)
        # BigQuery's part ends where Spanner's begins: the rest of the page is
        # Spanner's first rows, later in key order than all of BigQuery's.
        rest: Page[R] = await self._recent(
            kind, _after(query, since, query.limit - len(old.rows)), now
        )
        return msgspec.structs.replace(rest, rows=[*old.rows, *rest.rows])

    async def _recent(self, kind: type[R], query: PageQuery, now: int) -> Page[R]:
        self._ready()
        if kind is Record:
            if not self.tail.end:
                await self.tail.refresh(now)
            if self.tail.covers(query):
                page: Page[Any] = await self.tail.page(
                    query, self.read_horizon(now), past=self._acknowledged
                )
                return page
        return query.answer(await self.serving.page(kind, query, now))

    async def latest(self, record_id: str) -> Record | None:
        self._ready()
        since = self.serving_since(self._now())
        recent, old = await asyncio.gather(
            self.serving.latest(record_id),
            self._old.get(
                since,
                ("latest", record_id),
                lambda: self.analytics.latest(record_id, before=since),
            ),
        )
        found = [r for r in (recent, old) if r is not None]
        return max(found, key=_rank) if found else None

    async def message(self, message_id: str) -> MessageStatus | None:
        self._ready()
        recent = await self.serving.message(message_id)
        if recent is not None and recent.status == "stored":
            return recent
        since = self.serving_since(self._now())
        old = await self._old.get(
            since,
            ("message", message_id),
            lambda: self.analytics.message(message_id, before=since),
        )
        # A record beats a rejection, wherever each is.
        if old is not None and (recent is None or old.status == "stored"):
            return old
        return recent

    async def seen(self, message_ids: Sequence[str]) -> dict[str, MessageState]:
        self._ready()
        states = await self.serving.seen(message_ids)
        unsure = sorted({m for m in message_ids if states.get(m) != "stored"})
        if unsure:
            since = self.serving_since(self._now())
            for message_id, state in (await self.analytics.seen(unsure, before=since)).items():
                if states.get(message_id) != "stored":
                    states[message_id] = state
        return states


def _after(query: PageQuery, start: int, limit: int) -> PageQuery:
    """The query for what follows `start`, the cursor of a page that ended there."""
    return PageQuery(
        after_time=start, after_message_id="", before_time=query.before_time, limit=limit
    )


def _before(query: PageQuery, bound: int) -> PageQuery:
    return PageQuery(
        after_time=query.after_time,
        after_message_id=query.after_message_id,
        before_time=min(query.before_time, bound),
        limit=query.limit,
    )
