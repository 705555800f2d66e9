"""`recordline export status | retry | verify` against the Spanner emulator and the
BigQuery fakes: what an operator runs when the export is blocked, or to prove
that nothing was lost."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import msgspec
import pytest

from app.cli import _main
from app.commands import export
from app.settings import Settings
from app.store.open import operated
from app.store.tiered.exporter import Exporter
from app.store.tiered.verify import WINDOW_MICROS
from tests.bigquery.conftest import DATASET, PROJECT
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.fake_storage_write import ErrorResponse, FakeBigQueryWrite
from tests.spanner.emulator import SpannerEmulator
from tests.spanner.exporting import copies, drain, exporter, settle_clock
from tests.spanner.test_export import stored

pytestmark = pytest.mark.emulator

Make = Callable[..., Any]


OPERATOR = "ada@example.com"


def verify_args(since: int) -> argparse.Namespace:
    return argparse.Namespace(action="verify", since=since, window=1.0)


def retry_args(table: str = "records") -> argparse.Namespace:
    return argparse.Namespace(
        action="retry", table=table, reason="the column was added", operator=OPERATOR
    )


def drop(write_fake: FakeBigQueryWrite, table: str, message_id: str) -> dict[str, Any]:
    """Remove one row from what the BigQuery stand-in holds (as if it were lost)."""
    for path, rows in write_fake.tables.items():
        if path.endswith(f"/tables/{table}"):
            for row in rows:
                if row["message_id"] == message_id:
                    rows.remove(row)
                    return dict(row)
    raise AssertionError(f"{message_id} is not in {table}")


async def test_verify_finds_a_row_bigquery_lost_and_names_its_window(
    make_tiered: Make,
    serving_settings: Callable[..., Settings],
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = await make_tiered()
    since = time.time_ns() // 1000
    await stored(store, [f"m-{i}" for i in range(12)])
    await settle_clock()
    one = exporter(store)
    await drain(one)
    settings = serving_settings()
    assert await export.run(verify_args(since), operated(settings)) == 0
    # Billed for the two columns it reads: a message id (2 bytes and its length,
    # as BigQuery counts a STRING) and a TIMESTAMP (8 bytes) per row.
    (first, *_) = [q for q in jobs_fake.queries if "BIT_XOR" in q.sql]
    assert first.bill is not None
    held = write_fake.rows("records")
    assert first.bill.bytes_processed == sum(2 + len(r["message_id"]) + 8 for r in held)
    said = capsys.readouterr().out
    assert "records" in said
    assert " same" in said
    assert "DIFFERS" not in said
    lost = drop(write_fake, "records", "m-5")
    assert await export.run(verify_args(since), operated(settings)) == 1
    said = capsys.readouterr().out
    window = lost["ingest_time"] // WINDOW_MICROS * WINDOW_MICROS
    start = export._time(window)
    assert f"first window that differs: records from {start}" in said
    assert f"records {start} spanner 12 " in said
    assert "bigquery 11 " in said
    # BigQuery was asked once per table per run: a query per table, not per window.
    asked = [q for q in jobs_fake.queries if "BIT_XOR" in q.sql]
    assert len(asked) == 4


async def test_a_blocked_table_is_told_and_retried_at_once_by_an_operator(
    make_tiered: Make,
    serving_settings: Callable[..., Settings],
    write_fake: FakeBigQueryWrite,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = await make_tiered()
    await stored(store, ["m-1", "m-bad", "m-2"])
    await settle_clock()
    # BigQuery refuses a row (the table lacks a column, say): blocked there.
    write_fake.refuse = lambda row: "no such column" if row["message_id"] == "m-bad" else None
    one = exporter(store, blocked_retry_seconds=60)
    await drain(one)
    assert "m-bad" in one.blocked["records"]
    settings = serving_settings()
    assert await export.run(argparse.Namespace(action="status"), operated(settings)) == 1
    said = capsys.readouterr().out
    assert "BLOCKED since" in said
    assert "m-bad" in said
    assert "no such column" in said
    # The table is fixed; within the minute the holder would not try again on its own.
    write_fake.refuse = None
    await drain(one)
    assert copies(write_fake, "records") == {}
    assert await export.run(retry_args(), operated(settings)) == 0
    assert (await one.ledger.progress("records")).blocked is None
    # The holder tries it at its next round, and goes on from that very row.
    await drain(one)
    assert "records" not in one.blocked
    assert copies(write_fake, "records") == {"m-1": 1, "m-bad": 1, "m-2": 1}
    assert await export.run(argparse.Namespace(action="status"), operated(settings)) == 0
    # Nothing to retry now.
    assert await export.run(retry_args(), operated(settings)) == 0
    assert "not blocked" in capsys.readouterr().out


def test_the_cli_has_the_export_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _main(["export", "--help"])
    said = capsys.readouterr().out
    for action in ("status", "leases", "retry", "reject", "resync", "verify"):
        assert action in said


async def test_a_row_bigquery_never_takes_is_moved_to_the_rejections_by_an_operator(
    make_tiered: Make,
    serving_settings: Callable[..., Settings],
    write_fake: FakeBigQueryWrite,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = await make_tiered()
    await stored(store, ["m-1", "m-bad", "m-2"])
    await settle_clock()
    # BigQuery's `records` refuses it (a rejection, which has a reason, it takes).
    write_fake.refuse = lambda row: (
        "no such column" if row["message_id"] == "m-bad" and "reason" not in row else None
    )
    one = exporter(store, blocked_retry_seconds=60)
    await drain(one)
    assert "m-bad" in one.blocked["records"]
    settings = serving_settings()

    def reject(message_id: str) -> argparse.Namespace:
        return argparse.Namespace(
            action="reject",
            message_id=message_id,
            reason="its column was dropped",
            operator=OPERATOR,
        )

    # Only the row the stop names: another message is refused, nothing moves.
    assert await export.run(reject("m-1"), operated(settings)) == export.EXIT_REFUSED
    assert "nothing moved" in capsys.readouterr().err
    assert (await store.serving.message("m-1")) is not None
    assert (await one.ledger.progress("records")).blocked is not None
    assert await export.run(reject("m-bad"), operated(settings)) == 0
    # The export goes on at the holder's next round, without it, each row once; the
    # rejection, committed now, once it is a second old.
    await drain(one)
    assert "records" not in one.blocked
    await settle_clock()
    await drain(one)
    assert "records" not in one.blocked
    assert copies(write_fake, "records") == {"m-1": 1, "m-2": 1}
    assert copies(write_fake, "rejected") == {"m-bad": 1}
    (moved,) = write_fake.rows("rejected")
    assert "moved to the rejections by an operator: its column was dropped" in moved["reason"]
    assert "no such column" in moved["reason"]
    status = await store.serving.message("m-bad")
    assert status is not None
    assert status.status == "rejected"
    # Spanner and BigQuery agree on both tables.
    assert await export.run(verify_args(0), operated(settings)) == 0


def resync_args(table: str = "records") -> argparse.Namespace:
    return argparse.Namespace(
        action="resync", table=table, reason="stream ahead after a restore", operator=OPERATOR
    )


async def behind_the_stream(make_tiered: Make, write_fake: FakeBigQueryWrite) -> Exporter:
    """m-1..m-4 exported in two batches, then the progress put back to before m-3
    and m-4 (a database restored from a backup, say): the stream holds them, the
    progress says it does not, and the export of m-5 blocks there."""
    store = await make_tiered()
    await stored(store, ["m-1", "m-2"])
    await settle_clock()
    one = exporter(store, batch_rows=2, blocked_retry_seconds=60)
    await drain(one)
    behind = await one.ledger.progress("records")
    await stored(store, ["m-3", "m-4"])
    await settle_clock()
    await drain(one)
    assert copies(write_fake, "records") == {f"m-{n}": 1 for n in range(1, 5)}
    ahead = await one.ledger.progress("records")
    await one.ledger.record(msgspec.structs.replace(behind, updated=ahead.updated))
    await stored(store, ["m-5"])
    await settle_clock()
    await drain(one)
    assert "the progress is behind the stream" in one.blocked["records"]
    return one


async def test_a_progress_behind_the_stream_is_resynced_past_what_bigquery_holds(
    make_tiered: Make,
    serving_settings: Callable[..., Settings],
    write_fake: FakeBigQueryWrite,
    capsys: pytest.CaptureFixture[str],
) -> None:
    one = await behind_the_stream(make_tiered, write_fake)
    settings = serving_settings()
    assert await export.run(resync_args(), operated(settings)) == 0
    said = capsys.readouterr().out
    assert "BigQuery holds 2 rows past the progress" in said
    assert "after message m-4 on a new stream" in said
    moved = await one.ledger.progress("records")
    assert (moved.done_message_id, moved.stream, moved.blocked) == ("m-4", None, None)
    # The exporter goes on from there: m-5 once, nothing doubled.
    await drain(one)
    assert "records" not in one.blocked
    assert copies(write_fake, "records") == {f"m-{n}": 1 for n in range(1, 6)}
    # Not blocked now: nothing to do.
    assert await export.run(resync_args(), operated(settings)) == 0
    assert "not blocked" in capsys.readouterr().out


async def test_a_resync_moves_nothing_where_bigquery_lacks_a_row_before_one_it_holds(
    make_tiered: Make,
    serving_settings: Callable[..., Settings],
    write_fake: FakeBigQueryWrite,
    capsys: pytest.CaptureFixture[str],
) -> None:
    one = await behind_the_stream(make_tiered, write_fake)
    drop(write_fake, "records", "m-3")  # BigQuery holds m-4 but not m-3 before it
    blocked = await one.ledger.progress("records")
    assert await export.run(resync_args(), operated(serving_settings())) == export.EXIT_REFUSED
    assert "but not message m-3 before it" in capsys.readouterr().err
    assert await one.ledger.progress("records") == blocked


async def test_rows_deleted_before_their_export_are_resynced_past_by_an_operator(
    make_tiered: Make,
    serving_settings: Callable[..., Settings],
    write_fake: FakeBigQueryWrite,
    spanner_emulator: SpannerEmulator,
    database: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = await make_tiered()
    await stored(store, ["m-1", "m-2", "m-3"])
    await settle_clock()
    one = exporter(store, blocked_retry_seconds=60)
    # The batch's intent is written, its append fails: the batch stays pending.
    write_fake.inject("records", ErrorResponse(grpc.StatusCode.UNAVAILABLE))
    await one.step()
    assert write_fake.failed["records"] == 1
    assert (await one.ledger.progress("records")).pending is not None
    # A row of it is deleted before it is exported (retention ran past the export).
    instance, name = re.fullmatch(r".*/instances/([^/]+)/databases/([^/]+)", database).groups()  # type: ignore[union-attr]
    handle = spanner_emulator.client.instance(instance).database(name)
    handle.run_in_transaction(
        lambda t: t.execute_update("DELETE FROM records WHERE message_id = 'm-2'")
    )
    await settle_clock()
    await drain(one)
    assert "rows were deleted before they were exported" in one.blocked["records"]
    assert await export.run(resync_args(), operated(serving_settings())) == 0
    assert "BigQuery holds 0 rows past the progress" in capsys.readouterr().out
    # What Spanner still has is exported, once; what it lost is in neither store.
    await drain(one)
    assert "records" not in one.blocked
    assert copies(write_fake, "records") == {"m-1": 1, "m-3": 1}


async def _leases(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """`recordline export … leases` as the cell's export job runs it: exit code, output.
    (In a thread: the command runs an event loop of its own.)"""
    code = await asyncio.to_thread(_main, ["export", *argv, "leases"])
    said = capsys.readouterr()
    return code, said.out + said.err


def _since(said: str) -> int:
    """The `since` a `leases` line names, in µs."""
    found = re.search(r" since (\S+),", said)
    assert found is not None, said
    text = found[1].rstrip("Z")
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1_000_000)


async def test_leases_says_who_holds_each_systems_lease_since_when_and_who_asked(
    make_tiered: Make,
    spanner_emulator: SpannerEmulator,
    database: str,
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A cell of two systems, as its export job has them: orders' database is the one
    # exported here, payments' has no exporter yet.
    payments = spanner_emulator.database()
    systems = {
        "orders": {"store": f"bigquery://{PROJECT}/{DATASET}", "serving": database},
        "payments": {"store": f"bigquery://{PROJECT}/payments", "serving": payments},
    }
    for name, value in {
        "RECORDLINE_CELL": "cell-1",
        "RECORDLINE_SYSTEMS": json.dumps(systems),
        "SPANNER_EMULATOR_HOST": spanner_emulator.host,
        "RECORDLINE_BIGQUERY_WRITE_ENDPOINT": write_fake.address,
        "BIGQUERY_EMULATOR_HOST": jobs_fake.endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    store = await make_tiered()
    # Nobody has claimed it yet: exit 1, as while nobody holds it.
    code, said = await _leases(capsys, "--system=orders")
    assert code == 1, said
    assert "no exporter has claimed" in said
    # Instance a takes it; b, of the same code, finds it held and asks for it.
    first, second = exporter(store, "a"), exporter(store, "b")
    before = time.time_ns() // 1000
    assert await first.ledger.claim()
    taken = time.time_ns() // 1000
    assert not await second.ledger.claim(want=True)
    code, said = await _leases(capsys, "--system=orders")
    assert code == 0, said
    assert "bigquery (the export of records and rejected): held by a (code revision " in said
    assert "\n  asked for by b (code revision " in said
    # Since when, to the second (the lease's versions read back in time).
    assert before - 1_500_000 <= _since(said) <= taken + 1_500_000
    # a hands it back between two batches; b takes it: held by b since then.
    assert await first.ledger.release(within=5)
    handed = time.time_ns() // 1000
    assert await second.ledger.claim()
    code, said = await _leases(capsys, "--system=orders")
    assert code == 0, said
    assert "held by b (" in said
    assert "asked for" not in said, said
    assert _since(said) >= handed - 1_500_000
    # Each system's own database: payments' lease is nobody's.
    code, said = await _leases(capsys, "--system=payments")
    assert code == 1
    assert "no exporter has claimed" in said
    # In a cell, a command names its system, one the cell has.
    code, said = await _leases(capsys)
    assert code == 2
    assert "name the system (--system=SYSTEM; the cell's: orders, payments)" in said
    code, said = await _leases(capsys, "--system=refunds")
    assert code == 2
    assert "no such system in RECORDLINE_SYSTEMS (it names orders, payments)" in said
