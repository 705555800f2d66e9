"""A read's charge (`app.query.charged`): held while what was made of it is, given back
at once when the read or what is made of it fails, and never held past a failure."""

from __future__ import annotations

import gc

import pytest

from app.budget import Budget
from app.errors import StoreUnavailable
from app.query.charged import READ_COPIES, Charged, read_charged
from app.records import Record
from app.store import row_bytes

MIB = 1024 * 1024


class Made:
    """What a read's rows are made into (a page, a chunk): it holds the charge."""


def rows(count: int) -> list[Record]:
    return [
        Record(message_id=f"m-{n}", publish_time=n, ingest_time=n, id=str(n), data="x" * 100)
        for n in range(count)
    ]


async def read_of(max_bytes: int) -> tuple[list[Record], tuple[int, str], int]:
    found = rows(10)
    return found, (found[-1].ingest_time, found[-1].message_id), found[-1].ingest_time


async def test_a_read_is_held_until_what_was_made_of_it_is_gone() -> None:
    budget = Budget(16 * MIB, read_room=4 * MIB)

    sizes: list[int] = []

    async def make(charged: Charged, charge: object) -> Made:
        assert len(charged.rows) == 10
        sizes.append(charged.size)
        return Made()

    made = await read_charged(budget, None, MIB, read_of, make)
    # No less than what the rows hold, twice: the rows and the answer made of them.
    assert sizes[0] >= sum(row_bytes(r) for r in rows(10))
    assert budget.held == READ_COPIES * sizes[0]
    del made
    gc.collect()
    assert budget.held == 0


@pytest.mark.parametrize("fails", ["read", "make"])
async def test_a_read_that_fails_gives_back_its_charge_at_once(fails: str) -> None:
    budget = Budget(16 * MIB, read_room=4 * MIB)
    made: list[Made] = []

    async def read(max_bytes: int) -> tuple[list[Record], tuple[int, str], int]:
        if fails == "read":
            raise StoreUnavailable("down")
        return await read_of(max_bytes)

    async def make(charged: Charged, charge: object) -> Made:
        # Made, then failed (a rejection's page asking the store what became of each).
        made.append(Made())
        if fails == "make":
            raise StoreUnavailable("down")
        return made[-1]

    with pytest.raises(StoreUnavailable):
        await read_charged(budget, None, MIB, read, make)
    # Given back though what was made before the failure is still held here.
    assert budget.held == 0


async def test_a_page_holds_what_its_rows_hold_while_what_is_made_of_them_is_made() -> None:
    # The room given for the read is cut to what its rows hold before its answer is
    # made: a rejections page asks the store what became of each message (on BigQuery a
    # query, seconds at worst), and holds no more than it needs meanwhile.
    from app.query.page_token import PageTokens
    from app.query.service import PAGE_BYTES, REJECTIONS, Reader
    from app.records import Rejection
    from app.store.duckdb.store import DuckDBStore

    store = DuckDBStore(":memory:")
    await store.start()
    budget = Budget(512 * MIB)
    reader = Reader(
        store,
        pending_horizon=lambda: 2**62,
        tokens=PageTokens("a-secret-long-enough-for-tokens"),
        budget=budget,
    )
    held_while_made: list[int] = []
    seen = store.seen

    async def watched(message_ids: list[str]) -> dict[str, object]:
        held_while_made.append(budget.held)
        return await seen(message_ids)  # type: ignore[return-value]

    store.seen = watched  # type: ignore[method-assign]
    try:
        await store.append(
            [Rejection(message_id=f"m{n}", publish_time=n, ingest_time=n + 1) for n in range(3)]
        )
        cursor = reader.cursor(REJECTIONS, None, None, 10, None)
        read = await reader.excerpt(REJECTIONS, cursor, 10, PAGE_BYTES)
        assert [r.message_id for r in read.rows] == ["m0", "m1", "m2"]
        assert held_while_made == [READ_COPIES * read.size]
        assert budget.held == READ_COPIES * read.size < READ_COPIES * PAGE_BYTES
        del read
        gc.collect()
        assert budget.held == 0
    finally:
        await store.close()
