"""The SQL of a DuckDB store: its tables, the pages and look-ups it reads, and the
reads that hold a page to a byte budget (large payloads read apart, by key).

Design: docs/stores.md#duckdb-the-default-duckdbfile-or-memory
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Final

import duckdb
import msgspec

from app.errors import BadParameter, StoreUnavailable
from app.records import (
    Column,
    Kind,
    Record,
    Rejection,
    Row,
    column_names,
    columns,
    row_of,
)
from app.store import ROW_BYTES, R, Shown
from app.store.filters import RowFilter, typed_field, typed_value
from app.store.where import DUCKDB, to_sql
from app.typed.mapping import Field

SQL_TYPES = {
    Kind.STRING: "VARCHAR",
    Kind.INT64: "BIGINT",
    Kind.TIMESTAMP: "TIMESTAMPTZ",
    Kind.JSON: "JSON",
    Kind.BYTES: "BLOB",
}


# Rows fetched from DuckDB at once by `read_within` (a call a row was a third of a long
# read): no more than the room left holds at INLINE_BYTES a payload and as much of
# attributes (each larger one is read by key), so that what is read past the bytes and
# let go is within them again, but at least _FETCH_LEAST (1 MiB at most past the bytes,
# a read on each of the reader threads) and at most _FETCH_MOST.
_FETCH_LEAST: Final = 8
_FETCH_MOST: Final = 64
# Reads of a page again by `read_within` when rows it read expired before their large
# payloads were read by key (retention deleting them meanwhile): a race, rare each time.
_READS_AGAIN: Final = 3


def read_within(
    cursor: duckdb.DuckDBPyConnection,
    sql: str,
    params: dict[str, Any],
    kind: type[R],
    max_bytes: int,
    size: Callable[[int, int], int],
) -> tuple[list[R], bool]:
    """The rows `sql` selects (as `_bounded_select` lists them), taken one at a time until
    they hold at least `max_bytes`, and whether it stopped there. `size(payload bytes,
    attributes bytes)` is what a row counts as. Python holds what the reader keeps, and
    DuckDB returns no large payload or attributes but those (`INLINE_BYTES`), read by
    key after them: a page whose rows expired in between is read again."""
    again = 0
    while True:
        cursor.execute(sql, params)
        found: list[list[Any]] = []
        large: dict[str, int] = {}
        data = column_names(kind).index("data")
        attributes = column_names(kind).index("attributes")
        total = 0
        more = True
        while more and total < max_bytes:
            # A few rows at a time, kept one by one.
            room = (max_bytes - total) // (2 * INLINE_BYTES)
            asked = max(_FETCH_LEAST, min(_FETCH_MOST, room))
            batch = cursor.fetchmany(asked)
            more = len(batch) == asked
            for values in batch:
                *row, payload, attributes_bytes = values
                attributes_bytes = attributes_bytes or 0
                if (payload or 0) > INLINE_BYTES or attributes_bytes > INLINE_BYTES:
                    large[row[0]] = len(found)  # message_id is the first column of both tables
                found.append(row)
                total += size(payload or 0, attributes_bytes)
                if total >= max_bytes:
                    more = True
                    break
        if more:
            # The rest of the page's rows, released now rather than at the cursor's next
            # query. A result left unfinished (a query whose rows are not all fetched, as
            # `SELECT 1` was) refuses `register` on its connection: on the writer's (the
            # tail warmed at start) every apply of the journal failed after it.
            cursor.abort()
        if large:
            cursor.execute(_PAYLOADS_SQL[kind], {"ids": list(large)})
            payloads = cursor.fetchall()
            if len(payloads) < len(large):
                # Expired since the page read them: the page again, without them.
                again += 1
                if again > _READS_AGAIN:
                    raise StoreUnavailable("rows of a page expired as it was read, each time")
                continue
            for message_id, value, attributes_value in payloads:
                found[large[message_id]][data] = value
                found[large[message_id]][attributes] = attributes_value
        return [row_of(kind, row) for row in found], more


def payload_size(kind: type[Row]) -> Callable[[int, int], int]:
    """What a row of `kind` counts as in a budget (`row_bytes`), from its payload's size
    and its attributes' in DuckDB (in bytes, as `strlen` counts them)."""
    if kind is Rejection:
        return lambda payload, attributes: (payload + 2) // 3 * 4 + attributes + ROW_BYTES
    return lambda payload, attributes: payload + attributes + ROW_BYTES


