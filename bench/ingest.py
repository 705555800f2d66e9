"""Ingest throughput: Recordline against the floor and per-message designs.

    python3 dev.py bench ingest [--seconds 10] [--connections 64]

(a) Recordline on DuckDB, (b) the floor: decode and 204, (c) one INSERT per
request, and (d) Recordline on the BigQuery store, appending through the real
Storage Write client to the fake AppendRows server in another process. Prints
msgs/s, p50/p99, peak RSS, rows per append, and the ratios. Targets: a/b and
d/b ≥ 0.6, a/c ≥ 5, p99 < 50 ms at 64 connections, peak RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.harness import RECORDLINE, free_port, push_script, server, table, uvicorn_argv, wrk
from bench.writer import start_fake

BIGQUERY_STORE = "bigquery://bench-project/records"


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
    sums = re.findall(r"^recordline_append_rows_(sum|count)\{[^}]*\} (\S+)$", text, re.M)
    found = {kind: float(value) for kind, value in sums}
    return found["sum"] / found["count"] if found.get("count") else float("nan")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench ingest")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args(argv)
    script = push_script()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        a_file, c_file = Path(tmp) / "a.duckdb", Path(tmp) / "c.duckdb"
        designs = {
            "a recordline (duckdb)": lambda port: (
                [RECORDLINE, "serve", "--store", f"duckdb://{a_file}", "--port", str(port)],
                {"RECORDLINE_LOG_LEVEL": "WARNING"},
            ),
            "b floor (decode, 204)": lambda port: (uvicorn_argv("bench.baselines:floor", port), {}),
            "c per-message INSERT": lambda port: (
                uvicorn_argv("bench.baselines:per_message", port),
                {"BENCH_DUCKDB": str(c_file)},
            ),
            "d recordline (bigquery)": lambda port: (
                [RECORDLINE, "serve", "--store", BIGQUERY_STORE, "--port", str(port)],
                {
                    "RECORDLINE_LOG_LEVEL": "WARNING",
                    "RECORDLINE_BIGQUERY_WRITE_ENDPOINT": fake,
                    # No query is made; this only keeps the client off real credentials.
                    "BIGQUERY_EMULATOR_HOST": "http://127.0.0.1:9",
                },
            ),
        }
        with storage_write_fake() as fake:
            for name, design in designs.items():
                port = free_port()
                command, env = design(port)
                with server(command, port, env) as srv:
                    wrk(srv.url, script, connections=args.connections, seconds=2)  # warm up
                    load = wrk(srv.url, script, connections=args.connections, seconds=args.seconds)
                    per_append = rows_per_append(srv.url) if name[0] in "ad" else float("nan")
                    results[name] = (load, srv.peak_rss_mb(), per_append)
    rows = [["design", "msgs/s", "p50 ms", "p99 ms", "non-2xx", "peak RSS MB", "rows/append"]]
    for name, (load, rss, per_append) in results.items():
        errors = load.non2xx + load.socket_errors
        rows.append(
            [name, f"{load.rate:,.0f}", f"{load.p50:.1f}", f"{load.p99:.1f}", str(errors),
             f"{rss:.0f}", "" if per_append != per_append else f"{per_append:.0f}"]
        )  # fmt: skip
    print(f"POST /pubsub/push, wrk {args.connections} connections, {args.seconds:g} s each")
    print(table(rows))
    a, b, c, d = (results[k][0].rate for k in results)
    print(f"a/b = {a / b:.2f}  (target ≥ 0.6)")
    print(f"a/c = {a / c:.2f}  (target ≥ 5)")
    print(f"d/b = {d / b:.2f}  (target ≥ 0.6)")
    return 0
