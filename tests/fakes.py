"""Stores for tests: they implement the Store protocol around a real store.

Faults are injected through the protocol, never by patching project code.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

from app.errors import StoreUnavailable
from app.records import Record, Rejection
from app.store import RowOutcome, Store, WrappedStore


class FaultyStore(WrappedStore):
    """Delegates to `inner`; appends fail while `failing` is set, or stall for `delay`."""

    def __init__(self, inner: Store, *, max_in_flight: int | None = None) -> None:
        super().__init__(inner)
        self.max_in_flight = max_in_flight or self.max_in_flight
        self.failing = False
        self.delay = 0.0
        self.jitter = 0.0  # up to this much more delay, at random: commits reorder
        self.appends: list[int] = []  # rows per append call that reached the store
        self.release = asyncio.Event()
        self.release.set()

    async def check(self) -> None:
        if self.failing:
            raise StoreUnavailable("injected: store down")
        await self.inner.check()

    async def append(self, rows: Sequence[Record | Rejection]) -> Sequence[RowOutcome]:
        await self.release.wait()
        if self.delay or self.jitter:
            await asyncio.sleep(self.delay + random.random() * self.jitter)
        if self.failing:
            raise StoreUnavailable("injected: store down")
        outcomes = await self.inner.append(rows)
        self.appends.append(len(rows))
        return outcomes