def ddl(table: str, row_type: type[Row]) -> str:
    cols = ",\n  ".join(
        f"{c.name} {SQL_TYPES[c.kind]}{'' if c.nullable else ' NOT NULL'}"
        for c in columns(row_type)
    )
    return f"CREATE TABLE IF NOT EXISTS {table} (\n  {cols},\n  PRIMARY KEY (message_id)\n)"


def add_missing_columns(con: duckdb.DuckDBPyConnection, table: str, row_type: type[Row]) -> None:
    """Give a table made by an earlier version the columns added since (nullable, at the end)."""
    found = con.execute(
        "SELECT column_name FROM duckdb_columns() "
        "WHERE schema_name = 'main' AND table_name = $table ORDER BY column_index",
        {"table": table},
    ).fetchall()
    have = [name for (name,) in found]
    wanted = columns(row_type)
    if have != [c.name for c in wanted[: len(have)]]:
        raise StoreUnavailable(f"table {table} has columns {have}, not a start of {wanted}")
    for column in wanted[len(have) :]:
        con.execute(f"ALTER TABLE {table} ADD COLUMN {column.name} {SQL_TYPES[column.kind]}")


def _selected(c: Column) -> str:
    # Timestamps leave as epoch microseconds: cheaper than timezone-aware
    # datetimes (~0.4 ms per 100 rows) and what Record holds anyway.
    match c.kind:
        case Kind.TIMESTAMP:
            return f"epoch_us({c.name})"
        case Kind.JSON:
            return f"{c.name}::VARCHAR"
        case _:
            return c.name


def _select_list(row_type: type[Row]) -> str:
    return ", ".join(_selected(c) for c in columns(row_type))


_RECORD_COLUMNS = _select_list(Record)
_PAGE_RANGE: Final = """ingest_time >= make_timestamptz($after_time)
  AND ingest_time < make_timestamptz($before_time)
  AND (ingest_time > make_timestamptz($after_time) OR message_id > $after_message_id)"""

# A page read to a byte budget selects a payload larger than this (`data`) as NULL, and
# its size beside it, then reads only those it keeps, by key (and so its attributes,
# up to 0.4 MB a row as Pub/Sub sends them). DuckDB reads a column
# 2,048 rows at a time: a page of 40 records of 4 MB held +810 MB in DuckDB while it
# ran, returning every payload; selecting none of the large ones, as the scan reads
# them (`_bounded_page_sql`), +170 MB, what the scan itself holds.
INLINE_BYTES: Final = 64 * 1024
_PAYLOAD: Final = {Record: "strlen(data::VARCHAR)", Rejection: "octet_length(data)"}
_ATTRIBUTES_BYTES: Final = "strlen(attributes::VARCHAR)"


def _bounded_select(row_type: type[Row]) -> list[str]:
    """`_select_list`'s expressions, the payload and the attributes NULL past
    INLINE_BYTES, their sizes last."""
    sizes = {"data": _PAYLOAD[row_type], "attributes": _ATTRIBUTES_BYTES}
    listed = [
        f"CASE WHEN {sizes[c.name]} <= {INLINE_BYTES} THEN {_selected(c)} END"
        if c.name in sizes
        else _selected(c)
        for c in columns(row_type)
    ]
    return [*listed, sizes["data"], sizes["attributes"]]


def _bounded_page_sql(table: str, row_type: type[Row], conditions: str = "") -> str:
    """The page's rows as `_page_sql` selects them, as `_bounded_select` lists them. The
    page's keys first (a Top-N of two columns), then its rows by row id, the large
    payloads dropped in the scan: selected after the join (as DuckDB's own late
    materialization does), each would be held once more for the page's every row."""
    listed = _bounded_select(row_type)
    at = {c.name: n for n, c in enumerate(columns(row_type))}
    return f"""
WITH page AS (
  SELECT rowid AS page_row FROM {table}
  WHERE {_PAGE_RANGE}{conditions}
  ORDER BY ingest_time, message_id
  LIMIT $limit
)
SELECT {", ".join(f"c{n}" for n in range(len(listed)))} FROM (
  SELECT rowid AS page_row, {", ".join(f"{e} AS c{n}" for n, e in enumerate(listed))}
  FROM {table} WHERE {_PAGE_RANGE}
) WHERE page_row IN (SELECT page_row FROM page)
ORDER BY c{at["ingest_time"]}, c{at["message_id"]}
"""


