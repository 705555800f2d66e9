"""Read latency: a 100-row `since` page out of 1,000,000 stored rows, alone,
under 32 concurrent clients, and while pushes are being ingested.

    python3 dev.py bench query [--rows 1000000] [--seconds 10] [--ingest 500]
                               [--before CHECKOUT]
    python3 dev.py bench query --filters [--rows 6000] [--rates 10,100]

Fills a DuckDB file through the store's own schema (rows in ingest order, as
ingest writes them), serves it with `recordline serve`, and drives
`GET /v1/records?since=<random>&limit=100` with wrk: one client, then 32;
each once alone and once while two more wrk connections push new messages
to the same server at about `--ingest` messages a second (each connection
pausing between pushes, so the load is bounded whatever the server does).
Every row is compared with the single-client one of the same run. The last
two phases are followers at the tail: the same clients read
`since=<a second before the phase>` while ingest runs, the newest rows, which
the store answers from its tail in memory.

`--before CHECKOUT` serves a second copy of the file with the `app` package
of another checkout (e.g. `git worktree add /tmp/before main`), loaded in
turn with the same phases, so a change is measured against the code it
replaces on the same machine in the same minutes.

Targets: p95 under 20 ms single-client, and under 50 ms at 32 clients at the
tail while ingest runs.

`--filters` measures what a filter costs one page instead (bench/filters.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import httpx

from app.store.duckdb.store import DuckDBStore
from bench.harness import (
    DONE_LUA,
    RECORDLINE,
    Load,
    Server,
    free_port,
    push_script,
    server,
    table,
    wrk,
)

START = datetime(2024, 4, 27, tzinfo=UTC)
STEP_US = 1000  # one row per millisecond of ingest time
# Pushes come from this many wrk connections, each pausing between pushes.
PUSH_CONNECTIONS = 2
# Pushes start this long before the reads and stop this long after them, so
# every read of a phase meets a running ingest.
PUSH_MARGIN_SECONDS = 1.0

FILL = """
INSERT INTO records
SELECT
  'm-' || i AS message_id,
  make_timestamptz({start} + i * {step} - 500000) AS publish_time,
  make_timestamptz({start} + i * {step}) AS ingest_time,
  'r-' || (i % 200000) AS id,
  make_timestamptz({start} + i * {step} - 900000) AS timestamp,
  ('{{"text": "Ejemplo de datos", "values": [1, 2, 3], "n": ' || i || ', "note": "'
    || repeat('x', 180) || '"}}')::JSON AS data,
  '{{"origin": "bench"}}'::JSON AS attributes,
  'projects/bench/subscriptions/records-push' AS subscription,
  NULL AS delivery_attempt,
  NULL AS trace_id,
  NULL AS schema
