"""Every store the service can run on, started fresh for each contract test.

A new store joins by adding one entry to `STORES`; it is done when the contract
suite passes on it unchanged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from app.settings import QuerySettings, StoreSettings
from app.store import Store
from app.store.bigquery.store import BigQueryStore
from app.store.duckdb.store import DuckDBStore
from app.store.open import bigquery_options, spanner_database
from app.store.spanner.serving import SpannerServing
from app.store.tiered.store import TieredStore
from tests.bigquery.conftest import DATASET, PROJECT
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.spanner.emulator import SpannerEmulator
from tests.store_contract.mutants import mutant

# The stores every contract test runs on; the serving tier needs the emulator.
# `bigquery-settled` is BigQuery with a settle window, as deployed (rows of the
# last moments are not read until every instance's writes are in).
STORES = [
    "duckdb",
    "memory",
    "bigquery",
    "bigquery-settled",
    pytest.param("serving", marks=pytest.mark.emulator),
]
# Stores that give back `data` as the exact text sent; BigQuery keeps the same
# JSON value in its JSON type, whose text is its own.
EXACT_DATA = {"duckdb", "memory", "serving"}
# With RECORDLINE_CONTRACT_MUTANT set (names, comma-separated), the contract runs
# on those broken stores alone (mutants.py), each of which must fail it.
MUTANTS = os.environ.get("RECORDLINE_CONTRACT_MUTANT")
if MUTANTS:
    STORES = [f"mutant:{name}" for name in MUTANTS.split(",")]
    EXACT_DATA = set(STORES)
# The Storage Write fake behind a test's BigQuery store (with a serving tier too), for
# writing what no store writes: Pub/Sub's own rows (`dead_letters`).
WRITE_FAKE = pytest.StashKey[FakeBigQueryWrite]()
# Mutants that failed a contract test already: one failure is all a mutant must show
# (tests/store_contract/test_mutants.py), so its later tests are skipped.
_FAILED_MUTANTS: set[str] = set()


def _mutant_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    kind = callspec.params.get("make") if callspec is not None else None
    return kind if MUTANTS and isinstance(kind, str) and kind.startswith("mutant:") else None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if _mutant_of(item) in _FAILED_MUTANTS:
        pytest.skip("this mutant failed an earlier contract test")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report: pytest.TestReport = yield
    mutant = _mutant_of(item)
    if mutant is not None and report.when == "call" and report.failed:
        _FAILED_MUTANTS.add(mutant)
    return report


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
    if kind in ("bigquery", "bigquery-settled", "serving"):
        # The real clients against the fakes the BigQuery tests use.
        write = FakeBigQueryWrite()
        await write.start()
        stack.push_async_callback(write.stop)
        jobs = FakeBigQueryJobs(write, project=PROJECT, dataset=DATASET)
        jobs.start()
        stack.callback(jobs.stop)
        request.node.stash[WRITE_FAKE] = write

    def build(retention_days: int = 0) -> Store:
        match kind:
            case "duckdb":
                # With a tail that holds no record, every page is read by DuckDB's SQL
                # (a fresh store's tail holds every record it has: `memory` reads it).
                path = str(tmp_path / "contract.duckdb")
                store = DuckDBStore(path, retention_days=retention_days)
                store.live.tail.max_rows = 0
                return store
            case "memory":
                return DuckDBStore(":memory:", retention_days=retention_days)
            case "serving":
                return TieredStore(
                    SpannerServing(spanner_database(database), emulator_host=emulator.host),
                    bigquery(retention_days),
                    write_deadline_seconds=5.0,
                    dedupe_window_seconds=QuerySettings().dedupe_window_seconds,
                )
            case "bigquery-settled":
                return bigquery(retention_days, settle_seconds=0.5)
            case "bigquery":
                return bigquery(retention_days)
            case _:
                return mutant(kind.removeprefix("mutant:"), retention_days)

    def bigquery(retention_days: int, settle_seconds: float = 0.0) -> BigQueryStore:
        return BigQueryStore(
            PROJECT,
            DATASET,
            options=bigquery_options(
                StoreSettings(
                    bigquery_write_endpoint=write.address,
                    settle_seconds=settle_seconds,
                    write_deadline_seconds=5.0,
                    retention_days=retention_days,
                ),
                QuerySettings(),
            ),
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


@pytest.fixture
def exact_data(request: pytest.FixtureRequest) -> bool:
    """Whether the store gives back `data` as the exact text sent (else the same JSON value)."""
    kind: str = request.node.callspec.params["make"]
    return kind in EXACT_DATA
