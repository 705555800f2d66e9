"""A schema revision as typed fields: names, BigQuery types, modes and nested fields.

The mapping is the one a Pub/Sub BigQuery subscription with `use_topic_schema`
applies, checked row by row against BigQuery's documentation (each rule cites
its source beside it), with one difference: every typed field is NULLABLE (or
REPEATED), never REQUIRED, so that a row that lacks a field, or whose value
does not fit, is still stored, its value NULL and the reason in
`projection_errors`; the payload is always kept whole in `data`.

Sources:
- [types]: https://cloud.google.com/bigquery/docs/reference/standard-sql/data-types
- [avro]: https://cloud.google.com/bigquery/docs/loading-data-cloud-storage-avro
- [proto]: https://cloud.google.com/bigquery/docs/supported-data-types (Storage Write API)
- [pubsub]: https://cloud.google.com/pubsub/docs/bigquery#schema_compatibility
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from google.protobuf.descriptor import Descriptor, FieldDescriptor


class Type(enum.StrEnum):
    """A typed field's type, named as BigQuery names it."""

    STRING = "STRING"
    BYTES = "BYTES"
    INT64 = "INT64"
    FLOAT64 = "FLOAT64"
    NUMERIC = "NUMERIC"
    BIGNUMERIC = "BIGNUMERIC"
    BOOL = "BOOL"
    TIMESTAMP = "TIMESTAMP"
    DATE = "DATE"
    TIME = "TIME"
    DATETIME = "DATETIME"
    JSON = "JSON"
    RECORD = "RECORD"


class Mode(enum.StrEnum):
    NULLABLE = "NULLABLE"
    REPEATED = "REPEATED"


class Field(msgspec.Struct, kw_only=True, frozen=True):
    """One typed field; a RECORD has `fields` of its own."""

    name: str
    type: Type
    mode: Mode = Mode.NULLABLE
    fields: tuple[Field, ...] = ()


class Shape(msgspec.Struct, frozen=True):
    """What a schema type maps to, before it is given a name."""

    type: Type
    mode: Mode = Mode.NULLABLE
    fields: tuple[Field, ...] = ()

    def named(self, name: str) -> Field:
        return Field(name=name, type=self.type, mode=self.mode, fields=self.fields)


_JSON = Shape(Type.JSON)

# [types] NUMERIC: 38 digits of precision, 9 of them after the point, so 29
# before it; BIGNUMERIC: 76.76 digits, 38 after the point, so 38 (and a partial
# 39th) before it. A decimal wider than BIGNUMERIC is kept exactly as text.
NUMERIC_SCALE = 9
NUMERIC_INTEGER_DIGITS = 29
BIGNUMERIC_SCALE = 38
BIGNUMERIC_INTEGER_DIGITS = 38


def decimal_type(precision: int, scale: int) -> Type:
    """[avro] "decimal → NUMERIC or BIGNUMERIC, by precision and scale"."""
    if 0 <= scale <= NUMERIC_SCALE and precision - scale <= NUMERIC_INTEGER_DIGITS:
        return Type.NUMERIC
    if 0 <= scale <= BIGNUMERIC_SCALE and precision - scale <= BIGNUMERIC_INTEGER_DIGITS:
        return Type.BIGNUMERIC
    return Type.STRING


# -- Avro ----------------------------------------------------------------------

# [avro] primitive types: boolean → BOOL, int and long → INTEGER (INT64),
# float and double → FLOAT (FLOAT64), bytes → BYTES, string → STRING.
_AVRO_PRIMITIVES = {
    "boolean": Type.BOOL,
    "int": Type.INT64,
    "long": Type.INT64,
    "float": Type.FLOAT64,
    "double": Type.FLOAT64,
    "bytes": Type.BYTES,
    "string": Type.STRING,
}
# [avro] logical types: date → DATE, time-millis/time-micros → TIME,
# timestamp-millis/timestamp-micros → TIMESTAMP, local-timestamp-millis/-micros →
# DATETIME; uuid annotates a string. A logical type Avro does not know is read
# as its underlying type (Avro specification, "Logical Types").
_AVRO_LOGICAL = {
    "date": Type.DATE,
    "time-millis": Type.TIME,
    "time-micros": Type.TIME,
    "timestamp-millis": Type.TIMESTAMP,
    "timestamp-micros": Type.TIMESTAMP,
    "local-timestamp-millis": Type.DATETIME,
    "local-timestamp-micros": Type.DATETIME,
    "uuid": Type.STRING,
}
_NAMED = ("record", "error", "enum", "fixed")


class _AvroNames:
    """Named Avro types by full name, and the records being mapped (for recursion)."""

    def __init__(self) -> None:
        self.named: dict[str, tuple[Any, str]] = {}
        self.open: set[str] = set()

    def full_name(self, schema: Mapping[str, Any], namespace: str) -> str:
        name = str(schema.get("name", ""))
        if "." in name:
            return name
        space = schema.get("namespace", namespace)
        return f"{space}.{name}" if space else name

    def resolve(self, name: str, namespace: str) -> tuple[Any, str] | None:
        for candidate in (f"{namespace}.{name}" if namespace else name, name):
            if candidate in self.named:
                return self.named[candidate]
        return None


