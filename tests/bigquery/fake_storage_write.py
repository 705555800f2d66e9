"""A fake of BigQuery's Storage Write API over real gRPC: the `_default` stream and
application-created streams, as the API reference documents them.

The real `BigQueryWriteAsyncClient` talks to it through an insecure channel.
It decodes rows with the writer schema each connection sends (a message class
built from the received DescriptorProto, as BigQuery does), keeps the decoded
rows per table, checks the routing header, and injects the faults a
production stream meets. Responses are delayed by `latency` without losing
pipelining: each answer is due `latency` after its request arrived.

Application-created streams (`CreateWriteStream`) follow the reference of
google.cloud.bigquery.storage.v1 (BigQueryWrite):
- AppendRows with an `offset` checks it against the end of the stream:
  `OUT_OF_RANGE` if beyond it, `ALREADY_EXISTS` if that offset has been written
  to, in the response's error, storing nothing; the response's `append_result`
  carries the offset the rows were written at. Without an offset the rows go at
  the end.
- COMMITTED: rows are visible once the append is acknowledged. PENDING: rows
  are invisible until the stream is finalized (`FinalizeWriteStream`, which
  answers its row count) and committed (`BatchCommitWriteStreams`, at most
  once; a stream not finalized is a stream error). BUFFERED: rows are visible
  up to the offset `FlushRows` advanced to.
- A finalized stream takes no more appends (`STREAM_FINALIZED`, INVALID_ARGUMENT);
  an unknown stream is NOT_FOUND.

Failures come where BigQuery puts them: in a response (`AppendRowsResponse.error`,
a google.rpc.Status whose details carry a `StorageError`), or at the RPC level,
the call ending with a status whose trailers (`grpc-status-details-bin`) carry
the same details, as in googleapis/python-bigquery-storage#593 (NOT_FOUND
"Requested entity was not found", INVALID_ARGUMENT "Invalid stream name"). A
test plans them per table (`inject`: one per request), for good (`broken`:
every request to the table until removed), or per stream (`StreamGone`: this
stream answers so from now on, as one BigQuery finalized, dropped or expired
does, while new streams of the table work).

Time, on the fake's `clock` (seconds; tests move it instead of waiting):
- A connection idle for `IDLE_SECONDS` (600) is closed by the server with
  ABORTED, "Closing the stream because it has been inactive for 600 seconds",
  as BigQuery answers (googleapis/python-bigquery-storage#593 shows the
  status). The fake closes it when the next request arrives on it, before
  reading that request: nothing of it is stored, as with a connection the
  server had closed already.
- An application-created stream with no traffic for `STREAM_TTL_SECONDS` is
  gone: "A committed stream has a TTL of four days if there is no traffic on
  the stream" (cloud.google.com/bigquery/docs/write-api-streaming). An append
  to it is then NOT_FOUND, as to any unknown stream.

Table schemas (`define`, then `patch` through the `tables` fake in
`fake_jobs.py`), for the tables a test gives one; other tables take any row:
- Each schema change has an ETag; a patch naming another ETag is refused,
  as `tables.patch` with `If-Match` is (412).
- A change reaches the write path `schema_lag` seconds later on the clock:
  "the Storage Write API learns a new table schema on the order of minutes".
  Until then a row whose writer schema names a column the write path does not
  know is refused, nothing stored: "Input schema has more fields than
  BigQuery schema, extra fields: '…'" (INVALID_ARGUMENT), as BigQuery says.
- `GetWriteStream` of `_default` with the FULL view shows the schema as the
  write path sees it (`table_schema`), which is how a writer learns it.

Writer schemas are read as BigQuery reads them: a descriptor protobuf itself
would not build (a field name that is no proto identifier, `café`) fails the
call with INVALID_ARGUMENT, "Invalid proto schema: BqMessage.proto: …" (the
form BigQuery answers in, googleapis/python-bigquery-storage#519), storing
nothing; a field's `column_name` annotation
(google/cloud/bigquery/storage/v1/annotations.proto, field 454943157 of
FieldOptions) names its column instead of the field's own name, for matching
columns and in the rows kept. The annotation is read from the options' raw
fields here, not through the code under test.

Run alone for benchmarks:
    python -m tests.bigquery.fake_storage_write --port 50051 --latency-ms 10

or as the BigQuery of several service processes, with its `jobs.query` fake:
    python -m tests.bigquery.fake_storage_write --keep-rows --jobs PROJECT/DATASET \
        [--refuse-every N] [--lose-every N] [--schema-lag SECONDS] [--tables-latency-ms MS]
which prints `listening on HOST:PORT`, then `jobs http://HOST:PORT`; stopped
(SIGTERM, SIGINT), what it stored, and how many `tables.patch` calls it applied
and refused for a stale ETag (412).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import itertools
import json
import re
import signal
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
from google.cloud.bigquery_storage_v1 import types
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, unknown_fields
from google.rpc import status_pb2

_Request: Any = types.AppendRowsRequest.pb()
_Response: Any = types.AppendRowsResponse.pb()
_RowError: Any = types.RowError.pb()

SERVICE = "google.cloud.bigquery.storage.v1.BigQueryWrite"


@dataclasses.dataclass(frozen=True)
class Abort:
    """End the call with `code` (at the RPC level), its trailers carrying a
    `StorageError` of code `storage` if given; with `commit`, store the rows first
    (the answer is lost)."""

    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    commit: bool = False
    details: str = "injected abort"
    storage: int | None = None


@dataclasses.dataclass(frozen=True)
class ErrorResponse:
    """Answer the request with `error` set (its details a `StorageError` of code
    `storage`, if given); nothing is stored."""

    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    message: str = "injected error"
    storage: int | None = None


@dataclasses.dataclass(frozen=True)
class StreamGone:
    """The stream the request names is gone from now on: this request and every
    later one to it are answered with `code` (and a `StorageError` of `storage`),
    at the RPC level with `rpc`, else in the response; nothing more is stored in
    it. With `commit`, this request's rows are stored first (and their answer
    lost). `finalized`: BigQuery finalized it (FinalizeWriteStream answers its row
    count), else it no longer knows it (NOT_FOUND)."""

    code: grpc.StatusCode = grpc.StatusCode.NOT_FOUND
    message: str = "Requested entity was not found."
    storage: int | None = None
    rpc: bool = False
    commit: bool = False
    finalized: bool = False


@dataclasses.dataclass(frozen=True)
class Drop:
    """End the call cleanly (status OK) leaving this request and later ones unanswered."""


@dataclasses.dataclass(frozen=True)
class UpdatedSchema:
    """Store the rows and answer with `updated_schema` set, as after an ALTER TABLE."""


Fault = Abort | ErrorResponse | Drop | UpdatedSchema | StreamGone

_WriteStream: Any = types.WriteStream.pb()
_CreateRequest: Any = types.CreateWriteStreamRequest.pb()
_GetRequest: Any = types.GetWriteStreamRequest.pb()
_FinalizeRequest: Any = types.FinalizeWriteStreamRequest.pb()
_FinalizeResponse: Any = types.FinalizeWriteStreamResponse.pb()
_BatchCommitRequest: Any = types.BatchCommitWriteStreamsRequest.pb()
_BatchCommitResponse: Any = types.BatchCommitWriteStreamsResponse.pb()
_FlushRequest: Any = types.FlushRowsRequest.pb()
_FlushResponse: Any = types.FlushRowsResponse.pb()
_StorageError: Any = types.StorageError.pb()
# Where a gRPC status's details travel at the RPC level (the rich error model).
STATUS_DETAILS = "grpc-status-details-bin"
COMMITTED, PENDING, BUFFERED = 1, 2, 3  # WriteStream.Type
# See the module notes: an idle connection is closed, an unused stream is gone.
IDLE_SECONDS = 600.0
STREAM_TTL_SECONDS = 4 * 24 * 3600.0


class SchemaRefused(Exception):
    """A schema update BigQuery refuses; the message is BigQuery's."""


