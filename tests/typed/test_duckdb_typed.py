"""Typed columns on DuckDB, end to end: pushes of a topic schema's revisions become
typed fields analysts query in `records_typed`, a new revision's fields appear while
the service runs, and every value that does not fit is in `projection_errors`."""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import fastavro
import httpx
import msgspec
import pyarrow as pa
import pytest
from hypothesis import example, given
from hypothesis import settings as settings_for
from hypothesis import strategies as st

from app.asgi import create_app, fetching_schemas, store_revisions
from app.cli import main
from app.records import Record
from app.settings import SettingsError
from app.store.duckdb.store import DuckDBStore
from app.store.duckdb.typed import MAX_FIELDS as DUCKDB_MAX_FIELDS
from app.store.duckdb.typed import (
    TypedColumns,
    _arrow_type,
    _fields_type,
    _for_arrow,
    _widened,
    sql_type,
)
from app.typed.mapping import Field, Type, avro_fields
from app.typed.projection import project_stored, projector
from app.typed.revisions import Revisions
from tests.conftest import envelope, served, settings
from tests.fake_schema_api import FakeSchemaApi
from tests.typed.stored import avro_stored
from tests.typed.test_mapping import AVRO_ROWS
from tests.typed.test_projection import fields_lists, json_values

SCHEMA = "projects/shop/schemas/orders"
FIRST = {
    "type": "record",
    "name": "Order",
    "fields": [
        {"name": "order_id", "type": "string"},
        {"name": "amount", "type": "long"},
        {"name": "code", "type": "string"},
        {"name": "lines", "type": {"type": "array", "items": "string"}},
    ],
}
# Adds a field, widens `amount` (INT64 → FLOAT64) and changes `code` to a type
# its column cannot take (STRING stays; a long is a projection error).
SECOND = {
    "type": "record",
    "name": "Order",
    "fields": [
        {"name": "order_id", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "code", "type": "long"},
        {"name": "lines", "type": {"type": "array", "items": "string"}},
        {"name": "currency", "type": "string", "default": "EUR"},
    ],
}
MAPPING = {"RECORDLINE_ID_FIELD": "order_id", "RECORDLINE_TIME_FIELD": "no_such_field"}


def _binary(schema: dict[str, Any], value: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), value)
    return out.getvalue()


def _push(revision: str, message_id: str, data: bytes) -> dict[str, Any]:
    attributes = {
        "googclient_schemaname": SCHEMA,
        "googclient_schemarevisionid": revision,
        "googclient_schemaencoding": "BINARY",
    }
    return envelope(None, message_id=message_id, attributes=attributes, raw_data=data)


@asynccontextmanager
async def service(api: FakeSchemaApi, path: Path) -> AsyncIterator[httpx.AsyncClient]:
    configured = settings(PUBSUB_EMULATOR_HOST=api.address, **MAPPING)
    schemas = fetching_schemas(configured)
    store = DuckDBStore(str(path), revisions=store_revisions(schemas))
    app = create_app(configured, store=store, schemas=schemas)
    async with served(app) as http:
        yield http


def _query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    # Another connection to the store's database, as an analyst's would be.
    with duckdb.connect(str(path)) as con:
        return con.execute(sql).fetchall()


async def _stored(http: httpx.AsyncClient, revision: str, n: int, data: bytes) -> None:
    response = await http.post("/pubsub/push", json=_push(revision, f"m-{n}", data))
    assert response.status_code == 204
    # A point read waits until every earlier append is applied.
    assert (await http.get(f"/v1/records/o-{n}")).status_code == 200


