"""The SQL of the BigQuery store: every statement it runs, and why each prunes.

On-demand BigQuery bills every referenced column of every partition and
clustered block a query cannot prune, at least 10 MiB per table referenced.
The tables are partitioned by day on `ingest_time`, clustered on it, and have
search indexes on `id` and `message_id`: each statement below filters on
constants (query parameters) that those can use, and names the few columns it
needs. Values are always named parameters; only the dataset's own table names,
held to BigQuery's character set, are put into the text.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from app.records import Kind, Record, Rejection, Row, columns
from app.store.access import ANYONE


def select_list(row_type: type[Row], alias: str, unshown: tuple[str, ...] = ()) -> str:
    # Timestamps come back as int microseconds and JSON as its text, which is
    # what a Record holds: no datetime or dict is built per row. Columns in
    # `unshown` are left out (the reader fills them in: `paging.py`).
    out = []
    for column in columns(row_type):
        if column.name in unshown:
            continue
        name = f"{alias}.`{column.name}`"
        match column.kind:
            case Kind.TIMESTAMP:
                out.append(f"UNIX_MICROS({name}) AS `{column.name}`")
            case Kind.JSON:
                out.append(f"TO_JSON_STRING({name}) AS `{column.name}`")
            case _:
                out.append(name)
    return ", ".join(out)


def page_sql(
    records: str,
    conditions: str = "",
    copies: str = "",
    *,
    unshown: tuple[str, ...] = (),
    unread: tuple[str, ...] = (),
    typed: bool = False,
) -> str:
    # One scan of [reach, end): constant bounds on ingest_time, the partition
    # and first clustering column, so only the blocks of that range are read.
    # A message's first copy is the one with the smallest ingest_time (then
    # publish_time, trace_id, subscription, so byte-identical copies of a
    # resent batch keep one). A row is shown unless the copy before it lies
    # within its look-back: after its publish time (less the clock margin)
    # and within the dedupe window. `previous_copy` is returned so the store
    # can tell which rows' look-back reaches before the scan. A filter's
    # `conditions` hold for the first copy shown (a later copy that differs is
    # hidden all the same); `copies` are those every copy of a message shares
    # (its message_id), which may prune the scan itself. On demand, BigQuery
    # bills each column a query references: a projection's page returns none
    # of the columns it does not show (`unshown`), and its scan names each
    # column it reads, `unread` ones (shown by none, read by no condition) not
    # among them, nor `fields` unless a condition reads a typed field (`typed`).
    scanned = "r.*"
    if unread:
        named = [f"r.`{c.name}`" for c in columns(Record) if c.name not in unread]
        scanned = ", ".join([*named, "r.`fields`"] if typed else named)
    return f"""
SELECT {select_list(Record, "c", unshown)}, UNIX_MICROS(c.previous_copy) AS previous_copy
FROM (
  SELECT {scanned}, LAG(r.ingest_time) OVER (
    PARTITION BY r.message_id ORDER BY r.ingest_time, r.publish_time, r.trace_id, r.subscription
  ) AS previous_copy
  FROM {records} AS r
  WHERE r.ingest_time >= TIMESTAMP_MICROS(@reach)
    AND r.ingest_time < TIMESTAMP_MICROS(@end){copies}
) AS c
WHERE c.ingest_time >= TIMESTAMP_MICROS(@after_time)
  AND (c.ingest_time > TIMESTAMP_MICROS(@after_time) OR c.message_id > @after_message_id)
  AND (
    c.previous_copy IS NULL
    OR UNIX_MICROS(c.previous_copy) < GREATEST(
      UNIX_MICROS(c.publish_time) - @clock_skew, UNIX_MICROS(c.ingest_time) - @window
    )
  ){conditions}
ORDER BY c.ingest_time, c.message_id
LIMIT @limit
""".strip()


def record_counts_sql(records: str, kept: str = "TRUE", copies: str = "") -> str:
    # A records page's rule in one scan, counted by bucket of @width µs from @since:
    # [reach, until), reach two minutes before `since` (EARLIER_COPIES_MICROS) as a
    # page's scan reaches before its cursor, each row's previous copy found by LAG, and
    # a row of [since, until) counted if it is shown (no copy within its look-back) and
    # `kept` (a filter's conditions on the copy, `r`) holds for it. Only the columns the
    # rule and the filter read are named, so only those are billed: copies are ordered
    # by ingest_time and publish_time alone, not by trace_id and subscription as a page
    # breaks their ties (those two bill twice what the rest of the rule does). Copies
    # tied on both are one publication of the message (its id and publish time, which
    # Pub/Sub never changes) stored twice at one time: one of them is counted, and they
    # hold the same payload and attributes, all a filter reads. The bucket's difference
    # is in parentheses: sqlglot (which the tests' fake translates BigQuery's SQL with)
    # drops the precedence of DIV's first argument.
    return f"""
