"""A DuckDB store's retention: rows older than it deleted, and the producers' epochs
not heard of within it, once at the start and then every hour.

Design: docs/stores.md#duckdb-the-default-duckdbfile-or-memory
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import duckdb

from app.errors import StoreUnavailable
from app.records import DAY_MICROS
from app.store.access import ACCESS_RETENTION_DAYS
from app.store.duckdb import access
from app.store.duckdb import producers as book

log = logging.getLogger(__name__)

# With a retention, rows older than it are deleted this often: reads refuse
# bounds older than the retention anyway (410), so an hour of lingering rows
# costs disk, not correctness, and one DELETE an hour costs nothing measurable.
EXPIRE_EVERY_SECONDS: Final = 3600.0
_EXPIRE_SQL: Final = [
    f"DELETE FROM {table} WHERE ingest_time < make_timestamptz($before)"
    for table in ("records", "rejected")
]
# The typed columns of the records that went (written in their records'
# transaction, so no other row lacks its record).
_EXPIRE_TYPED_SQL: Final = (
    "DELETE FROM record_fields f "
    "WHERE NOT EXISTS (SELECT 1 FROM records r WHERE r.message_id = f.message_id)"
)

# What a round deleted: how many rows, and the producers' epochs it found idle.
Expired = tuple[int, list[tuple[str, int]]]


@dataclass(slots=True)
class Retention:
    """Deletes what is older than `days` (none while 0) through the store's writer
    thread (`write`, on its `connection`), and tells the producers' `ledger` which of
    their epochs went with it."""

    days: int
    write: Callable[[Callable[[], Expired]], Awaitable[Expired]]
    connection: Callable[[], duckdb.DuckDBPyConnection]
    ledger: book.DuckDBLedger
    # Now, in nanoseconds since the epoch.
    clock: Callable[[], int]
    every: float = EXPIRE_EVERY_SECONDS

    async def expire(self) -> int:
        """Delete records and rejections older than the retention, and the access
        record's lines older than its own; how many rows went."""
        now = self.clock() // 1000
        before = now - self.days * DAY_MICROS

        def delete() -> Expired:
            con = self.connection()
            # The access record's lines go after their own time, whatever the rows'.
            con.execute(access.EXPIRE, {"before": now - ACCESS_RETENTION_DAYS * DAY_MICROS})
            if not self.days:
                return 0, []
            deleted = 0
            for statement in _EXPIRE_SQL:
                row = con.execute(statement, {"before": before}).fetchone()
                deleted += row[0] if row else 0
            con.execute(_EXPIRE_TYPED_SQL)
            return deleted, book.expire(con, before)

        deleted, idle = await self.write(delete)
        if not self.days:
            return 0
        # Producers' epochs not heard of within the retention go with their rows,
        # unless an append since (not applied yet) heard of them again.
        await self.ledger.forget(idle, before)
        if deleted:
            log.info("deleted %d rows older than the %d-day retention", deleted, self.days)
        return deleted

    async def forever(self) -> None:
        """Expire every `every` seconds; a round that fails is logged, the next tries again."""
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.expire()
            except StoreUnavailable as exc:
                log.error("deleting expired rows failed: %s", exc)
