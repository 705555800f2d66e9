"""The serving tier's Spanner schema, derived from the row definition.

Every column of `Record` and `Rejection` (`app/records.py`) becomes a column of
the table of the same name; `recordline schema spanner` prints the statements
and Terraform applies the same ones. The service never changes the schema: at
start it compares the database with `expected_columns` and refuses to serve a
database that differs, naming each difference.

Keys. Pub/Sub message ids grow with time and the commit timestamp always
does, so a key or an index that starts with either would send every write to
the last split of the table (a hot spot). Each table's key starts with
`shard`, a hash of the message id modulo `SHARDS`, and its time index with
the same shard: writes spread over `SHARDS` ranges, and a page merges
`SHARDS` ordered ranges. Record ids are the publisher's and may grow too, so
the id index starts with `id_shard`. The service computes both (`shard_of`);
a look-up by key computes the same value.

JSON columns are STRING here: Spanner's JSON type normalises the text, and a
record's `data` is served exactly as published.
"""

from __future__ import annotations

import math
import zlib
from typing import Final, NamedTuple

from app.records import TABLES, Column, Kind, columns

# Ranges each table's writes and time index are spread over. Spanner splits a
# range when it is busy; 16 lets a table take writes on 16 splits at once
# (far beyond 1,000 rows a second) while a page reads at most 16 ranges.
SHARDS: Final = 16

_TYPES: Final = {
    Kind.STRING: "STRING(MAX)",
    Kind.INT64: "INT64",
    Kind.TIMESTAMP: "TIMESTAMP",
    Kind.JSON: "STRING(MAX)",
    Kind.BYTES: "BYTES(MAX)",
}
_DAY_SECONDS: Final = 86_400


def shard_of(key: str) -> int:
    """The shard a message id (or record id) lives in: stable across processes."""
    return zlib.crc32(key.encode()) % SHARDS


def time_index(table: str) -> str:
    return f"{table}_by_ingest_time"


ID_INDEX: Final = "records_by_id"


def retention_days(dedupe_window_seconds: float) -> int:
    """How long Spanner keeps a row: the dedupe window and two days.

    Reads older than the window plus one day, rounded down to a day, go to
    BigQuery (`serving_since`); the second day covers that rounding, and
    Spanner deletes expired rows some time after they expire, never before.
    """
    return math.ceil(dedupe_window_seconds / _DAY_SECONDS) + 2


class ExpectedColumn(NamedTuple):
    table: str
    name: str
    spanner_type: str
    nullable: bool


def _key_columns(table: str) -> list[ExpectedColumn]:
    keys = [ExpectedColumn(table, "shard", "INT64", False)]
    if table == "records":
        keys.append(ExpectedColumn(table, "id_shard", "INT64", False))
    return keys


def expected_columns() -> list[ExpectedColumn]:
    """Every column the service reads or writes, as INFORMATION_SCHEMA names it."""
    out = []
    for table, row_type in TABLES.items():
        out += _key_columns(table)
        out += [
            ExpectedColumn(table, c.name, _TYPES[c.kind], c.nullable) for c in columns(row_type)
        ]
    return out


def expected_indexes() -> dict[str, tuple[str, list[str]]]:
    """Index name: (table, key columns in order)."""
    indexes = {
        time_index(table): (table, ["shard", "ingest_time", "message_id"]) for table in TABLES
    }
    indexes[ID_INDEX] = ("records", ["id_shard", "id"])
    return indexes


def _column_ddl(column: Column) -> str:
    ddl = f"  `{column.name}` {_TYPES[column.kind]}"
    if not column.nullable:
        ddl += " NOT NULL"
    if column.name == "ingest_time":
        # The serving tier stamps every row with its commit timestamp.
        ddl += " OPTIONS (allow_commit_timestamp = true)"
    return ddl + ","


def ddl(dedupe_window_seconds: float) -> list[str]:
    """The statements that create the serving tier's tables and indexes."""
    return _statements(str(retention_days(dedupe_window_seconds)))


# Where Terraform puts the retention it derives from the same setting.
RETENTION_PLACEHOLDER: Final = "${retention_days}"


def ddl_template() -> str:
    """The statements as Terraform's `templatefile` takes them, the retention left open."""
    return _text(_statements(RETENTION_PLACEHOLDER))


def _statements(days: str) -> list[str]:
    statements = []
    for table, row_type in TABLES.items():
        keys = [f"  `{k.name}` {k.spanner_type} NOT NULL," for k in _key_columns(table)]
        body = "\n".join([*keys, *(_column_ddl(c) for c in columns(row_type))])
        statements.append(
            f"CREATE TABLE {table} (\n{body}\n) PRIMARY KEY (shard, message_id),\n"
            f"  ROW DELETION POLICY (OLDER_THAN(ingest_time, INTERVAL {days} DAY))"
        )
    for name, (table, keys) in expected_indexes().items():
        statements.append(f"CREATE INDEX {name} ON {table} ({', '.join(keys)})")
    return statements


def ddl_text(dedupe_window_seconds: float) -> str:
    """The statements as one text, each ended by `;`, as `recordline schema spanner` prints."""
    return _text(ddl(dedupe_window_seconds))


def _text(statements: list[str]) -> str:
    return "".join(f"{statement};\n\n" for statement in statements).rstrip() + "\n"
