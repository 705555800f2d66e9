"""The commit journal: what was acknowledged survives a crash at any point."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.errors import StoreUnavailable
from app.records import Record, Rejection
from app.store.duckdb.journal import SEGMENT_BYTES, Frame, Journal, encode
from app.store.duckdb.journal_process import JournalProcess
from app.store.duckdb.store import DuckDBStore
from tests.processes import signals_as_a_shell_gives_them
from tests.waiting import until


def record(n: int) -> Record:
    return Record(message_id=f"m{n}", publish_time=n, ingest_time=1000 + n, id=str(n), data="[1]")


def frame(*numbers: int) -> Frame:
    return Frame(records=[record(n) for n in numbers], rejections=[])


def opened(base: Path, *, segment_bytes: int = SEGMENT_BYTES) -> tuple[Journal, list[Frame]]:
    """A journal written in this process, as the writer process starts one."""
    journal = Journal(base, segment_bytes=segment_bytes)
    frames = journal.replay()
    journal.start(journal.next_segment)
    return journal, frames


def test_frames_survive_reopen_and_a_torn_tail_is_dropped(tmp_path: Path) -> None:
    journal, replayed = opened(tmp_path / "j")
    assert replayed == []
    rejection = Rejection(message_id="r", publish_time=0, ingest_time=1)
    first, second = frame(1, 2), Frame(records=[], rejections=[rejection])
    assert journal.write(encode(first)) == 1
    assert journal.write(encode(second)) == 2
    journal.close()
    # A crash in the middle of a third write leaves half a frame behind.
    (segment,) = journal.segments()
    with segment.open("ab") as f:
        f.write(b"\x40\x00\x00\x00\x00\x00\x00\x00partial")
    reopened, replayed = opened(tmp_path / "j")
    assert replayed == [first, second]
    # The old segment stays until its rows are stored elsewhere.
    assert segment.exists()
    reopened.discard_replayed()
    assert not segment.exists()
    assert reopened.write(encode(frame(3))) == 1
    reopened.close()
    assert Journal(tmp_path / "j").replay() == [frame(3)]


def test_a_corrupt_frame_ends_the_replay(tmp_path: Path) -> None:
    journal, _ = opened(tmp_path / "j")
    journal.write(encode(frame(1)))
    journal.write(encode(frame(2)))
    journal.close()
    (segment,) = journal.segments()
    data = bytearray(segment.read_bytes())
    data[-3] ^= 0xFF  # flip bits inside the last frame's payload
    segment.write_bytes(bytes(data))
    assert Journal(tmp_path / "j").replay() == [frame(1)]


def test_sealed_segments_go_once_applied_and_replay_spans_them(tmp_path: Path) -> None:
    journal, _ = opened(tmp_path / "j", segment_bytes=1)  # every frame seals its segment
    for n in range(1, 4):
        assert journal.write(encode(frame(n))) == n
    assert len(journal.segments()) == 4  # three sealed, one open and empty
    journal.release(1)
    assert len(journal.segments()) == 3
    journal.close()
    # A crash now: frames 2 and 3 were never applied, and come back in order.
    assert Journal(tmp_path / "j").replay() == [frame(2), frame(3)]


@pytest.mark.slow
async def test_store_replays_journaled_rows_it_never_applied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "records.duckdb"
    # The state a crash leaves: rows acknowledged (in the journal) and not yet
    # in DuckDB, plus one that is in both.
    store = DuckDBStore(str(db))
    await store.start()
    await store.append([record(0)])
    await store.barrier()
    await store.close()
    journal, _ = opened(Path(f"{db}.journal"))
    journal.write(encode(frame(0, 1, 2)))
    journal.close()

    store = DuckDBStore(str(db))
    await store.start()
    # The log says what happened and what recovery does, in one line.
    (line,) = [r.getMessage() for r in caplog.records if "journal" in r.getMessage()]
    assert "stopped without closing the store" in line
    assert "1 frames, 3 rows" in line
    assert "each stored once" in line
    try:
        for n in (0, 1, 2):
            status = await store.message(f"m{n}")
            assert status is not None
            assert status.status == "stored"
        assert await store.latest("1") == record(1)
        # Replayed segments are gone; only the new, empty one remains.
        (segment,) = Journal(Path(f"{db}.journal")).segments()
        assert segment.stat().st_size == 0
    finally:
        await store.close()


@pytest.mark.slow
async def test_a_clean_stop_leaves_nothing_to_recover(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Every restart used to replay the last run's journal and say so, as if it
    # had crashed: a clean close now leaves the rows in DuckDB and no journal.
    db = tmp_path / "records.duckdb"
    store = DuckDBStore(str(db))
    await store.start()
    await store.append([record(1), record(2)])
    await store.close()
    assert Journal(Path(f"{db}.journal")).segments() == []

    caplog.set_level(logging.INFO)
    store = DuckDBStore(str(db))
    await store.start()
    try:
        assert await store.latest("2") == record(2)
    finally:
        await store.close()
    assert [r.getMessage() for r in caplog.records if "journal" in r.getMessage()] == []


async def test_the_writer_process_journals_frames_in_order_and_releases_segments(
    tmp_path: Path,
) -> None:
    # Segments 0 to 6 are what earlier runs left: the writer starts at 7.
    for segment in range(7):
        (tmp_path / f"j.{segment:08d}").touch()
    writer = JournalProcess(tmp_path / "j", segment_bytes=1)  # every frame seals its segment
    assert await writer.open() == []
    await writer.discard_replayed()
    numbers = await asyncio.gather(*(writer.append(encode(frame(n))) for n in (1, 2, 3)))
    assert numbers == [1, 2, 3]
    writer.release(1)
    await writer.close()
    # Segment 7 held frame 1 and is gone; 8 and 9 hold 2 and 3; 10 is open and empty.
    assert [p.suffix for p in Journal(tmp_path / "j").segments()] == [
        ".00000008",
        ".00000009",
        ".00000010",
    ]
    assert Journal(tmp_path / "j").replay() == [frame(2), frame(3)]


def pending_signals(pid: int) -> int:
    """The signals sent to process `pid` and not yet delivered, as the kernel's bit mask
    (none once it is gone: what it left undone shows elsewhere)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)