@pytest.mark.slow
async def test_a_new_revision_s_fields_are_queryable_while_the_service_runs(
    schema_api: FakeSchemaApi, tmp_path: Path
) -> None:
    schema_api.add(SCHEMA, "r1", "AVRO", json.dumps(FIRST))
    schema_api.add(SCHEMA, "r2", "AVRO", json.dumps(SECOND))
    path = tmp_path / "typed.duckdb"
    first = {"order_id": "o-1", "amount": 12, "code": "A7", "lines": ["x"]}
    second = {"order_id": "o-2", "amount": 0.5, "code": 7, "lines": [], "currency": "USD"}
    async with service(schema_api, path) as http:
        await _stored(http, "r1", 1, _binary(FIRST, first))
        assert _query(
            path, "SELECT fields.amount, fields.code, fields.lines FROM records_typed"
        ) == [(12, "A7", ["x"])]
        await _stored(http, "r2", 2, _binary(SECOND, second))
        rows = _query(
            path,
            "SELECT id, fields.amount, fields.code, fields.currency, projection_errors "
            "FROM records_typed ORDER BY id",
        )
        # The API's own answer is the payload, as before.
        answer = (await http.get("/v1/records/o-2")).json()
    assert answer["data"] == second
    assert rows == [
        ("o-1", 12.0, "A7", None, []),
        (
            "o-2",
            0.5,
            None,
            "USD",
            [
                {
                    "field": "code",
                    "reason": "expected text, got a number",
                    "revision": f"{SCHEMA}@r2",
                }
            ],
        ),
    ]
    column = _query(
        path,
        "SELECT data_type FROM duckdb_columns() "
        "WHERE table_name = 'record_fields' AND column_name = 'fields'",
    )
    assert column == [
        (
            "STRUCT(order_id VARCHAR, amount DOUBLE, code VARCHAR, lines VARCHAR[], "
            "currency VARCHAR)",
        )
    ]


@pytest.mark.slow
async def test_the_typed_fields_survive_a_restart_without_the_schema_api(
    schema_api: FakeSchemaApi, tmp_path: Path
) -> None:
    schema_api.add(SCHEMA, "r1", "AVRO", json.dumps(FIRST))
    path = tmp_path / "typed.duckdb"
    async with service(schema_api, path) as http:
        await _stored(
            http,
            "r1",
            1,
            _binary(FIRST, {"order_id": "o-1", "amount": 3, "code": "c", "lines": []}),
        )
    # A fresh process: its catalogue is empty, the store remembers each revision's fields.
    store = DuckDBStore(str(path), revisions=Revisions())
    await store.start()
    try:
        assert await store.latest("o-1") is not None
    finally:
        await store.close()
    assert _query(path, "SELECT fields.amount FROM records_typed") == [(3,)]


@pytest.mark.slow
async def test_records_without_a_schema_have_no_typed_fields(tmp_path: Path) -> None:
    path = tmp_path / "plain.duckdb"
    configured = settings()
    schemas = fetching_schemas(configured)
    store = DuckDBStore(str(path), revisions=store_revisions(schemas))
    app = create_app(configured, store=store, schemas=schemas)
    async with served(app) as http:
        response = await http.post("/pubsub/push", json=envelope({"id": "p-1", "data": {"a": 1}}))
        assert response.status_code == 204
        assert (await http.get("/v1/records/p-1")).status_code == 200
    assert _query(path, "SELECT id, fields, projection_errors FROM records_typed") == [
        ("p-1", None, None)
    ]


@pytest.mark.slow
async def test_a_change_duckdb_refuses_stores_the_record_says_why_and_the_file_starts_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "fault.duckdb"
    revisions = Revisions()
    # Fields no DuckDB column can have (an empty name, which the mapping never
    # makes, given here directly): the ALTER fails.
    revisions.learn("s@1", (Field(name="", type=Type.STRING),))
    revisions.learn("s@2", (Field(name="fine", type=Type.STRING),))
    record = Record(
        message_id="m-1", publish_time=1, ingest_time=2, id="r-1", data="{}", schema="s@1"
    )
    later = Record(
        message_id="m-2",
        publish_time=3,
        ingest_time=4,
        id="r-2",
        data='{"fine": "x"}',
        schema="s@2",
    )
    store = DuckDBStore(str(path), revisions=revisions)
    await store.start()
    try:
        assert await store.append([record]) == [None]
        assert await store.append([later]) == [None]
        await store.barrier()
        assert await store.latest("r-1") == record
    finally:
        await store.close()
    rows = _query(path, "SELECT id, fields, projection_errors FROM records_typed ORDER BY id")
    ((_, none, errors), (_, fine, no_errors)) = rows
    assert not any((none or {}).values())  # (a column added later reads NULL fields)
    assert [(e["field"], e["revision"]) for e in errors] == [("$", "s@1")]
    assert errors[0]["reason"].startswith("no typed columns: the table's change for them failed")
    assert "zero-length delimited identifier" in errors[0]["reason"]
    assert (fine, no_errors) == ({"fine": "x"}, [])
    # The refused change left no trace: the revision is not kept, and the file
    # opens again (it did not, when the revision was kept before its ALTER ran).
    assert _query(path, "SELECT schema FROM typed_revisions") == [("s@2",)]
    again = DuckDBStore(str(path), revisions=Revisions())
    await again.start()
    try:
        assert await again.latest("r-2") == later
    finally:
        await again.close()


