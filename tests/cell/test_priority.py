"""The export's reads at Spanner's low request priority, a reader's at the default.

A database stand-in records the request options of every read and query the
serving tier makes through the library's snapshot API (the calls themselves, their
deadlines and their threads are the service's own): after a BigQuery outage, a
hundred systems' catch-up must yield to their pushes and reads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from app.records import Record
from app.store import PageQuery
from app.store.spanner.calls import LOW_PRIORITY, Accommodations
from app.store.spanner.serving import SpannerDatabase, SpannerServing
from app.threads import DaemonThreads

NOW = 1_800_000_000_000_000


class Snapshot:
    def __init__(self, asked: list[tuple[str, Any]]) -> None:
        self.asked = asked

    def execute_sql(self, sql: str, **options: Any) -> list[Any]:
        self.asked.append((sql.split()[0], options.get("request_options")))
        return []

    def read(self, table: str, names: Any, keys: Any, **options: Any) -> list[Any]:
        self.asked.append((f"read {table}", options.get("request_options")))
        return []


class Database:
    """What the serving tier asks of the library's database, recorded."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, Any]] = []
        # Its channel, closed with the store.
        self.spanner_api = SimpleNamespace(transport=SimpleNamespace(close=lambda: None))

    @contextlib.contextmanager
    def snapshot(self, **_: Any) -> Iterator[Snapshot]:
        yield Snapshot(self.asked)


class Clients:
    """The process's Spanner clients, as `SpannerCalls` uses them, on a stand-in."""

    def __init__(self) -> None:
        self.accommodations = Accommodations()
        self.threads = DaemonThreads(0, prefix="test-spanner")
        self.db = Database()

    def reserve(self) -> None:
        self.threads.grow(8)

    def database(self, _: Any) -> Database:
        return self.db

    async def close(self) -> None:
        self.threads.shutdown(wait=False)


async def test_the_exports_reads_are_low_priority_and_a_readers_are_not() -> None:
    clients = Clients()
    serving = SpannerServing(
        SpannerDatabase("p-123456", "i", "d"),
        clients=clients,  # type: ignore[arg-type]
    )
    await serving.start()
    try:
        # The export's: its rows and their keys, its progress, the watermarks, a check.
        await serving.rows_after(Record, (0, ""), NOW, 10)
        await serving.keys_after(Record, (0, ""), NOW, 10)
        await serving.ledger.progress("records")
        await serving.ledger.watermarks()
        await serving.window_digests("records", 0, NOW, 60_000_000, within=5)
        export = list(clients.db.asked)
        clients.db.asked.clear()
        # A reader's page and look-up.
        query = PageQuery(after_time=0, after_message_id="", before_time=NOW, limit=10)
        await serving.page(Record, query, NOW)
        await serving.latest("r-1")
        await serving.message("m-1")
        reads = list(clients.db.asked)
    finally:
        await serving.close()
    assert len(export) >= 5
    assert all(options == LOW_PRIORITY for _, options in export), export
    assert len(reads) >= 3
    assert all(options is None for _, options in reads), reads
