"""Appending rows to one BigQuery table through the Storage Write API.

`StorageWriter` keeps one long-lived AppendRows connection to the table's
`_default` stream, owned by one supervised loop; a few requests travel at once, answered in
order, so the batches in flight are a FIFO. The library's retry is off
(`retry=None`: it would silently consume unanswered requests); a batch stays in
the FIFO until its own answer, and a broken stream's batches are sent again on a
new connection. The `_default` stream is at-least-once: readers drop copies.

Design: docs/stores.md#bigquery-bigqueryprojectdataset
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

import grpc
from google.api_core.exceptions import GoogleAPICallError
from google.api_core.gapic_v1 import routing_header
from google.cloud.bigquery_storage_v1 import types
from google.protobuf import descriptor_pb2

from app.errors import StoreUnavailable, WriteTimeout
from app.store.backoff import Backoff
from app.store.supervisor import Supervisor

if TYPE_CHECKING:
    from google.cloud.bigquery_storage_v1.services.big_query_write import (
        BigQueryWriteAsyncClient,
    )

log = logging.getLogger(__name__)

# Requests awaiting their response on one connection. With group commit, rows
# per request ≈ waiting producers ÷ requests in flight, and throughput ≈
# concurrency ÷ round trip: at 10 ms round trips 1,000 producers reached ~27k
# rows/s with one request in flight and ~51k with four (`python3 dev.py bench
# writer` measures it against the in-process fake).
DEFAULT_MAX_IN_FLIGHT: Final = 4

# AppendRows refuses requests over 20 MB. Cutting at 8 MB leaves room for the
# writer schema and framing, and for one row near Pub/Sub's 10 MB message
# limit, which is sent alone whatever its size.
MAX_REQUEST_BYTES: Final = 8 * 1024 * 1024

# Beyond a few hundred rows a request gains little throughput (500 rows a
# request reached ~240k rows/s against the fake) but its loss costs more to resend.
MAX_REQUEST_ROWS: Final = 5_000

# Framing per row inside ProtoRows.serialized_rows: a one-byte tag and a length
# varint of at most five bytes.
_ROW_OVERHEAD: Final = 6

# Reconnect backoff: up to 0.1 s doubling to 5 s, jittered so that a fleet of
# instances does not reconnect in step after a regional blip. Rows never wait
# longer than the write deadline anyway (8 s by default): their push gets 503.
_BACKOFF_INITIAL: Final = 0.1
_BACKOFF_MAX: Final = 5.0
# The writer's loop is down (readiness says so) once it has failed for longer than
# its longest wait between connections: it is not reconnecting, it is broken.
_DOWN_SECONDS: Final = _BACKOFF_MAX

# Codes after which the same rows may well succeed on a new connection. The
# others (NOT_FOUND, PERMISSION_DENIED, INVALID_ARGUMENT, UNAUTHENTICATED…)
# need an operator: retrying them would only hold every push until its deadline.
TRANSIENT_CODES: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
    }
)

# google.rpc.Code numbers (in AppendRowsResponse.error) are gRPC's status codes.
_CODES: Final = {code.value[0]: code for code in grpc.StatusCode}

# Raw protobuf classes: building requests with proto-plus constructors costs
# ~2 µs per row against ~0.12 µs for the raw message then `.wrap()`.
_AppendRowsRequestPb: Final[Any] = types.AppendRowsRequest.pb()
_AppendRowsResponse: Final[Any] = types.AppendRowsResponse

# Shown in BigQuery's own diagnostics for the connection.
_TRACE_ID: Final = "recordline"


class _StreamError(Exception):
    """An error answered in a response, or a stream that ended with requests unanswered."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


def status_code(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, _StreamError):
        return exc.code
    if isinstance(exc, GoogleAPICallError) and exc.grpc_status_code is not None:
        code: grpc.StatusCode = exc.grpc_status_code
        return code
    if isinstance(exc, grpc.aio.AioRpcError):
        aio_code: grpc.StatusCode = exc.code()
        return aio_code
    # Writing to a finished call raises asyncio.InvalidStateError (grpc's pump
    # behind the request iterator then cancels the call); anything else
    # unexpected from the stream is treated the same way: a broken stream.
    return grpc.StatusCode.UNKNOWN


def is_transient(exc: BaseException) -> bool:
    return status_code(exc) in TRANSIENT_CODES


