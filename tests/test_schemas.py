"""Topic schemas and the publisher's own shape, through the push route.

The Schema API is the in-process fake (tests/fake_schema_api.py) reached by
the service's real client through PUBSUB_EMULATOR_HOST: the emulator refuses
Protocol Buffer schemas, and these tests need the API down on cue. The Avro
path through the emulator itself is in tests/e2e/test_schemas_emulator.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import fastavro
import grpc
import httpx
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

from app.asgi import create_app
from app.commands.replay import Service, replay_rejected
from app.errors import SchemaUnavailable
from app.ingest.protobuf import compile_proto
from app.ingest.schemas import SchemaNotFound, SchemaRevision, Schemas
from app.records import Record, Rejection
from app.store.duckdb.sql import ddl
from app.store.duckdb.store import DuckDBStore
from recordline_dev.client import EXAMPLE_SCHEMAS, SchemaMismatch, TopicSchema, generated_values
from tests.conftest import envelope, served, settings
from tests.fake_schema_api import FakeSchemaApi
from tests.fakes import FaultyStore

SCHEMA = "projects/shop/schemas/orders"
ORDERS_AVRO = {
    "type": "record",
    "name": "Order",
    "fields": [
        {"name": "order_id", "type": "string"},
        {
            "name": "meta",
            "type": {
                "type": "record",
                "name": "Meta",
                "fields": [
                    {
                        "name": "created_at",
                        "type": {"type": "long", "logicalType": "timestamp-micros"},
                    },
                    {"name": "source", "type": "string"},
                ],
            },
        },
        {"name": "amount", "type": "double"},
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
}
ORDER = {
    "order_id": "o-1",
    "meta": {"created_at": datetime(2024, 4, 27, 12, 0, 0, 123456, tzinfo=UTC), "source": "web"},
    "amount": 12.5,
    "note": "gift",
}
# As the stored `data` shows it: the decoded payload, as JSON.
ORDER_DATA = {
    "order_id": "o-1",
    "meta": {"created_at": "2024-04-27T12:00:00.123456Z", "source": "web"},
    "amount": 12.5,
    "note": "gift",
}
MAPPING = {"RECORDLINE_ID_FIELD": "order_id", "RECORDLINE_TIME_FIELD": "meta.created_at"}

# With the well-known Timestamp imported, as protoc-generated publishers write it.
ORDERS_PROTO = """
syntax = "proto3";
package shop;
import "google/protobuf/timestamp.proto";
message Order {
  string order_id = 1;
  message Meta {
    google.protobuf.Timestamp created_at = 1;
    string source = 2;
    int64 quantity = 3;
  }
  Meta meta = 2;
  repeated string tags = 3;
}
"""
# Self-contained, as Pub/Sub schemas must be: the Timestamp is defined in place.
SELF_CONTAINED_PROTO = """
syntax = "proto2";
message Event {
  message Timestamp {
    optional int64 seconds = 1;
    optional int32 nanos = 2;
  }
  required int64 event_id = 1;
  optional Timestamp at = 2;
}
"""


def quiet(line: str) -> None:
    """What a replay says of a message it could not send: unheard here."""


def avro_binary(value: dict[str, Any], schema: dict[str, Any] = ORDERS_AVRO) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), value)
    return out.getvalue()


def avro_json(value: dict[str, Any], schema: dict[str, Any] = ORDERS_AVRO) -> bytes:
    out = io.StringIO()
    fastavro.json_writer(out, fastavro.parse_schema(schema), [value])
    return out.getvalue().strip().encode()


def message_class(definition: str) -> type[Message]:
    """What a publisher's protoc-generated code would be, from the same .proto."""
    pool = descriptor_pool.DescriptorPool()
    files = compile_proto(definition).file
    for file in files:
        pool.Add(file)
    (top,) = pool.FindFileByName(files[-1].name).message_types_by_name.values()
    cls: type[Message] = message_factory.GetMessageClass(top)
    return cls


def schema_attributes(revision: str, encoding: str, name: str = SCHEMA) -> dict[str, str]:
    return {
        "googclient_schemaname": name,
        "googclient_schemarevisionid": revision,
        "googclient_schemaencoding": encoding,
    }


