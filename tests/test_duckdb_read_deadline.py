"""A DuckDB read has a deadline that ends the read, not only the wait for it: past its
time, or once its caller stops waiting, DuckDB interrupts the statement under way (and
any later one the read goes on to), so its reader thread is free for the next read."""

from __future__ import annotations

import asyncio
import threading
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


class Endless:
    """A read that runs ENDLESS, counting the reads begun (one a reader thread)."""

    def __init__(self) -> None:
        self.begun = 0

    def __call__(self, cur: duckdb.DuckDBPyConnection) -> object:
        self.begun += 1
        return cur.execute(ENDLESS).fetchall()


async def under_way(database: Database) -> list[asyncio.Future[object]]:
    """READS endless reads, once every reader thread runs one (the last one queued)."""
    endless = Endless()
    reads = [asyncio.ensure_future(database.read(endless)) for _ in range(READS)]
    await until(lambda: endless.begun == 4, what="every reader thread under way")
    return reads


async def test_a_read_whose_caller_stopped_waiting_is_stopped(database: Database) -> None:
    database.read_seconds = 60
    reads = await under_way(database)
    for read in reads:
        read.cancel()
    await asyncio.gather(*reads, return_exceptions=True)
    assert await quick(database) < 1


async def test_a_read_that_goes_on_to_another_statement_is_stopped_there_too(
    database: Database,
) -> None:
    expired = threading.Event()

    def two_statements(cur: duckdb.DuckDBPyConnection) -> object:
        cur.execute("SELECT 1").fetchall()
        expired.wait(10)  # between statements when its deadline comes and goes
        return cur.execute(ENDLESS).fetchall()

    answers = await asyncio.gather(
        *(database.read(two_statements) for _ in range(4)), return_exceptions=True
    )
    assert all(isinstance(a, StoreUnavailable) for a in answers), answers
    expired.set()  # each goes on to its second statement only now
    # Each thread's second statement was interrupted as it began, not run for minutes.
    assert await quick(database) < 1.5


async def test_closing_stops_the_reads_under_way(database: Database) -> None:
    # Reads whose callers still wait (closing blocks the loop: no deadline ends them).
    database.read_seconds = 60
    reads = await under_way(database)
    started = time.monotonic()
    database.close_reads()
    assert time.monotonic() - started < 2
    answers = await asyncio.gather(*reads, return_exceptions=True)
    assert all(isinstance(a, StoreUnavailable) for a in answers), answers