@pytest.mark.slow
async def test_a_file_that_kept_a_revision_whose_change_failed_starts(tmp_path: Path) -> None:
    """What an earlier release left: a revision kept in `typed_revisions` whose ALTER
    then failed, so the table never took its fields."""
    path = tmp_path / "kept.duckdb"
    store = DuckDBStore(str(path), revisions=Revisions())
    await store.start()
    await store.close()
    with duckdb.connect(str(path)) as con:
        bad = '[{"name": "", "type": "STRING", "mode": "NULLABLE", "fields": []}]'
        con.execute("INSERT INTO typed_revisions VALUES ('s@1', 0, $fields)", {"fields": bad})
    revisions = Revisions()
    revisions.learn("s@2", (Field(name="fine", type=Type.STRING),))
    again = DuckDBStore(str(path), revisions=revisions)
    await again.start()
    try:
        record = Record(
            message_id="m-2",
            publish_time=3,
            ingest_time=4,
            id="r-2",
            data='{"fine": "x"}',
            schema="s@2",
        )
        assert await again.append([record]) == [None]
        await again.barrier()
    finally:
        await again.close()
    assert _query(path, "SELECT fields FROM records_typed") == [({"fine": "x"},)]


PROTO = """
syntax = "proto3";
message Order {
  string order_id = 1;
  uint64 amount = 2;
  map<string, int64> counts = 3;
}
"""


@pytest.mark.slow
async def test_a_protocol_buffers_revision_gets_typed_columns(
    schema_api: FakeSchemaApi, tmp_path: Path
) -> None:
    schema_api.add(SCHEMA, "p1", "PROTOCOL_BUFFER", PROTO)
    path = tmp_path / "proto.duckdb"
    message = {"order_id": "o-1", "amount": str(2**64 - 1), "counts": {"a": "3"}}
    attributes = {
        "googclient_schemaname": SCHEMA,
        "googclient_schemarevisionid": "p1",
        "googclient_schemaencoding": "JSON",
    }
    push = envelope(
        None, message_id="m-1", attributes=attributes, raw_data=json.dumps(message).encode()
    )
    async with service(schema_api, path) as http:
        assert (await http.post("/pubsub/push", json=push)).status_code == 204
        assert (await http.get("/v1/records/o-1")).status_code == 200
    rows = _query(path, "SELECT fields.amount, fields.counts, projection_errors FROM records_typed")
    assert rows == [(Decimal(2**64 - 1), [{"key": "a", "value": 3}], [])]


async def test_every_mapped_type_round_trips_through_duckdb(tmp_path: Path) -> None:
    # Every row of the Avro mapping at once, including its extreme values.
    fields_in = [{"name": f"f{n}", "type": row[0]} for n, row in enumerate(AVRO_ROWS.values())]
    schema = {"type": "record", "name": "Row", "fields": fields_in}
    datum = {f"f{n}": row[1] for n, row in enumerate(AVRO_ROWS.values())}
    revisions = Revisions()
    revisions.learn("s@1", avro_fields(schema))
    path = tmp_path / "types.duckdb"
    store = DuckDBStore(str(path), revisions=revisions)
    await store.start()
    try:
        data = json.dumps(avro_stored(schema, datum))
        record = Record(
            message_id="m-1", publish_time=1, ingest_time=2, id="r", data=data, schema="s@1"
        )
        await store.append([record])
        await store.barrier()
    finally:
        await store.close()
    ((fields, errors),) = _query(path, "SELECT fields, projection_errors FROM records_typed")
    assert errors == []
    for n, (_, _, kind, _, _, typed) in enumerate(AVRO_ROWS.values()):
        # BIGNUMERIC is its exact decimal text in DuckDB (its decimals stop at 38 digits).
        expected = str(typed) if kind is Type.BIGNUMERIC else typed
        assert fields[f"f{n}"] == expected, kind