def pushed(data: bytes, message_id: str, attributes: dict[str, str]) -> dict[str, Any]:
    return envelope(None, message_id=message_id, attributes=attributes, raw_data=data)


@asynccontextmanager
async def service(
    api: FakeSchemaApi, store: Any = None, **env: str
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        settings(PUBSUB_EMULATOR_HOST=api.address, **env),
        store=store if store is not None else FaultyStore(DuckDBStore(":memory:")),
    )
    async with served(app) as http:
        yield http


@pytest.mark.parametrize("encoding", ["BINARY", "JSON"])
async def test_avro_is_decoded_with_the_named_revision(
    schema_api: FakeSchemaApi, encoding: str
) -> None:
    schema_api.add(SCHEMA, "a1", "AVRO", json.dumps(ORDERS_AVRO))
    data = avro_binary(ORDER) if encoding == "BINARY" else avro_json(ORDER)
    async with service(schema_api, **MAPPING) as http:
        response = await http.post(
            "/pubsub/push", json=pushed(data, "m-1", schema_attributes("a1", encoding))
        )
        assert response.status_code == 204
        record = (await http.get("/v1/records/o-1")).json()
    assert record["timestamp"] == "2024-04-27T12:00:00.123456Z"
    assert record["data"] == ORDER_DATA
    assert record["schema"] == f"{SCHEMA}@a1"


@pytest.mark.slow
async def test_two_revisions_side_by_side_each_decode_with_their_own(
    schema_api: FakeSchemaApi,
) -> None:
    newer = {
        **ORDERS_AVRO,
        "fields": [
            *ORDERS_AVRO["fields"],
            {"name": "currency", "type": "string", "default": "EUR"},
        ],
    }
    schema_api.add(SCHEMA, "old", "AVRO", json.dumps(ORDERS_AVRO))
    schema_api.add(SCHEMA, "new", "AVRO", json.dumps(newer))
    async with service(schema_api, **MAPPING) as http:
        for n in range(3):  # interleaved, each revision more than once
            for revision, schema, extra in (
                ("old", ORDERS_AVRO, {}),
                ("new", newer, {"currency": "USD"}),
            ):
                value = {**ORDER, "order_id": f"{revision}-{n}", **extra}
                body = pushed(
                    avro_binary(value, schema),
                    f"{revision}-{n}",
                    schema_attributes(revision, "BINARY"),
                )
                assert (await http.post("/pubsub/push", json=body)).status_code == 204
        old = (await http.get("/v1/records/old-2")).json()
        new = (await http.get("/v1/records/new-2")).json()
    assert old["schema"] == f"{SCHEMA}@old"
    assert "currency" not in old["data"]
    assert new["schema"] == f"{SCHEMA}@new"
    assert new["data"]["currency"] == "USD"
    # Each revision was fetched once, however many messages named it.
    assert sorted(schema_api.calls) == [f"{SCHEMA}@new", f"{SCHEMA}@old"]


@pytest.mark.parametrize("encoding", ["BINARY", "JSON"])
async def test_protocol_buffers_are_decoded_with_the_named_revision(
    schema_api: FakeSchemaApi, encoding: str
) -> None:
    schema_api.add(SCHEMA, "p1", "PROTOCOL_BUFFER", ORDERS_PROTO)
    order = message_class(ORDERS_PROTO)(order_id="o-1", tags=["a", "b"])
    order.meta.source = "web"  # type: ignore[attr-defined]
    order.meta.quantity = 3  # type: ignore[attr-defined]
    order.meta.created_at.FromJsonString("2024-04-27T12:00:00.123456Z")  # type: ignore[attr-defined]
    if encoding == "BINARY":
        data = order.SerializeToString()
    else:
        data = json_format.MessageToJson(order).encode()
    async with service(schema_api, **MAPPING) as http:
        response = await http.post(
            "/pubsub/push", json=pushed(data, "m-1", schema_attributes("p1", encoding))
        )
        assert response.status_code == 204
        record = (await http.get("/v1/records/o-1")).json()
    assert record["timestamp"] == "2024-04-27T12:00:00.123456Z"
    assert record["schema"] == f"{SCHEMA}@p1"
    # The proto3 JSON mapping, field names as in the .proto (int64 as digits).
    assert record["data"] == {
        "order_id": "o-1",
        "meta": {"created_at": "2024-04-27T12:00:00.123456Z", "source": "web", "quantity": "3"},
        "tags": ["a", "b"],
    }