def _refused_change(
    before: list[dict[str, Any]], after: list[dict[str, Any]], table: str, path: str = ""
) -> str | None:
    """Why BigQuery would refuse to change `before` into `after`, or None."""
    mismatch = f"Provided Schema does not match Table {table}."
    names = [f["name"].casefold() for f in after]
    if names[: len(before)] != [f["name"].casefold() for f in before]:
        return f"{mismatch} Cannot remove or reorder fields of {path or 'the table'}."
    for old, new in zip(before, after, strict=False):
        name = f"{path}{old['name']}"
        kind = (_LEGACY.get(old["type"], old["type"]), _LEGACY.get(new["type"], new["type"]))
        if kind[0] != kind[1]:
            return f"{mismatch} Field {name} has changed type from {kind[0]} to {kind[1]}"
        modes = (old.get("mode", "NULLABLE"), new.get("mode", "NULLABLE"))
        if modes[0] != modes[1] and modes != ("REQUIRED", "NULLABLE"):
            return f"{mismatch} Field {name} has changed mode from {modes[0]} to {modes[1]}"
        if kind[0] in ("RECORD", "STRUCT"):
            inner = _refused_change(old.get("fields", []), new.get("fields", []), table, f"{name}.")
            if inner is not None:
                return inner
    for new in after[len(before) :]:
        if new.get("mode") == "REQUIRED":
            return f"{mismatch} Field {path}{new['name']} cannot be added as REQUIRED."
    return None


