"""Ingest throughput: Recordline against the floor and per-message designs.

    python3 dev.py bench ingest [--rounds 5] [--seconds 2] [--connections 64]
                                [--designs abcde] [--checkout DIR ...] [--against REF ...]

(a) Recordline on DuckDB, served by `recordline serve`, (b) the floor: Litestar
decoding the envelope, its base64 and the record with msgspec, then 204, on
uvicorn with uvloop and httptools, (c) one INSERT per request, (d) Recordline
on the BigQuery store, appending through the real Storage Write client to the
fake AppendRows server in another process, and (e) Recordline on DuckDB with
the same record in a topic schema's binary Avro (the revision served by the
fake Schema API in another process, fetched once). `--designs ab` serves only
those; `--checkout DIR` adds design (a) as another checkout serves it (its
`.venv`, made by `python3 dev.py lint` there), to compare two commits in one run;
`--against REF` adds it as an earlier commit serves it (its files from git, run by
this checkout's interpreter), and prints a/a@REF: the change since then, measured in
the same run as both ratios to the floor.
All are served at once and loaded in turn with wrk, round after round (five
rounds of 2 s by default), each round starting with the next design, so the
machine's drift falls on all of them alike. Prints msgs/s, p50/p99 (medians
over the rounds), peak RSS, rows per append, and each design's ratio to the
floor: the median of its rounds' ratios (each round's two runs are seconds
apart), with their range. Targets: a/b ≥ 0.7, d/b ≥ 0.6, a/c ≥ 5, e/a ≥ 0.8,
p99 < 50 ms at 64 connections, peak RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import fastavro
import httpx

from bench.harness import (
    DATA,
    RECORD,
    RECORDLINE,
    ROOT,
    Load,
    Server,
    interleaved,
    push_script,
    table,
    uvicorn_argv,
)
from bench.writer import start_fake

BIGQUERY_STORE = "bigquery://bench-project/records"

# The harness's record as a topic schema's binary Avro: the same id, event
# time and data, 214 bytes instead of 299 of JSON.
SCHEMA_NAME = "projects/bench/schemas/records"
SCHEMA_REVISION = "0a1b2c3d"
AVRO_SCHEMA = {
    "type": "record",
    "name": "Record",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "timestamp", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {
            "name": "data",
            "type": {
                "type": "record",
                "name": "Data",
                "fields": [
                    {"name": "text", "type": "string"},
                    {"name": "values", "type": {"type": "array", "items": "long"}},
                    {"name": "note", "type": "string"},
                ],
            },
        },
    ],
}
SCHEMA_ATTRIBUTES = {
    "origin": "bench",
    "googclient_schemaname": SCHEMA_NAME,
    "googclient_schemarevisionid": SCHEMA_REVISION,
    "googclient_schemaencoding": "BINARY",
}


def avro_record() -> bytes:
    record = json.loads(RECORD)
    value = {**record, "timestamp": datetime.fromisoformat(record["timestamp"]), "data": DATA}
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(AVRO_SCHEMA), value)
    return out.getvalue()


@contextlib.contextmanager
def schema_api_fake(folder: Path) -> Iterator[str]:
    """The fake Schema API (tests/fake_schema_api.py) serving AVRO_SCHEMA, in a process."""
    definition = folder / "records.avsc"
    definition.write_text(json.dumps(AVRO_SCHEMA))
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_schema_api", "--port", "0", "--name", SCHEMA_NAME,
         "--revision", SCHEMA_REVISION, "--type", "AVRO", "--definition-file", str(definition)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert fake.stdout is not None
    line = fake.stdout.readline()
    try:
        if not line.startswith("listening on "):
            raise SystemExit(f"fake Schema API did not start: {line!r}")
        yield line.removeprefix("listening on ").strip()
    finally:
        fake.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            fake.wait(timeout=5)


@contextlib.contextmanager
def storage_write_fake() -> Iterator[str]:
    fake, address = start_fake(0.0)
    try:
        yield address
    finally:
        fake.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            fake.wait(timeout=5)


def rows_per_append(url: str) -> float:
    """From the service's own metrics: recordline.append.rows sum / count."""
    text = httpx.get(f"{url}/metrics").text
    sums = re.findall(r"^recordline_append_rows_(sum|count)(?:\{[^}]*\})? (\S+)$", text, re.M)
    found = {kind: float(value) for kind, value in sums}
    return found["sum"] / found["count"] if found.get("count") else float("nan")