def avro_fields(definition: str | Mapping[str, Any]) -> tuple[Field, ...]:
    """The typed fields of an Avro schema (the JSON text Pub/Sub stores).

    A record's fields, one each; any other top-level type has no fields (its
    payload is no object to take fields from). A schema fastavro reads is
    expected; anything the mapping cannot make sense of becomes JSON.
    """
    schema = msgspec.json.decode(definition) if isinstance(definition, str) else definition
    names = _AvroNames()
    shape = _avro(schema, "", names)
    return shape.fields if shape.type is Type.RECORD and shape.mode is Mode.NULLABLE else ()


def _avro(schema: Any, namespace: str, names: _AvroNames) -> Shape:
    if isinstance(schema, str):
        if schema in _AVRO_PRIMITIVES:
            return Shape(_AVRO_PRIMITIVES[schema])
        found = names.resolve(schema, namespace)
        if found is None:
            return _JSON  # "null" alone, or a name that is not defined
        definition, space = found
        full = names.full_name(definition, space)
        if full in names.open:
            # A recursive record: BigQuery has no recursive types (and nests 15
            # levels at most), so the value is kept whole.
            return _JSON
        return _avro_named(definition, space, names)
    if isinstance(schema, list):
        return _avro_union(schema, namespace, names)
    if not isinstance(schema, Mapping):
        return _JSON
    kind = schema.get("type")
    if isinstance(kind, list | Mapping):
        return _avro(kind, namespace, names)
    logical = schema.get("logicalType")
    if logical == "decimal" and kind in ("bytes", "fixed"):
        precision, scale = schema.get("precision"), schema.get("scale", 0)
        if isinstance(precision, int) and isinstance(scale, int) and precision > 0:
            if kind == "fixed":
                names.named[names.full_name(schema, namespace)] = (schema, namespace)
            return Shape(decimal_type(precision, scale))
    if logical in _AVRO_LOGICAL:
        return Shape(_AVRO_LOGICAL[logical])
    if kind in _NAMED:
        full = names.full_name(schema, namespace)
        names.named[full] = (schema, namespace)
        return _avro_named(schema, namespace, names)
    if kind == "array":
        return _repeated(_avro(schema.get("items"), namespace, names))
    if kind == "map":
        return _entries(Shape(Type.STRING), _avro(schema.get("values"), namespace, names))
    if isinstance(kind, str):
        return _avro(kind, namespace, names)
    return _JSON


def _avro_named(schema: Mapping[str, Any], namespace: str, names: _AvroNames) -> Shape:
    kind = schema.get("type")
    if kind == "enum":
        return Shape(Type.STRING)  # [avro] enum → STRING
    if kind == "fixed":
        return Shape(Type.BYTES)  # [avro] fixed → BYTES
    full = names.full_name(schema, namespace)
    space = full.rpartition(".")[0]
    names.open.add(full)
    try:
        fields = tuple(
            _avro(field.get("type"), space, names).named(str(field["name"]))
            for field in schema.get("fields", ())
            if isinstance(field, Mapping) and "name" in field
        )
    finally:
        names.open.discard(full)
    return _record(fields)


def _avro_union(branches: list[Any], namespace: str, names: _AvroNames) -> Shape:
    # [pubsub] a union of null and one type is that type, NULLABLE; [avro] loads
    # refuse other unions, which are kept as JSON here so that no row is lost.
    others = [b for b in branches if b != "null"]
    if len(others) == 1:
        return _avro(others[0], namespace, names)
    return _JSON


# -- Protocol Buffers ------------------------------------------------------------

