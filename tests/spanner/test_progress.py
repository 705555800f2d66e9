"""Export progress never goes back, whatever the order in which Spanner commits,
aborts and retries, against the Spanner emulator and the Storage Write fake.

A progress transaction that Spanner aborts is run again by the client
library's own `run_in_transaction` loop, on its thread, after its caller may
have stopped waiting. The tests here make that happen on purpose, at a chosen
point (an `Aborted` raised from the transaction's work once the test says so),
rather than hoping a sleep lands it there.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import pytest
from google.api_core.exceptions import Aborted

from app.records import Record, Rejection
from app.store.spanner import ledger
from app.store.spanner.ledger import (
    LeaseLost,
    Progress,
    ProgressMoved,
    Standing,
    lease_holder,
    standing_of,
)
from app.store.spanner.schema import MIGRATIONS
from app.store.tiered.exporter import code_version
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.spanner.exporting import copies, drain, exporter, settle_clock
from tests.spanner.test_export import stored
from tests.waiting import until

pytestmark = pytest.mark.emulator

Make = Callable[..., Any]

# How long the test's caller waits for the progress write it gives up on.
CALLER_SECONDS = 1.0
# How long the held transaction waits for the test at most (a bound, not a pause).
HELD_SECONDS = 30.0


class LateRetry:
    """Makes one progress transaction late: its first attempt, once started, waits
    until `release` and is then aborted, as Spanner aborts one that lost a lock;
    the client library runs the same work again, after its caller gave up and
    after the exporter moved on. `finished` is set once that call is over."""

    def __init__(self, chosen: Callable[[Progress], bool]) -> None:
        self._chosen = chosen
        self._record = ledger.record
        self.held = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()
        self.outcome: BaseException | None = None
        # The thread of the held transaction: its calls are the late ones.
        self._thread: int | None = None

    def record(self, transaction: Any, query: Any, name: str, holder: str, p: Progress) -> None:
        me = threading.get_ident()
        if self._thread is None and self._chosen(p):
            self._thread = me
            self.held.set()
            if not self.release.wait(HELD_SECONDS):
                raise AssertionError("the held transaction was never released")
            raise Aborted("aborted by the test", errors=[RuntimeError("aborted")])
        if me != self._thread or self.finished.is_set():
            return self._record(transaction, query, name, holder, p)
        try:
            return self._record(transaction, query, name, holder, p)
        except BaseException as exc:
            self.outcome = exc
            raise

    def wrap(self, record_progress: Callable[..., Progress]) -> Callable[..., Progress]:
        """`SpannerLedger._record`, telling when the late call is over
        (committed or not)."""

        def run(*args: Any) -> Progress:
            try:
                return record_progress(*args)
            finally:
                if threading.get_ident() == self._thread and self.release.is_set():
                    self.finished.set()

        return run


async def test_a_late_retry_of_a_progress_write_does_not_move_progress_back(
    make_tiered: Make, write_fake: FakeBigQueryWrite, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await make_tiered()
    await stored(store, [f"m-{i}" for i in range(9)])
    await settle_clock()
    one = exporter(store, batch_rows=3)
    # The write that marks the first batch (offset 0, 3 rows) done.
    late = LateRetry(
        lambda p: p.table_name == "records" and p.pending is None and p.next_offset == 3
    )
    monkeypatch.setattr(ledger, "record", late.record)
    monkeypatch.setattr(one.ledger, "_record", late.wrap(one.ledger._record))
    # The caller gives up on it: its deadline passes while Spanner holds it.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(CALLER_SECONDS):
            await one.step()
    assert late.held.is_set()
    # The exporter reads the progress again and moves on: the first batch again
    # (the same rows at the same offset, refused as there), then the rest.
    await drain(one)
    moved = await one.ledger.progress("records")
    assert moved.next_offset == 9
    # Now the library runs the first write again, and it would commit.
    late.release.set()
    await until(late.finished.is_set, timeout=HELD_SECONDS, what="the late retry to end")
    after = await one.ledger.progress("records")
    assert (after.next_offset, after.done_message_id, after.updated) == (
        moved.next_offset,
        moved.done_message_id,
        moved.updated,
    )
    assert isinstance(late.outcome, ProgressMoved)
    # And the export goes on from there: every row once, never blocked.
    await stored(store, [f"n-{i}" for i in range(4)])
    await settle_clock()
    await drain(one)
    expected = {f"m-{i}": 1 for i in range(9)} | {f"n-{i}": 1 for i in range(4)}
    assert copies(write_fake, "records") == expected
    assert one.blocked == {}


async def test_a_write_made_from_an_older_row_changes_nothing(make_tiered: Make) -> None:
    store = await make_tiered()
    await stored(store, ["m-1"])
    await settle_clock()
    one = exporter(store)
    await drain(one)
    read = await one.ledger.progress("records")
    newer = await one.ledger.record(msgspec.structs.replace(read, watermark=read.watermark + 1))
    assert newer.updated is not None
    assert newer.updated != read.updated
    with pytest.raises(ProgressMoved):
        await one.ledger.record(msgspec.structs.replace(read, watermark=read.watermark + 2))
    assert await one.ledger.progress("records") == newer
    # A row that does not exist yet is expected as such: a second first write fails.
    first = Progress(table_name="nowhere")
    await one.ledger.record(first)
    with pytest.raises(ProgressMoved):
        await one.ledger.record(first)


async def test_already_exists_for_a_batch_sent_the_first_time_blocks_its_table(
    make_tiered: Make, write_fake: FakeBigQueryWrite
) -> None:
    store = await make_tiered()
    await stored(store, ["m-1", "m-2"])
    await settle_clock()
    one = exporter(store)
    await drain(one)
    progress = await one.ledger.progress("records")
    # The progress says less than the stream holds (as a write that went back would).
    behind = await one.ledger.record(
        msgspec.structs.replace(progress, next_offset=1, done_time=0, done_message_id="")
    )
    assert behind.next_offset == 1
    await stored(store, ["m-3"])
    await settle_clock()
    await drain(one)
    reason = one.blocked["records"]
    assert "already holds rows at offset 1" in reason
    after = await one.ledger.progress("records")
    # Nothing marked exported: the batch stays the pending one, the table blocked.
    assert after.next_offset == 1
    assert after.pending is not None
    assert after.blocked == reason
    assert copies(write_fake, "records") == {"m-1": 1, "m-2": 1}


# -- one code version exports ----------------------------------------------------


async def test_after_a_deploy_the_newer_revision_takes_the_export_and_keeps_it(
    make_tiered: Make, write_fake: FakeBigQueryWrite
) -> None:
    store = await make_tiered()
    await stored(store, [f"m-{i}" for i in range(4)])
    await settle_clock()
    old = exporter(store, holder="old", batch_rows=2, version=(3, 11))
    new = exporter(store, holder="new", batch_rows=2, version=(3, 12))
    assert await old.step()
    assert old.leading
    # The new revision takes the live lease over at its first claim, not at expiry.
    await new.step()
    assert new.leading
    # The old one never takes it back, nor exports, however often it tries.
    await stored(store, [f"n-{i}" for i in range(3)])
    await settle_clock()
    with pytest.raises(LeaseLost):
        await old.step()
    for _ in range(3):
        assert not await old.ledger.claim()
    await drain(old, new)
    assert not await old.ledger.claim()
    assert await new.ledger.claim()
    expected = {f"m-{i}": 1 for i in range(4)} | {f"n-{i}": 1 for i in range(3)}
    assert copies(write_fake, "records") == expected


async def test_a_newer_schema_wins_over_a_newer_revision_of_an_older_one(
    make_tiered: Make,
) -> None:
    store = await make_tiered()
    schema = exporter(store, holder="schema", version=(4, 1))
    revision = exporter(store, holder="revision", version=(3, 9))
    await schema.step()
    await revision.step()
    assert schema.leading
    assert not revision.leading


async def test_an_older_schema_never_exports_once_a_newer_one_has(
    make_tiered: Make, write_fake: FakeBigQueryWrite
) -> None:
    store = await make_tiered()
    await stored(store, ["m-1"])
    await settle_clock()
    lease = 1.0
    newer = exporter(store, holder="newer", version=(4, 1), lease_seconds=lease)
    older = exporter(store, holder="older", version=(3, 9), lease_seconds=lease)
    await drain(newer)
    assert newer.leading
    # Handed back (a deploy's SIGTERM), or expired (an instance killed): the row stays,
    # and code that does not know the newer schema's columns never takes it.
    await newer.stop()
    assert not await older.ledger.claim()
    assert await newer.ledger.claim()
    await asyncio.sleep(lease + 0.2)  # the lease's expiry is what is waited for
    assert not await older.ledger.claim()
    await stored(store, ["m-2"])
    await settle_clock()
    await drain(older)
    assert not older.leading
    assert copies(write_fake, "records") == {"m-1": 1}
    # An older revision of the same schema does take a lease its holder gave up (a
    # rollback of the exporter service), and a newer schema takes it from either.
    same_schema = exporter(store, holder="rolled-back", version=(4, 0), lease_seconds=lease)
    await drain(same_schema)
    assert same_schema.leading
    assert copies(write_fake, "records") == {"m-1": 1, "m-2": 1}
    assert await exporter(store, holder="newest", version=(5, 0)).ledger.claim()


async def test_a_lease_whose_holder_died_is_claimed_as_it_expires(make_tiered: Make) -> None:
    store = await make_tiered()
    # The holder's last renewal, with a lease of 1 s; then it dies (renews no more).
    dead = exporter(store, holder="dead", lease_seconds=1.0)
    assert await dead.ledger.claim()
    # Another instance (a lease of 15 s, renewed every 5 s) is refused, and told when
    # the live lease expires: it claims again then, not at its next renewal.
    other = exporter(store, holder="other")
    assert not await other.step()
    assert other.ledger.expires_in is not None
    assert 0.5 < other.ledger.expires_in <= 1.0
    wait = other._idle()
    assert wait < 1.2
    await asyncio.sleep(wait)  # the lease's expiry is what is waited for
    await other.step()
    assert other.leading


def test_the_code_version_is_the_schema_and_the_revision_generation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("K_REVISION", "recordline-prod-00012-x7k")
    assert code_version() == (len(MIGRATIONS), 12)
    monkeypatch.setenv("K_REVISION", "recordline-by-hand")
    assert code_version() == (len(MIGRATIONS), 0)
    monkeypatch.delenv("K_REVISION")
    assert code_version() == (len(MIGRATIONS), 0)
    # A worker pool's revision (the exporter service) counts its deploys alike.
    monkeypatch.setenv("CLOUD_RUN_REVISION", "recordline-exporter-00007-q2w")
    assert code_version() == (len(MIGRATIONS), 7)


def test_a_holder_names_its_standing_and_an_old_holder_stands_lowest() -> None:
    standing = Standing(schema=3, revision=12)
    holder = lease_holder(standing, "host/rev/1/ab|cd", 1_700_000_000_000_000)
    assert standing_of(holder) == (standing, "host/rev/1/ab|cd")
    # As the versions before the exporter service wrote them: one that served traffic
    # or not, and its last push, each read as its schema and revision.
    assert standing_of("0.3.12|host/rev/1/ab@42") == (standing, "host/rev/1/ab")
    assert standing_of("1.3.12|host/rev/1/ab") == (standing, "host/rev/1/ab")
    old, name = standing_of("host/rev/1/abcd")
    assert name == "host/rev/1/abcd"
    assert old < Standing(schema=0, revision=1)
    # The schema first, then the revision.
    assert Standing(4, 1) > Standing(3, 99)
    # A holder of this version reads, to the versions before it, as one serving
    # traffic that pushed just now: they neither take its lease nor call it quiet.
    assert holder.startswith("1.3.12|")
    assert holder.endswith("@1700000000000000")


async def test_an_exporter_that_lost_the_lease_mid_batch_never_says_a_table_is_blocked(
    make_tiered: Make, write_fake: FakeBigQueryWrite
) -> None:
    store = await make_tiered()
    await stored(store, ["m-1", "m-2"])
    await settle_clock()
    said: list[str] = []

    class Told:
        def exported(self, table: str, rows: Sequence[Record | Rejection]) -> None: ...

        def blocked(self, table: str, reason: str) -> None:
            said.append(table)

        def unblocked(self, table: str) -> None: ...

        def watermark(self, table: str, micros: int) -> None: ...

        def released(self) -> None: ...

    old = exporter(store, holder="old", version=(3, 11), observer=Told())
    new = exporter(store, holder="new", version=(3, 12))
    stream = old._streams[Record]
    append = stream.append

    async def newer_first(name: str, offset: int, rows: Any, *schema: Any) -> Any:
        # The old one wrote its intent; before its append goes out, the newer
        # revision takes the lease, appends the same batch and moves on.
        await drain(new)
        return await append(name, offset, rows, *schema)

    stream.append = newer_first  # type: ignore[method-assign]
    # The old one's append is refused as there (a batch it sent the first time):
    # it would block the table, but it no longer holds the lease: it says nothing.
    with pytest.raises(LeaseLost):
        await old.step()
    assert old.blocked == {}
    assert said == []
    assert (await new.ledger.progress("records")).blocked is None
    assert copies(write_fake, "records") == {"m-1": 1, "m-2": 1}
