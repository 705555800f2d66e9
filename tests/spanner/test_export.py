"""The exporter: Spanner's rows into BigQuery exactly once, against the Spanner
emulator and the Storage Write fake, through every fault between the two.

Each test appends through the serving tier (so rows carry Spanner's commit
timestamps), then runs exporters by hand, step by step, and counts the rows
BigQuery holds per message id: exactly one each, every one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import msgspec
import pytest

from app.errors import StoreUnavailable, WriteTimeout
from app.records import ExportWatermark, Record, Rejection
from app.store.spanner.ledger import LeaseLost, Progress, ProgressMoved
from app.store.tiered.exporter import SETTLED_MICROS, Exporter
from app.store.tiered.store import TieredStore
from tests.bigquery.fake_storage_write import Abort, ErrorResponse, FakeBigQueryWrite
from tests.spanner.exporting import copies, drain, exporter, settle_clock
from tests.spanner.test_serving import record

pytestmark = pytest.mark.emulator

Make = Callable[..., Any]


def rejection(message_id: str) -> Rejection:
    row = record(message_id)
    return Rejection(
        message_id=message_id,
        publish_time=row.publish_time,
        ingest_time=row.ingest_time,
        data=b"\xffnot json",
        reason="payload is not JSON",
    )


async def stored(store: TieredStore, names: list[str], *, rejected: bool = False) -> None:
    rows: list[Record | Rejection] = [rejection(n) if rejected else record(n) for n in names]
    await store.append(rows)


async def test_every_row_once_in_order_with_its_commit_time(
    make_tiered: Make, write_fake: FakeBigQueryWrite
) -> None:
    store = await make_tiered()
    for batch in range(3):
        await stored(store, [f"m-{batch}-{i}" for i in range(5)])
    await stored(store, ["r-1", "r-2"], rejected=True)
    await settle_clock()
    told = store.analytics.watermark_writer()
    await told.start()
    one = exporter(store, watermarks=told)
    await drain(one)
    await told.close()
    assert copies(write_fake, "records") == {f"m-{b}-{i}": 1 for b in range(3) for i in range(5)}
    assert copies(write_fake, "rejected") == {"r-1": 1, "r-2": 1}
    exported = write_fake.rows("records")
    keys = [(r["ingest_time"], r["message_id"]) for r in exported]
    assert keys == sorted(keys)
    for row in exported:
        status = await store.serving.message(row["message_id"])
        assert status is not None
        assert status.ingest_time == row["ingest_time"]
    watermarks = await one.ledger.watermarks()
    assert min(watermarks.values()) > max(t for t, _ in keys)
    # BigQuery is told too: an analyst asks it up to when each table is complete.
    published = {r["table_name"]: r["watermark"] for r in write_fake.rows("export_watermarks")}
    assert published.keys() == {"records", "rejected"}
    assert published["records"] > max(t for t, _ in keys)


class LateWatermarks:
    """BigQuery taking no watermark within its deadline, as a write may not."""

    def __init__(self) -> None:
        self.tried = 0

    async def publish(self, row: ExportWatermark, *, within: float) -> None:
        self.tried += 1
        raise WriteTimeout(f"the watermark of {row.table_name} not stored within {within} s")


async def test_a_watermark_bigquery_does_not_take_in_time_stops_no_export(
    make_tiered: Make, write_fake: FakeBigQueryWrite
) -> None:
    store = await make_tiered()
    await stored(store, [f"m-{i}" for i in range(5)])
    await settle_clock()
    late = LateWatermarks()
    one = exporter(store, watermarks=late)
    # A step that raised would end the loop's round (the supervisor restarts it and
    # counts a failure): the watermark is best effort, its failure only said.
    await drain(one)
    assert late.tried > 0
    assert copies(write_fake, "records") == {f"m-{i}": 1 for i in range(5)}


async def test_an_answer_lost_after_the_rows_were_stored_stores_them_once(
    make_tiered: Make, write_fake: FakeBigQueryWrite
) -> None:
    store = await make_tiered()
    await stored(store, [f"m-{i}" for i in range(10)])
    await settle_clock()
    one = exporter(store, batch_rows=4)
    # Each of the first two appends lands and its answer is lost.
    write_fake.inject("records", Abort(commit=True), Abort(commit=True))
    await drain(one)
    assert copies(write_fake, "records") == {f"m-{i}": 1 for i in range(10)}


async def test_an_exporter_killed_between_the_append_and_its_progress(
    make_tiered: Make, write_fake: FakeBigQueryWrite
) -> None:
    store = await make_tiered()
    await stored(store, [f"m-{i}" for i in range(6)])
    await settle_clock()
    first = exporter(store, holder="first", batch_rows=3, lease_seconds=1.0)

    class Killed(Exception):
        pass

    recorded = first.ledger.record

    async def dies_after_the_append(progress: Progress) -> Progress:
        if progress.pending is None and progress.next_offset > 0:
            raise Killed  # the append happened; the instance died before saying so
        return await recorded(progress)

    first.ledger.record = dies_after_the_append  # type: ignore[method-assign]
    with pytest.raises(Killed):
        await first.step()
    assert copies(write_fake, "records") == {f"m-{i}": 1 for i in range(3)}
    # Another instance, once the lease has expired, finishes the batch and goes on.
    second = exporter(store, holder="second", batch_rows=3, lease_seconds=0.5)
    await first.ledger.claim()  # the first still holds it now
    assert not await second.step()
    await asyncio.sleep(1.2)  # the first's lease (1 s) runs out: time itself
    await drain(second)
    assert copies(write_fake, "records") == {f"m-{i}": 1 for i in range(6)}


async def test_two_exporters_racing_never_double_a_row(
    make_tiered: Make, write_fake: FakeBigQueryWrite
) -> None:
    store = await make_tiered()
    await stored(store, [f"m-{i}" for i in range(40)])
    await settle_clock()
    one = exporter(store, holder="one", batch_rows=7, lease_seconds=1.0)
    two = exporter(store, holder="two", batch_rows=7, lease_seconds=1.0)

    async def race(exporter: Exporter) -> None:
        for _ in range(30):
            with contextlib.suppress(LeaseLost, ProgressMoved, StoreUnavailable):
                await exporter.step()
            await asyncio.sleep(0.05)  # interleaves the two: time itself

    await asyncio.gather(race(one), race(two))
    await drain(one, two)
    assert copies(write_fake, "records") == {f"m-{i}": 1 for i in range(40)}


async def test_a_row_bigquery_refuses_stops_the_export_there_and_says_which(
    make_tiered: Make, write_fake: FakeBigQueryWrite
) -> None:
    store = await make_tiered()
    await stored(store, ["m-1", "m-2", "m-bad", "m-3"])
    await settle_clock()
    write_fake.refuse = lambda row: "no such column" if row["message_id"] == "m-bad" else None
    one = exporter(store, blocked_retry_seconds=60)
    await drain(one)
    assert copies(write_fake, "records") == {}
    assert "m-bad" in one.blocked["records"]
    assert "no such column" in one.blocked["records"]
    progress = await one.ledger.progress("records")
    assert progress.blocked == one.blocked["records"]
    # Within the minute the refused batch is not sent again, and the other
    # table's export goes on.
    refused = write_fake.requests
    write_fake.refuse = None
    await stored(store, ["r-1"], rejected=True)
    await settle_clock()
    await drain(one)
    assert copies(write_fake, "rejected") == {"r-1": 1}
    assert copies(write_fake, "records") == {}
    assert write_fake.requests == refused + 1  # the rejection's append alone
    # Tried again (here by an exporter restarted in its place): mended, the
    # table fixed, it goes on from that very row.
    again = exporter(store)
    await drain(again)
    assert copies(write_fake, "records") == {"m-1": 1, "m-2": 1, "m-bad": 1, "m-3": 1}
    assert "records" not in again.blocked


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT]
)
async def test_a_permanent_refusal_blocks_the_table_saying_why_instead_of_retrying_for_ever(
    make_tiered: Make, write_fake: FakeBigQueryWrite, code: grpc.StatusCode
) -> None:
    store = await make_tiered()
    await stored(store, ["m-1"])
    await settle_clock()
    # Every append to the table is refused (INVALID_ARGUMENT is read as a stream gone
    # first: a new stream refuses the batch alike, and then it blocks).
    write_fake.broken["records"] = ErrorResponse(code, "the account may not write here")
    one = exporter(store, blocked_retry_seconds=60)
    await drain(one)
    assert code.name in one.blocked["records"]
    assert "the account may not write here" in one.blocked["records"]
    assert copies(write_fake, "records") == {}
    # Mended, tried again: every row once.
    del write_fake.broken["records"]
    again = exporter(store)
    await drain(again)
    assert copies(write_fake, "records") == {"m-1": 1}
    assert "records" not in again.blocked


class Told:
    """An ExportObserver that keeps what it was told last."""

    def __init__(self) -> None:
        self.says_blocked: dict[str, bool] = {}
        self.watermarks: dict[str, int] = {}

    def exported(self, table: str, rows: Sequence[Record | Rejection]) -> None:
        self.says_blocked[table] = False

    def blocked(self, table: str, reason: str) -> None:
        self.says_blocked[table] = True

    def unblocked(self, table: str) -> None:
        self.says_blocked[table] = False

    def watermark(self, table: str, micros: int) -> None:
        self.watermarks[table] = micros

    def released(self) -> None: ...


async def test_before_the_first_export_the_lag_runs_from_the_oldest_row(
    make_tiered: Make,
) -> None:
    store = await make_tiered()
    await stored(store, ["m-1", "m-2"])
    oldest = await store.serving.message("m-1")
    assert oldest is not None
    await settle_clock()
    # An instance starting now, before any export: the records are owed from their
    # oldest row, not from 1970; nothing is owed of the empty table.
    told = Told()
    before = time.time_ns() // 1000
    await make_tiered(export_observer=told)
    assert told.watermarks["records"] == oldest.ingest_time
    assert before - SETTLED_MICROS <= told.watermarks["rejected"] <= time.time_ns() // 1000


async def test_an_exporter_that_lost_the_lease_no_longer_says_a_table_is_blocked(
    make_tiered: Make, write_fake: FakeBigQueryWrite
) -> None:
    store = await make_tiered()
    await stored(store, ["m-bad"])
    await settle_clock()
    write_fake.refuse = lambda row: "no such column"
    told = Told()
    one = exporter(store, holder="one", lease_seconds=1.0, observer=told)
    await drain(one)
    assert told.says_blocked == {"records": True}
    # Another instance takes over once the lease ran out; the table is blocked for
    # it now, and it says so, not the instance that left.
    await asyncio.sleep(1.2)  # the lease (1 s) runs out: time itself is what is tested
    two = exporter(store, holder="two", lease_seconds=60.0)
    await drain(two)
    assert two.blocked.keys() == {"records"}
    assert not await one.step()
    assert told.says_blocked == {"records": False}
    assert one.blocked == {}


async def test_a_stream_bigquery_dropped_is_replaced_for_a_new_batch(
    make_tiered: Make, write_fake: FakeBigQueryWrite
) -> None:
    store = await make_tiered()
    await stored(store, ["m-1", "m-2"])
    await settle_clock()
    one = exporter(store)
    await drain(one)
    first = (await one.ledger.progress("records")).stream
    assert first is not None
    # Idle for long, say: BigQuery finalized the stream.
    await store.analytics.offset_stream(Record).finalize(first)
    await stored(store, ["m-3"])
    await settle_clock()
    await drain(one)
    assert copies(write_fake, "records") == {"m-1": 1, "m-2": 1, "m-3": 1}
    progress = await one.ledger.progress("records")
    assert progress.stream not in (None, first)
    assert progress.next_offset == 1
    assert "records" not in one.blocked


async def test_a_batch_that_may_be_in_a_finalized_stream_is_settled_by_its_row_count(
    make_tiered: Make, write_fake: FakeBigQueryWrite
) -> None:
    store = await make_tiered()
    await stored(store, ["m-1"])
    await settle_clock()
    one = exporter(store)
    await drain(one)
    await stored(store, ["m-2"])
    await settle_clock()
    # The batch's append lands, its answer is lost, then the stream is finalized:
    # whether m-2 is in BigQuery the stream's row count says once finalized.
    # (The exporter sends an append once more on a new connection: that fails too.)
    write_fake.inject("records", Abort(commit=True), Abort())
    await one.step()
    stream = (await one.ledger.progress("records")).stream
    assert stream is not None
    await store.analytics.offset_stream(Record).finalize(stream)
    await drain(one)
    assert not one.blocked
    assert copies(write_fake, "records") == {"m-1": 1, "m-2": 1}
    progress = await one.ledger.progress("records")
    assert (progress.done_message_id, progress.pending) == ("m-2", None)
    await stored(store, ["m-3"])
    await settle_clock()
    await drain(one)
    assert copies(write_fake, "records") == {"m-1": 1, "m-2": 1, "m-3": 1}
    assert (await one.ledger.progress("records")).stream not in (None, stream)


async def test_bigquery_down_for_a_while_then_everything_once(
    make_tiered: Make, write_fake: FakeBigQueryWrite
) -> None:
    store = await make_tiered()
    await stored(store, [f"m-{i}" for i in range(5)])
    await settle_clock()
    one = exporter(store, batch_rows=2)
    write_fake.inject("records", *[ErrorResponse(grpc.StatusCode.UNAVAILABLE)] * 6)
    for _ in range(60):
        await one.step()
        if write_fake.failed["records"] == 6:
            break
        await asyncio.sleep(max(one.paused().values(), default=0))  # the pause itself
    assert write_fake.failed["records"] == 6
    assert copies(write_fake, "records") == {}
    # Pushes go on meanwhile: Spanner alone acknowledges them.
    await stored(store, ["m-late"])
    await settle_clock()
    await drain(one)
    assert copies(write_fake, "records") == {**{f"m-{i}": 1 for i in range(5)}, "m-late": 1}


class Clock:
    """The Storage Write fake's clock (seconds), moved by the test instead of waiting."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def test_a_connection_idle_for_eleven_minutes_is_replaced_and_nothing_doubles(
    make_tiered: Make, write_fake: FakeBigQueryWrite
) -> None:
    clock = Clock()
    write_fake.clock = clock
    store = await make_tiered()
    await stored(store, ["m-1"])
    await settle_clock()
    one = exporter(store)
    await drain(one)
    stream = (await one.ledger.progress("records")).stream
    # Eleven quiet minutes: BigQuery closed the connection (ABORTED, inactive for
    # 600 seconds). The next row goes out at once on a new one, to the same stream.
    clock.now += 11 * 60
    await stored(store, ["m-2"])
    await settle_clock()
    assert await one.step()
    assert write_fake.idle_closed == 1
    assert (await one.ledger.progress("records")).stream == stream
    assert copies(write_fake, "records") == {"m-1": 1, "m-2": 1}
    # And after it a resend: the next append lands, its answer is lost, and the
    # same rows at the same offset are refused as already there.
    write_fake.inject("records", Abort(commit=True))
    await stored(store, ["m-3"])
    await settle_clock()
    await drain(one)
    assert copies(write_fake, "records") == {"m-1": 1, "m-2": 1, "m-3": 1}
    assert not one.blocked