class _Submission:
    """The rows of one `append` call and the future its caller awaits."""

    __slots__ = ("deadline", "future", "outcomes", "rows", "unsettled")

    def __init__(
        self, rows: Sequence[bytes], future: asyncio.Future[list[str | None]], deadline: float
    ) -> None:
        self.rows = rows
        self.future = future
        self.deadline = deadline
        # Built only when a row is refused: almost every append has no reason.
        self.outcomes: list[str | None] | None = None
        self.unsettled = len(rows)

    def settle(self, reason: str | None, index: int) -> None:
        if reason is not None:
            if self.outcomes is None:
                self.outcomes = [None] * len(self.rows)
            self.outcomes[index] = reason
        self.unsettled -= 1
        if self.unsettled == 0 and not self.future.done():
            self.future.set_result(self.outcomes or [None] * len(self.rows))

    def fail(self, detail: str) -> None:
        if not self.future.done():
            self.future.set_exception(StoreUnavailable(detail))

    def expire(self, table: str) -> None:
        # Rows of a done submission are skipped when batches are cut, so what
        # was not sent yet never is; what was sent may still land.
        if not self.future.done():
            self.future.set_exception(
                WriteTimeout(f"{table}: rows not stored within the write deadline")
            )


# A row waiting to be sent: its submission and its index there. A submission
# whose future is done (its caller gave up at the deadline) is skipped.
_Slot = tuple[_Submission, int]


class _Batch:
    """The rows of one AppendRows request, with the slot each came from."""

    __slots__ = ("rows", "slots")

    def __init__(self) -> None:
        self.rows: list[bytes] = []
        self.slots: list[_Slot] = []


class _Connection:
    """One AppendRows call: a queue feeding its request stream, and the FIFO of
    batches that have been sent and not yet answered."""

    def __init__(
        self,
        call: Any,
        requests: asyncio.Queue[types.AppendRowsRequest | None],
        stream: str,
        descriptor: descriptor_pb2.DescriptorProto,
    ) -> None:
        self._call = call
        self._requests = requests
        self._stream = stream
        self._descriptor = descriptor
        self._first = True
        self.in_flight: deque[_Batch] = deque()
        # Set when the table's schema changed: send nothing more here, let the
        # answers drain, then a new connection picks up the new schema.
        self.retiring = False
        self.answered = 0

    @classmethod
    async def open(
        cls,
        client: BigQueryWriteAsyncClient,
        stream: str,
        descriptor: descriptor_pb2.DescriptorProto,
    ) -> _Connection:
        requests: asyncio.Queue[types.AppendRowsRequest | None] = asyncio.Queue()
        # The async client does not add the routing header for a streaming
        # call; without it the frontend cannot route the stream to the table.
        metadata = (routing_header.to_grpc_metadata((("write_stream", stream),)),)  # type: ignore[no-untyped-call]
        call = await client.append_rows(_drain(requests), metadata=metadata, retry=None)
        return cls(call, requests, stream, descriptor)

    def send(self, batch: _Batch) -> None:
        request = _AppendRowsRequestPb()
        proto_rows = request.proto_rows
        if self._first:
            # The stream name and writer schema ride on the first request of a
            # connection only; the server keeps them for the rest of the call.
            self._first = False
            request.write_stream = self._stream
            request.trace_id = _TRACE_ID
            proto_rows.writer_schema.proto_descriptor.CopyFrom(self._descriptor)
        proto_rows.rows.serialized_rows.extend(batch.rows)
        self._requests.put_nowait(types.AppendRowsRequest.wrap(request))
        self.in_flight.append(batch)

    async def read(self) -> Any | None:
        """The next response as a raw protobuf, or None once the server ends the call."""
        response = await self._call.read()
        if response is grpc.aio.EOF:
            return None
        return _AppendRowsResponse.pb(response)

    def finish(self) -> None:
        """Half-close: the server answers what it has and ends the call."""
        self._requests.put_nowait(None)

    def abort(self) -> None:
        self._call.cancel()


async def _drain(
    requests: asyncio.Queue[types.AppendRowsRequest | None],
) -> AsyncIterator[types.AppendRowsRequest]:
    while (request := await requests.get()) is not None:
        yield request


