"""The Storage Write API's view of a row: a proto2 message derived at runtime.

AppendRows takes rows as serialized protocol buffers plus the descriptor that
reads them (the "writer schema"). Both are computed here from `columns()`, the
declaration the DuckDB DDL and the BigQuery table schemas come from, so there is
no `.proto` file and no protoc step to keep in step with the Structs. A column
no proto field can be named after travels under a placeholder (`proto_name`).

Design: docs/typed-columns.md#on-bigquery
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any, Final, Protocol

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from app.records import Kind, Row, columns

_Field = descriptor_pb2.FieldDescriptorProto

# How each column kind travels. TIMESTAMP is int64 microseconds since the epoch
# (the Storage Write API's encoding, and already what a Record holds); JSON is
# the JSON text itself, which BigQuery parses on its side.
PROTO_TYPES: Final[dict[Kind, int]] = {
    Kind.STRING: _Field.TYPE_STRING,
    Kind.INT64: _Field.TYPE_INT64,
    Kind.TIMESTAMP: _Field.TYPE_INT64,
    Kind.JSON: _Field.TYPE_STRING,
    Kind.BYTES: _Field.TYPE_BYTES,
}

# Package of the generated messages: only seen in descriptors, never on the wire.
_PACKAGE: Final = "recordline.rows"


# A proto field name (protobuf's language guide: identifiers); a placeholder
# is `_x`, the UTF-8 bytes of the column's name in hex, and `_`, which no name
# that is kept as it is may look like, so two fields never share a name.
_PROTO_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLACEHOLDER = re.compile(r"_x[0-9a-f]*_", re.IGNORECASE)
# google/cloud/bigquery/storage/v1/annotations.proto:
#   extend google.protobuf.FieldOptions { string column_name = 454943157; }
# google-cloud-bigquery-storage ships no generated module for it.
_ANNOTATIONS = "google/cloud/bigquery/storage/v1/annotations.proto"
_ANNOTATIONS_PACKAGE = "google.cloud.bigquery.storage.v1"
COLUMN_NAME_NUMBER: Final = 454943157


@functools.lru_cache(maxsize=65_536)
def proto_name(column: str) -> str:
    """The name of the proto field a column's values travel in: the column's own,
    or a placeholder when no proto field can have it (see `annotate`)."""
    if _PROTO_NAME.fullmatch(column) and not _PLACEHOLDER.fullmatch(column):
        return column
    return f"_x{column.encode().hex()}_"


@functools.cache
def _column_name() -> tuple[type[Message], FieldDescriptor]:
    """`FieldOptions` and its `column_name` extension, in a pool of their own: the
    default pool's `FieldOptions` has no such extension registered."""
    pool = descriptor_pool.DescriptorPool()
    options = descriptor_pb2.FileDescriptorProto()
    descriptor_pb2.DESCRIPTOR.CopyToProto(options)
    pool.Add(options)
    annotations = descriptor_pb2.FileDescriptorProto(
        name=_ANNOTATIONS,
        package=_ANNOTATIONS_PACKAGE,
        dependency=[descriptor_pb2.DESCRIPTOR.name],
        syntax="proto3",
    )
    annotations.extension.add(
        name="column_name",
        number=COLUMN_NAME_NUMBER,
        type=_Field.TYPE_STRING,
        label=_Field.LABEL_OPTIONAL,
        extendee=".google.protobuf.FieldOptions",
    )
    pool.Add(annotations)
    field_options = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("google.protobuf.FieldOptions")
    )
    return field_options, pool.FindExtensionByName(f"{_ANNOTATIONS_PACKAGE}.column_name")


def annotate(field: descriptor_pb2.FieldDescriptorProto, column: str) -> None:
    """Name `field`'s column `column` (the `column_name` annotation), as BigQuery reads
    it instead of the field's own name: BigQuery's flexible column names allow
    `café`, a proto identifier is `[A-Za-z_][A-Za-z0-9_]*`
    (https://cloud.google.com/bigquery/docs/schemas#flexible-column-names)."""
    field_options, column_name = _column_name()
    options = field_options()
    options.Extensions[column_name] = column
    # The default pool's FieldOptions keeps it as an unknown field, and writes it
    # out again as it came: what BigQuery receives is the annotation.
    field.options.MergeFromString(options.SerializeToString())