def _page_sql(table: str, select: str, conditions: str = "") -> str:
    return f"""
SELECT {select} FROM {table}
WHERE {_PAGE_RANGE}{conditions}
ORDER BY ingest_time, message_id
LIMIT $limit
"""


def filtered(
    kind: type[Row], keep: RowFilter, typed: Sequence[Field]
) -> tuple[str, str, dict[str, Any]]:
    """The page SQL of `kind` keeping the rows `keep` matches (as `_page_sql` and as
    `_bounded_page_sql` read it), and its parameters. The conditions are checked on the
    rows of the page's range in key order, so a selective filter scans further for the
    same page."""
    table = "records" if kind is Record else "rejected"
    where, params = filter_conditions(kind, keep, typed)
    return (
        _page_sql(table, _select_list(kind), where),
        _bounded_page_sql(table, kind, where),
        params,
    )


def filter_conditions(
    kind: type[Row], keep: RowFilter, typed: Sequence[Field]
) -> tuple[str, dict[str, Any]]:
    """The conditions of `keep` on `kind`'s table (`records` or `rejected`, unaliased),
    each as `\n  AND …`, and their parameters (values are parameters; a typed field's
    names, held to FIELD_NAME_PATTERN, are quoted into the text)."""
    conditions: list[str] = []
    params: dict[str, Any] = {}
    for at, attribute in enumerate(keep.attributes):
        conditions.append(f"json_extract_string(attributes, $path{at}) = $value{at}")
        params[f"path{at}"], params[f"value{at}"] = _pointer(attribute.key), attribute.value
    if keep.message_id is not None:
        conditions.append("message_id = $message_id")
        params["message_id"] = keep.message_id
    if keep.record_id is not None:
        # A rejection has no record id: none matches one.
        conditions.append("id = $record_id" if kind is Record else "FALSE")
        params |= {"record_id": keep.record_id} if kind is Record else {}
    if keep.fields:
        if kind is not Record:
            raise BadParameter("field", "rejections have no typed fields")
        matches = []
        for at, condition in enumerate(keep.fields):
            field = typed_field(typed, condition)
            column = ".".join(['f."fields"', *(f'"{name}"' for name in condition.path)])
            matches.append(f"{column} = $field{at}")
            params[f"field{at}"] = typed_value(field, condition)
        # The typed columns are a table of their own, joined by message_id (typed.py).
        conditions.append(
            "EXISTS (SELECT 1 FROM record_fields f WHERE f.message_id = records.message_id "
            f"AND {' AND '.join(matches)})"
        )
    expression = keep.expression("records" if kind is Record else "rejections")
    if expression is not None:
        term, values = to_sql(expression, DUCKDB)
        conditions.append(term)
        params |= values
    return "".join(f"\n  AND {c}" for c in conditions), params


def counts_sql(kind: type[Row], where: str = "") -> str:
    """Rows of `kind` in `[$since, $until)` keeping `where` (`filter_conditions`), counted by
    bucket of `$width` µs from `$since`: one scan of the range, zonemaps pruning it."""
    table = "records" if kind is Record else "rejected"
    return f"""
SELECT (epoch_us(ingest_time) - $since) // $width AS bucket, count(*) AS found
FROM {table}
WHERE ingest_time >= make_timestamptz($since)
  AND ingest_time < make_timestamptz($until){where}
GROUP BY bucket
"""


