"""A DuckDB store read while its service holds the file: a copy taken when nothing
was written meanwhile is a state DuckDB recovers (app/store/duckdb/snapshot.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from app.store.duckdb.snapshot import SnapshotError, reading

# Writes pairs (k, x), (k, -x) in one transaction each, checkpointing every 64 KiB:
# every consistent state sums to 0 and holds whole pairs.
WRITER = """
import duckdb, random, sys, time
con = duckdb.connect(sys.argv[1])
con.execute("SET wal_autocheckpoint = '64KB'")
con.execute("CREATE TABLE IF NOT EXISTS t (k BIGINT, v BIGINT, pad VARCHAR)")
print("writing", flush=True)
i, end = 0, time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    x = random.randint(1, 10**9)
    con.execute("BEGIN")
    con.executemany("INSERT INTO t VALUES (?, ?, ?)", [(i, x, "p" * 200), (i, -x, "q" * 200)])
    con.execute("COMMIT")
    i += 1
con.close()
"""


@pytest.mark.slow
def test_a_file_a_writer_holds_is_read_from_a_consistent_copy(tmp_path: Path) -> None:
    path = tmp_path / "held.duckdb"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), "60"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "writing\n"
        with pytest.raises(duckdb.IOException, match="lock"):
            duckdb.connect(str(path), read_only=True)  # why a copy is needed
        copies, last = 0, 0
        # The writer runs on past the copies (it is killed after): every read is a copy.
        while copies < 6:
            with reading(path) as (con, copied):
                rows, total, pairs = con.execute(
                    "SELECT count(*), coalesce(sum(v), 0), count(DISTINCT k) FROM t"
                ).fetchone() or (0, 0, 0)
            assert copied
            assert (total, rows) == (0, 2 * pairs), (rows, total, pairs)
            assert rows >= last  # never an older state than one read before
            copies, last = copies + 1, rows
        assert last > 0
        assert writer.poll() is None
    finally:
        writer.kill()
        writer.wait()
    # Released: the file itself, read-only.
    with reading(path) as (con, copied):
        assert not copied
        with pytest.raises(duckdb.Error, match="read-only"):
            con.execute("DELETE FROM t")


def test_a_file_that_is_not_there_is_said_so(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="does not exist"), reading(tmp_path / "none.duckdb"):
        pass
