"""The Store contract for counts: in each bucket, a store counts exactly the rows a walk
of its filtered pages over the range keeps (a record's first copy, a later copy of a
message never; every rejection), with a filter and without, in buckets wide and narrow.

Half the rows are stored half an hour ago and half now, and later copies of two
messages that say something else are stored after their first copies (BigQuery keeps
them, every other store keeps the first copy alone). A count over ten days reaches, on
the serving tier, below where Spanner's rows begin: BigQuery's count and Spanner's
share a bucket there.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from app.errors import BadParameter
from app.records import DAY_MICROS, Record, Rejection
from app.store import MAX_BUCKETS, CountQuery, PageQuery, Store
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

FILTERS = [
    None,
    RowFilter(attributes=(AttributeIs("region", "eu"),)),
    RowFilter(where="data.n >= 3 AND producer != 'p1'"),
    # Only the later copies say so: no read shows them, and no count counts them.
    RowFilter(attributes=(AttributeIs("region", "mars"),)),
]


def attributes(i: int) -> str:
    return json.dumps({PRODUCER_ATTRIBUTE: f"p{i % 3}", "region": "eu" if i % 2 else "us"})


async def kept_times(
    store: Store,
    kind: type[Record] | type[Rejection],
    keep: RowFilter | None,
    *,
    since: int,
    before: int,
) -> list[int]:
    """The ingest time of every row a walk of `keep`'s pages meets, each page checked."""
    after: tuple[int, str] = (since, "")
    found: list[int] = []
    for _ in range(1000):
        asked = PageQuery(
            after_time=after[0],
            after_message_id=after[1],
            before_time=before,
            limit=7,
            filter=keep,
        )
        page = await store.page(kind, asked)
        check_page(asked, page.rows, (page.after_time, page.after_message_id), page.complete_until)
        found += [row.ingest_time for row in page.rows]
        after = (page.after_time, page.after_message_id)
        if after == (before, ""):
            return found
    raise AssertionError("the walk did not end")


