"""A schema revision as typed fields: names, BigQuery types, modes and nested fields.

The mapping a Pub/Sub BigQuery subscription with `use_topic_schema` applies, with
every typed field NULLABLE (or REPEATED), never REQUIRED, so that a row whose
value is missing or does not fit is still stored. A revision is a publisher's
input: the mapping stops at BigQuery's own caps (`MAX_FIELDS`, `MAX_DEPTH`,
`OverCap`) having spent work in proportion to the cap, never to the expansion.

Design: docs/typed-columns.md#the-type-mapping and
docs/typed-columns.md#what-a-revision-may-cost
"""

from __future__ import annotations

import enum
import re
import time
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from google.protobuf.descriptor import Descriptor, FieldDescriptor

# Each rule cites its source beside it, checked row by row against BigQuery's docs:
# - [types]: https://cloud.google.com/bigquery/docs/reference/standard-sql/data-types
# - [avro]: https://cloud.google.com/bigquery/docs/loading-data-cloud-storage-avro
# - [proto]: https://cloud.google.com/bigquery/docs/supported-data-types (Storage Write API)
# - [pubsub]: https://cloud.google.com/pubsub/docs/bigquery#schema_compatibility
# - [limits]: https://cloud.google.com/bigquery/quotas#table_limits and
#   https://cloud.google.com/bigquery/docs/nested-repeated#limitations
# - [names]: https://cloud.google.com/bigquery/docs/schemas#column_names


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

# [limits] "The overall maximum number of columns and nested columns is 10,000"
# and "a schema cannot contain more than 15 levels of nested RECORD types". The
# typed fields share `records` with 16 columns of the service's own (a Record's
# 11, `fields` itself, `projection_errors` and its 3 fields), and they all live
# inside the `fields` RECORD, the first of the 15 levels: a revision's records
# may nest 14 deep (a top-level field's record is 1 deep).
BIGQUERY_MAX_COLUMNS = 10_000
BIGQUERY_MAX_NESTING = 15
OWN_COLUMNS = 16
MAX_FIELDS = BIGQUERY_MAX_COLUMNS - OWN_COLUMNS
MAX_DEPTH = BIGQUERY_MAX_NESTING - 1
# A mapping's deadline (see `avro_fields`) is looked at every _CLOCK_EVERY
# fields: within the caps a revision maps in 60-90 ms (9,984 fields), so the
# deadline ends only a mapping slowed by something else.
_CLOCK_EVERY = 256


class OverCap(ValueError):
    """A schema whose typed fields would pass a cap; the message names it."""


def too_many_fields() -> OverCap:
    return OverCap(
        f"the revision maps to more than {MAX_FIELDS:,} typed fields (BigQuery holds "
        f"{BIGQUERY_MAX_COLUMNS:,} columns in a table, nested ones included, "
        f"{OWN_COLUMNS} of them the service's own)"
    )


class _Budget:
    """Fields made so far against MAX_FIELDS, and the time the mapping may take."""

    __slots__ = ("deadline", "made")

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.made = 0

    def spend(self, within: int) -> None:
        """One more field, inside a record `within` levels deep (0: a top-level field,
        1: a field of a top-level field's record…)."""
        self.made += 1
        if self.made > MAX_FIELDS:
            raise too_many_fields()
        if within > MAX_DEPTH:
            raise OverCap(
                f"the revision nests records more than {MAX_DEPTH} levels deep (BigQuery "
                f"nests {BIGQUERY_MAX_NESTING} at most, the typed fields' own `fields` "
                "RECORD included)"
            )
        if (
            self.deadline is not None
            and not self.made % _CLOCK_EVERY
            and time.monotonic() > self.deadline
        ):
            raise OverCap("the revision took longer to map than its deadline allows")


def field_count(fields: Sequence[Field]) -> int:
    """Every field, nested ones included, as BigQuery counts columns."""
    return sum(1 + field_count(f.fields) for f in fields)


