"""A system's dead letters as a store reads them: the rows Pub/Sub's BigQuery
subscription on the dead-letter topic writes to `dead_letters` (Terraform's
modules/system), newest first by (`publish_time`, `message_id` or ""), one row a key
(the subscription writes at least once), for operators to see and redrive. Every column
may be NULL, `data` any bytes, `attributes` any text: a row is read as it is, and judged
where it is shown (app.query.dead_letters). A row of no publish time is never read.
Stores that hold none (DuckDB, the memory store) do not implement `ReadsDeadLetters`.

Design: docs/operations.md#replaying-dead-letters
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any, Final, Protocol, runtime_checkable

import msgspec

from app.records import DAY_MICROS

# A page holds at most so many dead letters…
MOST_DEAD_LETTERS: Final = 500
# …and at most so many bytes of their data and attributes (a larger one alone), as a
# page of records holds 4 MiB of rows: a dead letter may be Pub/Sub's largest message.
PAGE_BYTES: Final = 4 * 1024 * 1024
# Dead-letter forwarding keeps the original's publish time, the subscription that gave
# up on it (and that subscription's project), and how many deliveries it was given, in
# these attributes.
SOURCE_PUBLISH_TIME: Final = "CloudPubSubDeadLetterSourceTopicPublishTime"
SOURCE_PROJECT: Final = "CloudPubSubDeadLetterSourceSubscriptionProject"
SOURCE_SUBSCRIPTION: Final = "CloudPubSubDeadLetterSourceSubscription"
SOURCE_DELIVERY_COUNT: Final = "CloudPubSubDeadLetterSourceDeliveryCount"


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """One row of `dead_letters` as kept: each column as it is, NULL as None."""

    # When it was published to the dead-letter topic (µs since the epoch, UTC).
    publish_time: int
    message_id: str | None = None
    # The BigQuery subscription that wrote the row.
    subscription_name: str | None = None
    data: bytes | None = None
    # The attributes as the subscription wrote them: a JSON object, as text.
    attributes: str | None = None


class DeadLetterQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Dead letters newest first: `publish_time` in `[since, until)`, before `before`
    where given (the key of the last of the page before), at most `limit` of them and,
    past the first, `most_bytes` of their data and attributes (`size`)."""

    since: int
    until: int
    before: tuple[int, str] | None = None
    limit: int = MOST_DEAD_LETTERS
    most_bytes: int = PAGE_BYTES


@runtime_checkable
class ReadsDeadLetters(Protocol):
    """A store that reads the system's dead letters beside its rows."""

    async def dead_letter_page(self, query: DeadLetterQuery) -> list[DeadLetter]:
        """The query's dead letters, newest first by `key`, one for each key, as
        `page_of` reads them; StoreUnavailable (or QueryTooCostly) if it cannot."""

    async def newest_dead_letter_day(self, since: int, before: int) -> int | None:
        """The start (µs) of the newest UTC day that may hold a dead letter published
        in `[since, before)`, `before` a day's start: never later than `before`, and no
        earlier than the newest day that does hold one; None where no day does."""


def key(letter: DeadLetter) -> tuple[int, str]:
    return (letter.publish_time, letter.message_id or "")


def size(letter: DeadLetter) -> int:
    """What a dead letter counts for in a page's bytes: its data's bytes and its
    attributes' characters (BigQuery's LENGTH of each)."""
    return len(letter.data or b"") + len(letter.attributes or "")


def _first_copy(letter: DeadLetter) -> tuple[bool, str, bool, str, bool, bytes]:
    # Which of the rows of one key is read: the least by subscription, attributes and
    # data, NULL first (BigQuery's order), so that every read of the key reads the same.
    return (
        letter.subscription_name is not None,
        letter.subscription_name or "",
        letter.attributes is not None,
        letter.attributes or "",
        letter.data is not None,
        letter.data or b"",
    )


def kept(query: DeadLetterQuery, letter: DeadLetter) -> bool:
    return query.since <= letter.publish_time < query.until and (
        query.before is None or key(letter) < query.before
    )


def page_of(query: DeadLetterQuery, letters: Iterable[DeadLetter]) -> list[DeadLetter]:
    """The page `query` asks of `letters`: the oracle every store's `dead_letter_page`
    is held to."""
    unique: dict[tuple[int, str], DeadLetter] = {}
    for letter in letters:
        if not kept(query, letter):
            continue
        held = unique.get(key(letter))
        if held is None or _first_copy(letter) < _first_copy(held):
            unique[key(letter)] = letter
    page: list[DeadLetter] = []
    taken = 0
    for k in sorted(unique, reverse=True)[: query.limit]:
        if page and taken >= query.most_bytes:
            break
        page.append(unique[k])
        taken += size(unique[k])
    return page


def day_of(micros: int) -> int:
    """The start of the UTC day holding `micros`."""
    return micros // DAY_MICROS * DAY_MICROS


def newest_day_of(since: int, before: int, letters: Iterable[DeadLetter]) -> int | None:
    """The start of the newest UTC day holding a dead letter of `[since, before)`: what
    `newest_dead_letter_day` may not answer earlier than."""
    times = [x.publish_time for x in letters if since <= x.publish_time < before]
    return day_of(max(times)) if times else None


def source_subscription(attributes: Mapping[str, str]) -> str | None:
    """The subscription a dead letter was given up by, `projects/P/subscriptions/S`, as
    its attributes name it (None where they name no project and subscription)."""
    project, subscription = attributes.get(SOURCE_PROJECT), attributes.get(SOURCE_SUBSCRIPTION)
    return f"projects/{project}/subscriptions/{subscription}" if project and subscription else None


def replayed(
    message_id: str, publish_time: str, data: bytes, attributes: Mapping[str, str]
) -> dict[str, Any]:
    """A dead letter as `POST /v1/replay` takes it (one of its `messages`): its own id,
    data and attributes, the original's publish time where forwarding kept it (else its
    own, `publish_time`), and the subscription that gave up on it. What `recordline
    replay dead-letters` sends of each message it pulls, and the console of each row
    of `dead_letters`."""
    return {
        "message_id": message_id,
        "publish_time": attributes.get(SOURCE_PUBLISH_TIME) or publish_time,
        "attributes": dict(attributes),
        "data": base64.b64encode(data).decode(),
        "subscription": source_subscription(attributes),
    }
