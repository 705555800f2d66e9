"""The exporter service and ingest that scales to zero: memory, failover, cold start.

    python3 dev.py bench exporter [--systems 1,10] [--trials 3] [--idle 20]

All on Google's Spanner emulator and BigQuery's fakes (in this process), on this machine.

- **Memory and idle CPU per system**: one `recordline exporter` exporting N
  systems of a cell (a database and a dataset each), idle, its resident memory and CPU
  over `--idle` seconds, for each N of `--systems`: the slope is what one
  more system costs an exporter instance.
- **Busy**: the same exporter with `--rows` rows committed to each of three
  systems at once; its CPU until BigQuery holds them all, per row exported.
- **Failover**: two exporters, three systems; the one holding the most leases
  killed outright (SIGKILL); the seconds until the other holds each of them
  (`export_lease`), over `--trials` kills. The lease is 15 s; the other claims
  it again as it expires.
- **Push from cold**: `recordline serve` on the serving tier started from
  nothing (an ingest scaled to zero), a push sent at once and held until the
  process listens, as Cloud Run holds it; seconds from the process's start to
  the push's 204, and to `/readyz` answering 200, over `--trials` starts. Cloud
  Run's own part (placing an instance, pulling the image) comes on top, and is
  not measured here.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from app.records import Record
from app.settings import QuerySettings
from app.store.open import spanner_database
from app.store.spanner.ledger import standing_of
from app.store.spanner.schema import ddl
from app.store.spanner.serving import SpannerServing
from bench.followers import cpu_seconds
from bench.harness import free_port, table
from recordline_dev.processes import stop_group
from recordline_dev.serving import SpannerEmulator, find_spanner_emulator
from tests.bigquery.conftest import DATASET, PROJECT
from tests.bigquery.threaded import ThreadedBigQuery

PYTHON = [sys.executable, "-m", "app.cli"]
PUSH_TOKEN = "bench-push-token-0123456789"
INSTANCE = "serving"


def dataset(name: str) -> str:
    """A system's BigQuery dataset."""
    return f"{DATASET}_{name.replace('-', '_')}"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Fleet:
    """The emulator with databases for `names`, and BigQuery's fakes."""

    def __init__(self, tmp: Path, names: list[str]) -> None:
        self.emulator = SpannerEmulator(find_spanner_emulator(), log_path=tmp / "spanner.log")
        client = self.emulator.client(PROJECT)
        try:
            instance = self.emulator.create_instance(client, INSTANCE)
            window = QuerySettings().dedupe_window_seconds
            self.databases = {
                name: self.emulator.create_database(instance, name, ddl(window)) for name in names
            }
        finally:
            client.close()
        self.bigquery = ThreadedBigQuery()
        self.env = {
            "SPANNER_EMULATOR_HOST": self.emulator.host,
            "RECORDLINE_BIGQUERY_WRITE_ENDPOINT": self.bigquery.write.address,
            "BIGQUERY_EMULATOR_HOST": self.bigquery.jobs.endpoint,
            "RECORDLINE_LOG_LEVEL": "WARNING",
        }

    def systems(self, names: list[str]) -> str:
        """A cell's systems: each a database and a dataset of its own, as Terraform
        makes them (a cell refuses two systems stored in one place)."""
        return json.dumps(
            {
                n: {"serving": self.databases[n], "store": f"bigquery://{PROJECT}/{dataset(n)}"}
                for n in names
            }
        )

    def exporter(self, names: list[str], log: Path) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            **self.env,
            "RECORDLINE_CELL": "bench",
            "RECORDLINE_SYSTEMS": self.systems(names),
        }
        with log.open("ab") as out:
            return subprocess.Popen(
                [*PYTHON, "exporter"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def holders(self, names: list[str]) -> dict[str, int | None]:
        client = self.emulator.client(PROJECT)
        try:
            found: dict[str, int | None] = {}
            for name in names:
                db = client.instance(INSTANCE).database(name)
                with db.snapshot() as snapshot:
                    rows = list(
                        snapshot.execute_sql(
                            "SELECT holder FROM export_lease "
                            "WHERE name = 'bigquery' AND expires > CURRENT_TIMESTAMP()"
                        )
                    )
                found[name] = int(standing_of(rows[0][0])[1].split("/")[-2]) if rows else None
            return found
        finally:
            client.close()

    def close(self) -> None:
        self.bigquery.stop()
        self.emulator.stop()


def memory(fleet: Fleet, tmp: Path, sizes: list[int], idle: float) -> list[list[str]]:
    rows = [["systems", "RSS (MB)", "idle CPU (cores)", "leases held"]]
    for size in sizes:
        names = [f"system-{n:03d}" for n in range(size)]
        process = fleet.exporter(names, tmp / f"memory-{size}.log")
        try:
            deadline = time.monotonic() + 120
            while any(h is None for h in fleet.holders(names).values()):
                assert process.poll() is None, (tmp / f"memory-{size}.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "the exporter took no lease in 120 s"
                time.sleep(0.5)
            time.sleep(3.0)  # settled: every system's loops running
            before = cpu_seconds(process.pid)
            time.sleep(idle)
            cores = (cpu_seconds(process.pid) - before) / idle
            rows.append([str(size), f"{rss_mb(process.pid):.0f}", f"{cores:.3f}", str(size)])
        finally:
            stop_group(process, timeout=15)
    return rows


async def commit_rows(fleet: Fleet, names: list[str], rows: int) -> None:
    """`rows` records committed to each system's database, in batches of 100."""
    now = time.time_ns() // 1000
    for name in names:
        serving = SpannerServing(
            spanner_database(fleet.databases[name]), emulator_host=fleet.emulator.host
        )
        await serving.start()
        try:
            for start in range(0, rows, 100):
                batch = [
                    Record(
                        message_id=f"{name}-{n}",
                        publish_time=now,
                        ingest_time=now,
                        id=str(n),
                        data=json.dumps({"n": n, "pad": "x" * 800}),
                    )
                    for n in range(start, min(start + 100, rows))
                ]
                await serving.commit(batch, within=30)
        finally:
            await serving.close()


def exported_count(fleet: Fleet, names: list[str]) -> int:
    """The records BigQuery holds of the systems `names`, each counted once."""
    return sum(
        len({row["message_id"] for row in fleet.bigquery.write.rows(table)})
        for table in (f"projects/{PROJECT}/datasets/{dataset(n)}/tables/records" for n in names)
    )


def busy(fleet: Fleet, tmp: Path, rows: int) -> str:
    names = ["system-000", "system-001", "system-002"]
    process = fleet.exporter(names, tmp / "busy.log")
    try:
        while any(h is None for h in fleet.holders(names).values()):
            assert process.poll() is None, (tmp / "busy.log").read_text()[-2000:]
            time.sleep(0.5)
        before_rows = exported_count(fleet, names)
        asyncio.run(commit_rows(fleet, names, rows))
        cpu, started = cpu_seconds(process.pid), time.monotonic()
        deadline = started + 600
        while exported_count(fleet, names) < before_rows + 3 * rows:
            assert time.monotonic() < deadline, "the rows were not exported in 600 s"
            time.sleep(0.5)
        spent, took = cpu_seconds(process.pid) - cpu, time.monotonic() - started
    finally:
        stop_group(process, timeout=15)
    total = 3 * rows
    return (
        f"{total} rows of ~1 KiB (three systems) exported in {took:.1f} s, "
        f"{spent:.1f} s of CPU: {spent / total * 1e6:.0f} µs a row, "
        f"{total / spent:,.0f} rows a second per core"
    )


def failover(fleet: Fleet, tmp: Path, trials: int) -> tuple[list[float], list[str]]:
    names = ["system-000", "system-001", "system-002"]
    taken: list[float] = []
    notes = []
    for trial in range(trials):
        exporters = [fleet.exporter(names, tmp / f"failover-{trial}-{n}.log") for n in (1, 2)]
        try:
            deadline = time.monotonic() + 120
            while True:
                held = fleet.holders(names)
                if all(h is not None for h in held.values()):
                    break
                assert time.monotonic() < deadline, "no exporter took every lease"
                time.sleep(0.2)
            busiest = Counter(held.values()).most_common(1)[0][0]
            orphaned = {n for n, pid in held.items() if pid == busiest}
            (survivor,) = [e.pid for e in exporters if e.pid != busiest]
            os.kill(busiest, signal.SIGKILL)  # type: ignore[arg-type]
            killed = time.monotonic()
            seen: dict[str, float] = {}
            while seen.keys() != orphaned and time.monotonic() - killed < 60:
                for name, pid in fleet.holders(list(orphaned)).items():
                    if pid == survivor and name not in seen:
                        seen[name] = time.monotonic() - killed
                time.sleep(0.1)
            taken += seen.values()
            notes.append(f"trial {trial + 1}: {len(orphaned)} leases, {sorted(seen.values())}")
        finally:
            for process in exporters:
                stop_group(process, timeout=15)
        time.sleep(16)  # the killed instance's leases expire before the next trial
    return taken, notes


def envelope(message_id: str) -> dict[str, Any]:
    data = json.dumps({"id": message_id, "data": "cold"}).encode()
    return {
        "message": {
            "data": base64.b64encode(data).decode(),
            "messageId": message_id,
            "publishTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        },
        "subscription": f"projects/{PROJECT}/subscriptions/bench",
    }


def cold_push(fleet: Fleet, tmp: Path, trial: int) -> float:
    """Seconds from `recordline serve`'s start to its first push's 204."""
    port = free_port()
    env = {
        **os.environ,
        **fleet.env,
        "RECORDLINE_STORE": f"bigquery://{PROJECT}/{dataset('system-000')}",
        "RECORDLINE_SERVING": fleet.databases["system-000"],
        "RECORDLINE_PUSH_TOKEN": PUSH_TOKEN,
    }
    log = tmp / f"cold-{trial}.log"
    started = time.monotonic()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*PYTHON, "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=30) as client:
            while True:
                assert process.poll() is None, log.read_text()[-2000:]
                try:
                    answer = client.post(
                        f"{url}/pubsub/push?token={PUSH_TOKEN}", json=envelope(f"cold-{trial}")
                    )
                except httpx.TransportError:
                    time.sleep(0.01)
                    continue
                if answer.status_code == 204:
                    pushed = time.monotonic() - started
                    break
                time.sleep(0.05)  # 503 while starting: Pub/Sub would deliver it again
            # Nothing left unready behind the first answer.
            ready = client.get(f"{url}/readyz")
            assert ready.status_code == 200, ready.text
        return pushed
    finally:
        stop_group(process, timeout=15)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench exporter", description=__doc__)
    parser.add_argument("--systems", default="1,10", help="fleet sizes, comma-separated")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle measured")
    parser.add_argument("--rows", type=int, default=3000, help="rows per system, busy")
    parser.add_argument(
        "--only",
        choices=["memory", "busy", "failover", "cold"],
        action="append",
        help="run only these parts (repeat to name several)",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.systems.split(",")]
    names = [f"system-{n:03d}" for n in range(max(max(sizes), 3))]
    with tempfile.TemporaryDirectory(prefix="recordline-exporter-") as scratch:
        tmp = Path(scratch)
        fleet = Fleet(tmp, names)
        try:
            parts = set(args.only or ["memory", "busy", "failover", "cold"])
            if "memory" in parts:
                print("One exporter, idle, by the systems it exports:")
                rows = memory(fleet, tmp, sizes, args.idle)
                print(table(rows))
                if len(sizes) > 1:
                    (low, high) = (rows[1], rows[-1])
                    slope = (float(high[1]) - float(low[1])) / (int(high[0]) - int(low[0]))
                    cores = (float(high[2]) - float(low[2])) / (int(high[0]) - int(low[0]))
                    print(f"each system more: {slope:.1f} MB, {cores:.4f} of a core idle")
                print()
            if "busy" in parts:
                print("One exporter, busy: " + busy(fleet, tmp, args.rows))
                print()
            if "failover" in parts:
                taken, notes = failover(fleet, tmp, args.trials)
                print("Failover: an exporter killed (SIGKILL), the other holding each lease after")
                print("\n".join(notes))
                print(
                    f"median {statistics.median(taken):.1f} s, max {max(taken):.1f} s "
                    "(the lease: 15 s)"
                )
                print()
            if "cold" in parts:
                pushes = [cold_push(fleet, tmp, t) for t in range(args.trials)]
                print("Push from cold: `recordline serve` (serving tier) started, a push held")
                answered = ", ".join(f"{p:.2f}" for p in pushes)
                print(f"until it listens, answered 204 after (s): {answered}")
                print(f"median {statistics.median(pushes):.2f} s, max {max(pushes):.2f} s")
        finally:
            fleet.close()
    return 0
