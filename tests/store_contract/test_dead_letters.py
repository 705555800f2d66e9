"""The Store contract for dead letters, on every store that reads them (BigQuery alone
and with a serving tier: Pub/Sub's subscription on the dead-letter topic writes them to
`dead_letters`, written here as it writes them): pages newest first, one row a key,
cut by their bytes, exactly as the oracle (`app.store.dead_letters.page_of`) reads the
same rows, whatever they hold (bytes that are no UTF-8, attributes that are no JSON,
NULL in every column); and the newest day holding any, as partition metadata tells it."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from app.store import Store
from app.store.dead_letters import (
    DeadLetter,
    DeadLetterQuery,
    ReadsDeadLetters,
    day_of,
    key,
    newest_day_of,
    page_of,
)
from tests.bigquery.conftest import DATASET, PROJECT
from tests.store_contract.conftest import WRITE_FAKE

DAY = 86_400_000_000
# Months before the tests run: no day of these is within the hour partition metadata
# may not count yet.
NOW = 1_780_000_000_000_000
TABLE = f"projects/{PROJECT}/datasets/{DATASET}/tables/dead_letters"


def reads(store: Store) -> ReadsDeadLetters:
    if not isinstance(store, ReadsDeadLetters):
        pytest.skip(f"{type(store).__name__} holds no dead letters (GET /v1/dead-letters: 404)")
    return store


def write(request: pytest.FixtureRequest, rows: list[dict[str, Any]]) -> None:
    """`rows` into `dead_letters` as Pub/Sub's BigQuery subscription writes them."""
    request.node.stash[WRITE_FAKE].tables[TABLE] = list(rows)


def row(letter: DeadLetter | None = None, **columns: Any) -> dict[str, Any]:
    values = {} if letter is None else {f: getattr(letter, f) for f in letter.__struct_fields__}
    return {
        "subscription_name": None,
        "message_id": None,
        "publish_time": None,
        "data": None,
        "attributes": None,
        **values,
        **columns,
    }


def letters(n: int, seed: int = 11) -> list[DeadLetter]:
    """`n` dead letters over five days, some at one microsecond, of every shape a column
    may hold: no UTF-8, no JSON, NULL, large."""
    rng = random.Random(seed)
    made = []
    for i in range(n):
        time = NOW - rng.randrange(5 * DAY) if i % 7 else NOW - 2 * DAY
        data: bytes | None = rng.choice(
            [b'{"id": "%d"}' % i, b"\xff\xfe\x00not utf-8", b"", None, bytes(rng.randrange(9000))]
        )
        attributes = rng.choice(
            [
                '{"CloudPubSubDeadLetterSourceDeliveryCount": "32"}',
                "not json {",
                "[1, 2]",
                None,
                '{"k": "' + "é" * rng.randrange(3000) + '"}',
            ]
        )
        made.append(
            DeadLetter(
                publish_time=time,
                message_id=None if i % 11 == 5 else rng.choice([f"{i:08d}", "", "é\"'\n<x>"]),
                subscription_name=rng.choice([None, "projects/p/subscriptions/dead-letters-bq"]),
                data=data,
                attributes=attributes,
            )
        )
    return made


async def walk(
    store: ReadsDeadLetters, query: DeadLetterQuery, written: list[DeadLetter]
) -> list[DeadLetter]:
    """Every dead letter `query` asks for, page after page from each page's last, each
    page the oracle's of the dead letters `written`."""
    read: list[DeadLetter] = []
    before = query.before
    while True:
        asked = DeadLetterQuery(
            since=query.since,
            until=query.until,
            before=before,
            limit=query.limit,
            most_bytes=query.most_bytes,
        )
        page = await store.dead_letter_page(asked)
        assert page == page_of(asked, written), asked
        read += page
        if not page:
            return read
        before = key(page[-1])


async def test_dead_letters_are_read_as_the_oracle_reads_them(
    store: Store, request: pytest.FixtureRequest
) -> None:
    reader = reads(store)
    made = letters(160)
    # Written at least once: some twice, as they were, and some keys twice with other
    # columns; and a row of no publish time, which no read reaches.
    rows = [row(x) for x in made] + [row(x) for x in made[::9]]
    rows += [row(made[3], attributes="{}", subscription_name="zz"), row(message_id="no-time")]
    write(request, rows)
    written = [*made, msgspec.structs.replace(made[3], attributes="{}", subscription_name="zz")]
    everything = DeadLetterQuery(since=0, until=NOW + 1, limit=10_000, most_bytes=1 << 40)
    expected = page_of(everything, written)
    assert len(expected) > 100
    walked = await walk(reader, DeadLetterQuery(since=0, until=NOW + 1, limit=500), written)
    assert walked == expected
    for query in [
        DeadLetterQuery(since=0, until=NOW + 1, limit=13),
        DeadLetterQuery(since=0, until=NOW + 1, limit=500, most_bytes=20_000),
        DeadLetterQuery(since=NOW - 2 * DAY, until=NOW - 2 * DAY + 1, limit=2),
        DeadLetterQuery(since=NOW - 3 * DAY, until=NOW - DAY, limit=7, most_bytes=1),
        DeadLetterQuery(since=0, until=NOW + 1, before=key(expected[40]), limit=9),
        DeadLetterQuery(since=0, until=NOW + 1, before=(NOW - 2 * DAY, ""), limit=9),
    ]:
        page = await reader.dead_letter_page(query)
        assert page == page_of(query, written), query
    # What a column holds comes back as it was written, byte for byte.
    odd = [x for x in expected if x.data == b"\xff\xfe\x00not utf-8"]
    assert odd
    assert all(x.data == b"\xff\xfe\x00not utf-8" for x in odd)
    assert any(x.message_id is None for x in expected)
    assert any(x.attributes == "not json {" for x in expected)


async def test_the_newest_day_holding_dead_letters_is_the_partitions(
    store: Store, request: pytest.FixtureRequest
) -> None:
    reader = reads(store)
    assert await reader.newest_dead_letter_day(0, day_of(NOW)) is None
    made = [
        DeadLetter(publish_time=NOW - 9 * DAY, message_id="a"),
        DeadLetter(publish_time=day_of(NOW - 4 * DAY), message_id="b"),
        DeadLetter(publish_time=NOW, message_id="c"),
    ]
    write(request, [row(x) for x in made])
    for since, before in [
        (0, day_of(NOW) + DAY),
        (0, day_of(NOW)),
        (0, day_of(NOW - 4 * DAY)),
        (NOW - 20 * DAY, day_of(NOW - 4 * DAY) + DAY),
        (NOW - 8 * DAY, day_of(NOW - 4 * DAY)),
        (0, day_of(NOW - 9 * DAY)),
    ]:
        found = await reader.newest_dead_letter_day(since, before)
        assert found == newest_day_of(since, before, made), (since, before)
    # Nothing at all: no day.
    assert await reader.dead_letter_page(DeadLetterQuery(since=0, until=NOW - 10 * DAY)) == []
