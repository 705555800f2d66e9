"""The Store contract for the access record: every store keeps the lines it is given,
each once however often it is given, and reads them back newest first page after page
exactly as the oracle (`app.store.access.page_of`) reads the same lines, whatever the
bounds, action, principal and cursor asked."""

from __future__ import annotations

import json
import random

import pytest

from app.store import Store
from app.store.access import AccessLine, AccessQuery, KeepsAccess, key, page_of

DAY = 86_400_000_000
NOW = 1_790_000_000_000_000
ACTIONS = ["read", "export", "replay", "pass"]
PRINCIPALS = [None, "ana@example.com", "bo@example.com", "read pass", "é\"'\n<x>"]


def lines(n: int, seed: int = 7) -> list[AccessLine]:
    """`n` lines over two days, several at the same microsecond, of every action and
    principal, entries of every JSON shape a line holds."""
    rng = random.Random(seed)
    made = []
    for i in range(n):
        time = NOW - rng.randrange(2 * DAY) if i % 5 else NOW - DAY
        action = rng.choice(ACTIONS)
        principal = rng.choice(PRINCIPALS)
        entry = {
            "action": action,
            "principal": principal,
            "path": f"/v1/records/{i}",
            "parameters": [["where", "data.k = 'ü\\u0000'"]],
            "rows": i,
            "masked": bool(i % 2),
        }
        made.append(
            AccessLine(
                time=time,
                id=f"instance-{i % 3}-{i:06d}",
                action=action,
                principal=principal,
                status=rng.choice([200, 206, 403, 499]),
                entry=json.dumps(entry, ensure_ascii=False),
            )
        )
    return made


def keeps(store: Store) -> KeepsAccess:
    assert isinstance(store, KeepsAccess), f"{type(store).__name__} keeps no access record"
    return store


async def walk(store: KeepsAccess, query: AccessQuery) -> list[AccessLine]:
    """Every line `query` asks for, page after page from each page's last line."""
    read: list[AccessLine] = []
    before = query.before
    while True:
        page = await store.access_page(
            AccessQuery(
                since=query.since,
                until=query.until,
                before=before,
                action=query.action,
                principal=query.principal,
                limit=query.limit,
            )
        )
        assert len(page) <= query.limit
        read += page
        if len(page) < query.limit:
            return read
        before = key(page[-1])


async def test_lines_are_kept_once_and_read_back_as_the_oracle_reads_them(store: Store) -> None:
    keeper = keeps(store)
    made = lines(240)
    await keeper.keep_access(made[:150])
    # A write retried after its answer was lost: the same lines again, with more.
    await keeper.keep_access(made[100:])
    queries = [
        AccessQuery(since=0, until=NOW + 1, limit=500),
        AccessQuery(since=0, until=NOW + 1, limit=17),
        AccessQuery(since=NOW - DAY, until=NOW - DAY + 1, limit=3),
        AccessQuery(since=NOW - DAY // 2, until=NOW, action="export", limit=5),
        AccessQuery(since=0, until=NOW + 1, principal="é\"'\n<x>", limit=4),
        AccessQuery(since=0, until=NOW + 1, principal="nobody", limit=4),
        AccessQuery(since=0, until=NOW + 1, principal="anyone", limit=4),
        AccessQuery(since=0, until=NOW + 1, before=(NOW - DAY, "instance-1-000100"), limit=9),
    ]
    for query in queries:
        expected = page_of(AccessQuery(**{**_fields(query), "limit": 10_000}), made)
        assert await walk(keeper, query) == expected, query
    # A line reads back as it was given, byte for byte.
    [first] = await keeper.access_page(AccessQuery(since=0, until=NOW + 1, limit=1))
    assert first == page_of(AccessQuery(since=0, until=NOW + 1, limit=1), made)[0]
    assert json.loads(first.entry)["parameters"] == [["where", "data.k = 'ü\\u0000'"]]


async def test_an_empty_record_reads_empty(store: Store) -> None:
    keeper = keeps(store)
    assert await keeper.access_page(AccessQuery(since=0, until=NOW, limit=10)) == []
    await keeper.keep_access([])
    assert await keeper.access_page(AccessQuery(since=0, until=NOW, limit=10)) == []


@pytest.mark.parametrize("limit", [1, 2])
async def test_lines_of_one_microsecond_page_by_their_id(store: Store, limit: int) -> None:
    keeper = keeps(store)
    same = [
        AccessLine(time=NOW, id=f"i-{n}", action="read", principal=None, status=200, entry="{}")
        for n in range(5)
    ]
    await keeper.keep_access(same)
    read = await walk(keeper, AccessQuery(since=NOW, until=NOW + 1, limit=limit))
    assert [line.id for line in read] == ["i-4", "i-3", "i-2", "i-1", "i-0"]


def _fields(query: AccessQuery) -> dict[str, object]:
    return {name: getattr(query, name) for name in query.__struct_fields__}
