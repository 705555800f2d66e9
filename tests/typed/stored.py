"""Payloads as the push path stores them: encoded by the publisher, decoded by the
revision's codec, written as JSON (`data`) and read back."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import msgspec

from app.ingest.avro import AvroCodec
from app.ingest.protobuf import ProtobufCodec


def avro_stored(schema: dict[str, Any], datum: dict[str, Any]) -> Any:
    """`datum` written in Avro's binary encoding, decoded and stored as the service does."""
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), datum)
    decoded = AvroCodec(json.dumps(schema)).binary(out.getvalue())
    return msgspec.json.decode(msgspec.json.encode(decoded))


def protobuf_stored(codec: ProtobufCodec, message_json: dict[str, Any]) -> Any:
    """A message given in the proto3 JSON mapping, decoded and stored as the service does."""
    decoded = codec.json(json.dumps(message_json).encode())
    return msgspec.json.decode(msgspec.json.encode(decoded))
