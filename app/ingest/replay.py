"""Replay: messages that did not make it, through today's validation, once.

An operator hands back messages as Pub/Sub delivered them (the rejected table's
raw bytes, or a dead-letter subscription's), each under its original message id,
attributes and publish time; each goes the push's way (decoding, validation,
group commit, an answer only once durable) with a new ingest time. A message
stored already is not stored again, one rejected already not rejected twice: a
second replay changes nothing.

Design: docs/operations.md#replaying-dead-letters
"""

from __future__ import annotations

import asyncio
import binascii
import decimal
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta

from app.errors import BadRequest, InvalidBody
from app.ingest.envelope import MAX_SUBSCRIPTION, PushAttributes, PushedMessage
from app.records import (
    ID_PATTERN,
    MAX_ID_LENGTH,
    AwareDatetime,
    Record,
    Rejection,
    TimeOutOfRange,
    micros,
    unaddressable,
)
from app.store import PublisherDuplicate, RowOutcome, Store

if TYPE_CHECKING:  # the replay tool imports this module's types alone, to start fast
    from app.ingest.service import Ingest

log = logging.getLogger("recordline.replay")

# One request's messages: one look-up (a billed query on BigQuery) for all of
# them, then one group commit; 100 keeps a request well inside Cloud Run's timeout.
MAX_REPLAY_MESSAGES = 100
# What an operator may say of a replay, kept with it in the access record.
MAX_NOTE_CHARACTERS = 500
# What a replay says an edit changed, in paths: as many as the console shows, each
# cut as the access record cuts a parameter (a deep or long-named member is said so).
MOST_CHANGES = 20
MOST_PATH_CHARACTERS = 256


class ReplayMessage(msgspec.Struct, kw_only=True, frozen=True):
    message_id: Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)]
    publish_time: AwareDatetime
    data: Annotated[str, Meta(description="The message data, base64")]
    # Held to what a push may carry: a replay stores what Pub/Sub could have delivered.
    attributes: PushAttributes = msgspec.field(default_factory=dict)
    subscription: (
        Annotated[
            str,
            Meta(
                max_length=MAX_SUBSCRIPTION,
                description="The subscription that first delivered it (a rejection's "
                "`subscription`), kept on the stored record",
            ),
        ]
        | None
    ) = None


class ReplayRequest(msgspec.Struct, kw_only=True, frozen=True):
    messages: Annotated[list[ReplayMessage], Meta(min_length=1, max_length=MAX_REPLAY_MESSAGES)]
    dry_run: bool = False
    note: (
        Annotated[
            str,
            Meta(
                max_length=MAX_NOTE_CHARACTERS,
                description="Why, in the operator's words (a payload edited, and what for): "
                "kept with the replay's messages and outcomes in the access record",
            ),
        ]
        | None
    ) = None


Outcome = Literal["stored", "rejected", "already_stored"]