DECLARED = {
    "type": "record",
    "name": "Order",
    "fields": [
        {"name": "amount", "type": "long"},
        {"name": "customer", "type": ["null", "string"], "default": None},
    ],
}
# A second declaration: the field publishers began sending before the first named it.
DECLARED_LATER = {
    **DECLARED,
    "fields": [*DECLARED["fields"], {"name": "note", "type": ["null", "string"], "default": None}],
}


@asynccontextmanager
async def json_service(path: Path, declared: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
    configured = settings(RECORDLINE_JSON_TOPIC_SCHEMA=json.dumps(declared))
    schemas = fetching_schemas(configured)
    store = DuckDBStore(str(path), revisions=store_revisions(schemas))
    async with served(create_app(configured, store=store, schemas=schemas)) as http:
        yield http


async def _json_stored(http: httpx.AsyncClient, n: int, data: Any) -> None:
    payload = {"id": f"o-{n}", "data": data}
    answer = await http.post("/pubsub/push", json=envelope(payload, message_id=f"m-{n}"))
    assert answer.status_code == 204
    assert (await http.get(f"/v1/records/o-{n}")).status_code == 200


@pytest.mark.slow
async def test_a_json_topic_gets_typed_columns_from_the_schema_its_system_declares(
    tmp_path: Path,
) -> None:
    path = tmp_path / "records.duckdb"
    async with json_service(path, DECLARED) as http:
        await _json_stored(http, 1, {"amount": 7, "customer": "Ada"})
        # A field no declaration names yet, and a value its column cannot take:
        # stored all the same, each a projection error, each still in `data`.
        await _json_stored(http, 2, {"amount": "lots", "note": "early"})
    async with json_service(path, DECLARED_LATER) as http:
        await _json_stored(http, 3, {"amount": 9, "note": "declared now"})
    # Two declarations, two revisions, merged like a topic's.
    revisions = [r[0] for r in _query(path, "SELECT schema FROM typed_revisions ORDER BY position")]
    assert [r.split("@")[0] for r in revisions] == ["declared", "declared"]
    first, second = revisions  # o-3 has `note` typed: only the second declares it
    assert first != second
    rows = _query(
        path,
        "SELECT id, fields.amount, fields.customer, fields.note, "
        "[e.field for e in projection_errors], [e.revision for e in projection_errors], "
        "data->>'$.note' FROM records_typed ORDER BY id",
    )
    assert rows == [
        ("o-1", 7, "Ada", None, [], [], None),
        ("o-2", None, None, None, ["amount", "note"], [first, first], "early"),
        ("o-3", 9, None, "declared now", [], [], "declared now"),
    ]


@pytest.mark.parametrize(
    ("declared", "why"),
    [
        ("{not json}", "not JSON"),
        ('{"type": "string"}', '"type": "record"'),
        ('{"type": "record", "name": "O", "fields": []}', "declares no fields"),
        ('{"type": "record", "name": "O", "fields": [{"name": "a", "type": "nosuch"}]}', "nosuch"),
    ],
)
def test_a_declared_schema_that_is_no_avro_record_is_refused_naming_the_setting(
    declared: str, why: str
) -> None:
    with pytest.raises(SettingsError, match=f"RECORDLINE_JSON_TOPIC_SCHEMA: .*{re.escape(why)}"):
        create_app(settings(RECORDLINE_JSON_TOPIC_SCHEMA=declared))


async def _plain_service_stores(path: Path, count: int) -> None:
    """Records of a JSON topic stored with no schema declared: no typed fields."""
    store = DuckDBStore(str(path))
    async with served(create_app(settings(), store=store)) as http:
        for n in range(1, count + 1):
            await _json_stored(http, n, {"amount": n, "customer": f"c{n}"})


@pytest.mark.slow
async def test_a_backfill_types_records_stored_before_their_schema_was_declared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "records.duckdb"
    await _plain_service_stores(path, 3)
    assert _query(path, "SELECT count(*) FROM records_typed WHERE projection_errors IS NULL") == [
        (3,)
    ]
    monkeypatch.setenv("RECORDLINE_JSON_TOPIC_SCHEMA", json.dumps(DECLARED))
    store = f"duckdb://{path}"
    # A range that ends before any record: nothing to do.
    assert (
        await asyncio.to_thread(
            main, ["typed", "backfill", "--store", store, "--until", "2020-01-01T00:00:00Z"]
        )
        == 0
    )
    assert "0 records projected again" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["typed", "backfill", "--store", store]) == 0
    assert "3 records projected again" in capsys.readouterr().err
    rows = _query(
        path, "SELECT id, fields.amount, fields.customer, projection_errors FROM records_typed"
    )
    assert sorted(rows) == [(f"o-{n}", n, f"c{n}", []) for n in (1, 2, 3)]
    # Twice changes nothing, and no record shows twice, in SQL or in the API.
    assert await asyncio.to_thread(main, ["typed", "backfill", "--store", store]) == 0
    assert _query(path, "SELECT count(*), count(DISTINCT message_id) FROM records_typed") == [
        (3, 3)
    ]
    async with served(create_app(settings(), store=DuckDBStore(str(path)))) as http:
        listed = (await http.get("/v1/records", params={"since": "2000-01-01T00:00:00Z"})).json()
    assert sorted(r["id"] for r in listed["records"]) == ["o-1", "o-2", "o-3"]


