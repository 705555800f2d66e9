"""POST /v1/replay: messages that did not make it, through today's validation, once.

An operator hands back messages as Pub/Sub delivered them (the rejected
table's raw bytes, or a dead-letter subscription's messages), each under its
original message id, attributes and publish time. Each goes through the same
path as a push (validation, group commit, the same acknowledgement contract:
an answer only once the row is durable), with a new ingest time, so a
follower of `/v1/records` sees a replayed record once, in ingest order at the
moment of replay.

A message already stored as a record is not stored again; one still invalid
that was already rejected is not rejected twice. Replaying twice therefore
changes nothing the second time.
"""

from __future__ import annotations

import binascii
import logging
from typing import Annotated, Literal

import msgspec
from litestar import post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from msgspec import Meta

from app.ingest.envelope import AwareDatetime, PushedMessage, micros
from app.ingest.service import MAX_ID_LENGTH, Ingest, to_row
from app.records import Rejection
from app.store import Store

log = logging.getLogger("recordline.replay")

# One request's messages: each may need a look-up (a billed query on BigQuery)
# and a durable write; 100 keeps a request well inside Cloud Run's timeout.
MAX_REPLAY_MESSAGES = 100


class ReplayMessage(msgspec.Struct, kw_only=True, frozen=True):
    message_id: Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH)]
    publish_time: AwareDatetime
    data: Annotated[str, Meta(description="The message data, base64")]
    attributes: dict[str, str] = msgspec.field(default_factory=dict)


class ReplayRequest(msgspec.Struct, kw_only=True, frozen=True):
    messages: Annotated[list[ReplayMessage], Meta(min_length=1, max_length=MAX_REPLAY_MESSAGES)]
    dry_run: bool = False


Outcome = Literal["stored", "rejected", "already_stored"]


class ReplayResult(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    message_id: str
    outcome: Outcome
    reason: str | None = None


class ReplayAnswer(msgspec.Struct, kw_only=True, frozen=True):
    results: list[ReplayResult]
    dry_run: bool


class Replay:
    """Replays messages through `ingest`, asking `store` what each became before."""

    def __init__(self, ingest: Ingest, store: Store) -> None:
        self._ingest = ingest
        self._store = store

    async def replay(self, request: ReplayRequest) -> ReplayAnswer:
        results = [await self._one(m, dry_run=request.dry_run) for m in request.messages]
        return ReplayAnswer(results=results, dry_run=request.dry_run)

    async def _one(self, replayed: ReplayMessage, *, dry_run: bool) -> ReplayResult:
        message_id = replayed.message_id
        try:
            data: bytes | None = binascii.a2b_base64(replayed.data, strict_mode=True)
        except ValueError:  # not base64 (binascii.Error), or not even ASCII
            data = None
        message = PushedMessage(
            message_id=message_id,
            publish_time=micros(replayed.publish_time),
            data=data,
            raw_data=replayed.data.encode(),
            attributes=replayed.attributes,
        )
        await self._store.barrier()  # a record replayed a moment ago is seen
        before = await self._store.message(message_id)
        if before is not None and before.status == "stored":
            return ReplayResult(message_id=message_id, outcome="already_stored")
        row = to_row(message, 0, trace_id=None)  # today's validation
        if isinstance(row, Rejection) and (dry_run or before is not None):
            # Still invalid; already rejected (or a dry run): nothing to write.
            return ReplayResult(message_id=message_id, outcome="rejected", reason=row.reason)
        if dry_run:
            return ReplayResult(message_id=message_id, outcome="stored")
        stored, outcome = await self._ingest.accept(message)
        if isinstance(stored, Rejection) or outcome is not None:
            reason = outcome or getattr(stored, "reason", None)
            return ReplayResult(message_id=message_id, outcome="rejected", reason=reason)
        log.info("message %s replayed and stored", message_id)
        return ReplayResult(message_id=message_id, outcome="stored")


@post(
    "/v1/replay",
    status_code=200,
    summary="Replay messages through today's validation (operators only)",
    description=(
        f"Up to {MAX_REPLAY_MESSAGES} messages as Pub/Sub delivered them, each under its "
        "original message id, publish time and attributes. Each is stored as a record if "
        "today's validation accepts it, kept rejected if not, and skipped if a record with "
        "its message id exists already. Answers once every stored row is durable; a 503 "
        "means retry the request. `dry_run` says what would happen and stores nothing."
    ),
    tags=["operations"],
)
async def replay(data: JSONBody[ReplayRequest], replayer: NamedDependency[Replay]) -> ReplayAnswer:
    return await replayer.replay(data)
