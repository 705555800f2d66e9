"""One system's export to BigQuery, run apart from its ingest (the exporter service).

The exporter service (`app.exporter`) runs one `SystemExport` per system: its
serving database and BigQuery dataset, the exporter between them, and its
watermark read back for its lag, each loop under a supervisor of its own, so what
fails in one system is that system's. It serves nothing. The exporter does not
start before Spanner shows a schema this code reads: until then that system's
export waits, its loop restarting, counted and named.

Design: docs/operations.md#the-exporter-service
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from app.errors import StoreUnavailable
from app.records import TABLES, Record, Rejection
from app.store.backoff import Backoff
from app.store.bigquery.store import BigQueryStore, WatermarkWriter
from app.store.spanner.serving import SpannerServing
from app.store.supervisor import LoopObserver, Supervisor
from app.store.tiered.balance import Balance, Share
from app.store.tiered.exporter import (
    LEASE_SECONDS,
    RETRY_MAX_SECONDS,
    RETRY_SECONDS,
    Destination,
    Exporter,
    ExportObserver,
    ExportThrottle,
    exporter_lease,
)
from app.store.tiered.held import QueryHeld
from app.store.tiered.typed import TypedExport
from app.store.tiered.watermarks import WATERMARK_SECONDS, Watermarks, while_leading

log = logging.getLogger(__name__)

# How long a check of Spanner's schema may take at each try.
_VERIFY_SECONDS = 5.0


def exporter_for(
    serving: SpannerServing,
    analytics: BigQueryStore,
    *,
    watermarks: WatermarkWriter,
    observer: ExportObserver | None = None,
    share: Share | None = None,
    throttle: ExportThrottle | None = None,
) -> Exporter:
    """The exporter of a system's rows from `serving` into `analytics` (both started):
    its offset streams, its watermark rows, records' typed columns where the dataset
    projects them, and BigQuery's own answer to what it holds; paced by `throttle`, if
    on-call slows it."""
    table, revisions = analytics.typed, analytics.revisions
    bigquery = Destination(
        {kind: analytics.offset_stream(kind) for kind in (Record, Rejection)},
        watermarks=watermarks,
        typed=TypedExport(table, revisions, copies=analytics.layout_copies)
        if table is not None and revisions
        else None,
        held=QueryHeld(analytics.queries, {t: analytics.table_name(t) for t in TABLES}),
        copies=analytics.layout_copies,
    )
    # In a pool, every system's lease under this instance's one name.
    lease = None if share is None else exporter_lease(share.holder)
    return Exporter(
        serving, bigquery, observer=observer, share=share, lease=lease, throttle=throttle
    )


class SystemExport:
    """A system's export, with no ingest beside it: see the module notes."""

    def __init__(
        self,
        name: str,
        serving: SpannerServing,
        analytics: BigQueryStore,
        *,
        observer: ExportObserver | None = None,
        loops: LoopObserver | None = None,
        clock: Callable[[], int] = time.time_ns,
        balance: Balance | None = None,
        throttle: ExportThrottle | None = None,
    ) -> None:
        self.name = name
        # Its lease's place in the pool's balance (each instance about its share).
        self._share = None if balance is None else balance.share(name)
        # The pace on-call set for its export, as the pool's throttles file says.
        self._throttle = throttle
        self.serving = serving
        self.analytics = analytics
        self._observer = observer
        # The lag is told by the holder of the lease alone: one series per system.
        self.watermarks = Watermarks(
            serving, serving.ledger, observer=while_leading(observer, self._leading), clock=clock
        )
        self.supervisor = Supervisor(observer=loops)
        self.exporter: Exporter | None = None
        self._writer: WatermarkWriter | None = None

    def _leading(self) -> bool:
        return self.exporter is not None and self.exporter.leading

    async def start(self) -> None:
        """Open the clients and start the loops; what Spanner or BigQuery answers
        meanwhile is the loops' to handle (nothing here waits on either)."""
        await self.analytics.start()
        await self.serving.start()
        self._writer = self.analytics.watermark_writer()
        await self._writer.start()
        exporter = exporter_for(
            self.serving,
            self.analytics,
            watermarks=self._writer,
            observer=self._observer,
            share=self._share,
            throttle=self._throttle,
        )
        self.exporter = exporter
        await self.supervisor.start()
        # Down longer than a lease: the exporter hands the lease back so that another
        # instance takes this system's export over.
        self.supervisor.run(
            "exporter",
            lambda: self._export(exporter),
            interval=LEASE_SECONDS,
            on_down=exporter.step_down,
        )
        self.supervisor.run("watermark", self._follow_watermark, interval=WATERMARK_SECONDS)

    async def _export(self, exporter: Exporter) -> None:
        await self._verified()
        await exporter.run()

    async def _verified(self) -> None:
        """Once Spanner answers, its schema is one this code reads (else SchemaMismatch,
        a failure of this loop: restarted, counted, its error named)."""
        backoff = Backoff(RETRY_SECONDS, RETRY_MAX_SECONDS)
        while True:
            try:
                await self.serving.verify(within=_VERIFY_SECONDS)
                return
            except StoreUnavailable as exc:
                pause = backoff.next()
                log.warning(
                    "%s: Spanner's schema not checked (tried again in %.1f s): %s",
                    self.name,
                    pause,
                    exc,
                )
                await asyncio.sleep(pause)

    async def _follow_watermark(self) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self.watermarks.read()
        await self.watermarks.follow()

    def down(self) -> list[str]:
        """Each of this system's loops failing for longer than its interval (its
        BigQuery store's writers' too)."""
        return self.supervisor.down() + self.analytics.down()

    async def close(self) -> None:
        """Stop the loops, hand the lease back, close the clients: each step even when
        one before it failed (undone in reverse order)."""
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self.analytics.close)
            stack.push_async_callback(self.serving.close)
            if self._writer is not None:
                stack.push_async_callback(self._writer.close)
            if self.exporter is not None:
                stack.push_async_callback(self.exporter.stop)
            stack.push_async_callback(self.supervisor.close)
