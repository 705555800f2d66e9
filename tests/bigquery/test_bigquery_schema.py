"""The protobuf descriptor and the SQL agree with the one row definition."""

from __future__ import annotations

import re

import pytest
import sqlglot
from google.protobuf import descriptor_pb2
from sqlglot import exp

from app.records import Kind, Record, Rejection, Row, columns
from app.store.bigquery.proto import RowEncoder, message_class, row_descriptor
from app.store.bigquery.sql import (
    CHECK_SQL,
    earlier_copies_sql,
    first_row_sql,
    latest_sql,
    next_partition_sql,
    page_sql,
    rejected_sql,
    stored_sql,
)

F = descriptor_pb2.FieldDescriptorProto
WIRE = {
    Kind.STRING: F.TYPE_STRING,
    Kind.INT64: F.TYPE_INT64,
    Kind.TIMESTAMP: F.TYPE_INT64,
    Kind.JSON: F.TYPE_STRING,
    Kind.BYTES: F.TYPE_BYTES,
}


@pytest.mark.parametrize("row_type", [Record, Rejection])
def test_descriptor_fields_are_the_columns(row_type: type[Row]) -> None:
    descriptor = row_descriptor(row_type)
    fields = [(f.name, f.type, f.label == F.LABEL_OPTIONAL) for f in descriptor.field]
    expected = [(c.name, WIRE[c.kind], c.nullable) for c in columns(row_type)]
    assert fields == expected
    assert [f.number for f in descriptor.field] == list(range(1, len(expected) + 1))


def test_descriptor_is_self_contained_proto2() -> None:
    # The writer schema must stand alone: no nested types, enums or imports.
    descriptor = row_descriptor(Record)
    assert not descriptor.nested_type
    assert not descriptor.enum_type
    assert all(not f.type_name for f in descriptor.field)
    assert all(not f.proto3_optional for f in descriptor.field)


def test_rows_round_trip_through_the_descriptor() -> None:
    record = Record(
        message_id="m-1",
        publish_time=1_714_219_200_000_000,
        ingest_time=1_714_219_200_123_456,
        id="1",
        data='{"text": "Ejemplo de datos", "n": [1, 2.5]}',
        attributes='{"origin": "test"}',
        delivery_attempt=3,
    )
    decoded = message_class(row_descriptor(Record)).FromString(RowEncoder(Record).encode(record))
    assert decoded.message_id == "m-1"
    assert decoded.ingest_time == 1_714_219_200_123_456
    # JSON text passes through byte for byte; None is an unset field (NULL).
    assert decoded.data == record.data
    assert not decoded.HasField("timestamp")
    assert decoded.delivery_attempt == 3

    rejection = Rejection(
        message_id="m-2", publish_time=1, ingest_time=2, data=b"\xff\x00", reason="x"
    )
    decoded = message_class(row_descriptor(Rejection)).FromString(
        RowEncoder(Rejection).encode(rejection)
    )
    assert decoded.data == b"\xff\x00"
    assert decoded.reason == "x"


TABLE = "`p-roject.dataset.records`"
REJECTED = "`p-roject.dataset.rejected`"
SCANS = {
    "page": page_sql(TABLE),
    "earlier_copies": earlier_copies_sql(TABLE),
    "first_row": first_row_sql(TABLE),
    "latest": latest_sql(TABLE),
    "stored": stored_sql(TABLE),
    "rejected": rejected_sql(REJECTED),
}
STATEMENTS = {
    **SCANS,
    "next_partition": next_partition_sql("`p-roject.dataset.INFORMATION_SCHEMA.PARTITIONS`"),
}


@pytest.mark.parametrize("sql", [*STATEMENTS.values(), CHECK_SQL], ids=[*STATEMENTS, "check"])
def test_every_statement_parses_as_bigquery(sql: str) -> None:
    tree = sqlglot.parse_one(sql, read="bigquery")
    assert isinstance(tree, exp.Select)
    # Values only ever arrive as named parameters: no string literals in the text.
    assert not [lit for lit in tree.find_all(exp.Literal) if lit.is_string]


@pytest.mark.parametrize("name", list(SCANS))
def test_every_table_scan_has_a_parameter_range_on_ingest_time(name: str) -> None:
    tree = sqlglot.parse_one(SCANS[name], read="bigquery")
    tables = 0
    for select in tree.find_all(exp.Select):
        table = select.args["from_"].this
        if not isinstance(table, exp.Table):
            continue  # reads a subquery, whose own scan is checked
        tables += 1
        alias = table.alias_or_name
        lower_bounds = [
            gte
            for gte in select.args["where"].find_all(exp.GTE)
            if isinstance(gte.this, exp.Column)
            and gte.this.name == "ingest_time"
            and gte.this.table == alias
            and gte.expression.find(exp.Parameter) is not None
        ]
        assert lower_bounds, f"{name}: no ingest_time range on {alias}"
    assert tables == 1


def test_page_scans_one_bounded_range_in_key_order() -> None:
    sql = SCANS["page"]
    assert re.search(r"ORDER BY c\.ingest_time, c\.message_id\s+LIMIT @limit$", sql)
    # Both ends of the scan are parameters: no join or subquery bounds it.
    assert "r.ingest_time < TIMESTAMP_MICROS(@end)" in sql
    assert "NOT EXISTS" not in sql
    assert set(re.findall(r"@(\w+)", sql)) == {
        "reach",
        "end",
        "after_time",
        "after_message_id",
        "clock_skew",
        "window",
        "limit",
    }


def test_every_statement_translates_to_duckdb() -> None:
    # The jobs fake runs the translation; a statement sqlglot cannot carry over
    # would make the offline round trip test something other than this SQL.
    for sql in STATEMENTS.values():
        translated = sqlglot.transpile(sql, read="bigquery", write="duckdb")[0]
        assert "@" not in translated
