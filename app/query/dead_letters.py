"""`GET /v1/dead-letters`: a system's dead letters, newest first, for operators to see
beside its rejections and redrive through `POST /v1/replay`.

A page reads one UTC day of `dead_letters` at most (BigQuery bills a day's partition
whole): a day holding fewer than asked ends the page with a token to the newest older
day holding any (partition metadata). Each row is shown whatever it holds (`view`),
with whether its message is stored since and why a replay would refuse it, if it would.

Design: docs/operations.md#replaying-dead-letters
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final

import msgspec

from app.errors import BadParameter, NotFound
from app.query.page_token import PageToken, PageTokens
from app.query.served import served
from app.records import DAY_MICROS, MAX_ID_LENGTH, MAX_MICROS, micros, rfc3339_micros, unaddressable
from app.store import READ_ROUTE, Store
from app.store.dead_letters import (
    PAGE_BYTES,
    SOURCE_DELIVERY_COUNT,
    SOURCE_PUBLISH_TIME,
    DeadLetter,
    DeadLetterQuery,
    ReadsDeadLetters,
    day_of,
    replayed,
    size,
    source_subscription,
)

# A page of dead letters, unless the caller asks for fewer.
DEFAULT_DEAD_LETTERS: Final = 100
# How far ahead of this instance's clock Pub/Sub's may have stamped a dead letter.
CLOCKS_AGREE_MICROS: Final = 60_000_000
LISTING: Final = "dead-letters"
# Where dead letters are on a store that reads none.
ELSEWHERE: Final = (
    "this store reads no dead letters (they are in BigQuery's dead_letters, beside a "
    "BigQuery store): they wait on the system's dead-letter subscription, "
    "<system>-dead-letter-replay, which `recordline replay dead-letters` pulls and replays"
)


class DeadLetterView(msgspec.Struct, kw_only=True):
    """A dead letter as `GET /v1/dead-letters` shows it."""

    message_id: str | None
    # When Pub/Sub published it to the dead-letter topic.
    publish_time: str
    # The data as base64 (null: the column is NULL), and as text where it is UTF-8.
    data: str | None
    text: str | None
    # The attributes where they are a JSON object of strings, else the text they are.
    attributes: dict[str, str] | None
    attributes_text: str | None
    # What Pub/Sub added as it gave up: the subscription (`projects/P/subscriptions/S`),
    # how many deliveries it was given, and when the original was published.
    source_subscription: str | None
    delivery_count: int | None
    source_publish_time: str | None
    # The BigQuery subscription that wrote the row.
    subscription_name: str | None
    # Whether its message is stored since (by a replay, or a later delivery).
    stored: bool
    # Why `POST /v1/replay` would refuse it as it stands; null where it takes it.
    unreplayable: str | None


class DeadLettersPage(msgspec.Struct, kw_only=True):
    dead_letters: list[DeadLetterView]
    next_page_token: str | None


# Why `POST /v1/replay` would refuse a message as it stands (None: it takes it).
Refusal = Callable[[Mapping[str, Any]], str | None]


def _takes_all(message: Mapping[str, Any]) -> str | None:
    return None


class DeadLetterReads:
    """`GET /v1/dead-letters`: one system's dead letters, newest first. `store` reads
    them (None where it reads none); `observed` answers which are stored since;
    `refusal` is the replay's own check of a message (`app.ingest.replay.refusal`)."""

    def __init__(
        self,
        store: Store | ReadsDeadLetters,
        observed: Store,
        tokens: PageTokens,
        *,
        refusal: Refusal = _takes_all,
        clock: Any = time.time_ns,
    ) -> None:
        self._store = store if isinstance(store, ReadsDeadLetters) else None
        self._observed = observed
        self._tokens = tokens
        self._refusal = refusal
        self._clock = clock

    def _token(self, low: int, before: int, letter_id: str) -> str:
        """A page token going on before (`before`, `letter_id`), no older than `low`."""
        return self._tokens.encode(
            PageToken(
                after_time=low,
                after_message_id="",
                until=before,
                listing=LISTING,
                newest=True,
                # A longer id is cut, to what a token holds whatever its characters:
                # what it passes over is what shares its first 1,024 bytes and its
                # microsecond.
                before_message_id=_cut(letter_id),
            )
        )

    async def page(
        self,
        *,
        since: datetime | None,
        until: datetime | None,
        limit: int,
        page_token: str | None,
    ) -> DeadLettersPage:
        if self._store is None:
            raise NotFound(ELSEWHERE)
        if page_token is not None:
            token = self._tokens.decode(page_token)
            if token.listing != LISTING:
                raise BadParameter("page_token", f"was issued by /v1/{token.listing or 'records'}")
            low, high = token.after_time, token.until or 0
            before: tuple[int, str] | None = (high, token.before_message_id)
            high += 1
        else:
            now = self._clock() // 1000 + CLOCKS_AGREE_MICROS
            low = 0 if since is None else _micros(since)
            high = now if until is None else min(_micros(until), now)
            before = None
            # As asked, not as bounded: a range wholly later than now, or before the
            # epoch, holds none (an empty page), it is no range ending before it starts.
            if until is not None and since is not None and until <= since:
                raise BadParameter("until", "must be later than since")
        # One UTC day at most, the newest asked (that of the newest time a dead letter
        # may have: before the cursor, or at it where an id may be before its id):
        # BigQuery bills a day's partition whole.
        newest = high - 1 if before is None else before[0] - (not before[1])
        start = max(low, day_of(newest))
        query = DeadLetterQuery(
            since=start, until=high, before=before, limit=limit, most_bytes=PAGE_BYTES
        )
        letters = await self._store.dead_letter_page(query) if high > start else []
        served(len(letters), masked=False)
        next_token = None
        if letters and (len(letters) == limit or sum(map(size, letters)) >= PAGE_BYTES):
            last = letters[-1]
            next_token = self._token(low, last.publish_time, last.message_id or "")
        elif start > low:
            # Every dead letter of the day read: on from the newest older day holding any.
            older = await self._store.newest_dead_letter_day(low, start)
            if older is not None:
                next_token = self._token(low, min(older + DAY_MICROS, start), "")
        return DeadLettersPage(dead_letters=await self._views(letters), next_page_token=next_token)

    async def _views(self, letters: list[DeadLetter]) -> list[DeadLetterView]:
        # Only an id a message may be stored under can be stored since.
        ids = sorted(
            {x.message_id for x in letters if x.message_id and not unaddressable(x.message_id)}
        )
        states = {}
        if ids:
            route = READ_ROUTE.set("/v1/dead-letters")
            try:
                states = await self._observed.seen(ids)
            finally:
                READ_ROUTE.reset(route)
        return [
            view(x, stored=states.get(x.message_id or "") == "stored", refusal=self._refusal)
            for x in letters
        ]