async def test_a_stream_gone_after_days_without_traffic_is_replaced_and_nothing_doubles(
    make_tiered: Make, write_fake: FakeBigQueryWrite
) -> None:
    clock = Clock()
    write_fake.clock = clock
    store = await make_tiered()
    await stored(store, ["m-1"])
    await settle_clock()
    one = exporter(store)
    await drain(one)
    old = (await one.ledger.progress("records")).stream
    # Five days without a row: the stream's four-day TTL has passed, it is gone.
    clock.now += 5 * 24 * 3600
    await stored(store, ["m-2"])
    await settle_clock()
    await drain(one)
    progress = await one.ledger.progress("records")
    assert old in write_fake.expired
    assert progress.stream != old
    assert progress.next_offset == 1  # m-2 went at offset 0 of the new stream
    assert copies(write_fake, "records") == {"m-1": 1, "m-2": 1}
    # A resend on the new stream: stored once.
    write_fake.inject("records", Abort(commit=True))
    await stored(store, ["m-3"])
    await settle_clock()
    await drain(one)
    assert copies(write_fake, "records") == {"m-1": 1, "m-2": 1, "m-3": 1}
    assert not one.blocked


async def test_an_exporter_that_stops_hands_the_lease_to_the_next_within_a_renewal(
    make_tiered: Make, write_fake: FakeBigQueryWrite
) -> None:
    store = await make_tiered()
    await stored(store, ["m-1"])
    await settle_clock()
    first = exporter(store, holder="first")  # a lease of 15 s
    second = exporter(store, holder="second", lease_seconds=0.6)  # asks every 0.2 s
    await drain(first)
    assert not await second.step()  # the first holds it
    await first.stop()
    assert not first.leading
    await stored(store, ["m-2"])
    await settle_clock()  # longer than the second's renewal (0.2 s)
    assert await second.step()  # at its next claim, not once the first's lease expired
    assert copies(write_fake, "records") == {"m-1": 1, "m-2": 1}


