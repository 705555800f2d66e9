"""A DuckDB store's early tail: with followers waiting, an append's new records go to
the tail once journaled (durable), not once DuckDB has them (~3 ms later).

Design: docs/stores.md#duckdb-the-default-duckdbfile-or-memory
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import duckdb

from app.errors import StoreUnavailable
from app.records import Record
from app.store.duckdb.sql import STORED_RECORD_IDS_SQL
from app.store.live import Live

log = logging.getLogger(__name__)

Read = Callable[
    [Callable[[duckdb.DuckDBPyConnection], list[tuple[str]]]], Awaitable[list[tuple[str]]]
]


@dataclass
class EarlyTail:
    """Asks which of an append's records DuckDB will keep (`read`, beside `pending`: the
    message ids journaled and not yet applied, which the applier keeps), and reports
    them readable to `live`. The applier asks only while no other append is under way."""

    read: Read
    pending: collections.Counter[str]
    live: Live
    clock: Callable[[], int]

    def ask(self, records: list[Record]) -> asyncio.Future[list[Record]]:
        """Start asking which of `records` (an append's, followed) to show once they are
        journaled."""
        return asyncio.ensure_future(self.new_records(records))

    async def answer(self, asked: asyncio.Future[list[Record]]) -> list[Record] | None:
        """The records `ask` found, or None if the read failed (shown once applied)."""
        try:
            return await asked
        except StoreUnavailable as exc:
            log.warning("records not shown before they are applied: %s", exc)
            return None

    def show(self, records: list[Record]) -> None:
        """Add journaled records to the tail: durable and readable in order."""
        self.live.readable(records, now=self.clock() // 1000)  # followers read again

    async def new_records(self, records: list[Record]) -> list[Record]:
        """Of `records` (an append's, before it is journaled), those DuckDB will keep
        once their frame is applied: the first copy of each message, not journaled
        before (`pending`, looked at now, while no other append is under way) nor
        stored already (one read by message id, which DuckDB's primary key serves).
        Every frame journaled before this one is pending now or applied already, and
        the read sees what is applied when it starts, so nothing is missed."""
        firsts: dict[str, Record] = {}
        for record in records:
            if record.message_id not in self.pending:
                firsts.setdefault(record.message_id, record)
        if not firsts:
            return []
        params = {"ids": list(firsts)}
        stored = await self.read(lambda cur: cur.execute(STORED_RECORD_IDS_SQL, params).fetchall())
        for (message_id,) in stored:
            del firsts[message_id]
        return list(firsts.values())
