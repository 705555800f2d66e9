"""Each table's export watermark, as the serving database holds it: where reads move
from Spanner to BigQuery, and how far behind the export is (`recordline.export.lag`).

Every instance that reads or exports a system follows it (ingest's instances for
their reads, the exporter pool's for the lag); the lag is reported by the holder of
the export's lease alone (`while_leading`), so that a system's export metrics are
one series whatever the number of instances.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final, Protocol

from app.errors import StoreUnavailable
from app.records import TABLES, Record, Rejection
from app.store.tiered.exporter import SETTLED_MICROS, ExportRows

log = logging.getLogger(__name__)

# How often each instance reads the exporter's watermark from Spanner.
WATERMARK_SECONDS: Final = 5.0


class WatermarkLedger(Protocol):
    """Where the watermarks are kept (the serving database's export ledger)."""

    async def watermarks(self) -> dict[str, int]: ...


class WatermarkObserver(Protocol):
    """Told each table's watermark as it is read (telemetry: `recordline.export.lag`)."""

    def watermark(self, table: str, micros: int) -> None: ...


class _WhileLeading:
    """`observer`, told the watermarks only while `leading()` says this instance
    holds the export's lease."""

    def __init__(self, observer: WatermarkObserver, leading: Callable[[], bool]) -> None:
        self._observer = observer
        self._leading = leading

    def watermark(self, table: str, micros: int) -> None:
        if self._leading():
            self._observer.watermark(table, micros)


def while_leading(
    observer: WatermarkObserver | None, leading: Callable[[], bool]
) -> WatermarkObserver | None:
    """`observer`, told the watermarks only while this instance holds the lease."""
    return None if observer is None else _WhileLeading(observer, leading)


class Watermarks:
    """The tables' watermarks as last read; `least` is the one every table is past."""

    def __init__(
        self,
        source: ExportRows,
        ledger: WatermarkLedger,
        *,
        observer: WatermarkObserver | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._source = source
        self._ledger = ledger
        self._observer = observer
        self._clock = clock
        # Every row before it is in BigQuery (µs): 0 until read.
        self.least = 0

    async def read(self) -> None:
        """Read them now, and tell the observer each table's (StoreUnavailable if
        Spanner does not answer)."""
        watermarks = await self._ledger.watermarks()
        self.least = min(watermarks.values())
        if self._observer is None:
            return
        for table, watermark in watermarks.items():
            self._observer.watermark(table, watermark or await self._first_owed(table))

    async def follow(self) -> None:
        """Read them every WATERMARK_SECONDS, for as long as it runs."""
        while True:
            await asyncio.sleep(WATERMARK_SECONDS)
            try:
                await self.read()
            except StoreUnavailable as exc:
                log.warning("export watermark unknown: %s", exc)

    async def _first_owed(self, table: str) -> int:
        """Where the export of `table` stands before its first progress: at its oldest
        row in Spanner, or at the settled present if it has none (nothing is owed)."""
        settled = self._clock() // 1000 - SETTLED_MICROS
        kinds: tuple[type[Record] | type[Rejection], ...] = (Record, Rejection)
        for kind in kinds:
            if TABLES[table] is kind:
                oldest = await self._source.rows_after(kind, (0, ""), settled, 1)
                return oldest[0].ingest_time if oldest else settled
        return settled
