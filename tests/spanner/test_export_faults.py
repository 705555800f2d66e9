"""The export through every failure BigQuery returns, a row that cannot be exported, and
an exporter that keeps failing, against the Spanner emulator and the BigQuery fakes.

Each failure shape (tests/bigquery/test_write_streams.py: SHAPES) is returned as
BigQuery returns it, at the RPC level and in the response, on `records` while
`rejected` has rows to export too, one row per batch so that every round is
counted. For each: the export goes on by itself (a stream gone: a new one; a
passing failure: a pause of that table alone), or the table blocks with the
reason and the documented command mends it (`recordline export retry`); each
row ends up in BigQuery once, and `rejected` exports a batch in every round,
whatever `records` meets.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
import msgspec
import pytest
from google.cloud.bigquery_storage_v1 import types

from app.commands import export
from app.records import Record, Row
from app.settings import Settings
from app.store.open import operated
from app.store.spanner.export_ledger import SpannerLedger
from app.store.spanner.ledger import Lease, LeaseClaim, Progress
from app.store.spanner.serving import SpannerServing
from app.store.supervisor import Supervisor
from app.store.tiered.exporter import Exporter
from tests.bigquery.fake_storage_write import (
    Abort,
    ErrorResponse,
    FakeBigQueryWrite,
    StreamGone,
)
from tests.bigquery.test_write_streams import SHAPES, shape_id
from tests.spanner.exporting import copies, drain, exporter, settle_clock
from tests.spanner.test_export import stored

pytestmark = pytest.mark.emulator

Make = Callable[..., Any]
_S = grpc.StatusCode
OPERATOR = "ada@example.com"


def fault(shape: tuple[Any, ...], *, rpc: bool) -> Abort | ErrorResponse:
    code, storage, message, _ = shape
    if rpc:
        return Abort(code, details=message, storage=storage)
    return ErrorResponse(code, message, storage=storage)


def gone(shape: tuple[Any, ...], *, rpc: bool, commit: bool = False) -> StreamGone:
    code, storage, message, _ = shape
    finalized = storage == types.StorageError.StorageErrorCode.STREAM_FINALIZED
    return StreamGone(code, message, storage, rpc=rpc, commit=commit, finalized=finalized)


def retry_args(table: str = "records") -> argparse.Namespace:
    return argparse.Namespace(
        action="retry", table=table, reason="the fault was mended", operator=OPERATOR
    )


class Rounds:
    """Steps an exporter round by round, counting what each table exported."""

    def __init__(self, one: Exporter, write_fake: FakeBigQueryWrite) -> None:
        self.one = one
        self.fake = write_fake
        self.rounds = 0

    def held(self, table: str) -> int:
        return sum(copies(self.fake, table).values())

    async def step(self) -> None:
        await self.one.step()
        self.rounds += 1

    async def until_exported(self, message_id: str, *, most: int = 40) -> None:
        """Rounds (each waiting out a pause of `records`) until the progress of
        `records` is past it, with no batch pending."""
        for _ in range(most):
            progress = await self.one.ledger.progress("records")
            if progress.pending is None and progress.done_message_id == message_id:
                return
            await asyncio.sleep(self.one.paused().get("records", 0.0))  # the pause itself
            await self.step()
        raise AssertionError(f"{message_id} was not exported")


@pytest.mark.parametrize("rpc", [True, False], ids=["rpc", "response"])
async def test_every_failure_shape_goes_on_or_blocks_saying_why_and_the_other_table_flows(
    make_tiered: Make,
    write_fake: FakeBigQueryWrite,
    serving_settings: Callable[..., Settings],
    capsys: pytest.CaptureFixture[str],
    rpc: bool,
) -> None:
    store = await make_tiered()
    names = [f"m-{i:02d}" for i in range(len(SHAPES))]
    await stored(store, names)
    await stored(store, [f"r-{i}" for i in range(8 * len(SHAPES))], rejected=True)
    await settle_clock()
    one = exporter(store, batch_rows=1, blocked_retry_seconds=60)
    rounds = Rounds(one, write_fake)
    settings = serving_settings()
    for index, shape in enumerate(SHAPES):
        code, _, message, meant = shape
        name = names[index]
        before = await one.ledger.progress("records")
        rejected_before, rounds_before = rounds.held("rejected"), rounds.rounds
        match meant:
            case "gone":
                # The stream is gone under a new batch: a new stream takes it.
                write_fake.inject("records", gone(shape, rpc=rpc))
                await rounds.until_exported(name)
                after = await one.ledger.progress("records")
                assert after.stream not in (None, before.stream), shape_id(shape)
                assert not one.blocked
            case "refused":
                # Refused for good: blocked with BigQuery's words, tried no more
                # until an operator says it is mended.
                write_fake.broken["records"] = fault(shape, rpc=rpc)
                await rounds.step()
                await rounds.step()
                reason = one.blocked["records"]
                assert code.name in reason, reason
                assert message in reason, reason
                failed = write_fake.failed["records"]
                await rounds.step()
                assert write_fake.failed["records"] == failed  # not asked again
                assert name not in copies(write_fake, "records")
                del write_fake.broken["records"]
                assert await export.run(retry_args(), operated(settings)) == export.EXIT_DONE
                assert "cleared" in capsys.readouterr().out
                await rounds.until_exported(name)
                assert not one.blocked
            case "transient":
                # Passing: that table pauses, backs off, and goes on.
                write_fake.inject("records", fault(shape, rpc=rpc), fault(shape, rpc=rpc))
                await rounds.until_exported(name)
                assert write_fake.failed["records"] >= 2
                assert not one.blocked
        # Meanwhile `rejected` exported a batch in every round.
        assert rounds.held("rejected") - rejected_before == rounds.rounds - rounds_before, shape
    await drain(one)
    assert copies(write_fake, "records") == dict.fromkeys(names, 1)
    assert copies(write_fake, "rejected") == {f"r-{i}": 1 for i in range(8 * len(SHAPES))}


GONE = [shape for shape in SHAPES if shape[3] == "gone"]


@pytest.mark.parametrize("rpc", [True, False], ids=["rpc", "response"])
async def test_a_batch_that_may_be_in_a_gone_stream_is_settled_by_asking_bigquery(
    make_tiered: Make, write_fake: FakeBigQueryWrite, rpc: bool
) -> None:
    store = await make_tiered()
    cases = [(shape, landed) for shape in GONE for landed in (True, False)]
    names = [f"m-{i:02d}" for i in range(len(cases))]
    await stored(store, names)
    await stored(store, [f"r-{i}" for i in range(6 * len(cases))], rejected=True)
    await settle_clock()
    one = exporter(store, batch_rows=1, blocked_retry_seconds=60)
    rounds = Rounds(one, write_fake)
    for index, (shape, landed) in enumerate(cases):
        name = names[index]
        rejected_before, rounds_before = rounds.held("rejected"), rounds.rounds
        # The append lands (or not) and its answer is lost, the writer's resend
        # fails too: the batch stays pending. Then the stream is gone.
        write_fake.inject("records", Abort(commit=landed), Abort(), gone(shape, rpc=rpc))
        await rounds.step()
        pending = await one.ledger.progress("records")
        assert pending.pending is not None, shape_id(shape)
        assert (name in copies(write_fake, "records")) is landed
        await rounds.until_exported(name)
        assert not one.blocked, (shape_id(shape), landed)
        assert copies(write_fake, "records")[name] == 1
        assert rounds.held("rejected") - rejected_before == rounds.rounds - rounds_before
    await drain(one)
    assert copies(write_fake, "records") == dict.fromkeys(names, 1)


async def test_a_gone_stream_whose_count_disagrees_blocks_and_resync_mends_it(
    make_tiered: Make,
    write_fake: FakeBigQueryWrite,
    serving_settings: Callable[..., Settings],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # BigQuery holds a row of the batch and not the other (a progress restored
    # from a backup, say): the exporter settles nothing it cannot be sure of.
    store = await make_tiered()
    await stored(store, ["m-1", "m-2"])
    await settle_clock()
    one = exporter(store, batch_rows=2, blocked_retry_seconds=60)
    write_fake.inject("records", Abort(commit=True), Abort(), StreamGone())
    await one.step()
    for path, rows in write_fake.tables.items():
        if path.endswith("/records"):
            rows[:] = [r for r in rows if r["message_id"] != "m-2"]
    await drain(one)
    assert "BigQuery holds 1 of its 2 rows" in one.blocked["records"]
    args = argparse.Namespace(
        action="resync", table="records", reason="BigQuery lost m-2", operator=OPERATOR
    )
    assert await export.run(args, operated(serving_settings())) == export.EXIT_DONE
    assert "after message m-1 on a new stream" in capsys.readouterr().out
    await drain(one)
    assert copies(write_fake, "records") == {"m-1": 1, "m-2": 1}


# --- the other table's pace under one table's failure, in real time ------------------------


async def exported_in(
    store: Any, write_fake: FakeBigQueryWrite, seconds: float, **options: Any
) -> int:
    """How many records `Exporter.run` exports in `seconds` of wall time."""
    one = exporter(store, holder=f"pace-{time.monotonic_ns()}", **options)
    before = sum(copies(write_fake, "records").values())
    task = asyncio.create_task(one.run())
    await asyncio.sleep(seconds)  # the pace over this time is what is measured
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await one.stop()
    return sum(copies(write_fake, "records").values()) - before


async def test_records_keep_their_pace_while_rejected_meets_a_quota(
    make_tiered: Make, write_fake: FakeBigQueryWrite
) -> None:
    store = await make_tiered()
    await stored(store, [f"m-{i}" for i in range(2000)])
    await stored(store, [f"r-{i}" for i in range(200)], rejected=True)
    await settle_clock()
    # BigQuery refuses every append to `rejected` for a while (a quota), as a
    # real exporter meets it: RETRY_SECONDS and the rest as in the service.
    write_fake.broken["rejected"] = ErrorResponse(_S.RESOURCE_EXHAUSTED, "Exceeds quota")
    options = {"batch_rows": 10, "retry_seconds": 1.0}
    failing = await exported_in(store, write_fake, 2.0, **options)
    del write_fake.broken["rejected"]
    healthy = await exported_in(store, write_fake, 2.0, **options)
    print(f"records exported in 2 s: {failing} with rejected failing, {healthy} without")
    assert healthy > 20  # several batches a second on the emulator, or nothing is measured
    assert failing >= healthy / 2, (failing, healthy)


# --- a row that cannot be exported -------------------------------------------------------------


class FaultyRows:
    """The serving database as the exporter sees it, with rows it cannot export: one
    whose encoding raises (its id is not valid UTF-8 once encoded), one that cannot
    be read (reading it raises), and a switch that makes the progress read fail as
    a bug would. Everything else is the database's."""

    def __init__(self, serving: SpannerServing, *, encode: str = "", read: str = "") -> None:
        self._serving = serving
        self._encode = encode
        self._read = read
        self.broken = False
        self.claims = 0

    def export_ledger(self, lease: Lease) -> FaultyLedger:
        return FaultyLedger(self, self._serving.export_ledger(lease))

    async def rows_after(self, kind: Any, after: Any, until: int, limit: int, **seen: int) -> Any:
        rows: list[Row] = await self._serving.rows_after(kind, after, until, limit, **seen)
        if kind is Record and any(r.message_id == self._read for r in rows):
            raise ValueError(f"column data of {self._read} is not JSON Spanner gave back")
        return [
            msgspec.structs.replace(r, id="\ud800")
            if kind is Record and r.message_id == self._encode
            else r
            for r in rows
        ]

    async def keys_after(self, kind: Any, after: Any, until: int, limit: int, **seen: int) -> Any:
        return await self._serving.keys_after(kind, after, until, limit, **seen)


