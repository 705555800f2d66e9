"""What BigQuery holds of a table past a point: the question both a batch whose stream
is gone (`app.store.tiered.exporter`) and `recordline export resync` ask.

A query of two columns (`ingest_time`, `message_id`) of the partitions from that
point on, billed for those columns of those partitions: a few bytes a row,
from the day of the progress on.
"""

from __future__ import annotations

from typing import Final

from app.store.bigquery.queries import QueryRunner

_HELD_SQL: Final = (
    "SELECT UNIX_MICROS(ingest_time) AS t, message_id FROM {table} "
    "WHERE ingest_time >= TIMESTAMP_MICROS(@since)"
)


class QueryHeld:
    """BigQuery's rows of each table from a time on, asked with `queries`;
    `names` gives each table's qualified name (`project.dataset.table`, quoted)."""

    def __init__(self, queries: QueryRunner, names: dict[str, str]) -> None:
        self._queries = queries
        self._names = names

    async def held(self, table: str, since: int) -> list[tuple[int, str]]:
        """The keys `(ingest_time, message_id)` of `table`'s rows with an ingest time
        at or after `since` (µs), each once, in key order."""
        rows = await self._queries.run(_HELD_SQL.format(table=self._names[table]), {"since": since})
        return sorted({(int(t), str(m)) for t, m in rows})
