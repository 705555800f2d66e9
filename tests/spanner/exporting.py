"""Running exporters by hand in tests: build one on a started serving tier, step it
until it has exported everything, and count what BigQuery holds."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any

from app.errors import StoreUnavailable
from app.records import TABLES, Record, Rejection
from app.settings import QuerySettings, StoreSettings
from app.store.bigquery.store import BigQueryStore
from app.store.observers import StoreObservers
from app.store.open import bigquery_options, spanner_database
from app.store.spanner.ledger import LeaseLost, ProgressMoved
from app.store.spanner.serving import SpannerServing
from app.store.tiered.exporter import (
    LEASE_SECONDS,
    Destination,
    Exporter,
    Pace,
    exporter_lease,
)
from app.store.tiered.held import QueryHeld
from app.store.tiered.store import TieredStore
from app.typed.revisions import Revisions
from tests.bigquery.conftest import DATASET, PROJECT
from tests.bigquery.fake_storage_write import FakeBigQueryWrite

# A table paused after a passing failure waits this long first (RETRY_SECONDS in
# the service): the backoff is the same, only shorter.
RETRY_SECONDS = 0.05


def exporter(store: TieredStore, holder: str = "a", **options: Any) -> Exporter:
    """An exporter of `store`'s tables as the store makes its own, by hand; `options`
    name what the exporter is built from (its lease's, pace's and destination's)."""
    kinds = (Record, Rejection)
    analytics = store.analytics
    names = {table: analytics.table_name(table) for table in TABLES}
    bigquery = Destination(
        {kind: analytics.offset_stream(kind) for kind in kinds},
        watermarks=options.pop("watermarks", None),
        typed=options.pop("typed", None),
        held=options.pop("held", QueryHeld(analytics.queries, names)),
        copies=analytics.layout_copies,
    )
    lease = exporter_lease(
        holder,
        version=options.pop("version", None),
        seconds=options.pop("lease_seconds", LEASE_SECONDS),
    )
    paced = {name: options.pop(name) for name in Pace._fields if name in options}
    pace = Pace(**{"retry_seconds": RETRY_SECONDS, **paced})
    source = options.pop("source", store.serving)
    return Exporter(source, bigquery, lease=lease, pace=pace, **options)


def copies(write_fake: FakeBigQueryWrite, table: str) -> collections.Counter[str]:
    return collections.Counter(row["message_id"] for row in write_fake.rows(table))


async def drain(*exporters: Exporter, tables: int = 2) -> None:
    """Step until a round exports nothing and no table waits out a pause (the rows
    appended so far are exported, or blocked)."""
    settled = 0
    for _ in range(200):
        busy = False
        for one in exporters:
            # As Exporter.run does: a lost lease, a progress written meanwhile or an
            # unavailable store is tried again.
            with contextlib.suppress(LeaseLost, ProgressMoved, StoreUnavailable):
                busy = await one.step() or busy
        pauses = [left for one in exporters for left in one.paused().values()]
        if not busy and pauses:
            await asyncio.sleep(min(pauses))  # the pause itself is what is waited for
            settled = 0
            continue
        settled = 0 if busy else settled + 1
        if settled >= 2:
            return
    raise AssertionError("the export did not settle")


async def settle_clock() -> None:
    # The exporter takes rows committed at least a second ago: a read there is served
    # at once. Waiting that out is what the test waits for (time itself).
    await asyncio.sleep(1.1)  # rows a second old are settled: time itself is what is waited for


def tiered_store(
    database: str,
    emulator_host: str,
    write_fake: FakeBigQueryWrite,
    jobs_endpoint: str,
    *,
    dataset: str = DATASET,
    revisions: Revisions | None = None,
    timeout_seconds: float = 10.0,
    write_deadline_seconds: float = 5.0,
    **options: Any,
) -> TieredStore:
    """A serving tier (not started) on a database of the Spanner emulator, exporting
    to the BigQuery fakes' `dataset`; `options` go to the TieredStore."""
    analytics = BigQueryStore(
        PROJECT,
        dataset,
        options=bigquery_options(
            StoreSettings(bigquery_write_endpoint=write_fake.address, settle_seconds=0.0),
            QuerySettings(),
        ),
        query_endpoint=jobs_endpoint,
        revisions=revisions,
    )
    serving = SpannerServing(
        spanner_database(database),
        emulator_host=emulator_host,
        timeout_seconds=timeout_seconds,
    )
    observers = StoreObservers(
        conflicts=options.pop("conflicts", None),
        exports=options.pop("export_observer", None),
        loops=options.pop("loop_observer", None),
    )
    return TieredStore(
        serving,
        analytics,
        write_deadline_seconds=write_deadline_seconds,
        dedupe_window_seconds=QuerySettings().dedupe_window_seconds,
        observers=observers,
        **options,
    )