def ratio(runs: list[Load], baseline: list[Load]) -> str:
    """The median of the rounds' ratios of rates, and their range."""
    each = [r.rate / b.rate for r, b in zip(runs, baseline, strict=True)]
    return f"{statistics.median(each):.2f}  (rounds {min(each):.2f}-{max(each):.2f})"


def checkout_design(directory: str) -> tuple[str, Path]:
    """Design (a) as the checkout in `directory` serves it: its name, and its recordline."""
    checkout = Path(directory).resolve()
    recordline = checkout / ".venv" / "bin" / "recordline"
    if not recordline.exists():
        raise SystemExit(f"{recordline} is missing: run `python3 dev.py lint` in {checkout}")
    commit = subprocess.run(
        ["git", "-C", str(checkout), "describe", "--always", "--dirty=+"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    return f"a@{commit} recordline (duckdb) in {checkout}", recordline


def reference_design(ref: str, folder: Path) -> tuple[str, Path]:
    """Design (a) as commit `ref` serves it: its name, and its files (`git archive`,
    no work tree of its own), which this checkout's interpreter runs."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", f"{ref}^{{commit}}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    source = folder / f"source-{commit}"
    source.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    return f"a@{commit} recordline (duckdb)", source


def reference_argv(source: Path, store: Path, port: int) -> list[str]:
    """`recordline serve` of the files in `source`: `-P` keeps this checkout's own `app`
    (the working directory's) off the path, so its PYTHONPATH's is imported."""
    run = "import sys; from app.cli import main; sys.exit(main())"
    store_url = f"duckdb://{store}"
    return [sys.executable, "-P", "-c", run, "serve", "--store", store_url, "--port", str(port)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench ingest")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--designs", default="abcde", help="which of a-e to serve (b always)")
    parser.add_argument(
        "--checkout", action="append", default=[], help="another checkout's design (a) too"
    )
    parser.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="REF",
        help="design (a) at an earlier commit too, e.g. 3711dcf; prints a/a@REF",
    )
    args = parser.parse_args(argv)
    chosen = set(args.designs) | {"b"} | ({"a"} if args.against else set())
    seen: dict[str, tuple[float, float]] = {}
    decoded: list[bool] = []

    def inspect(name: str, srv: Server) -> None:
        per_append = rows_per_append(srv.url) if name[0] in "ade" else float("nan")
        seen[name] = (srv.peak_rss_mb(), per_append)
        if name[0] == "e":  # the Avro pushes were decoded and stored, not rejected
            since = {"since": "2000-01-01T00:00:00Z", "limit": 1}
            (record,) = httpx.get(f"{srv.url}/v1/records", params=since).json()["records"]
            rejected = httpx.get(f"{srv.url}/v1/rejections", params=since).json()["rejections"]
            if record["schema"] != f"{SCHEMA_NAME}@{SCHEMA_REVISION}" or rejected:
                raise SystemExit(f"e did not store decoded records: {record}, {rejected}")
            decoded.append(
                record["data"] == {**json.loads(RECORD), "timestamp": "2024-04-27T12:00:00Z"}
            )

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        fake = stack.enter_context(storage_write_fake()) if "d" in chosen else ""
        schema_api = stack.enter_context(schema_api_fake(tmp)) if "e" in chosen else ""
        quiet = {"RECORDLINE_LOG_LEVEL": "WARNING"}
        designs: dict[str, Callable[[int], list[str]]] = {
            "a recordline (duckdb)": lambda port: [
                RECORDLINE, "serve", "--store", f"duckdb://{tmp / 'a.duckdb'}", "--port", str(port)
            ],
            "b floor (decode, 204)": lambda port: uvicorn_argv("bench.baselines:floor", port),
            "c per-message INSERT": lambda port: uvicorn_argv(
                "bench.baselines:per_message", port
            ),
            "d recordline (bigquery)": lambda port: [
                RECORDLINE, "serve", "--store", BIGQUERY_STORE, "--port", str(port)
            ],
            "e recordline (duckdb, Avro)": lambda port: [
                RECORDLINE, "serve", "--store", f"duckdb://{tmp / 'e.duckdb'}", "--port", str(port)
            ],
        }  # fmt: skip
        apps = {name: argv for name, argv in designs.items() if name[0] in chosen}
        env: dict[str, dict[str, str]] = {
            "a recordline (duckdb)": quiet,
            "c per-message INSERT": {"BENCH_DUCKDB": str(tmp / "c.duckdb")},
            "d recordline (bigquery)": {
                **quiet,
                "RECORDLINE_BIGQUERY_WRITE_ENDPOINT": fake,
                # No query is made; this only keeps the client off real credentials.
                "BIGQUERY_EMULATOR_HOST": "http://127.0.0.1:9",
            },
            "e recordline (duckdb, Avro)": {**quiet, "PUBSUB_EMULATOR_HOST": schema_api},
        }
        for n, directory in enumerate(args.checkout):
            name, recordline = checkout_design(directory)
            store = tmp / f"checkout{n}.duckdb"
            apps[name] = lambda port, r=recordline, s=store: [
                str(r), "serve", "--store", f"duckdb://{s}", "--port", str(port)
            ]  # fmt: skip
            env[name] = quiet
        against: list[str] = []
        for ref in args.against:
            name, source = reference_design(ref, tmp)
            store = tmp / f"{name.split(' ', 1)[0]}.duckdb"
            apps[name] = lambda port, src=source, s=store: reference_argv(src, s, port)
            env[name] = {**quiet, "PYTHONPATH": str(source)}
            against.append(name)
        loads = interleaved(
            apps,
            push_script(),
            rounds=args.rounds,
            seconds=args.seconds,
            connections=args.connections,
            env=env,
            scripts={
                "e recordline (duckdb, Avro)": push_script(
                    data=avro_record(), attributes=SCHEMA_ATTRIBUTES
                )
            },
            inspect=inspect,
        )
    rows = [["design", "msgs/s", "p50 ms", "p99 ms", "non-2xx", "peak RSS MB", "rows/append"]]
    for name, runs in loads.items():
        rss, per_append = seen[name]
        rows.append(
            [name, f"{statistics.median(r.rate for r in runs):,.0f}",
             f"{statistics.median(r.p50 for r in runs):.1f}",
             f"{statistics.median(r.p99 for r in runs):.1f}",
             str(sum(r.non2xx + r.socket_errors for r in runs)),
             f"{rss:.0f}", "" if per_append != per_append else f"{per_append:.0f}"]
        )  # fmt: skip
    print(
        f"POST /pubsub/push, wrk {args.connections} connections, {args.rounds} rounds of "
        f"{args.seconds:g} s per design, taken in turn; medians over the rounds"
    )
    print(table(rows))
    by = {name[0]: runs for name, runs in loads.items() if name[1] == " "}
    floor = by["b"]
    targets = {"a": "≥ 0.7", "d": "≥ 0.6"}
    for name, runs in loads.items():
        if name[0] in "ade" and not name.startswith("e"):
            short = name.split(" ", 1)[0]
            print(f"{short}/b = {ratio(runs, floor)}  (target {targets.get(name[0], '≥ 0.7')})")
    for name in against:
        short = name.split(" ", 1)[0]
        print(f"a/{short} = {ratio(by['a'], loads[name])}  (the change since {short[2:]})")
    if "a" in by and "c" in by:
        print(f"a/c = {ratio(by['a'], by['c'])}  (target ≥ 5)")
    if "a" in by and "e" in by:
        print(f"e/a = {ratio(by['e'], by['a'])}  (target ≥ 0.8: binary Avro against JSON)")
        print(f"e stored every push as a record decoded with its schema: {all(decoded)}")
    return 0
