"""BigQueryStore against the fakes: the real clients make the real round trips."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from app.errors import StoreUnavailable
from app.records import Record, Rejection, columns
from app.settings import QuerySettings, Settings, SettingsError, StoreSettings
from app.store import PageQuery
from app.store.bigquery.paging import MAX_QUERIES_PER_PAGE
from app.store.bigquery.store import BigQueryStore
from app.store.open import open_bigquery, open_store
from tests.bigquery.conftest import BASE_TIME, DATASET, PROJECT, page_query, record
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite

Factory = Callable[..., Any]


async def test_rows_reach_storage_write_as_written(
    store: BigQueryStore, write_fake: FakeBigQueryWrite
) -> None:
    # What the contract suite reads back, here as the Storage Write API got it.
    stored = record(
        "m-1",
        BASE_TIME,
        timestamp=BASE_TIME - 5_000_000,
        data='{"text": "Ejemplo de datos", "n": 1}',
        attributes='{"origin": "test"}',
        subscription="projects/p/subscriptions/s",
        delivery_attempt=2,
        trace_id="0af7651916cd43dd8448eb211c80319c",
        schema="projects/p/schemas/orders@0a1b2c3d",
    )
    refused = Rejection(
        message_id="m-2", publish_time=BASE_TIME, ingest_time=BASE_TIME + 1, data=b"\xff"
    )
    assert await store.append([stored, refused]) == [None, None]
    assert write_fake.rows("records") == [
        {c.name: getattr(stored, c.name) for c in columns(Record)}
    ]
    assert write_fake.rows("rejected")[0]["data"] == b"\xff"


async def test_page_sends_named_parameters(
    store: BigQueryStore, jobs_fake: FakeBigQueryJobs
) -> None:
    window = int(Settings().query.dedupe_window_seconds * 1_000_000)
    await store.page(Record, page_query(BASE_TIME, "m-1", limit=7))
    sent = jobs_fake.queries[-1]
    assert sent.body["parameterMode"] == "NAMED"
    assert sent.body["useLegacySql"] is False
    assert sent.body["jobCreationMode"] == "JOB_CREATION_OPTIONAL"
    # Every read carries the cost cap, and BigQuery stops it at the read timeout.
    assert sent.body["maximumBytesBilled"] == str(Settings().query.max_bytes_billed)
    assert sent.body["jobTimeoutMs"] == str(int(StoreSettings().query_timeout_seconds * 1000))
    # The first 5 minutes held nothing, so the page widened to its upper bound.
    assert sent.params == {
        "reach": BASE_TIME - 120_000_000,
        "end": BASE_TIME + 3_600_000_000,
        "after_time": BASE_TIME,
        "after_message_id": "m-1",
        "clock_skew": 60_000_000,
        "window": window,
        "limit": 7,
    }
    assert f"`{PROJECT}.{DATASET}.records`" in sent.sql


async def test_values_never_enter_the_sql(
    store: BigQueryStore, jobs_fake: FakeBigQueryJobs
) -> None:
    hostile = "x' OR TRUE --"
    assert await store.message(hostile) is None
    assert await store.latest(hostile) is None
    for sent in jobs_fake.queries:
        assert hostile not in sent.sql
        assert hostile in sent.params.values()


async def test_a_copy_outside_the_dedupe_window_shows_again(make_store: Factory) -> None:
    # The window bounds how far back a row's earlier copy is looked for, and is
    # documented as covering the subscription's retention; this pins what
    # happens beyond it. The window is the row's own, so where a reader's
    # cursor stands does not change whether a row is shown.
    store: BigQueryStore = await make_store(query=QuerySettings(dedupe_window_seconds=1))
    await store.append([record("m-1", BASE_TIME), record("m-1", BASE_TIME + 5_000_000)])
    for cursor in (BASE_TIME, BASE_TIME + 4_500_000):
        beyond = await store.page(Record, page_query(cursor, "m-1"))
        assert [r.ingest_time for r in beyond.rows] == [BASE_TIME + 5_000_000]
    within: BigQueryStore = await make_store(query=QuerySettings(dedupe_window_seconds=10))
    assert [
        r.ingest_time for r in (await within.page(Record, page_query(BASE_TIME, "m-1"))).rows
    ] == []


async def test_read_cache_shares_identical_reads(
    make_store: Factory, jobs_fake: FakeBigQueryJobs
) -> None:
    cached: BigQueryStore = await make_store(read_cache_seconds=60)
    await cached.append([record("m-1", BASE_TIME)])
    before = len(jobs_fake.queries)
    first = await cached.page(Record, page_query(BASE_TIME - 1))
    per_page = len(jobs_fake.queries) - before
    assert await cached.page(Record, page_query(BASE_TIME - 1)) == first
    assert await cached.latest("m-1") == await cached.latest("m-1")
    assert len(jobs_fake.queries) == before + per_page + 1

    uncached: BigQueryStore = await make_store(read_cache_seconds=0)
    before = len(jobs_fake.queries)
    await uncached.page(Record, page_query(BASE_TIME - 1))
    await uncached.page(Record, page_query(BASE_TIME - 1))
    assert len(jobs_fake.queries) == before + 2 * per_page


async def test_read_cache_forgets_failures(
    make_store: Factory, jobs_fake: FakeBigQueryJobs
) -> None:
    cached: BigQueryStore = await make_store(read_cache_seconds=60)
    jobs_fake.failures.append((403, "accessDenied"))
    with pytest.raises(StoreUnavailable):
        await cached.latest("m-1")
    assert await cached.latest("m-1") is None


async def test_check(store: BigQueryStore, jobs_fake: FakeBigQueryJobs) -> None:
    await store.check()
    assert jobs_fake.queries[-1].sql == "SELECT 1"
    jobs_fake.failures.append((403, "accessDenied"))
    with pytest.raises(StoreUnavailable):
        await store.check()


def test_open_store_builds_nothing_until_started(write_fake: FakeBigQueryWrite) -> None:
    settings = Settings(
        store=StoreSettings(
            url="bigquery://my-project-1/records_eu",
            bigquery_write_endpoint=write_fake.address,
            settle_seconds=15,
        )
    )
    store = open_store(settings)
    assert isinstance(store, BigQueryStore)
    assert (store.project, store.dataset) == ("my-project-1", "records_eu")
    assert store.settle_micros == 15_000_000
    assert store.max_in_flight >= 1
    assert write_fake.connections == 0


@pytest.mark.parametrize(
    "url",
    [
        "bigquery://",
        "bigquery://p",
        "bigquery://my-project/",
        "bigquery://my-project/bad-name",
        "bigquery://my-project/d`x",
    ],
)
def test_open_bigquery_refuses_malformed_urls(url: str) -> None:
    with pytest.raises(SettingsError, match="RECORDLINE_STORE"):
        open_bigquery(Settings(store=StoreSettings(url=url)))


async def test_an_unstarted_store_is_unavailable() -> None:
    store = open_bigquery(Settings(store=StoreSettings(url="bigquery://my-project/dataset")))
    with pytest.raises(StoreUnavailable):
        await store.append([record("m-1", BASE_TIME)])
    with pytest.raises(StoreUnavailable):
        await store.check()


async def test_rejections_page_over_a_bounded_constant_range(
    store: BigQueryStore, jobs_fake: FakeBigQueryJobs
) -> None:
    await store.append(
        [Rejection(message_id="x-1", publish_time=BASE_TIME, ingest_time=BASE_TIME, data=b"x")]
    )
    await store.page(Rejection, page_query(BASE_TIME - 1, limit=2))
    sent = jobs_fake.queries[-1]
    assert sent.body["parameterMode"] == "NAMED"
    assert sent.body["maximumBytesBilled"] == str(Settings().query.max_bytes_billed)
    assert f"`{PROJECT}.{DATASET}.rejected`" in sent.sql
    assert "TIMESTAMP_MICROS(@end)" in sent.sql
    # A range far wider than a day is scanned a day and an hour at most per query.
    await store.page(
        Rejection,
        PageQuery(
            after_time=BASE_TIME + 10_000,
            after_message_id="",
            before_time=BASE_TIME + 30 * 86_400_000_000,
            limit=2,
        ),
    )
    ends = [
        q.params["end"] - q.params["after_time"] for q in jobs_fake.queries if "end" in q.params
    ]
    assert max(ends) <= 86_400_000_000 + 3_600_000_000


async def test_a_page_issues_at_most_its_stated_number_of_queries(
    store: BigQueryStore, jobs_fake: FakeBigQueryJobs
) -> None:
    # The worst case, built on purpose: nothing within a day of the cursor (three
    # widening scans), a jump through partition metadata to the day before, a
    # sparse day there (three more scans), and a row that waited an hour in
    # Pub/Sub, whose earlier copy could lie before the scan (one more query).
    day = 86_400_000_000
    first = BASE_TIME - day
    await store.append(
        [record("m-1", first), record("m-2", first + 1_000, publish_time=first - 3_600_000_000)]
    )
    before = len(jobs_fake.queries)
    page = await store.page(Record, page_query(BASE_TIME - 3 * day))
    issued = len(jobs_fake.queries) - before
    assert [r.message_id for r in page.rows] == ["m-1", "m-2"]
    assert issued == MAX_QUERIES_PER_PAGE == 9


async def test_the_stand_in_answers_a_query_job_as_well_as_a_short_query(
    store: BigQueryStore, jobs_fake: FakeBigQueryJobs
) -> None:
    # The dev stack's BigQuery stand-in answered `query_and_wait()` only: an analyst's
    # `client.query(sql).result()` (jobs.insert, then getQueryResults) got a 404.
    import asyncio

    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    assert await store.append([record("m-1", BASE_TIME), record("m-2", BASE_TIME + 1)]) == [
        None,
        None,
    ]
    sql = f"SELECT message_id FROM `{PROJECT}.{DATASET}.records` ORDER BY message_id"

    def run() -> tuple[list[str], list[str], int | None]:
        client = bigquery.Client(
            project=PROJECT,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": jobs_fake.endpoint},
        )
        try:
            job = client.query(sql)
            rows = [row["message_id"] for row in job.result()]
            again = client.get_job(job.job_id)
            short = [row["message_id"] for row in client.query_and_wait(sql)]
            return rows, short, again.total_bytes_billed if again.state == "DONE" else None
        finally:
            client.close()  # type: ignore[no-untyped-call]

    rows, short, billed = await asyncio.to_thread(run)
    assert rows == short == ["m-1", "m-2"]
    assert billed is not None
    assert billed > 0


async def test_a_page_in_the_first_hour_after_midnight_reaches_the_horizon(
    store: BigQueryStore,
) -> None:
    # Partition metadata may not count the last hour's rows yet, so a jump never
    # passes the start of the day that held the horizon an hour earlier: just after
    # midnight, yesterday. The page's scan from there must still reach the horizon,
    # or a follower from the start is told "nothing, complete" at 00:28.
    day = 86_400_000_000
    midnight = (BASE_TIME // day + 2) * day
    await store.append([record("m-1", midnight + 20 * 60_000_000)])
    page = await store.page(
        Record,
        PageQuery(
            after_time=0, after_message_id="", before_time=midnight + 28 * 60_000_000, limit=100
        ),
    )
    assert [r.message_id for r in page.rows] == ["m-1"]


async def test_a_short_page_that_ends_before_the_horizon_says_so(store: BigQueryStore) -> None:
    # A sparse old day, then nothing until the last hour: the page from the start
    # jumps to the old day and scans on from its row for a day and an hour. It ends
    # there, short of the horizon, and must not be taken as complete to the horizon.
    day = 86_400_000_000
    await store.append([record("m-old", BASE_TIME - 5 * day), record("m-new", BASE_TIME)])
    before = BASE_TIME + 3_600_000_000
    page = await store.page(
        Record, PageQuery(after_time=0, after_message_id="", before_time=before, limit=100)
    )
    assert [r.message_id for r in page.rows] == ["m-old"]
    assert page.complete_until is not None
    assert page.complete_until <= BASE_TIME
    assert (page.after_time, page.after_message_id) == (page.complete_until, "")
