"""Deliberately broken stores: each must fail at least one contract test.

Each is the memory store with one promise broken the way a real store could
break it. `test_mutants.py` runs the contract on every one and fails if any
passes: a contract that lets a broken store through proves nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence

import msgspec

from app.errors import StoreUnavailable
from app.records import Record, Rejection
from app.store import CountQuery, Page, PageQuery, PublisherDuplicate, R, RowOutcome, Store
from app.store.duckdb.store import DuckDBStore
from app.store.live import Live
from app.store.producers import sequence_of
from tests.fakes import WrappedStore

HOUR = 3_600_000_000


class NeverReady(WrappedStore):
    async def check(self) -> None:
        raise StoreUnavailable("always")


class ForgetsTheSchema(WrappedStore):
    async def append(self, rows: Sequence[Record | Rejection]) -> Sequence[RowOutcome]:
        return await self.inner.append([msgspec.structs.replace(r, schema=None) for r in rows])


class ReencodesData(WrappedStore):
    async def append(self, rows: Sequence[Record | Rejection]) -> Sequence[RowOutcome]:
        def reencoded(row: Record | Rejection) -> Record | Rejection:
            if not isinstance(row, Record):
                return row
            text = json.dumps(json.loads(row.data), sort_keys=True, separators=(",", ":"))
            return msgspec.structs.replace(row, data=text)

        return await self.inner.append([reencoded(r) for r in rows])


class DropsAttributes(WrappedStore):
    async def append(self, rows: Sequence[Record | Rejection]) -> Sequence[RowOutcome]:
        return await self.inner.append([msgspec.structs.replace(r, attributes="{}") for r in rows])


class CompleteTooFar(WrappedStore):
    async def page(self, kind: type[R], query: PageQuery) -> Page[R]:
        page = await self.inner.page(kind, query)
        return msgspec.structs.replace(page, complete_until=query.before_time + HOUR)


class PastTheHorizon(WrappedStore):
    """Answers beyond the bound it was asked for: rows that may still change."""

    async def page(self, kind: type[R], query: PageQuery) -> Page[R]:
        return await self.inner.page(kind, msgspec.structs.replace(query, before_time=2**62))


class LosesRowsInFlight(WrappedStore):
    """Claims to take appends side by side, and drops a row of one that overlaps another."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.max_in_flight = 4
        self._in_flight = 0

    async def append(self, rows: Sequence[Record | Rejection]) -> Sequence[RowOutcome]:
        self._in_flight += 1
        try:
            await asyncio.sleep(0)  # let another append start: the overlap is the bug
            kept = rows[:-1] if self._in_flight > 1 and len(rows) > 1 else rows
            await self.inner.append(kept)
            return [None] * len(rows)
        finally:
            self._in_flight -= 1


class StoresPublisherCopies(WrappedStore):
    """Keeps no ledger of producer sequences yet says it does: every copy is stored."""

    async def append(self, rows: Sequence[Record | Rejection]) -> Sequence[RowOutcome]:
        renamed = [
            msgspec.structs.replace(r, attributes=r.attributes.replace("recordline-", "x-"))
            for r in rows
        ]
        await self.inner.append(renamed)
        return [None] * len(rows)


class IgnoresFilters(WrappedStore):
    """Answers a filtered page with every row."""

    async def page(self, kind: type[R], query: PageQuery) -> Page[R]:
        return await self.inner.page(kind, msgspec.structs.replace(query, filter=None))


class FiltersAfterTheLimit(WrappedStore):
    """Reads `limit` rows, then keeps those that match: a page of fewer rows than there
    are to keep, as a store that filters in memory after its SQL's LIMIT would."""

    async def page(self, kind: type[R], query: PageQuery) -> Page[R]:
        keep = query.filter
        page = await self.inner.page(kind, msgspec.structs.replace(query, filter=None))
        if keep is None:
            return page
        return msgspec.structs.replace(page, rows=[r for r in page.rows if keep.matches(r)])


class CountsEveryRow(WrappedStore):
    """Pages keep a filter's rows, counts every row of the range whatever the filter."""

    async def counts(self, kind: type[Record] | type[Rejection], query: CountQuery) -> list[int]:
        return await self.inner.counts(kind, msgspec.structs.replace(query, filter=None))


class DropsAnotherMessage(WrappedStore):
    """Takes any later copy under a stored producer sequence for a publisher's retry, as
    the ledger once did: another publisher's message under it is dropped, not kept."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self._taken: dict[tuple[str, int, int], str] = {}

    async def append(self, rows: Sequence[Record | Rejection]) -> Sequence[RowOutcome]:
        kept: list[Record | Rejection] = []
        outcomes: list[RowOutcome] = []
        for row in rows:
            sequence = sequence_of(row)
            key = (
                None if sequence is None else (sequence.producer, sequence.epoch, sequence.sequence)
            )
            if key is not None and self._taken.setdefault(key, row.message_id) != row.message_id:
                outcomes.append(PublisherDuplicate(*key))
                continue
            kept.append(row)
            outcomes.append(None)
        await self.inner.append(kept)
        return outcomes


class NeverRings(WrappedStore):
    """Stores and reads as the store it wraps, and never rings for what it stored:
    followers would learn of rows only by polling, if at all."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.live = Live()


MUTANTS: dict[str, Callable[[Store], Store]] = {
    "never-ready": NeverReady,
    "forgets-the-schema": ForgetsTheSchema,
    "reencodes-data": ReencodesData,
    "drops-attributes": DropsAttributes,
    "complete-too-far": CompleteTooFar,
    "past-the-horizon": PastTheHorizon,
    "loses-rows-in-flight": LosesRowsInFlight,
    "stores-publisher-copies": StoresPublisherCopies,
    "ignores-filters": IgnoresFilters,
    "filters-after-the-limit": FiltersAfterTheLimit,
    "counts-every-row": CountsEveryRow,
    "drops-another-message": DropsAnotherMessage,
    "never-rings": NeverRings,
}


def mutant(name: str, retention_days: int) -> Store:
    return MUTANTS[name](DuckDBStore(":memory:", retention_days=retention_days))
