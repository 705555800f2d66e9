"""Read latency: a 100-row `since` page out of 1,000,000 stored rows.

    python3 dev.py bench query [--rows 1000000] [--seconds 10]

Fills a DuckDB file through the store's own schema (rows in ingest order, as
ingest writes them), serves it with `recordline serve`, and drives
`GET /v1/records?since=<random>&limit=100` with wrk: one client, then 32.
Target: p95 under 20 ms single-client.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import httpx

from app.store.duckdb.store import DuckDBStore
from bench.harness import DONE_LUA, RECORDLINE, free_port, server, table, wrk

START = datetime(2024, 4, 27, tzinfo=UTC)
STEP_US = 1000  # one row per millisecond of ingest time

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
  NULL AS trace_id
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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench query")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q.duckdb"
        fill(path, args.rows)
        port = free_port()
        command = [RECORDLINE, "serve", "--store", f"duckdb://{path}", "--port", str(port)]
        with server(command, port, {"RECORDLINE_LOG_LEVEL": "WARNING"}) as srv:
            script = page_script(args.rows)
            # The pages measured must be full ones, not fast empty answers.
            probe = httpx.get(f"{srv.url}/v1/records?limit=100&since=2024-04-27T00:01:00Z").json()
            assert len(probe["records"]) == 100, probe
            wrk(srv.url, script, connections=1, seconds=2)  # warm up
            rows = [["clients", "pages/s", "p50 ms", "p95 ms", "p99 ms", "errors"]]
            for clients in (1, 32):
                load = wrk(srv.url, script, connections=clients, seconds=args.seconds)
                rows.append(
                    [
                        str(clients),
                        f"{load.rate:,.0f}",
                        f"{load.p50:.1f}",
                        f"{load.p95:.1f}",
                        f"{load.p99:.1f}",
                        str(load.non2xx + load.socket_errors),
                    ]
                )
    print(f"GET /v1/records?since=…&limit=100 over {args.rows:,} rows, {args.seconds:g} s each")
    print(table(rows))
    print("target: p95 < 20 ms single-client")
    return 0
