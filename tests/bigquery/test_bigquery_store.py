"""BigQueryStore against the fakes: the real clients make the real round trips."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from app.errors import StoreUnavailable
from app.records import Record, Rejection, columns
from app.settings import QuerySettings, Settings, StoreSettings
from app.store import MessageStatus, PageQuery, UnknownStore, open_store
from app.store.bigquery import BigQueryStore
from tests.bigquery.conftest import BASE_TIME, DATASET, PROJECT, page_query, record, walk
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite

Factory = Callable[..., Any]


async def test_rows_round_trip(store: BigQueryStore, write_fake: FakeBigQueryWrite) -> None:
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
    rejection = Rejection(
        message_id="m-2",
        publish_time=BASE_TIME,
        ingest_time=BASE_TIME + 1,
        data=b"not json \xff",
        reason="$.data: not JSON",
        attributes="{}",
    )

    assert await store.append([stored, rejection]) == [None, None]

    assert write_fake.rows("records") == [
        {c.name: getattr(stored, c.name) for c in columns(Record)}
    ]
    assert write_fake.rows("rejected")[0]["data"] == b"not json \xff"
    # JSON comes back as JSON text; BigQuery may normalize spacing and key order.
    (read,) = (await store.page(page_query())).records
    assert _same(read, stored)
    latest = await store.latest("m-1")
    assert latest is not None
    assert _same(latest, stored)
    status = await store.message("m-1")
    assert status is not None
    assert status.record is not None
    assert _same(status.record, stored)
    assert (status.status, status.ingest_time, status.reason) == ("stored", BASE_TIME, None)
    assert await store.message("m-2") == MessageStatus(
        status="rejected", ingest_time=BASE_TIME + 1, reason="$.data: not JSON"
    )
    assert await store.message("m-3") is None


def _same(read: Record, written: Record) -> bool:
    def normal(row: Record) -> dict[str, Any]:
        fields = {c.name: getattr(row, c.name) for c in columns(Record)}
        return {**fields, "data": json.loads(row.data), "attributes": json.loads(row.attributes)}

    return normal(read) == normal(written)


async def test_pages_walk_first_copies_once_in_key_order(store: BigQueryStore) -> None:
    first = [record(f"m-{i:02}", BASE_TIME + i * 1_000) for i in range(10)]
    # Redeliveries stored later: a copy with a later ingest_time, and an exact
    # copy (a resent batch whose answer was lost).
    later = [record("m-02", BASE_TIME + 50_000), record("m-07", BASE_TIME + 60_000)]
    await store.append(first)
    await store.append(later)
    await store.append([first[4]])

    for limit in (1, 3, 100):
        seen = await walk(store, limit=limit)
        assert [r.message_id for r in seen] == [r.message_id for r in first]
        assert [r.ingest_time for r in seen] == [r.ingest_time for r in first]


async def test_page_bounds(store: BigQueryStore) -> None:
    rows = [record(f"m-{i}", BASE_TIME + i) for i in range(5)]
    await store.append(rows)
    page = await store.page(
        PageQuery(
            after_time=BASE_TIME + 1, after_message_id="m-1", before_time=BASE_TIME + 4, limit=10
        )
    )
    assert [r.message_id for r in page.records] == ["m-2", "m-3"]
    # A short page examined its whole range: the next one starts at its end.
    assert (page.after_time, page.after_message_id) == (BASE_TIME + 4, "")


async def test_page_sends_named_parameters(
    store: BigQueryStore, jobs_fake: FakeBigQueryJobs
) -> None:
    window = int(Settings().query.dedupe_window_seconds * 1_000_000)
    await store.page(page_query(BASE_TIME, "m-1", limit=7))
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
        beyond = await store.page(page_query(cursor, "m-1"))
        assert [r.ingest_time for r in beyond.records] == [BASE_TIME + 5_000_000]
    within: BigQueryStore = await make_store(query=QuerySettings(dedupe_window_seconds=10))
    assert [r.ingest_time for r in (await within.page(page_query(BASE_TIME, "m-1"))).records] == []


async def test_latest_prefers_an_event_time_then_the_later_publish(store: BigQueryStore) -> None:
    await store.append(
        [
            record("m-1", BASE_TIME, id="r", timestamp=BASE_TIME - 10, data='"old event"'),
            record(
                "m-2",
                BASE_TIME + 1,
                id="r",
                timestamp=None,
                publish_time=BASE_TIME + 9,
                data='"no event time"',
            ),
            record(
                "m-3",
                BASE_TIME + 2,
                id="r",
                timestamp=BASE_TIME - 5,
                publish_time=BASE_TIME - 99,
                data='"newest event"',
            ),
            record("m-4", BASE_TIME + 3, id="other", timestamp=BASE_TIME, data='"another record"'),
        ]
    )
    latest = await store.latest("r")
    assert latest is not None
    assert latest.data == '"newest event"'

    await store.append(
        [
            record("m-5", BASE_TIME + 4, id="s", timestamp=None, publish_time=BASE_TIME + 1),
            record("m-6", BASE_TIME + 5, id="s", timestamp=None, publish_time=BASE_TIME + 2),
        ]
    )
    latest = await store.latest("s")
    assert latest is not None
    assert latest.message_id == "m-6"
    assert await store.latest("missing") is None


async def test_message_prefers_the_stored_copy(store: BigQueryStore) -> None:
    await store.append(
        [
            Rejection(
                message_id="m-1", publish_time=BASE_TIME, ingest_time=BASE_TIME, reason="bad"
            ),
            record("m-1", BASE_TIME + 10),
        ]
    )
    status = await store.message("m-1")
    assert status is not None
    assert status.status == "stored"
    # A replay batch's look-up agrees, in one query, and counts each message once.
    await store.append(
        [
            Rejection(
                message_id="m-2", publish_time=BASE_TIME, ingest_time=BASE_TIME + 20, reason="bad"
            ),
            record("m-3", BASE_TIME + 30),
            record("m-3", BASE_TIME + 40),
        ]
    )
    states = await store.seen(["m-1", "m-2", "m-3", "never", "m-2"])
    assert states == {"m-1": "stored", "m-2": "rejected", "m-3": "stored"}
    assert await store.seen([]) == {}


async def test_read_cache_shares_identical_reads(
    make_store: Factory, jobs_fake: FakeBigQueryJobs
) -> None:
    cached: BigQueryStore = await make_store(read_cache_seconds=60)
    await cached.append([record("m-1", BASE_TIME)])
    before = len(jobs_fake.queries)
    first = await cached.page(page_query(BASE_TIME - 1))
    per_page = len(jobs_fake.queries) - before
    assert await cached.page(page_query(BASE_TIME - 1)) == first
    assert await cached.latest("m-1") == await cached.latest("m-1")
    assert len(jobs_fake.queries) == before + per_page + 1

    uncached: BigQueryStore = await make_store(read_cache_seconds=0)
    before = len(jobs_fake.queries)
    await uncached.page(page_query(BASE_TIME - 1))
    await uncached.page(page_query(BASE_TIME - 1))
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


def test_from_url_builds_nothing_until_started(write_fake: FakeBigQueryWrite) -> None:
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
def test_from_url_refuses_malformed_urls(url: str) -> None:
    with pytest.raises(UnknownStore):
        BigQueryStore.from_url(url, Settings())


async def test_an_unstarted_store_is_unavailable() -> None:
    store = BigQueryStore.from_url("bigquery://my-project/dataset", Settings())
    with pytest.raises(StoreUnavailable):
        await store.append([record("m-1", BASE_TIME)])
    with pytest.raises(StoreUnavailable):
        await store.check()


def rejection(message_id: str, ingest_time: int) -> Rejection:
    return Rejection(
        message_id=message_id,
        publish_time=ingest_time - 1_000,
        ingest_time=ingest_time,
        data=b"\xffnot json",
        reason="data: not JSON",
        attributes='{"k":"v"}',
    )


async def test_rejections_page_in_key_order_over_a_bounded_constant_range(
    store: BigQueryStore, jobs_fake: FakeBigQueryJobs
) -> None:
    rows = [rejection(f"x-{i}", BASE_TIME + i * 1_000) for i in range(5)]
    await store.append(rows)
    seen: list[Rejection] = []
    after_time, after_id = BASE_TIME, ""
    for _ in range(10):
        query = PageQuery(
            after_time=after_time,
            after_message_id=after_id,
            before_time=BASE_TIME + 10_000,
            limit=2,
        )
        page = await store.rejections(query)
        seen += page.rejections
        after_time, after_id = page.after_time, page.after_message_id
        if after_time == BASE_TIME + 10_000:
            break
    assert seen == rows  # every column round-trips, raw bytes included
    sent = jobs_fake.queries[-1]
    assert sent.body["parameterMode"] == "NAMED"
    assert sent.body["maximumBytesBilled"] == str(Settings().query.max_bytes_billed)
    assert f"`{PROJECT}.{DATASET}.rejected`" in sent.sql
    assert "TIMESTAMP_MICROS(@end)" in sent.sql
    # A range far wider than a day is scanned one day at most per page.
    await store.rejections(
        PageQuery(
            after_time=BASE_TIME + 10_000,
            after_message_id="",
            before_time=BASE_TIME + 30 * 86_400_000_000,
            limit=2,
        )
    )
    assert jobs_fake.queries[-1].params["end"] == BASE_TIME + 10_000 + 86_400_000_000
