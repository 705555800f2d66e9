"""The Store contract for filtered pages: every store keeps the same rows for a filter.

A filter travels in the `PageQuery`; a store applies it where it reads (SQL, or its
tail in memory), and a walk of filtered pages meets each matching first copy once,
in key order, whatever the page size. Half the rows are stored half an hour ago
(outside every tail in memory, so read by the store's SQL) and half now (in the
tail, where a store keeps one); the serving tier stamps every row itself as it
commits, and reads its older rows from Spanner and the newest from its tail.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from app.errors import BadParameter
from app.records import Record, Rejection
from app.store import PageQuery, Store
from app.store.filters import AttributeIs, FieldIs, RowFilter
from app.store.producers import PRODUCER_ATTRIBUTE
from tests.store_contract.test_contract import (
    HOUR,
    check_page,
    horizon,
    record,
    rejection,
    stamp,
    stored_time,
)

# Keys a JSONPath must quote: a dot, a space, a quote of the other kind, non-ASCII.
ODD_KEYS = ("a.b", "k it", "q'x", "clé", "$x[0]")


def attributes(i: int) -> dict[str, str]:
    found = {
        PRODUCER_ATTRIBUTE: f"p{i % 3}",
        "recordline-epoch": "1",
        "recordline-seq": str(i),
        "region": "eu" if i % 2 else "us",
        ODD_KEYS[i % len(ODD_KEYS)]: "odd ☃" if i % 4 == 0 else "odd",
    }
    if i % 5 == 0:
        found["only-some"] = ""
    return found


async def stored_rows(store: Store, count: int = 24) -> tuple[list[Record], int, int]:
    """`count` records with varied attributes and ids, half of them half an hour old,
    and later copies of two that differ; their first copies in key order, where a
    walk starts and where it ends."""
    old = stamp() - HOUR // 2
    rows = [
        record(
            f"f-{i:02}",
            old + i if i < count // 2 else None,
            id=f"id-{i % 4}",
            attributes=json.dumps(attributes(i)),
        )
        for i in range(count)
    ]
    for start in range(0, count, 5):
        assert all(o is None for o in await store.append(rows[start : start + 5]))
    # Redeliveries (published when the first copy was) that say something else: no
    # read may show them.
    await store.append(
        [
            record(
                "f-01",
                publish_time=rows[1].publish_time,
                attributes=json.dumps({"region": "mars", "a.b": "odd"}),
                id="id-x",
            ),
            record(
                "f-14",
                publish_time=rows[14].publish_time,
                attributes=json.dumps({PRODUCER_ATTRIBUTE: "p9"}),
                id="id-9",
            ),
        ]
    )
    times = {r.message_id: await stored_time(store, r.message_id) for r in rows}
    until = await horizon(store, max(times.values()))
    firsts = sorted(rows, key=lambda r: (times[r.message_id], r.message_id))
    return firsts, min(times.values()) - 1, until


def expected(rows: list[Record], keep: RowFilter) -> list[str]:
    found = []
    for row in rows:
        given = json.loads(row.attributes)
        if keep.message_id is not None and row.message_id != keep.message_id:
            continue
        if keep.record_id is not None and row.id != keep.record_id:
            continue
        if all(given.get(c.key) == c.value for c in keep.attributes):
            found.append(row.message_id)
    return found


async def filtered_walk(
    store: Store, kind: type[Record] | type[Rejection], keep: RowFilter, **bounds: int
) -> list[str]:
    """The message ids a follower of filtered pages meets, each page checked."""
    after: tuple[int, str] = (bounds["since"], "")
    seen: list[str] = []
    for _ in range(1000):
        asked = PageQuery(
            after_time=after[0],
            after_message_id=after[1],
            before_time=bounds["before"],
            limit=bounds["limit"],
            filter=keep,
        )
        page = await store.page(kind, asked)
        check_page(asked, page.rows, (page.after_time, page.after_message_id), page.complete_until)
        assert all(keep.matches(row) for row in page.rows), "a row the filter does not keep"
        seen += [row.message_id for row in page.rows]
        after = (page.after_time, page.after_message_id)
        if after == (bounds["before"], ""):
            return seen
    raise AssertionError("the walk did not end")


FILTERS = [
    RowFilter(attributes=(AttributeIs("region", "eu"),)),
    RowFilter(attributes=(AttributeIs(PRODUCER_ATTRIBUTE, "p1"),)),
    RowFilter(attributes=(AttributeIs(PRODUCER_ATTRIBUTE, "p0"), AttributeIs("region", "us"))),
    *(RowFilter(attributes=(AttributeIs(key, "odd"),)) for key in ODD_KEYS),
    RowFilter(attributes=(AttributeIs("clé", "odd ☃"),)),
    RowFilter(attributes=(AttributeIs("only-some", ""),)),
    RowFilter(attributes=(AttributeIs("region", "mars"),)),
    RowFilter(attributes=(AttributeIs("nowhere", "eu"),)),
    RowFilter(record_id="id-2"),
    RowFilter(record_id="id-x"),
    RowFilter(message_id="f-07"),
    RowFilter(message_id="f-14", attributes=(AttributeIs(PRODUCER_ATTRIBUTE, "p2"),)),
    RowFilter(record_id="id-1", attributes=(AttributeIs("region", "eu"),)),
]


@pytest.mark.slow
async def test_a_filtered_walk_meets_each_matching_first_copy_once(store: Store) -> None:
    rows, since, until = await stored_rows(store)
    for at, keep in enumerate(FILTERS):
        want = expected(rows, keep)
        # Pages of one row for a few (a page per row is many queries on BigQuery).
        for limit in (1, 100) if at < 3 else (4,):
            seen = await filtered_walk(store, Record, keep, since=since, before=until, limit=limit)
            assert seen == want, (keep, limit)
    # A filter that keeps every row is the unfiltered walk.
    everything = RowFilter(attributes=(AttributeIs("recordline-epoch", "1"),))
    seen = await filtered_walk(store, Record, everything, since=since, before=until, limit=7)
    assert seen == [r.message_id for r in rows]


@pytest.mark.slow
async def test_a_full_filtered_page_resumes_after_its_last_row(store: Store) -> None:
    rows, since, until = await stored_rows(store)
    keep = RowFilter(attributes=(AttributeIs("region", "us"),))
    want = expected(rows, keep)
    asked = PageQuery(
        after_time=since, after_message_id="", before_time=until, limit=2, filter=keep
    )
    page = await store.page(Record, asked)
    assert [r.message_id for r in page.rows] == want[:2]
    assert (page.after_time, page.after_message_id) == (
        page.rows[-1].ingest_time,
        page.rows[-1].message_id,
    )


@pytest.mark.slow
async def test_rejections_filter_by_attribute_and_message(store: Store) -> None:
    old = stamp() - HOUR // 2
    refused = [
        rejection(
            f"j-{i}",
            old + i if i < 3 else None,
            attributes=json.dumps({PRODUCER_ATTRIBUTE: f"p{i % 2}", "k it": str(i)}),
        )
        for i in range(6)
    ]
    await store.append(refused)
    times = [await stored_time(store, r.message_id) for r in refused]
    until = await horizon(store, max(times))
    bounds = {"since": min(times) - 1, "before": until}
    p1 = RowFilter(attributes=(AttributeIs(PRODUCER_ATTRIBUTE, "p1"),))
    for limit in (1, 100):
        assert await filtered_walk(store, Rejection, p1, **bounds, limit=limit) == [
            "j-1",
            "j-3",
            "j-5",
        ]
    spaced = RowFilter(attributes=(AttributeIs("k it", "4"),))
    assert await filtered_walk(store, Rejection, spaced, **bounds, limit=5) == ["j-4"]
    one = RowFilter(message_id="j-2")
    assert await filtered_walk(store, Rejection, one, **bounds, limit=5) == ["j-2"]
    # A rejection has no record id: none matches one.
    none = RowFilter(record_id="j-2")
    assert await filtered_walk(store, Rejection, none, **bounds, limit=5) == []


@pytest.mark.slow
@pytest.mark.parametrize("kind", [Record, Rejection])
async def test_a_typed_field_filter_where_there_are_no_typed_columns_is_refused(
    make: Callable[[int], Store], kind: type[Record] | type[Rejection]
) -> None:
    store = make(0)
    await store.start()
    try:
        await store.append([record("t-1")])
        until = await horizon(store, await stored_time(store, "t-1"))
        keep = RowFilter(fields=(FieldIs(("amount",), "5"),))
        asked = PageQuery(
            after_time=0, after_message_id="", before_time=until, limit=10, filter=keep
        )
        with pytest.raises(BadParameter) as refused:
            await store.page(kind, asked)
        assert refused.value.extra["parameter"] == "field"
    finally:
        await store.close()