def add_field(
    message: descriptor_pb2.DescriptorProto, column: str, **attributes: Any
) -> descriptor_pb2.FieldDescriptorProto:
    """A field of `message` for `column`, annotated when it needs a placeholder name."""
    name = proto_name(column)
    field = message.field.add(name=name, **attributes)
    if name != column:
        annotate(field, column)
    return field


def row_descriptor(row_type: type[Row]) -> descriptor_pb2.DescriptorProto:
    """The self-contained proto2 descriptor of one table's rows."""
    message = descriptor_pb2.DescriptorProto(name=row_type.__name__)
    # Field numbers follow declaration order: appending a column at the end of a
    # Struct keeps every existing number, and BigQuery matches fields to columns by
    # name anyway, so numbers only have to be stable within one connection.
    for number, column in enumerate(columns(row_type), start=1):
        message.field.add(
            name=column.name,
            number=number,
            type=PROTO_TYPES[column.kind],
            # proto2 `required` mirrors a REQUIRED column, so a row missing one
            # fails to serialize here instead of as a BigQuery row error later.
            label=_Field.LABEL_OPTIONAL if column.nullable else _Field.LABEL_REQUIRED,
        )
    return message


def message_class(descriptor: descriptor_pb2.DescriptorProto) -> type[Message]:
    """A concrete message class for a descriptor, in a pool of its own.

    A private pool keeps these generated types out of the default pool, where a
    second definition of the same name (another test, a reloaded module) would
    conflict.
    """
    pool = descriptor_pool.DescriptorPool()
    file = descriptor_pb2.FileDescriptorProto(
        name=f"{_PACKAGE}.{descriptor.name}.proto", package=_PACKAGE, syntax="proto2"
    )
    file.message_type.add().CopyFrom(descriptor)
    pool.Add(file)
    cls: type[Message] = message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{_PACKAGE}.{descriptor.name}")
    )
    return cls


class Derived(Protocol):
    """Columns a row carries that are derived from its others (a layout's copies,
    `app.store.bigquery.layout.Copies`): the fields they add, and each row's values."""

    def __bool__(self) -> bool: ...

    def add_fields(self, message: descriptor_pb2.DescriptorProto) -> None: ...

    def values(self, row: Any, more: Mapping[str, Any] | None) -> dict[str, Any]: ...


class RowEncoder:
    """Serializes one table's rows for AppendRows; `descriptor`, where given, is
    the row's with more fields than `row_type` has (a record's typed columns), and
    `derived` the columns written from the row's own (a layout's copies)."""

    def __init__(
        self,
        row_type: type[Row],
        descriptor: descriptor_pb2.DescriptorProto | None = None,
        derived: Derived | None = None,
    ) -> None:
        self.row_type = row_type
        self.descriptor = descriptor if descriptor is not None else row_descriptor(row_type)
        self._derived = derived if derived else None
        if self._derived is not None:
            extended = descriptor_pb2.DescriptorProto()
            extended.CopyFrom(self.descriptor)
            self._derived.add_fields(extended)
            self.descriptor = extended
        self._message = message_class(self.descriptor)
        self._names = tuple(c.name for c in columns(row_type))

    def encode(self, row: Row, more: dict[str, Any] | None = None) -> bytes:
        """The row, and `more` fields' values (nested messages as dicts)."""
        # Unset optional fields are how proto2 says NULL, so None values are
        # left out rather than set. Every value already has its wire type (see
        # PROTO_TYPES): no conversion happens per row.
        values = {name: value for name in self._names if (value := getattr(row, name)) is not None}
        if more:
            values.update(more)
        if self._derived is not None:
            values.update(self._derived.values(row, more))
        encoded: bytes = self._message(**values).SerializeToString()
        return encoded
