"""The access record in a DuckDB store: a table of its own beside the rows, written on
the store's writer thread, read on a reader's, and expired with the rows.

Design: docs/security.md#who-read-what
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import duckdb
import pyarrow as pa

from app.store.access import ANYONE, AccessLine, AccessQuery

TABLE: Final = "access_record"
DDL: Final = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
  time TIMESTAMPTZ NOT NULL,
  id VARCHAR NOT NULL,
  action VARCHAR NOT NULL,
  principal VARCHAR,
  status INTEGER NOT NULL,
  entry JSON NOT NULL,
  PRIMARY KEY (time, id)
)"""
# A line written again (its first write's answer lost) is the same line. A batch is one
# statement over an Arrow table of its lines: a statement a line (`executemany`) took
# the writer thread, which the rows' applier shares, about 1 ms a line.
_INCOMING: Final = "access_incoming"
_INSERT: Final = f"""INSERT OR IGNORE INTO {TABLE}
SELECT time, id, action, principal, status, entry::JSON FROM {_INCOMING}"""
_SCHEMA: Final = pa.schema(
    [
        ("time", pa.timestamp("us", tz="UTC")),
        ("id", pa.string()),
        ("action", pa.string()),
        ("principal", pa.string()),
        ("status", pa.int32()),
        ("entry", pa.string()),
    ]
)
_PAGE: Final = f"""SELECT epoch_us(time), id, action, principal, status, entry::VARCHAR
FROM {TABLE}
WHERE time >= make_timestamptz($since) AND time < make_timestamptz($until)
  AND ($before_time IS NULL OR (epoch_us(time), id) < ($before_time, $before_id))
  AND ($action IS NULL OR action = $action)
  AND ($principal IS NULL OR coalesce(principal, '{ANYONE}') = $principal)
ORDER BY time DESC, id DESC
LIMIT $limit"""
EXPIRE: Final = f"DELETE FROM {TABLE} WHERE time < make_timestamptz($before)"


class DuckDBAccess:
    """The access record of one DuckDB store's database."""

    def __init__(
        self,
        *,
        write: Callable[[Callable[[], None]], Awaitable[None]],
        read: Callable[[Callable[[duckdb.DuckDBPyConnection], Any]], Awaitable[Any]],
        connection: Callable[[], duckdb.DuckDBPyConnection],
    ) -> None:
        # The store's writer thread, its readers, and its connection (on the writer's).
        self._write = write
        self._read = read
        self._connection = connection

    async def keep(self, lines: Sequence[AccessLine]) -> None:
        if not lines:
            return
        incoming = pa.table(
            [
                [line.time for line in lines],
                [line.id for line in lines],
                [line.action for line in lines],
                [line.principal for line in lines],
                [line.status for line in lines],
                [line.entry for line in lines],
            ],
            schema=_SCHEMA,
        )

        def insert() -> None:
            con = self._connection()
            con.register(_INCOMING, incoming)
            try:
                con.execute(_INSERT)
            finally:
                con.unregister(_INCOMING)

        await self._write(insert)

    async def page(self, query: AccessQuery) -> list[AccessLine]:
        before_time, before_id = query.before if query.before is not None else (None, None)
        parameters = {
            "since": query.since,
            "until": query.until,
            "before_time": before_time,
            "before_id": before_id,
            "action": query.action,
            "principal": query.principal,
            "limit": query.limit,
        }

        def read(cursor: duckdb.DuckDBPyConnection) -> list[AccessLine]:
            return [
                AccessLine(
                    time=time,
                    id=id,
                    action=action,
                    principal=principal,
                    status=status,
                    entry=entry,
                )
                for time, id, action, principal, status, entry in cursor.execute(
                    _PAGE, parameters
                ).fetchall()
            ]

        lines: list[AccessLine] = await self._read(read)
        return lines
