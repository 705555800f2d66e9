"""Avro topic schemas: a message's data, binary or JSON, decoded by fastavro.

Pub/Sub sends a BINARY message as Avro's binary encoding of one datum, with no
container-file header: fastavro's schemaless reader (compiled, ~5 µs for a
300-byte record). A JSON message is Avro's JSON encoding, where a union value
is wrapped in its branch's name (`{"note": {"string": "hi"}}`, or `null`): the
Pub/Sub emulator refuses a bare `"hi"` there, as the Avro specification does,
and fastavro's JSON reader reads exactly this form. Logical types are applied
(`timestamp-millis`/`-micros` become aware datetimes), so an event time in one
is read as such.
"""

from __future__ import annotations

import io
from typing import Any

import fastavro
import msgspec

from app.ingest.codec import SchemaError
from app.ingest.shape import Invalid


class AvroCodec:
    """Decodes data written with one revision of an Avro schema."""

    def __init__(self, definition: str) -> None:
        try:
            self._schema = fastavro.parse_schema(msgspec.json.decode(definition))
        except (msgspec.DecodeError, ValueError, TypeError, KeyError) as exc:
            # fastavro raises SchemaParseException (a ValueError) and, for some
            # malformed definitions, plain KeyError or TypeError.
            raise SchemaError(f"not an Avro schema fastavro can read: {exc}") from None

    def binary(self, data: bytes) -> Any:
        buffer = io.BytesIO(data)
        try:
            value = fastavro.schemaless_reader(buffer, self._schema, None)
        except Exception as exc:
            # Hostile bytes make the reader fail in many ways (EOFError, an
            # IndexError for a union branch out of range, UnicodeDecodeError…).
            raise Invalid(f"not Avro binary of this revision: {_said(exc)}") from None
        left = len(data) - buffer.tell()
        if left:
            raise Invalid(f"not Avro binary of this revision: {left} bytes after the record")
        return value

    def json(self, data: bytes) -> Any:
        # fastavro's JSON reader takes one datum per line; a message may be
        # spread over several, so it is made one line first.
        try:
            line = msgspec.json.encode(msgspec.json.decode(data))
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise Invalid(f"not JSON: {exc}") from None
        try:
            (value,) = fastavro.json_reader(io.StringIO(line.decode()), self._schema)
        except Exception as exc:
            raise Invalid(f"not Avro JSON of this revision: {_said(exc)}") from None
        return value


def _said(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