@pytest.mark.slow
def test_a_backfill_says_when_the_store_is_open_elsewhere_or_is_no_duckdb_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "records.duckdb"
    duckdb.connect(str(path)).close()
    # Another process holding the file, as a running service does, until told to go.
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, sys; c = duckdb.connect({str(path)!r}); "
         "print('open', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        assert main(["typed", "backfill", "--store", f"duckdb://{path}"]) == 1
        assert "stop the service first" in capsys.readouterr().err
    finally:
        holder.communicate(timeout=30)  # its stdin closed: it ends
    assert main(["typed", "backfill", "--store", "memory:"]) == 2
    assert "runs on a DuckDB file (duckdb:…) or on BigQuery" in capsys.readouterr().err
    # As every command's `--since`: refused before anything is opened (argparse, exit 2).
    with pytest.raises(SystemExit) as refused:
        main(["typed", "backfill", "--store", f"duckdb://{path}", "--since", "noon"])
    assert refused.value.code == 2
    assert "--since: 'noon' is not an RFC 3339 time" in capsys.readouterr().err


def _nan_as_text(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, dict):
        return {k: _nan_as_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_as_text(v) for v in value]
    return value


@pytest.mark.slow
@settings_for(max_examples=60, deadline=None)
@given(payloads=st.lists(json_values, min_size=1, max_size=4), fields=fields_lists.filter(bool))
# A float BIGNUMERIC keeps positional text (str() of its Decimal is `1.34…E+16`).
@example(
    payloads=[{"key": 1.341919387992744e16}],
    fields=(Field(name="key", type=Type.BIGNUMERIC),),
)
def test_the_fields_column_is_each_record_s_projection(
    payloads: list[Any], fields: tuple[Field, ...]
) -> None:
    # The column is built a field at a time, of the fields the rows have; each row
    # must still be that record's own projection, as Arrow takes it once DuckDB
    # has cast it to the table's fields (a field the payload lacks NULL), and a
    # payload that is no JSON all NULL.
    revisions = Revisions()
    revisions.learn("s@1", fields)
    texts = [*(json.dumps(p) for p in payloads), "{no json"]
    records = [
        Record(message_id=f"m-{n}", publish_time=1, ingest_time=2, id="r", data=t, schema="s@1")
        for n, t in enumerate(texts)
    ]
    kind = Field(name="fields", type=Type.RECORD, fields=fields)
    with duckdb.connect(":memory:") as con:
        con.execute("CREATE TABLE records (message_id VARCHAR)")  # what the view joins
        typed = TypedColumns(revisions)
        typed.open(con)
        table = typed.arrow(con, records)
    assert table is not None
    onto = projector(fields)
    expected = [_for_arrow(onto.stored_sparse(t, "s@1")[0] or {}, kind) for t in texts]
    built = table["fields"].combine_chunks().cast(_arrow_type(kind)).to_pylist()
    # Arrow's equality holds NaN unequal to itself; a payload's "NaN" is a FLOAT64 NaN.
    assert _nan_as_text(built) == _nan_as_text(
        pa.array(expected, type=_arrow_type(kind)).to_pylist()
    )
    errors = [
        [msgspec.structs.asdict(e) for e in project_stored(t, fields, "s@1").errors] for t in texts
    ]
    assert table["projection_errors"].to_pylist() == errors