class ReplayResult(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    message_id: str
    outcome: Outcome
    reason: str | None = None
    changed: (
        Annotated[
            list[str],
            Meta(
                description="What the message changes of its rejection as kept: the paths "
                "of `data` and `attributes` that differ (`data.a.b`, `data.items[0]`, "
                "`(added)`, `(removed)`, `data (text)` where either side is not JSON), "
                "`publish_time` and `subscription`, at most "
                f"{MOST_CHANGES} and then `…`; empty where nothing changed. Absent where "
                "no rejection of it is kept to compare with (a dead letter, a message "
                "never rejected), its data is over 64 KiB, or the read of it failed (logged)"
            ),
        ]
        | None
    ) = None


class ReplayAnswer(msgspec.Struct, kw_only=True, frozen=True):
    results: list[ReplayResult]
    dry_run: bool


class Replay:
    """Replays messages through `ingest`, asking `store` what each became before."""

    def __init__(self, ingest: Ingest, store: Store, *, hides: Hides | None = None) -> None:
        self._ingest = ingest
        self._store = store
        # What a mask hides, said whole in what an edit changed (the access record's).
        self._hides = hides

    async def replay(self, request: ReplayRequest) -> ReplayAnswer:
        """One look-up for the whole batch, then every message to store in one
        group commit: a batch costs one query and about one append, not one of
        each per message."""
        messages = [_pushed(i, m) for i, m in enumerate(request.messages)]
        await self._store.barrier()  # a record replayed a moment ago is seen
        before = await self._store.seen([m.message_id for m in messages])
        # What each rejected one was, to say what an edit changes (one more read).
        rejected = sorted({m for m, state in before.items() if state == "rejected"})
        kept = await self._kept(rejected) if rejected else {}
        # By message id: a message id given twice in a batch is replayed once.
        answers: dict[str, ReplayResult] = {}
        storing: dict[str, Awaitable[tuple[Record | Rejection, RowOutcome]]] = {}
        for message in messages:
            message_id = message.message_id
            if message_id in answers or message_id in storing:
                continue
            if before.get(message_id) == "stored":
                answers[message_id] = _already(message_id)
                continue
            row = await self._ingest.row(message)  # today's schema and mapping
            if isinstance(row, Rejection) and (request.dry_run or message_id in before):
                # Still invalid; already rejected (or a dry run): nothing to write.
                answers[message_id] = _rejected(message_id, row.reason)
            elif request.dry_run:
                answers[message_id] = ReplayResult(message_id=message_id, outcome="stored")
            else:
                storing[message_id] = self._ingest.accept(message)
        # All at once, so they share appends; every one is settled before the
        # answer, so a retried request never races rows still in flight.
        settled = await asyncio.gather(*storing.values(), return_exceptions=True)
        for message_id, done in zip(storing, settled, strict=True):
            if isinstance(done, BaseException):
                raise done
            stored, outcome = done
            if isinstance(outcome, PublisherDuplicate):  # its sequence is stored already
                answers[message_id] = _already(message_id)
            elif outcome is not None:  # the store refused the row and kept it as a rejection
                answers[message_id] = _rejected(message_id, outcome)
            elif isinstance(stored, Rejection):
                answers[message_id] = _rejected(message_id, stored.reason)
            else:
                log.info("message %s replayed and stored", message_id)
                answers[message_id] = ReplayResult(message_id=message_id, outcome="stored")
        results: list[ReplayResult] = []
        answered: set[str] = set()
        for message in messages:
            result = answers[message.message_id]
            if message.message_id in answered and result.outcome != "rejected":
                result = _already(message.message_id)  # its first occurrence stored it
            answered.add(message.message_id)
            original = kept.get(message.message_id)
            if original is not None:
                changed = changes(original, message, self._hides)
                result = msgspec.structs.replace(result, changed=changed)
            results.append(result)
        return ReplayAnswer(results=results, dry_run=request.dry_run)

    async def _kept(self, message_ids: list[str]) -> dict[str, Rejection]:
        """The rejections of `message_ids` to compare with, or none where the read fails
        (an outage, the cost cap, a row that does not decode): what an edit changed is
        said beside a replay, never in its way, so they are replayed uncompared."""
        try:
            return await self._store.rejections(message_ids)
        except Exception as exc:  # each is logged; none stops the replay
            log.warning(
                "the rejections of %d messages could not be read to say what their edits "
                "changed; replayed uncompared: %s",
                len(message_ids),
                exc,
            )
            return {}


def changes(original: Rejection, message: PushedMessage, hides: Hides | None = None) -> list[str]:
    """The paths at which `message` differs from the rejection it replays, as the
    console says them: of `data` and `attributes` (JSON, member by member), then
    `publish_time` and `subscription`; at most MOST_CHANGES, then "…". A member `hides`
    says a mask hides is said whole, never a member inside it: its names may be data."""
    found: list[str] = []
    data = message.data if message.data is not None else message.raw_data
    if data != original.data:
        _differences(_json(original.data), _json(data), "data", found, hides)
    attributes = _json(original.attributes.encode())
    if attributes is not _NOT_JSON:
        _differences(attributes, dict(message.attributes), "attributes", found)
    if message.publish_time != original.publish_time:
        found.append("publish_time")
    if message.subscription != original.subscription:
        found.append("subscription")
    said = [p if len(p) <= MOST_PATH_CHARACTERS else f"{p[:MOST_PATH_CHARACTERS]}…" for p in found]
    return said[:MOST_CHANGES] + (["…"] if len(said) > MOST_CHANGES else [])


# What of a payload's path (its members' names from the root) a mask hides, if any.
Hides = Callable[[Sequence[str]], str | None]
_NOT_JSON: Final = object()


def _sorted(value: Any) -> bytes:
    return msgspec.json.encode(value, order="sorted")


def _json(data: bytes) -> Any:
    try:
        return _decode_compared(data)
    except (msgspec.DecodeError, RecursionError):
        return _NOT_JSON


def _differences(
    before: Any, after: Any, path: str, found: list[str], hides: Hides | None = None
) -> None:
    """Into `found`, each path under `path` where `after` differs from `before`: walked
    with a stack (a payload may nest deeper than Python recurses), in key order, and
    no further than one past MOST_CHANGES; a member `hides` names is compared whole.
    Each container's members are named as they are met, not all at once: an edit may
    hold a million members where its rejection held one, and the walk stops at the
    first twenty-one of them."""
    if before is _NOT_JSON or after is _NOT_JSON:
        found.append(f"{path} (text)")
        return
    stack: list[Iterator[_Step]] = [iter([(path, (), before, after)])]
    while stack and len(found) <= MOST_CHANGES:
        step = next(stack[-1], None)
        if step is None:
            stack.pop()
            continue
        at, steps, old, new = step
        if old is _GONE or new is _GONE:
            found.append(f"{at} ({'added' if old is _GONE else 'removed'})")
            continue
        whole = hides is not None and steps and hides(steps) is not None
        if not whole and isinstance(old, dict) and isinstance(new, dict):
            stack.append(_members(at, steps, old, new))
        elif not whole and isinstance(old, list) and isinstance(new, list):
            stack.append(_elements(at, steps, old, new))
        elif _differ(old, new):
            found.append(at)


# Where a walk is: the path said, the members' names from the root, the two values.
_Step = tuple[str, tuple[str, ...], Any, Any]


def _members(
    at: str, steps: tuple[str, ...], old: dict[str, Any], new: dict[str, Any]
) -> Iterator[_Step]:
    """The members of two objects, the first's in its order, then those it lacks."""
    for key, value in old.items():
        yield f"{at}.{key}", (*steps, key), value, new.get(key, _GONE)
    for key, value in new.items():
        if key not in old:
            yield f"{at}.{key}", (*steps, key), _GONE, value


def _elements(at: str, steps: tuple[str, ...], old: list[Any], new: list[Any]) -> Iterator[_Step]:
    """The elements of two arrays, by index (an index is no member's name)."""
    for i in range(max(len(old), len(new))):
        yield (
            f"{at}[{i}]",
            steps,
            old[i] if i < len(old) else _GONE,
            new[i] if i < len(new) else _GONE,
        )


def _differ(old: Any, new: Any) -> bool:
    """Whether two JSON values differ: `true` from 1 and 1.0 from 1 too, as their JSON
    does (members in any order)."""
    try:
        return bool(old != new) or _sorted(old) != _sorted(new)
    except RecursionError:  # nested past comparing: said changed, as text would be
        return True


_GONE: Final = object()  # a member one side has and the other has not


_decode_json = msgspec.json.Decoder().decode
# What an edit changed reads each number as the decimal its text spells, not the nearest
# float: a payload is stored as sent, so 0.1 made 0.10000000000000001 is an edit.
_decode_compared = msgspec.json.Decoder(float_hook=decimal.Decimal).decode
# Strict, as the OpenAPI document reads: the framework converts its request bodies
# leniently (`"dry_run": 0` would be false, a number a publish time).
_decode_request = msgspec.json.Decoder(ReplayRequest).decode


def check_body(body: bytes, decode: Callable[[bytes], object] = _decode_request) -> None:
    """Raise BadRequest unless `body` is JSON the framework can decode into a request,
    and InvalidBody, naming the field, unless `decode` reads it (by default as a
    ReplayRequest) as the OpenAPI document describes it, without conversions.

    The framework's decoder lets invalid UTF-8 inside a string and nesting past
    its recursion limit through as errors of its own: those are caught here first.
    """
    try:
        _decode_json(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("body is nested too deeply to read") from None
    try:
        decode(body)
    except msgspec.ValidationError as exc:
        # msgspec says where as "… - at `$.messages[0].dry_run`".
        reason, _, where = str(exc).rpartition(" - at `")
        if not reason:
            raise InvalidBody("$", str(exc)) from None
        # Of a mapping's key, "… - at `key` in `$.attributes`": the mapping, its key.
        key, marker, where = where.rpartition("in `")
        if marker and key.startswith("key`"):
            reason = f"a key: {reason}"
        raise InvalidBody(where.rstrip("`").removeprefix("$.") or "$", reason) from None


def refusal(message: Mapping[str, Any]) -> str | None:
    """Why `POST /v1/replay` would refuse `message` as one of its messages, as its 400
    says it (`publish_time: …`); None where it takes it."""
    try:
        body = msgspec.json.encode({"messages": [message]})
    except (TypeError, msgspec.EncodeError) as exc:
        return str(exc)
    try:
        check_body(body)
        _pushed(0, _decode_request(body).messages[0])
    except BadRequest as exc:
        return str(exc.detail).removeprefix("messages[0].")
    return None


def _pushed(index: int, replayed: ReplayMessage) -> PushedMessage:
    try:
        data: bytes | None = binascii.a2b_base64(replayed.data, strict_mode=True)
    except ValueError:  # not base64 (binascii.Error), or not even ASCII
        data = None
    try:
        publish_time = micros(replayed.publish_time)
    except TimeOutOfRange as exc:
        raise InvalidBody(f"messages[{index}].publish_time", str(exc)) from None
    problem = unaddressable(replayed.message_id)
    if problem is not None:
        raise InvalidBody(f"messages[{index}].message_id", problem)
    return PushedMessage(
        message_id=replayed.message_id,
        publish_time=publish_time,
        data=data,
        raw_data=replayed.data.encode(),
        attributes=replayed.attributes,
        subscription=replayed.subscription,
    )


def _already(message_id: str) -> ReplayResult:
    return ReplayResult(message_id=message_id, outcome="already_stored")


def _rejected(message_id: str, reason: str | None) -> ReplayResult:
    return ReplayResult(message_id=message_id, outcome="rejected", reason=reason)
