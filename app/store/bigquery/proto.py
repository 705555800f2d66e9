"""The Storage Write API's view of a row: a proto2 message derived at runtime.

AppendRows takes rows as serialized protocol buffers plus the descriptor that
reads them (the "writer schema"). Both are computed here from `columns()`, the
same declaration the DuckDB DDL and the BigQuery table schemas come from, so
there is no `.proto` file and no protoc step to keep in step with the Structs.

Field numbers follow declaration order. Appending a column at the end of a
Struct keeps every existing number; BigQuery matches fields to columns by name
anyway, so numbers only have to be stable within one connection.
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
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


def row_descriptor(row_type: type[Row]) -> descriptor_pb2.DescriptorProto:
    """The self-contained proto2 descriptor of one table's rows."""
    message = descriptor_pb2.DescriptorProto(name=row_type.__name__)
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


class RowEncoder:
    """Serializes one table's rows for AppendRows; `descriptor`, where given, is
    the row's with more fields than `row_type` has (a record's typed columns)."""

    def __init__(
        self, row_type: type[Row], descriptor: descriptor_pb2.DescriptorProto | None = None
    ) -> None:
        self.row_type = row_type
        self.descriptor = descriptor if descriptor is not None else row_descriptor(row_type)
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
        encoded: bytes = self._message(**values).SerializeToString()
        return encoded
