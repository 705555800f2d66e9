"""One test per row of the type mapping (Avro and Protocol Buffers): the typed field a
schema type maps to, and a value of it, stored as the push path stores it, projected
into that field whole."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

from app.ingest.protobuf import ProtobufCodec
from app.records import Record
from app.store.bigquery.schema import created_schema
from app.store.duckdb.typed import sql_type
from app.typed.mapping import (
    MAX_DEPTH,
    MAX_FIELDS,
    OWN_COLUMNS,
    Field,
    Mode,
    OverCap,
    Type,
    avro_fields,
    field_count,
    protobuf_fields,
    unholdable,
)
from app.typed.projection import project
from tests.typed.bombs import avro_bomb, proto_bomb, python_calls
from tests.typed.stored import avro_stored, protobuf_stored

DOCS = Path(__file__).resolve().parents[2] / "docs" / "typed-columns.md"
UTC = dt.UTC
ENTRY = (Field(name="key", type=Type.STRING), Field(name="value", type=Type.INT64))
INNER = {"type": "record", "name": "Inner", "fields": [{"name": "sku", "type": "string"}]}

# The docs' row name → (Avro type, a value as the publisher writes it,
# the typed field's type and mode, its nested fields, the typed value).
AVRO_ROWS: dict[str, tuple[Any, Any, Type, Mode, tuple[Field, ...], Any]] = {
    "boolean": ("boolean", True, Type.BOOL, Mode.NULLABLE, (), True),
    "int": ("int", -7, Type.INT64, Mode.NULLABLE, (), -7),
    "long": ("long", 2**62, Type.INT64, Mode.NULLABLE, (), 2**62),
    "float": ("float", 1.5, Type.FLOAT64, Mode.NULLABLE, (), 1.5),
    "double": ("double", 2.25, Type.FLOAT64, Mode.NULLABLE, (), 2.25),
    "bytes": ("bytes", b"\x00\xff", Type.BYTES, Mode.NULLABLE, (), b"\x00\xff"),
    "string": ("string", "hé", Type.STRING, Mode.NULLABLE, (), "hé"),
    "fixed": (
        {"type": "fixed", "name": "F", "size": 2},
        b"ab",
        Type.BYTES,
        Mode.NULLABLE,
        (),
        b"ab",
    ),
    "enum": (
        {"type": "enum", "name": "E", "symbols": ["A", "B"]},
        "B",
        Type.STRING,
        Mode.NULLABLE,
        (),
        "B",
    ),
    "timestamp-millis": (
        {"type": "long", "logicalType": "timestamp-millis"},
        dt.datetime(2024, 4, 27, 12, 0, 0, 123000, tzinfo=UTC),
        Type.TIMESTAMP,
        Mode.NULLABLE,
        (),
        dt.datetime(2024, 4, 27, 12, 0, 0, 123000, tzinfo=UTC),
    ),
    "timestamp-micros": (
        {"type": "long", "logicalType": "timestamp-micros"},
        dt.datetime(2024, 4, 27, 12, 0, 0, 123456, tzinfo=UTC),
        Type.TIMESTAMP,
        Mode.NULLABLE,
        (),
        dt.datetime(2024, 4, 27, 12, 0, 0, 123456, tzinfo=UTC),
    ),
    "local-timestamp-micros": (
        {"type": "long", "logicalType": "local-timestamp-micros"},
        dt.datetime(2024, 4, 27, 12, 0, 0, 5),
        Type.DATETIME,
        Mode.NULLABLE,
        (),
        dt.datetime(2024, 4, 27, 12, 0, 0, 5),
    ),
    "date": (
        {"type": "int", "logicalType": "date"},
        dt.date(2024, 2, 29),
        Type.DATE,
        Mode.NULLABLE,
        (),
        dt.date(2024, 2, 29),
    ),
    "time-millis": (
        {"type": "int", "logicalType": "time-millis"},
        dt.time(23, 59, 1, 250000),
        Type.TIME,
        Mode.NULLABLE,
        (),
        dt.time(23, 59, 1, 250000),
    ),
    "time-micros": (
        {"type": "long", "logicalType": "time-micros"},
        dt.time(0, 0, 0, 1),
        Type.TIME,
        Mode.NULLABLE,
        (),
        dt.time(0, 0, 0, 1),
    ),
    "decimal, precision - scale ≤ 29 and scale ≤ 9": (
        {"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": 9},
        Decimal("-12345678901234567890123456789.123456789"),
        Type.NUMERIC,
        Mode.NULLABLE,
        (),
        Decimal("-12345678901234567890123456789.123456789"),
    ),
    "decimal, precision - scale ≤ 38 and scale ≤ 38": (
        {"type": "bytes", "logicalType": "decimal", "precision": 76, "scale": 38},
        Decimal("1.00000000000000000000000000000000000001"),
        Type.BIGNUMERIC,
        Mode.NULLABLE,
        (),
        Decimal("1.00000000000000000000000000000000000001"),
    ),
    "decimal, wider than BIGNUMERIC": (
        {"type": "bytes", "logicalType": "decimal", "precision": 60, "scale": 0},
        Decimal("1" * 60),
        Type.STRING,
        Mode.NULLABLE,
        (),
        "1" * 60,
    ),
    "uuid": (
        {"type": "string", "logicalType": "uuid"},
        "c0ffee00-0000-4000-8000-000000000000",
        Type.STRING,
        Mode.NULLABLE,
        (),
        "c0ffee00-0000-4000-8000-000000000000",
    ),
    "record": (
        INNER,
        {"sku": "x-1"},
        Type.RECORD,
        Mode.NULLABLE,
        (Field(name="sku", type=Type.STRING),),
        {"sku": "x-1"},
    ),
    "array of T (here long)": (
        {"type": "array", "items": "long"},
        [1, 2],
        Type.INT64,
        Mode.REPEATED,
        (),
        [1, 2],
    ),
    "map": (
        {"type": "map", "values": "long"},
        {"a": 1, "b": 2},
        Type.RECORD,
        Mode.REPEATED,
        ENTRY,
        [{"key": "a", "value": 1}, {"key": "b", "value": 2}],
    ),
    '["null", T] (here long)': (["null", "long"], 5, Type.INT64, Mode.NULLABLE, (), 5),
    "any other union": (["string", "long"], 5, Type.JSON, Mode.NULLABLE, (), "5"),
    "array of arrays": (
        {"type": "array", "items": {"type": "array", "items": "long"}},
        [[1], [2, 3]],
        Type.JSON,
        Mode.NULLABLE,
        (),
        "[[1],[2,3]]",
    ),
}

PROTO = """
syntax = "proto3";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";
import "google/protobuf/struct.proto";
message Row {
  enum Colour { RED = 0; GREEN = 1; }
  message Inner { string sku = 1; }
  double f_double = 1;
  float f_float = 2;
  int32 f_int32 = 3;
  int64 f_int64 = 4;
  uint32 f_uint32 = 5;
  uint64 f_uint64 = 6;
  sint32 f_sint32 = 7;
  sint64 f_sint64 = 8;
  fixed32 f_fixed32 = 9;
  fixed64 f_fixed64 = 10;
  sfixed32 f_sfixed32 = 11;
  sfixed64 f_sfixed64 = 12;
  bool f_bool = 13;
  string f_string = 14;
  bytes f_bytes = 15;
  Colour f_enum = 16;
  Inner f_message = 17;
  repeated int64 f_repeated = 18;
  map<string, int64> f_map = 19;
  google.protobuf.Timestamp f_timestamp = 20;
  google.protobuf.Int64Value f_wrapper = 21;
  google.protobuf.Struct f_struct = 22;
  optional string f_optional = 23;
}
"""
# The docs' row name → (field, a value in the JSON mapping, type, mode, fields, typed value).
PROTO_ROWS: dict[str, tuple[str, Any, Type, Mode, tuple[Field, ...], Any]] = {
    "double": ("f_double", 1.5, Type.FLOAT64, Mode.NULLABLE, (), 1.5),
    "float": ("f_float", 0.5, Type.FLOAT64, Mode.NULLABLE, (), 0.5),
    "int32": ("f_int32", -3, Type.INT64, Mode.NULLABLE, (), -3),
    "int64": ("f_int64", str(-(2**63)), Type.INT64, Mode.NULLABLE, (), -(2**63)),
    "uint32": ("f_uint32", 2**32 - 1, Type.INT64, Mode.NULLABLE, (), 2**32 - 1),
    "uint64": ("f_uint64", str(2**64 - 1), Type.NUMERIC, Mode.NULLABLE, (), Decimal(2**64 - 1)),
    "sint32": ("f_sint32", -1, Type.INT64, Mode.NULLABLE, (), -1),
    "sint64": ("f_sint64", "-9", Type.INT64, Mode.NULLABLE, (), -9),
    "fixed32": ("f_fixed32", 7, Type.INT64, Mode.NULLABLE, (), 7),
    "fixed64": ("f_fixed64", str(2**64 - 2), Type.NUMERIC, Mode.NULLABLE, (), Decimal(2**64 - 2)),
    "sfixed32": ("f_sfixed32", -7, Type.INT64, Mode.NULLABLE, (), -7),
    "sfixed64": ("f_sfixed64", "-8", Type.INT64, Mode.NULLABLE, (), -8),
    "bool": ("f_bool", True, Type.BOOL, Mode.NULLABLE, (), True),
    "string": ("f_string", "hé", Type.STRING, Mode.NULLABLE, (), "hé"),
    "bytes": ("f_bytes", "AP8=", Type.BYTES, Mode.NULLABLE, (), b"\x00\xff"),
    "enum": ("f_enum", "GREEN", Type.STRING, Mode.NULLABLE, (), "GREEN"),
    "message": (
        "f_message",
        {"sku": "x-1"},
        Type.RECORD,
        Mode.NULLABLE,
        (Field(name="sku", type=Type.STRING),),
        {"sku": "x-1"},
    ),
    "repeated T (here int64)": ("f_repeated", ["1", "2"], Type.INT64, Mode.REPEATED, (), [1, 2]),
    "map": (
        "f_map",
        {"a": "1"},
        Type.RECORD,
        Mode.REPEATED,
        ENTRY,
        [{"key": "a", "value": 1}],
    ),
    "google.protobuf.Timestamp": (
        "f_timestamp",
        "2024-04-27T12:00:00.123456789Z",
        Type.TIMESTAMP,
        Mode.NULLABLE,
        (),
        dt.datetime(2024, 4, 27, 12, 0, 0, 123456, tzinfo=UTC),
    ),
    "a wrapper (here google.protobuf.Int64Value)": (
        "f_wrapper",
        "5",
        Type.INT64,
        Mode.NULLABLE,
        (),
        5,
    ),
    "google.protobuf.Struct": ("f_struct", {"a": [1]}, Type.JSON, Mode.NULLABLE, (), '{"a":[1.0]}'),
    "optional T (here string)": ("f_optional", "x", Type.STRING, Mode.NULLABLE, (), "x"),
}


@pytest.mark.parametrize("row", list(AVRO_ROWS))
def test_avro_row(row: str) -> None:
    avro_type, value, kind, mode, nested, typed = AVRO_ROWS[row]
    schema = {"type": "record", "name": "Row", "fields": [{"name": "f", "type": avro_type}]}
    (field,) = avro_fields(schema)
    assert field == Field(name="f", type=kind, mode=mode, fields=nested)
    projection = project(avro_stored(schema, {"f": value}), (field,), "s@1")
    assert projection.errors == []
    assert projection.values == {"f": typed}


@pytest.fixture(scope="module")
def proto_codec() -> ProtobufCodec:
    return ProtobufCodec(PROTO)


@pytest.mark.parametrize("row", list(PROTO_ROWS))
def test_protobuf_row(row: str, proto_codec: ProtobufCodec) -> None:
    name, value, kind, mode, nested, typed = PROTO_ROWS[row]
    fields = {f.name: f for f in protobuf_fields(proto_codec.descriptor)}
    assert fields[name] == Field(name=name, type=kind, mode=mode, fields=nested)
    stored = protobuf_stored(proto_codec, {name: value})
    projection = project(stored, tuple(fields.values()), "s@1")
    assert projection.errors == []
    assert projection.values[name] == typed


def test_a_recursive_record_is_json_where_it_recurses() -> None:
    schema = {
        "type": "record",
        "name": "Node",
        "fields": [
            {"name": "label", "type": "string"},
            {"name": "next", "type": ["null", "Node"]},
        ],
    }
    assert avro_fields(schema) == (
        Field(name="label", type=Type.STRING),
        Field(name="next", type=Type.JSON),
    )


def _docs_rows(heading: str) -> dict[str, tuple[str, str, str]]:
    """The rows of the docs' mapping table under `heading`: name → (BigQuery type,
    DuckDB type, mode)."""
    text = DOCS.read_text()
    section = text.split(heading, 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0] and not set(cells[0]) <= set("-: "):
            name = re.sub(r"`", "", cells[0])
            rows[name] = (cells[1].strip("`"), cells[2].strip("`"), cells[3].strip("`"))
    rows.pop("schema type", None)
    return rows


def _duckdb_type(
    con: duckdb.DuckDBPyConnection, kind: Type, mode: Mode, nested: tuple[Field, ...]
) -> str:
    """The type DuckDB gives the column the store makes for the field, as it names it
    (`duckdb_columns()`); a record's members and a map's types are shown as "…" and
    "key, value"."""
    field = Field(name="f", type=kind, mode=mode, fields=nested)
    con.execute(f"CREATE OR REPLACE TEMP TABLE t (f {sql_type(field)})")
    found = con.execute("SELECT data_type FROM duckdb_columns() WHERE table_name = 't'").fetchone()
    assert found is not None
    shown = str(found[0])
    if shown.startswith('STRUCT("key"'):
        return "STRUCT(key, value)[]"
    return "STRUCT(…)" if shown.startswith("STRUCT(") else shown


def _shown(kind: Type, nested: tuple[Field, ...]) -> str:
    if nested == ENTRY or (kind is Type.RECORD and [f.name for f in nested] == ["key", "value"]):
        return "RECORD (key, value)"
    return kind.value


@pytest.mark.parametrize(
    ("heading", "rows"),
    [("## Avro", AVRO_ROWS), ("## Protocol Buffers", PROTO_ROWS)],
)
def test_the_docs_table_is_the_mapping(heading: str, rows: dict[str, Any]) -> None:
    documented = _docs_rows(heading)
    assert set(documented) == set(rows)
    with duckdb.connect(":memory:") as con:
        for name, (_, _, kind, mode, nested, _) in rows.items():
            expected = (_shown(kind, nested), _duckdb_type(con, kind, mode, nested), mode.value)
            assert documented[name] == expected, name


def test_a_declared_schema_s_revision_is_named_as_the_docs_say() -> None:
    # The docs said "named from its text"; the name is from its content, keys sorted.
    import hashlib
    import json

    from app.typed.revisions import Revisions

    text = (DOCS.parent.parent / "schemas" / "payments.avsc").read_text()
    schema = json.loads(text)
    canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    named = "declared@" + hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert Revisions().declare(text) == named
    # Spaced and ordered otherwise, the same schema is the same revision.
    assert Revisions().declare(json.dumps(dict(reversed(schema.items())), indent=4)) == named
    assert "`declared@` and the first 16 hex digits of the SHA-256" in DOCS.read_text()


# -- caps ----------------------------------------------------------------------


def _refused(work: Any) -> str:
    with pytest.raises(OverCap) as refused:
        work()
    return str(refused.value)


# Calls per field the mapping makes at most, with room: work in proportion to
# the cap, never to the expansion (the bombs below expand to 7-40 times it;
# the mapping makes about 10 calls a field).
_CALLS_PER_FIELD = 40


@pytest.mark.parametrize(
    ("levels", "width", "cap"),
    [(17, 2, "levels deep"), (8, 4, "typed fields")],
)
def test_an_avro_schema_past_a_cap_is_refused_for_work_in_proportion_to_the_cap(
    levels: int, width: int, cap: str
) -> None:
    schema = avro_bomb(levels, width)
    assert len(json.dumps(schema)) < 3_000
    calls = python_calls(lambda: _refused(lambda: avro_fields(schema)))
    assert calls < _CALLS_PER_FIELD * MAX_FIELDS
    assert cap in _refused(lambda: avro_fields(schema))


@pytest.mark.parametrize(
    ("levels", "width", "cap"), [(16, 2, "levels deep"), (8, 4, "typed fields")]
)
def test_a_proto_past_a_cap_is_refused_for_work_in_proportion_to_the_cap(
    levels: int, width: int, cap: str
) -> None:
    definition = proto_bomb(levels, width)
    assert len(definition) < 700
    descriptor = ProtobufCodec(definition).descriptor
    calls = python_calls(lambda: _refused(lambda: protobuf_fields(descriptor)))
    assert calls < _CALLS_PER_FIELD * MAX_FIELDS
    assert cap in _refused(lambda: protobuf_fields(descriptor))


def _flat(count: int) -> dict[str, Any]:
    fields = [{"name": f"f{i}", "type": "long"} for i in range(count)]
    return {"type": "record", "name": "Flat", "fields": fields}


def _nested(depth: int) -> dict[str, Any]:
    """A record whose innermost field is `depth` records down."""
    schema: dict[str, Any] = {
        "type": "record",
        "name": "N0",
        "fields": [{"name": "v", "type": "long"}],
    }
    for k in range(1, depth + 1):
        schema = {"type": "record", "name": f"N{k}", "fields": [{"name": "c", "type": schema}]}
    return {"type": "record", "name": "Top", "fields": [{"name": "c", "type": schema}]}


def test_the_caps_are_bigquerys() -> None:
    # Each field counts, nested ones too, as BigQuery counts a table's columns;
    # the typed fields share the 10,000 with the service's own columns.
    assert field_count(avro_fields(_flat(MAX_FIELDS))) == MAX_FIELDS
    assert "more than 9,984 typed fields" in _refused(lambda: avro_fields(_flat(MAX_FIELDS + 1)))
    # 14 records deep fit inside `fields` (BigQuery's 15 levels); 15 do not.
    assert MAX_DEPTH == 14
    assert avro_fields(_nested(MAX_DEPTH - 1))
    assert "more than 14 levels deep" in _refused(lambda: avro_fields(_nested(MAX_DEPTH)))
    # A map is a REPEATED RECORD: one level, and two fields.
    deep_map = _nested(MAX_DEPTH - 2)
    deep_map["fields"].append({"name": "m", "type": {"type": "map", "values": _nested(0)}})
    assert avro_fields(deep_map)


def test_the_service_s_own_columns_are_what_the_cap_leaves_out() -> None:
    # `records` as the service creates it (`projection_errors` included), and `fields`.
    own = [*created_schema(Record), {"name": "fields", "fields": []}]

    def count(columns: list[dict[str, Any]]) -> int:
        return sum(1 + count(c.get("fields", [])) for c in columns)

    assert count(own) == OWN_COLUMNS
    assert MAX_FIELDS + OWN_COLUMNS == 10_000


def test_a_mapping_past_its_deadline_is_refused() -> None:
    expired = time.monotonic() - 1
    assert "deadline" in _refused(lambda: avro_fields(_flat(1_000), deadline=expired))


def test_a_schema_that_nests_types_past_what_python_recurses_is_refused() -> None:
    # Arrays of arrays nest no record (each is kept as JSON), but are read by recursion.
    items: Any = "long"
    for _ in range(3_000):
        items = {"type": "array", "items": items}
    schema = {"type": "record", "name": "Deep", "fields": [{"name": "a", "type": items}]}
    assert "too deeply" in _refused(lambda: avro_fields(schema))


# -- names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "an empty name"),
        ("x" * 301, "more than 300 characters"),
        ("_TABLE_suffix", "begins with _TABLE_"),
        ("_partitiontime", "begins with _PARTITION"),
        ("__root__", "begins with __ROOT__"),
        ("_CHANGE_TYPE", "begins with _CHANGE_TYPE"),
        ("a.b", "'.'"),
        ("price$", "'$'"),
        ("tab\there", "'\\t'"),
        ("smile😀", "'😀'"),
    ],
)
def test_a_name_no_store_can_hold_is_no_typed_field_and_its_values_say_why(
    name: str, why: str
) -> None:
    reason = unholdable(name)
    assert reason is not None
    assert why in reason
    schema = {
        "type": "record",
        "name": "Row",
        "fields": [{"name": "kept", "type": "long"}, {"name": name, "type": "long"}],
    }
    fields = avro_fields(schema)
    assert [f.name for f in fields] == ["kept"]
    projection = project({"kept": 1, name: 2}, fields, "s@1")
    assert projection.values == {"kept": 1}
    (error,) = projection.errors
    assert error.field == name
    assert error.reason == f"no typed field can hold it: {reason}"


@pytest.mark.parametrize(
    "name", ["café", "prix-total", "日付", "naïve", "1st", "a b", "x&y", "x" * 300, "_table"]
)
def test_a_flexible_column_name_is_a_typed_field(name: str) -> None:
    assert unholdable(name) is None
    schema = {"type": "record", "name": "Row", "fields": [{"name": name, "type": "string"}]}
    assert avro_fields(schema) == (Field(name=name, type=Type.STRING),)