@pytest.mark.slow
async def test_a_self_contained_protobuf_timestamp_and_an_integer_id(
    schema_api: FakeSchemaApi,
) -> None:
    schema_api.add(SCHEMA, "p2", "PROTOCOL_BUFFER", SELF_CONTAINED_PROTO)
    event = message_class(SELF_CONTAINED_PROTO)(event_id=42)
    event.at.seconds = 1714219200  # type: ignore[attr-defined]
    event.at.nanos = 5_000  # type: ignore[attr-defined]
    async with service(
        schema_api, RECORDLINE_ID_FIELD="event_id", RECORDLINE_TIME_FIELD="at"
    ) as http:
        body = pushed(event.SerializeToString(), "m-1", schema_attributes("p2", "BINARY"))
        assert (await http.post("/pubsub/push", json=body)).status_code == 204
        record = (await http.get("/v1/records/42")).json()
    assert record["timestamp"] == "2024-04-27T12:00:00.000005Z"
    assert record["data"] == {"event_id": "42", "at": {"seconds": "1714219200", "nanos": 5000}}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "definition", "encoding", "data"),
    [
        ("AVRO", json.dumps(ORDERS_AVRO), "BINARY", b"\xff\x00 not avro"),
        ("AVRO", json.dumps(ORDERS_AVRO), "BINARY", avro_binary(ORDER) + b"\x00"),
        ("AVRO", json.dumps(ORDERS_AVRO), "JSON", b'{"order_id": 5}'),
        ("AVRO", json.dumps(ORDERS_AVRO), "JSON", b"\xff not json"),
        ("PROTOCOL_BUFFER", ORDERS_PROTO, "BINARY", b"\xff\xff\xff"),
        ("PROTOCOL_BUFFER", ORDERS_PROTO, "JSON", b'{"order_id": 5, "no_such_field": 1}'),
    ],
)
async def test_bytes_that_do_not_decode_are_a_rejection_naming_the_revision(
    schema_api: FakeSchemaApi, kind: str, definition: str, encoding: str, data: bytes
) -> None:
    schema_api.add(SCHEMA, "r7", kind, definition)
    async with service(schema_api, **MAPPING) as http:
        response = await http.post(
            "/pubsub/push", json=pushed(data, "m-bad", schema_attributes("r7", encoding))
        )
        assert response.status_code == 204  # stored as a rejection, never a 500
        status = (await http.get("/v1/messages/m-bad")).json()
        (rejection,) = (
            await http.get("/v1/rejections", params={"since": "2000-01-01T00:00:00Z"})
        ).json()["rejections"]
    assert status["status"] == "rejected"
    assert f"{SCHEMA}@r7 ({encoding})" in status["reason"]
    assert rejection["schema"] == f"{SCHEMA}@r7"
    assert base64.b64decode(rejection["data"]) == data  # the bytes, kept for replay
    assert rejection["attributes"]["googclient_schemarevisionid"] == "r7"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("json_text", "reason"),
    [
        # fastavro's JSON reader passes a wrong type through: it was stored.
        (
            '{"order_id": "o-1", "meta": {"created_at": "soon", "source": "web"}, '
            '"amount": 1.0, "note": null}',
            "`$.meta.created_at`: expected long, got text",
        ),
        (
            '{"order_id": "o-1", "meta": {"created_at": 1, "source": "web"}, "amount": "1"}',
            "`$.amount`: expected double, got text",
        ),
        # It failed without naming the field ("no value and no default").
        (
            '{"order_id": "o-1", "amount": 1.0}',
            "`$.meta`: missing, and the schema gives it no default",
        ),
        (
            '{"order_id": "o-1", "meta": {"created_at": 1, "source": "web"}, "amount": 1.0, '
            '"note": "bare"}',
            "`$.note`: a union value is an object naming its branch (string), got text",
        ),
    ],
)
async def test_avro_json_that_does_not_fit_the_revision_is_a_rejection_naming_the_field(
    schema_api: FakeSchemaApi, json_text: str, reason: str
) -> None:
    schema_api.add(SCHEMA, "a1", "AVRO", json.dumps(ORDERS_AVRO))
    async with service(schema_api, **MAPPING) as http:
        body = pushed(json_text.encode(), "m-1", schema_attributes("a1", "JSON"))
        assert (await http.post("/pubsub/push", json=body)).status_code == 204
        status = (await http.get("/v1/messages/m-1")).json()
    assert status["status"] == "rejected"
    assert reason in status["reason"]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (
            {"meta": {"created_at": 1, "source": "x"}},
            "`$.order_id` (the record id, RECORDLINE_ID_FIELD): missing",
        ),
        (
            {"order_id": [1], "meta": {}},
            "`$.order_id` (the record id, RECORDLINE_ID_FIELD): expected text or an integer, "
            "got an array",
        ),
        (
            {"order_id": "o", "meta": "x"},
            "`$.meta.created_at` (the event time, RECORDLINE_TIME_FIELD): "
            "`$.meta` is text, not an object",
        ),
        (
            {"order_id": "o", "meta": {"created_at": "yesterday"}},
            "not an RFC 3339 time with an offset (9 characters)",
        ),
        (
            {"order_id": "o", "meta": {"created_at": "2024-04-27T12:00:00"}},
            "not an RFC 3339 time with an offset",
        ),
        (
            {"order_id": "o", "meta": {"created_at": 1714219200}},
            "expected RFC 3339 text, an Avro timestamp or a protobuf Timestamp, got a number",
        ),
    ],
)
async def test_a_payload_that_does_not_fit_the_mapping_is_rejected_with_the_rule(
    schema_api: FakeSchemaApi, payload: dict[str, Any], reason: str
) -> None:
    async with service(schema_api, **MAPPING) as http:
        body = envelope(payload, message_id="m-1")
        assert (await http.post("/pubsub/push", json=body)).status_code == 204
        status = (await http.get("/v1/messages/m-1")).json()
    assert status["status"] == "rejected"
    assert status["reason"].startswith("payload: `$.")
    assert reason in status["reason"]


