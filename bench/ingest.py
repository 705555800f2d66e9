"""Ingest throughput: Recordline on DuckDB against the floor and per-message designs.

    python3 dev.py bench ingest [--seconds 10] [--connections 64]

Prints msgs/s, p50/p99, peak RSS, and the ratios a/b and a/c. Targets: a/b ≥ 0.6,
a/c ≥ 5, p99 < 50 ms at 64 connections, peak RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.harness import RECORDLINE, free_port, push_script, server, table, uvicorn_argv, wrk


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
        }
        for name, design in designs.items():
            port = free_port()
            command, env = design(port)
            with server(command, port, env) as srv:
                wrk(srv.url, script, connections=args.connections, seconds=2)  # warm up
                load = wrk(srv.url, script, connections=args.connections, seconds=args.seconds)
                results[name] = (load, srv.peak_rss_mb())
    rows = [["design", "msgs/s", "p50 ms", "p99 ms", "non-2xx", "peak RSS MB"]]
    for name, (load, rss) in results.items():
        rows.append(
            [
                name,
                f"{load.rate:,.0f}",
                f"{load.p50:.1f}",
                f"{load.p99:.1f}",
                str(load.non2xx + load.socket_errors),
                f"{rss:.0f}",
            ]
        )
    print(f"POST /pubsub/push, wrk {args.connections} connections, {args.seconds:g} s each")
    print(table(rows))
    a, b, c = (results[k][0].rate for k in results)
    print(f"a/b = {a / b:.2f}  (target ≥ 0.6)")
    print(f"a/c = {a / c:.2f}  (target ≥ 5)")
    return 0
