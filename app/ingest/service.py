"""What a push becomes: a Record, or a Rejection that says why.

The route hands a decoded delivery to `Ingest.accept` and answers 204 when it
returns; every failure to store surfaces as a RetryLater (503).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Final, Protocol

import msgspec

from app.errors import RetryLater
from app.ingest.batcher import Batcher
from app.ingest.envelope import PushedMessage
from app.ingest.payload import CONTRACT, PayloadReader, Payloads
from app.ingest.shape import Invalid
from app.ingest.signing import ProducerKeys
from app.records import CLOCK_SKEW_MICROS, Record, Rejection, moment, rfc3339
from app.settings import QUEUED_ROW_BYTES, ServerSettings
from app.store import RowOutcome
from app.store.producers import sequence_problem

_encode = msgspec.json.encode
log = logging.getLogger(__name__)


def to_row(
    message: PushedMessage,
    ingest_time: int,
    *,
    trace_id: str | None,
    reader: PayloadReader = CONTRACT,
    keys: ProducerKeys | None = None,
) -> Record | Rejection:
    attributes = _encode(message.attributes).decode()
    if message.data is None:
        reason = "message.data: not valid base64"
    elif not message.data:
        # Pub/Sub delivers a message of attributes alone without `data`: a payload
        # that is not there is said to be absent, not to be truncated JSON.
        reason = "message.data: absent or empty (the message has no payload to read a record from)"
    elif message.publish_time > ingest_time + CLOCK_SKEW_MICROS:
        # Later than it reached us: no publish time Pub/Sub gives, and the
        # deduplication of copies relies on it.
        reason = (
            f"publishTime: {rfc3339(moment(message.publish_time))} is later than the message "
            f"was received ({rfc3339(moment(ingest_time))})"
        )
    elif (unreadable := sequence_problem(message.attributes, message.publish_time)) is not None:
        reason = unreadable
    elif keys is not None and (unsigned := keys.problem(message.attributes, message.data)):
        reason = unsigned
    else:
        try:
            read = reader.read(message.data)
        except Invalid as exc:
            reason = str(exc)
        except Exception as exc:
            # A reader raises Invalid only; anything else is its bug. The message
            # is kept as a rejection, to replay once it is fixed, rather than
            # answered 500 at every redelivery until it is dead-lettered.
            log.exception("message %s: its payload could not be read", message.message_id)
            reason = f"payload could not be read ({type(exc).__name__}: {exc}); kept for replay"
        else:
            return Record(
                message_id=message.message_id,
                publish_time=message.publish_time,
                ingest_time=ingest_time,
                id=read.id,
                timestamp=read.timestamp,
                data=read.data,
                attributes=attributes,
                subscription=message.subscription,
                delivery_attempt=message.delivery_attempt,
                trace_id=trace_id,
                schema=reader.schema,
                received=message.data,
            )
    return Rejection(
        message_id=message.message_id,
        publish_time=message.publish_time,
        ingest_time=ingest_time,
        data=message.data if message.data is not None else message.raw_data,
        reason=reason,
        attributes=attributes,
        subscription=message.subscription,
        delivery_attempt=message.delivery_attempt,
        trace_id=trace_id,
        schema=reader.schema,
    )


class PushObserver(Protocol):
    """Told how each delivery ended; telemetry implements it (metrics, logs)."""

    def stored(self, row: Record | Rejection, outcome: RowOutcome) -> None: ...

    def retried(self, message_id: str, error: RetryLater) -> None: ...

    def refused(self, status: int, reason: str, detail: str) -> None:
        """A push answered 4xx before it became a row (no envelope, too large, no
        valid token): not stored, not acknowledged. `reason` names the problem type."""
        ...


DEFAULT_MAX_BODY_BYTES: Final = ServerSettings().max_body_bytes


class Ingest:
    """Validates a delivery and waits for its row to be durably stored."""

    def __init__(
        self,
        batcher: Batcher,
        payloads: Payloads,
        *,
        observer: PushObserver | None = None,
        keys: ProducerKeys | None = None,
        max_body: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self._batcher = batcher
        self._payloads = payloads
        self._observer = observer
        # Producers whose sequences must be signed (RECORDLINE_PRODUCER_KEYS).
        self._keys = keys
        # The largest body taken (RECORDLINE_MAX_BODY_BYTES): what `reserve` reserves for
        # a body that does not say how long it is.
        self._max_body = max_body

    async def row(self, message: PushedMessage) -> Record | Rejection:
        """What `message` would become now, storing nothing."""
        reader = await self._payloads.reader(message.attributes)
        return to_row(
            message, time.time_ns() // 1000, trace_id=None, reader=reader, keys=self._keys
        )

    def reserve(self, declared: int | None) -> int:
        """Room in the queue for the row of a push whose body says it is `declared` bytes
        long (as long as the largest taken, where it does not say), taken on its head,
        before a byte of its body is read: QueueFull (503) at once where the queue has no
        room for it, which costs the process next to nothing. What it reserved: `accept`
        takes it on, `unreserve` gives it back. A body longer than the largest taken
        reserves nothing: it is refused (413) as it is read."""
        if declared is None:
            declared = self._max_body
        elif declared > self._max_body:
            return 0
        size = 2 * declared + QUEUED_ROW_BYTES  # `queued_bytes`: a body holds its data at most
        self._batcher.reserve(size)
        return size

    def room(self, declared: int) -> RetryLater | None:
        """Why a push whose body says it is `declared` bytes long is refused now, if it is:
        the queue has no room for it, or the instance stops (`reserve`, taking nothing).
        Asked on its head, before it is routed or its token checked: a system whose
        queue is full costs the process nothing more for each push it refuses."""
        if declared > self._max_body:
            return None  # refused 413 as it is read
        return self._batcher.refusal(2 * declared + QUEUED_ROW_BYTES)

    def unreserve(self, reserved: int) -> None:
        """Give back what `reserve` took, for a push that is not accepted."""
        self._batcher.unreserve(reserved)

    async def accept(
        self, message: PushedMessage, *, trace_id: str | None = None, reserved: int = 0
    ) -> tuple[Record | Rejection, RowOutcome]:
        """Store `message`'s row, in the room `reserve`d for it (if any); a RetryLater if
        it is not stored in time."""
        # What its row holds while it waits (`queued_bytes`, written out: a push is the
        # request this service answers most): the record's text and the message data it
        # came from (`Record.received`), each at most the data's length.
        data = message.data if message.data is not None else message.raw_data
        size = 2 * len(data) + QUEUED_ROW_BYTES
        try:
            # The schema a message names is fetched (once) before its row is
            # built: the batcher builds rows synchronously, in ingest order.
            reader = self._payloads.ready(message.attributes)
            if reader is None:
                try:
                    reader = await self._payloads.reader(message.attributes)
                except BaseException:
                    self._batcher.unreserve(reserved)
                    raise
            row, outcome = await self._batcher.submit(
                functools.partial(
                    to_row, message, trace_id=trace_id, reader=reader, keys=self._keys
                ),
                size,
                reserved,
            )
        except RetryLater as exc:
            if self._observer is not None:
                self._observer.retried(message.message_id, exc)
            raise
        if self._observer is not None:
            self._observer.stored(row, outcome)
        return row, outcome