def test_an_array_or_map_a_revision_adds_is_empty_not_null_in_the_rows_before_it() -> None:
    # Rows stored before a revision added an array were NULL there, rows after it of a
    # revision without it []: `IS NULL` filters counted them apart (27 against 94).
    first = (
        Field(name="name", type=Type.STRING),
        Field(name="customer", type=Type.RECORD, fields=(Field(name="email", type=Type.STRING),)),
    )
    second = avro_fields(
        {
            "type": "record",
            "name": "Order",
            "fields": [
                {"name": "name", "type": "string"},
                {"name": "tags", "type": {"type": "array", "items": "string"}},
                {"name": "prices", "type": {"type": "map", "values": "long"}},
                {
                    "name": "customer",
                    "type": [
                        "null",
                        {
                            "type": "record",
                            "name": "Customer",
                            "fields": [
                                {"name": "email", "type": "string"},
                                {"name": "phones", "type": {"type": "array", "items": "string"}},
                            ],
                        },
                    ],
                },
            ],
        }
    )
    revisions = Revisions()
    revisions.learn("s@1", first)
    revisions.learn("s@2", second)

    def record(message_id: str, schema: str, data: dict[str, Any]) -> Record:
        return Record(
            message_id=message_id,
            publish_time=1,
            ingest_time=2,
            id=message_id,
            data=json.dumps(data),
            schema=schema,
        )

    with duckdb.connect(":memory:") as con:
        con.execute("CREATE TABLE records (message_id VARCHAR)")
        typed = TypedColumns(revisions)
        typed.open(con)

        def store(*records: Record) -> None:
            projected = typed.arrow(con, records)
            assert projected is not None
            con.register("projected", projected)
            con.execute("INSERT INTO records SELECT message_id FROM projected")
            con.unregister("projected")
            typed.insert(con, projected)

        store(
            record("before", "s@1", {"name": "a", "customer": {"email": "e"}}),
            record("no-customer", "s@1", {"name": "b"}),
        )
        store(record("after", "s@2", {"name": "c", "customer": {"email": "f"}}))
        store(record("after-first", "s@1", {"name": "d", "customer": {"email": "g"}}))
        rows = con.execute(
            "SELECT message_id, fields.tags, fields.prices, fields.customer.phones "
            "FROM records_typed ORDER BY message_id"
        ).fetchall()
    assert rows == [
        ("after", [], [], []),
        ("after-first", [], [], []),
        ("before", [], [], []),
        # No customer: the record holding `phones` is NULL, before the revision and after.
        ("no-customer", [], [], None),
    ]