# The legacy SQL names the REST API may give a type, as GoogleSQL's.
_LEGACY = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL", "STRUCT": "RECORD"}


@dataclasses.dataclass
class TableSchema:
    """A table's columns (`tables.get`'s JSON), their ETag, and when each version
    of them reached the write path (on the clock)."""

    fields: list[dict[str, Any]]
    etag: str
    versions: list[tuple[float, list[dict[str, Any]]]]


_STORAGE_TYPES = {"FLOAT": "DOUBLE", "FLOAT64": "DOUBLE", "INTEGER": "INT64", "BOOLEAN": "BOOL"}
_STORAGE_TYPES |= {"RECORD": "STRUCT"}


def storage_fields(fields: list[dict[str, Any]]) -> list[Any]:
    """REST schema fields as the Storage Write API's TableFieldSchema."""
    out = []
    for field in fields:
        kind = field["type"].upper()
        out.append(
            types.TableFieldSchema(
                name=field["name"],
                type_=types.TableFieldSchema.Type[_STORAGE_TYPES.get(kind, kind)],
                mode=types.TableFieldSchema.Mode[field.get("mode", "NULLABLE")],
                fields=storage_fields(field.get("fields", [])),
            )
        )
    return out


# annotations.proto: `extend google.protobuf.FieldOptions { string column_name = 454943157; }`
COLUMN_NAME = 454943157
# What protobuf takes as a field's name (and BigQuery's descriptor check with it).
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class InvalidSchema(Exception):
    """A writer schema BigQuery refuses; the message is BigQuery's."""


def column_name(field: Any) -> str:
    """The column a writer schema's field (a FieldDescriptorProto) writes: its
    `column_name` annotation, else its own name."""
    for raw in unknown_fields.UnknownFieldSet(field.options):
        if raw.field_number == COLUMN_NAME:
            name: str = raw.data.decode()
            return name
    name = field.name
    return name


def _checked(descriptor: descriptor_pb2.DescriptorProto, path: str = "") -> None:
    """Raise InvalidSchema for a field name protobuf would not take."""
    where = f"{path}{descriptor.name}"
    for field in descriptor.field:
        if not _IDENTIFIER.fullmatch(field.name):
            raise InvalidSchema(
                f'Invalid proto schema: BqMessage.proto: {where}.{field.name}: "{field.name}" '
                "is not a valid identifier."
            )
    for nested in descriptor.nested_type:
        _checked(nested, f"{where}.")


def _columns(descriptor: Any, prefix: str = "") -> dict[str, dict[str, str]]:
    """Per message (full name, as the pool names it), each field's column."""
    full = f"{prefix}{descriptor.name}"
    out = {full: {f.name: column_name(f) for f in descriptor.field}}
    for nested in descriptor.nested_type:
        out |= _columns(nested, f"{full}.")
    return out


def _extra_fields(descriptor: Any, fields: list[dict[str, Any]], path: str = "") -> list[str]:
    """Fields of a writer schema no column of `fields` has (by name, as BigQuery matches)."""
    columns = {f["name"].casefold(): f for f in fields}
    nested = {n.name: n for n in descriptor.nested_type}
    extra = []
    for field in descriptor.field:
        where = f"{path}{column_name(field)}"
        column = columns.get(column_name(field).casefold())
        if column is None:
            extra.append(where)
        elif field.type == descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE:
            inner = nested[field.type_name.rsplit(".", 1)[-1]]
            extra += _extra_fields(inner, column.get("fields", []), f"{where}.")
    return extra


@dataclasses.dataclass
class AppStream:
    """An application-created stream: its rows in stream order, and its state."""

    name: str
    table: str
    type: int
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    finalized: bool = False
    committed: bool = False
    # Rows of the stream the table shows: all for COMMITTED, up to the last flush
    # for BUFFERED, none for PENDING until it is committed.
    visible: int = 0
    # When it last had traffic (created, appended to), on the fake's clock.
    used: float = 0.0
    # How it answers every append since it is gone (StreamGone), if it is.
    gone: Any = None


_END = object()


