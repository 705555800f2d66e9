"""The dev stack's pace: what rate `recordline dev` keeps up with, alone and `--serving`.

    python3 dev.py bench devrate [--rates 100,150,200,300] [--seconds 10]

Each rate gets a stack of its own, as a user starts it (`recordline dev`, then
`recordline dev --serving`), and `recordline publish --rate R` for `--seconds`.
Once every record is stored, each one's lag is its ingest_time minus its
publish_time (one machine, one clock). A stack that keeps up has the same lag
at the end of the run as at its start; one that falls behind has a lag that
grows with the run: the last tenth's mean lag over the first tenth's says
which. Printed beside each `--serving` figure: the same over the DuckDB stack
at the same rate, measured in the same run.

Everything runs on this machine: the Pub/Sub emulator, the service, and with
`--serving` Google's Spanner emulator and the BigQuery stand-in, so the rate
the serving stack keeps up with is this machine's, not the cloud's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import msgspec

from bench.harness import free_port, table
from recordline_dev.devstack import find_emulator
from recordline_dev.processes import EmulatorNotFound

RECORDLINE = str(Path(sys.executable).with_name("recordline"))
START_SECONDS = 180
# Past this, a stored record is late enough to call the stack behind.
STORED_WITHIN_SECONDS = 120


class _Row(msgspec.Struct):
    publish_time: datetime
    ingest_time: datetime


class _Page(msgspec.Struct):
    records: list[_Row]
    next_page_token: str | None = None


class Lags(msgspec.Struct, frozen=True):
    stored: int
    p50: float
    p99: float
    first_tenth: float
    last_tenth: float

    @property
    def growth(self) -> float:
        return self.last_tenth / self.first_tenth


@contextlib.contextmanager
def stack(serving: bool, directory: Path) -> Iterator[tuple[str, str]]:
    """`recordline dev` (or `--serving`) on free ports: its URL and the emulator's host."""
    port, emulator_port = free_port(), free_port()
    argv = [RECORDLINE, "dev", "--port", str(port), "--emulator-port", str(emulator_port)]
    argv += ["--data-dir", str(directory / "sessions")]
    if serving:
        argv += ["--serving", "--spanner-port", str(free_port())]
    log = (directory / f"dev-{'serving' if serving else 'duckdb'}.log").open("w")
    dev = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        while not _ready(url):
            if dev.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"bench devrate: the dev stack did not start; see {log.name}")
            time.sleep(0.2)
        time.sleep(2)  # the banner comes once the push subscription is made
        yield url, f"127.0.0.1:{emulator_port}"
    finally:
        os.killpg(dev.pid, signal.SIGINT)
        try:
            dev.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait(5)
        log.close()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def measure(url: str, emulator: str, rate: int, seconds: float) -> Lags:
    count = int(rate * seconds)
    topic = ["--project", "recordline-dev", "--topic", "records"]
    subprocess.run(
        [RECORDLINE, "publish", *topic, "--count", str(count), "--rate", str(rate)],
        env={**os.environ, "PUBSUB_EMULATOR_HOST": emulator},
        check=True,
        capture_output=True,
        timeout=seconds * 10 + 120,
    )
    deadline = time.monotonic() + STORED_WITHIN_SECONDS
    rows = _stored(url)
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(1)
        rows = _stored(url)
    rows.sort(key=lambda r: r.publish_time)
    lags = [(r.ingest_time - r.publish_time).total_seconds() for r in rows]
    ordered = sorted(lags)
    tenth = max(1, len(lags) // 10)
    return Lags(
        stored=len(rows),
        p50=ordered[len(ordered) // 2],
        p99=ordered[int(len(ordered) * 0.99)],
        first_tenth=sum(lags[:tenth]) / tenth,
        last_tenth=sum(lags[-tenth:]) / tenth,
    )


def _stored(url: str) -> list[_Row]:
    rows: list[_Row] = []
    params: dict[str, str | int] = {"since": "2000-01-01T00:00:00Z", "limit": 1000}
    while True:
        page = msgspec.json.decode(
            httpx.get(f"{url}/v1/records", params=params, timeout=60).content, type=_Page
        )
        rows += page.records
        if len(page.records) < 1000 or page.next_page_token is None:
            return rows
        params = {"limit": 1000, "page_token": page.next_page_token}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench devrate", description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="100,150,200,300", help="messages/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="publishing time per rate")
    args = parser.parse_args(argv)
    try:
        find_emulator()
    except EmulatorNotFound as exc:
        print(f"bench devrate: {exc}", file=sys.stderr)
        return 1
    rates = [int(r) for r in args.rates.split(",")]
    rows = [["rate", "stack", "stored", "p50 lag", "p99 lag", "last/first tenth", "p99 / duckdb"]]
    with tempfile.TemporaryDirectory(prefix="recordline-devrate-") as tmp:
        for rate in rates:
            results: dict[bool, Lags] = {}
            for serving in (False, True):
                with stack(serving, Path(tmp)) as (url, emulator):
                    results[serving] = measure(url, emulator, rate, args.seconds)
            base = results[False]
            for serving, lags in results.items():
                rows.append(
                    [
                        f"{rate}/s",
                        "--serving" if serving else "duckdb",
                        f"{lags.stored:,}/{int(rate * args.seconds):,}",
                        f"{lags.p50:.2f} s",
                        f"{lags.p99:.2f} s",
                        f"{lags.growth:.1f}x",
                        f"{lags.p99 / base.p99:.1f}" if serving else "1.0",
                    ]
                )
    print(table(rows))
    return 0
