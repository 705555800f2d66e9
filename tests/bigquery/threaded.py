"""The BigQuery fakes on an event loop of their own, for apps that run on another.

Litestar's synchronous test client runs the app in a thread with its own
loop, where a fake served by the test's loop would never answer. Rows from
every test meet in one session's fakes; the serving tier reads BigQuery only
for rows older than Spanner's reach, which no test writes, so they never mix.
"""

from __future__ import annotations

import asyncio
import threading

from app.settings import QuerySettings, StoreSettings
from app.store.bigquery.store import BigQueryStore
from app.store.copies import ConflictObserver
from app.store.observers import StoreObservers
from app.store.open import bigquery_options, spanner_database
from app.store.spanner.serving import SpannerServing
from app.store.tiered.store import TieredStore
from tests.bigquery.conftest import DATASET, PROJECT
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite


class ThreadedBigQuery:
    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="bigquery-fakes", daemon=True
        )
        self._thread.start()
        self.write = FakeBigQueryWrite()
        asyncio.run_coroutine_threadsafe(self.write.start(), self._loop).result(30)
        self.jobs = FakeBigQueryJobs(self.write, project=PROJECT, dataset=DATASET)
        self.jobs.start()

    def stop(self) -> None:
        self.jobs.stop()
        asyncio.run_coroutine_threadsafe(self.write.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


def serving_store(
    database: str,
    emulator_host: str,
    bigquery: ThreadedBigQuery,
    *,
    conflicts: ConflictObserver | None = None,
) -> TieredStore:
    """The serving tier on a Spanner emulator database and the threaded BigQuery fakes."""
    return TieredStore(
        SpannerServing(spanner_database(database), emulator_host=emulator_host),
        BigQueryStore(
            PROJECT,
            DATASET,
            options=bigquery_options(
                StoreSettings(bigquery_write_endpoint=bigquery.write.address, settle_seconds=0.0),
                QuerySettings(),
            ),
            query_endpoint=bigquery.jobs.endpoint,
        ),
        write_deadline_seconds=5.0,
        dedupe_window_seconds=QuerySettings().dedupe_window_seconds,
        observers=StoreObservers(conflicts=conflicts),
    )
