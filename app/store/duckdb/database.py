"""A DuckDB store's database: its one connection, the single thread every write runs
on, and the reader threads, each reading through a cursor of its own.

Design: docs/stores.md#duckdb-the-default-duckdbfile-or-memory
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import duckdb

from app.errors import StoreUnavailable
from app.records import Record, Rejection
from app.store.duckdb import access
from app.store.duckdb import producers as book
from app.store.duckdb.sql import add_missing_columns, ddl
from app.store.duckdb.typed import TypedColumns

log = logging.getLogger(__name__)
T = TypeVar("T")

# Reads on two cores: more threads only queue behind DuckDB's own parallelism.
_READER_THREADS = 4
# Longest a read runs by default (RECORDLINE_QUERY_TIMEOUT_SECONDS's default), and how
# soon a read past it is interrupted again if it went on to another statement.
READ_SECONDS = 10.0
_INTERRUPT_AGAIN_SECONDS = 0.01
# DuckDB reads wide columns (`data`) lazily only for Top-N queries up to this
# many rows; the default (50) is below our page size, and raising it halved
# the latency of a 100-row page out of 1M rows (p50 16.6 → 7.0 ms).
_LATE_MATERIALIZATION_ROWS = 2000


class Database:
    """One DuckDB database (`:memory:` for a throwaway one), open from `open` until
    `close_reads`: writes one at a time on the writer thread, reads beside them."""

    def __init__(self, path: str, *, read_seconds: float = READ_SECONDS) -> None:
        self.path = path
        self.read_seconds = read_seconds
        # None until open, and again once closing: no read or write starts then.
        self.con: duckdb.DuckDBPyConnection | None = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="duckdb-writer")
        self._readers = ThreadPoolExecutor(_READER_THREADS, thread_name_prefix="duckdb-reader")
        self._local = threading.local()
        # Every reader thread's cursor, which closing interrupts.
        self._cursors: list[duckdb.DuckDBPyConnection] = []

    def open(self, typed: TypedColumns) -> None:
        """Connect, and make the tables of this version (on the writer thread)."""
        # DuckDB's allocator hands memory back to the system from a thread of its own, and
        # flushes what a query of more than 16 MiB used as it ends: without them, what a
        # page among records of 4 MB used (+800 MB) stayed with the process until DuckDB
        # next allocated, and pages read one after another held twice a page's. They are
        # set, not given to `connect`: a connection given a configuration refuses every
        # later one to the same file in this process given none (an analyst's, a test's).
        con = duckdb.connect(self.path)
        con.execute("SET allocator_background_threads = true")
        con.execute("SET allocator_flush_threshold = '16MiB'")
        con.execute("SET allocator_bulk_deallocation_flush_threshold = '16MiB'")
        for table, row_type in (("records", Record), ("rejected", Rejection)):
            con.execute(ddl(table, row_type))
            add_missing_columns(con, table, row_type)
        con.execute("CREATE INDEX IF NOT EXISTS records_id ON records (id)")
        for statement in book.DDL:
            con.execute(statement)
        con.execute(access.DDL)
        typed.open(con)
        self.con = con

    def close_reads(self) -> duckdb.DuckDBPyConnection | None:
        """Start no read or write again, and stop the reads under way (and those queued,
        as they begin): DuckDB interrupts them, as no deadline of theirs can while this
        holds the loop; the connection, for the writer thread to close."""
        con, self.con = self.con, None
        closing = threading.Thread(target=self._readers.shutdown, name="duckdb-readers-closing")
        closing.start()
        while closing.is_alive():
            for cursor in list(self._cursors):  # a no-op on a cursor between statements
                cursor.interrupt()
            closing.join(_INTERRUPT_AGAIN_SECONDS)
        return con

    def close_writes(self) -> None:
        """Wait for the writes under way (the last, the connection's close)."""
        self._writer.shutdown(wait=True)

    def connection(self) -> duckdb.DuckDBPyConnection:
        if self.con is None:
            raise StoreUnavailable("the DuckDB store is closed")
        return self.con

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        # One cursor per reader thread: a DuckDB connection is not safe to
        # share between threads, and settings are per cursor.
        cursor: duckdb.DuckDBPyConnection | None = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = self.connection().cursor()
            cursor.execute(f"SET late_materialization_max_rows = {_LATE_MATERIALIZATION_ROWS}")
            self._local.cursor = cursor
            self._cursors.append(cursor)
        return cursor

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the writer thread; a DuckDB error as StoreUnavailable."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)
        except duckdb.Error as exc:
            log.error("DuckDB write failed: %s", exc)
            raise StoreUnavailable(f"DuckDB write failed: {exc}") from exc

    async def read(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """`fn(cursor)` on a reader thread; a DuckDB error, or a read that ran past
        `read_seconds`, as StoreUnavailable. A read past its time, or whose caller stopped
        waiting, is interrupted: DuckDB stops its statement and the thread is free again
        (its next statements too, should it go on to them)."""
        reading = _Reading()

        def run() -> T:
            cursor = self._cursor()
            with reading.on(cursor):
                return fn(cursor)

        loop = asyncio.get_running_loop()
        try:
            answer = loop.run_in_executor(self._readers, run)
        except RuntimeError as exc:  # the pool is shut down
            raise StoreUnavailable(f"the DuckDB store is closed: {exc}") from exc
        # A timer, not asyncio.timeout: a page reads once or twice, and this is every read.
        timer = loop.call_later(self.read_seconds, reading.expire, answer)
        try:
            return await answer
        except asyncio.CancelledError:
            if reading.expired:
                raise StoreUnavailable(
                    f"a DuckDB read ran past {self.read_seconds:g} s and was stopped"
                ) from None
            raise
        except duckdb.Error as exc:
            raise StoreUnavailable(f"DuckDB read failed: {exc}") from exc
        finally:
            timer.cancel()
            if not reading.done:  # past its time, or its caller gone
                _stop(loop, reading)


class _Reading:
    """The cursor a read runs on while it runs: what its deadline interrupts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cursor: duckdb.DuckDBPyConnection | None = None
        self.done = False
        self.expired = False

    def expire(self, answer: asyncio.Future[Any]) -> None:
        """Its time is up: stop waiting for `answer` (the read itself is then stopped)."""
        self.expired = True
        answer.cancel()

    @contextlib.contextmanager
    def on(self, cursor: duckdb.DuckDBPyConnection) -> Iterator[None]:
        with self._lock:
            if self.done:  # stopped before it began: its caller is gone
                raise duckdb.InterruptException("the read was stopped before it began")
            self._cursor = cursor
        try:
            yield
        finally:
            with self._lock:
                self._cursor, self.done = None, True

    def interrupt(self) -> bool:
        """Interrupt the statement under way; whether the read is still running (not
        yet begun counts: it will not begin)."""
        with self._lock:
            if self._cursor is not None:
                # DuckDB's interrupt is made to be called from another thread; on a
                # cursor between statements it is a no-op, hence again until done.
                self._cursor.interrupt()
                return True
            self.done = True
            return False


def _stop(loop: asyncio.AbstractEventLoop, reading: _Reading) -> None:
    """Interrupt `reading` until its function returns (nothing to do once it has)."""
    if reading.interrupt():
        loop.call_later(_INTERRUPT_AGAIN_SECONDS, _stop, loop, reading)
