"""The serving tier's Spanner schema, derived from the row definition.

Every column of `Record` and `Rejection` (`app/records.py`) is a column of the
table of the same name: the statements every serving database was created with
(`BASELINE`) followed by the released migrations (`MIGRATIONS`), which
`recordline schema spanner` prints and Terraform applies. The service never
changes the schema: at start it refuses a database that lacks what it uses.

Design: docs/stores.md#serving-tier-spanner-in-front-of-bigquery-recordline_serving
"""

from __future__ import annotations

import math
import zlib
from typing import Final, NamedTuple

from app.records import DAY_MICROS, TABLES, Column, Kind, columns
from app.store.spanner import producers
from app.store.spanner.ledger import DECISION_COLUMNS, UPDATED, progress_columns

# Ranges each table's writes and time index are spread over. Spanner splits a
# range when it is busy; 16 lets a table take writes on 16 splits at once
# (far beyond 1,000 rows a second) while a page reads at most 16 ranges.
SHARDS: Final = 16

# JSON columns are STRING: Spanner's JSON type normalises the text, and a record's
# `data` is served exactly as published.
_TYPES: Final = {
    Kind.STRING: "STRING(MAX)",
    Kind.INT64: "INT64",
    Kind.TIMESTAMP: "TIMESTAMP",
    Kind.JSON: "STRING(MAX)",
    Kind.BYTES: "BYTES(MAX)",
}


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
    return math.ceil(dedupe_window_seconds * 1_000_000 / DAY_MICROS) + 2


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


# The exporter's tables (their statements are MIGRATIONS'): column, type, nullable.
# The progress row's columns come from its Struct (`ledger.progress_columns`);
# the table's name is a key, kept short.
EXPORT_COLUMNS: Final = {
    "export_progress": [
        *[
            (c.name, "STRING(64)" if c.name == "table_name" else _TYPES[c.kind], c.nullable)
            for c in progress_columns()
        ],
        (UPDATED, "TIMESTAMP", False),
    ],
    "export_lease": [
        ("name", "STRING(64)", False),
        ("holder", "STRING(MAX)", False),
        ("expires", "TIMESTAMP", False),
    ],
    # Operators' decisions (`recordline export retry | reject | resync`).
    "export_decisions": [
        (name, kind, False)
        for name, kind in zip(
            DECISION_COLUMNS,
            ["STRING(64)", "TIMESTAMP", "STRING(64)", "STRING(MAX)", "STRING(MAX)", "STRING(MAX)"],
            strict=True,
        )
    ],
}


def expected_columns() -> list[ExpectedColumn]:
    """Every column the service reads or writes, as INFORMATION_SCHEMA names it."""
    out = []
    for table, row_type in TABLES.items():
        out += _key_columns(table)
        out += [
            ExpectedColumn(table, c.name, _TYPES[c.kind], c.nullable) for c in columns(row_type)
        ]
    for table, export_columns in EXPORT_COLUMNS.items():
        out += [ExpectedColumn(table, *column) for column in export_columns]
    for table, ledger_columns in producers.COLUMNS.items():
        out += [ExpectedColumn(table, *column) for column in ledger_columns]
    return out


def expected_indexes() -> dict[str, tuple[str, list[str]]]:
    """Index name: (table, key columns in order)."""
    indexes = {
        time_index(table): (table, ["shard", "ingest_time", "message_id"]) for table in TABLES
    }
    indexes[ID_INDEX] = ("records", ["id_shard", "id"])
    indexes.update(producers.INDEXES)
    return indexes


def differences(
    found_columns: dict[tuple[str, str], tuple[str, bool]],
    found_indexes: dict[str, list[str]],
) -> list[str]:
    """What a database lacks of this schema, each said in a line, from its columns
    (`(table, name)`: `(type, nullable)`) and its indexes (name: key columns)."""
    lacking = []
    for column in expected_columns():
        found = found_columns.get((column.table, column.name))
        where = f"{column.table}.{column.name}"
        if found is None:
            lacking.append(f"{where} is missing")
        elif found != (column.spanner_type, column.nullable):
            kind, nullable = found
            lacking.append(
                f"{where} is {kind}{'' if nullable else ' NOT NULL'}, expected "
                f"{column.spanner_type}{'' if column.nullable else ' NOT NULL'}"
            )
    for name, (table, keys) in expected_indexes().items():
        if found_indexes.get(name) != keys:
            lacking.append(f"index {name} on {table}({', '.join(keys)}) is missing")
    return lacking


def _column_ddl(column: Column) -> str:
    ddl = f"`{column.name}` {_TYPES[column.kind]}"
    if not column.nullable:
        ddl += " NOT NULL"
    if column.name == "ingest_time":
        # The serving tier stamps every row with its commit timestamp.
        ddl += " OPTIONS (allow_commit_timestamp = true)"
    return ddl


