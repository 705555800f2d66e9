"""The filter language under generated input: any text is parsed or refused with a 400
naming `where` (never another error), and on generated payloads DuckDB's SQL and the
SQL BigQuery's fake runs (sqlglot's translation, as tests/bigquery does) keep exactly
the rows the in-memory matcher keeps. Payloads are written as a publisher may write
them: a member twice, every character beyond ASCII escaped or none, integers beyond a
double, members named by digits beside arrays."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import BadParameter
from app.records import Record
from app.store.where import (
    BIGQUERY,
    DUCKDB,
    SPANNER,
    TIME_COLUMNS,
    All,
    Any_,
    Condition,
    Expression,
    Not,
    matches,
    parse,
    to_sql,
)
from tests.bigquery.fake_jobs import in_duckdb
from tests.fuzz.budget import EXAMPLES

WORDS = [
    "data",
    "data.a",
    "data.b.c",
    'data["x y"]',
    "attributes.k",
    "id",
    "producer",
    "AND",
    "OR",
    "NOT",
    "(",
    ")",
    "IN",
    "STARTS WITH",
    "ENDS WITH",
    "CONTAINS",
    "EXISTS",
    "=",
    "!=",
    "<",
    ">=",
    "1",
    "-2.5",
    "1e3",
    "'s'",
    '"t"',
    "true",
    "false",
    ",",
    "reason",
    "timestamp",
    "'2024-01-01T00:00:00Z'",
    "''''",
    '"\\u00e9"',
    '"\\ud800"',
    "[",
    "]",
    ".",
    "\x00",
]
texts = st.one_of(
    st.text(max_size=60),
    st.lists(st.sampled_from(WORDS), max_size=14).map(" ".join),
)


# Generated payloads and expressions over a few members, so that conditions meet them
# (`0` as well, which names an object's member and never an array's element).
MEMBERS = ["a", "b", "x y", "0"]
scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers().map(lambda n: n * 10**400),  # beyond a double
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.text(max_size=4),
    st.sampled_from(["", "a", "ab", "b", "é", "{}", "1", "\U0001f600", "\x00"]),
    st.booleans(),
    st.none(),
)


class Pairs(list[tuple[str, Any]]):
    """An object as a publisher may write it: a member may come twice."""


json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=2)
        | st.lists(st.tuples(st.sampled_from(MEMBERS), inner), max_size=3).map(Pairs)
    ),
    max_leaves=6,
)
payloads: st.SearchStrategy[Any] = st.one_of(
    st.lists(st.tuples(st.sampled_from(MEMBERS), json_values), max_size=3).map(Pairs),
    json_values,
)


def text_of(value: Any, ascii_only: bool) -> str:
    """`value` as JSON text, its members in order (twice where it has them twice), and
    every character beyond ASCII escaped where `ascii_only` (as Python's json writes
    them by default: a character beyond the BMP as a surrogate pair's escapes)."""
    match value:
        case Pairs():
            members = (f"{text_of(k, ascii_only)}:{text_of(v, ascii_only)}" for k, v in value)
            return "{" + ",".join(members) + "}"
        case list():
            return "[" + ",".join(text_of(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def operand_text(path: list[str]) -> str:
    return "data" + "".join(f"[{json.dumps(m)}]" for m in path)


def literal_text(value: Any) -> str:
    return json.dumps(value)


literals = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from(["a", "ab", "b", "é", "1", "{}", "x", "\U0001f600"]),
    st.booleans(),
)
paths = st.lists(st.sampled_from(MEMBERS), max_size=2)


@st.composite
def conditions(draw: st.DrawFn) -> str:
    name = operand_text(draw(paths))
    value = draw(literals)
    if isinstance(value, bool):
        op = draw(st.sampled_from(["=", "!="]))
    else:
        op = draw(st.sampled_from(["=", "!=", "<", "<=", ">", ">="]))
    kind = draw(st.sampled_from(["compare", "in", "exists", "text"]))
    if kind == "in":
        more = draw(st.lists(literals, min_size=1, max_size=3))
        return f"{name} IN ({', '.join(literal_text(v) for v in [value, *more])})"
    if kind == "exists":
        return f"EXISTS {name}"
    if kind == "text":
        word = draw(st.sampled_from(["STARTS WITH", "ENDS WITH", "CONTAINS"]))
        return f"{name} {word} {json.dumps(draw(st.sampled_from(['a', 'b', 'é', '{'])))}"
    return f"{name} {op} {literal_text(value)}"


expressions = st.recursive(
    conditions(),
    lambda inner: (
        st.builds(lambda e: f"NOT ({e})", inner)
        | st.builds(lambda a, b: f"({a} AND {b})", inner, inner)
        | st.builds(lambda a, b: f"({a} OR {b})", inner, inner)
    ),
    max_leaves=4,
)


@pytest.fixture(scope="module")
def db() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    connection.execute("CREATE TABLE r (n INTEGER, data JSON, attributes JSON)")
    yield connection
    connection.close()


def other_values(expression: Expression) -> Expression:
    """`expression` with every value another of its type."""
    match expression:
        case Condition(values=values):
            swapped = tuple(
                not v if isinstance(v, bool) else v + 1.5 if isinstance(v, float) else v + "_"
                for v in values
            )
            if expression.operand.root in TIME_COLUMNS:
                swapped = tuple("1999-01-01T00:00:00Z" for _ in values)
            return dataclasses.replace(expression, values=swapped)
        case Not(term):
            return Not(other_values(term))
        case All(terms):
            return All(tuple(map(other_values, terms)))
        case Any_(terms):
            return Any_(tuple(map(other_values, terms)))
    raise AssertionError(expression)


@pytest.mark.slow
@settings(max_examples=EXAMPLES * 20, deadline=None)
@given(
    text=texts
    | expressions
    | st.tuples(expressions, st.integers(0, 80), st.text(max_size=2)).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :]
    ),
    listing=st.sampled_from(["records", "rejections", None]),
)
def test_any_text_is_an_expression_or_a_400_naming_where(text: str, listing: str | None) -> None:
    try:
        expression = parse(text, listing)
    except BadParameter as exc:
        refused: BadParameter | None = exc
    else:
        refused = None
    if refused is not None:
        assert refused.extra["parameter"] == "where"
        return
    for dialect in (DUCKDB, BIGQUERY, SPANNER):
        sql, _ = to_sql(expression, dialect)
        # The SQL's text is the expression's shape alone: its values are parameters.
        assert to_sql(other_values(expression), dialect)[0] == sql


