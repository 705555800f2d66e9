"""What typed columns cost ingest: projection on against off.

    python3 dev.py bench typedingest [--rounds 5] [--seconds 2] [--connections 64]
    python3 dev.py bench typedingest --count [--records 400] [--payload-bytes 1024]

By default, pushes through the whole path: two services on DuckDB files,
served at once and loaded in turn by wrk, round after round, so the machine's
drift falls on both alike (bench/harness.py's `interleaved`). Both take the
same pushes, `bench ingest`'s record in a topic schema's binary Avro (the
revision served by the fake Schema API in a process of its own). One projects
each record onto the revision's typed fields (on, as shipped); the other's
store is given no revisions and projects nothing (off). After the run, each
file is checked: every record of `on` has its typed fields, none of `off`.
Prints msgs/s and the ratio on / off with its range over the rounds (goal ≥ 0.9).

With `--count`, the store alone, in instructions: the DuckDB store (a file, as
the quick start runs it) appends the same records, 1 KiB orders of an Avro
schema revision (bench/typedcost.py's), in group commits of `--batch`, each
applied before the next (so every run makes the same batches, however slow
valgrind makes it), twice: with the revision's fields known (on), and with no
revision named (off). Each runs under valgrind's callgrind, which counts every
instruction of the process, DuckDB's threads included, with no machine noise
(the journal's writer process, which writes the same bytes either way, is not
counted); each variant runs at `--records` and at twice that, and the
difference is what the second `--records` cost: start-up and imports cancel
out. This is the store's part of a push only, and counts the work of DuckDB's
own threads, which run beside the event loop's: an upper bound of the cost.
Needs valgrind (Debian: `apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb
from litestar import Litestar

from app.asgi import create_app, fetching_schemas, store_revisions
from app.records import Record
from app.settings import Settings
from app.store.duckdb.store import DuckDBStore
from app.typed.mapping import avro_fields
from app.typed.revisions import Revisions
from bench.harness import interleaved, push_script, table, uvicorn_argv
from bench.ingest import SCHEMA_ATTRIBUTES, avro_record, ratio, schema_api_fake
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


def on_app() -> Litestar:
    """`recordline serve`'s app on BENCH_DUCKDB, typed columns on, as shipped."""
    settings = Settings.load()
    schemas = fetching_schemas(settings)
    store = DuckDBStore(os.environ["BENCH_DUCKDB"], revisions=store_revisions(schemas))
    return create_app(settings, store=store, schemas=schemas)


def off_app() -> Litestar:
    """The same, its store given no revisions: it projects nothing."""
    return create_app(Settings.load(), store=DuckDBStore(os.environ["BENCH_DUCKDB"]))


def whole_path(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp, schema_api_fake(Path(tmp)) as schema_api:
        files = {name: Path(tmp) / f"{name}.duckdb" for name in ("on", "off")}
        env = {
            name: {
                "BENCH_DUCKDB": str(path),
                "PUBSUB_EMULATOR_HOST": schema_api,
                "RECORDLINE_LOG_LEVEL": "WARNING",
            }
            for name, path in files.items()
        }
        loads = interleaved(
            {
                "on": lambda port: uvicorn_argv("bench.typedingest:on_app", port),
                "off": lambda port: uvicorn_argv("bench.typedingest:off_app", port),
            },
            push_script(data=avro_record(), attributes=SCHEMA_ATTRIBUTES),
            rounds=args.rounds,
            seconds=args.seconds,
            connections=args.connections,
            env=env,
        )
        typed = {}
        for name, path in files.items():
            with duckdb.connect(str(path), read_only=True) as con:
                typed[name] = con.execute(
                    "SELECT count(*), count(fields) FROM records_typed"
                ).fetchone()
    stored_on, typed_on = typed["on"] or (0, 0)
    stored_off, typed_off = typed["off"] or (0, 0)
    if not (stored_on and typed_on == stored_on and stored_off and typed_off == 0):
        raise SystemExit(f"bench typedingest: records (stored, typed): {typed}")
    rows = [["projection", "msgs/s", "p99 ms", "records stored", "with typed fields"]]
    for name in ("off", "on"):
        runs = loads[name]
        stored, with_fields = typed[name] or (0, 0)
        rows.append(
            [
                name,
                f"{statistics.mean(r.rate for r in runs):,.0f}",
                f"{statistics.median(r.p99 for r in runs):.1f}",
                f"{stored:,}",
                f"{with_fields:,}",
            ]
        )
    print(
        f"POST /pubsub/push of binary Avro, wrk {args.connections} connections, "
        f"{args.rounds} rounds of {args.seconds:g} s each, taken in turn:"
    )
    print(table(rows))
    print(f"on / off = {ratio(loads['on'], loads['off'])}  (goal ≥ 0.9)")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench typedingest", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--count", action="store_true", help="the store alone, in instructions")
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--payload-bytes", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args(argv)
    if not args.count:
        return whole_path(args)
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