async def test_the_publishers_own_json_shape_is_stored_whole_and_exactly(
    schema_api: FakeSchemaApi,
) -> None:
    text = b'{"order_id": 7, "meta": {"created_at": "2024-04-27T14:00:00+02:00"},  "x": [1.50]}'
    async with service(schema_api, **MAPPING) as http:
        body = pushed(text, "m-1", {"origin": "shop"})
        assert (await http.post("/pubsub/push", json=body)).status_code == 204
        record = (await http.get("/v1/records/7")).json()
        raw = (await http.get("/v1/records/7")).text
    assert record["timestamp"] == "2024-04-27T12:00:00Z"
    assert record["schema"] is None
    # The whole payload, as the exact text sent (spacing and 1.50 included).
    assert (
        '"data":{"order_id": 7, "meta": {"created_at": "2024-04-27T14:00:00+02:00"},  "x": [1.50]}'
        in raw
    )


async def test_an_unknown_revision_while_the_schema_api_is_down_is_503_and_nothing_is_stored(
    schema_api: FakeSchemaApi,
) -> None:
    schema_api.add(SCHEMA, "a1", "AVRO", json.dumps(ORDERS_AVRO))
    store = FaultyStore(DuckDBStore(":memory:"))
    body = pushed(avro_binary(ORDER), "m-1", schema_attributes("a1", "BINARY"))
    async with service(schema_api, store, **MAPPING) as http:
        schema_api.failing = grpc.StatusCode.UNAVAILABLE
        response = await http.post("/pubsub/push", json=body)
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert response.json()["type"].endswith("/problems/schema-unavailable")
        assert (await http.get("/v1/messages/m-1")).status_code == 404
        assert store.appends == []  # nothing reached the store: nothing to acknowledge
        # Ready all the same: the revision is the sender's to name, and no sender may
        # take the service out of its load balancer. The warning says which and why.
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        (warning,) = ready.json()["warnings"]
        assert f"{SCHEMA}@a1" in warning
        assert "UNAVAILABLE" in warning

        schema_api.failing = None
        # Pub/Sub's redelivery is stored, and the warning goes with the failure.
        assert (await http.post("/pubsub/push", json=body)).status_code == 204
        assert (await http.get("/v1/records/o-1")).json()["schema"] == f"{SCHEMA}@a1"
        assert (await http.get("/readyz")).json() == {"status": "ready"}


