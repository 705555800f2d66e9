"""Pushes of the drift matrix's messages, as Pub/Sub delivers them to the service, and
what each should be stored as: the same on every store (tests/typed/test_drift_duckdb.py,
tests/bigquery/test_bigquery_drift.py)."""

from __future__ import annotations

import io
import json
from typing import Any, NamedTuple

import fastavro
import httpx

from app.ingest.protobuf import ProtobufCodec
from tests.conftest import envelope
from tests.typed.stored import avro_stored, protobuf_stored

SCHEMA = "projects/shop/schemas/orders"


class Push(NamedTuple):
    body: dict[str, Any]  # the push envelope
    record_id: str
    payload: Any  # the payload as the service stores it (`data`, decoded)


def order(fields: list[dict[str, Any]]) -> dict[str, Any]:
    """The Avro record schema of a revision with these fields."""
    return {"type": "record", "name": "Order", "fields": fields}


def proto(body: str) -> str:
    """The Protocol Buffers definition of a revision whose `Order` has this body."""
    return f'syntax = "proto3";\nmessage Order {{ {body} }}\n'


def avro_push(
    n: int,
    revision: str,
    fields: list[dict[str, Any]],
    message: dict[str, Any],
    schema: str = SCHEMA,
) -> Push:
    """Message `n` in revision `revision` (of `schema`)'s binary encoding, as its
    publisher's Avro encoder writes it: the revision's fields only."""
    declared = {f["name"] for f in fields}
    datum = {k: v for k, v in message.items() if k in declared}
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(order(fields)), datum)
    attributes = {
        "googclient_schemaname": schema,
        "googclient_schemarevisionid": revision,
        "googclient_schemaencoding": "BINARY",
    }
    body = envelope(None, message_id=f"m-{n}", attributes=attributes, raw_data=out.getvalue())
    return Push(body, message["id"], avro_stored(order(fields), datum))


def protobuf_push(
    n: int, revision: str, definition: str, message: dict[str, Any], schema: str = SCHEMA
) -> Push:
    """Message `n` (given in the proto3 JSON mapping) in revision `revision` (of
    `schema`)'s JSON encoding."""
    attributes = {
        "googclient_schemaname": schema,
        "googclient_schemarevisionid": revision,
        "googclient_schemaencoding": "JSON",
    }
    raw = json.dumps(message).encode()
    body = envelope(None, message_id=f"m-{n}", attributes=attributes, raw_data=raw)
    return Push(body, message["id"], protobuf_stored(ProtobufCodec(definition), message))


def json_push(n: int, message: dict[str, Any]) -> Push:
    """Message `n` on a JSON topic (its declared schema is the service's setting)."""
    data = json.loads(json.dumps(message, default=str))  # as a publisher's JSON
    body = envelope({"id": message["id"], "data": data}, message_id=f"m-{n}")
    return Push(body, message["id"], data)


async def pushed(http: httpx.AsyncClient, push: Push) -> None:
    """Push it once: answered 204 and stored, not rejected."""
    answer = await http.post("/pubsub/push", json=push.body)
    # Stored on the first delivery: a refusal here is a message stuck in redelivery.
    assert answer.status_code == 204, answer.text
    status = (await http.get(f"/v1/messages/{push.body['message']['messageId']}")).json()
    assert status["status"] == "stored", status  # not rejected: nothing lost to the change
    assert status["record"]["id"] == push.record_id