def _decoder(descriptor: descriptor_pb2.DescriptorProto) -> Callable[[bytes], dict[str, Any]]:
    """Rows of this writer schema as dicts by column; InvalidSchema if BigQuery
    would refuse it."""
    _checked(descriptor)
    pool = descriptor_pool.DescriptorPool()
    file = descriptor_pb2.FileDescriptorProto(name="writer_schema.proto", syntax="proto2")
    file.message_type.add().CopyFrom(descriptor)
    try:
        pool.Add(file)
    except TypeError as exc:  # what protobuf says of a descriptor it cannot build
        raise InvalidSchema(f"Invalid proto schema: BqMessage.proto: {exc}") from None
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(descriptor.name))
    columns = _columns(descriptor)
    if descriptor.nested_type or any(
        column != field for field, column in columns[descriptor.name].items()
    ):

        def decode_nested(data: bytes) -> dict[str, Any]:
            return _as_dict(cls.FromString(data), columns)

        return decode_nested
    names = [field.name for field in descriptor.field]

    def decode(data: bytes) -> dict[str, Any]:
        message = cls.FromString(data)
        return {n: getattr(message, n) if message.HasField(n) else None for n in names}

    return decode


def _as_dict(message: Any, columns: dict[str, dict[str, str]]) -> dict[str, Any]:
    """A row message as a dict by column: nested messages as dicts, repeated fields
    as lists."""
    out: dict[str, Any] = {}
    names = columns[message.DESCRIPTOR.full_name]
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        nested = field.message_type is not None
        column = names[field.name]
        if field.is_repeated:
            out[column] = [_as_dict(v, columns) if nested else v for v in value]
        elif message.HasField(field.name):
            out[column] = _as_dict(value, columns) if nested else value
        else:
            out[column] = None
    return out


def _trailers(fault: Abort) -> tuple[tuple[str, bytes], ...]:
    """The trailers of an RPC that ends with `fault`: its status, with a
    `StorageError` among the details, as BigQuery sends the rich error model."""
    if fault.storage is None:
        return ()
    status = status_pb2.Status(code=fault.code.value[0], message=fault.details)
    status.details.add().Pack(_StorageError(code=fault.storage, error_message=fault.details))
    return ((STATUS_DETAILS, status.SerializeToString()),)


def table_of(stream: str) -> str:
    # projects/P/datasets/D/tables/T/streams/_default -> projects/P/datasets/D/tables/T
    return stream.rsplit("/streams/", 1)[0]