PAGE_SQL: dict[type[Row], str] = {
    Record: _page_sql("records", _RECORD_COLUMNS),
    Rejection: _page_sql("rejected", _select_list(Rejection)),
}
LATEST_SQL = f"""
SELECT {_RECORD_COLUMNS} FROM records WHERE id = $id
ORDER BY timestamp DESC NULLS LAST, publish_time DESC, ingest_time DESC, message_id DESC
LIMIT 1
"""
RECORD_BY_MESSAGE_SQL = f"SELECT {_RECORD_COLUMNS} FROM records WHERE message_id = $message_id"
REJECTION_BY_MESSAGE_SQL = (
    "SELECT epoch_us(ingest_time), reason FROM rejected WHERE message_id = $message_id"
)
RECORDS_BY_MESSAGES_SQL = (
    f"SELECT {_RECORD_COLUMNS} FROM records WHERE message_id IN (SELECT unnest($ids))"
)
REJECTIONS_BY_MESSAGES_SQL = (
    f"SELECT {_select_list(Rejection)} FROM rejected WHERE message_id IN (SELECT unnest($ids))"
)
# What a replay compares with (`Store.rejections`): a rejection whose data is small
# enough to compare; the table keeps each message once.
COMPARED_REJECTIONS_SQL = (
    f"SELECT {_select_list(Rejection)} FROM rejected "
    "WHERE message_id IN (SELECT unnest($ids)) AND octet_length(data) <= $most"
)
BOUNDED_PAGE_SQL: dict[type[Row], str] = {
    Record: _bounded_page_sql("records", Record),
    Rejection: _bounded_page_sql("rejected", Rejection),
}


def _shown_value(c: Column) -> str:
    """`c`'s value in JSON as msgspec encodes it: a time in RFC 3339 in UTC (its
    microseconds only when there are any), a JSON column's text as it is kept."""
    match c.kind:
        case Kind.TIMESTAMP:
            us = f"epoch_us(r.{c.name})"
            at = f"make_timestamp({us})"
            value = (
                f"CASE WHEN {us} % 1000000 = 0 THEN strftime({at}, '\"%Y-%m-%dT%H:%M:%SZ\"') "
                f"ELSE strftime({at}, '\"%Y-%m-%dT%H:%M:%S.%fZ\"') END"
            )
        case Kind.JSON:
            value = f"r.{c.name}::VARCHAR"
        case Kind.STRING:
            value = f"to_json(r.{c.name})::VARCHAR"
        case Kind.INT64:
            value = f"r.{c.name}::VARCHAR"
        case _:
            raise ValueError(f"no JSON of a {c.kind} column made in DuckDB")
    return f"coalesce({value}, 'null')" if c.nullable else value


# The control characters DuckDB's JSON escapes in capitals (`\\u001F`), where msgspec
# writes `\\u001f`: a row with one in a text column is read the usual way.
_UPPER_ESCAPED: Final = r"[\x0b\x0e\x0f\x1a-\x1f]"


@functools.cache
def shown_sql(names: tuple[str, ...]) -> str:
    """The records of a page (as `PAGE_SQL`, of `$limit` rows at most) in key order: each
    message id, and the JSON object of the columns `names` (NULL for a row of more than
    INLINE_BYTES, or with a character of _UPPER_ESCAPED, which the reader reads the usual
    way)."""
    by_name = {c.name: c for c in columns(Record)}
    parts: list[str] = []
    for n, name in enumerate(names):
        opening = "{" if n == 0 else ","
        parts += [f"'{opening}\"{by_name[name].name}\":'", _shown_value(by_name[name])]
    view = f"concat({', '.join(parts)}, '}}')"
    strings = ", ".join(f"r.{n}" for n in names if by_name[n].kind is Kind.STRING)
    return f"""
SELECT message_id, CASE WHEN {_PAYLOAD[Record]} + {_ATTRIBUTES_BYTES} <= {INLINE_BYTES}
  AND NOT regexp_matches(concat_ws('', {strings}), '{_UPPER_ESCAPED}') THEN {view} END
FROM records r WHERE {_PAGE_RANGE} AND rowid IN (
  SELECT rowid FROM records WHERE {_PAGE_RANGE} ORDER BY ingest_time, message_id LIMIT $limit
)
ORDER BY ingest_time, message_id
"""


