"""Revisions a hostile publisher may commit, pushed through the service on DuckDB with
the fake Schema API: a few hundred bytes that name hundreds of thousands of fields,
records nested hundreds deep, names no column can have. Each costs the service work
in proportion to its caps, never to what it expands to; its messages are stored
(with a projection error naming the cap) or rejected with a reason, never a 5xx; the
Schema API is asked for it once; and other revisions' pushes go on as before."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import duckdb
import fastavro
import httpx
import pytest

from app.asgi import create_app, fetching_schemas, store_revisions
from app.ingest.schemas import Decoder, SchemaRevision, decoder_of
from app.store.duckdb.store import DuckDBStore
from app.typed.revisions import DeclaredSchemaError, Revisions
from tests.conftest import envelope, served, settings
from tests.fake_schema_api import FakeSchemaApi
from tests.typed.bombs import avro_bomb, proto_bomb

SCHEMA = "projects/shop/schemas/orders"
GOOD = {
    "type": "record",
    "name": "Order",
    "fields": [{"name": "order_id", "type": "string"}, {"name": "amount", "type": "long"}],
}
MAPPING = {"RECORDLINE_ID_FIELD": "order_id", "RECORDLINE_TIME_FIELD": "no_such_field"}
# Long enough for any push here; the unbounded mapping took minutes (an ALTER of
# 393,214 fields), and a test that waits on it fails here instead.
PUSH_SECONDS = 30.0


def _avro(schema: Any, value: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), value)
    return out.getvalue()


def _push(revision: str, n: int, data: bytes, encoding: str = "BINARY") -> dict[str, Any]:
    attributes = {
        "googclient_schemaname": SCHEMA,
        "googclient_schemarevisionid": revision,
        "googclient_schemaencoding": encoding,
    }
    return envelope(None, message_id=f"m-{n}", attributes=attributes, raw_data=data)


@asynccontextmanager
async def service(api: FakeSchemaApi, path: Path) -> AsyncIterator[httpx.AsyncClient]:
    configured = settings(PUBSUB_EMULATOR_HOST=api.address, **MAPPING)
    schemas = fetching_schemas(configured)
    store = DuckDBStore(str(path), revisions=store_revisions(schemas))
    app = create_app(configured, store=store, schemas=schemas)
    async with served(app) as http:
        yield http


def _query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(path)) as con:
        return con.execute(sql).fetchall()


async def _answered(http: httpx.AsyncClient, body: dict[str, Any]) -> float:
    """Seconds the push took; it must be answered 204."""
    started = time.monotonic()
    async with asyncio.timeout(PUSH_SECONDS):
        response = await http.post("/pubsub/push", json=body)
    assert response.status_code == 204, response.text
    return time.monotonic() - started


async def _good(http: httpx.AsyncClient, n: int) -> None:
    await _answered(http, _push("good", n, _avro(GOOD, {"order_id": f"o-{n}", "amount": n})))
    assert (await http.get(f"/v1/records/o-{n}")).status_code == 200


def _with_id(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "fields": [{"name": "order_id", "type": "string"}, *schema["fields"]]}


# (revision type, definition, a message of it, the cap it passes)
BOMBS = {
    "avro, 17 levels of two": (
        "AVRO",
        json.dumps(_with_id(avro_bomb(17, 2))),
        {"order_id": "o-bomb", "f0": None, "f1": None},
        "levels deep",
    ),
    # fastavro's JSON reader expanded the revision for each message (2**17 records).
    "avro, 17 levels of two, in JSON": (
        "AVRO-JSON",
        json.dumps(_with_id(avro_bomb(17, 2))),
        {"order_id": "o-bomb", "f0": None, "f1": None},
        "levels deep",
    ),
    "avro, 8 levels of four": (
        "AVRO",
        json.dumps(_with_id(avro_bomb(8, 4))),
        {"order_id": "o-bomb", "f0": None, "f1": None, "f2": None, "f3": None},
        "typed fields",
    ),
    "proto, 16 levels of two": (
        "PROTOCOL_BUFFER",
        proto_bomb(16, 2).replace("M15 f1 = 2;", "M15 f1 = 2; string order_id = 3;", 1),
        {"order_id": "o-bomb"},
        "levels deep",
    ),
    "proto, 8 levels of four": (
        "PROTOCOL_BUFFER",
        proto_bomb(8, 4).replace("M7 f3 = 4;", "M7 f3 = 4; string order_id = 5;", 1),
        {"order_id": "o-bomb"},
        "typed fields",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("bomb", list(BOMBS))
async def test_a_revision_past_a_cap_is_stored_without_typed_columns_and_others_go_on(
    schema_api: FakeSchemaApi, tmp_path: Path, bomb: str
) -> None:
    kind, definition, message, cap = BOMBS[bomb]
    assert len(definition) < 4_000
    schema_api.add(SCHEMA, "good", "AVRO", json.dumps(GOOD))
    schema_api.add(SCHEMA, "bomb", kind.removesuffix("-JSON"), definition)
    if kind == "AVRO":
        data, encoding = _avro(json.loads(definition), message), "BINARY"
    else:  # Avro's JSON encoding (a null union is null), or the proto3 JSON mapping
        data, encoding = json.dumps(message).encode(), "JSON"
    path = tmp_path / "bomb.duckdb"
    async with service(schema_api, path) as http:
        await _good(http, 1)
        for n in (2, 4):
            await _answered(http, _push("bomb", n, data, encoding))
            await _good(http, n + 1)
        stored = (await http.get("/v1/records/o-bomb")).json()
        assert (await http.get("/readyz")).status_code == 200
    assert stored["data"]["order_id"] == "o-bomb"
    # Each revision was asked for once, however many messages named it.
    assert sorted(schema_api.calls) == [f"{SCHEMA}@bomb", f"{SCHEMA}@good"]
    rows = _query(
        path, "SELECT message_id, fields, projection_errors FROM records_typed ORDER BY message_id"
    )
    by_message = {m: (fields, errors) for m, fields, errors in rows}
    for n in (1, 3, 5):
        fields, errors = by_message[f"m-{n}"]
        assert (fields, errors) == ({"order_id": f"o-{n}", "amount": n}, [])
    for n in (2, 4):
        fields, errors = by_message[f"m-{n}"]
        assert not any((fields or {}).values())
        (error,) = errors
        assert (error["field"], error["revision"]) == ("$", f"{SCHEMA}@bomb")
        assert error["reason"].startswith("no typed columns: the revision ")
        assert cap in error["reason"]
    assert _query(path, "SELECT schema FROM typed_revisions") == [(f"{SCHEMA}@good",)]


def _nested_definition(depth: int) -> str:
    """A record `depth` records deep, each a record of an optional next one; as text,
    since a JSON encoder would recurse as deep."""
    text = '{"type": "record", "name": "L0", "fields": [{"name": "v", "type": "long"}]}'
    for k in range(1, depth):
        text = (
            f'{{"type": "record", "name": "L{k}", "fields": '
            f'[{{"name": "next", "type": ["null", {text}], "default": null}}]}}'
        )
    return (
        '{"type": "record", "name": "Order", "fields": [{"name": "order_id", "type": "string"}, '
        f'{{"name": "next", "type": ["null", {text}], "default": null}}]}}'
    )


@pytest.mark.slow
async def test_a_revision_nested_200_deep_is_stored_and_one_nested_deeper_than_read_is_rejected(
    schema_api: FakeSchemaApi, tmp_path: Path
) -> None:
    schema_api.add(SCHEMA, "good", "AVRO", json.dumps(GOOD))
    schema_api.add(SCHEMA, "deep", "AVRO", _nested_definition(200))
    schema_api.add(SCHEMA, "deeper", "AVRO", _nested_definition(2_000))
    path = tmp_path / "deep.duckdb"
    message = json.dumps({"order_id": "o-deep", "next": None}).encode()
    async with service(schema_api, path) as http:
        await _answered(http, _push("deep", 1, message, "JSON"))
        for n in (2, 3, 4):  # every redelivery a rejection, the revision asked for once
            await _answered(http, _push("deeper", n, message, "JSON"))
        await _good(http, 5)
        rejected = [(await http.get(f"/v1/messages/m-{n}")).json() for n in (2, 3, 4)]
        assert (await http.get("/readyz")).status_code == 200
    assert sorted(schema_api.calls) == [f"{SCHEMA}@{r}" for r in ("deep", "deeper", "good")]
    for status in rejected:
        assert status["status"] == "rejected"
        assert f"{SCHEMA}@deeper" in status["reason"]
        assert "nested too deeply to read" in status["reason"]
    ((errors,),) = _query(path, "SELECT projection_errors FROM records_typed WHERE id = 'o-deep'")
    assert "more than 14 levels deep" in errors[0]["reason"]


@pytest.mark.slow
async def test_names_a_column_can_have_are_typed_and_others_say_why(
    schema_api: FakeSchemaApi, tmp_path: Path
) -> None:
    schema = {
        "type": "record",
        "name": "Order",
        "fields": [
            {"name": "order_id", "type": "string"},
            {"name": "café", "type": "string"},
            {"name": "_TABLE_suffix", "type": "long"},
        ],
    }
    schema_api.add(SCHEMA, "names", "AVRO", json.dumps(schema))
    path = tmp_path / "names.duckdb"
    value = {"order_id": "o-1", "café": "noir", "_TABLE_suffix": 3}
    async with service(schema_api, path) as http:
        await _answered(http, _push("names", 1, _avro(schema, value)))
        assert (await http.get("/v1/records/o-1")).json()["data"] == value
    ((fields, errors),) = _query(path, "SELECT fields, projection_errors FROM records_typed")
    assert fields == {"order_id": "o-1", "café": "noir"}
    assert [(e["field"], e["reason"]) for e in errors] == [
        (
            "_TABLE_suffix",
            "no typed field can hold it: a name that begins with _TABLE_, which BigQuery reserves",
        )
    ]


def _nested_proto(depth: int) -> str:
    lines = ['syntax = "proto3";', "message Top { string order_id = 1; M1 next = 2; }"]
    lines += [f"message M{k} {{ M{k + 1} next = 1; int64 v = 2; }}" for k in range(1, depth)]
    return "\n".join([*lines, f"message M{depth} {{ int64 v = 1; }}"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "definition"),
    [
        ("AVRO", _nested_definition),
        ("PROTOCOL_BUFFER", _nested_proto),
    ],
)
def test_a_decoder_is_made_of_any_nesting_and_says_what_it_cannot_do(
    kind: str, definition: Any
) -> None:
    """Made in a worker thread, it never raises: 200 records deep decodes with no
    typed columns, 2,000 deep is a decoder that rejects, saying why."""
    name = "projects/p/schemas/s"

    def made(depth: int) -> Decoder:
        text = definition(depth)
        return decoder_of(
            name, SchemaRevision(name=name, revision_id="r", type=kind, definition=text)
        )

    deep = made(200)
    assert deep.codec is not None
    assert deep.unmapped is not None
    assert "more than 14 levels deep" in deep.unmapped
    deeper = made(2_000)
    assert deeper.codec is None
    assert deeper.problem is not None
    assert deeper.problem.endswith("nested too deeply to read")


def test_a_declared_schema_past_a_cap_is_refused_at_start() -> None:
    with pytest.raises(DeclaredSchemaError, match="more than 9,984 typed fields"):
        Revisions().declare(json.dumps(_with_id(avro_bomb(8, 4))))
