"""The commit journal: what was acknowledged survives a crash at any point."""

from __future__ import annotations

import os
from pathlib import Path

from app.records import Record, Rejection
from app.store.duckdb import DuckDBStore
from app.store.journal import Frame, Journal


def record(n: int) -> Record:
    return Record(message_id=f"m{n}", publish_time=n, ingest_time=1000 + n, id=str(n), data="[1]")


def test_frames_survive_reopen_and_a_torn_tail_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal = Journal(path)
    assert journal.open() == []
    first = Frame(records=[record(1), record(2)], rejections=[])
    second = Frame(
        records=[], rejections=[Rejection(message_id="r", publish_time=0, ingest_time=1)]
    )
    assert journal.append(first) == 1
    assert journal.append(second) == 2
    intact = path.stat().st_size
    journal.close()
    # A crash in the middle of a third write leaves half a frame behind.
    with path.open("ab") as f:
        f.write(b"\x40\x00\x00\x00\x00\x00\x00\x00partial")
    reopened = Journal(path)
    assert reopened.open() == [first, second]
    assert path.stat().st_size == intact
    reopened.close()


def test_a_corrupt_frame_ends_the_replay(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal = Journal(path)
    journal.open()
    journal.append(Frame(records=[record(1)], rejections=[]))
    journal.append(Frame(records=[record(2)], rejections=[]))
    journal.close()
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # flip bits inside the last frame's payload
    path.write_bytes(bytes(data))
    reopened = Journal(path)
    assert [f.records[0].message_id for f in reopened.open()] == ["m1"]
    reopened.close()


def test_truncate_only_when_everything_written_is_applied(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal.open()
    journal.append(Frame(records=[record(1)], rejections=[]))
    journal.append(Frame(records=[record(2)], rejections=[]))
    journal.truncate_if_applied(1, min_bytes=0)  # frame 2 is not applied yet
    assert journal.size() > 0
    journal.truncate_if_applied(2, min_bytes=0)
    assert journal.size() == 0
    journal.close()


async def test_store_replays_journaled_rows_it_never_applied(tmp_path: Path) -> None:
    db = tmp_path / "records.duckdb"
    # The state a crash leaves: rows acknowledged (in the journal) and not yet
    # in DuckDB, plus one that is in both.
    store = DuckDBStore(str(db))
    await store.start()
    await store.append([record(0)])
    await store.barrier()
    await store.close()
    journal = Journal(Path(f"{db}.journal"))
    journal.open()
    journal.append(Frame(records=[record(0), record(1), record(2)], rejections=[]))
    journal.close()

    store = DuckDBStore(str(db))
    await store.start()
    try:
        for n in (0, 1, 2):
            status = await store.message(f"m{n}")
            assert status is not None
            assert status.status == "stored"
        assert os.path.getsize(f"{db}.journal") == 0
        latest = await store.latest("1")
        assert latest == record(1)
    finally:
        await store.close()