async def test_the_writer_process_outlives_signals_until_its_pipe_closes(tmp_path: Path) -> None:
    # Ctrl-C reaches the whole process group, and SIGTERM and SIGHUP (a terminal
    # closing) may: the rows a draining shutdown still accepts must be journaled.
    writer = JournalProcess(tmp_path / "j")
    assert await writer.open() == []
    pid = writer.pid
    assert pid is not None
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        os.kill(pid, signum)
    await until(lambda: pending_signals(pid) == 0, what="the signals to reach the writer")
    assert await writer.append(encode(frame(1))) == 1
    await writer.close()
    assert Journal(tmp_path / "j").replay() == [frame(1)]


async def test_a_failed_write_is_the_writers_last(tmp_path: Path) -> None:
    # Segment 1 cannot take a byte. The frame that fails there may be torn,
    # and replay stops at a torn frame: nothing may be written after it.
    writer = JournalProcess(tmp_path / "j", segment_bytes=1)  # frame 1 seals segment 0
    await writer.open()
    (tmp_path / "j.00000001").symlink_to("/dev/full")
    try:
        assert await writer.append(encode(frame(1))) == 1
        with pytest.raises(OSError, match="No space left"):
            await writer.append(encode(frame(2)))
        assert writer.failure is not None
        assert "failed write" in writer.failure
        with pytest.raises(OSError, match="failed write"):
            await writer.append(encode(frame(3)))
    finally:
        await writer.close()


async def test_a_dead_writer_fails_appends_and_readiness(tmp_path: Path) -> None:
    store = DuckDBStore(str(tmp_path / "records.duckdb"))
    await store.start()
    try:
        await store.append([record(1)])
        pid = store._journal.pid if store._journal else None
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

        def gone() -> bool:
            # Dead once it is a zombie or reaped: the signal is delivered asynchronously,
            # and a writer not yet dead could still take the next append.
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except FileNotFoundError:
                return True
            return stat.rsplit(")", 1)[1].split()[0] in {"Z", "X"}

        await until(gone, what="the journal writer to die")
        with pytest.raises(StoreUnavailable, match="journal"):
            await store.append([record(2)])

        async def unready() -> str | None:
            try:
                await store.check()
            except StoreUnavailable as exc:
                return exc.detail
            return None

        # Said once the end of the writer's pipe is read, which an append that
        # found the pipe broken may come before.
        reason = await until(unready, what="readiness to fail")
        assert "journal writer exited" in reason
        # What was acknowledged before stays readable.
        await store.barrier()
        status = await store.message("m1")
        assert status is not None
        assert status.status == "stored"
    finally:
        await store.close()


async def test_a_reader_has_rows_applied_once_they_waited_long_enough(tmp_path: Path) -> None:
    # Rows nobody reads wait for the applier's next round (here an hour away); a
    # reader that finds rows older than the freshness bound has them applied now.
    store = DuckDBStore(str(tmp_path / "records.duckdb"), apply_every=3600)
    await store.start()
    try:
        await store.append([record(1)])
        oldest = record(1).ingest_time
        soon = oldest + 10_000  # 10 ms later: fresh enough
        assert store.read_horizon(soon) == oldest
        await asyncio.sleep(0.1)
        assert store.read_horizon(soon) == oldest, "applied with no reader asking"
        assert store.read_horizon(oldest + 60_000) == oldest  # 60 ms: it asks
        await until(lambda: store.read_horizon(soon) == soon, what="the row applied")
    finally:
        await store.close()