# [names] A column name has at most 300 characters, none of these prefixes,
# and, as a flexible column name, only letters, marks, numbers, connector
# punctuation (`_`), dashes, spaces and the symbols `&%=+:'<>#|`. DuckDB holds
# any name but the empty one, which BigQuery refuses too.
MAX_NAME_LENGTH = 300
RESERVED_PREFIXES = (
    "_TABLE_",
    "_FILE_",
    "_PARTITION",
    "_ROW_TIMESTAMP",
    "__ROOT__",
    "_COLIDENTIFIER",
    "_CHANGE_SEQUENCE_NUMBER",
    "_CHANGE_TYPE",
    "_CHANGE_TIMESTAMP",
)
_NAME_CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No"})
_NAME_CATEGORIES |= {"Pc", "Pd", "Zs"}
_NAME_SYMBOLS = frozenset("&%=+:'<>#|")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_]+")


def unholdable(name: str) -> str | None:
    """Why no store can give a typed field this name, or None when every one can."""
    if not name:
        return "an empty name, which no column can have"
    if len(name) > MAX_NAME_LENGTH:
        return f"a name of more than {MAX_NAME_LENGTH} characters, as no BigQuery column has"
    upper = name.upper()
    for prefix in RESERVED_PREFIXES:
        if upper.startswith(prefix):
            return f"a name that begins with {prefix}, which BigQuery reserves"
    if _PLAIN_NAME.fullmatch(name):
        return None
    for char in name:
        if char not in _NAME_SYMBOLS and unicodedata.category(char) not in _NAME_CATEGORIES:
            return f"a name with {char!r} in it, which no BigQuery column name may hold"
    return None


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

    def __init__(self, budget: _Budget) -> None:
        self.named: dict[str, tuple[Any, str]] = {}
        self.open: set[str] = set()
        self.budget = budget

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


def avro_fields(
    definition: str | Mapping[str, Any], *, deadline: float | None = None
) -> tuple[Field, ...]:
    """The typed fields of an Avro schema (the JSON text Pub/Sub stores, or a record
    schema decoded), as `decoded_avro_fields` maps them."""
    schema = msgspec.json.decode(definition) if isinstance(definition, str) else definition
    return decoded_avro_fields(schema, deadline=deadline)


def decoded_avro_fields(schema: Any, *, deadline: float | None = None) -> tuple[Field, ...]:
    """The typed fields of an Avro schema, decoded from its JSON text.

    A record's fields, one each; any other top-level type has no fields (its
    payload is no object to take fields from). A schema fastavro reads is
    expected; anything the mapping cannot make sense of becomes JSON. Raises
    OverCap past a cap, or past `deadline` (`time.monotonic()`'s).
    """
    names = _AvroNames(_Budget(deadline))
    try:
        shape = _avro(schema, "", names, 0)
    except RecursionError:
        raise OverCap("the revision nests its types too deeply to map") from None
    return shape.fields if shape.type is Type.RECORD and shape.mode is Mode.NULLABLE else ()


def _avro(schema: Any, namespace: str, names: _AvroNames, level: int) -> Shape:
    # `level`: how deep a RECORD made here would be (0: the payload's own record,
    # whose fields are the top-level typed fields).
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
        return _avro_named(definition, space, names, level)
    if isinstance(schema, list):
        return _avro_union(schema, namespace, names, level)
    if not isinstance(schema, Mapping):
        return _JSON
    kind = schema.get("type")
    if isinstance(kind, list | Mapping):
        return _avro(kind, namespace, names, level)
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
        return _avro_named(schema, namespace, names, level)
    if kind == "array":
        return _repeated(_avro(schema.get("items"), namespace, names, level))
    if kind == "map":
        value = _avro(schema.get("values"), namespace, names, level + 1)
        return _entries(Shape(Type.STRING), value, names.budget, level)
    if isinstance(kind, str):
        return _avro(kind, namespace, names, level)
    return _JSON


