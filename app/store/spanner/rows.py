"""A row of `records` or `rejected` as Spanner holds it: the values written, the row read.

Columns are `app/records.py`'s (`schema.py` makes the tables of them), after
the keys the service computes (`shard`, and `id_shard` for records).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Final, TypeVar

from google.cloud import spanner

from app.records import TABLES, Kind, Record, Rejection, Row, columns, micros, moment, row_of
from app.store.spanner.schema import shard_of

R = TypeVar("R", bound=Row)

# Each table's columns as its rows hold them, in order.
NAMES: Final = {table: [c.name for c in columns(row)] for table, row in TABLES.items()}
_KINDS: Final = {table: [c.kind for c in columns(row)] for table, row in TABLES.items()}
_BYTES_COLUMNS: Final = {
    row_type: {i for i, c in enumerate(columns(row_type)) if c.kind is Kind.BYTES}
    for row_type in TABLES.values()
}


def insert_columns(table: str) -> list[str]:
    """The columns an insert into `table` writes: its keys, then its rows'."""
    keys = ["shard", "id_shard"] if table == "records" else ["shard"]
    return [*keys, *NAMES[table]]


def insert_values(table: str, row: Record | Rejection) -> list[Any]:
    """`row`'s values for `insert_columns(table)`, `ingest_time` the commit's."""
    values: list[Any] = [shard_of(row.message_id)]
    if table == "records":
        assert isinstance(row, Record)
        values.append(shard_of(row.id))
    for name, kind in zip(NAMES[table], _KINDS[table], strict=True):
        values.append(
            spanner.COMMIT_TIMESTAMP if name == "ingest_time" else _value(row, name, kind)
        )
    return values


def _value(row: Row, name: str, kind: Kind) -> Any:
    value = getattr(row, name)
    if value is None:
        return None
    match kind:
        case Kind.TIMESTAMP:
            return moment(value)
        case Kind.BYTES:
            # The client sends bytes as given, and Spanner takes them base64.
            return base64.b64encode(value)
        case _:
            return value


def stored_row(row_type: type[R], values: Sequence[Any]) -> R:
    """A row from Spanner's values: timestamps read by key come back as datetimes
    (queries select microseconds), and bytes come back base64, as they were sent."""
    binary = _BYTES_COLUMNS[row_type]
    converted = [
        micros(v)
        if isinstance(v, datetime)
        else base64.b64decode(v)
        if i in binary and v is not None
        else v
        for i, v in enumerate(values)
    ]
    return row_of(row_type, converted)


def message_keys(message_ids: Iterable[str]) -> Any:
    """The keys of these messages' rows, in either table."""
    return spanner.KeySet(keys=[[shard_of(m), m] for m in message_ids])  # type: ignore[no-untyped-call]