def bucketed(times: list[int], asked: CountQuery) -> list[int]:
    """What a count of `asked` must answer for rows stored at `times`."""
    counts = [0] * asked.buckets
    for at in times:
        if asked.since <= at < asked.until:
            counts[(at - asked.since) // asked.width] += 1
    return counts


def geometries(first: int, new: list[int], until: int) -> list[tuple[int, int, int]]:
    """`(since, until, width)` of counts over the rows: every row in a few wide
    buckets; the newest rows in narrow ones, bucket edges falling among them; the same
    cut before the last row (excluded: `until` is exclusive); ten days back to now."""
    narrow = new[0] - 1
    return [
        (first - 1, until, -(-(until - first + 1) // 7)),
        (narrow, until, max(1, -(-(until - narrow) // 200))),
        (narrow, new[-1], max(1, -(-(new[-1] - narrow) // 5))),
        (until - 10 * DAY_MICROS, until, -(-10 * DAY_MICROS // MAX_BUCKETS)),
    ]


@pytest.mark.slow
async def test_each_bucket_counts_what_a_filtered_walk_keeps_there(store: Store) -> None:
    old = stamp() - HOUR // 2
    firsts = [
        record(
            f"c-{i:02}",
            old + i if i < 8 else None,
            id=f"id-{i % 4}",
            data=json.dumps({"n": i}),
            attributes=attributes(i),
        )
        for i in range(8)
    ]
    for start in range(0, 8, 3):
        assert all(o is None for o in await store.append(firsts[start : start + 3]))
    # A redelivery of an old message, stored now and saying something else.
    mars = json.dumps({"region": "mars", PRODUCER_ATTRIBUTE: "p0"})
    await store.append(
        [record("c-01", publish_time=firsts[1].publish_time, attributes=mars, id="id-x")]
    )
    newer = [
        record(f"c-{i:02}", id=f"id-{i % 4}", data=json.dumps({"n": i}), attributes=attributes(i))
        for i in range(8, 16)
    ]
    for start in range(0, 8, 3):
        assert all(o is None for o in await store.append(newer[start : start + 3]))
    # A redelivery of a new one, in the range of the narrow buckets too.
    await store.append(
        [record("c-10", publish_time=newer[2].publish_time, attributes=mars, data='{"n": 99}')]
    )
    rows = [*firsts, *newer]
    times = {r.message_id: await stored_time(store, r.message_id) for r in rows}
    until = await horizon(store, max(times.values()))
    new = sorted(times[r.message_id] for r in newer)
    first = min(times.values())
    for keep in FILTERS:
        kept = await kept_times(store, Record, keep, since=first - 1, before=until)
        if keep is None:
            assert sorted(kept) == sorted(times.values())  # each message once
        for since, end, width in geometries(first, new, until):
            asked = CountQuery(since=since, until=end, width=width, filter=keep)
            counts = await store.counts(Record, asked)
            assert counts == bucketed(kept, asked), (keep, since, end, width)
    assert await store.counts(Record, CountQuery(since=until, until=until, width=1)) == []


@pytest.mark.slow
async def test_every_rejection_is_counted_as_the_list_shows_it(store: Store) -> None:
    old = stamp() - HOUR // 2
    refused = [
        rejection(
            f"cj-{i}",
            old + i if i < 3 else None,
            reason=["payload is not JSON", "amount: expected an integer"][i % 2],
            attributes=json.dumps({PRODUCER_ATTRIBUTE: f"p{i % 2}"}),
        )
        for i in range(6)
    ]
    await store.append(refused)
    # The same message refused again on its next delivery.
    await store.append([rejection("cj-4", attributes=refused[4].attributes)])
    times = [await stored_time(store, r.message_id) for r in refused]
    until = await horizon(store, max(times))
    first = min(times)
    for keep in (
        None,
        RowFilter(attributes=(AttributeIs(PRODUCER_ATTRIBUTE, "p0"),)),
        RowFilter(where="reason CONTAINS 'amount'"),
        RowFilter(record_id="cj-1"),  # a rejection has no record id: none is counted
    ):
        kept = await kept_times(store, Rejection, keep, since=first - 1, before=until)
        for since, end, width in geometries(first, sorted(times)[3:], until):
            asked = CountQuery(since=since, until=end, width=width, filter=keep)
            assert await store.counts(Rejection, asked) == bucketed(kept, asked), keep


@pytest.mark.slow
@pytest.mark.parametrize("kind", [Record, Rejection])
async def test_a_count_the_store_cannot_make_is_refused_naming_why(
    make: Callable[[int], Store], kind: type[Record] | type[Rejection]
) -> None:
    store = make(0)
    await store.start()
    try:
        await store.append([record("t-1")])
        until = await horizon(store, await stored_time(store, "t-1"))
        refusals = [
            # More buckets than one count answers.
            ("buckets", CountQuery(since=until - MAX_BUCKETS - 1, until=until, width=1)),
            ("buckets", CountQuery(since=0, until=until, width=0)),
            ("until", CountQuery(since=until, until=until - 1, width=1)),
            # A typed field where none is kept (and on rejections, which have none).
            (
                "field",
                CountQuery(
                    since=0,
                    until=until,
                    width=until // 10 + 1,
                    filter=RowFilter(fields=(FieldIs(("amount",), "5"),)),
                ),
            ),
        ]
        for parameter, asked in refusals:
            with pytest.raises(BadParameter) as refused:
                await store.counts(kind, asked)
            assert refused.value.extra["parameter"] == parameter
        # As many buckets as one count answers is a count.
        most = CountQuery(since=until - MAX_BUCKETS, until=until, width=1)
        assert len(await store.counts(kind, most)) == MAX_BUCKETS
    finally:
        await store.close()