SELECT DIV((UNIX_MICROS(c.ingest_time) - @since), @width) AS bucket, COUNT(*) AS found
FROM (
  SELECT r.ingest_time, r.publish_time, COALESCE({kept}, FALSE) AS kept,
    LAG(r.ingest_time) OVER (
      PARTITION BY r.message_id ORDER BY r.ingest_time, r.publish_time
    ) AS previous_copy
  FROM {records} AS r
  WHERE r.ingest_time >= TIMESTAMP_MICROS(@reach)
    AND r.ingest_time < TIMESTAMP_MICROS(@until){copies}
) AS c
WHERE c.ingest_time >= TIMESTAMP_MICROS(@since)
  AND c.kept
  AND (
    c.previous_copy IS NULL
    OR UNIX_MICROS(c.previous_copy) < GREATEST(
      UNIX_MICROS(c.publish_time) - @clock_skew, UNIX_MICROS(c.ingest_time) - @window
    )
  )
GROUP BY bucket
""".strip()


def rejection_counts_sql(rejected: str, conditions: str = "") -> str:
    # Every rejection of [since, until) a filter keeps, as a rejections page lists them
    # (no dedupe pass), counted by bucket: the same constant range on the partitioning
    # and clustering column, and only the columns the filter reads besides it.
    return f"""
SELECT DIV((UNIX_MICROS(j.ingest_time) - @since), @width) AS bucket, COUNT(*) AS found
FROM {rejected} AS j
WHERE j.ingest_time >= TIMESTAMP_MICROS(@since)
  AND j.ingest_time < TIMESTAMP_MICROS(@until){conditions}
GROUP BY bucket
""".strip()


def earlier_copies_sql(records: str) -> str:
    # For the few rows whose look-back starts before the page's scan: the
    # latest copy of each before the scan. A constant IN list and a constant
    # range, so the search index on message_id and the partitions prune.
    return f"""
SELECT e.message_id, UNIX_MICROS(MAX(e.ingest_time)) AS last_copy
FROM {records} AS e
WHERE e.message_id IN UNNEST(@message_ids)
  AND e.ingest_time >= TIMESTAMP_MICROS(@since)
  AND e.ingest_time < TIMESTAMP_MICROS(@reach)
GROUP BY e.message_id
""".strip()


def rejections_sql(rejected: str, conditions: str = "") -> str:
    # The same constant range as a records page, on the same partitioning and
    # clustering column; rejections are rare, so no dedupe pass is made: a
    # message rejected on two deliveries is listed twice (replay is idempotent).
    return f"""
SELECT {select_list(Rejection, "j")}
FROM {rejected} AS j
WHERE j.ingest_time >= TIMESTAMP_MICROS(@after_time)
  AND j.ingest_time < TIMESTAMP_MICROS(@end)
  AND (
    j.ingest_time > TIMESTAMP_MICROS(@after_time) OR j.message_id > @after_message_id
  ){conditions}
ORDER BY j.ingest_time, j.message_id
LIMIT @limit
""".strip()


def next_partition_sql(partitions: str) -> str:
    # Partition metadata: which day after an empty scan holds rows, for the
    # price of the 10 MiB minimum instead of a scan of every day between.
    return f"""
SELECT MIN(p.partition_id) AS partition_id
FROM {partitions} AS p
WHERE p.table_name = @table
  AND p.partition_id >= @from_day
  AND p.partition_id < @before_day
  AND p.total_rows > 0
""".strip()


def first_row_sql(table: str) -> str:
    # Where the rows of one day partition start: one narrow column of one day.
    return f"""
SELECT UNIX_MICROS(MIN(r.ingest_time)) AS first_row
FROM {table} AS r
WHERE r.ingest_time >= TIMESTAMP_MICROS(@since)
  AND r.ingest_time < TIMESTAMP_MICROS(@until)
""".strip()


def latest_sql(records: str) -> str:
    # Among first copies only (a later copy of a message is never shown), an
    # event time beats none (NULLS LAST), then the later publish, then the
    # later write; message_id only makes the choice deterministic. `id = @id`
    # is served by the search index: only blocks holding the id are read, and
    # ranking copies there reads no other column or block.
    return f"""
