"""Every store the service can run on, started fresh for each contract test.

A new store joins by adding one entry to `STORES`; it is done when the contract
suite passes on it unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from app.settings import QuerySettings, StoreSettings
from app.store import Store
from app.store.bigquery.store import BigQueryStore
from app.store.duckdb.store import DuckDBStore
from app.store.spanner.serving import SpannerDatabase, SpannerServing
from app.store.tiered import TieredStore
from tests.bigquery.conftest import DATASET, PROJECT
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.spanner.emulator import SpannerEmulator

# The stores every contract test runs on; the serving tier needs the emulator.
STORES = ["duckdb", "memory", "bigquery", pytest.param("serving", marks=pytest.mark.emulator)]


@pytest.fixture(params=STORES)
async def make(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[int], Store]]:
    """Unstarted stores of one kind; whatever the test started is closed after it."""
    kind: str = request.param
    stack = contextlib.AsyncExitStack()
    if kind == "serving":
        emulator: SpannerEmulator = request.getfixturevalue("spanner_emulator")
        database = emulator.database()
    if kind in ("bigquery", "serving"):
        # The real clients against the fakes the BigQuery tests use.
        write = FakeBigQueryWrite()
        await write.start()
        stack.push_async_callback(write.stop)
        jobs = FakeBigQueryJobs(write, project=PROJECT, dataset=DATASET)
        jobs.start()
        stack.callback(jobs.stop)

    def build(retention_days: int = 0) -> Store:
        match kind:
            case "duckdb":
                return DuckDBStore(str(tmp_path / "contract.duckdb"), retention_days=retention_days)
            case "memory":
                return DuckDBStore(":memory:", retention_days=retention_days)
            case "serving":
                return TieredStore(
                    SpannerServing(SpannerDatabase.from_url(database), emulator_host=emulator.host),
                    bigquery(retention_days),
                    write_deadline_seconds=5.0,
                    dedupe_window_seconds=QuerySettings().dedupe_window_seconds,
                )
            case _:
                return bigquery(retention_days)

    def bigquery(retention_days: int) -> BigQueryStore:
        return BigQueryStore(
            PROJECT,
            DATASET,
            store=StoreSettings(
                bigquery_write_endpoint=write.address,
                settle_seconds=0.0,
                write_deadline_seconds=5.0,
                retention_days=retention_days,
            ),
            query=QuerySettings(),
            query_endpoint=jobs.endpoint,
        )

    async with stack:
        yield build


@pytest.fixture
async def store(make: Callable[[int], Store]) -> AsyncIterator[Store]:
    started = make(0)
    await started.start()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(started.close)
        yield started
