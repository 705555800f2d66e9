"""End to end through the Pub/Sub emulator: publish at a rate, follow the API, time each record.

    python3 dev.py bench e2e [--rate 500] [--seconds 20] [--lanes 8]

`recordline serve` runs as a process on a DuckDB file, the emulator pushes to
it, and a follower walks /v1/records by page token as any consumer would. A
record is visible when the follower first sees it; its latency is that moment
minus the publish_time Pub/Sub stamped on it (one machine, one clock).

The emulator pushes at most two messages at a time per subscription, where
Pub/Sub keeps hundreds in flight, so one subscription caps the stored rate at
about 2 / (push round trip) whatever the service could do. `--lanes N` spreads
the messages over N topics, each with its own push subscription, to give the
service the concurrency Pub/Sub would; `--lanes 1` measures one subscription.
The SLO the seed systems set is 99% of records stored within 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import msgspec

from bench.harness import ROOT, free_port, server, table
from recordline_dev.client import (
    follow,
    generated_records,
    publish,
    publisher_client,
    trace_publishes,
)
from recordline_dev.devstack import Emulator, EmulatorNotFound, PubSubAdmin, find_emulator, wire

SLO_SECONDS = 5.0
SERVE = [sys.executable, "-m", "app.cli", "serve"]


class _Seen(msgspec.Struct, frozen=True):
    message_id: str
    publish_time: datetime


_decode = msgspec.json.Decoder(_Seen).decode


def percentile(values: list[float], fraction: float) -> float:
    return values[min(len(values) - 1, round(fraction * (len(values) - 1)))]


async def run(emulator: Emulator, url: str, token: str, args: argparse.Namespace) -> list[str]:
    count = round(args.rate * args.seconds)
    run_id = secrets.token_hex(4)
    async with PubSubAdmin(emulator.host) as admin:
        topics = []
        for lane in range(args.lanes):
            topic = f"bench-{run_id}-{lane}"
            # No dead-letter policy and no retry policy: this measures delivery,
            # and the emulator's redelivery differs from Pub/Sub's (see wire).
            await wire(
                admin, topic=topic, service_url=url, push_token=token, max_delivery_attempts=None
            )
            topics.append(admin.topic_path(topic))

    latencies: list[float] = []
    first_visible = last_visible = 0.0

    async def follower(http: httpx.AsyncClient) -> None:
        nonlocal first_visible, last_visible
        async for page in follow(http, idle=0.05):
            now = time.time()
            first_visible = first_visible or now
            last_visible = now
            latencies.extend(now - _decode(raw).publish_time.timestamp() for raw in page)

    trace_publishes()
    client = publisher_client(emulator_host=emulator.host)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        following = asyncio.create_task(follower(http))
        started = time.time()
        published = await asyncio.to_thread(
            publish, client, topics, generated_records(count), rate=args.rate
        )
        deadline = time.monotonic() + 120
        while len(latencies) < published.acknowledged and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        following.cancel()
    client.stop()

    latencies.sort()
    stored = len(latencies)
    within = sum(1 for v in latencies if v <= SLO_SECONDS) / max(published.acknowledged, 1)
    return [
        f"{args.lanes}",
        f"{published.acknowledged:,}",
        f"{published.rate:,.0f}/s",
        f"{stored / max(last_visible - started, 1e-9):,.0f}/s",
        f"{percentile(latencies, 0.5) * 1000:,.0f} ms" if latencies else "-",
        f"{percentile(latencies, 0.99) * 1000:,.0f} ms" if latencies else "-",
        f"{latencies[-1] * 1000:,.0f} ms" if latencies else "-",
        f"{within:.2%}",
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench e2e", description=__doc__)
    parser.add_argument("--rate", type=float, default=500, help="messages per second (500)")
    parser.add_argument("--seconds", type=float, default=20, help="how long to publish (20)")
    parser.add_argument(
        "--lanes", type=int, default=8, help="topics, each with a push subscription (8)"
    )
    args = parser.parse_args(argv)
    try:
        launcher = find_emulator()
    except EmulatorNotFound as exc:
        print(exc, file=sys.stderr)
        return 2

    token = secrets.token_urlsafe(24)
    port = free_port()
    with (
        tempfile.TemporaryDirectory() as tmp,
        Emulator(launcher, log_path=Path(tmp) / "emulator.log") as emulator,
        server(
            [*SERVE, "--port", str(port), "--store", f"duckdb://{Path(tmp) / 'bench.duckdb'}"],
            port,
            env={
                "RECORDLINE_PUSH_TOKEN": token,
                "RECORDLINE_LOG_LEVEL": "WARNING",
                "PYTHONPATH": str(ROOT),
            },
        ) as service,
    ):
        row = asyncio.run(run(emulator, service.url, token, args))
    print(
        f"\nend to end through the Pub/Sub emulator: {args.rate:g} messages/s for "
        f"{args.seconds:g} s, `recordline serve` on a DuckDB file\n"
    )
    header = ["lanes", "published", "publish rate", "stored rate", "p50", "p99", "max"]
    print(table([[*header, f"within {SLO_SECONDS:g} s"], row]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