def kept(db: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> list[int]:
    return [n for (n,) in db.execute(f"SELECT n FROM r WHERE {sql} ORDER BY n", params).fetchall()]


@pytest.mark.slow
@settings(
    max_examples=EXAMPLES * 8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(rows=st.lists(st.tuples(payloads, st.booleans()), min_size=1, max_size=6), text=expressions)
def test_sql_keeps_what_the_matcher_keeps(
    db: duckdb.DuckDBPyConnection, rows: list[tuple[Any, bool]], text: str
) -> None:
    expression = parse(text, "records")
    db.execute("DELETE FROM r")
    records = []
    for n, (payload, ascii_only) in enumerate(rows):
        data = text_of(payload, ascii_only)
        db.execute("INSERT INTO r VALUES ($n, $data, '{}')", {"n": n, "data": data})
        records.append(
            Record(message_id=str(n), publish_time=0, ingest_time=0, id=str(n), data=data)
        )
    want = [n for n, record in enumerate(records) if matches(expression, record)]
    sql, params = to_sql(expression, DUCKDB)
    assert kept(db, sql, params) == want, (text, rows)
    # BigQuery's SQL as its fake runs it: translated by sqlglot to DuckDB's, on the
    # same JSON column.
    sql, params = to_sql(expression, BIGQUERY)
    translated = in_duckdb(f"SELECT n FROM r WHERE {sql} ORDER BY n")
    found = [n for (n,) in db.execute(translated, params).fetchall()]
    assert found == want, (text, rows, translated)
