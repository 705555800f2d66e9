"""What typed columns cost ingest, in instructions: projection on against off.

    python3 dev.py bench typedingest [--records 400] [--payload-bytes 1024] [--batch 100]

The DuckDB store (a file, as the quick start runs it) appends the same
records, 1 KiB orders of an Avro schema revision (bench/typedcost.py's), in
group commits of `--batch`, each applied before the next (so every run
makes the same batches, however slow valgrind makes it), twice: with the
revision's fields known, so each record is projected and its typed fields are
written in the record's transaction (on), and with no revision named, so
nothing is projected (off). Each runs under valgrind's callgrind, which counts
every instruction of the process, DuckDB's threads included, with no machine
noise (the journal's writer process, which writes the same bytes either way,
is not counted); each variant runs at `--records` and at twice that, and the
difference is what the second `--records` cost: start-up and imports cancel
out. Each run then checks that its records were stored, and projected or not.

The ratio printed is records per instruction on over off: ingest throughput
with projection on as a fraction of off (goal ≥ 0.9). It counts the store's
part of a push only; a push also pays its HTTP request, its envelope, its
decoding and its validation, the same on and off, so the whole path's ratio is
nearer 1 than this one.

Needs valgrind (Debian: `apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb

from app.records import Record
from app.store.duckdb.store import DuckDBStore
from app.typed.mapping import avro_fields
from app.typed.revisions import Revisions
from bench.harness import table
from bench.typedcost import SCHEMA, payload

REVISION = "projects/bench/schemas/orders@1"
_PUBLISHED = 1_714_219_201_000_000


def records(count: int, size: int, *, typed: bool) -> list[Record]:
    return [
        Record(
            message_id=f"m-{n}",
            publish_time=_PUBLISHED,
            ingest_time=_PUBLISHED + n,
            id=f"o-{n}",
            data=payload(n, size),
            schema=REVISION if typed else None,
        )
        for n in range(count)
    ]


async def append(path: str, rows: list[Record], batch: int, *, typed: bool) -> None:
    revisions = Revisions()
    if typed:
        revisions.learn(REVISION, avro_fields(SCHEMA))
    store = DuckDBStore(path, revisions=revisions)
    await store.start()
    try:
        for start in range(0, len(rows), batch):
            outcomes = await store.append(rows[start : start + batch])
            assert all(o is None for o in outcomes), outcomes
            # Each group commit applied on its own: the same batches in every run,
            # however long valgrind makes an append take.
            await store.barrier()
    finally:
        await store.close()


def worker(argv: list[str]) -> int:
    variant, count, size, batch = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    typed = variant == "on"
    rows = records(count, size, typed=typed)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "records.duckdb")
        asyncio.run(append(path, rows, batch, typed=typed))
        with duckdb.connect(path, read_only=True) as con:
            found = con.execute(
                "SELECT count(*), count(fields.amount) FROM records_typed "
                "WHERE len(coalesce(projection_errors, [])) = 0"
            ).fetchone()
    assert found == (count, count if typed else 0), found
    return 0


def instructions(variant: str, count: int, size: int, batch: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "bench.typedingest",
                "--worker",
                variant,
                str(count),
                str(size),
                str(batch),
            ],
            check=True,
            capture_output=True,
            timeout=1800,
        )
        found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
        if found is None:
            raise RuntimeError("no callgrind summary")
        return int(found[1])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench typedingest", description=__doc__)
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--payload-bytes", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args(argv)
    if not shutil.which("valgrind"):
        print("bench typedingest: needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 1
    n, size, batch = args.records, args.payload_bytes, args.batch
    per_record = {}
    for variant in ("off", "on"):
        once = instructions(variant, n, size, batch)
        twice = instructions(variant, 2 * n, size, batch)
        per_record[variant] = (twice - once) / n
    off, on = per_record["off"], per_record["on"]
    ratio = off / on
    print(
        f"DuckDB appends of {size}-byte Avro orders in group commits of {batch}, "
        f"instructions per record (callgrind, the second {n:,} records):"
    )
    print(
        table(
            [
                ["projection", "instructions / record", "throughput / off"],
                ["off", f"{off:,.0f}", "1.000"],
                ["on", f"{on:,.0f}", f"{ratio:.3f}"],
            ]
        )
    )
    print(f"on / off: {ratio:.3f} (goal ≥ 0.9: {'met' if ratio >= 0.9 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        sys.exit(worker(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