def view(letter: DeadLetter, *, stored: bool, refusal: Refusal = _takes_all) -> DeadLetterView:
    """How `letter` is shown, whatever its columns hold."""
    data = letter.data
    attributes = _attributes(letter.attributes)
    published = rfc3339_micros(letter.publish_time)
    given = attributes or {}
    if letter.message_id is None:
        unreplayable: str | None = "it has no message id (NULL)"
    elif data is None:
        unreplayable = "its data is missing (NULL)"
    elif attributes is None and letter.attributes is not None:
        unreplayable = "its attributes are not a JSON object of strings"
    else:
        unreplayable = refusal(replayed(letter.message_id, published, data, given))
    count = given.get(SOURCE_DELIVERY_COUNT, "")
    return DeadLetterView(
        message_id=letter.message_id,
        publish_time=published,
        data=None if data is None else base64.b64encode(data).decode(),
        text=_text(data),
        attributes=attributes,
        attributes_text=letter.attributes if attributes is None else None,
        source_subscription=source_subscription(given),
        delivery_count=int(count) if _COUNT.fullmatch(count) else None,
        source_publish_time=given.get(SOURCE_PUBLISH_TIME),
        subscription_name=letter.subscription_name,
        stored=stored,
        unreplayable=unreplayable,
    )


_decode_attributes = msgspec.json.Decoder(dict[str, str]).decode
# A delivery count as Pub/Sub writes it: digits, within what JSON readers take whole.
_COUNT = re.compile(r"[0-9]{1,15}")


def _attributes(text: str | None) -> dict[str, str] | None:
    """A JSON object of strings, as Pub/Sub writes attributes; None for anything else."""
    if text is None:
        return None
    try:
        return _decode_attributes(text)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None


def _text(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


def _cut(message_id: str) -> str:
    """`message_id`'s first MAX_ID_LENGTH bytes of UTF-8, whole characters: no more
    than a page token (MAX_TOKEN_LENGTH characters of base64) holds beside the rest,
    where as many characters of up to four bytes each would not fit."""
    encoded = message_id.encode()
    if len(encoded) <= MAX_ID_LENGTH:
        return message_id
    return encoded[:MAX_ID_LENGTH].decode(errors="ignore")


def _micros(when: datetime) -> int:
    # No dead letter is older than the epoch, nor a token's bound later than its end.
    return min(max(micros(when), 0), MAX_MICROS)


__all__ = ["DEFAULT_DEAD_LETTERS", "DeadLetterReads", "DeadLetterView", "DeadLettersPage", "view"]