async def test_the_exporter_writes_each_row_once_with_its_layouts_copies(
    make_tiered: Make, write_fake: FakeBigQueryWrite, jobs_fake: Any
) -> None:
    # `records` laid out by the event's own time, clustered by a copy of an attribute
    # (docs/layouts.md): the exporter reads the layout as the service does, and writes
    # each row's copy beside it, exactly once as ever.
    from tests.bigquery.billing import Layout
    from tests.bigquery.test_layouts import copy, define

    define(write_fake, copy("customer", "attributes.customer", "STRING"))
    jobs_fake.billing.layouts["records"] = Layout(
        partition="timestamp", clustering=("ingest_time", "customer")
    )
    store = await make_tiered()
    assert store.analytics.layout is not None
    assert store.analytics.layout.partition == "timestamp"
    rows: list[Record | Rejection] = [
        msgspec.structs.replace(record(f"m-{i}"), attributes=f'{{"customer": "c{i % 2}"}}')
        for i in range(6)
    ]
    await store.append(rows)
    await settle_clock()
    await drain(exporter(store))
    assert copies(write_fake, "records") == {f"m-{i}": 1 for i in range(6)}
    assert {r["message_id"]: r["customer"] for r in write_fake.rows("records")} == {
        f"m-{i}": f"c{i % 2}" for i in range(6)
    }
