"""The serving tier's completeness ledger reads: Spanner's `producer_epochs`, strongly.

Spanner is the system of record, so its ledger is the one every instance reads
and writes (app/store/spanner/producers.py); BigQuery has none.
"""

from __future__ import annotations

from app.store.producers import MAX_EPOCHS, ProducerEntries, grouped
from app.store.spanner.serving import SpannerServing


class ServingCompleteness:
    """`Completeness` on the serving tier's Spanner database."""

    def __init__(self, serving: SpannerServing) -> None:
        self._serving = serving

    async def producers(self, after: str, limit: int) -> list[ProducerEntries]:
        # A producer has at most MAX_EPOCHS entries: this many rows hold `limit`
        # producers whole, and one row more says whether a producer was cut.
        entries = await self._serving.producer_entries(after, limit * MAX_EPOCHS + 1)
        found = grouped(entries)
        if len(entries) > limit * MAX_EPOCHS and len(found) <= limit:
            found = found[:-1]  # its last producer may have more epochs than were read
        return found[:limit]

    async def producer(self, producer: str) -> ProducerEntries | None:
        entries = await self._serving.producer(producer)
        return ProducerEntries(producer, entries) if entries else None
