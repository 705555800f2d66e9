"""A DuckDB read has a deadline that ends the read, not only the wait for it: past its
time, or once its caller stops waiting, DuckDB interrupts the statement under way (and
any later one the read goes on to), so its reader thread is free for the next read."""

from __future__ import annotations

import asyncio
import time

import duckdb
import pytest

from app.errors import StoreUnavailable
from app.store.duckdb.database import Database
from app.store.duckdb.typed import TypedColumns
from tests.waiting import until

# A statement that runs for minutes unless interrupted.
ENDLESS = (
    "SELECT count(*) FROM range(1000000000) a, range(1000) b WHERE (a.range * b.range) % 7 = 3"
)
# Every reader thread (database.py's _READER_THREADS) and one more.
READS = 5


@pytest.fixture
async def database() -> Database:
    made = Database(":memory:", read_seconds=0.3)
    await made.write(made.open, TypedColumns(None))
    return made


async def quick(database: Database) -> float:
    """Seconds a one-row read takes: long if every reader thread were still busy."""
    started = time.monotonic()
    assert await database.read(lambda cur: cur.execute("SELECT 1").fetchall()) == [(1,)]
    return time.monotonic() - started


async def test_reads_past_their_time_are_stopped_and_their_threads_freed(
    database: Database,
) -> None:
    started = time.monotonic()
    answers = await asyncio.gather(
        *(database.read(lambda cur: cur.execute(ENDLESS).fetchall()) for _ in range(READS)),
        return_exceptions=True,
    )
    # Four ran and were interrupted at their deadline; the fifth waited its whole time
    # for a thread, and was never begun.
    assert all(isinstance(a, StoreUnavailable) for a in answers), answers
    assert "ran past 0.3 s and was stopped" in str(answers[0])
    assert time.monotonic() - started < 2
    assert await quick(database) < 1


async def test_a_read_whose_caller_stopped_waiting_is_stopped(database: Database) -> None:
    database.read_seconds = 60
    reads = [
        asyncio.ensure_future(database.read(lambda cur: cur.execute(ENDLESS).fetchall()))
        for _ in range(READS)
    ]
    await asyncio.sleep(0.2)  # each of the first four under way on a thread
    for read in reads:
        read.cancel()
    await asyncio.gather(*reads, return_exceptions=True)
    assert await quick(database) < 1


async def test_a_read_that_goes_on_to_another_statement_is_stopped_there_too(
    database: Database,
) -> None:
    def two_statements(cur: duckdb.DuckDBPyConnection) -> object:
        cur.execute("SELECT 1").fetchall()
        time.sleep(0.5)  # between statements when its deadline comes
        return cur.execute(ENDLESS).fetchall()

    with pytest.raises(StoreUnavailable):
        await asyncio.gather(*(database.read(two_statements) for _ in range(4)))
    # Each thread's second statement was interrupted as it began, not run for minutes.
    assert await quick(database) < 1.5


async def test_closing_stops_the_reads_under_way(database: Database) -> None:
    # Reads whose callers still wait (closing blocks the loop: no deadline ends them).
    database.read_seconds = 60
    begun = list[int]()

    def endless(cur: duckdb.DuckDBPyConnection) -> object:
        begun.append(1)
        return cur.execute(ENDLESS).fetchall()

    reads = [asyncio.ensure_future(database.read(endless)) for _ in range(READS)]
    await until(lambda: len(begun) == 4, what="every reader thread under way")
    started = time.monotonic()
    database.close_reads()
    assert time.monotonic() - started < 2
    answers = await asyncio.gather(*reads, return_exceptions=True)
    assert all(isinstance(a, StoreUnavailable) for a in answers), answers
