"""Reconciliation: does BigQuery hold what Spanner holds, window by window?

For each table and each window of `ingest_time` from `--since` up to the export
watermark, both sides are asked how many rows they hold and the XOR of their
message ids' digests: a row missing, doubled or changed in its `ingest_time` or
message id changes a window's count or digest. Spanner keeps rows for its
retention (`schema.retention_days`): a window older than that says so.

Design: docs/stores.md#the-exporter
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final, NamedTuple, Protocol

from app.records import TABLES
from app.store.bigquery.queries import QueryRunner

# The windows compared: an hour of rows each.
WINDOW_MICROS: Final = 3_600_000_000
# One Spanner call per window, given this long, whatever the range (a day is 24
# calls): Spanner computes a window's count and digest itself over the time index,
# and an hour at 100 messages a second is 360,000 rows of two columns.
SPANNER_SECONDS: Final = 60.0
# BigQuery is asked this many windows at a time (a day of hours), each query
# given this long, billed for `message_id` and `ingest_time` (about 40 bytes a
# row: some 350 MB for a day at 100 a second, under the default bytes cap). A day
# neither side holds a row of costs that query and one for Spanner's first row in
# it. These are bounds, not measurements.
CHUNK_WINDOWS: Final = 24
BIGQUERY_SECONDS: Final = 120.0

_BIGQUERY_SQL: Final = (
    "SELECT DIV(UNIX_MICROS(ingest_time), @window) AS w, COUNT(*) AS n, "
    "BIT_XOR(CAST(CONCAT('0x', SUBSTR(TO_HEX(MD5(message_id)), 1, 15)) AS INT64)) AS d "
    "FROM {table} "
    "WHERE ingest_time >= TIMESTAMP_MICROS(@since) AND ingest_time < TIMESTAMP_MICROS(@until) "
    "GROUP BY w ORDER BY w"
)


class Digests(Protocol):
    """Spanner's side (`SpannerServing`)."""

    async def window_digests(
        self, table: str, since: int, until: int, window: int, *, within: float
    ) -> dict[int, tuple[int, int]]: ...

    async def first_time(self, table: str, since: int, until: int) -> int | None: ...


class Window(NamedTuple):
    """One table's window: its start (µs), and (rows, digest) on each side."""

    table: str
    start: int
    spanner: tuple[int, int]
    bigquery: tuple[int, int]

    @property
    def same(self) -> bool:
        return self.spanner == self.bigquery


async def verify(
    serving: Digests,
    queries: QueryRunner,
    table_name: dict[str, str],
    since: int,
    until: dict[str, int],
    *,
    window: int = WINDOW_MICROS,
) -> AsyncIterator[Window]:
    """Every window that holds rows on either side, of every table, from `since`
    (rounded down to a window) to that table's `until`, in table and time order.
    `table_name` gives BigQuery's qualified name of each table; `queries` should
    give a query BIGQUERY_SECONDS."""
    first = since // window * window
    span = window * CHUNK_WINDOWS
    for table in TABLES:
        end = until[table]
        for chunk in range(first, end, span):
            chunk_end = min(chunk + span, end)
            rows = await queries.run(
                _BIGQUERY_SQL.format(table=table_name[table]),
                {"window": window, "since": chunk, "until": chunk_end},
            )
            bigquery = {int(w): (int(n), int(d)) for w, n, d in rows}
            # Where Spanner's rows of the chunk begin: no window before it is read.
            spanner_from = await serving.first_time(table, chunk, chunk_end)
            for start in range(chunk, chunk_end, window):
                key = start // window
                stop = min(start + window, chunk_end)
                if spanner_from is None or spanner_from >= stop:
                    spanner = {}
                else:
                    spanner = await serving.window_digests(
                        table, start, stop, window, within=SPANNER_SECONDS
                    )
                here = spanner.get(key, (0, 0)), bigquery.get(key, (0, 0))
                if here != ((0, 0), (0, 0)):
                    yield Window(table, start, *here)
