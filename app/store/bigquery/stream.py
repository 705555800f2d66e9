"""Appending to an application-created COMMITTED stream at offsets the caller keeps.

The Storage Write API refuses an append at an offset already written to
(`ALREADY_EXISTS`) or beyond the end (`OUT_OF_RANGE`), storing nothing either
way: a writer that resends exactly the same rows at the same offset after a
crash or a lost answer stores each row once. One writer per stream, one request
in flight. BigQuery's failures, at the RPC level or in the response, are sorted
into one `Fault`.

Design: docs/stores.md#export-failures
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import grpc
from google.api_core.exceptions import GoogleAPICallError, ServiceUnavailable
from google.api_core.gapic_v1 import routing_header
from google.api_core.retry import AsyncRetry, if_exception_type
from google.cloud.bigquery_storage_v1 import types
from google.protobuf import any_pb2, descriptor_pb2
from google.rpc import status_pb2

from app.errors import StoreUnavailable

if TYPE_CHECKING:
    from google.cloud.bigquery_storage_v1.services.big_query_write import (
        BigQueryWriteAsyncClient,
    )

_AppendRowsRequestPb: Final[Any] = types.AppendRowsRequest.pb()
_AppendRowsResponse: Final[Any] = types.AppendRowsResponse
_StorageErrorPb: Final[Any] = types.StorageError.pb()
_CODES: Final = {code.value[0]: code for code in grpc.StatusCode}
# Where a gRPC status's details travel at the RPC level (the rich error model).
_STATUS_DETAILS: Final = "grpc-status-details-bin"
log = logging.getLogger(__name__)

# How long one append may take, answer included (a resend on a new connection too).
APPEND_SECONDS: Final = 30.0
# How long creating or finalizing a stream may take; UNAVAILABLE is retried
# with backoff (0.25 s doubling to 4 s, jittered) until then.
STREAM_CALL_SECONDS: Final = 30.0
# A connection unused this long is replaced before it is written to: BigQuery
# closes one idle for 600 s (ABORTED, "Closing the stream because it has been
# inactive for 600 seconds"), and a request sent as it does would be lost. One
# that fails anyway after having been used before is replaced and the same request
# sent again at once, at the same offset (stored once, or refused as there). A
# COMMITTED stream with no traffic for four days is gone
# (cloud.google.com/bigquery/docs/write-api-streaming): it answers NOT_FOUND,
# `StreamBroken(gone=True)`, and the exporter starts a new one.
IDLE_RECONNECT_SECONDS: Final = 540.0


class Appended(enum.Enum):
    """What became of an append at an offset."""

    STORED = "stored"  # the rows are stored now, at that offset
    ALREADY = "already"  # that offset was written to before: by an earlier try of this append


class Fault(enum.Enum):
    """What a failure BigQuery answered means for the writer.

    An append fails in the response (`AppendRowsResponse.error`, a google.rpc.Status
    whose details are often a `StorageError` with a code of its own) or at the RPC
    level (an `AioRpcError`, or api_core's exception for it, such as NotFound
    "Requested entity was not found" or InvalidArgument "Invalid stream name",
    googleapis/python-bigquery-storage#593, its details in the trailers). Both are
    read alike (`Said`) and sorted here, the `StorageError` code first, then the
    status. NOT_FOUND, INVALID_ARGUMENT and FAILED_PRECONDITION count as GONE, as
    Apache Beam's Storage Write sink reads them, since BigQuery does not reliably
    answer NOT_FOUND for a stream that is gone; a new stream that refuses the same
    rows alike tells the exporter the fault was the rows' or the table's after all.
    REFUSED fails again until someone changes the table or the roles; anything not
    in the tables below (a quota, UNAVAILABLE, ABORTED, DEADLINE_EXCEEDED,
    INTERNAL) is TRANSIENT: StoreUnavailable, tried again later.
    """

    GONE = "gone"  # the stream takes no more appends; a new one may
    REFUSED = "refused"  # asked again as it is, it fails again
    ALREADY = "already"  # the offset was written to before
    BEYOND = "beyond"  # the offset is past the end of the stream
    TRANSIENT = "transient"  # try again later


_Storage = types.StorageError.StorageErrorCode
_BY_STORAGE: Final = {
    _Storage.STREAM_NOT_FOUND: Fault.GONE,
    _Storage.STREAM_FINALIZED: Fault.GONE,
    _Storage.INVALID_STREAM_STATE: Fault.GONE,
    _Storage.INVALID_STREAM_TYPE: Fault.GONE,
    _Storage.STREAM_ALREADY_COMMITTED: Fault.GONE,
    _Storage.TABLE_NOT_FOUND: Fault.REFUSED,
    _Storage.SCHEMA_MISMATCH_EXTRA_FIELDS: Fault.REFUSED,
    _Storage.CMEK_NOT_PROVIDED: Fault.REFUSED,
    _Storage.INVALID_CMEK_PROVIDED: Fault.REFUSED,
    _Storage.CMEK_ENCRYPTION_ERROR: Fault.REFUSED,
    _Storage.KMS_PERMISSION_DENIED: Fault.REFUSED,
    _Storage.KMS_SERVICE_ERROR: Fault.TRANSIENT,
    _Storage.OFFSET_ALREADY_EXISTS: Fault.ALREADY,
    _Storage.OFFSET_OUT_OF_RANGE: Fault.BEYOND,
}
_BY_STATUS: Final = {
    grpc.StatusCode.ALREADY_EXISTS: Fault.ALREADY,
    grpc.StatusCode.OUT_OF_RANGE: Fault.BEYOND,
    grpc.StatusCode.NOT_FOUND: Fault.GONE,
    grpc.StatusCode.INVALID_ARGUMENT: Fault.GONE,
    grpc.StatusCode.FAILED_PRECONDITION: Fault.GONE,
    grpc.StatusCode.PERMISSION_DENIED: Fault.REFUSED,
}


class Said(NamedTuple):
    """A failure as BigQuery answered it: its status, its `StorageError` code if it
    had one, its message, and whether it ended the call (RPC level) or came in a
    response."""

    code: grpc.StatusCode
    storage: int | None
    message: str
    rpc: bool

    @property
    def fault(self) -> Fault:
        if self.storage is not None and self.storage in _BY_STORAGE:
            return _BY_STORAGE[_Storage(self.storage)]
        return _BY_STATUS.get(self.code, Fault.TRANSIENT)

    def __str__(self) -> str:
        storage = ""
        if self.storage:
            try:
                storage = f" ({_Storage(self.storage).name})"
            except ValueError:  # a code this library does not know yet
                storage = f" ({self.storage})"
        return f"{self.code.name}{storage}: {self.message}"


def said_in_response(error: Any) -> Said:
    """The failure an AppendRowsResponse's `error` (a google.rpc.Status) says."""
    code = _CODES.get(error.code, grpc.StatusCode.UNKNOWN)
    return Said(code, _storage_code(error.details), error.message, rpc=False)


def said_by_rpc(exc: BaseException) -> Said | None:
    """The failure an RPC ended with, as grpc raises it (`AioRpcError`) or as
    api_core does (`GoogleAPICallError`, NotFound and its kin); None if it names no
    gRPC status (a transport failure before any answer)."""
    if isinstance(exc, GoogleAPICallError):
        code = exc.grpc_status_code
        if code is None:
            return None
        details = [d for d in exc.details if isinstance(d, any_pb2.Any)]
        return Said(code, _storage_code(details), exc.message or str(exc), rpc=True)
    if isinstance(exc, grpc.RpcError) and isinstance(exc, grpc.Call):
        status = None
        for key, value in exc.trailing_metadata() or ():
            if key == _STATUS_DETAILS and isinstance(value, bytes):
                status = status_pb2.Status.FromString(value)
        storage = _storage_code(status.details) if status is not None else None
        return Said(exc.code(), storage, exc.details() or "", rpc=True)
    return None


def _storage_code(details: Iterable[Any]) -> int | None:
    for detail in details:
        if detail.Is(_StorageErrorPb.DESCRIPTOR):
            found = _StorageErrorPb()
            detail.Unpack(found)
            return int(found.code)
    return None


class RowsRefused(Exception):
    """BigQuery refused rows of the append; nothing of it was stored."""

    def __init__(self, reasons: dict[int, str]) -> None:
        first = min(reasons)
        super().__init__(f"row {first} refused: {reasons[first]}")
        self.reasons = reasons


class StreamBroken(Exception):
    """The stream cannot take this append and never will: gone, finalized, shorter
    than the writer knows it to be (`OUT_OF_RANGE`), or refused for a reason asking
    again cannot mend (`PERMISSION_DENIED`, the table's schema).

    `gone`: the stream no longer exists or is finalized, so it takes nothing
    more (a new stream may take what it refused); not when it merely holds fewer
    rows than the offset says, or the refusal was the table's or the account's.
    """

    def __init__(self, message: str, *, gone: bool) -> None:
        super().__init__(message)
        self.gone = gone


class OffsetStream:
    """Appends rows of one table at offsets, to COMMITTED streams it creates."""

    def __init__(
        self,
        client: BigQueryWriteAsyncClient,
        table: str,
        descriptor: descriptor_pb2.DescriptorProto,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self._client = client
        self._descriptor = descriptor
        self._monotonic = monotonic
        self._stream = ""
        # The writer schema the open connection was given.
        self._sent: descriptor_pb2.DescriptorProto | None = None
        self._requests: asyncio.Queue[types.AppendRowsRequest | None] | None = None
        self._call: Any = None
        # When the connection last had a request or an answer.
        self._active = 0.0
        # Connections replaced for being idle, and requests sent again on a new one.
        self.reconnects = 0
        self.resends = 0

    async def create(self) -> str:
        """A new COMMITTED stream of the table; its name."""
        try:
            stream = await self._client.create_write_stream(
                parent=self.table,
                write_stream=types.WriteStream(type_=types.WriteStream.Type.COMMITTED),
                timeout=STREAM_CALL_SECONDS,
                retry=_stream_call_retry(),
            )
        except GoogleAPICallError as exc:
            said = said_by_rpc(exc)
            if said is None or said.fault is Fault.TRANSIENT:
                raise StoreUnavailable(f"{self.table}: CreateWriteStream failed: {exc}") from exc
            # The table is missing, or the account may not write it: no stream of
            # it can be made until someone changes that.
            raise StreamBroken(f"{self.table}: CreateWriteStream: {said}", gone=False) from exc
        name: str = stream.name
        return name

    async def finalize(self, stream: str) -> int | None:
        """No more appends to `stream` (it keeps what it holds): how many rows it
        holds, or None if BigQuery no longer has it (gone, as `Fault.GONE` says)."""
        if self._stream == stream:
            self.close()
        try:
            done = await self._client.finalize_write_stream(
                name=stream, timeout=STREAM_CALL_SECONDS, retry=_stream_call_retry()
            )
        except GoogleAPICallError as exc:
            said = said_by_rpc(exc)
            if said is not None and said.fault is Fault.GONE:
                return None
            if said is not None and said.fault is Fault.REFUSED:
                raise StreamBroken(f"{stream}: FinalizeWriteStream: {said}", gone=False) from exc
            raise StoreUnavailable(f"{stream}: FinalizeWriteStream failed: {exc}") from exc
        count: int = done.row_count
        return count

    async def append(
        self,
        stream: str,
        offset: int,
        rows: Sequence[bytes],
        descriptor: descriptor_pb2.DescriptorProto | None = None,
    ) -> Appended:
        """Store `rows` at `offset` of `stream`, or learn they were stored there before.

        `descriptor` is the rows' writer schema where it is not the stream's own
        (rows with typed columns): a connection carries one, so another opens one
        of its own.

        Raises RowsRefused (BigQuery refused a row), StreamBroken (the stream
        cannot take them) or StoreUnavailable (try again later: BigQuery did
        not answer, or answered with a transient error).
        """
        try:
            async with asyncio.timeout(APPEND_SECONDS):
                response = await self._exchange_once_more(
                    stream, offset, rows, descriptor or self._descriptor
                )
        except (GoogleAPICallError, grpc.RpcError) as exc:
            self.close()  # its answer may still come: no later request may be read as it
            said = said_by_rpc(exc)
            if said is None:
                raise StoreUnavailable(f"{stream}: AppendRows failed: {exc}") from exc
            return self._answered(stream, said)
        except (TimeoutError, asyncio.InvalidStateError) as exc:
            self.close()
            raise StoreUnavailable(f"{stream}: AppendRows failed: {exc or 'timed out'}") from exc
        if response.row_errors:
            raise RowsRefused({e.index: e.message or "refused" for e in response.row_errors})
        if not response.HasField("error"):
            return Appended.STORED
        return self._answered(stream, said_in_response(response.error))

    def _answered(self, stream: str, said: Said) -> Appended:
        """What a failure BigQuery answered means for this append (see `Fault`)."""
        fault = said.fault
        if fault is Fault.ALREADY:
            return Appended.ALREADY
        self.close()
        where = "" if not said.rpc else " (the call ended)"
        match fault:
            case Fault.GONE | Fault.REFUSED | Fault.BEYOND:
                raise StreamBroken(f"{stream}: {said}{where}", gone=fault is Fault.GONE)
        raise StoreUnavailable(f"{stream}: AppendRows failed: {said}{where}")

    async def _exchange_once_more(
        self,
        stream: str,
        offset: int,
        rows: Sequence[bytes],
        descriptor: descriptor_pb2.DescriptorProto,
    ) -> Any:
        """The exchange; on a connection used before that fails (closed as idle by
        the server, or broken while it waited), once more on a new one."""
        if self._call is not None and self._monotonic() - self._active >= IDLE_RECONNECT_SECONDS:
            self.close()
            self.reconnects += 1
        reused = self._call is not None and self._stream == stream and self._sent is descriptor
        try:
            return await self._exchange(stream, offset, rows, descriptor)
        except (GoogleAPICallError, grpc.RpcError, asyncio.InvalidStateError, StoreUnavailable):
            if not reused:
                raise
        # The same rows at the same offset: stored once, or refused as already there.
        log.info("%s: the connection failed; sending the append at %d again", stream, offset)
        self.close()
        self.resends += 1
        return await self._exchange(stream, offset, rows, descriptor)

    async def _exchange(
        self,
        stream: str,
        offset: int,
        rows: Sequence[bytes],
        descriptor: descriptor_pb2.DescriptorProto,
    ) -> Any:
        self._active = self._monotonic()
        first = self._call is None or self._stream != stream or self._sent is not descriptor
        if first:
            self.close()
            await self._open(stream)
            self._sent = descriptor
        assert self._requests is not None
        request = _AppendRowsRequestPb()
        request.offset.value = offset
        if first:
            # The stream name and writer schema ride on a connection's first request.
            request.write_stream = stream
            request.proto_rows.writer_schema.proto_descriptor.CopyFrom(descriptor)
        request.proto_rows.rows.serialized_rows.extend(rows)
        self._requests.put_nowait(types.AppendRowsRequest.wrap(request))
        # Within the append's own deadline (the caller's bounds the resend too).
        response = await asyncio.wait_for(self._call.read(), timeout=APPEND_SECONDS)
        if response is grpc.aio.EOF:
            raise StoreUnavailable(f"{stream}: the stream ended before answering")
        self._active = self._monotonic()
        return _AppendRowsResponse.pb(response)

    async def _open(self, stream: str) -> None:
        requests: asyncio.Queue[types.AppendRowsRequest | None] = asyncio.Queue()
        # The async client does not add the routing header for a streaming call.
        metadata = (routing_header.to_grpc_metadata((("write_stream", stream),)),)  # type: ignore[no-untyped-call]
        self._call = await self._client.append_rows(_drain(requests), metadata=metadata, retry=None)
        self._requests = requests
        self._stream = stream

    def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._requests is not None:
            self._requests.put_nowait(None)
        self._call = self._requests = None
        self._stream = ""
        self._sent = None


def _stream_call_retry() -> AsyncRetry:
    return AsyncRetry(
        predicate=if_exception_type(ServiceUnavailable),
        initial=0.25,
        maximum=4.0,
        multiplier=2.0,
        timeout=STREAM_CALL_SECONDS,
    )


async def _drain(
    requests: asyncio.Queue[types.AppendRowsRequest | None],
) -> AsyncIterator[types.AppendRowsRequest]:
    while (request := await requests.get()) is not None:
        yield request
