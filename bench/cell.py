"""A cell's capacity: pushes a second per vCPU, and what each system costs a process.

    python3 dev.py bench cell [--systems 10,100] [--pushes 2000] [--runs 3] [--concurrency 32]
    python3 dev.py bench cell --flood [--one] [--slices 6] [--slice-seconds 2]

On Google's Spanner emulator (a database per system) and the BigQuery stand-in,
with the real client libraries, `recordline serve` and `recordline exporter` as
processes, against a deployment of one system measured in the same run:

- **Start and memory**: a cell of N systems started from nothing, the seconds until
  its `/readyz` names no system unready; its resident memory and threads then, and
  again after a push to every system (each database's session and channel open).
- **Pushes a second per vCPU**: pushes sent to the cell's systems in turn, at
  `--concurrency`, each message's data about 1 KiB of order-like JSON (`--body-bytes`),
  each push carrying its system's OIDC token, which the service verifies as it does
  beyond Cloud Run (RS256 against a JWKS served here, each token cached once verified,
  as Pub/Sub sends one token for an hour), every one delivered again while refused:
  the server's CPU seconds per push acknowledged, as pushes a second per core, in
  `--runs` runs of `--pushes` each, so that their spread shows (the emulator, one
  transaction at a time, caps the rate here; the CPU per push is what a vCPU takes;
  Spanner's own CPU is not in it: infra/terraform/spanner.tf models that from Google's
  published throughput).
- **Exporter pool**: one `recordline exporter` holding every system's lease, idle:
  its memory and threads.

Each figure is written to `bench/cell.json` too (`--write`), where
`infra/fleet_cost.py` reads them.

`--flood` measures instead what one system's flood costs the others: a cell of three
systems on DuckDB files, one flooded in every other slice (`bench/flood.py`), the
others' push and read p99 flooded against unflooded, as a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from app.settings import QuerySettings
from app.store.spanner.schema import ddl
from bench.auth import KID, PUSHER, Certs
from bench.exporter import rss_mb
from bench.followers import cpu_seconds
from bench.harness import free_port, table
from bench.storage import record_data
from recordline_dev.processes import stop_group
from recordline_dev.serving import BigQueryStandIn, SpannerEmulator, find_spanner_emulator
from tests.bigquery.conftest import DATASET, PROJECT

PYTHON = [sys.executable, "-m", "app.cli"]
# Each system's push audience, as Terraform gives it (cell.tf): its path on the cell.
AUDIENCE = "https://bench-cell.run.app{prefix}/pubsub/push"
# An emulator instance holds at most 100 databases.
PER_INSTANCE = 90
RESULTS = Path(__file__).resolve().parent / "cell.json"
# How often a refused push is delivered again before it counts as lost.
DELIVERIES = 20
# Each load's message ids are its own: a message pushed again is a redelivery.
LOADS = itertools.count()


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


class Emulators:
    """The Spanner emulator with a database for each name, and the BigQuery stand-in."""

    def __init__(self, tmp: Path, names: Sequence[str], certs_url: str) -> None:
        self.emulator = SpannerEmulator(find_spanner_emulator(), log_path=tmp / "spanner.log")
        client = self.emulator.client(PROJECT)
        window = QuerySettings().dedupe_window_seconds
        self.databases: dict[str, str] = {}
        try:
            for start in range(0, len(names), PER_INSTANCE):
                instance = self.emulator.create_instance(client, f"cell-{start // PER_INSTANCE}")
                for name in names[start : start + PER_INSTANCE]:
                    self.databases[name] = self.emulator.create_database(
                        instance, name, ddl(window)
                    )
        finally:
            client.close()
        self.bigquery = BigQueryStandIn(PROJECT, DATASET, log_path=tmp / "bigquery.log")
        self.env = {
            "SPANNER_EMULATOR_HOST": self.emulator.host,
            "RECORDLINE_BIGQUERY_WRITE_ENDPOINT": self.bigquery.write,
            "BIGQUERY_EMULATOR_HOST": self.bigquery.jobs,
            "RECORDLINE_LOG_LEVEL": "WARNING",
            "RECORDLINE_OIDC_CERTS_URL": certs_url,
        }

    def systems(self, names: Sequence[str]) -> str:
        return json.dumps(
            {
                n: {
                    "serving": self.databases[n],
                    # Each system's dataset of its own, as Terraform gives it.
                    "store": f"bigquery://{PROJECT}/{DATASET}_{n}",
                    "push_audience": AUDIENCE.format(prefix=f"/systems/{n}"),
                    "push_service_accounts": PUSHER,
                }
                for n in names
            }
        )

    def cell_env(self, names: Sequence[str]) -> dict[str, str]:
        return {**self.env, "RECORDLINE_CELL": "bench", "RECORDLINE_SYSTEMS": self.systems(names)}

    def one_env(self, name: str) -> dict[str, str]:
        return {
            **self.env,
            "RECORDLINE_STORE": f"bigquery://{PROJECT}/{DATASET}",
            "RECORDLINE_SERVING": self.databases[name],
            "RECORDLINE_PUSH_AUDIENCE": AUDIENCE.format(prefix=""),
            "RECORDLINE_PUSH_SERVICE_ACCOUNTS": PUSHER,
        }

    def leased(self, names: Sequence[str]) -> bool:
        """Whether each of `names` has its export lease held."""
        client = self.emulator.client(PROJECT)
        try:
            for name in names:
                _, _, instance, _, database = self.databases[name].split("/")[-5:]
                db = client.instance(instance).database(database)
                with db.snapshot() as snapshot:
                    rows = list(
                        snapshot.execute_sql(
                            "SELECT holder FROM export_lease "
                            "WHERE name = 'bigquery' AND expires > CURRENT_TIMESTAMP()"
                        )
                    )
                if not rows:
                    return False
            return True
        finally:
            client.close()

    def close(self) -> None:
        self.bigquery.stop()
        self.emulator.stop()


class Served:
    """`recordline serve` as a process, and where its systems' paths are."""

    def __init__(self, env: dict[str, str], log: Path, prefixes: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.prefixes = prefixes
        self.log = log
        self.started = time.monotonic()
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [*PYTHON, "serve", "--port", str(self.port)],
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def ready(self, timeout: float = 600) -> float:
        """Seconds from the start until `/readyz` names nothing unready."""
        with httpx.Client(timeout=30) as client:
            while True:
                assert self.process.poll() is None, self.log.read_text()[-3000:]
                assert time.monotonic() - self.started < timeout, "not ready in time"
                try:
                    answer = client.get(f"{self.url}/readyz")
                except httpx.TransportError:
                    time.sleep(0.05)
                    continue
                if answer.status_code == 200 and not answer.json().get("not_ready"):
                    return time.monotonic() - self.started
                time.sleep(0.05)

    def close(self) -> None:
        stop_group(self.process, timeout=15)


def envelope(message_id: str, rng: random.Random, body_bytes: int) -> bytes:
    """A push of an order-like record whose data is about `body_bytes` of JSON."""
    order = record_data(rng)
    while len(order) < body_bytes - 80:
        order = order[:-1] + ',"more":' + record_data(rng) + "}"
    data = json.dumps(
        {"id": message_id, "timestamp": "2024-04-27T12:00:00Z", "data": json.loads(order)}
    ).encode()
    return json.dumps(
        {
            "message": {
                "data": base64.b64encode(data).decode(),
                "messageId": message_id,
                "publishTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "attributes": {"origin": "bench"},
            },
            "subscription": f"projects/{PROJECT}/subscriptions/bench",
        }
    ).encode()


def push_token(key: rsa.RSAPrivateKey, prefix: str) -> str:
    """A Google-style OIDC token for the system at `prefix`, as Pub/Sub sends its push
    subscription's: its audience, the push account, good for an hour."""
    now = int(time.time())
    claims = {
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE.format(prefix=prefix),
        "sub": "1",
        "email": PUSHER,
        "email_verified": True,
        "iat": now,
        "exp": now + 3600,
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": KID})


async def push_load(
    served: Served, pushes: int, concurrency: int, key: rsa.RSAPrivateKey, body_bytes: int
) -> tuple[int, float, int]:
    """`pushes` pushes to the served systems in turn, `concurrency` at a time, each with
    its system's token: how many were acknowledged, the server's CPU seconds meanwhile,
    and the deliveries refused."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(pushes):
        queue.put_nowait(n)
    acknowledged = refused = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    tokens = {prefix: push_token(key, prefix) for prefix in served.prefixes}
    rng = random.Random(pushes)
    # Made before the load: the client's work is not what is measured.
    load = next(LOADS)
    bodies = [envelope(f"load-{load}-{n}", rng, body_bytes) for n in range(pushes)]
    async with httpx.AsyncClient(base_url=served.url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal acknowledged, refused
            while not queue.empty():
                n = queue.get_nowait()
                prefix = served.prefixes[n % len(served.prefixes)]
                path = f"{prefix}/pubsub/push"
                headers = {
                    "content-type": "application/json",
                    "authorization": f"Bearer {tokens[prefix]}",
                }
                body = bodies[n]
                for _ in range(DELIVERIES):
                    answer = await client.post(path, content=body, headers=headers)
                    if answer.status_code == 204:
                        acknowledged += 1
                        break
                    refused += 1
                    await asyncio.sleep(0.05)  # Pub/Sub's redelivery comes later still

        cpu = cpu_seconds(served.process.pid)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        spent = cpu_seconds(served.process.pid) - cpu
    return acknowledged, spent, refused


def measure(
    emulators: Emulators,
    tmp: Path,
    names: list[str],
    args: argparse.Namespace,
    key: rsa.RSAPrivateKey,
    *,
    cell: bool,
) -> dict[str, Any]:
    """Start, memory, threads and pushes per vCPU of a cell of `names`, or (not `cell`)
    of a deployment of one system, names[0]."""
    if cell:
        env, prefixes = emulators.cell_env(names), [f"/systems/{n}" for n in names]
    else:
        env, prefixes = emulators.one_env(names[0]), [""]
    label = f"cell-{len(names)}" if cell else "one"
    served = Served(env, tmp / f"{label}.log", prefixes)
    try:
        started = served.ready()
        pid = served.process.pid
        cold = {"rss_mib": rss_mb(pid), "threads": threads(pid)}
        # One push to each system: each database's session and channel open.
        asyncio.run(push_load(served, len(prefixes), min(len(prefixes), 8), key, args.body_bytes))
        warm = {"rss_mib": rss_mb(pid), "threads": threads(pid)}
        cpu = cpu_seconds(pid)
        time.sleep(args.idle)
        warm["idle_cores"] = round((cpu_seconds(pid) - cpu) / args.idle, 4)
        # Spanner threads with no call for a minute end: what stays is what a cell holds.
        time.sleep(max(0.0, args.settle - args.idle))
        settled = {"rss_mib": rss_mb(pid), "threads": threads(pid)}
        runs = [
            asyncio.run(push_load(served, args.pushes, args.concurrency, key, args.body_bytes))
            for _ in range(args.runs)
        ]
        loaded = {"rss_mib": rss_mb(pid), "threads": threads(pid)}
        # One push at a time: every group commit of one row, as a system's pushes at
        # 10 a second are (a cell's systems each see about that).
        serial = [
            asyncio.run(push_load(served, args.pushes // 5, 1, key, args.body_bytes))
            for _ in range(args.runs)
        ]
    finally:
        served.close()
    rates = [round(a / cpu) for a, cpu, _ in runs if cpu]
    serial_rates = [round(a / cpu) for a, cpu, _ in serial if cpu]
    return {
        "systems": len(prefixes),
        "start_seconds": round(started, 2),
        "ready": cold,
        "warm": warm,
        "settled": settled,
        "loaded": loaded,
        "one_at_a_time_pushes_per_vcpu_second": round(statistics.median(serial_rates)),
        "one_at_a_time_runs": serial_rates,
        "pushes": sum(a for a, _, _ in runs),
        "refused_deliveries": sum(r for _, _, r in runs),
        "cpu_seconds": round(sum(cpu for _, cpu, _ in runs), 2),
        "pushes_per_vcpu_second": round(statistics.median(rates)),
        "runs": rates,
    }


def exporter(
    emulators: Emulators, tmp: Path, names: list[str], idle: float, settle: float
) -> dict[str, Any]:
    """One exporter instance holding every lease of `names`, idle: memory and threads."""
    env = {
        **os.environ,
        **emulators.env,
        "RECORDLINE_CELL": "bench",
        "RECORDLINE_SYSTEMS": emulators.systems(names),
    }
    log = tmp / f"exporter-{len(names)}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*PYTHON, "exporter"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while not emulators.leased(names):
            assert process.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the exporter held not every lease in 300 s"
            time.sleep(0.5)
        cpu = cpu_seconds(process.pid)
        time.sleep(idle)
        cores = (cpu_seconds(process.pid) - cpu) / idle
        started = threads(process.pid)
        time.sleep(max(0.0, settle - idle))
        return {
            "systems": len(names),
            "rss_mib": rss_mb(process.pid),
            "threads_at_start": started,
            "threads": threads(process.pid),
            "idle_cores": round(cores, 3),
        }
    finally:
        stop_group(process, timeout=15)


def per_system(low: dict[str, Any], high: dict[str, Any], *path: str) -> float:
    """What one system more costs, between two cells: the slope of `path`."""

    def at(found: dict[str, Any]) -> float:
        value: Any = found
        for key in path:
            value = value[key]
        return float(value)

    return (at(high) - at(low)) / (high["systems"] - low["systems"])


def main(argv: list[str]) -> int:
    if "--flood" in argv:
        # One system flooded while the others are measured: on DuckDB files, no emulator.
        from bench import flood

        return flood.main([a for a in argv if a != "--flood"])
    parser = argparse.ArgumentParser(prog="bench cell", description=__doc__)
    parser.add_argument("--systems", default="10,100", help="cell sizes, comma-separated")
    parser.add_argument("--pushes", type=int, default=2000, help="pushes per run")
    parser.add_argument("--runs", type=int, default=3, help="runs of pushes per cell")
    parser.add_argument(
        "--body-bytes", type=int, default=1024, help="a message's data, about (bytes)"
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle measured")
    parser.add_argument(
        "--settle", type=float, default=130.0, help="seconds idle before threads are counted"
    )
    parser.add_argument(
        "--no-exporter",
        action="store_true",
        help="measure the ingest side alone; --write keeps the exporter's figures as they were",
    )
    parser.add_argument("--write", action="store_true", help=f"write {RESULTS.name}")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.systems.split(",")]
    names = [f"s{n:03d}" for n in range(max(sizes))]
    results: dict[str, Any] = {}
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certs = Certs(key)
    with tempfile.TemporaryDirectory(prefix="recordline-cell-") as scratch, certs.serving():
        tmp = Path(scratch)
        began = time.monotonic()
        emulators = Emulators(tmp, names, certs.url)
        print(f"{len(names)} databases made in {time.monotonic() - began:.0f} s\n")
        try:
            results["one"] = measure(emulators, tmp, names, args, key, cell=False)
            print(f"one system: {json.dumps(results['one'])}", flush=True)
            for size in sizes:
                results[f"cell_{size}"] = measure(
                    emulators, tmp, names[:size], args, key, cell=True
                )
                print(f"cell of {size}: {json.dumps(results[f'cell_{size}'])}", flush=True)
            if not args.no_exporter:
                results["exporter"] = {
                    str(size): exporter(emulators, tmp, names[:size], args.idle, args.settle)
                    for size in sizes
                }
        finally:
            emulators.close()
    if args.no_exporter:
        # The exporter's figures as last measured, with their date.
        before = json.loads(RESULTS.read_text())
        results["exporter"] = before["runs"]["exporter"]
        exporter_measured = before.get("exporter_measured", before["measured"])
    else:
        exporter_measured = datetime.now(UTC).date().isoformat()
    report(results, sizes)
    if args.write:
        found = figures(results, sizes)
        found["exporter_measured"] = exporter_measured
        RESULTS.write_text(json.dumps(found, indent=2) + "\n")
        print(f"\nwritten to {RESULTS}")
    return 0


def _spread(runs: list[int]) -> str:
    return f"{min(runs):,} to {max(runs):,}"


def report(results: dict[str, Any], sizes: list[int]) -> None:
    rows = [
        [
            "serving",
            "systems",
            "ready (s)",
            "RSS ready",
            "RSS warm",
            "threads warm",
            "threads settled",
            "idle cores",
            "RSS loaded",
            "pushes/s per vCPU (runs)",
            "one at a time (runs)",
        ]
    ]
    for key in ["one", *(f"cell_{s}" for s in sizes)]:
        found = results[key]
        rows.append(
            [
                "one system" if key == "one" else "a cell",
                str(found["systems"]),
                f"{found['start_seconds']:.1f}",
                f"{found['ready']['rss_mib']:.0f} MiB",
                f"{found['warm']['rss_mib']:.0f} MiB",
                str(found["warm"]["threads"]),
                str(found["settled"]["threads"]),
                str(found["warm"]["idle_cores"]),
                f"{found['loaded']['rss_mib']:.0f} MiB",
                f"{found['pushes_per_vcpu_second']:,} ({_spread(found['runs'])})",
                f"{found['one_at_a_time_pushes_per_vcpu_second']:,} "
                f"({_spread(found['one_at_a_time_runs'])})",
            ]
        )
    print(table(rows))
    one = results["one"]["pushes_per_vcpu_second"]
    for size in sizes:
        cell = results[f"cell_{size}"]["pushes_per_vcpu_second"]
        print(f"a cell of {size}: {cell / one:.2f}x the pushes per vCPU of one system")
    if len(sizes) > 1:
        low, high = results[f"cell_{sizes[0]}"], results[f"cell_{sizes[-1]}"]
        print(
            f"each system more: {per_system(low, high, 'warm', 'rss_mib'):.2f} MiB, "
            f"{per_system(low, high, 'warm', 'threads'):.2f} threads, "
            f"{per_system(low, high, 'start_seconds'):.3f} s of start, "
            f"{per_system(low, high, 'warm', 'idle_cores'):.5f} of a core idle"
        )
    rows = [["exporter: systems", "RSS", "threads at start", "threads settled", "idle cores"]]
    for size, found in results["exporter"].items():
        rows.append(
            [
                size,
                f"{found['rss_mib']:.0f} MiB",
                str(found["threads_at_start"]),
                str(found["threads"]),
                str(found["idle_cores"]),
            ]
        )
    print(table(rows))


def figures(results: dict[str, Any], sizes: list[int]) -> dict[str, Any]:
    """What the cost model reads: per vCPU, per system, and as measured."""
    low, high = results[f"cell_{sizes[0]}"], results[f"cell_{sizes[-1]}"]
    exporters = results["exporter"]
    xlow, xhigh = exporters[str(sizes[0])], exporters[str(sizes[-1])]
    return {
        "about": (
            "python3 dev.py bench cell --write: a cell of systems on the Spanner emulator and "
            "the BigQuery stand-in, real client libraries, `recordline serve` and "
            "`recordline exporter` as processes; pushes a second per vCPU is acknowledged "
            "pushes over the server's CPU seconds; per-system figures are the slope between "
            "the two cell sizes"
        ),
        "measured": datetime.now(UTC).date().isoformat(),
        "pushes_per_vcpu_second": {
            "one_system": results["one"]["pushes_per_vcpu_second"],
            **{f"cell_{s}": results[f"cell_{s}"]["pushes_per_vcpu_second"] for s in sizes},
        },
        # What to plan with: the least of the cells' runs (runs here moved by up to 40%
        # from one to the next: the emulator's pace changes what a commit costs).
        "planning_pushes_per_vcpu_second": min(
            value
            for s in sizes
            for value in (
                *results[f"cell_{s}"]["runs"],
                *results[f"cell_{s}"]["one_at_a_time_runs"],
            )
        ),
        # Each run's, for their spread.
        "runs_pushes_per_vcpu_second": {
            "one_system": results["one"]["runs"],
            **{f"cell_{s}": results[f"cell_{s}"]["runs"] for s in sizes},
        },
        "push": "OIDC-verified (RS256, each token cached once verified), message data of "
        "about 1 KiB of order-like JSON",
        # Every group commit one row: a system's pushes at its declared rate (10 a second).
        "one_at_a_time_pushes_per_vcpu_second": {
            "one_system": results["one"]["one_at_a_time_pushes_per_vcpu_second"],
            **{
                f"cell_{s}": results[f"cell_{s}"]["one_at_a_time_pushes_per_vcpu_second"]
                for s in sizes
            },
        },
        "ingest_per_system": {
            "rss_mib": round(per_system(low, high, "warm", "rss_mib"), 2),
            "threads": round(per_system(low, high, "settled", "threads"), 2),
            "threads_at_start": round(per_system(low, high, "warm", "threads"), 2),
            "start_seconds": round(per_system(low, high, "start_seconds"), 3),
            "idle_cores": round(per_system(low, high, "warm", "idle_cores"), 5),
        },
        "ingest_base": {
            "rss_mib": round(
                low["warm"]["rss_mib"] - sizes[0] * per_system(low, high, "warm", "rss_mib"), 1
            ),
        },
        "exporter_per_system": {
            "rss_mib": round((xhigh["rss_mib"] - xlow["rss_mib"]) / (sizes[-1] - sizes[0]), 2),
            "threads": round((xhigh["threads"] - xlow["threads"]) / (sizes[-1] - sizes[0]), 2),
            "idle_cores": round(
                (xhigh["idle_cores"] - xlow["idle_cores"]) / (sizes[-1] - sizes[0]), 4
            ),
        },
        "runs": results,
    }
