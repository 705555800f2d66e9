"""The tail in memory (`app.store.tail`) holds its bytes at most, and pages to a budget."""

from __future__ import annotations

from app.records import Record
from app.store import PageQuery, row_bytes
from app.store.tail import Tail, held

MIB = 1024 * 1024


def record(n: int, size: int) -> Record:
    """The `n`th record, stored at n + 1, of `size` characters of data, and the message
    data it came from (as the push path makes it)."""
    return Record(
        message_id=f"m-{n:02}",
        publish_time=n,
        ingest_time=n + 1,
        id="r",
        data="x" * size,
        received=b"x" * size,
    )


def test_the_tail_holds_its_bytes_at_most_dropping_the_oldest() -> None:
    # Once bounded by its rows alone (50,000): 50,000 records of 10 MB.
    tail = Tail(max_bytes=10 * MIB)
    tail.reset(0)
    tail.add([record(n, MIB) for n in range(10)], now=11)
    assert held(record(0, MIB)) > 2 * MIB  # what it shows, and the data it came from
    assert 0 < tail.bytes <= 10 * MIB
    assert tail.bytes == sum(held(record(n, MIB)) for n in range(10 - len(tail), 10))
    # What it no longer holds is read from the store: it covers from the last one dropped.
    kept = 10 - len(tail)
    assert tail.start == (kept, f"m-{kept - 1:02}")
    assert not tail.covers(PageQuery(after_time=0, after_message_id="", before_time=99, limit=9))
    page = tail.page(
        PageQuery(
            after_time=tail.start[0], after_message_id=tail.start[1], before_time=99, limit=99
        ),
        99,
    )
    assert [r.message_id for r in page.rows] == [f"m-{n:02}" for n in range(kept, 10)]


def test_a_page_of_the_tail_ends_once_its_rows_hold_the_budget() -> None:
    tail = Tail()
    tail.reset(0)
    tail.add([record(n, MIB) for n in range(6)], now=7)
    budget = 3 * MIB
    assert 2 * row_bytes(record(0, MIB)) < budget <= 3 * row_bytes(record(0, MIB))
    asked = PageQuery(after_time=0, after_message_id="", before_time=99, limit=99, max_bytes=budget)
    page = tail.page(asked, 99)
    # Full at the row that reaches the budget: the next page goes on after it.
    assert [r.message_id for r in page.rows] == ["m-00", "m-01", "m-02"]
    assert (page.after_time, page.after_message_id) == (3, "m-02")
    rest = tail.page(
        PageQuery(
            after_time=3, after_message_id="m-02", before_time=99, limit=99, max_bytes=budget
        ),
        99,
    )
    assert [r.message_id for r in rest.rows] == ["m-03", "m-04", "m-05"]
    # Three rows hold the budget again: full, though the tail has no more.
    assert (rest.after_time, rest.after_message_id) == (6, "m-05")
    last = tail.page(
        PageQuery(
            after_time=6, after_message_id="m-05", before_time=99, limit=99, max_bytes=budget
        ),
        99,
    )
    assert (last.rows, last.after_time, last.after_message_id) == ([], 99, "")
