from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from app.settings import Settings
from app.store.tiered.exporter import ExportObserver
from app.store.tiered.store import TieredStore
from app.typed.revisions import Revisions
from tests.bigquery.conftest import DATASET, PROJECT
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.spanner.emulator import SpannerEmulator
from tests.spanner.exporting import tiered_store


@pytest.fixture
def database(spanner_emulator: SpannerEmulator) -> str:
    """A fresh database with the service's schema: its RECORDLINE_SERVING URL."""
    return spanner_emulator.database()


@pytest.fixture
def serving_settings(
    database: str,
    spanner_emulator: SpannerEmulator,
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
) -> Callable[..., Settings]:
    """Settings for the serving tier on the emulator and the BigQuery fakes, as an
    operator would write them for one process."""

    def make(**extra: str) -> Settings:
        return Settings.load(
            {
                "RECORDLINE_STORE": f"bigquery://{PROJECT}/{DATASET}",
                "RECORDLINE_SERVING": database,
                "SPANNER_EMULATOR_HOST": spanner_emulator.host,
                "RECORDLINE_BIGQUERY_WRITE_ENDPOINT": write_fake.address,
                "BIGQUERY_EMULATOR_HOST": jobs_fake.endpoint,
                # One process that exports too, as the dev stack runs it.
                "RECORDLINE_EXPORT_IN_SERVICE": "true",
                **extra,
            }
        )

    return make


@pytest.fixture
async def make_tiered(
    database: str,
    spanner_emulator: SpannerEmulator,
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
) -> AsyncIterator[Callable[..., Any]]:
    """Started tiered stores; `clock` (ns) and timeouts may be set per test."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(
            *,
            url: str | None = None,
            clock: Callable[[], int] | None = None,
            timeout_seconds: float = 10.0,
            write_deadline_seconds: float = 5.0,
            start: bool = True,
            export: bool = False,
            export_observer: ExportObserver | None = None,
            revisions: Revisions | None = None,
        ) -> TieredStore:
            extra = {} if clock is None else {"clock": clock}
            store = tiered_store(
                url or database,
                spanner_emulator.host,
                write_fake,
                jobs_fake.endpoint,
                revisions=revisions,
                timeout_seconds=timeout_seconds,
                write_deadline_seconds=write_deadline_seconds,
                export=export,
                export_observer=export_observer,
                **extra,
            )
            if start:
                await store.start()
                stack.push_async_callback(store.close)
            return store

        yield make