FROM range({rows}) t(i)
"""


def fill(path: Path, rows: int) -> None:
    async def create() -> None:  # the tables exactly as the store makes them
        store = DuckDBStore(str(path))
        await store.start()
        await store.close()

    asyncio.run(create())
    start_us = int(START.timestamp() * 1_000_000)
    with duckdb.connect(str(path)) as con:
        con.execute(FILL.format(start=start_us, step=STEP_US, rows=rows))
        con.execute("CHECKPOINT")


def page_script(rows: int) -> str:
    import random

    rng = random.Random(7)
    span = rows * STEP_US - 200 * STEP_US
    sinces = [
        (START + timedelta(microseconds=rng.randrange(span))).isoformat().replace("+00:00", "Z")
        for _ in range(2000)
    ]
    lua_list = ",".join(f'"{s}"' for s in sinces)
    return (
        f"local sinces = {{{lua_list}}}\n"
        "request = function()\n"
        "  local since = sinces[math.random(1, #sinces)]\n"
        '  return wrk.format("GET", "/v1/records?limit=100&since=" .. since)\n'
        "end\n" + DONE_LUA
    )


def tail_script(since: datetime) -> str:
    """Readers at the tail: every request from `since` on, the newest rows."""
    at = since.isoformat().replace("+00:00", "Z")
    return (
        "request = function()\n"
        f'  return wrk.format("GET", "/v1/records?limit=100&since={at}")\n'
        "end\n" + DONE_LUA
    )


@dataclass(frozen=True)
class Phase:
    clients: int
    ingest: bool
    tail: bool = False


PHASES = [
    Phase(1, False),
    Phase(32, False),
    Phase(1, True),
    Phase(32, True),
    Phase(1, True, tail=True),
    Phase(32, True, tail=True),
]


@dataclass(frozen=True)
class Result:
    reads: Load
    pushes: Load | None


def measure(srv: Server, phase: Phase, reads: str, pushes: str, seconds: float) -> Result:
    """Load `srv` with reads for `seconds`, with pushes running around them if asked."""
    if phase.tail:
        reads = tail_script(datetime.now(UTC) - timedelta(seconds=1))
    if not phase.ingest:
        return Result(wrk(srv.url, reads, connections=phase.clients, seconds=seconds), None)
    pushed: list[Load] = []
    pusher = threading.Thread(
        target=lambda: pushed.append(
            wrk(
                srv.url,
                pushes,
                connections=PUSH_CONNECTIONS,
                seconds=seconds + 2 * PUSH_MARGIN_SECONDS,
            )
        )
    )
    pusher.start()
    try:
        time.sleep(PUSH_MARGIN_SECONDS)
        load = wrk(srv.url, reads, connections=phase.clients, seconds=seconds)
    finally:
        pusher.join()
    return Result(load, pushed[0] if pushed else None)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench query")
    parser.add_argument("--rows", type=int, help="1,000,000; with --filters 6,000")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument(
        "--ingest", type=int, default=500, help="pushes a second at most, during ingest phases"
    )
    parser.add_argument(
        "--before", type=Path, help="a checkout whose app is measured beside this one"
    )
    parser.add_argument(
        "--filters",
        action="store_true",
        help="what a filter costs one page, on DuckDB and BigQuery (bench/filters.py)",
    )
    parser.add_argument("--rates", default="10,100", help="with --filters: BigQuery's msg/s")
    args = parser.parse_args(argv)
    if args.filters:
        from bench import filters

        return filters.main(args.rows or 6_000, [int(r) for r in args.rates.split(",")])
    args.rows = args.rows or 1_000_000
    pause_ms = max(1, round(PUSH_CONNECTIONS * 1000 / args.ingest))
    pushes = push_script(pause_ms=pause_ms)
    script = page_script(args.rows)
    codes = {"now": None} if args.before is None else {"before": args.before, "now": None}
    results: dict[tuple[str, Phase], Result] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        filled = Path(tmp) / "q.duckdb"
        fill(filled, args.rows)
        servers: dict[str, Server] = {}
        for code, checkout in codes.items():
            path = Path(tmp) / f"{code}.duckdb"  # a file is locked by one process
            shutil.copyfile(filled, path)
            env = {"RECORDLINE_LOG_LEVEL": "WARNING"}
            if checkout is not None:  # its `app` package ahead of this one's
                env["PYTHONPATH"] = str(checkout.resolve())
            port = free_port()
            command = [RECORDLINE, "serve", "--store", f"duckdb://{path}", "--port", str(port)]
            servers[code] = srv = stack.enter_context(server(command, port, env))
            # The pages measured must be full ones, not fast empty answers.
            probe = httpx.get(f"{srv.url}/v1/records?limit=100&since=2024-04-27T00:01:00Z")
            assert len(probe.json()["records"]) == 100, probe.text
            wrk(srv.url, script, connections=1, seconds=2)  # warm up
        for phase in PHASES:
            for code, srv in servers.items():
                results[code, phase] = measure(srv, phase, script, pushes, args.seconds)

    rows = [["code", "clients", "reads", "ingest", "pages/s", "p50 ms", "p95 ms", "p99 ms"]]
    rows[0] += ["errors", "pushes/s", "p95 / 1 client", "pages/s / 1 client"]
    for code in servers:
        alone = results[code, PHASES[0]].reads
        for phase in PHASES:
            load, pushed = results[code, phase].reads, results[code, phase].pushes
            errors = load.non2xx + load.socket_errors
            if pushed is not None:
                errors += pushed.non2xx + pushed.socket_errors
            rows.append(
                [
                    code,
                    str(phase.clients),
                    "tail" if phase.tail else "anywhere",
                    "yes" if phase.ingest else "no",
                    f"{load.rate:,.0f}",
                    f"{load.p50:.1f}",
                    f"{load.p95:.1f}",
                    f"{load.p99:.1f}",
                    str(errors),
                    "" if pushed is None else f"{pushed.rate:,.0f}",
                    f"{load.p95 / alone.p95:.1f}x",
                    f"{load.rate / alone.rate:.2f}x",
                ]
            )
    print(
        f"GET /v1/records?since=…&limit=100 over {args.rows:,} rows, {args.seconds:g} s each; "
        f"ingest: {PUSH_CONNECTIONS} wrk connections pausing {pause_ms} ms between pushes"
    )
    print(table(rows))
    print(
        "targets: p95 < 20 ms single-client; p95 < 50 ms at 32 clients at the tail "
        "while ingest runs"
    )
    return 0
