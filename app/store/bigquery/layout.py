"""How `records` is laid out, as the table itself says: what its writers fill in.

BigQuery partitions and clusters by top-level columns only, so a layout lays records
out by an attribute or a typed field through a copy: a top-level column `records` is
created with, whose description names its source (`Recordline layout copy of
attributes.customer`). Every writer of `records` (the service on BigQuery alone, the
exporter behind a serving tier) reads the table as it starts and writes each row's
copies in the row itself: a copy is never written apart from its record.

Design: docs/layouts.md
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from google.cloud import bigquery
from google.protobuf import descriptor_pb2

from app.records import Record
from app.store.bigquery.proto import add_field, proto_name

# The description Terraform gives a copy (modules/system/bigquery.tf), and its source.
COPY_DESCRIPTION: Final = "Recordline layout copy of "
_SOURCE: Final = re.compile(r"^(?P<kind>attributes|fields)\.(?P<path>.+)$")
# The partitioning column the read API's own queries prune by.
INGEST_TIME: Final = "ingest_time"

_Proto = descriptor_pb2.FieldDescriptorProto
# How a copy's value travels to the Storage Write API: as its source's does in `fields`
# (app/store/bigquery/typed.py), an attribute as the STRING it is.
_PROTO_TYPES: Final = {
    "STRING": _Proto.TYPE_STRING,
    "INT64": _Proto.TYPE_INT64,
    "INTEGER": _Proto.TYPE_INT64,
    "NUMERIC": _Proto.TYPE_STRING,
    "BIGNUMERIC": _Proto.TYPE_STRING,
    "BOOL": _Proto.TYPE_BOOL,
    "BOOLEAN": _Proto.TYPE_BOOL,
    "DATE": _Proto.TYPE_INT32,
    "DATETIME": _Proto.TYPE_STRING,
    "TIMESTAMP": _Proto.TYPE_INT64,
}


@dataclass(frozen=True, slots=True)
class Copy:
    """One top-level copy: its column, its source (an attribute's key, or a typed
    field's path under `fields`) and its BigQuery type."""

    column: str
    attribute: str | None
    field: tuple[str, ...]
    type: str


@dataclass(frozen=True, slots=True)
class TableLayout:
    """What a `records` table is partitioned and clustered by, and the copies it holds."""

    partition: str | None = INGEST_TIME
    clustering: tuple[str, ...] = (INGEST_TIME,)
    copies: tuple[Copy, ...] = ()

    @property
    def by_ingest_time(self) -> bool:
        """Whether partitions follow ingest_time, as partition metadata then tells which
        days of ingest hold rows (the pager's jump over empty days)."""
        return self.partition == INGEST_TIME

    @classmethod
    def of(cls, table: bigquery.Table) -> TableLayout:
        """The layout `tables.get` answered for `table`: unpartitioned, or partitioned
        by ingestion time (no field), reads as no partitioning column."""
        partitioning = table.time_partitioning
        copies = []
        for column in table.schema:
            found = copy_of(column)
            if found is not None:
                copies.append(found)
        return cls(
            partition=partitioning.field if partitioning is not None else None,
            clustering=tuple(table.clustering_fields or ()),
            copies=tuple(copies),
        )


def copy_of(column: bigquery.SchemaField) -> Copy | None:
    """The copy `column` is, by its description; None for any other column."""
    description = column.description or ""
    if not description.startswith(COPY_DESCRIPTION) or column.mode == "REPEATED":
        return None
    found = _SOURCE.match(description.removeprefix(COPY_DESCRIPTION))
    if found is None or column.field_type not in _PROTO_TYPES:
        return None
    if found["kind"] == "attributes":
        return Copy(column.name, found["path"], (), column.field_type)
    return Copy(column.name, None, tuple(found["path"].split(".")), column.field_type)


class Copies:
    """Writes a layout's copies into a row: the fields they add to a writer schema, and
    each row's values (an encoder's `copies`, `app.store.bigquery.proto.RowEncoder`)."""

    def __init__(self, copies: Sequence[Copy]) -> None:
        self.copies = tuple(copies)
        self._attributes = any(c.attribute is not None for c in self.copies)

    def __bool__(self) -> bool:
        return bool(self.copies)

    def add_fields(self, message: descriptor_pb2.DescriptorProto) -> None:
        """Append a field for each copy to a record's writer schema."""
        number = max((f.number for f in message.field), default=0)
        for offset, copy in enumerate(self.copies, start=1):
            add_field(
                message,
                copy.column,
                number=number + offset,
                type=_PROTO_TYPES[copy.type],
                label=_Proto.LABEL_OPTIONAL,
            )

    def values(self, row: Any, more: Mapping[str, Any] | None) -> dict[str, Any]:
        """Each copy's value in `row` (a Record), as its writer schema takes it: an
        attribute's text, a typed field's value as `more` (the row's typed columns)
        holds it; absent (NULL) where the row has none."""
        attributes: dict[str, Any] = {}
        if self._attributes and isinstance(row, Record):
            try:
                decoded = msgspec.json.decode(row.attributes)
            except msgspec.DecodeError:
                decoded = None
            if isinstance(decoded, dict):
                attributes = decoded
        found: dict[str, Any] = {}
        for copy in self.copies:
            value = (
                attributes.get(copy.attribute)
                if copy.attribute is not None
                else _leaf(more.get("fields") if more else None, copy.field)
            )
            if copy.attribute is not None and not isinstance(value, str):
                value = None
            if value is not None:
                found[copy.column] = value
        return found


def _leaf(values: Any, path: tuple[str, ...]) -> Any:
    """The value at `path` in a row's typed values (nested dicts, each field under its
    proto name, as the writer schema takes them); None if absent."""
    for name in path:
        if not isinstance(values, Mapping):
            return None
        values = values.get(proto_name(name))
    return None if isinstance(values, Mapping | list) else values


NO_COPIES: Final = Copies(())