SELECT {select_list(Record, "c")}
FROM (
  SELECT r.*, ROW_NUMBER() OVER (
    PARTITION BY r.message_id ORDER BY r.ingest_time, r.publish_time, r.trace_id, r.subscription
  ) AS copy
  FROM {records} AS r
  WHERE r.id = @id
    AND r.ingest_time >= TIMESTAMP_MICROS(@not_before)
    AND r.ingest_time < TIMESTAMP_MICROS(@before)
) AS c
WHERE c.copy = 1
ORDER BY c.`timestamp` DESC NULLS LAST, c.publish_time DESC, c.ingest_time DESC, c.message_id DESC
LIMIT 1
""".strip()


def stored_sql(records: str) -> str:
    return f"""
SELECT {select_list(Record, "r")}
FROM {records} AS r
WHERE r.message_id = @message_id
  AND r.ingest_time >= TIMESTAMP_MICROS(@not_before)
  AND r.ingest_time < TIMESTAMP_MICROS(@before)
ORDER BY r.ingest_time
LIMIT 1
""".strip()


def rejected_sql(rejected: str) -> str:
    return f"""
SELECT UNIX_MICROS(j.ingest_time) AS ingest_time, j.reason
FROM {rejected} AS j
WHERE j.message_id = @message_id
  AND j.ingest_time >= TIMESTAMP_MICROS(@not_before)
  AND j.ingest_time < TIMESTAMP_MICROS(@before)
ORDER BY j.ingest_time
LIMIT 1
""".strip()


def seen_sql(records: str, rejected: str) -> str:
    # Only message_id and ingest_time are read (bytes billed are per column),
    # and `IN UNNEST(@message_ids)` is served by both tables' search indexes:
    # one query answers for a replay batch of up to 100 messages.
    return f"""
SELECT DISTINCT r.message_id, 'stored' AS state
FROM {records} AS r
WHERE r.message_id IN UNNEST(@message_ids)
  AND r.ingest_time >= TIMESTAMP_MICROS(@not_before)
  AND r.ingest_time < TIMESTAMP_MICROS(@before)
UNION ALL
SELECT DISTINCT j.message_id, 'rejected' AS state
FROM {rejected} AS j
WHERE j.message_id IN UNNEST(@message_ids)
  AND j.ingest_time >= TIMESTAMP_MICROS(@not_before)
  AND j.ingest_time < TIMESTAMP_MICROS(@before)
""".strip()


def compared_sql(rejected: str) -> str:
    # What a replay compares with: each message's first rejection whose data is small
    # enough, found through the search index on message_id (as `seen_sql`).
    return f"""
SELECT {select_list(Rejection, "j")}
FROM {rejected} AS j
WHERE j.message_id IN UNNEST(@message_ids)
  AND BYTE_LENGTH(j.data) <= @most
  AND j.ingest_time >= TIMESTAMP_MICROS(@not_before)
  AND j.ingest_time < TIMESTAMP_MICROS(@before)
QUALIFY ROW_NUMBER() OVER (PARTITION BY j.message_id ORDER BY j.ingest_time) = 1
""".strip()


def access_page_sql(
    access: str, *, before: bool = False, action: bool = False, principal: bool = False
) -> str:
    # One scan of [since, until) (less what the cursor passed): constant bounds on
    # `time`, the partition and clustering column, so only the days and blocks of
    # that range are read. The `_default` stream may hold a line twice (a batch sent
    # again after its answer was lost): one row per (time, id) is read. The filters
    # given (`before`, `action`, `principal`) are the query's conditions; each value
    # a named parameter.
    conditions = [
        "a.`time` >= TIMESTAMP_MICROS(@since)",
        "a.`time` < TIMESTAMP_MICROS(@until)",
    ]
    if before:
        conditions += [
            "a.`time` <= TIMESTAMP_MICROS(@before_time)",
            "(a.`time` < TIMESTAMP_MICROS(@before_time) OR a.id < @before_id)",
        ]
    if action:
        conditions.append("a.action = @action")
    if principal:
        conditions.append(f"COALESCE(a.principal, '{ANYONE}') = @principal")
    where = "\n    AND ".join(conditions)
    return f"""
