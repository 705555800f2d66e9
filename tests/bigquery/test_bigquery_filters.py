"""What a filtered read costs on BigQuery, billed by the jobs.query fake's model: no
more than the same range unfiltered (the filter reads columns a page reads anyway),
less where a search index rules blocks out, and every query under the cap."""

from __future__ import annotations

import msgspec
import pytest

from app.asgi import create_app
from app.errors import QueryTooCostly
from app.records import Record
from app.store import CountQuery, PageQuery
from app.store.bigquery.store import BigQueryStore
from app.store.filters import AttributeIs, RowFilter
from tests.bigquery.billing import MIB, BillingModel
from tests.bigquery.conftest import record
from tests.bigquery.fake_jobs import LAYOUTS, FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.bigquery.stream import DAY, NOW, SECOND, make_stream
from tests.bigquery.test_bigquery_cost import KINDS, billed_by, load, operator_settings
from tests.conftest import envelope, served

HOUR = 3600 * SECOND


async def bill(
    store: BigQueryStore, jobs: FakeBigQueryJobs, query: PageQuery
) -> tuple[list[Record], list[int]]:
    before = len(jobs.queries)
    page = await store.page(Record, query)
    cap = str(store.queries.max_bytes_billed)
    assert all(q.body["maximumBytesBilled"] == cap for q in jobs.queries[before:])
    return page.rows, billed_by(jobs, before)


@pytest.mark.slow
async def test_a_filtered_page_scans_an_hour_at_most_and_bills_no_more_than_it(
    store: BigQueryStore, write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs
) -> None:
    stream = make_stream(100, 30, stored_per_day=288)
    load(write_fake, jobs_fake, stream, block_rows=100_000)
    horizon = NOW - 15 * SECOND
    since = horizon - DAY
    # What an hour of the table costs a page (as unfiltered it scans five minutes, then
    # the hour), and what a filter that keeps nothing costs over a day.
    hour = PageQuery(after_time=since, after_message_id="", before_time=since + HOUR, limit=1000)
    every, unfiltered = await bill(store, jobs_fake, hour)
    assert every
    nowhere = RowFilter(attributes=(AttributeIs("region", "mars"),))
    day = PageQuery(
        after_time=since, after_message_id="", before_time=horizon, limit=1000, filter=nowhere
    )
    before = len(jobs_fake.queries)
    page = await store.page(Record, day)
    filtered = billed_by(jobs_fake, before)
    assert page.rows == []
    # Short: an hour scanned, then an hour from the next rows after it, and complete to
    # there; the next page goes on from there.
    following = min(r["ingest_time"] for r in stream.records if r["ingest_time"] >= since + HOUR)
    assert page.complete_until == following + HOUR
    assert (page.after_time, page.after_message_id) == (following + HOUR, "")
    # The hour's two scans, the jump's two look-ups of where the next rows are (partition
    # metadata, and one narrow column of one day), and the next hour's two scans.
    assert filtered[:2] == unfiltered
    assert len(filtered) == 6
    assert sum(filtered[2:4]) <= sum(unfiltered) / 4, (filtered, unfiltered)
    assert sum(filtered[4:]) <= sum(unfiltered) * 1.1, (filtered, unfiltered)
    assert max(filtered) <= store.queries.max_bytes_billed


@pytest.mark.slow
async def test_a_message_id_filter_reads_only_the_blocks_that_may_hold_it(
    store: BigQueryStore, write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs
) -> None:
    stream = make_stream(100, 30, stored_per_day=288)
    # Blocks of 30,000 rows, every row settled: the search index on message_id rules out
    # every block but the one holding the message.
    load(write_fake, jobs_fake, stream, block_rows=30_000, now=NOW + DAY)
    known = stream.day_old()
    # The hour around it: both pages scan five minutes of it, then all of it.
    span = {
        "after_time": known["ingest_time"] - HOUR // 2,
        "after_message_id": "",
        "before_time": known["ingest_time"] + HOUR // 2,
        "limit": 100,
    }
    _, unfiltered = await bill(store, jobs_fake, PageQuery(**span))
    one = RowFilter(message_id=known["message_id"])
    rows, filtered = await bill(store, jobs_fake, PageQuery(**span, filter=one))
    assert [r.message_id for r in rows] == [known["message_id"]]
    assert sum(filtered) * 4 < sum(unfiltered), (filtered, unfiltered)


