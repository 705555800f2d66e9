"""One test per row of the type mapping (Avro and Protocol Buffers): the typed field a
schema type maps to, and a value of it, stored as the push path stores it, projected
into that field whole."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

from app.ingest.protobuf import ProtobufCodec
from app.store.duckdb.typed import sql_type
from app.typed.mapping import Field, Mode, Type, avro_fields, protobuf_fields
from app.typed.projection import project
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