@pytest.mark.slow
async def test_a_revision_the_schema_api_does_not_have_is_a_rejection_not_a_retry(
    schema_api: FakeSchemaApi,
) -> None:
    async with service(schema_api, **MAPPING) as http:
        body = pushed(avro_binary(ORDER), "m-1", schema_attributes("gone", "BINARY"))
        assert (await http.post("/pubsub/push", json=body)).status_code == 204
        status = (await http.get("/v1/messages/m-1")).json()
        assert (await http.get("/readyz")).status_code == 200
    assert status["status"] == "rejected"
    assert f"{SCHEMA}@gone" in status["reason"]
    assert "no such revision" in status["reason"]


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        (
            schema_attributes("a1", "XML"),
            "googclient_schemaencoding 'XML' is neither JSON nor BINARY",
        ),
        (
            schema_attributes("a1", "BINARY", name="orders"),
            "googclient_schemaname 'orders' is not projects/P/schemas/S",
        ),
    ],
)
async def test_schema_attributes_that_make_no_sense_are_a_rejection(
    schema_api: FakeSchemaApi, attributes: dict[str, str], reason: str
) -> None:
    async with service(schema_api) as http:
        body = pushed(b"whatever", "m-1", attributes)
        assert (await http.post("/pubsub/push", json=body)).status_code == 204
        status = (await http.get("/v1/messages/m-1")).json()
    assert reason in status["reason"]
    assert schema_api.calls == []


@pytest.mark.slow
async def test_replay_rejected_decodes_again_with_todays_mapping(
    schema_api: FakeSchemaApi, tmp_path: Path
) -> None:
    """Rejected under a wrong mapping; replayed with the right one, end to end."""
    schema_api.add(SCHEMA, "a1", "AVRO", json.dumps(ORDERS_AVRO))
    path = tmp_path / "records.duckdb"
    body = pushed(avro_binary(ORDER), "m-1", schema_attributes("a1", "BINARY"))
    async with service(schema_api, DuckDBStore(str(path)), RECORDLINE_ID_FIELD="id") as http:
        assert (await http.post("/pubsub/push", json=body)).status_code == 204
        assert (await http.get("/v1/messages/m-1")).json()["status"] == "rejected"
    async with service(schema_api, DuckDBStore(str(path)), **MAPPING) as http:
        url = str(http.base_url).rstrip("/")
        replayer = Service(url)
        try:
            counts = await _in_thread(
                replay_rejected,
                replayer,
                since=None,
                until=None,
                reason_contains=None,
                dry_run=False,
                say=quiet,
            )
        finally:
            replayer.close()
        record = (await http.get("/v1/records/o-1")).json()
    assert counts["stored"] == 1
    assert record["message_id"] == "m-1"
    assert record["schema"] == f"{SCHEMA}@a1"
    assert record["data"] == ORDER_DATA


async def _in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


@pytest.mark.slow
async def test_an_existing_duckdb_file_gets_the_schema_column(
    schema_api: FakeSchemaApi, tmp_path: Path
) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    # The tables as an earlier version made them: no `schema` column.
    for table, row_type in (("records", Record), ("rejected", Rejection)):
        old = ddl(table, row_type).replace(",\n  schema VARCHAR", "")
        assert "schema" not in old
        con.execute(old)
    con.execute(
        "INSERT INTO records VALUES "
        "('old-1', now(), now(), 'r-old', NULL, '\"x\"', '{}', NULL, NULL, NULL)"
    )
    con.close()
    schema_api.add(SCHEMA, "a1", "AVRO", json.dumps(ORDERS_AVRO))
    async with service(schema_api, DuckDBStore(str(path)), **MAPPING) as http:
        body = pushed(avro_binary(ORDER), "m-1", schema_attributes("a1", "BINARY"))
        assert (await http.post("/pubsub/push", json=body)).status_code == 204
        old_record = (await http.get("/v1/records/r-old")).json()
        new_record = (await http.get("/v1/records/o-1")).json()
    assert old_record["schema"] is None
    assert new_record["schema"] == f"{SCHEMA}@a1"


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["BINARY", "JSON"])
@pytest.mark.parametrize(
    ("example", "kind"), [("record.avsc", "AVRO"), ("record.proto", "PROTOCOL_BUFFER")]
)
async def test_what_recordline_publish_encodes_the_service_decodes(
    schema_api: FakeSchemaApi, example: str, kind: str, encoding: str
) -> None:
    """`recordline publish --schema` and the default mapping: the example schemas
    carry the contract's fields, so the id and event time are found as before."""
    schema = TopicSchema(EXAMPLE_SCHEMAS / example, encoding)
    schema_api.add(SCHEMA, "x1", kind, schema.definition)
    (value,) = generated_values(1, first=9)
    async with service(schema_api) as http:
        body = pushed(schema.encode(value), "m-1", schema_attributes("x1", encoding))
        assert (await http.post("/pubsub/push", json=body)).status_code == 204
        record = (await http.get("/v1/records/9")).json()
    assert datetime.fromisoformat(record["timestamp"]) == value["timestamp"]
    assert record["schema"] == f"{SCHEMA}@x1"
    assert record["data"]["data"] == {"n": 9 if kind == "AVRO" else "9", "text": "Ejemplo de datos"}


