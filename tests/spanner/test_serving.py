"""The serving tier against the Spanner emulator and the BigQuery fakes.

What the contract suite cannot say: that a page is complete exactly up to its
read time, that both stores hold the same rows stamped alike whatever fails
between them, that readers beyond Spanner's reach go to BigQuery, that
followers share their reads, and how start-up meets a wrong or absent database.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import msgspec
import pytest
from google.api_core.exceptions import InvalidArgument

from app.asgi import create_app
from app.errors import StoreUnavailable
from app.records import TABLES, Record, Rejection
from app.settings import QuerySettings, Settings
from app.store import PageQuery
from app.store.open import spanner_database
from app.store.spanner.schema import (
    RETENTION_PLACEHOLDER,
    add_column,
    ddl,
    ddl_template,
    ddl_text,
)
from app.store.spanner.serving import Committed, SchemaMismatch, SpannerServing
from app.store.spanner.tail import TailCache
from app.store.tail import held as tail_held
from app.store.tiered.store import READ_LAG_MICROS, TieredStore
from tests.bigquery.fake_storage_write import ErrorResponse, FakeBigQueryWrite
from tests.conftest import envelope, served
from tests.spanner.emulator import SpannerEmulator
from tests.spanner.exporting import drain, exporter, settle_clock
from tests.spanner.test_schema import _RecordWithRegion
from tests.waiting import until


async def _status(answer: Any, status: int) -> bool:
    return bool((await answer).status_code == status)


pytestmark = pytest.mark.emulator

DAY = 86_400_000_000
Make = Callable[..., Any]


def record(message_id: str, **fields: Any) -> Record:
    now = time.time_ns() // 1000
    values: dict[str, Any] = {
        "publish_time": now - 1_000,
        "id": message_id,
        "data": '"x"',
        **fields,
    }
    return Record(message_id=message_id, ingest_time=now, **values)


def query(after: int, before: int, *, after_id: str = "", limit: int = 100) -> PageQuery:
    return PageQuery(after_time=after, after_message_id=after_id, before_time=before, limit=limit)


def stored_rows(write_fake: FakeBigQueryWrite) -> dict[str, int]:
    """What BigQuery holds: message id -> ingest time, every copy alike."""
    held: dict[str, set[int]] = {}
    for row in write_fake.rows("records"):
        held.setdefault(row["message_id"], set()).add(row["ingest_time"])
    assert all(len(times) == 1 for times in held.values()), held
    return {message_id: times.pop() for message_id, times in held.items()}


async def test_a_page_is_complete_exactly_up_to_its_read_time(make_tiered: Make) -> None:
    store: TieredStore = await make_tiered()
    cache = TailCache(store.serving.rows_between, refresh_seconds=0)
    await cache.refresh(time.time_ns() // 1000 - 1_000_000)  # the cache begins here
    await store.append([record("m-1")])
    status = await store.message("m-1")
    assert status is not None
    t = status.ingest_time
    since = t - 1_000_000
    # Straight from Spanner: a read at T has not seen the commit at T; one at
    # T + 1 µs has.
    assert await store.serving.page(Record, query(since, t), t) == []
    (found,) = await store.serving.page(Record, query(since, t + 1), t + 1)
    assert found.message_id == "m-1"
    # Through the cache of the tail, refreshed to T, then to T + 1 µs.
    await cache.refresh(t)
    upto_t = await cache.page(query(since, t + 1), t)
    assert (upto_t.rows, upto_t.complete_until) == ([], t)
    assert (upto_t.after_time, upto_t.after_message_id) == (t, "")
    await cache.refresh(t + 1)
    upto_next = await cache.page(query(since, t + 1), t + 1)
    assert ([r.message_id for r in upto_next.rows], upto_next.complete_until) == (["m-1"], t + 1)


async def test_the_tail_read_is_every_record_of_its_range_in_key_order_or_none(
    make_tiered: Make,
) -> None:
    store: TieredStore = await make_tiered()
    # Three commits, their messages spread over the shards.
    for batch in range(3):
        await store.append([record(f"m-{batch}-{i}") for i in range(20)])
    times = sorted({s.ingest_time for s in await _statuses(store, 3, 20)})
    first, second, third = times
    between = await store.serving.rows_between(first, third, 100)
    assert between is not None
    # [since, before): the first commit's rows and the second's, not the third's.
    assert {r.ingest_time for r in between} == {first, second}
    assert [(r.ingest_time, r.message_id) for r in between] == sorted(
        (r.ingest_time, r.message_id) for r in between
    )
    assert len(between) == 40
    # More than the limit: None, never some of them.
    assert await store.serving.rows_between(first, third + 1, 59) is None
    assert len(await store.serving.rows_between(first, third + 1, 60) or []) == 60
    # More bytes than the tail holds: None too, the rows past them never read.
    held = sum(map(tail_held, between))
    assert await store.serving.rows_between(first, third, 100, max_bytes=held - 1) is None
    assert len(await store.serving.rows_between(first, third, 100, max_bytes=held) or []) == 40
    assert await store.serving.rows_between(third + 1, third + 2, 10) == []


async def _statuses(store: TieredStore, batches: int, size: int) -> list[Any]:
    found = []
    for batch in range(batches):
        for i in range(size):
            status = await store.message(f"m-{batch}-{i}")
            assert status is not None
            found.append(status)
    return found


async def test_spanner_acknowledges_and_bigquery_gets_its_rows_stamped_alike(
    make_tiered: Make, write_fake: FakeBigQueryWrite
) -> None:
    store: TieredStore = await make_tiered()
    given = [record(f"m-{i}") for i in range(5)]
    await store.append(given)
    await store.append([record("m-2", data='"a redelivery with other content"')])
    # Acknowledged on Spanner's commit alone: BigQuery has nothing from the push path.
    assert stored_rows(write_fake) == {}
    spanner = {}
    for r in given:
        status = await store.message(r.message_id)
        assert status is not None
        assert status.record is not None
        assert status.record.data == '"x"'
        spanner[r.message_id] = status.ingest_time
    # One commit: one timestamp, later than what the batcher stamped.
    assert len(set(spanner.values())) == 1
    assert min(spanner.values()) >= max(r.ingest_time for r in given)
    # The exporter gives BigQuery the same rows at the same time, once each.
    await settle_clock()
    await drain(exporter(store))
    assert stored_rows(write_fake) == spanner
    assert [r["data"] for r in write_fake.rows("records")] == ['"x"'] * 5


async def test_new_messages_are_inserted_without_a_read_and_a_redelivery_reads(
    database: str, spanner_emulator: SpannerEmulator
) -> None:
    # The usual group commit, every message new, is one commit that reads nothing (its
    # cost: infra/terraform/spanner.tf sizes the instance's CPU by it); a batch with a
    # message stored before, or one message twice, is the transaction that reads which,
    # and hands back the stored copy whatever the later one says.
    serving = SpannerServing(spanner_database(database), emulator_host=spanner_emulator.host)
    await serving.start()
    try:
        given = [record("n-1"), record("n-2")]
        first = await serving.commit(given, within=10)
        assert (first.new, serving.reading_commits) == (2, 0)
        # Stamped with the commit's time, later than what the batcher stamped.
        stamped = {r.ingest_time for r in first.rows}
        assert len(stamped) == 1
        assert stamped.pop() >= max(r.ingest_time for r in given)
        again = await serving.commit(
            [record("n-3"), record("n-1", data='"other content"')], within=10
        )
        assert (again.new, serving.reading_commits) == (1, 1)
        held = {r.message_id: r for r in again.rows}
        assert held["n-1"].data == '"x"'
        assert held["n-1"].ingest_time == first.rows[0].ingest_time
        twice = await serving.commit([record("n-4"), record("n-4", data='"b"')], within=10)
        assert (twice.new, serving.reading_commits) == (1, 2)
        assert [r.data for r in twice.rows] == ['"x"', '"x"']
        # Nothing refused was stored in part: n-3 is there once, from the second commit.
        status = await serving.message("n-3")
        assert status is not None
        assert status.ingest_time == again.rows[0].ingest_time
    finally:
        await serving.close()


async def test_bigquery_down_pushes_are_acknowledged_and_exported_once_it_is_back(
    serving_settings: Callable[..., Settings], write_fake: FakeBigQueryWrite
) -> None:
    write_fake.inject("records", *[ErrorResponse(grpc.StatusCode.UNAVAILABLE)] * 3)
    async with served(create_app(serving_settings())) as client:
        for i in range(3):
            body = envelope({"id": f"r-{i}", "data": i}, message_id=f"m-{i}")
            assert (await client.post("/pubsub/push", json=body)).status_code == 204
        listed = (await client.get("/v1/records")).json()["records"]
        assert [r["message_id"] for r in listed] == ["m-0", "m-1", "m-2"]
        # The exporter (in the app) retries until BigQuery takes the rows.
        await until(lambda: len(stored_rows(write_fake)) == 3, timeout=30, what="the export")
        message = (await client.get("/v1/messages/m-1")).json()
    assert sorted(stored_rows(write_fake)) == ["m-0", "m-1", "m-2"]
    assert len(write_fake.rows("records")) == 3
    assert stored_rows(write_fake)["m-1"] == _micros(message["ingest_time"])


def _micros(text: str) -> int:
    from datetime import datetime

    from app.records import micros

    return micros(datetime.fromisoformat(text))


async def test_readers_beyond_spanners_reach_read_bigquerys_settled_days(
    make_tiered: Make, jobs_fake: Any
) -> None:
    # Rows stored now, read ten days from now: they lie before where Spanner's
    # reads begin, so pages and look-ups of them go to BigQuery, over days
    # that no row can still enter.
    later = 10 * DAY * 1000
    writer: TieredStore = await make_tiered()
    await writer.append([record(f"m-{i}") for i in range(3)])
    await settle_clock()
    exported = exporter(writer)
    await drain(exported)
    # And BigQuery holds every row of the ten days since: the watermark says so.
    assert await exported.ledger.claim()
    for table in ("records", "rejected"):
        progress = await exported.ledger.progress(table)
        ahead = time.time_ns() // 1000 + later // 1000
        await exported.ledger.record(msgspec.structs.replace(progress, watermark=ahead))
    store: TieredStore = await make_tiered(clock=lambda: time.time_ns() + later)
    now = time.time_ns() // 1000 + later // 1000
    since = store.serving_since(now)
    assert since > time.time_ns() // 1000
    queries_before = len(jobs_fake.queries)
    seen: list[str] = []
    # Up to where Spanner's reads begin (this store's clock is ten days ahead of
    # Spanner's, which would refuse a read so far in its future).
    cursor, before = (now - 11 * DAY, ""), since
    while cursor != (before, ""):
        page = await store.page(Record, query(cursor[0], before, after_id=cursor[1]))
        seen += [r.message_id for r in page.rows]
        # Complete only up to where it ended.
        assert page.complete_until in (None, page.after_time)
        cursor = (page.after_time, page.after_message_id)
    assert seen == ["m-0", "m-1", "m-2"]
    assert len(jobs_fake.queries) > queries_before
    for sent in jobs_fake.queries[queries_before:]:
        assert sent.params.get("end", since) <= since
    # A look-up asks both; BigQuery only before Spanner's reach, and only once a day.
    asked = len(jobs_fake.queries)
    assert (await store.latest("m-1")) is not None
    assert jobs_fake.queries[-1].params["before"] == since
    assert (await store.latest("m-1")) is not None
    assert len(jobs_fake.queries) == asked + 1


async def test_followers_at_the_tail_share_one_spanner_read(make_tiered: Make) -> None:
    store: TieredStore = await make_tiered()
    await store.append([record("m-0")])
    # After m-0, whose commit time is Spanner's and may be ahead of this clock.
    start = store.read_horizon(time.time_ns() // 1000)
    await store.tail.refresh(start)  # the cache begins here
    await store.append([record(f"m-{i}") for i in range(1, 6)])
    await asyncio.sleep(0.06)  # past the refresh interval: the next poll refreshes
    reads = store.serving.reads
    horizon = store.read_horizon(time.time_ns() // 1000)
    pages = await asyncio.gather(*(store.page(Record, query(start, horizon)) for _ in range(100)))
    assert {tuple(r.message_id for r in p.rows) for p in pages} == {
        ("m-1", "m-2", "m-3", "m-4", "m-5")
    }
    # One refresh for all of them: the time index's keys, then their rows.
    assert store.serving.reads - reads == 2
    # A follower behind the cache reads Spanner itself.
    behind = await store.page(Record, query(start - DAY, horizon))
    assert [r.message_id for r in behind.rows][:1] == ["m-0"]
    assert store.serving.reads - reads >= 2


def test_terraform_applies_the_statements_the_service_checks() -> None:
    for window in (86_400.0, QuerySettings().dedupe_window_seconds, 14 * 86_400.0):
        days = ddl_text(window).split("INTERVAL ")[1].split(" ")[0]
        assert ddl_template().replace(RETENTION_PLACEHOLDER, days) == ddl_text(window)
    # records, rejected, and the ledger of producer sequences (its epochs not heard of,
    # and the messages held under its sequences).
    assert ddl_text(86_400.0).count("INTERVAL 3 DAY") == 4


async def test_a_database_with_another_schema_is_refused_at_start_naming_the_differences(
    make_tiered: Make, spanner_emulator: SpannerEmulator
) -> None:
    statements = ddl(QuerySettings().dedupe_window_seconds)
    wrong = [
        statements[0]
        .replace("  `trace_id` STRING(MAX),\n", "")
        .replace("`data` STRING(MAX) NOT NULL", "`data` BYTES(MAX) NOT NULL"),
        statements[1],
        *statements[2:4],
    ]
    url = spanner_emulator.database(wrong)
    with pytest.raises(SchemaMismatch) as refused:
        await make_tiered(url=url)
    message = str(refused.value)
    assert "records.trace_id is missing" in message
    assert "records.data is BYTES(MAX) NOT NULL, expected STRING(MAX) NOT NULL" in message
    assert "index records_by_id on records(id_shard, id) is missing" in message
    # Nothing of the table `rejected`, which is as it should be.
    assert "rejected." not in message.split(": ", 1)[1]


async def test_a_migration_applied_before_the_image_that_needs_it(
    make_tiered: Make, spanner_emulator: SpannerEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A database as Terraform created it, then an image whose rows have a new column.
    url = spanner_emulator.database()
    monkeypatch.setitem(TABLES, "records", _RecordWithRegion)
    with pytest.raises(SchemaMismatch) as refused:
        await make_tiered(url=url)
    assert "records.region is missing" in str(refused.value)
    # The migration, appended to Terraform's ddl, is run on the database in place...
    database = spanner_emulator.database_of(url)
    database.update_ddl([add_column("records", "region")]).result(60)
    # ...and the same image starts on it.
    await make_tiered(url=url)


async def test_a_database_ahead_of_the_image_is_served_as_before(
    make_tiered: Make, spanner_emulator: SpannerEmulator
) -> None:
    # Migrations released after this image: a column, a table and an index it never uses.
    ahead = [
        *ddl(QuerySettings().dedupe_window_seconds),
        "ALTER TABLE records ADD COLUMN `region` STRING(MAX)",
        "CREATE TABLE export_checkpoints (`shard` INT64 NOT NULL, `until` TIMESTAMP) "
        "PRIMARY KEY (shard)",
        "CREATE INDEX records_by_region ON records (region)",
    ]
    store: TieredStore = await make_tiered(url=spanner_emulator.database(ahead))
    await store.append([record("m-ahead")])
    status = await store.message("m-ahead")
    assert status is not None
    t = status.ingest_time
    (found,) = await store.serving.page(Record, query(t - 1_000_000, t + 1), t + 1)
    assert found.message_id == "m-ahead"


async def test_spanner_unreachable_at_start_then_lost_and_back(
    serving_settings: Callable[..., Settings],
    spanner_emulator: SpannerEmulator,
    write_fake: FakeBigQueryWrite,
) -> None:
    settings = serving_settings(
        RECORDLINE_QUERY_TIMEOUT_SECONDS="1", RECORDLINE_WRITE_DEADLINE_SECONDS="1"
    )
    body = envelope({"id": "r-1", "data": 1}, message_id="m-1")
    spanner_emulator.pause()
    try:
        async with served(create_app(settings)) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            # Spanner's own reason, or, where the check itself outlasts readiness's
            # deadline (a loaded machine), that deadline's.
            detail = ready.json()["detail"]
            assert "serving tier not ready" in detail or "store did not answer" in detail, detail
            pushed = await client.post("/pubsub/push", json=body)
            assert pushed.status_code == 503
            assert "Retry-After" in pushed.headers
            spanner_emulator.resume()
            # Readiness retries the check: no restart.
            await until(lambda: _status(client.get("/readyz"), 200), timeout=30, what="readiness")
            assert (await client.post("/pubsub/push", json=body)).status_code == 204
            # Lost mid-run: a 503 with Retry-After, nothing acknowledged.
            spanner_emulator.pause()
            lost = await client.post(
                "/pubsub/push", json=envelope({"id": "r-2", "data": 2}, message_id="m-2")
            )
            assert lost.status_code == 503
            assert "Retry-After" in lost.headers
            spanner_emulator.resume()

            # Redelivered, as Pub/Sub does after a 503: the emulator runs one transaction
            # at a time and aborts a push's beside the exporter's, a 503 again (never a
            # 204 that was not stored).
            async def redelivered() -> bool:
                again = await client.post(
                    "/pubsub/push", json=envelope({"id": "r-2", "data": 2}, message_id="m-2")
                )
                assert again.status_code in (204, 503), again.text
                return again.status_code == 204

            await until(redelivered, timeout=30, interval=0.5, what="m-2 stored")
            listed = (await client.get("/v1/records")).json()["records"]
            assert [r["message_id"] for r in listed] == ["m-1", "m-2"]
            await until(  # the exporter in the app catches up
                lambda: set(stored_rows(write_fake)) == {"m-1", "m-2"},
                timeout=30,
                what="the export",
            )
    finally:
        spanner_emulator.resume()
    assert set(stored_rows(write_fake)) == {"m-1", "m-2"}


async def test_waiting_for_a_turn_counts_against_the_write_deadline(
    make_tiered: Make, spanner_emulator: SpannerEmulator
) -> None:
    # Against the emulator a process's commits take turns: the one queued
    # behind a stalled commit has only what is left of its own deadline.
    store: TieredStore = await make_tiered(write_deadline_seconds=1.0)
    spanner_emulator.pause()
    try:
        started = time.monotonic()
        outcomes = await asyncio.gather(
            store.append([record("m-1")]), store.append([record("m-2")]), return_exceptions=True
        )
        elapsed = time.monotonic() - started
    finally:
        spanner_emulator.resume()
    assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
    # Both were answered by their shared deadline, not one deadline after another.
    assert elapsed < 1.8, elapsed


async def test_a_payload_over_spanners_limit_is_a_rejection_and_fails_none_of_its_batch(
    serving_settings: Callable[..., Settings],
) -> None:
    big = envelope({"id": "big", "data": "x" * 3_000_000}, message_id="m-big")
    small = [envelope({"id": f"s-{i}", "data": i}, message_id=f"m-{i}") for i in range(20)]
    async with served(create_app(serving_settings())) as client:
        # Sent together, so the big one shares group commits with the small ones.
        answers = await asyncio.gather(
            *(client.post("/pubsub/push", json=body) for body in [*small[:10], big, *small[10:]])
        )
        assert [a.status_code for a in answers] == [204] * 21
        for i in range(20):
            status = (await client.get(f"/v1/messages/m-{i}")).json()
            assert status["status"] == "stored", status
        refused = (await client.get("/v1/messages/m-big")).json()
        listed = (await client.get("/v1/rejections")).json()["rejections"]
    assert refused["status"] == "rejected"
    assert "2,621,440" in refused["reason"]
    assert "`data`" in refused["reason"]
    # The bytes as received are kept, to replay once the limit allows.
    (kept,) = [r for r in listed if r["message_id"] == "m-big"]
    assert len(base64.b64decode(kept["data"])) > 3_000_000


class RefusesOneRow(SpannerServing):
    """Spanner refusing any commit that holds one row, for what that row holds: as it
    would for a limit the service does not know of."""

    commits = 0

    async def commit(self, rows: Sequence[Record | Rejection], within: float) -> Committed:
        self.commits += 1
        if any(isinstance(r, Record) and r.id == "poison" for r in rows):
            raise StoreUnavailable("refused") from InvalidArgument("a value too large")
        return await super().commit(rows, within)


async def test_a_row_spanner_refuses_is_a_rejection_and_its_batch_is_stored(
    make_tiered: Make, database: str, spanner_emulator: SpannerEmulator
) -> None:
    store: TieredStore = await make_tiered(start=False)
    refusing = RefusesOneRow(spanner_database(database), emulator_host=spanner_emulator.host)
    tiered = TieredStore(
        refusing,
        store.analytics,
        write_deadline_seconds=5.0,
        dedupe_window_seconds=QuerySettings().dedupe_window_seconds,
        export=False,
    )
    await tiered.start()
    try:
        rows = [record(f"m-{i}") for i in range(7)]
        rows[4] = record("m-4", id="poison")
        outcomes = await tiered.append(rows)
        assert [o is None for o in outcomes] == [True] * 4 + [False] + [True] * 2
        assert "Spanner refused the row: a value too large" in str(outcomes[4])
        for i in (0, 1, 2, 3, 5, 6):
            status = await tiered.message(f"m-{i}")
            assert status is not None
            assert status.status == "stored"
        refused = await tiered.message("m-4")
        assert refused is not None
        assert refused.status == "rejected"
        assert refused.reason == outcomes[4]
    finally:
        await tiered.close()


async def test_a_follower_waiting_on_one_instance_hears_of_a_commit_on_another(
    make_tiered: Make,
) -> None:
    one: TieredStore = await make_tiered()
    two: TieredStore = await make_tiered()
    async with (
        served(create_app(Settings.load({"RECORDLINE_STORE": "memory:"}), store=one)) as first,
        served(create_app(Settings.load({"RECORDLINE_STORE": "memory:"}), store=two)) as second,
    ):
        token = (await first.get("/v1/records")).json()["next_page_token"]
        reads = one.serving.reads
        waiting = asyncio.create_task(
            first.get("/v1/records", params={"page_token": token, "wait": 20})
        )
        await asyncio.sleep(0.3)  # the follower waits on the first: time itself
        body = envelope({"id": "r-1", "data": 1}, message_id="m-1")
        pushed_at = time.monotonic()
        assert (await second.post("/pubsub/push", json=body)).status_code == 204
        page = (await waiting).json()
        woke = time.monotonic() - pushed_at
    assert [r["message_id"] for r in page["records"]] == ["m-1"]
    # Woken by the tail's refresh (an interval and a read of the emulator, seconds
    # at most on a loaded machine), not by the end of its wait, 20 s after it began.
    assert woke < 10, f"woke {woke:.2f} s after the commit on the other instance"
    # While it waited, the first instance read Spanner once a refresh, not once a poll.
    assert one.serving.reads - reads < 2 * (0.3 + woke) / one.tail.refresh_seconds + 10


async def test_a_follower_woken_by_another_instances_commit_reads_it(make_tiered: Make) -> None:
    # A page ends at the read horizon, READ_LAG_MICROS behind the clock. A tail
    # refreshed up to the clock rang for a commit of the last few milliseconds,
    # woke the follower to a page without it, and never rang for it again: the
    # follower heard of it at the end of its wait. The clock here stands still
    # between the commit and the horizon, then moves past it.
    clock = [time.time_ns() - 1_000_000_000]
    one: TieredStore = await make_tiered(clock=lambda: clock[0])
    two: TieredStore = await make_tiered()

    def horizon() -> int:
        return one.read_horizon(clock[0] // 1000)

    start = horizon()
    assert (await one.page(Record, query(start, start))).rows == []  # the tail starts here
    assert await two.append([record("m-1")]) == [None]
    stored = await two.message("m-1")
    assert stored is not None
    committed = stored.ingest_time

    async def follow() -> list[str]:
        while True:
            seen = one.live.version
            page = await one.page(Record, query(start, horizon()))
            if page.rows:
                return [r.message_id for r in page.rows]
            await one.live.wait(seen, 60)

    follower = asyncio.create_task(follow())
    await until(lambda: one.live.waiting, what="the follower waiting")
    clock[0] = (committed + READ_LAG_MICROS // 2) * 1000
    await until(lambda: one.tail.end >= horizon(), what="a refresh of the tail at that time")
    await asyncio.sleep(5 * one.tail.refresh_seconds)
    assert not follower.done()  # past the horizon: not readable yet
    clock[0] = (committed + 2 * READ_LAG_MICROS) * 1000
    assert await asyncio.wait_for(follower, 20) == ["m-1"]