SELECT UNIX_MICROS(c.`time`) AS `time`, c.id, c.action, c.principal, c.status, c.entry
FROM (
  SELECT a.*, ROW_NUMBER() OVER (PARTITION BY a.`time`, a.id) AS copy
  FROM {access} AS a
  WHERE {where}
) AS c
WHERE c.copy = 1
ORDER BY c.`time` DESC, c.id DESC
LIMIT @limit
""".strip()


def dead_letters_sql(dead_letters: str, *, before: bool = False) -> str:
    # One scan of [since, until) of `publish_time`, the partition column: the days that
    # range reaches are read, each whole (clustering on message_id prunes no time), every
    # column a row has. The subscription writes at least once: one row per key
    # (publish_time, message_id or ''), the least by subscription, attributes and data
    # (NULL first), as `app.store.dead_letters.page_of` reads them. A row is kept while
    # what the rows before it hold (data's bytes, attributes' characters) is under
    # @most_bytes, the first whatever it holds: a page of Pub/Sub's largest messages is
    # cut in BigQuery, not sent whole to be cut here.
    conditions = [
        "d.publish_time >= TIMESTAMP_MICROS(@since)",
        "d.publish_time < TIMESTAMP_MICROS(@until)",
    ]
    if before:
        conditions += [
            "d.publish_time <= TIMESTAMP_MICROS(@before_time)",
            "(d.publish_time < TIMESTAMP_MICROS(@before_time) "
            "OR COALESCE(d.message_id, '') < @before_id)",
        ]
    where = "\n      AND ".join(conditions)
    return f"""
SELECT UNIX_MICROS(p.publish_time) AS publish_time, p.message_id, p.subscription_name, p.data,
  p.attributes
FROM (
  SELECT c.*, SUM(COALESCE(LENGTH(c.data), 0) + COALESCE(LENGTH(c.attributes), 0)) OVER (
    ORDER BY c.publish_time DESC, c.key_id DESC ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
  ) AS before_bytes
  FROM (
    SELECT d.publish_time, d.message_id, d.subscription_name, d.data, d.attributes,
      COALESCE(d.message_id, '') AS key_id,
      ROW_NUMBER() OVER (
        PARTITION BY d.publish_time, COALESCE(d.message_id, '')
        ORDER BY d.subscription_name, d.attributes, d.data
      ) AS copy
    FROM {dead_letters} AS d
    WHERE {where}
  ) AS c
  WHERE c.copy = 1
) AS p
WHERE p.before_bytes IS NULL OR p.before_bytes < @most_bytes
ORDER BY p.publish_time DESC, p.key_id DESC
LIMIT @limit
""".strip()


def newest_partition_sql(partitions: str) -> str:
    # Partition metadata: the newest day before a page's that holds rows, for the price
    # of the 10 MiB minimum instead of a scan of every day between (`__NULL__` and
    # `__UNPARTITIONED__` sort after every day's id, so no bound takes them).
    return f"""
SELECT MAX(p.partition_id) AS partition_id
FROM {partitions} AS p
WHERE p.table_name = @table
  AND p.partition_id >= @from_day
  AND p.partition_id < @before_day
  AND p.total_rows > 0
""".strip()


# The readiness probe: it references no table, so BigQuery bills it nothing.
CHECK_SQL: Final = "SELECT 1"


class Statements(NamedTuple):
    """Every statement, for the tables of one dataset (and its tables' names, which a
    filtered page's statement is made with: `page_sql`, `rejections_sql`)."""

    records_table: str
    rejected_table: str
    access_table: str
    dead_letters_table: str
    newest_partition: str
    page: str
    earlier_copies: str
    first_row: str
    first_rejection: str
    next_partition: str
    latest: str
    stored: str
    rejected: str
    rejections: str
    seen: str
    compared: str

    @classmethod
    def for_dataset(cls, project: str, dataset: str) -> Statements:
        def table(name: str) -> str:
            return f"`{project}.{dataset}.{name}`"

        records, rejected = table("records"), table("rejected")
        return cls(
            records_table=records,
            rejected_table=rejected,
            access_table=table("access_record"),
            dead_letters_table=table("dead_letters"),
            newest_partition=newest_partition_sql(table("INFORMATION_SCHEMA.PARTITIONS")),
            page=page_sql(records),
            earlier_copies=earlier_copies_sql(records),
            first_row=first_row_sql(records),
            first_rejection=first_row_sql(rejected),
            next_partition=next_partition_sql(table("INFORMATION_SCHEMA.PARTITIONS")),
            latest=latest_sql(records),
            stored=stored_sql(records),
            rejected=rejected_sql(rejected),
            rejections=rejections_sql(rejected),
            seen=seen_sql(records, rejected),
            compared=compared_sql(rejected),
        )
