"""What makes a batch of pushes durable: the commit journal against DuckDB's own log.

    python3 dev.py bench durable [--rows 21,64] [--rounds 5] [--seconds 2]

A push is acknowledged once its batch is durable. The DuckDB store makes a batch
durable in its commit journal (one `write` and one `fdatasync` in a child process,
app/store/duckdb/journal_process.py) and moves journaled rows into DuckDB later, many
batches to an INSERT. The other design keeps no journal: each batch is one DuckDB
transaction, committed (DuckDB's write-ahead log: one `fdatasync` a commit) before its
pushes are answered. This measures both on the same machine, in the same run, taking
turns (`--seconds` each, `--rounds` times): batches of `--rows` records of the
benchmarks' record (bench.harness.RECORD, as a push stores it), one batch in flight,
each made durable by the store's own code (`JournalProcess.append` of an encoded
`Frame`; `Inserter.insert` on the database's writer thread, as the applier calls it).

Printed, the medians of the rounds: milliseconds until a batch is durable, and the CPU
it took (this process's threads, DuckDB's among them, and the journal's child), and
DuckDB / journal. The batch the ingest benchmark makes at 64 connections is ~21 rows
(`bench ingest`, rows/append): at its ~4,300 pushes a second that is ~200 batches a
second, so a design whose batch costs more than ~5 ms of CPU cannot keep up on two
cores, whatever its latency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from app.records import Record
from app.store.duckdb.database import Database
from app.store.duckdb.inserts import Inserter
from app.store.duckdb.journal import Frame, encode
from app.store.duckdb.journal_process import JournalProcess
from app.store.duckdb.typed import TypedColumns
from bench.harness import RECORD, table

WARM_UP = 20
PUBLISHED = 1_714_219_201_000_000  # 2024-04-27T12:00:01Z, in microseconds


def records(first: int, count: int) -> list[Record]:
    """`count` records of the benchmarks' record, as a push stores them."""
    return [
        Record(
            message_id=f"m-{n}",
            publish_time=PUBLISHED,
            ingest_time=PUBLISHED + n,
            id=f"r-{n}",
            timestamp=PUBLISHED - 1_000_000,
            data=RECORD,
            attributes='{"origin":"bench"}',
            subscription="projects/bench/subscriptions/records-push",
        )
        for n in range(first, first + count)
    ]


def cpu_seconds(pid: int | None = None) -> float:
    """The CPU time (user and system) of this process's threads, or of process `pid`."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(rows: int, rounds: int, seconds: float) -> dict[str, tuple[float, float]]:
    """Each design's median milliseconds and CPU milliseconds a durable batch of `rows`."""
    with tempfile.TemporaryDirectory() as folder:
        journal = JournalProcess(Path(folder) / "journaled.duckdb")
        await journal.open()
        database = Database(str(Path(folder) / "committed.duckdb"))
        typed = TypedColumns(None)
        await database.write(database.open, typed)
        inserter = Inserter(database.connection, typed, lambda: 0)
        made = 0

        def batch() -> list[Record]:
            nonlocal made
            made += rows
            return records(made, rows)

        async def journaled() -> None:
            await journal.append(encode(Frame(records=batch(), rejections=[])))

        async def committed() -> None:
            await database.write(inserter.insert, batch())

        designs: dict[str, Callable[[], Awaitable[None]]] = {
            "journal (today)": journaled,
            "DuckDB commit a batch": committed,
        }
        took: dict[str, list[float]] = {name: [] for name in designs}
        used: dict[str, list[float]] = {name: [] for name in designs}
        try:
            for design in designs.values():
                for _ in range(WARM_UP):
                    await design()
            for _ in range(rounds):
                for name, design in designs.items():
                    child = journal.pid if design is journaled else None
                    cpu = cpu_seconds() + (cpu_seconds(child) if child else 0.0)
                    start = time.perf_counter()
                    batches = 0
                    while time.perf_counter() - start < seconds:
                        await design()
                        batches += 1
                    elapsed = time.perf_counter() - start
                    cpu = cpu_seconds() + (cpu_seconds(child) if child else 0.0) - cpu
                    took[name].append(elapsed / batches * 1e3)
                    used[name].append(cpu / batches * 1e3)
        finally:
            await journal.close()
            connection = database.close_reads()
            if connection is not None:
                await database.write(connection.close)
            database.close_writes()
    return {
        name: (statistics.median(took[name]), statistics.median(used[name])) for name in designs
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench durable")
    parser.add_argument("--rows", default="21,64", help="records a batch (21,64)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    lines = [["batch", "design", "ms until durable", "CPU ms a batch", "over the journal"]]
    for rows in (int(r) for r in args.rows.split(",")):
        found = asyncio.run(measure(rows, args.rounds, args.seconds))
        journal_ms, journal_cpu = found["journal (today)"]
        for name, (ms, cpu) in found.items():
            lines.append(
                [
                    f"{rows} rows",
                    name,
                    f"{ms:.2f}",
                    f"{cpu:.2f}",
                    f"{ms / journal_ms:.2f}x time, {cpu / journal_cpu:.1f}x CPU",
                ]
            )
    print(
        f"a durable batch, one in flight, {args.rounds} rounds of {args.seconds:g} s per "
        "design taken in turn; medians (CPU: this process's threads and the journal's child)"
    )
    print(table(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