# Where Terraform puts the retention it derives from the dedupe window: each row is
# kept `retention_days(window)` days.
RETENTION_PLACEHOLDER: Final = "${retention_days}"

# The statements every serving database was first created with, as released: never
# edited. Terraform's `ddl` only ever grows: the provider runs statements appended at
# its end on the existing database, and replaces the database (which
# `prevent_destroy` refuses) for any other change. Columns added to app/records.py
# since are migrations below.
BASELINE: Final = (
    "CREATE TABLE records (\n"
    "  `shard` INT64 NOT NULL,\n"
    "  `id_shard` INT64 NOT NULL,\n"
    "  `message_id` STRING(MAX) NOT NULL,\n"
    "  `publish_time` TIMESTAMP NOT NULL,\n"
    "  `ingest_time` TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp = true),\n"
    "  `id` STRING(MAX) NOT NULL,\n"
    "  `timestamp` TIMESTAMP,\n"
    "  `data` STRING(MAX) NOT NULL,\n"
    "  `attributes` STRING(MAX) NOT NULL,\n"
    "  `subscription` STRING(MAX),\n"
    "  `delivery_attempt` INT64,\n"
    "  `trace_id` STRING(MAX),\n"
    "  `schema` STRING(MAX),\n"
    ") PRIMARY KEY (shard, message_id),\n"
    "  ROW DELETION POLICY (OLDER_THAN(ingest_time, INTERVAL ${retention_days} DAY))",
    "CREATE TABLE rejected (\n"
    "  `shard` INT64 NOT NULL,\n"
    "  `message_id` STRING(MAX) NOT NULL,\n"
    "  `publish_time` TIMESTAMP NOT NULL,\n"
    "  `ingest_time` TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp = true),\n"
    "  `data` BYTES(MAX) NOT NULL,\n"
    "  `reason` STRING(MAX) NOT NULL,\n"
    "  `attributes` STRING(MAX) NOT NULL,\n"
    "  `subscription` STRING(MAX),\n"
    "  `delivery_attempt` INT64,\n"
    "  `trace_id` STRING(MAX),\n"
    "  `schema` STRING(MAX),\n"
    ") PRIMARY KEY (shard, message_id),\n"
    "  ROW DELETION POLICY (OLDER_THAN(ingest_time, INTERVAL ${retention_days} DAY))",
    "CREATE INDEX records_by_ingest_time ON records (shard, ingest_time, message_id)",
    "CREATE INDEX rejected_by_ingest_time ON rejected (shard, ingest_time, message_id)",
    "CREATE INDEX records_by_id ON records (id_shard, id)",
)


def add_column(table: str, name: str) -> str:
    """The migration that adds column `name` of `table` as app/records.py declares it.

    Spanner adds a column to a table that has rows only if it is nullable or has a
    default; a NOT NULL column gets its type's zero value as the default.
    """
    (column,) = [c for c in columns(TABLES[table]) if c.name == name]
    ddl = _column_ddl(column)
    if not column.nullable:
        ddl += f" DEFAULT ({_ZERO[column.kind]})"
    return f"ALTER TABLE {table} ADD COLUMN {ddl}"


_ZERO: Final = {
    Kind.STRING: "''",
    Kind.INT64: "0",
    Kind.TIMESTAMP: "TIMESTAMP '1970-01-01T00:00:00Z'",
    Kind.JSON: "'null'",
    Kind.BYTES: "b''",
}