class FakeBigQueryWrite:
    def __init__(
        self,
        *,
        latency: float = 0.0,
        keep_rows: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.latency = latency
        self.keep_rows = keep_rows
        # What idle connections and unused streams are timed by (seconds).
        self.clock = clock
        # Connections closed for being idle, streams gone for being unused.
        self.idle_closed = 0
        self.expired: list[str] = []
        self.tables: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        self.row_counts: collections.Counter[str] = collections.Counter()
        # One-shot faults per table name (`records`, `rejected`), one per request.
        self.faults: dict[str, collections.deque[Fault | None]] = collections.defaultdict(
            collections.deque
        )
        # A persistent row check: a message refuses the row (a row error).
        self.refuse: Callable[[dict[str, Any]], str | None] | None = None
        # Faults of every request to a table (by name), until removed.
        self.broken: dict[str, Fault] = {}
        # Requests answered with a fault, per table name.
        self.failed: collections.Counter[str] = collections.Counter()
        self.connections = 0
        self.requests = 0
        self.schemas_received = 0
        self.routing_headers: list[str] = []
        self.protocol_errors: list[str] = []
        # Writer schemas refused as BigQuery refuses them (InvalidSchema), and why.
        self.invalid_schemas: list[str] = []
        # Most requests one connection had received and not yet answered.
        self.max_unanswered = 0
        self.streams: dict[str, AppStream] = {}
        # Streams made gone (StreamGone) that BigQuery no longer knows, by name.
        self._forgotten: dict[str, AppStream] = {}
        # Stream names are never reused, gone streams' included.
        self._stream_numbers = itertools.count(1)
        # One-shot faults of the unary calls, by method name (`CreateWriteStream`…).
        self.call_faults: dict[str, collections.deque[grpc.StatusCode]] = collections.defaultdict(
            collections.deque
        )
        # Schemas of the tables a test defined (by full path); see the module notes.
        self.schemas: dict[str, TableSchema] = {}
        # Times stored rows were changed or dropped rather than appended to.
        self.rows_changed = 0
        self.schema_lag = 0.0
        self._etags = itertools.count(1)
        self._server: grpc.aio.Server | None = None
        self.address = ""

    def define(self, table: str, fields: list[dict[str, Any]]) -> None:
        """Give a table (full path) a schema, known to the write path at once."""
        self.schemas[table] = TableSchema(
            fields=fields, etag=f"e{next(self._etags)}", versions=[(-1e18, fields)]
        )

    def patch(self, table: str, fields: list[dict[str, Any]], if_match: str | None) -> TableSchema:
        """`tables.patch` of the schema; KeyError if no such table, ValueError on
        another ETag than `if_match`, SchemaRefused for a change BigQuery does not
        make through the API: only columns (and nested fields) added NULLABLE or
        REPEATED at the end, or REQUIRED relaxed to NULLABLE; never a column
        dropped, renamed or changed in type."""
        schema = self.schemas[table]
        if if_match is not None and if_match != schema.etag:
            raise ValueError(f"ETag {if_match} is not the table's ({schema.etag})")
        refused = _refused_change(schema.fields, fields, table.rsplit("/", 1)[-1])
        if refused is not None:
            raise SchemaRefused(refused)
        schema.fields = fields
        schema.etag = f"e{next(self._etags)}"
        schema.versions.append((self.clock() + self.schema_lag, fields))
        return schema

    def write_path_fields(self, table: str) -> list[dict[str, Any]] | None:
        """The table's columns as the write path knows them now, if it has a schema."""
        schema = self.schemas.get(table)
        if schema is None:
            return None
        now = self.clock()
        return [fields for since, fields in schema.versions if since <= now][-1]

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Stored rows of a table, by full path or by its last name."""
        for path, rows in list(self.tables.items()):
            if path == table or path.endswith(f"/tables/{table}"):
                return list(rows)
        return []

    def update_rows(self, table: str, changes: dict[int, dict[str, Any]]) -> None:
        """Change stored rows of a table (full path), by their place in it: what a
        DML statement the jobs fake ran did. Each row is replaced whole, never
        changed in place, so readers holding the old one keep it."""
        rows = self.tables[table]
        for index, values in changes.items():
            rows[index] = {**rows[index], **values}
        self.rows_changed += 1

    def append_rows(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Rows a DML INSERT the jobs fake ran added to a table (full path), all at once:
        a reader sees all of them or none."""
        self.tables[table] = [*self.tables[table], *rows]
        self.row_counts[table] += len(rows)
        self.rows_changed += 1

    def drop(self, table: str) -> None:
        """`tables.delete`: the table's schema and rows are gone."""
        self.schemas.pop(table, None)
        self.tables.pop(table, None)
        self.rows_changed += 1

    def inject(self, table: str, *faults: Fault | None) -> None:
        self.faults[table].extend(faults)

    async def start(self, port: int = 0, host: str = "127.0.0.1") -> str:
        def unary(method: Any, request: Any, response: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                method,
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            )

        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "AppendRows": grpc.stream_stream_rpc_method_handler(
                    self._append_rows,
                    request_deserializer=_Request.FromString,
                    response_serializer=_Response.SerializeToString,
                ),
                "CreateWriteStream": unary(self._create, _CreateRequest, _WriteStream),
                "GetWriteStream": unary(self._get, _GetRequest, _WriteStream),
                "FinalizeWriteStream": unary(self._finalize, _FinalizeRequest, _FinalizeResponse),
                "BatchCommitWriteStreams": unary(
                    self._batch_commit, _BatchCommitRequest, _BatchCommitResponse
                ),
                "FlushRows": unary(self._flush, _FlushRequest, _FlushResponse),
            },
        )
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 32 * 1024 * 1024),
                ("grpc.max_send_message_length", 32 * 1024 * 1024),
            ]
        )
        self._server.add_generic_rpc_handlers((handler,))
        bound = self._server.add_insecure_port(f"{host}:{port}")
        await self._server.start()
        self.address = f"{host}:{bound}"
        return self.address

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving: RPCs still running are cancelled at once, or after `grace`
        seconds (those that end sooner end as they would)."""
        if self._server is not None:
            await self._server.stop(grace=grace)
            self._server = None

    async def _append_rows(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        self.connections += 1
        routing = [
            value
            for key, value in (context.invocation_metadata() or ())
            if key == "x-goog-request-params"
        ]
        self.routing_headers.extend(str(v) for v in routing)
        outbox: asyncio.Queue[tuple[float, object]] = asyncio.Queue()
        unanswered = [0]
        receiver = asyncio.create_task(self._receive(requests, routing, outbox, unanswered))
        receiver.add_done_callback(lambda task: self._receiver_done(task, outbox))
        loop = asyncio.get_running_loop()
        try:
            while True:
                due, item = await outbox.get()
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if item is _END or isinstance(item, Drop):
                    return
                if isinstance(item, Abort):
                    await context.abort(item.code, item.details, trailing_metadata=_trailers(item))
                unanswered[0] -= 1
                yield item
        finally:
            receiver.cancel()

    async def _receive(
        self,
        requests: AsyncIterator[Any],
        routing: list[str],
        outbox: asyncio.Queue[tuple[float, object]],
        unanswered: list[int],
    ) -> None:
        loop = asyncio.get_running_loop()
        stream = ""
        decode: Callable[[bytes], dict[str, Any]] | None = None
        # The extra fields of a refused writer schema: later requests without a
        # schema of their own are read with it, and refused too.
        refused_schema: list[str] = []
        active = self.clock()

        def post(item: object) -> None:
            outbox.put_nowait((loop.time() + self.latency, item))

        async for request in requests:
            now = self.clock()
            if now - active >= IDLE_SECONDS:
                self.idle_closed += 1
                inactive = (
                    f"Closing the stream because it has been inactive for {IDLE_SECONDS:.0f} "
                    f"seconds. Entity: {stream}"
                )
                post(Abort(grpc.StatusCode.ABORTED, details=inactive))
                return
            active = now
            self.requests += 1
            unanswered[0] += 1
            self.max_unanswered = max(self.max_unanswered, unanswered[0])
            if not stream:
                stream = request.write_stream
                wanted = "write_stream=" + urllib.parse.quote(stream, safe="/")
                if not stream or not any(wanted in value.split("&") for value in routing):
                    self.protocol_errors.append(f"routing header {routing!r} for {stream!r}")
                    post(Abort(grpc.StatusCode.INVALID_ARGUMENT, details="missing routing header"))
                    return
            elif request.write_stream and request.write_stream != stream:
                self.protocol_errors.append("stream changed within a connection")
            proto_rows = request.proto_rows
            if proto_rows.HasField("writer_schema"):
                self.schemas_received += 1
                try:
                    decode = _decoder(proto_rows.writer_schema.proto_descriptor)
                except InvalidSchema as exc:
                    self.invalid_schemas.append(str(exc))
                    post(Abort(grpc.StatusCode.INVALID_ARGUMENT, details=str(exc)))
                    return
            if decode is None:
                self.protocol_errors.append("rows before any writer schema")
                post(Abort(grpc.StatusCode.INVALID_ARGUMENT, details="no writer schema"))
                return
            table = table_of(stream)
            name = table.rsplit("/", 1)[-1]
            # A fault of one dataset's table (its whole path), else of every table so named.
            fault = (
                self.faults[table].popleft()
                if self.faults[table]
                else self.faults[name].popleft()
                if self.faults[name]
                else self.broken.get(table) or self.broken.get(name)
            )
            app_stream = self.streams.get(stream) or self._forgotten.get(stream)
            if fault is None and app_stream is not None and app_stream.gone is not None:
                fault = app_stream.gone
            if fault is not None:
                self.failed[name] += 1
            if isinstance(fault, StreamGone):
                gone = self._gone(stream, request, decode, fault)
                if gone is not None:
                    post(gone)
                    if isinstance(gone, Abort):
                        return
                    continue
                fault = None
            # After an abort or a drop the server reads nothing more from the call.
            if isinstance(fault, ErrorResponse):
                post(self._error_response(fault))
                continue
            if isinstance(fault, Drop) or (isinstance(fault, Abort) and not fault.commit):
                post(fault)
                return
            known = self.write_path_fields(table)
            extra = (
                _extra_fields(proto_rows.writer_schema.proto_descriptor, known)
                if known is not None and proto_rows.HasField("writer_schema")
                else []
            )
            if known is not None and not proto_rows.HasField("writer_schema") and refused_schema:
                extra = refused_schema
            if extra:
                refused_schema = extra
                response = _Response()
                response.error.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
                response.error.message = (
                    "Input schema has more fields than BigQuery schema, extra fields: "
                    + ", ".join(f"'{e}'" for e in extra)
                )
                post(response)
                continue
            rows, errors = self._decode(decode, proto_rows.rows.serialized_rows)
            response = _Response()
            if errors:
                # As BigQuery does: one bad row refuses the whole request.
                response.error.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
                response.error.message = "Errors found while processing rows."
                response.row_errors.extend(errors)
                post(response)
                continue
            if stream.endswith("/_default"):
                self._show(table, rows)
            else:
                refused = self._append_to(stream, request, rows)
                if refused is not None:
                    post(refused)
                    continue
                response.append_result.offset.value = len(self.streams[stream].rows) - len(rows)
            if isinstance(fault, Abort):
                post(fault)
                return
            response.append_result.SetInParent()
            if isinstance(fault, UpdatedSchema):
                response.updated_schema.fields.add(name="added_later", type_=1, mode=1)
            post(response)
        post(_END)

    def _show(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Rows the table shows from now on (what jobs.query reads)."""
        self.row_counts[table] += len(rows)
        if self.keep_rows:
            self.tables[table].extend(rows)

    def _append_to(self, name: str, request: Any, rows: list[dict[str, Any]]) -> Any:
        """Rows into an application-created stream; a response with the error, if refused."""
        stream = self._live(name)
        if stream is None:
            return self._storage_error(
                grpc.StatusCode.NOT_FOUND, 3, name, f"Stream not found: {name}"
            )
        stream.used = self.clock()
        if stream.finalized:
            return self._storage_error(
                grpc.StatusCode.INVALID_ARGUMENT, 6, name, f"Stream is finalized: {name}"
            )
        end = len(stream.rows)
        if request.HasField("offset"):
            offset = request.offset.value
            if offset < end:
                return self._storage_error(
                    grpc.StatusCode.ALREADY_EXISTS, 8, name, f"The offset {offset} has been written"
                )
            if offset > end:
                return self._storage_error(
                    grpc.StatusCode.OUT_OF_RANGE, 9, name, f"The offset {offset} is beyond {end}"
                )
        stream.rows.extend(rows)
        if stream.type == COMMITTED:
            self._show(stream.table, rows)
            stream.visible = len(stream.rows)
        return None

    def _live(self, name: str) -> AppStream | None:
        """The stream, unless unknown or gone for want of traffic (then forgotten)."""
        stream = self.streams.get(name)
        if stream is not None and self.clock() - stream.used >= STREAM_TTL_SECONDS:
            del self.streams[name]
            self.expired.append(name)
            return None
        return stream

    @staticmethod
    def _storage_error(code: grpc.StatusCode, storage: int, entity: str, message: str) -> Any:
        response = _Response()
        response.error.code = code.value[0]
        response.error.message = message
        detail = _StorageError(code=storage, entity=entity, error_message=message)
        response.error.details.add().Pack(detail)
        return response

    async def _unary_fault(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if self.call_faults[method]:
            await context.abort(self.call_faults[method].popleft(), f"injected: {method} failed")

    def _described(self, stream: AppStream) -> Any:
        return _WriteStream(name=stream.name, type_=stream.type, write_mode=1)

    async def _create(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await self._unary_fault("CreateWriteStream", context)
        kind = request.write_stream.type_
        if kind not in (COMMITTED, PENDING, BUFFERED):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a stream type is required")
        name = f"{request.parent}/streams/s{next(self._stream_numbers):08d}"
        stream = AppStream(name=name, table=request.parent, type=kind, used=self.clock())
        self.streams[name] = stream
        return self._described(stream)

    async def _stream(self, name: str, context: grpc.aio.ServicerContext[Any, Any]) -> AppStream:
        stream = self._live(name)
        if stream is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Stream not found: {name}")
            raise AssertionError  # abort raises
        return stream

    async def _get(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await self._unary_fault("GetWriteStream", context)
        if request.name.endswith("/streams/_default"):
            answer = _WriteStream(name=request.name, type_=COMMITTED)
            known = self.write_path_fields(table_of(request.name))
            if known is not None and request.view == 2:  # WriteStreamView.FULL
                answer.table_schema.CopyFrom(
                    types.TableSchema.pb(types.TableSchema(fields=storage_fields(known)))
                )
            return answer
        return self._described(await self._stream(request.name, context))

    async def _finalize(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await self._unary_fault("FinalizeWriteStream", context)
        stream = await self._stream(request.name, context)
        stream.finalized = True
        return _FinalizeResponse(row_count=len(stream.rows))

    async def _batch_commit(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await self._unary_fault("BatchCommitWriteStreams", context)
        streams = [self.streams.get(name) for name in request.write_streams]
        response = _BatchCommitResponse()
        for name, stream in zip(request.write_streams, streams, strict=True):
            problem = (
                (3, "not found")
                if stream is None
                else (4, "not a PENDING stream")
                if stream.type != PENDING
                else (2, "already committed")
                if stream.committed
                else (5, "not finalized")
                if not stream.finalized
                else None
            )
            if problem is not None:
                response.stream_errors.add(code=problem[0], entity=name, error_message=problem[1])
        if response.stream_errors:
            return response  # atomically: none is committed
        for stream in streams:
            assert stream is not None
            stream.committed = True
            self._show(stream.table, stream.rows)
            stream.visible = len(stream.rows)
        response.commit_time.GetCurrentTime()
        return response

    async def _flush(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await self._unary_fault("FlushRows", context)
        stream = await self._stream(request.write_stream, context)
        if stream.type != BUFFERED:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "FlushRows needs a BUFFERED stream"
            )
        # Flushes up to and including the row at `offset`.
        upto = request.offset.value + 1
        if upto > len(stream.rows):
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, f"offset beyond {len(stream.rows)}")
        if upto > stream.visible:
            self._show(stream.table, stream.rows[stream.visible : upto])
            stream.visible = upto
        return _FlushResponse(offset=request.offset.value)

    def _receiver_done(self, task: asyncio.Task[None], outbox: asyncio.Queue[Any]) -> None:
        # A bug in the fake must fail the test, not hang it until the deadline.
        if not task.cancelled() and task.exception() is not None:
            self.protocol_errors.append(f"fake failed: {task.exception()!r}")
            outbox.put_nowait((0.0, Abort(grpc.StatusCode.INTERNAL, details="fake failed")))

    def _decode(
        self, decode: Callable[[bytes], dict[str, Any]], serialized: Any
    ) -> tuple[list[dict[str, Any]], list[Any]]:
        rows, errors = [], []
        for index, data in enumerate(serialized):
            try:
                row = decode(data)
            except Exception as exc:
                errors.append(_RowError(index=index, code=1, message=f"cannot decode row: {exc}"))
                continue
            reason = self.refuse(row) if self.refuse is not None else None
            if reason is not None:
                errors.append(_RowError(index=index, code=1, message=reason))
            rows.append(row)
        return rows, errors

    @staticmethod
    def _error_response(fault: ErrorResponse | StreamGone) -> Any:
        response = _Response()
        response.error.code = fault.code.value[0]
        response.error.message = fault.message
        if fault.storage is not None:
            detail = _StorageError(code=fault.storage, error_message=fault.message)
            response.error.details.add().Pack(detail)
        return response

    def _gone(
        self,
        name: str,
        request: Any,
        decode: Callable[[bytes], dict[str, Any]],
        fault: StreamGone,
    ) -> Any:
        """A request to a stream that is (or goes) gone: its answer (an Abort at the
        RPC level, else a response with the error); None for a `_default` stream,
        which is never gone."""
        stream = self.streams.get(name) or self._forgotten.get(name)
        if stream is None:
            return None
        if stream.gone is None:
            if fault.commit:
                # Stored as any append is (offset checked); its answer is lost.
                rows, errors = self._decode(decode, request.proto_rows.rows.serialized_rows)
                if not errors:
                    self._append_to(name, request, rows)
            stream.gone = dataclasses.replace(fault, commit=False)
            stream.finalized = True
            if not fault.finalized:
                del self.streams[name]
                self._forgotten[name] = stream
        if fault.rpc:
            return Abort(fault.code, details=fault.message, storage=fault.storage)
        return self._error_response(fault)


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeBigQueryWrite(latency=args.latency_ms / 1000, keep_rows=args.keep_rows)
    fake.schema_lag = args.schema_lag
    # Faults every Nth request to `records`: refused (nothing stored: the push
    # is answered 503), or lost (stored, the answer lost: the writer resends).
    for nth, fault in (
        (args.refuse_every, ErrorResponse(grpc.StatusCode.INVALID_ARGUMENT)),
        (args.lose_every, Abort(commit=True)),
    ):
        if nth:
            fake.inject("records", *([None] * (nth - 1) + [fault]) * (100_000 // nth))
    address = await fake.start(args.port)
    print(f"listening on {address}", flush=True)
    jobs = None
    if args.jobs:
        from tests.bigquery.fake_jobs import FakeBigQueryJobs

        project, dataset = args.jobs.split("/")
        # The tables as Terraform creates them, so `tables.get` finds them.
        schemas = Path(__file__).resolve().parents[2] / "infra/terraform/modules/system/schemas"
        for table in ("records", "rejected", "export_watermarks", "access_record"):
            path = f"projects/{project}/datasets/{dataset}/tables/{table}"
            fake.define(path, json.loads((schemas / f"{table}.json").read_text()))
        jobs = FakeBigQueryJobs(fake, project=project, dataset=dataset)
        jobs.table_latency = args.tables_latency_ms / 1000
        print(f"jobs {jobs.start(args.jobs_port)}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print(f"stored {sum(fake.row_counts.values())} rows in {fake.requests} requests", flush=True)
    if jobs is not None:
        applied, stale = jobs.applied_patches, jobs.stale_patches
        print(
            f"tables.patch: {applied} applied, {stale} refused for a stale ETag",
            flush=True,
        )
        jobs.stop()
    # A client's streams just closed may still be ending here: cancelled, grpc reports
    # each on stderr as an error of its own.
    await fake.stop(grace=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--keep-rows", action="store_true", help="keep decoded rows in memory")
    parser.add_argument("--jobs", metavar="PROJECT/DATASET", help="serve jobs.query too")
    parser.add_argument("--jobs-port", type=int, default=0, help="jobs.query's port (0: any)")
    parser.add_argument("--refuse-every", type=int, default=0, metavar="N")
    parser.add_argument(
        "--schema-lag",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="how late the write path learns each change of a table's schema",
    )
    parser.add_argument(
        "--tables-latency-ms",
        type=float,
        default=0.0,
        help="how long each tables.get and tables.patch takes to answer",
    )
    parser.add_argument("--lose-every", type=int, default=0, metavar="N")
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