@pytest.mark.slow
async def test_a_filtered_read_over_the_cap_is_refused_with_its_cap(
    write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs
) -> None:
    settings = operator_settings(
        write_fake, jobs_fake, RECORDLINE_QUERY_MAX_BYTES_BILLED=str(64 * MIB)
    )
    record = {"id": "1", "data": "Ejemplo de datos"}
    async with served(create_app(settings)) as client:
        sequence = {"recordline-producer": "p", "recordline-epoch": "0", "recordline-seq": "0"}
        pushed = envelope(record, attributes={**sequence, "region": "eu"})
        assert (await client.post("/pubsub/push", json=pushed)).status_code == 204
        params = {"since": "2024-01-01T00:00:00Z", "attribute": "region:eu"}
        # A filter's page scans an hour (two, past a jump): the first ones are empty, each
        # with where the next goes on. The jump skips the days no row is in, up to today,
        # which pages cover an hour at a time (where rows may not be in partition metadata).
        cheap = await client.get("/v1/records", params=params)
        pages = 1
        while cheap.status_code == 200 and not cheap.json()["records"]:
            token = cheap.json()["next_page_token"]
            cheap = await client.get("/v1/records", params={"page_token": token})
            pages += 1
        assert cheap.status_code == 200
        assert [r["id"] for r in cheap.json()["records"]] == ["1"]
        assert cheap.json()["records"][0]["attributes"]["region"] == "eu"
        assert pages <= 2 + 24
        before = len(jobs_fake.queries)
        jobs_fake.billing = BillingModel(layouts=LAYOUTS, kinds=KINDS, row_weight=10_000_000)
        costly = await client.get("/v1/records", params={**params, "producer": "p"})
        # The hours before the row's scan nothing (near midnight the first page is
        # yesterday's first hour): answered, empty; the row's hour is past the cap.
        while costly.status_code == 200 and not costly.json()["records"]:
            token = costly.json()["next_page_token"]
            costly = await client.get("/v1/records", params={"page_token": token})
        assert costly.status_code == 503
        assert "RECORDLINE_QUERY_MAX_BYTES_BILLED" in costly.json()["detail"]
    assert all(q.body["maximumBytesBilled"] == str(64 * MIB) for q in jobs_fake.queries[before:])


@pytest.mark.slow
async def test_a_count_is_one_query_billed_for_the_columns_its_rule_and_filter_read(
    store: BigQueryStore, write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs
) -> None:
    stream = make_stream(100, 2, stored_per_day=288)
    load(write_fake, jobs_fake, stream, block_rows=100_000)
    horizon = NOW - 15 * SECOND
    since = horizon - 8 * HOUR
    hours = CountQuery(since=since, until=horizon, width=HOUR)
    stored = [r["message_id"] for r in stream.records if since <= r["ingest_time"] < horizon]
    # Each message once: the stream's redelivered copies (stored again 2 s on) are left
    # out, as its pages leave them out.
    firsts = len(set(stored))
    assert firsts < len(stored)
    bills = {}
    for name, keep, total in (
        ("none", None, firsts),
        ("attribute", RowFilter(attributes=(AttributeIs("region", "eu"),)), 0),
        ("data", RowFilter(where="data.note STARTS WITH 'x'"), firsts),
    ):
        before = len(jobs_fake.queries)
        counts = await store.counts(Record, msgspec.structs.replace(hours, filter=keep))
        (bills[name],) = billed_by(jobs_fake, before)
        assert (len(counts), sum(counts)) == (8, total), name
    # Eight hours at 100 msg/s: message_id, ingest_time and publish_time alone, some 35
    # bytes of each ~480-byte row (no payload, no attributes), each filter adding the
    # column it reads.
    assert 80 * MIB < bills["none"] < 115 * MIB, bills
    assert bills["none"] < bills["attribute"] < bills["data"], bills
    # A day of payloads is past the default cap: refused, as any read past it is.
    day = CountQuery(since=horizon - DAY, until=horizon, width=HOUR, filter=keep)
    with pytest.raises(QueryTooCostly):
        await store.counts(Record, day)


@pytest.mark.slow
async def test_a_later_copy_whose_first_lies_far_before_a_count_is_counted_there(
    store: BigQueryStore,
) -> None:
    # The edge a count leaves (docs/reading.md#counting-what-a-filter-keeps): a copy
    # stored an hour after the first, published before both, is hidden from every page;
    # a count from after the first copy meets the later one alone and counts it, where
    # its pages find the first copy with a query of their own.
    at = NOW - DAY
    first = record("late-1", at, publish_time=at - 1_000)
    again = record("late-1", at + HOUR, publish_time=at - 1_000)
    await store.append([first])
    await store.append([again])
    whole = CountQuery(since=at, until=at + 2 * HOUR, width=HOUR)
    assert await store.counts(Record, whole) == [1, 0]
    after = CountQuery(since=at + HOUR // 2, until=at + 2 * HOUR, width=HOUR)
    assert await store.counts(Record, after) == [1, 0]
    page = await store.page(
        Record,
        PageQuery(after_time=after.since, after_message_id="", before_time=after.until, limit=10),
    )
    assert page.rows == []