def test_a_revision_that_adds_no_array_widens_the_table_by_a_cast_keeping_every_value() -> None:
    # DuckDB casts a STRUCT by its fields' names: fields added anywhere, at any depth,
    # are NULL in the rows before them and every stored value stays where it was. The
    # change is one cast (no CASE and struct_pack at every level: those, for a thousand
    # fields nested three deep, took DuckDB 27 s to plan while every read waited).
    def nested(*names: str) -> Field:
        return Field(
            name="customer",
            type=Type.RECORD,
            fields=tuple(Field(name=n, type=Type.STRING) for n in names),
        )

    first = (Field(name="name", type=Type.STRING), nested("email", "zip"))
    second = (
        Field(name="added", type=Type.INT64),
        Field(name="name", type=Type.STRING),
        nested("city", "email", "zip"),
        Field(name="later", type=Type.RECORD, fields=(Field(name="x", type=Type.BOOL),)),
    )
    old, new = _fields_type(first), _fields_type(second)
    assert _widened("fields", new, old) == f"fields::{sql_type(new)}"
    # What the cast rests on, whatever order a merge gives: by name, not by position.
    by_name = "SELECT {'b': 1, 'c': 'x'}::STRUCT(a INT, c VARCHAR, b INT)"
    assert duckdb.sql(by_name).fetchall() == [({"a": None, "c": "x", "b": 1},)]
    revisions = Revisions()
    revisions.learn("s@1", first)
    revisions.learn("s@2", second)
    stored = Record(
        message_id="m",
        publish_time=1,
        ingest_time=2,
        id="m",
        data=json.dumps({"name": "a", "customer": {"email": "e", "zip": "z"}}),
        schema="s@1",
    )
    later = msgspec.structs.replace(
        stored, message_id="n", schema="s@2", data=json.dumps({"name": "b", "added": 7})
    )
    with duckdb.connect(":memory:") as con:
        con.execute("CREATE TABLE records (message_id VARCHAR)")
        typed = TypedColumns(revisions)
        typed.open(con)
        for record in (stored, later):
            projected = typed.arrow(con, [record])
            assert projected is not None
            typed.insert(con, projected)
        rows = con.execute(
            "SELECT f.message_id, f.fields FROM record_fields f ORDER BY f.message_id"
        ).fetchall()
    assert rows == [
        (
            "m",
            {
                "added": None,
                "name": "a",
                "customer": {"city": None, "email": "e", "zip": "z"},
                "later": None,
            },
        ),
        ("n", {"added": 7, "name": "b", "customer": None, "later": None}),
    ]


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        ("-0.000000000001", "-0.000000000001"),
        ("1E+3", "1000"),
        (1e-7, "0.0000001"),
        ("12345678901234567890123456789012345678.5", "12345678901234567890123456789012345678.5"),
    ],
)
def test_a_bignumeric_is_kept_as_positional_text(payload: Any, text: str) -> None:
    # Its DuckDB text was `-1E-12` (scientific), where BigQuery's is positional.
    field = Field(name="n", type=Type.BIGNUMERIC)
    projected = project_stored(json.dumps({"n": payload}), (field,), "s@1")
    assert not projected.errors
    kind = Field(name="fields", type=Type.RECORD, fields=(field,))
    assert _for_arrow(projected.values, kind) == {"n": text}


async def test_a_revision_that_would_take_the_table_past_duckdb_s_cap_has_no_typed_columns(
    tmp_path: Path,
) -> None:
    path = tmp_path / "wide.duckdb"
    revisions = Revisions()
    wide = tuple(Field(name=f"f{i}", type=Type.INT64) for i in range(DUCKDB_MAX_FIELDS + 1))
    revisions.learn("s@wide", wide)
    revisions.learn("s@small", (Field(name="amount", type=Type.INT64),))
    store = DuckDBStore(str(path), revisions=revisions)
    await store.start()
    try:
        for n, schema in enumerate(("s@wide", "s@small")):
            record = Record(
                message_id=f"m-{n}",
                publish_time=1,
                ingest_time=2 + n,
                id=f"r-{n}",
                data='{"amount": 3, "f1": 4}',
                schema=schema,
            )
            assert await store.append([record]) == [None]
        await store.barrier()
    finally:
        await store.close()
    rows = _query(path, "SELECT id, fields, projection_errors FROM records_typed ORDER BY id")
    (_, _, errors), (_, fields, small_errors) = rows
    (error,) = errors
    assert error["field"] == "$"
    assert "the table would have 1,001 typed fields, more than the 1,000" in error["reason"]
    assert fields == {"amount": 3}
    assert [e["field"] for e in small_errors] == ["f1"]  # the wide revision's: no column
    assert _query(path, "SELECT schema FROM typed_revisions") == [("s@small",)]
