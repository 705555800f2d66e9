"""What a push becomes: a Record, or a Rejection that says why.

The route hands a decoded delivery to `Ingest.accept` and answers 204 when it
returns; every failure to store surfaces as a RetryLater (503).
"""

from __future__ import annotations

import functools
from typing import Annotated, Protocol

import msgspec
from msgspec import Meta

from app.errors import RetryLater
from app.ingest.batcher import Batcher
from app.ingest.envelope import PushedMessage
from app.records import MAX_ID_LENGTH, AwareDatetime, Record, Rejection, micros
from app.store import RowOutcome


class Payload(msgspec.Struct, kw_only=True, frozen=True):
    """What producers publish. Fields they add are ignored, not refused."""

    id: Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH)]
    timestamp: AwareDatetime | None = None
    # Kept as the exact JSON text the producer sent: stored without re-encoding.
    data: msgspec.Raw = msgspec.Raw(b"null")


_decode_payload = msgspec.json.Decoder(Payload).decode
_encode = msgspec.json.encode


def to_row(message: PushedMessage, ingest_time: int, *, trace_id: str | None) -> Record | Rejection:
    attributes = _encode(message.attributes).decode()
    if message.data is None:
        reason = "message.data: not valid base64"
    else:
        try:
            payload = _decode_payload(message.data)
        except msgspec.ValidationError as exc:
            reason = f"payload: {exc}"
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            reason = f"payload is not JSON: {exc}"
        else:
            return Record(
                message_id=message.message_id,
                publish_time=message.publish_time,
                ingest_time=ingest_time,
                id=payload.id,
                timestamp=None if payload.timestamp is None else micros(payload.timestamp),
                data=bytes(payload.data).decode(),
                attributes=attributes,
                subscription=message.subscription,
                delivery_attempt=message.delivery_attempt,
                trace_id=trace_id,
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
    )


class PushObserver(Protocol):
    """Told how each delivery ended; telemetry implements it (metrics, logs)."""

    def stored(self, row: Record | Rejection, outcome: RowOutcome) -> None: ...

    def retried(self, message_id: str, error: RetryLater) -> None: ...


class Ingest:
    """Validates a delivery and waits for its row to be durably stored."""

    def __init__(self, batcher: Batcher, *, observer: PushObserver | None = None) -> None:
        self._batcher = batcher
        self._observer = observer

    async def accept(
        self, message: PushedMessage, *, trace_id: str | None = None
    ) -> tuple[Record | Rejection, RowOutcome]:
        size = len(message.raw_data) + 256
        try:
            row, outcome = await self._batcher.submit(
                functools.partial(to_row, message, trace_id=trace_id), size
            )
        except RetryLater as exc:
            if self._observer is not None:
                self._observer.retried(message.message_id, exc)
            raise
        if self._observer is not None:
            self._observer.stored(row, outcome)
        return row, outcome
