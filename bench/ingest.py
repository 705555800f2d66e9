"""Ingest throughput: Recordline against the floor and per-message designs.

    python3 dev.py bench ingest [--rounds 5] [--seconds 2] [--connections 64]

(a) Recordline on DuckDB, (b) the floor: decode and 204, (c) one INSERT per
request, and (d) Recordline on the BigQuery store, appending through the real
Storage Write client to the fake AppendRows server in another process. All
four are served at once and loaded in turn, round after round (five rounds of
2 s by default), so the machine's drift falls on all of them alike. Prints msgs/s,
p50/p99, peak RSS, rows per append, and the ratios with their range over the
rounds. Targets: a/b and d/b ≥ 0.6, a/c ≥ 5, p99 < 50 ms at 64 connections,
peak RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.harness import RECORDLINE, Load, Server, interleaved, push_script, table, uvicorn_argv
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


def ratio(runs: list[Load], baseline: list[Load]) -> str:
    """Ratio of mean rates, and its range over the rounds."""
    mean = statistics.mean(r.rate for r in runs) / statistics.mean(b.rate for b in baseline)
    each = [r.rate / b.rate for r, b in zip(runs, baseline, strict=True)]
    return f"{mean:.2f}  (rounds {min(each):.2f}-{max(each):.2f})"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench ingest")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args(argv)
    seen: dict[str, tuple[float, float]] = {}

    def inspect(name: str, srv: Server) -> None:
        per_append = rows_per_append(srv.url) if name[0] in "ad" else float("nan")
        seen[name] = (srv.peak_rss_mb(), per_append)

    with tempfile.TemporaryDirectory() as tmp, storage_write_fake() as fake:
        a_file, c_file = Path(tmp) / "a.duckdb", Path(tmp) / "c.duckdb"
        quiet = {"RECORDLINE_LOG_LEVEL": "WARNING"}
        loads = interleaved(
            {
                "a recordline (duckdb)": lambda port: [
                    RECORDLINE, "serve", "--store", f"duckdb://{a_file}", "--port", str(port)
                ],
                "b floor (decode, 204)": lambda port: uvicorn_argv("bench.baselines:floor", port),
                "c per-message INSERT": lambda port: uvicorn_argv(
                    "bench.baselines:per_message", port
                ),
                "d recordline (bigquery)": lambda port: [
                    RECORDLINE, "serve", "--store", BIGQUERY_STORE, "--port", str(port)
                ],
            },
            push_script(),
            rounds=args.rounds,
            seconds=args.seconds,
            connections=args.connections,
            env={
                "a recordline (duckdb)": quiet,
                "c per-message INSERT": {"BENCH_DUCKDB": str(c_file)},
                "d recordline (bigquery)": {
                    **quiet,
                    "RECORDLINE_BIGQUERY_WRITE_ENDPOINT": fake,
                    # No query is made; this only keeps the client off real credentials.
                    "BIGQUERY_EMULATOR_HOST": "http://127.0.0.1:9",
                },
            },
            inspect=inspect,
        )  # fmt: skip
    rows = [["design", "msgs/s", "p50 ms", "p99 ms", "non-2xx", "peak RSS MB", "rows/append"]]
    for name, runs in loads.items():
        rss, per_append = seen[name]
        rows.append(
            [name, f"{statistics.mean(r.rate for r in runs):,.0f}",
             f"{statistics.median(r.p50 for r in runs):.1f}",
             f"{statistics.median(r.p99 for r in runs):.1f}",
             str(sum(r.non2xx + r.socket_errors for r in runs)),
             f"{rss:.0f}", "" if per_append != per_append else f"{per_append:.0f}"]
        )  # fmt: skip
    print(
        f"POST /pubsub/push, wrk {args.connections} connections, {args.rounds} rounds of "
        f"{args.seconds:g} s per design, taken in turn; medians of p50/p99"
    )
    print(table(rows))
    a, b, c, d = loads.values()
    print(f"a/b = {ratio(a, b)}  (target ≥ 0.6)")
    print(f"a/c = {ratio(a, c)}  (target ≥ 5)")
    print(f"d/b = {ratio(d, b)}  (target ≥ 0.6)")
    return 0