# Released migrations, in the order they were released, each run once on every
# serving database after the baseline (Terraform appends them to its `ddl`). Append
# only: a statement here is never edited, moved or removed, and only ever adds (a
# column, a table, an index), so the image before it serves a migrated database too.
# A new column of app/records.py is one line: `add_column("records", "name")`; a new
# table or index, its `CREATE` statement. Terraform applies it before the image that
# needs it is deployed: the service refuses a database that lacks what it uses.
MIGRATIONS: Final[tuple[str, ...]] = (
    # The exporter's progress per table and its lease (app/store/tiered/exporter.py).
    "CREATE TABLE export_progress (\n"
    "  `table_name` STRING(64) NOT NULL,\n"
    "  `stream` STRING(MAX),\n"
    "  `next_offset` INT64 NOT NULL,\n"
    "  `done_time` TIMESTAMP NOT NULL,\n"
    "  `done_message_id` STRING(MAX) NOT NULL,\n"
    "  `watermark` TIMESTAMP NOT NULL,\n"
    "  `pending_time` TIMESTAMP,\n"
    "  `pending_message_id` STRING(MAX),\n"
    "  `pending_rows` INT64,\n"
    "  `pending_watermark` TIMESTAMP,\n"
    "  `blocked` STRING(MAX),\n"
    "  `updated` TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp = true),\n"
    ") PRIMARY KEY (table_name)",
    "CREATE TABLE export_lease (\n"
    "  `name` STRING(64) NOT NULL,\n"
    "  `holder` STRING(MAX) NOT NULL,\n"
    "  `expires` TIMESTAMP NOT NULL,\n"
    ") PRIMARY KEY (name)",
    # Operators' decisions about the export, each beside the change it made
    # (app/store/spanner/ledger.py, `Decision`); newest first per table.
    "CREATE TABLE export_decisions (\n"
    "  `table_name` STRING(64) NOT NULL,\n"
    "  `decided` TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp = true),\n"
    "  `action` STRING(64) NOT NULL,\n"
    "  `operator` STRING(MAX) NOT NULL,\n"
    "  `reason` STRING(MAX) NOT NULL,\n"
    "  `detail` STRING(MAX) NOT NULL,\n"
    ") PRIMARY KEY (table_name, decided DESC)",
    # The completeness ledger of producer sequences (app/store/spanner/producers.py).
    "CREATE TABLE producer_epochs (\n"
    "  `producer` STRING(256) NOT NULL,\n"
    "  `epoch` INT64 NOT NULL,\n"
    "  `entry` BYTES(MAX) NOT NULL,\n"
    "  `last_seen` TIMESTAMP NOT NULL,\n"
    ") PRIMARY KEY (producer, epoch),\n"
    "  ROW DELETION POLICY (OLDER_THAN(last_seen, INTERVAL ${retention_days} DAY))",
    # What the audit reads of each producer epoch (its gaps, conflicts and ends), the
    # messages stored under each producer sequence (a retry is dropped only if it is the
    # same message as one of them), and the counts by hour (app/store/spanner/producers.py).
    "CREATE TABLE producer_ranges (\n"
    "  `producer` STRING(256) NOT NULL,\n"
    "  `epoch` INT64 NOT NULL,\n"
    "  `kind` STRING(16) NOT NULL,\n"
    "  `first` INT64 NOT NULL,\n"
    "  `last` INT64 NOT NULL,\n"
    "  `opened` INT64 NOT NULL,\n"
    ") PRIMARY KEY (producer, epoch, kind, first),\n"
    "  INTERLEAVE IN PARENT producer_epochs ON DELETE CASCADE",
    "CREATE INDEX producer_ranges_by_opened ON producer_ranges (kind, opened)",
    "CREATE TABLE producer_sequences (\n"
    "  `producer` STRING(256) NOT NULL,\n"
    "  `epoch` INT64 NOT NULL,\n"
    "  `sequence` INT64 NOT NULL,\n"
    "  `message_id` STRING(MAX) NOT NULL,\n"
    "  `ingest_time` TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp = true),\n"
    ") PRIMARY KEY (producer, epoch, sequence, message_id),\n"
    "  INTERLEAVE IN PARENT producer_epochs ON DELETE CASCADE,\n"
    "  ROW DELETION POLICY (OLDER_THAN(ingest_time, INTERVAL ${retention_days} DAY))",
    "CREATE TABLE producer_hours (\n"
    "  `hour` INT64 NOT NULL,\n"
    "  `shard` INT64 NOT NULL,\n"
    "  `stored` INT64 NOT NULL,\n"
    "  `rejected` INT64 NOT NULL,\n"
    "  `duplicates` INT64 NOT NULL,\n"
    "  `conflicts` INT64 NOT NULL,\n"
    "  `updated` TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp = true),\n"
    ") PRIMARY KEY (hour, shard),\n"
    "  ROW DELETION POLICY (OLDER_THAN(updated, INTERVAL 8 DAY))",
)


def statements() -> tuple[str, ...]:
    """The baseline and every migration, the retention left as its placeholder."""
    return BASELINE + MIGRATIONS


def ddl(dedupe_window_seconds: float) -> list[str]:
    """The statements that create the serving tier's tables and indexes."""
    days = str(retention_days(dedupe_window_seconds))
    return [s.replace(RETENTION_PLACEHOLDER, days) for s in statements()]


def ddl_template() -> str:
    """The statements as Terraform's `templatefile` takes them, the retention left open."""
    return _text(list(statements()))


def ddl_text(dedupe_window_seconds: float) -> str:
    """The statements as one text, each ended by `;`, as `recordline schema spanner` prints."""
    return _text(ddl(dedupe_window_seconds))


def split_statements(text: str) -> list[str]:
    """The statements of a text such as ddl_template()'s, as Terraform splits it."""
    return [part.strip() for part in text.split(";") if part.strip()]


def _text(statements: list[str]) -> str:
    return "".join(f"{statement};\n\n" for statement in statements).rstrip() + "\n"
