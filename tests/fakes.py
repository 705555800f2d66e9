"""Stores for tests: they implement the Store protocol around a real store.

Faults are injected through the protocol, never by patching project code.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import cast

import msgspec

from app.errors import StoreUnavailable
from app.records import Record, Rejection
from app.store import (
    CountQuery,
    MessageState,
    MessageStatus,
    Page,
    PageQuery,
    R,
    RowOutcome,
    Store,
)
from app.store.access import AccessLine, AccessQuery, KeepsAccess
from app.store.dead_letters import DeadLetter, DeadLetterQuery, newest_day_of, page_of
from app.store.producers import Completeness, LedgerAudit, ProducerEntries, Worst

# Delays of their own: the module's shared generator is the tests' (Hypothesis seeds it).
_JITTER = random.Random()


class WrappedStore:
    """A Store around another: forwards every call; subclasses override what they add to."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.max_in_flight = inner.max_in_flight
        self.stamps_at_commit = inner.stamps_at_commit
        self.live = inner.live
        self.completeness = inner.completeness

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def check(self) -> None:
        await self.inner.check()

    async def barrier(self) -> None:
        await self.inner.barrier()

    def read_horizon(self, now: int) -> int:
        return self.inner.read_horizon(now)

    async def append(self, rows: Sequence[Record | Rejection]) -> Sequence[RowOutcome]:
        return await self.inner.append(rows)

    async def page(self, kind: type[R], query: PageQuery) -> Page[R]:
        return await self.inner.page(kind, query)

    async def counts(self, kind: type[Record] | type[Rejection], query: CountQuery) -> list[int]:
        return await self.inner.counts(kind, query)

    async def latest(self, record_id: str) -> Record | None:
        return await self.inner.latest(record_id)

    async def message(self, message_id: str) -> MessageStatus | None:
        return await self.inner.message(message_id)

    async def seen(self, message_ids: Sequence[str]) -> dict[str, MessageState]:
        return await self.inner.seen(message_ids)

    async def rejections(self, message_ids: Sequence[str]) -> dict[str, Rejection]:
        return await self.inner.rejections(message_ids)


class LeavesUnread(WrappedStore):
    """A store that reads no column a page's reader shows none of (`PageQuery.left_out`),
    as BigQuery's and Spanner's pages do: each record it returns holds it empty, whatever
    the store underneath read (an embedded one reads every column)."""

    async def page(self, kind: type[R], query: PageQuery) -> Page[R]:
        page = await self.inner.page(kind, query)
        if kind is not Record or not query.left_out:
            return page
        empty = dict.fromkeys(query.left_out, "")
        rows = [msgspec.structs.replace(row, **empty) for row in page.rows]
        return msgspec.structs.replace(page, rows=rows)


class FaultyStore(WrappedStore):
    """Delegates to `inner`; appends fail while `failing` is set, or stall for `delay`;
    reads fail while `failing_reads` is set."""

    def __init__(self, inner: Store, *, max_in_flight: int | None = None) -> None:
        super().__init__(inner)
        self.max_in_flight = max_in_flight or self.max_in_flight
        self.failing = False
        self.failing_reads = False
        self.delay = 0.0
        self.jitter = 0.0  # up to this much more delay, at random: commits reorder
        self.appends: list[int] = []  # rows per append call that reached the store
        self.pages = 0  # reads of a page that reached the store
        self.appending = 0  # rows of the append calls under way (held by `release`, say)
        self.release = asyncio.Event()
        self.release.set()
        if inner.completeness is not None:
            self.completeness = FaultyCompleteness(inner.completeness, self)

    async def check(self) -> None:
        if self.failing:
            raise StoreUnavailable("injected: store down")
        await self.inner.check()

    async def barrier(self) -> None:
        # Every read, and replay's look-up, waits on the barrier first.
        if self.failing_reads:
            raise StoreUnavailable("injected: reads fail")
        await self.inner.barrier()

    async def page(self, kind: type[R], query: PageQuery) -> Page[R]:
        if self.failing_reads:
            raise StoreUnavailable("injected: reads fail")
        self.pages += 1
        return await self.inner.page(kind, query)

    async def counts(self, kind: type[Record] | type[Rejection], query: CountQuery) -> list[int]:
        if self.failing_reads:
            raise StoreUnavailable("injected: reads fail")
        return await self.inner.counts(kind, query)

    async def keep_access(self, lines: Sequence[AccessLine]) -> None:
        if self.failing:
            raise StoreUnavailable("injected: store down")
        await cast(KeepsAccess, self.inner).keep_access(lines)

    async def access_page(self, query: AccessQuery) -> list[AccessLine]:
        if self.failing_reads:
            raise StoreUnavailable("injected: reads fail")
        return await cast(KeepsAccess, self.inner).access_page(query)

    async def append(self, rows: Sequence[Record | Rejection]) -> Sequence[RowOutcome]:
        self.appending += len(rows)
        try:
            await self.release.wait()
            if self.delay or self.jitter:
                # A slow store: the delay is what the test is about, not a wait.
                await asyncio.sleep(self.delay + _JITTER.random() * self.jitter)
            if self.failing:
                raise StoreUnavailable("injected: store down")
            outcomes = await self.inner.append(rows)
        finally:
            self.appending -= len(rows)
        self.appends.append(len(rows))
        return outcomes


class DeadLetteredStore(FaultyStore):
    """A FaultyStore that reads dead letters too: `dead_letters`, as BigQuery's
    `dead_letters` would hold them, read as the contract's oracle reads them (which
    BigQuery's store is held to), failing while `failing_reads` is set."""

    def __init__(self, inner: Store, dead_letters: Sequence[DeadLetter] = ()) -> None:
        super().__init__(inner)
        self.dead_letters = list(dead_letters)

    async def dead_letter_page(self, query: DeadLetterQuery) -> list[DeadLetter]:
        if self.failing_reads:
            raise StoreUnavailable("injected: reads fail")
        return page_of(query, self.dead_letters)

    async def newest_dead_letter_day(self, since: int, before: int) -> int | None:
        if self.failing_reads:
            raise StoreUnavailable("injected: reads fail")
        return newest_day_of(since, before, self.dead_letters)


class FaultyCompleteness:
    """A store's ledger reads, failing while its FaultyStore's `failing_reads` is set."""

    def __init__(self, inner: Completeness, store: FaultyStore) -> None:
        self.inner = inner
        self._store = store

    async def producers(self, after: str, limit: int) -> list[ProducerEntries]:
        if self._store.failing_reads:
            raise StoreUnavailable("injected: reads fail")
        return await self.inner.producers(after, limit)

    async def producer(self, producer: str) -> ProducerEntries | None:
        if self._store.failing_reads:
            raise StoreUnavailable("injected: reads fail")
        return await self.inner.producer(producer)

    async def audit(self, since: int, until: int, *, cutoff: int, limit: int) -> LedgerAudit:
        if self._store.failing_reads:
            raise StoreUnavailable("injected: reads fail")
        return await self.inner.audit(since, until, cutoff=cutoff, limit=limit)

    async def worst(self, *, cutoff: int, since: int, top: int) -> Worst:
        if self._store.failing_reads:
            raise StoreUnavailable("injected: reads fail")
        return await self.inner.worst(cutoff=cutoff, since=since, top=top)