@pytest.mark.parametrize("encoding", ["BINARY", "JSON"])
def test_publishing_a_file_names_every_line_that_does_not_fit(
    tmp_path: Path, encoding: str
) -> None:
    path = tmp_path / "orders.avsc"
    path.write_text(json.dumps(ORDERS_AVRO))
    schema = TopicSchema(path, encoding)
    good = avro_json(ORDER)
    lines = [
        (1, good),
        (3, b'{"order_id": "o-2", "amount": 1.0}'),
        (4, good),
        (7, good.replace(b'"amount": 12.5', b'"amount": "lots"')),
    ]
    with pytest.raises(SchemaMismatch) as refused:
        schema.encode_lines(lines)
    said = str(refused.value)
    assert "2 records do not fit, nothing was published" in said
    assert "line 3 " in said
    assert "`$.meta`: missing" in said
    assert "line 7 " in said
    assert "`$.amount`: expected double" in said
    encoded = schema.encode_lines([lines[0], lines[2]])
    assert len(encoded) == 2


class DownSchemaApi:
    """A Schema API that does not answer."""

    async def revision(self, name: str, revision_id: str) -> SchemaRevision:
        raise SchemaUnavailable("UNAVAILABLE: the Schema API is down")

    async def close(self) -> None:
        return None


async def test_a_revision_that_cannot_be_fetched_is_a_warning_that_expires() -> None:
    now = [0.0]
    schemas = Schemas(DownSchemaApi(), timeout=1.0, clock=lambda: now[0])
    for n in range(3):
        with pytest.raises(SchemaUnavailable):
            await schemas.decoder("projects/p/schemas/s", f"made-up-{n}")
    warnings = schemas.warnings()
    assert len(warnings) == 3
    assert "projects/p/schemas/s@made-up-0" in warnings[0]
    assert "600 s more" in warnings[0]
    now[0] = 599.0
    with pytest.raises(SchemaUnavailable):  # named again: said anew
        await schemas.decoder("projects/p/schemas/s", "made-up-1")
    now[0] = 600.0
    (left,) = schemas.warnings()
    assert "made-up-1" in left
    assert "599 s more" in left
    now[0] = 1200.0
    assert schemas.warnings() == []


class NoSuchRevisions:
    """A Schema API that has none of the revisions asked for."""

    async def revision(self, name: str, revision_id: str) -> SchemaRevision:
        raise SchemaNotFound(f"{name}@{revision_id}")

    async def close(self) -> None:
        return None


@pytest.mark.slow
async def test_made_up_revisions_leave_memory_bounded() -> None:
    # A sender may name any revision: each not-found answer is kept a minute,
    # so a flood of made-up ones must not grow memory without end.
    schemas = Schemas(NoSuchRevisions(), timeout=1.0)

    async def name(count: int, start: int) -> None:
        for n in range(start, start + count):
            decoder = await schemas.decoder("projects/p/schemas/s", f"made-up-{n}")
            assert decoder.problem is not None

    tracemalloc.start()
    try:
        await name(5_000, 0)
        before = tracemalloc.get_traced_memory()[0]
        await name(10_000, 5_000)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Each kept decoder is ~0.5 KB: 10,000 more kept would be ~5 MB.
    assert grown < 250_000, f"{grown} bytes more after 10,000 more made-up revisions"
