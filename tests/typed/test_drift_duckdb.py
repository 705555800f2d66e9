"""The drift matrix on DuckDB's real path: pushes to the service, stored, then read from
`records_typed` as an analyst would.

Each change of tests/typed/test_drift.py, for a topic's Avro schema (two revisions
served by the fake Schema API, each message in its revision's binary encoding), for
a Protocol Buffers one (each message in its revision's JSON encoding), and for a
JSON topic's declared schema (the service restarted with the second
declaration, as a deploy does). For each: 0 messages lost (both stored), 0 stuck
(each push answered 204 the first time: nothing redelivered or dead-lettered
because of the change), 0 silent drops (every value of the stored payload is in its
typed column or named by a projection error), and the second revision's columns
queryable as soon as its first record is.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import duckdb
import httpx
import msgspec
import pytest

from app.asgi import create_app, fetching_schemas, store_revisions
from app.store.duckdb.store import DuckDBStore
from tests.conftest import served, settings
from tests.fake_schema_api import FakeSchemaApi
from tests.typed.accounting import unaccounted_row
from tests.typed.pushing import (
    SCHEMA,
    avro_push,
    json_push,
    order,
    proto,
    protobuf_push,
    pushed,
)
from tests.typed.test_drift import CHANGES, PROTO_CHANGES


@asynccontextmanager
async def service(path: Path, **env: str) -> AsyncIterator[httpx.AsyncClient]:
    configured = settings(**env)
    schemas = fetching_schemas(configured)
    store = DuckDBStore(str(path), revisions=store_revisions(schemas))
    async with served(create_app(configured, store=store, schemas=schemas)) as http:
        yield http


def _typed(path: Path) -> dict[str, tuple[Any, Any, list[dict[str, Any]], list[str]]]:
    """Each record's stored payload, typed fields, projection errors, and the names of
    the table's typed fields, as an analyst's query reads them."""
    with duckdb.connect(str(path), read_only=True) as con:
        rows = con.execute(
            "SELECT id, data::VARCHAR, fields, projection_errors FROM records_typed"
        ).fetchall()
        (kind,) = con.execute("SELECT typeof(fields) FROM records_typed LIMIT 1").fetchone() or (
            "",
        )
    columns = [part.split(" ")[0].strip('"') for part in _top_level(kind)]
    return {
        row[0]: (msgspec.json.decode(row[1]), row[2] or {}, row[3] or [], columns) for row in rows
    }


def _top_level(struct_type: str) -> list[str]:
    """The top-level members of DuckDB's STRUCT(a T, b STRUCT(...)) type text."""
    inner = struct_type[struct_type.index("(") + 1 : -1] if "(" in struct_type else ""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(inner):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(inner[start:i].strip())
            start = i + 1
    return [*parts, inner[start:].strip()] if inner else []


@pytest.mark.slow
@pytest.mark.parametrize("change", list(CHANGES))
async def test_avro_drift_through_the_service(
    change: str, schema_api: FakeSchemaApi, tmp_path: Path
) -> None:
    case = CHANGES[change]
    schema_api.add(SCHEMA, "r1", "AVRO", json.dumps(order(case.before)))
    schema_api.add(SCHEMA, "r2", "AVRO", json.dumps(order(case.after)))
    path = tmp_path / "records.duckdb"
    async with service(path, PUBSUB_EMULATOR_HOST=schema_api.address) as http:
        await pushed(http, avro_push(1, "r1", case.before, case.first))
        await pushed(http, avro_push(2, "r2", case.after, case.second))
    _check(path, case.after, change)


@pytest.mark.slow
@pytest.mark.parametrize("change", list(PROTO_CHANGES))
async def test_protobuf_drift_through_the_service(
    change: str, schema_api: FakeSchemaApi, tmp_path: Path
) -> None:
    before, after, first, second, name, _kind, misfit = PROTO_CHANGES[change]
    schema_api.add(SCHEMA, "r1", "PROTOCOL_BUFFER", proto(before))
    schema_api.add(SCHEMA, "r2", "PROTOCOL_BUFFER", proto(after))
    path = tmp_path / "records.duckdb"
    async with service(path, PUBSUB_EMULATOR_HOST=schema_api.address) as http:
        await pushed(http, protobuf_push(1, "r1", proto(before), first))
        await pushed(http, protobuf_push(2, "r2", proto(after), second))
    typed = _typed(path)
    assert sorted(typed) == ["1", "2"], change
    for record_id, (payload, fields, errors, columns) in typed.items():
        assert unaccounted_row(payload, fields, errors) == [], (change, record_id, payload, errors)
        assert name in columns, (change, columns)
    # A value that does not fit its column is an error; one that fits is typed.
    assert (name in [e["field"] for e in typed["2"][2]]) is misfit, typed["2"]


@pytest.mark.slow
@pytest.mark.parametrize("change", list(CHANGES))
async def test_declared_json_drift_through_the_service(change: str, tmp_path: Path) -> None:
    case = CHANGES[change]
    path = tmp_path / "records.duckdb"
    for n, (fields, message) in enumerate(
        [(case.before, case.first), (case.after, case.second)], 1
    ):
        # Each declaration deployed in turn: the service restarted with the next one.
        declared = json.dumps(order(fields))
        async with service(path, RECORDLINE_JSON_TOPIC_SCHEMA=declared) as http:
            await pushed(http, json_push(n, message))
    _check(path, case.after, change)


def _check(path: Path, after: list[dict[str, Any]], change: str) -> None:
    typed = _typed(path)
    assert sorted(typed) == ["1", "2"], change  # both stored, once each
    for record_id, (payload, fields, errors, columns) in typed.items():
        assert unaccounted_row(payload, fields, errors) == [], (change, record_id, payload, errors)
        assert all(e["revision"] for e in errors), errors
        # The second revision's fields are columns once its first record is stored.
        assert {f["name"] for f in after} <= set(columns), (change, columns)
