"""Projection never raises and never drops a value silently, whatever the payload and fields."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.store.bigquery.typed import typed_values
from app.store.duckdb.typed import _columns as duckdb_columns
from app.typed.evolution import merge
from app.typed.mapping import MAX_FIELDS, Field, Mode, Type, avro_fields
from app.typed.projection import project, projector
from tests.typed.accounting import unaccounted
from tests.typed.bombs import python_calls

NAMES = st.sampled_from(["a", "b", "c", "key", "value"])
SCALARS = st.sampled_from([t for t in Type if t is not Type.RECORD])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.sampled_from(["1.5", "NaN", "AP8=", "2024-01-01", "12:00:00", "2024-01-01T00:00:00Z"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NAMES, inner, max_size=4),
    max_leaves=20,
)


def _unique(fields: list[Field]) -> tuple[Field, ...]:
    return tuple({f.name: f for f in fields}.values())


fields_lists = st.recursive(
    st.lists(
        st.builds(
            lambda n, t, m: Field(name=n, type=t, mode=m), NAMES, SCALARS, st.sampled_from(Mode)
        ),
        max_size=4,
    ).map(_unique),
    lambda inner: st.lists(
        st.builds(
            lambda n, m, f: Field(name=n, type=Type.RECORD, mode=m, fields=f),
            NAMES,
            st.sampled_from(Mode),
            inner.filter(bool),
        ),
        max_size=3,
    ).map(_unique),
    max_leaves=8,
)


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(payload=json_values, fields=fields_lists)
def test_any_payload_onto_any_fields(payload: Any, fields: tuple[Field, ...]) -> None:
    projection = project(payload, fields, "s@1")
    assert set(projection.values) == {f.name for f in fields}
    assert unaccounted(payload, projection) == []
    assert all(e.revision == "s@1" for e in projection.errors)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(table=fields_lists, revision=fields_lists)
def test_merge_keeps_every_field(table: tuple[Field, ...], revision: tuple[Field, ...]) -> None:
    merged = merge(table, revision)
    assert [f.name for f in merged[: len(table)]] == [f.name for f in table]
    assert {f.name for f in merged} == {f.name for f in table} | {f.name for f in revision}
    assert merge(merged, revision) == merged  # a revision seen again changes nothing


def test_a_payload_that_is_no_object_is_one_error() -> None:
    projection = project("text", (Field(name="a", type=Type.STRING),), "s@1")
    assert projection.values == {"a": None}
    assert [(e.field, e.revision) for e in projection.errors] == [("$", "s@1")]


def test_a_value_out_of_range_is_an_error_not_a_wrong_value() -> None:
    fields = (
        Field(name="i", type=Type.INT64),
        Field(name="n", type=Type.NUMERIC),
        Field(name="t", type=Type.TIMESTAMP),
    )
    projection = project(
        {"i": 2**63, "n": "0.0000000001", "t": "9999-12-31T23:59:59-14:00"}, fields, "s@1"
    )
    assert projection.values == {"i": None, "n": None, "t": None}
    assert sorted(e.field for e in projection.errors) == ["i", "n", "t"]


def test_names_that_differ_only_in_case_are_one_column() -> None:
    # BigQuery's (and DuckDB's) column names are case-insensitive.
    schema = {
        "type": "record",
        "name": "R",
        "fields": [
            {"name": "amount", "type": "long"},
            {"name": "note", "type": "string"},
            {"name": "Amount", "type": "string"},
        ],
    }
    fields = avro_fields(schema)
    assert [f.name for f in fields] == ["amount", "note"]
    assert merge(fields, (Field(name="NOTE", type=Type.STRING),)) == fields
    projection = project({"amount": 1, "note": "n", "Amount": "one"}, fields, "s@1")
    assert projection.values == {"amount": 1, "note": "n"}
    assert [e.field for e in projection.errors] == ["Amount"]


@pytest.mark.slow
def test_a_row_costs_what_its_payload_holds_not_what_the_table_grew_to() -> None:
    """The Python work of a row's typed columns, counted in calls (a measure the
    machine does not change), is the same in a table of its own revision's two
    fields and in one that other revisions took to the cap."""
    own = (Field(name="id", type=Type.STRING), Field(name="amount", type=Type.INT64))
    others = tuple(Field(name=f"w{i}", type=Type.INT64) for i in range(MAX_FIELDS - len(own)))
    wide = merge(own, others)
    data = json.dumps({"id": "o-1", "amount": 7})

    def duckdb_row(fields: tuple[Field, ...]) -> Any:
        row, _ = projector(fields).stored_sparse(data, "s@1")
        return duckdb_columns(fields).array([row])

    def bigquery_row(fields: tuple[Field, ...]) -> Any:
        return typed_values(data, "s@1", fields, True)

    for row in (duckdb_row, bigquery_row):
        for fields in (own, wide):
            row(fields)  # compiled once per table's fields, before any row
        calls = [python_calls(functools.partial(row, fields)) for fields in (own, wide)]
        assert calls[0] == calls[1], row
    assert bigquery_row(wide) == bigquery_row(own)
