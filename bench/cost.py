"""What a month of followers costs: BigQuery alone against the Spanner serving tier.

    python3 dev.py bench cost [--rates 100,1000] [--followers 1,100] [--seconds 6]

Measured in this run, then priced at the list prices below:
- **BigQuery alone**: the bytes one tail poll bills after 30 days at each rate
  (the stream, the jobs.query fake and its billing model of `bench bqcost`);
  a follower polls every 5 s, so a month is 518,400 of them.
- **Serving tier**: `recordline`'s app on a loopback port over the Spanner
  emulator and the BigQuery fakes. Rows are pushed through `/pubsub/push` at
  a steady rate while N followers walk `/v1/records` by page token, each
  polling every 5 s of a clock compressed `SPEEDUP` times; counted: Spanner
  reads per poll, BigQuery queries (inside Spanner's reach there must be
  none), and the Spanner reads of each look-up.
- **Response bytes**: a 100-row page of order-like records (random ids,
  amounts, items and words: as varied as real data), as served, plain and
  gzipped, from the same app; a row's JSON size also sizes Spanner storage.

The serving tier's price is a fixed instance plus storage; its reads per poll
show that followers do not add to it (a per-instance cache of the tail serves
them). Egress is priced separately: it is the same on either store and is
what compression saves.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory

from app.asgi import create_app
from app.settings import QuerySettings, Settings
from app.store.spanner.schema import retention_days
from bench.bqcost import TAIL, billed, run_rate
from bench.harness import table
from recordline_dev.processes import EmulatorNotFound
from tests.bigquery.billing import DOLLARS_PER_TIB
from tests.bigquery.threaded import ThreadedBigQuery, serving_store
from tests.conftest import served
from tests.spanner.emulator import SpannerEmulator, find_emulator

# --- list prices and capacity, with where they come from ------------------------
HOURS_A_MONTH = 730
POLLS_A_MONTH = 30 * 86_400 // 5
# Spanner, regional (us-central1), Standard edition: $0.90 a node-hour, a node
# being 1,000 processing units; storage $0.30 a GB-month (cloud.google.com/spanner/pricing).
SPANNER_NODE_HOUR = 0.90
SPANNER_GB_MONTH = 0.30
# Spanner's documented throughput for a regional instance: per 1,000 processing
# units about 22,500 reads/s or 3,500 writes/s of 1 KB rows, to be run at no
# more than 65% high-priority CPU (cloud.google.com/spanner/docs/performance,
# .../cpu-utilization#recommended-max). 100 PU is the smallest instance.
WRITES_PER_NODE = 3_500
READS_PER_NODE = 22_500
RECOMMENDED_CPU = 0.65
MIN_UNITS = 100
# A row in Spanner: the stored row, and an entry in each of its two indexes
# (key columns plus the base table's key), modelled, not measured.
INDEX_ENTRY_BYTES = 64
# Internet egress, Premium Tier, from North America, first 10 TiB a month
# (cloud.google.com/vpc/network-pricing): $0.12 a GiB.
EGRESS_GIB = 0.12

SPEEDUP = 10  # a follower's 5 s poll becomes 0.5 s
PUSH_TOKEN = "cost-bench-push-token-0123"


WORDS = ["order", "shipped", "paid", "refunded", "pending", "cart", "item", "customer", "region"]


def envelope(n: int, rng: random.Random) -> dict[str, object]:
    """A push of an order-like record, with values as varied as real ones (a
    repeated filler would compress far better than data does)."""
    record = {
        "id": f"order-{rng.getrandbits(48):012x}",
        "timestamp": f"2024-04-27T12:{n // 60 % 60:02d}:{n % 60:02d}.{rng.randrange(10**6):06d}Z",
        "data": {
            "customer": f"c-{rng.getrandbits(32):08x}",
            "amount": round(rng.uniform(1, 500), 2),
            "currency": rng.choice(["EUR", "USD", "GBP"]),
            "status": rng.choice(WORDS),
            "items": [
                {"sku": f"sku-{rng.getrandbits(24):06x}", "qty": rng.randint(1, 5)}
                for _ in range(rng.randint(1, 4))
            ],
            "note": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))),
        },
    }
    data = base64.b64encode(json.dumps(record).encode()).decode()
    return {
        "message": {
            "data": data,
            "messageId": str(10**16 + n),
            "publishTime": "2024-04-27T12:00:01Z",
            "attributes": {"origin": "checkout"},
        },
        "subscription": "projects/bench/subscriptions/records-push",
    }


@contextmanager
def serving() -> Iterator[tuple[SpannerEmulator, ThreadedBigQuery]]:
    with TemporaryDirectory() as tmp:
        emulator = SpannerEmulator(find_emulator(), Path(tmp) / "spanner.log")
        bigquery = ThreadedBigQuery()
        try:
            yield emulator, bigquery
        finally:
            bigquery.stop()
            emulator.stop()


async def follow_and_count(
    emulator: SpannerEmulator, bigquery: ThreadedBigQuery, followers: int, seconds: float
) -> dict[str, float]:
    """N followers for `seconds`, while rows arrive: Spanner reads per poll and
    BigQuery queries; then what each look-up reads."""
    store = serving_store(emulator.database(), emulator.host, bigquery)
    settings = Settings.load({"RECORDLINE_STORE": "memory:", "RECORDLINE_PUSH_TOKEN": PUSH_TOKEN})
    app = create_app(settings, store=store)
    counts: dict[str, float] = {}
    async with served(app) as client:
        push = f"/pubsub/push?token={PUSH_TOKEN}"
        rng = random.Random(7)
        sent = 0
        for _ in range(100):  # every follower starts behind a page of rows
            assert (await client.post(push, json=envelope(sent, rng))).status_code == 204
            sent += 1
        first = (await client.get("/v1/records", params={"limit": 1})).json()["records"][0]
        start_at = first["ingest_time"]
        stop = time.monotonic() + seconds
        polls = 0
        interval = 5 / SPEEDUP

        async def writer() -> None:
            nonlocal sent
            while time.monotonic() < stop:
                batch = [client.post(push, json=envelope(sent + i, rng)) for i in range(10)]
                sent += 10
                assert {r.status_code for r in await asyncio.gather(*batch)} == {204}
                await asyncio.sleep(0.05)

        async def follower(k: int) -> None:
            nonlocal polls
            await asyncio.sleep(interval * k / followers)  # spread over the interval
            params: dict[str, str | int] = {"since": start_at, "limit": 1000}
            while time.monotonic() < stop:
                answer = await client.get("/v1/records", params=params)
                assert answer.status_code == 200, answer.text
                polls += 1
                params = {"page_token": answer.json()["next_page_token"], "limit": 1000}
                await asyncio.sleep(interval)

        reads_before, queries_before = store.serving.reads, len(bigquery.jobs.queries)
        await asyncio.gather(writer(), *(follower(k) for k in range(followers)))
        counts["polls"] = polls
        counts["spanner reads"] = store.serving.reads - reads_before
        counts["bigquery queries"] = len(bigquery.jobs.queries) - queries_before
        middle = await client.get("/v1/records", params={"since": start_at, "limit": 50})
        row = middle.json()["records"][-1]
        for name, path in (
            ("/v1/records/{id}", f"/v1/records/{row['id']}"),
            ("/v1/messages/{id}", f"/v1/messages/{row['message_id']}"),
        ):
            before, queries = store.serving.reads, len(bigquery.jobs.queries)
            assert (await client.get(path)).status_code == 200
            counts[f"{name} spanner"] = store.serving.reads - before
            counts[f"{name} bigquery"] = len(bigquery.jobs.queries) - queries
        if followers == 1:
            page = {"limit": 100, "since": start_at}
            plain = await client.get("/v1/records", params=page, headers={"Accept-Encoding": ""})
            zipped = await client.get(
                "/v1/records", params=page, headers={"Accept-Encoding": "gzip"}
            )
            assert zipped.headers.get("content-encoding") == "gzip"
            counts["page bytes"] = len(plain.content)
            counts["page bytes gzip"] = int(zipped.headers["content-length"])
    return counts


def spanner_units(rate: float) -> int:
    """Processing units for `rate` messages/s of writes at the recommended CPU."""
    nodes = rate / WRITES_PER_NODE / RECOMMENDED_CPU
    return max(MIN_UNITS, math.ceil(nodes * 10) * 100)


def spanner_month(rate: float, row_bytes: float) -> tuple[int, float, float]:
    """(processing units, compute $, storage $) a month at `rate`."""
    units = spanner_units(rate)
    # The deletion policy removes a row within 3 days of its expiry.
    days = retention_days(QuerySettings().dedupe_window_seconds) + 3
    gigabytes = rate * 86_400 * days * (row_bytes + 2 * INDEX_ENTRY_BYTES) / 1e9
    return units, units / 1000 * SPANNER_NODE_HOUR * HOURS_A_MONTH, gigabytes * SPANNER_GB_MONTH


def dollars(value: float) -> str:
    return f"${value:,.2f}" if value < 100 else f"${value:,.0f}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench cost", description=__doc__)
    parser.add_argument("--rates", default="100,1000", help="messages per second (100,1000)")
    parser.add_argument("--followers", default="1,100", help="followers polling every 5 s")
    parser.add_argument("--seconds", type=float, default=6, help="how long followers poll (6)")
    args = parser.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",")]
    follower_counts = [int(f) for f in args.followers.split(",")]
    try:
        find_emulator()
    except EmulatorNotFound as exc:
        print(exc, file=sys.stderr)
        return 2

    tail_billed = {rate: billed(asyncio.run(run_rate(rate, [30], 1)), TAIL, 30) for rate in rates}
    measured = {}
    with serving() as (emulator, bigquery):
        for n in follower_counts:
            measured[n] = asyncio.run(follow_and_count(emulator, bigquery, n, args.seconds))
    page_plain = measured[follower_counts[0]].get("page bytes", 0)
    page_gzip = measured[follower_counts[0]].get("page bytes gzip", 0)
    row_bytes = page_plain / 100

    print("\nSpanner reads and BigQuery queries, measured (serving tier, emulator):\n")
    rows = []
    for n, found in measured.items():
        polls = max(found["polls"], 1)
        rows.append(
            [
                f"{n}",
                f"{found['polls']:.0f}",
                f"{found['spanner reads']:.0f}",
                f"{found['spanner reads'] / polls:.3f}",
                f"{found['bigquery queries']:.0f}",
                *(
                    f"{found[f'{route} spanner']:.0f} / {found[f'{route} bigquery']:.0f}"
                    for route in ("/v1/records/{id}", "/v1/messages/{id}")
                ),
            ]
        )
    header = ["followers", "polls", "Spanner reads", "reads / poll", "BigQuery queries"]
    print(table([[*header, "record look-up (Spanner / BQ)", "message look-up"], *rows]))

    print(
        f"\na 100-row page: {page_plain:,.0f} bytes, {page_gzip:,.0f} gzipped "
        f"({page_plain / max(page_gzip, 1):.1f}x)\n"
    )
    print("A month, at list prices:\n")
    rows = []
    for rate in rates:
        per_poll = tail_billed[rate]
        units, compute, storage = spanner_month(rate, row_bytes)
        for n in follower_counts:
            bigquery_only = n * POLLS_A_MONTH * per_poll / (1 << 40) * DOLLARS_PER_TIB
            served_reads = measured[n]["spanner reads"] / max(measured[n]["polls"], 1)
            # Egress: every follower downloads every row once.
            gib = n * rate * 30 * 86_400 * row_bytes / (1 << 30)
            ratio = page_plain / max(page_gzip, 1)
            rows.append(
                [
                    f"{rate:,}",
                    f"{n}",
                    dollars(bigquery_only),
                    f"{units} PU: {dollars(compute + storage)}",
                    f"{measured[n]['bigquery queries']:.0f} queries",
                    f"{served_reads:.3f}",
                    f"{dollars(gib * EGRESS_GIB)} / {dollars(gib * EGRESS_GIB / ratio)}",
                    f"{(compute + storage) / bigquery_only:.4f}",
                ]
            )
    header = ["msg/s", "followers", "BigQuery alone", "serving tier (Spanner)"]
    header += ["BigQuery, measured", "Spanner reads/poll", "egress plain / gzip", "ratio"]
    print(table([header, *rows]))
    billed_per_poll = ", ".join(
        f"{tail_billed[r] / (1 << 20):,.0f} MiB at {r:,} msg/s" for r in rates
    )
    print(
        f"\nBigQuery alone: one tail poll bills {billed_per_poll}"
        f" (30 days stored); ${DOLLARS_PER_TIB}/TiB. Serving tier: compute sized at "
        f"{WRITES_PER_NODE:,} writes/s a node and {RECOMMENDED_CPU:.0%} CPU, storage at "
        f"{row_bytes:,.0f} bytes a row plus two index entries, kept "
        f"{retention_days(QuerySettings().dedupe_window_seconds)} days + 3 for the deletion "
        "policy. ratio = serving tier / BigQuery alone."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
