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
        # A producer has at most MAX_EPOCHS entries: one row more than `limit` of them
        # can hold starts the next producer, if there is one, so the first `limit` read
        # are whole.
        entries = await self._serving.producer_entries(after, limit * MAX_EPOCHS + 1)
        return grouped(entries)[:limit]

    async def producer(self, producer: str) -> ProducerEntries | None:
        entries = await self._serving.producer(producer)
        return ProducerEntries(producer, entries) if entries else None
