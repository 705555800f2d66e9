"""Reconciliation: does BigQuery hold what Spanner holds, window by window?

For each table and each window of `ingest_time` (an hour by default, aligned
on the epoch) from `--since` up to the export watermark (every row before it
should be in BigQuery), both sides are asked how many rows they hold and the
XOR of their message ids' digests (`SpannerServing.window_digests`, and the
same digest computed by BigQuery in SQL). A row missing, doubled or changed
in its `ingest_time` or message id changes a window's count or digest. The
BigQuery query reads two columns of the partitions in the range (what it is
billed: `message_id` and `ingest_time`, about 40 bytes a row); Spanner's,
one strong read of the same two columns.

Spanner keeps rows for its retention (`schema.retention_days`): a window
older than that holds fewer rows there than in BigQuery, and says so.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from app.records import TABLES
from app.store.bigquery.queries import QueryRunner
from app.store.spanner.serving import SpannerServing

# The windows compared: an hour of rows each.
WINDOW_MICROS: Final = 3_600_000_000
# A verification reads a day of rows in one Spanner call: given this long.
SPANNER_SECONDS: Final = 120.0

_BIGQUERY_SQL: Final = (
    "SELECT DIV(UNIX_MICROS(ingest_time), @window) AS w, COUNT(*) AS n, "
    "BIT_XOR(CAST(CONCAT('0x', SUBSTR(TO_HEX(MD5(message_id)), 1, 15)) AS INT64)) AS d "
    "FROM {table} "
    "WHERE ingest_time >= TIMESTAMP_MICROS(@since) AND ingest_time < TIMESTAMP_MICROS(@until) "
    "GROUP BY w ORDER BY w"
)


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
    serving: SpannerServing,
    queries: QueryRunner,
    table_name: dict[str, str],
    since: int,
    until: dict[str, int],
    *,
    window: int = WINDOW_MICROS,
) -> list[Window]:
    """Every window of every table from `since` (rounded down to a window) to that
    table's `until`, in table and time order. `table_name` gives BigQuery's
    qualified name of each table."""
    start = since // window * window
    found: list[Window] = []
    for table in TABLES:
        end = until[table]
        if end <= start:
            continue
        spanner = await serving.window_digests(table, start, end, window, within=SPANNER_SECONDS)
        rows = await queries.run(
            _BIGQUERY_SQL.format(table=table_name[table]),
            {"window": window, "since": start, "until": end},
        )
        bigquery = {int(w): (int(n), int(d)) for w, n, d in rows}
        for key in sorted(set(spanner) | set(bigquery)):
            found.append(
                Window(table, key * window, spanner.get(key, (0, 0)), bigquery.get(key, (0, 0)))
            )
    return found
