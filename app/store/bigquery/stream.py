"""Appending to an application-created COMMITTED stream at offsets the caller keeps.

The Storage Write API checks an append's offset against the end of its
stream: an offset already written to is refused with `ALREADY_EXISTS`, one
beyond the end with `OUT_OF_RANGE`, and nothing is stored either way. So a
writer that knows which rows belong at which offset, and resends exactly
those after a crash or a lost answer, stores each row exactly once: the
resend either lands or is refused as already there. Rows on a COMMITTED
stream are visible as soon as the append is acknowledged.

One writer per stream, one request in flight: the exporter's batches are
large and its pace is set by Spanner reads, not by round trips.

A quiet system. BigQuery closes a connection idle for 600 s (ABORTED,
"Closing the stream because it has been inactive for 600 seconds"), and an
application-created COMMITTED stream with no traffic for four days is gone
("A committed stream has a TTL of four days if there is no traffic on the
stream", cloud.google.com/bigquery/docs/write-api-streaming). A connection
idle for `IDLE_RECONNECT_SECONDS` is replaced before it is used; one that
fails anyway after having been used before is replaced and the same request
sent again at once, at the same offset (stored once, or refused as there).
A stream that is gone answers NOT_FOUND: `StreamBroken(gone=True)`, and the
exporter starts a new one (`app.store.tiered.exporter`).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import grpc
from google.api_core.exceptions import GoogleAPICallError, ServiceUnavailable
from google.api_core.gapic_v1 import routing_header
from google.api_core.retry import AsyncRetry, if_exception_type
from google.cloud.bigquery_storage_v1 import types
from google.protobuf import descriptor_pb2

from app.errors import StoreUnavailable

if TYPE_CHECKING:
    from google.cloud.bigquery_storage_v1.services.big_query_write import (
        BigQueryWriteAsyncClient,
    )

_AppendRowsRequestPb: Final[Any] = types.AppendRowsRequest.pb()
_AppendRowsResponse: Final[Any] = types.AppendRowsResponse
_CODES: Final = {code.value[0]: code for code in grpc.StatusCode}
log = logging.getLogger(__name__)

# How long one append may take, answer included (a resend on a new connection too).
APPEND_SECONDS: Final = 30.0
# How long creating or finalizing a stream may take; UNAVAILABLE is retried
# with backoff (0.25 s doubling to 4 s, jittered) until then.
STREAM_CALL_SECONDS: Final = 30.0
# A connection unused this long is replaced before it is written to: BigQuery
# closes one idle for 600 s, and a request sent as it does would be lost.
IDLE_RECONNECT_SECONDS: Final = 540.0


class Appended(enum.Enum):
    """What became of an append at an offset."""

    STORED = "stored"  # the rows are stored now, at that offset
    ALREADY = "already"  # that offset was written to before: by an earlier try of this append


class RowsRefused(Exception):
    """BigQuery refused rows of the append; nothing of it was stored."""

    def __init__(self, reasons: dict[int, str]) -> None:
        first = min(reasons)
        super().__init__(f"row {first} refused: {reasons[first]}")
        self.reasons = reasons


class StreamBroken(Exception):
    """The stream cannot take this append and never will: gone, finalized, shorter
    than the writer knows it to be (`OUT_OF_RANGE`), or refused for a reason asking
    again cannot mend (`INVALID_ARGUMENT`, `PERMISSION_DENIED`).

    `gone`: the stream no longer exists or is finalized, so it takes nothing
    more; not when it merely holds fewer rows than the offset says.
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
            raise StoreUnavailable(f"{self.table}: CreateWriteStream failed: {exc}") from exc
        name: str = stream.name
        return name

    async def finalize(self, stream: str) -> None:
        """No more appends to `stream` (it keeps what it holds)."""
        if self._stream == stream:
            self.close()
        try:
            await self._client.finalize_write_stream(
                name=stream, timeout=STREAM_CALL_SECONDS, retry=_stream_call_retry()
            )
        except GoogleAPICallError as exc:
            raise StoreUnavailable(f"{stream}: FinalizeWriteStream failed: {exc}") from exc

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
        except (TimeoutError, GoogleAPICallError, grpc.RpcError, asyncio.InvalidStateError) as exc:
            self.close()  # its answer may still come: no later request may be read as it
            raise StoreUnavailable(f"{stream}: AppendRows failed: {exc or 'timed out'}") from exc
        if response.row_errors:
            raise RowsRefused({e.index: e.message or "refused" for e in response.row_errors})
        if not response.HasField("error"):
            return Appended.STORED
        code = _CODES.get(response.error.code, grpc.StatusCode.UNKNOWN)
        match code:
            case grpc.StatusCode.ALREADY_EXISTS:
                return Appended.ALREADY
            case grpc.StatusCode.OUT_OF_RANGE | grpc.StatusCode.NOT_FOUND:
                self.close()
                raise StreamBroken(
                    f"{stream}: {code.name}: {response.error.message}",
                    gone=code is grpc.StatusCode.NOT_FOUND,
                )
            case grpc.StatusCode.INVALID_ARGUMENT if "finalized" in response.error.message.lower():
                self.close()
                raise StreamBroken(f"{stream}: {response.error.message}", gone=True)
            case grpc.StatusCode.INVALID_ARGUMENT | grpc.StatusCode.PERMISSION_DENIED:
                # Permanent until someone changes something (the table's schema, the
                # account's roles): asked again as it is, it fails again for ever.
                self.close()
                raise StreamBroken(f"{stream}: {code.name}: {response.error.message}", gone=False)
        self.close()
        raise StoreUnavailable(f"{stream}: {code.name}: {response.error.message}")

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
