"""BigQuery with a serving tier: Spanner the system of record, BigQuery fed from it.

The package composes the two backends, which never import each other: this
store, the exporter that feeds BigQuery from Spanner (`exporter.py`), and the
supervisor of their background loops (`app.store.supervisor`). A push is acknowledged
once its group commit is durable in Spanner; reads from `serving_since` go to
Spanner, older ones to BigQuery, where every row is final and exported.

Design: docs/stores.md#serving-tier-spanner-in-front-of-bigquery-recordline_serving
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import cachetools
import msgspec
from google.api_core.exceptions import InvalidArgument

from app.errors import BadParameter, StoreUnavailable
from app.records import DAY_MICROS, Record, Rejection, rejected_record
from app.store import (
    CountQuery,
    MessageState,
    MessageStatus,
    Page,
    PageQuery,
    R,
    RowOutcome,
    row_bytes,
)
from app.store.access import AccessLine, AccessQuery
from app.store.bigquery.store import BigQueryStore, WatermarkWriter
from app.store.copies import differing
from app.store.dead_letters import DeadLetter, DeadLetterQuery
from app.store.filters import RowFilter
from app.store.observers import NO_OBSERVERS, StoreObservers
from app.store.producers import Completeness
from app.store.spanner.serving import SchemaMismatch, SpannerServing, too_large
from app.store.spanner.tail import TailCache
from app.store.supervisor import Supervisor
from app.store.tiered.exporter import LEASE_SECONDS, Exporter
from app.store.tiered.fleet import exporter_for
from app.store.tiered.watermarks import WATERMARK_SECONDS, Watermarks, while_leading

log = logging.getLogger(__name__)
T = TypeVar("T")


# Pages are read at a time this far behind now: Spanner's leader serves such a
# read at once, where a read at "now" may wait out its clock's uncertainty
# (a few milliseconds). A follower sees a commit this much later, no more.
READ_LAG_MICROS: Final = 10_000

# How long start waits for Spanner to show its schema before going on without
# it (readiness stays red, pushes get 503, until it answers).
_VERIFY_AT_START_SECONDS: Final = 5.0
# What a readiness check gives Spanner: within the probe's own budget (2 s,
# app.health), so that the answer says why, and a probe a second during an
# outage holds no thread past its answer.
_CHECK_SECONDS: Final = 1.5

# How long the tail's refresh may be down before readiness says so: a follower
# hears of another instance's commit within about this.
TAIL_DOWN_SECONDS: Final = 1.0

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
        self._answers: cachetools.LRUCache[object, Any] = cachetools.LRUCache(_OLD_ANSWERS)

    async def get(self, since: int, key: object, load: Callable[[], Awaitable[T]]) -> T:
        if since != self._since:
            self._since = since
            self._answers.clear()
        if key in self._answers:
            answer: T = self._answers[key]
            return answer
        answer = await load()
        self._answers[key] = answer
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
        export: bool = True,
        observers: StoreObservers = NO_OBSERVERS,
    ) -> None:
        self.serving = serving
        self._conflicts = observers.conflicts
        self.analytics = analytics
        self._write_deadline = write_deadline_seconds
        self._reach = int(dedupe_window_seconds * 1_000_000) + DAY_MICROS
        self._clock = clock
        self.tail = tail or TailCache(serving.rows_between)
        self._old = _OldAnswers()
        # The commit time of the newest row this instance acknowledged.
        self._acknowledged = 0
        # Why Spanner's schema is not known to be right yet, or None once it is.
        self._unverified: str | None = "not started"
        self._export = export
        self._export_observer = observers.exports
        self.exporter: Exporter | None = None
        # Told of this instance's commits, and by the tail of what it finds of others'.
        self.live = self.tail.live
        self._watermark_writer: WatermarkWriter | None = None
        # Owns every background loop of this store.
        self.supervisor = Supervisor(observer=observers.loops)
        # The tables' export watermarks, as last read from Spanner (every instance
        # reads them); the lag is told by the instance that exports, while it holds
        # the lease (one that leaves the export to the exporter pool tells it as given).
        told = while_leading(observers.exports, self._leading) if export else observers.exports
        self._watermarks = Watermarks(serving, serving.ledger, observer=told, clock=clock)
        # The ledger of producer sequences, kept in Spanner with the rows.
        self.completeness: Completeness | None = serving.completeness

    def _leading(self) -> bool:
        return self.exporter is not None and self.exporter.leading

    @property
    def watermark(self) -> int:
        """Every row before it is in BigQuery (µs): the least of the tables' watermarks."""
        return self._watermarks.least

    def _now(self) -> int:
        return self._clock() // 1000

    def _horizon(self) -> int:
        """The read horizon now: as far as the tail is ever refreshed."""
        return self.read_horizon(self._now())

    def serving_since(self, now: int) -> int:
        """Where Spanner's reads begin (µs): the dedupe window and a day ago, at midnight,
        and no later than the exporter's watermark, at midnight too."""
        return min(now - self._reach, self.watermark) // DAY_MICROS * DAY_MICROS

    # -- life cycle ------------------------------------------------------------

    async def start(self) -> None:
        await self.analytics.start()
        await self.serving.start()
        try:
            await self._verify(within=_VERIFY_AT_START_SECONDS)
        except StoreUnavailable as exc:
            # Spanner unreachable is not a reason to stop: readiness says so and
            # pushes get 503 until it answers. A wrong schema is (SchemaMismatch).
            self._unverified = f"Spanner unreachable: {exc}" if str(exc) else "Spanner unreachable"
            log.error("serving tier not ready: %s", self._unverified)
        await self.supervisor.start()
        self.supervisor.run(
            "tail", lambda: self.tail.watch(self._horizon), interval=TAIL_DOWN_SECONDS
        )
        with contextlib.suppress(StoreUnavailable):
            await self._watermarks.read()
        self.supervisor.run("watermark", self._watermarks.follow, interval=WATERMARK_SECONDS)
        if self._export:
            self._watermark_writer = self.analytics.watermark_writer()
            await self._watermark_writer.start()
            self.exporter = exporter_for(
                self.serving,
                self.analytics,
                watermarks=self._watermark_writer,
                observer=self._export_observer,
            )
            # Down longer than a lease: readiness says so, and the exporter hands the
            # lease back so that another instance takes the export over.
            self.supervisor.run(
                "exporter",
                self.exporter.run,
                interval=LEASE_SECONDS,
                on_down=self.exporter.step_down,
            )

    async def _verify(self, *, within: float) -> None:
        await self.serving.verify(within=within)
        if self._unverified is not None:
            log.info("serving tier ready: %s", self.serving.database.path)
        self._unverified = None

    async def close(self) -> None:
        """Stop every loop, hand the export lease back, and close every client: each
        step even when one before it failed (undone in reverse order)."""
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self.analytics.close)
            stack.push_async_callback(self.serving.close)
            if self._watermark_writer is not None:
                stack.push_async_callback(self._watermark_writer.close)
            if self.exporter is not None:
                stack.push_async_callback(self.exporter.stop)
            stack.push_async_callback(self.supervisor.close)

    async def check(self) -> None:
        down = self.supervisor.down()
        if down:
            raise StoreUnavailable(f"background work down: {'; '.join(down)}")
        await self.analytics.check()
        if self._unverified is not None:
            try:
                await self._verify(within=_CHECK_SECONDS)
            except SchemaMismatch as exc:
                raise StoreUnavailable(str(exc)) from exc
            except StoreUnavailable as exc:
                raise StoreUnavailable(f"serving tier not ready: {exc}") from exc
        else:
            await self.serving.ping(within=_CHECK_SECONDS)

    def _ready(self) -> None:
        if self._unverified is not None:
            raise StoreUnavailable(f"serving tier not ready: {self._unverified}")

    async def barrier(self) -> None:
        # An append returns once Spanner committed it.
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
        # What Spanner cannot hold is kept as a rejection saying why; every row
        # Spanner takes, BigQuery takes too (the limits of `too_large`).
        outcomes: list[RowOutcome] = []
        fitting: list[Record | Rejection] = []
        for row in rows:
            reason = too_large(row)
            if reason is not None and isinstance(row, Record):
                row = rejected_record(row, reason)
            outcomes.append(reason)
            fitting.append(row)
        deadline = asyncio.get_running_loop().time() + self._write_deadline
        committed = await self._commit(fitting, outcomes, 0, deadline)
        if self._conflicts is not None:
            # Spanner hands back the copy it holds: a redelivery's is the same.
            for given, held in zip(fitting, committed, strict=True):
                if differing(held, given):
                    self._conflicts(held, given)
        newest = max(row.ingest_time for row in committed)
        self._acknowledged = max(self._acknowledged, newest)
        self.live.arrived(committed)  # readable now: waiting followers read again
        return outcomes

    async def _commit(
        self,
        rows: list[Record | Rejection],
        outcomes: list[RowOutcome],
        first: int,
        deadline: float,
    ) -> list[Record | Rejection]:
        """Commit `rows` (outcomes[first:] are theirs); if Spanner refuses the batch
        for what a row holds (INVALID_ARGUMENT), commit each half on its own, down to
        the row, which is kept as a rejection saying why: one row never fails the
        others. Every other failure is the batch's (503, delivered again)."""
        left = max(deadline - asyncio.get_running_loop().time(), 0.0)
        try:
            committed = await self.serving.commit(rows, within=left)
        except StoreUnavailable as exc:
            if not isinstance(exc.__cause__, InvalidArgument):
                raise
            refused = exc.__cause__
        else:
            # What the ledger of producer sequences made of a row: a publisher's copy
            # not stored, or kept as a rejection (its reason).
            for index, outcome in enumerate(committed.outcomes):
                if outcome is not None:
                    outcomes[first + index] = outcome
            return committed.rows
        if len(rows) > 1:
            half = len(rows) // 2
            head = await self._commit(rows[:half], outcomes, first, deadline)
            return [*head, *await self._commit(rows[half:], outcomes, first + half, deadline)]
        (row,) = rows
        if not isinstance(row, Record):
            raise StoreUnavailable(f"Spanner refused a rejection: {refused.message}") from refused
        reason = f"Spanner refused the row: {refused.message}"
        log.warning("message %s: %s", row.message_id, reason)
        outcomes[first] = reason
        return await self._commit([rejected_record(row, reason)], outcomes, first, deadline)

    # -- the access record -------------------------------------------------------

    async def keep_access(self, lines: Sequence[AccessLine]) -> None:
        """Keep the lines in BigQuery beside the exported rows (`access_record`), as
        BigQuery alone keeps them: an audit record kept 400 days costs there a
        thirtieth of what Spanner's storage would (docs/stores.md#serving-access)."""
        await self.analytics.keep_access(lines)

    async def access_page(self, query: AccessQuery) -> list[AccessLine]:
        return await self.analytics.access_page(query)

    # -- dead letters ------------------------------------------------------------------

    # Pub/Sub writes them to BigQuery's `dead_letters` (its subscription on the
    # dead-letter topic), whatever serves the rows: read there.
    async def dead_letter_page(self, query: DeadLetterQuery) -> list[DeadLetter]:
        return await self.analytics.dead_letter_page(query)

    async def newest_dead_letter_day(self, since: int, before: int) -> int | None:
        return await self.analytics.newest_dead_letter_day(since, before)

    # -- reading ---------------------------------------------------------------

    def _refuse_fields(self, keep: RowFilter | None) -> None:
        if keep is not None and keep.fields:
            # Spanner keeps each payload as JSON: typed columns are BigQuery's alone,
            # projected as rows are exported, so no read here can filter on them.
            raise BadParameter(
                "field",
                "the serving tier has no typed columns to filter on (BigQuery has them, as "
                "`records.fields`, once rows are exported); filter on attributes or ids here",
            )

    async def page(self, kind: type[R], query: PageQuery) -> Page[R]:
        self._refuse_fields(query.filter)
        now = self._now()
        since = self.serving_since(now)
        if query.after_time >= since:
            return await self._recent(kind, query, now)
        old: Page[R] = await self.analytics.page(kind, _before(query, since))
        if query.filled(old.rows):
            return old
        if (old.after_time, old.after_message_id) != (since, "") or query.before_time <= since:
            # Short, and not yet at Spanner's rows: complete up to where it ended.
            return msgspec.structs.replace(old, complete_until=old.after_time)
        # BigQuery's part ends where Spanner's begins: the rest of the page is
        # Spanner's first rows, later in key order than all of BigQuery's.
        rest: Page[R] = await self._recent(kind, _after(query, since, old.rows), now)
        return msgspec.structs.replace(rest, rows=[*old.rows, *rest.rows])

    async def _recent(self, kind: type[R], query: PageQuery, now: int) -> Page[R]:
        self._ready()
        if kind is Record:
            if not self.tail.end:
                await self.tail.refresh(self.read_horizon(now))
            if self.tail.covers(query):
                page: Page[Any] = await self.tail.page(
                    query, self.read_horizon(now), past=self._acknowledged
                )
                return page
        return query.answer(await self.serving.page(kind, query, now))

    async def counts(self, kind: type[Record] | type[Rejection], query: CountQuery) -> list[int]:
        """BigQuery's count below `serving_since` (every row there exported, each once),
        Spanner's from it, in the same buckets from `since`: the bucket that holds
        `serving_since` is the sum of both."""
        self._refuse_fields(query.filter)
        counts = [0] * query.check()
        if not counts:
            return counts
        now = self._now()
        since = self.serving_since(now)
        if query.since < since:
            old = msgspec.structs.replace(query, until=min(query.until, since))
            for bucket, found in enumerate(await self.analytics.counts(kind, old)):
                counts[bucket] += found
        if query.until > since:
            self._ready()
            recent = await self.serving.counts(
                kind,
                origin=query.since,
                since=max(query.since, since),
                until=query.until,
                width=query.width,
                keep=query.filter,
                now=now,
            )
            for bucket, found in recent.items():
                counts[bucket] += found
        return counts

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

    async def rejections(self, message_ids: Sequence[str]) -> dict[str, Rejection]:
        self._ready()
        found = await self.serving.rejections(message_ids)
        rest = sorted({m for m in message_ids if m not in found})
        if rest:
            since = self.serving_since(self._now())
            older = await self.analytics.rejections(rest, before=since)
            found |= older
        return found


def _after(query: PageQuery, start: int, rows: Sequence[Record | Rejection]) -> PageQuery:
    """The query for what follows `start`, the cursor of a page that ended there holding
    `rows`: the room they left, in rows and bytes (its filter the same)."""
    max_bytes = query.max_bytes
    if max_bytes is not None:
        max_bytes = max(1, max_bytes - sum(map(row_bytes, rows)))
    return msgspec.structs.replace(
        query,
        after_time=start,
        after_message_id="",
        limit=query.limit - len(rows),
        max_bytes=max_bytes,
    )


def _before(query: PageQuery, bound: int) -> PageQuery:
    return msgspec.structs.replace(query, before_time=min(query.before_time, bound))