class StorageWriter:
    """Appends serialized rows to one table's `_default` stream."""

    def __init__(
        self,
        client: BigQueryWriteAsyncClient,
        table: str,
        descriptor: descriptor_pb2.DescriptorProto,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        max_request_rows: int = MAX_REQUEST_ROWS,
        loops: Supervisor | None = None,
    ) -> None:
        """`loops`: the store's supervisor, to run the writer's loop under (one of its
        own if not given)."""
        self.table = table
        self.stream = f"{table}/streams/_default"
        self.max_in_flight = max_in_flight
        self._client = client
        self._descriptor = descriptor
        self._max_bytes = max_request_bytes
        self._max_rows = max_request_rows
        self._pending: deque[_Slot] = deque()
        self._connection: _Connection | None = None
        self._work = asyncio.Event()
        # Submissions in arrival order, for their deadlines (see `_watch`).
        self._expiry: deque[_Submission] = deque()
        self._reaper: asyncio.TimerHandle | None = None
        self._loops = loops
        self._own_loops: Supervisor | None = None
        # What stops the writer's loop while it runs.
        self._stop: Callable[[], Awaitable[None]] | None = None
        # The last permanent error, until a later request succeeds: readiness
        # reports it, because no amount of retrying will store rows meanwhile.
        self.failure: str | None = None
        self.requests_sent = 0
        self.rows_sent = 0

    @property
    def unanswered(self) -> int:
        """Requests sent on the current connection and not answered yet."""
        return 0 if self._connection is None else len(self._connection.in_flight)

    async def start(self) -> None:
        if self._stop is not None:
            return
        loops = self._loops
        if loops is None:
            loops = self._own_loops = Supervisor()
            await loops.start()
        # Named by table alone: `projects/…/tables/records` would say no more.
        name = f"writer {self.table.rpartition('/')[2]}"
        self._stop = loops.run(name, self._run, interval=_DOWN_SECONDS)

    async def close(self, grace: float = 2.0) -> None:
        if self._stop is None:
            return
        # Rows already handed over get a moment to finish (each also has its own
        # deadline), then whatever is left fails so no caller waits forever.
        waiting = {submission.future for submission, _ in self._pending}
        if self._connection is not None:
            for batch in self._connection.in_flight:
                waiting.update(submission.future for submission, _ in batch.slots)
        if waiting:
            await asyncio.wait(waiting, timeout=grace)
        await self._stop()
        self._stop = None
        if self._own_loops is not None:
            await self._own_loops.close()
            self._own_loops = None
        if self._connection is not None:
            self._connection.abort()
            self._fail_all(self._connection.in_flight, f"{self.table}: the writer closed")
            self._connection = None
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        self._expiry.clear()
        for submission, _ in self._pending:
            submission.fail(f"{self.table}: the writer closed before the row was stored")
        self._pending.clear()

    async def append(self, rows: Sequence[bytes], deadline: float) -> list[str | None]:
        """Per row: None once stored, or BigQuery's reason for refusing it.

        `deadline` is on the event loop's clock. Raises StoreUnavailable on a
        permanent error, WriteTimeout when the deadline passes first (rows may
        still be stored later: the caller's redelivery makes a copy that
        readers remove).
        """
        if not rows:
            return []
        if self._stop is None:
            raise StoreUnavailable(f"{self.table}: the writer is not running")
        loop = asyncio.get_running_loop()
        submission = _Submission(rows, loop.create_future(), deadline)
        if len(rows) == 1:
            self._pending.append((submission, 0))
        else:
            self._pending.extend([(submission, index) for index in range(len(rows))])
        self._watch(submission, loop)
        if self._connection is None:
            self._work.set()
        else:
            self._pump()
        return await submission.future

    def _watch(self, submission: _Submission, loop: asyncio.AbstractEventLoop) -> None:
        # One timer per append (asyncio.timeout) cost more than the rest of the
        # writer at 40k appends/s. Deadlines normally arrive in order, so one
        # FIFO and one timer for its head cover them; an earlier deadline
        # behind a later one gets a timer of its own.
        expiry = self._expiry
        if expiry and submission.deadline < expiry[-1].deadline:
            loop.call_at(submission.deadline, submission.expire, self.table)
            return
        expiry.append(submission)
        if self._reaper is None:
            self._reaper = loop.call_at(submission.deadline, self._reap)

    def _reap(self) -> None:
        self._reaper = None
        expiry = self._expiry
        now = asyncio.get_running_loop().time()
        while expiry:
            head = expiry[0]
            if not head.future.done() and head.deadline > now:
                self._reaper = asyncio.get_running_loop().call_at(head.deadline, self._reap)
                return
            expiry.popleft().expire(self.table)

    def _forget_settled(self) -> None:
        # Answers come back in order, so settled submissions gather at the head.
        expiry = self._expiry
        while expiry and expiry[0].future.done():
            expiry.popleft()

    def _pump(self) -> None:
        connection = self._connection
        if connection is None or connection.retiring:
            return
        while len(connection.in_flight) < self.max_in_flight:
            batch = self._cut()
            if batch is None:
                return
            connection.send(batch)
            self.requests_sent += 1
            self.rows_sent += len(batch.rows)

    def _cut(self) -> _Batch | None:
        # The hot loop of the writer: one pass per row sent, so lookups are hoisted.
        pending = self._pending
        popleft = pending.popleft
        batch = _Batch()
        rows, slots = batch.rows, batch.slots
        add_row, add_slot = rows.append, slots.append
        max_rows, max_bytes = self._max_rows, self._max_bytes
        size = count = 0
        while pending and count < max_rows:
            slot = pending[0]
            submission = slot[0]
            if submission.future.done():
                popleft()
                continue
            row = submission.rows[slot[1]]
            size += len(row) + _ROW_OVERHEAD
            if size > max_bytes and count:
                break
            popleft()
            add_row(row)
            add_slot(slot)
            count += 1
        return batch if count else None

    def _has_live_rows(self) -> bool:
        pending = self._pending
        while pending and pending[0][0].future.done():
            pending.popleft()
        return bool(pending)

    async def _run(self) -> None:
        if self._connection is not None:
            # The connection of a run that failed (its supervisor starts it again):
            # its unanswered requests go out again on the next one.
            self._connection.abort()
            self._requeue(self._connection.in_flight)
            self._connection = None
        # The waits of a streak of failed connections, and whether one is under way.
        delays = Backoff(_BACKOFF_INITIAL, _BACKOFF_MAX)
        failing = False
        while True:
            if not self._has_live_rows():
                self._work.clear()
                await self._work.wait()
                continue
            if failing:
                await asyncio.sleep(delays.next())
            try:
                connection = await _Connection.open(self._client, self.stream, self._descriptor)
            except Exception as exc:
                failing = True
                self._on_broken(exc, (), ended=True)
                continue
            self._connection = connection
            self._pump()
            error = await self._serve(connection)
            self._connection = None
            connection.abort()
            if error is None:
                failing = False
                delays.reset()
                self._requeue(connection.in_flight)
            else:
                # A connection that got answers starts a new streak.
                if connection.answered or not failing:
                    delays.reset()
                failing = True
                self._on_broken(error, connection.in_flight, ended=True)

    async def _serve(self, connection: _Connection) -> BaseException | None:
        """Read answers until the call ends; the error that ended it, if any."""
        while True:
            try:
                response = await connection.read()
            except (GoogleAPICallError, grpc.RpcError, asyncio.InvalidStateError) as exc:
                return exc
            except Exception as exc:
                log.exception("%s: unexpected error reading AppendRows responses", self.table)
                return exc
            if response is None:
                if connection.in_flight:
                    return _StreamError(
                        grpc.StatusCode.UNAVAILABLE,
                        f"stream ended with {len(connection.in_flight)} requests unanswered",
                    )
                return None
            batch = connection.in_flight.popleft()
            if response.row_errors:
                # BigQuery refuses the whole request when any row is bad: the
                # bad rows get their reason, the others go out again.
                connection.answered += 1
                self._refuse_rows(batch, response.row_errors)
            elif response.HasField("error"):
                error = _StreamError(
                    _CODES.get(response.error.code, grpc.StatusCode.UNKNOWN), response.error.message
                )
                if is_transient(error):
                    connection.in_flight.appendleft(batch)
                    return error
                connection.answered += 1
                self._on_broken(error, (batch,), ended=False)
            else:
                connection.answered += 1
                self.failure = None
                for submission, _ in batch.slots:
                    # settle(None, …) inlined: this runs once per stored row.
                    submission.unsettled -= 1
                    if not submission.unsettled and not submission.future.done():
                        submission.future.set_result(
                            submission.outcomes or [None] * len(submission.rows)
                        )
            if response.HasField("updated_schema") and not connection.retiring:
                log.info("%s: table schema changed; replacing the connection", self.table)
                connection.retiring = True
            self._forget_settled()
            if connection.retiring:
                if not connection.in_flight:
                    connection.finish()
                    return None
                continue
            self._pump()

    def _refuse_rows(self, batch: _Batch, row_errors: Iterable[Any]) -> None:
        reasons = {error.index: error.message or "refused by BigQuery" for error in row_errors}
        again = []
        for position, slot in enumerate(batch.slots):
            reason = reasons.get(position)
            if reason is None:
                again.append(slot)
            else:
                submission, index = slot
                submission.settle(reason, index)
        self._pending.extendleft(reversed(again))

    def _requeue(self, batches: Iterable[_Batch]) -> None:
        slots = [slot for batch in batches for slot in batch.slots]
        self._pending.extendleft(reversed(slots))

    def _on_broken(self, error: BaseException, batches: Iterable[_Batch], *, ended: bool) -> None:
        """Resend after a transient error; fail the rows after a permanent one.

        `ended` says the call itself failed (not one response): rows still
        waiting to be sent would meet the same error, so they fail too rather
        than hold their pushes until the deadline.
        """
        if is_transient(error):
            log.warning("%s: AppendRows failed, resending: %s", self.table, error)
            self._requeue(batches)
            return
        detail = f"{self.table}: {status_code(error).name}: {error}"
        log.error("%s: AppendRows failed permanently: %s", self.table, error)
        self.failure = detail
        self._fail_all(batches, detail)
        if ended:
            for submission, _ in self._pending:
                submission.fail(detail)
            self._pending.clear()

    @staticmethod
    def _fail_all(batches: Iterable[_Batch], detail: str) -> None:
        for batch in batches:
            for submission, _ in batch.slots:
                submission.fail(detail)