def _avro_named(schema: Mapping[str, Any], namespace: str, names: _AvroNames, level: int) -> Shape:
    kind = schema.get("type")
    if kind == "enum":
        return Shape(Type.STRING)  # [avro] enum → STRING
    if kind == "fixed":
        return Shape(Type.BYTES)  # [avro] fixed → BYTES
    full = names.full_name(schema, namespace)
    space = full.rpartition(".")[0]
    names.open.add(full)
    try:
        fields = []
        for field in schema.get("fields", ()):
            if isinstance(field, Mapping) and "name" in field:
                names.budget.spend(level)
                shape = _avro(field.get("type"), space, names, level + 1)
                fields.append(shape.named(str(field["name"])))
    finally:
        names.open.discard(full)
    return _record(fields)


def _avro_union(branches: list[Any], namespace: str, names: _AvroNames, level: int) -> Shape:
    # [pubsub] a union of null and one type is that type, NULLABLE; [avro] loads
    # refuse other unions, which are kept as JSON here so that no row is lost.
    others = [b for b in branches if b != "null"]
    if len(others) == 1:
        return _avro(others[0], namespace, names, level)
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


def protobuf_fields(message: Descriptor, *, deadline: float | None = None) -> tuple[Field, ...]:
    """The typed fields of a Protocol Buffers message (its descriptor, compiled by
    protoc); raises OverCap as `avro_fields` does."""
    try:
        return _message(message, _Messages(_Budget(deadline)), 0).fields
    except RecursionError:
        raise OverCap("the revision nests its types too deeply to map") from None


class _Messages:
    """The messages being mapped (for recursion), and the budget."""

    __slots__ = ("budget", "open")

    def __init__(self, budget: _Budget) -> None:
        self.open: set[str] = set()
        self.budget = budget


def _message(message: Descriptor, messages: _Messages, level: int) -> Shape:
    if message.full_name in _WELL_KNOWN:
        return _WELL_KNOWN[message.full_name]
    if message.full_name in messages.open:
        return _JSON  # recursive: see _avro
    messages.open.add(message.full_name)
    try:
        fields = []
        for field in message.fields:
            messages.budget.spend(level)
            fields.append(_proto_field(field, messages, level + 1).named(field.name))
    finally:
        messages.open.discard(message.full_name)
    return _record(fields)


def _proto_field(field: FieldDescriptor, messages: _Messages, level: int) -> Shape:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        entry = field.message_type.fields_by_name
        key = _proto_value(entry["key"], messages, level + 1)
        value = _proto_value(entry["value"], messages, level + 1)
        return _entries(key, value, messages.budget, level)
    shape = _proto_value(field, messages, level)
    return _repeated(shape) if field.is_repeated else shape


def _proto_value(field: FieldDescriptor, messages: _Messages, level: int) -> Shape:
    if field.message_type is not None:
        return _message(field.message_type, messages, level)
    return Shape(_PROTO_SCALARS.get(field.type, Type.JSON))


# -- both ----------------------------------------------------------------------


def _record(fields: Sequence[Field]) -> Shape:
    # [types] column names are case-insensitive: of two fields whose names differ
    # only in case, the first is the column, and the other's values are
    # projection errors (app.typed.projection), as are those of a field whose
    # name no store can hold.
    first: dict[str, Field] = {}
    for field in fields:
        if unholdable(field.name) is None:
            first.setdefault(field.name.casefold(), field)
    kept = tuple(first.values())
    # A RECORD needs at least one field in BigQuery: an empty one is kept as JSON.
    return Shape(Type.RECORD, fields=kept) if kept else _JSON


def _repeated(item: Shape) -> Shape:
    # [types] "BigQuery does not support ARRAYs of ARRAYs": an array of arrays
    # (or of maps, which are arrays of entries) is kept as JSON instead.
    if item.mode is Mode.REPEATED:
        return _JSON
    return Shape(item.type, Mode.REPEATED, item.fields)


def _entries(key: Shape, value: Shape, budget: _Budget, level: int) -> Shape:
    # [pubsub] a map is a REPEATED RECORD of `key` and `value`, a record `level`
    # levels deep: its two fields count.
    budget.spend(level)
    budget.spend(level)
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