# A page's keys, what each row counts as (`payload_size`), as `read_within` reads them,
# and what `most_bytes` counts it as (4 bytes a character: `length` counts characters).
_SIZED_PAGE_SQL: Final = f"""
SELECT epoch_us(ingest_time), message_id,
  {_PAYLOAD[Record]} + {_ATTRIBUTES_BYTES} + {ROW_BYTES},
  4 * (length(data::VARCHAR) + length(attributes::VARCHAR)) + {ROW_BYTES}
FROM records WHERE {_PAGE_RANGE} AND rowid IN (
  SELECT rowid FROM records WHERE {_PAGE_RANGE} ORDER BY ingest_time, message_id LIMIT $limit
)
ORDER BY ingest_time, message_id
"""


def read_shown(
    cursor: duckdb.DuckDBPyConnection, names: tuple[str, ...], params: dict[str, Any]
) -> tuple[list[Shown], bool] | None:
    """The page `read_within` reads (the rows while those before each hold less than
    `$max_bytes`, and whether they hold it), each record as a `Shown` of the columns
    `names`; or None where a row of it is not made into text in DuckDB (too large, or a
    character DuckDB escapes otherwise): read that page the usual way. Its keys and sizes
    first, then the text of those it keeps: none past the bytes is made into text."""
    rest = {k: v for k, v in params.items() if k != "max_bytes"}
    keys = cursor.execute(_SIZED_PAGE_SQL, rest).fetchall()
    kept, total, max_bytes = 0, 0, params["max_bytes"]
    for _, _, size, _ in keys:
        if total >= max_bytes:
            break
        total += size
        kept += 1
    keys = keys[:kept]
    if not keys:
        return [], False
    if any(size - ROW_BYTES > INLINE_BYTES for _, _, size, _ in keys):
        return None  # a row too large to be made into text in DuckDB: the usual way
    views = cursor.execute(shown_sql(names), {**rest, "limit": kept}).fetchall()
    if [key[1] for key in keys] != [message_id for message_id, _ in views] or any(
        view is None for _, view in views
    ):
        return None  # rows expired in between, or not made in DuckDB: the usual way
    rows = [
        Shown(message_id, ingest_time, size, most, msgspec.Raw(view))
        for (ingest_time, message_id, size, most), (_, view) in zip(keys, views, strict=True)
    ]
    return rows, total >= max_bytes


# The payloads and attributes of a page's rows by key, those it selected as NULL.
_PAYLOADS_SQL: dict[type[Row], str] = {
    row_type: f"SELECT message_id, {_selected(by_name['data'])}, "
    f"{_selected(by_name['attributes'])} FROM {table} "
    "WHERE message_id IN (SELECT unnest($ids))"
    for row_type, table in ((Record, "records"), (Rejection, "rejected"))
    for by_name in [{c.name: c for c in columns(row_type)}]
}
NEWEST_RECORDS_SQL = f"""
SELECT {", ".join(_bounded_select(Record))} FROM records
WHERE ingest_time >= make_timestamptz($since)
ORDER BY ingest_time DESC, message_id DESC
LIMIT $limit
"""
# Whether the store holds a record older than the tail's window (`$since`).
OLDER_RECORD_SQL = "SELECT 1 FROM records WHERE ingest_time < make_timestamptz($since) LIMIT 1"
STORED_RECORD_IDS_SQL = "SELECT message_id FROM records WHERE message_id IN (SELECT unnest($ids))"
SEEN_SQL = """
SELECT DISTINCT message_id, 'stored' FROM records WHERE message_id IN (SELECT unnest($ids))
UNION ALL
SELECT DISTINCT message_id, 'rejected' FROM rejected WHERE message_id IN (SELECT unnest($ids))
"""


def _pointer(key: str) -> str:
    """An attribute's key as a JSON pointer (RFC 6901) into `attributes`: DuckDB reads
    `$."*"` in a JSONPath as every member, and a pointer has no wildcard."""
    return "/" + key.replace("~", "~0").replace("/", "~1")


def stored_rows(cur: duckdb.DuckDBPyConnection, message_ids: list[str]) -> list[Record | Rejection]:
    """The records and rejections DuckDB holds of these messages."""
    params = {"ids": message_ids}
    found: list[Record | Rejection] = [
        row_of(Record, values) for values in cur.execute(RECORDS_BY_MESSAGES_SQL, params).fetchall()
    ]
    found += [
        row_of(Rejection, values)
        for values in cur.execute(REJECTIONS_BY_MESSAGES_SQL, params).fetchall()
    ]
    return found