# [proto] BOOL ← bool; BYTES ← bytes; FLOAT ← double, float; INTEGER ← int32,
# int64, uint32 (and their sint/sfixed/fixed32 encodings), enum; NUMERIC ←
# uint64 (its range is past INT64's, so it does not fit an INTEGER column);
# STRING ← string, enum (enums are stored as their names, as the JSON mapping
# writes them).
_PROTO_SCALARS = {
    FieldDescriptor.TYPE_DOUBLE: Type.FLOAT64,
    FieldDescriptor.TYPE_FLOAT: Type.FLOAT64,
    FieldDescriptor.TYPE_INT64: Type.INT64,
    FieldDescriptor.TYPE_SINT64: Type.INT64,
    FieldDescriptor.TYPE_SFIXED64: Type.INT64,
    FieldDescriptor.TYPE_INT32: Type.INT64,
    FieldDescriptor.TYPE_SINT32: Type.INT64,
    FieldDescriptor.TYPE_SFIXED32: Type.INT64,
    FieldDescriptor.TYPE_UINT32: Type.INT64,
    FieldDescriptor.TYPE_FIXED32: Type.INT64,
    FieldDescriptor.TYPE_UINT64: Type.NUMERIC,
    FieldDescriptor.TYPE_FIXED64: Type.NUMERIC,
    FieldDescriptor.TYPE_BOOL: Type.BOOL,
    FieldDescriptor.TYPE_STRING: Type.STRING,
    FieldDescriptor.TYPE_BYTES: Type.BYTES,
    FieldDescriptor.TYPE_ENUM: Type.STRING,
}
# Well-known types, as their JSON mapping writes them: [proto] TIMESTAMP ←
# google.protobuf.Timestamp; a wrapper is its wrapped type, NULLABLE; a Struct,
# Value, ListValue or Any is JSON; a Duration or FieldMask is its text.
_WELL_KNOWN = {
    "google.protobuf.Timestamp": Shape(Type.TIMESTAMP),
    "google.protobuf.DoubleValue": Shape(Type.FLOAT64),
    "google.protobuf.FloatValue": Shape(Type.FLOAT64),
    "google.protobuf.Int64Value": Shape(Type.INT64),
    "google.protobuf.Int32Value": Shape(Type.INT64),
    "google.protobuf.UInt32Value": Shape(Type.INT64),
    "google.protobuf.UInt64Value": Shape(Type.NUMERIC),
    "google.protobuf.BoolValue": Shape(Type.BOOL),
    "google.protobuf.StringValue": Shape(Type.STRING),
    "google.protobuf.BytesValue": Shape(Type.BYTES),
    "google.protobuf.Struct": _JSON,
    "google.protobuf.Value": _JSON,
    "google.protobuf.ListValue": _JSON,
    "google.protobuf.Any": _JSON,
    "google.protobuf.Duration": Shape(Type.STRING),
    "google.protobuf.FieldMask": Shape(Type.STRING),
}


def protobuf_fields(message: Descriptor) -> tuple[Field, ...]:
    """The typed fields of a Protocol Buffers message (its descriptor, compiled by protoc)."""
    return _message(message, set()).fields


def _message(message: Descriptor, open_messages: set[str]) -> Shape:
    if message.full_name in _WELL_KNOWN:
        return _WELL_KNOWN[message.full_name]
    if message.full_name in open_messages:
        return _JSON  # recursive: see _avro
    open_messages.add(message.full_name)
    try:
        fields = tuple(_proto_field(f, open_messages).named(f.name) for f in message.fields)
    finally:
        open_messages.discard(message.full_name)
    return _record(fields)


def _proto_field(field: FieldDescriptor, open_messages: set[str]) -> Shape:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        entry = field.message_type.fields_by_name
        return _entries(
            _proto_value(entry["key"], open_messages), _proto_value(entry["value"], open_messages)
        )
    shape = _proto_value(field, open_messages)
    return _repeated(shape) if field.is_repeated else shape


def _proto_value(field: FieldDescriptor, open_messages: set[str]) -> Shape:
    if field.message_type is not None:
        return _message(field.message_type, open_messages)
    return Shape(_PROTO_SCALARS.get(field.type, Type.JSON))


# -- both ----------------------------------------------------------------------


def _record(fields: tuple[Field, ...]) -> Shape:
    # [types] column names are case-insensitive: of two fields whose names differ
    # only in case, the first is the column, and the other's values are
    # projection errors (app.typed.projection).
    first: dict[str, Field] = {}
    for field in fields:
        first.setdefault(field.name.casefold(), field)
    fields = tuple(first.values())
    # A RECORD needs at least one field in BigQuery: an empty one is kept as JSON.
    return Shape(Type.RECORD, fields=fields) if fields else _JSON


def _repeated(item: Shape) -> Shape:
    # [types] "BigQuery does not support ARRAYs of ARRAYs": an array of arrays
    # (or of maps, which are arrays of entries) is kept as JSON instead.
    if item.mode is Mode.REPEATED:
        return _JSON
    return Shape(item.type, Mode.REPEATED, item.fields)


def _entries(key: Shape, value: Shape) -> Shape:
    # [pubsub] a map is a REPEATED RECORD of `key` and `value`.
    return Shape(Type.RECORD, Mode.REPEATED, (key.named("key"), value.named("value")))


def is_entries(field: Field) -> bool:
    """Whether `field` holds a map: a REPEATED RECORD of exactly `key` and `value`."""
    return (
        field.type is Type.RECORD
        and field.mode is Mode.REPEATED
        and [f.name for f in field.fields] == ["key", "value"]
    )


def fields_json(fields: Sequence[Field]) -> bytes:
    """The fields as BigQuery's table schema JSON writes them."""
    return msgspec.json.encode(list(fields))


def fields_from_json(text: bytes | str) -> tuple[Field, ...]:
    return msgspec.json.decode(text, type=tuple[Field, ...])