class FaultyLedger:
    """The export's ledger as `rows`' exporter sees it: its claims counted, its
    progress read failing while `rows.broken`."""

    def __init__(self, rows: FaultyRows, ledger: SpannerLedger) -> None:
        self._rows = rows
        self._ledger = ledger

    @property
    def expires_in(self) -> float | None:
        return self._ledger.expires_in

    @property
    def claimed(self) -> LeaseClaim | None:
        return self._ledger.claimed

    async def claim(self, *, take_free: bool = True, want: bool = False) -> bool:
        self._rows.claims += 1
        return await self._ledger.claim(take_free=take_free, want=want)

    async def release(self, *, within: float) -> bool:
        return await self._ledger.release(within=within)

    async def progress(self, table: str) -> Progress:
        if self._rows.broken:
            raise RuntimeError("injected: a bug in reading the progress")
        return await self._ledger.progress(table)

    async def record(self, progress: Progress) -> Progress:
        return await self._ledger.record(progress)

    async def watermarks(self) -> dict[str, int]:
        return await self._ledger.watermarks()


def reject_args(message_id: str) -> argparse.Namespace:
    return argparse.Namespace(
        action="reject", message_id=message_id, reason="it cannot be exported", operator=OPERATOR
    )


async def test_a_poison_row_blocks_its_table_alone_naming_it_and_reject_clears_it(
    make_tiered: Make,
    write_fake: FakeBigQueryWrite,
    serving_settings: Callable[..., Settings],
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = await make_tiered()
    records = ["m-1", "m-2", "m-3", "m-poison", "m-4", "m-5", "m-unreadable", "m-6"]
    for name in records:  # one commit each: the order is theirs
        await stored(store, [name])
    rejections = [f"r-{i}" for i in range(40)]
    await stored(store, rejections, rejected=True)
    await settle_clock()
    source = FaultyRows(store.serving, encode="m-poison", read="m-unreadable")
    one = exporter(store, source=source, batch_rows=2, blocked_retry_seconds=60)
    rounds = Rounds(one, write_fake)
    for _ in range(5):
        await rounds.step()
    # The rows before it went; it stopped `records` naming it, and the lease and
    # the other table went on: a batch of `rejected` in every round.
    assert copies(write_fake, "records") == {"m-1": 1, "m-2": 1, "m-3": 1}
    reason = one.blocked["records"]
    assert "message m-poison of records cannot be exported (encoded)" in reason
    assert "UnicodeEncodeError" in reason
    assert rounds.held("rejected") == 2 * rounds.rounds
    assert one.leading
    settings = serving_settings()
    assert await export.run(argparse.Namespace(action="status"), operated(settings)) == 1
    assert "m-poison" in capsys.readouterr().out
    assert await export.run(reject_args("m-poison"), operated(settings)) == export.EXIT_DONE
    capsys.readouterr()
    # Then the row that cannot be read: named too, after the rows before it.
    for _ in range(4):
        await rounds.step()
    reason = one.blocked["records"]
    assert "message m-unreadable of records cannot be exported (read)" in reason
    assert "ValueError" in reason
    assert copies(write_fake, "records") == dict.fromkeys(["m-1", "m-2", "m-3", "m-4", "m-5"], 1)
    assert await export.run(reject_args("m-unreadable"), operated(settings)) == export.EXIT_DONE
    await settle_clock()  # the rejections the operator made, once settled, go too
    await drain(one)
    assert not one.blocked
    exported = ["m-1", "m-2", "m-3", "m-4", "m-5", "m-6"]
    assert copies(write_fake, "records") == dict.fromkeys(exported, 1)
    assert copies(write_fake, "rejected") == dict.fromkeys(
        [*rejections, "m-poison", "m-unreadable"], 1
    )
    moved = {r["message_id"]: r["reason"] for r in write_fake.rows("rejected")}
    assert "it cannot be exported" in moved["m-poison"]
    assert "UnicodeEncodeError" in moved["m-poison"]


# --- an exporter that keeps failing hands the export over ---------------------------------


async def test_an_exporter_down_longer_than_its_interval_hands_the_lease_over(
    make_tiered: Make, write_fake: FakeBigQueryWrite
) -> None:
    store = await make_tiered()
    await stored(store, ["m-1"])
    await settle_clock()
    source = FaultyRows(store.serving)
    failing = exporter(store, holder="failing", source=source, lease_seconds=3.0)
    healthy = exporter(store, holder="healthy", lease_seconds=0.6)  # asks every 0.2 s
    await drain(failing)
    assert failing.leading
    assert copies(write_fake, "records") == {"m-1": 1}
    # A bug: every round of the holder fails, and its supervisor restarts it.
    source.broken = True
    supervisor = Supervisor()
    await supervisor.start()
    try:
        supervisor.run("exporter", failing.run, interval=0.5, on_down=failing.step_down)
        await stored(store, ["m-2"])
        await settle_clock()
        started = time.monotonic()
        for _ in range(100):
            await healthy.step()
            if "m-2" in copies(write_fake, "records"):
                break
            await asyncio.sleep(0.1)  # rounds at a test's pace; the handover is waited for
        took = time.monotonic() - started
        # Taken over within the interval, the restart backoff and a renewal, long
        # before the holder's lease (3 s) would have expired.
        assert healthy.leading
        assert not failing.leading
        assert copies(write_fake, "records") == {"m-1": 1, "m-2": 1}
        assert took < 3.0, took
        assert supervisor.restarts("exporter") >= 1
    finally:
        await supervisor.close()


async def test_an_exporter_without_the_lease_asks_for_it_once_a_renewal(
    make_tiered: Make,
) -> None:
    store = await make_tiered()
    holder = exporter(store, holder="holder")  # a lease of 15 s, renewed every 5 s
    await holder.step()
    source = FaultyRows(store.serving)
    other = exporter(store, holder="other", source=source)
    task = asyncio.create_task(other.run())
    await asyncio.sleep(2.0)  # the claims over this time are what is counted
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # Once at start, then once every 5 s: not every round (0.5 s).
    assert source.claims == 1
    assert not other.leading
