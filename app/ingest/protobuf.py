"""Protocol Buffers topic schemas: the `.proto` text compiled in process, data decoded by protobuf.

The source is compiled by protoc itself, linked in by grpcio-tools
(`grpc_tools.protoc.main`, no subprocess): the parser and checks Google's tools
use, ~3 ms once per revision, in a worker thread. A BINARY message is the wire
format, a JSON message the proto3 JSON mapping; either way it is stored as that
mapping's objects (the `.proto`'s field names, every field present), where the id
and event time are looked up (a Timestamp as RFC 3339, or `seconds` and `nanos`).

Design: docs/typed-columns.md#protocol-buffers
"""

from __future__ import annotations

import importlib.resources
import tempfile
import threading
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message
from grpc_tools import protoc

from app.ingest.codec import SchemaError
from app.ingest.shape import Invalid

# grpcio-tools ships the well-known types' .proto files (timestamp.proto…)
# in this directory of its package, for protoc's include path.
_WELL_KNOWN_TYPES = importlib.resources.files("grpc_tools").joinpath("_proto")
# protoc keeps process-wide state while it runs: one compile at a time.
_PROTOC = threading.Lock()
_FILE = "schema.proto"


def compile_proto(definition: str) -> descriptor_pb2.FileDescriptorSet:
    """The descriptors of `definition` and of every file it imports.

    protoc writes its error messages to the process's standard error, where
    the service's log collector finds them; the exception only says it failed.
    """
    with tempfile.TemporaryDirectory(prefix="recordline-proto-") as work, _PROTOC:
        folder = Path(work)
        (folder / _FILE).write_text(definition)
        out = folder / "descriptors.pb"
        status = protoc.main(
            [
                "protoc",
                f"--proto_path={folder}",
                f"--proto_path={_WELL_KNOWN_TYPES}",
                f"--descriptor_set_out={out}",
                "--include_imports",
                _FILE,
            ]
        )
        if status != 0:
            raise SchemaError(
                "the .proto text does not compile (protoc's messages are in the service's log)"
            )
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


class ProtobufCodec:
    """Decodes data written with one revision of a Protocol Buffers schema."""

    def __init__(self, definition: str) -> None:
        files = compile_proto(definition)
        pool = descriptor_pool.DescriptorPool()
        for file in files.file:
            pool.Add(file)
        schema = pool.FindFileByName(_FILE)
        # Pub/Sub allows one top-level message type per schema.
        messages = list(schema.message_types_by_name.values())
        if not messages:
            raise SchemaError("the .proto text defines no message")
        # The message type, for the typed columns its fields map to (app.typed).
        self.descriptor: Descriptor = messages[0]
        self._message: type[Message] = message_factory.GetMessageClass(messages[0])

    def binary(self, data: bytes) -> Any:
        try:
            message = self._message.FromString(data)
        except DecodeError as exc:
            raise Invalid(f"not Protocol Buffers binary of this revision: {exc}") from None
        return _objects(message)

    def json(self, data: bytes) -> Any:
        try:
            message = json_format.Parse(data, self._message())
        except (json_format.ParseError, UnicodeDecodeError, ValueError) as exc:
            raise Invalid(f"not Protocol Buffers JSON of this revision: {exc}") from None
        return _objects(message)


def _objects(message: Message) -> Any:
    try:
        return json_format.MessageToDict(
            message,
            preserving_proto_field_name=True,
            # Every field, zero values too: each row of a revision has the same keys.
            always_print_fields_with_no_presence=True,
        )
    except (ValueError, TypeError) as exc:  # e.g. a Timestamp out of its range
        raise Invalid(f"not representable as JSON: {exc}") from None