def test_a_short_write_is_finished_before_the_frame_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A disk filling up or a signal can make os.write write only part of a
    # frame; acknowledging it then would lose it at replay.
    journal, _ = opened(tmp_path / "j")
    real_write = os.write
    monkeypatch.setattr(
        "app.store.duckdb.journal.os.write", lambda fd, data: real_write(fd, bytes(data[:5]))
    )
    assert journal.write(encode(frame(1, 2))) == 1
    journal.close()
    assert Journal(tmp_path / "j").replay() == [frame(1, 2)]


# A fresh interpreter where OpenTelemetry's MeterProvider registers its
# at-fork hook before `concurrent.futures.thread` is imported (as an installed
# `recordline serve` does), then the writer starts under uvloop. uvloop's own
# subprocess spawn runs that hook in the forked child, where it waits forever
# on a lock the parent held at the fork: start-up hung.
_UNDER_UVLOOP = """
import sys
import time
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
provider = MeterProvider(resource=Resource({"service.name": "recordline"}))
assert "concurrent.futures.thread" not in sys.modules
import asyncio
from pathlib import Path
import uvloop
from app.records import Record
from app.store.duckdb.journal import Frame, encode
from app.store.duckdb.journal_process import JournalProcess

async def main() -> None:
    writer = JournalProcess(Path(sys.argv[1]))
    await writer.open()
    row = Record(message_id="m1", publish_time=1, ingest_time=1001, id="1", data="[1]")
    assert await writer.append(encode(Frame(records=[row], rejections=[]))) == 1
    await writer.close()
    print("journaled")

uvloop.run(main())
"""


def test_the_writer_starts_under_uvloop_whatever_at_fork_hooks_the_process_has(
    tmp_path: Path,
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", _UNDER_UVLOOP, str(tmp_path / "j")],
        cwd=Path(__file__).parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a hung child's forked copy is stopped with it
    )
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("the journal writer did not start within 60 s")
    assert (process.returncode, out.strip()) == (0, "journaled"), err
    assert Journal(tmp_path / "j").replay() == [frame(1)]


async def test_a_writer_that_cannot_open_its_segment_fails_the_start(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    writer = JournalProcess(tmp_path / "file" / "j")
    with pytest.raises(StoreUnavailable, match=r"the journal writer did not start \(exit code 1\)"):
        await writer.open()
    assert writer.pid is None
    with pytest.raises(OSError, match="not running"):
        await writer.append(encode(frame(1)))


async def test_a_writer_stopped_by_a_signal_as_it_starts_says_so_in_a_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Ctrl-C while the service starts reaches the writer before it ignores its
    # group's signals: the start fails with what the service says in one line.
    interrupted = tmp_path / "interrupted"
    interrupted.write_text("#!/bin/sh\nkill -INT $$\n")
    interrupted.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(interrupted))
    writer = JournalProcess(tmp_path / "j")
    # The script gets SIGINT at its default, as from a shell, even where the suite runs
    # with it ignored (a background job), which the script would inherit.
    with (
        signals_as_a_shell_gives_them(),
        pytest.raises(StoreUnavailable, match=r"did not start \(stopped by SIGINT\)"),
    ):
        await writer.open()


@pytest.mark.slow
async def test_rows_are_applied_after_a_start_that_read_a_large_record_into_the_tail(
    tmp_path: Path,
) -> None:
    # The tail is warmed with the newest records on the writer's connection; a record
    # larger than is read inline had its payload read apart, and that read left a
    # result unfinished on the connection, which every later apply then failed on.
    db = tmp_path / "records.duckdb"
    now = time.time_ns() // 1000
    large = Record(
        message_id="large",
        publish_time=now,
        ingest_time=now,
        id="large",
        data='"' + "x" * 100_000 + '"',
    )
    store = DuckDBStore(str(db))
    await store.start()
    await store.append([large])
    await store.barrier()
    await store.close()
    store = DuckDBStore(str(db))
    await store.start()
    try:
        after = Record(
            message_id="after", publish_time=now, ingest_time=now + 1, id="after", data="1"
        )
        await store.append([after])
        async with asyncio.timeout(10):
            await store.barrier()
        status = await store.message("after")
        assert status is not None
        assert status.status == "stored"
    finally:
        await store.close()
