"""The access record on BigQuery: lines appended to `access_record` through its
`_default` stream, at least once, and read back once each by a query that bills the
days its bounds reach, on the layout Terraform declares (bigquery.tf)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.store.access import AccessLine, AccessQuery, page_of
from app.store.bigquery.store import BigQueryStore
from tests.bigquery.billing import MIB, BillingModel
from tests.bigquery.fake_jobs import LAYOUTS, FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite

DAY = 86_400_000_000
NOW = 1_790_000_000_000_000


def line(time: int, n: int, action: str = "read") -> AccessLine:
    entry = f'{{"action": "{action}", "path": "/v1/records", "rows": {n}, "pad": "{"x" * 200}"}}'
    return AccessLine(
        time=time, id=f"i-{n:06d}", action=action, principal=None, status=200, entry=entry
    )


async def test_a_line_appended_twice_is_stored_twice_and_read_once(
    make_store: Callable[..., Any], write_fake: FakeBigQueryWrite
) -> None:
    store: BigQueryStore = await make_store()
    lines = [line(NOW - n, n) for n in range(10)]
    await store.keep_access(lines)
    # As the _default stream stores a batch sent again after its answer was lost.
    await store.keep_access(lines[:4])
    stored = write_fake.rows("access_record")
    assert len(stored) == 14
    assert {r["id"] for r in stored} == {x.id for x in lines}
    query = AccessQuery(since=0, until=NOW + 1, limit=100)
    assert await store.access_page(query) == page_of(query, lines)


async def test_a_page_bills_the_days_its_bounds_reach(
    make_store: Callable[..., Any], jobs_fake: FakeBigQueryJobs
) -> None:
    store: BigQueryStore = await make_store()
    # 30 days of lines, a row standing for 2,000: some 11 MiB a day.
    lines = [
        line(NOW - day * DAY - n * 1_000_000, day * 1000 + n)
        for day in range(30)
        for n in range(20)
    ]
    await store.keep_access(lines)
    jobs_fake.billing = BillingModel(
        layouts=LAYOUTS,
        kinds=jobs_fake.billing.kinds,
        row_weight=2_000,
        clock=lambda: NOW / 1e6 + 86_400,
    )

    async def billed(query: AccessQuery) -> int:
        before = len(jobs_fake.queries)
        assert await store.access_page(query) == page_of(query, lines)
        (bill,) = [q.bill for q in jobs_fake.queries[before:]]
        assert bill is not None
        return bill.bytes_billed

    whole = await billed(AccessQuery(since=0, until=NOW + 1, limit=50))
    last_day = await billed(AccessQuery(since=NOW - DAY + 1, until=NOW + 1, limit=50))
    # Its bounds prune the other days (the two UTC days it touches are read, and
    # clustering on `time` keeps to their blocks in range), where the whole record
    # bills every day of it.
    assert whole > 30 * 10 * MIB
    assert last_day < whole // 15
    # The cursor is a bound too: a page from a line of the fifth day back bills the
    # days from there on, not the newer ones.
    cursor = (NOW - 5 * DAY, "i-005000")
    older = await billed(AccessQuery(since=0, until=NOW + 1, before=cursor, limit=50))
    assert older < whole * 27 // 30
