"""What decodes a topic schema's messages: one Codec per schema revision.

A codec turns a message's data, in the BINARY or the JSON encoding Pub/Sub
names, into a tree of objects (dicts, lists, text, numbers, datetimes): the
payload as JSON would hold it, stored as `data` and searched for the id and
event time (`app.ingest.shape`). Each schema type has a module of its own:
`avro`, `protobuf`.
"""

from __future__ import annotations

from typing import Any, Protocol


class SchemaError(ValueError):
    """A schema definition that cannot be used to decode; the message says why."""


class Codec(Protocol):
    def binary(self, data: bytes) -> Any:
        """The datum `data` encodes in binary; raises `shape.Invalid` if it is none."""
        ...

    def json(self, data: bytes) -> Any:
        """The datum `data` encodes as JSON; raises `shape.Invalid` if it is none."""
        ...
