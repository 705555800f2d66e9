"""End to end through the Pub/Sub emulator: publish at a rate, follow the API, time each record.

    python3 dev.py bench e2e [--rate 500] [--seconds 20] [--lanes 8]
                             [--stores duckdb,bigquery,serving]

`recordline serve` runs as a process, the emulator pushes to it, and three
followers walk /v1/records by page token side by side, on the same records:
one polling every 50 ms (`wait=0`), one by long-poll (`wait=30`), one by a
stream of pages (server-sent events). A record is visible to a follower when
it first sees it; its latency is that moment minus the publish_time Pub/Sub
stamped on it (one machine, one clock). The followers are at the tail when
publishing begins (each has read once from that moment): a first page over the
whole retention, which takes seconds on BigQuery, is catching up, not
publish-to-visible latency.

Each store in `--stores` gets a run of its own, in turn, with the same load:
- `duckdb`: the embedded store, a file;
- `bigquery`: BigQuery alone, through the fakes of the Storage Write API and
  of jobs.query in a process of their own (10 ms a write round trip), with the
  default settle window: a follower reads nothing younger than it;
- `serving`: the same BigQuery with the Spanner serving tier (Google's Spanner
  emulator) in front: pages are exact Spanner reads, no settle window.
Each follower's p99 is printed over the polling follower's p99 of the same
run, and over BigQuery-only's polling p99. Beside the followers' figures:
what a push waits for (the append's p99) and, with the serving tier, the
exporter's rate into BigQuery and its lag behind now.

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
import contextlib
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec
from prometheus_client.parser import text_string_to_metric_families

from app.commands.tail import follow
from app.records import rfc3339
from app.settings import QuerySettings
from bench.harness import ROOT, free_port, server, table
from recordline_dev.client import generated_records, publish, publisher_client, trace_publishes
from recordline_dev.devstack import Emulator, PubSubAdmin, find_emulator, wire
from recordline_dev.processes import EmulatorNotFound
from recordline_dev.serving import (
    BigQueryStandIn,
    SpannerEmulator,
    find_spanner_emulator,
    service_database,
)

SLO_SECONDS = 5.0
FOLLOWERS = ("polling every 50 ms", "long-poll (wait=30)", "server-sent events")
POLLING = FOLLOWERS[0]
SERVE = [sys.executable, "-m", "app.cli", "serve"]


class _Seen(msgspec.Struct, frozen=True):
    message_id: str
    publish_time: datetime
    ingest_time: datetime


_decode = msgspec.json.Decoder(_Seen).decode


class _Page(msgspec.Struct):
    records: list[msgspec.Raw]


_PAGE = msgspec.json.Decoder(_Page).decode


def percentile(values: list[float], fraction: float) -> float:
    return values[min(len(values) - 1, round(fraction * (len(values) - 1)))]


def scrape(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """A /metrics answer: each sample's name, labels and value."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def bucket_percentile(samples: list[tuple[dict[str, str], float]], fraction: float) -> float:
    """The upper bound of the bucket a histogram's `fraction` quantile falls in."""
    buckets = sorted((float(labels["le"]), count) for labels, count in samples)
    total = buckets[-1][1] if buckets else 0.0
    for bound, count in buckets:
        if total and count >= fraction * total:
            return bound
    return float("nan")


async def run(
    emulator: Emulator, url: str, token: str, args: argparse.Namespace
) -> tuple[list[str], dict[str, Seen]]:
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

    seen: dict[str, list[float]] = {mode: [] for mode in FOLLOWERS}
    # The follower's own part: from the row's commit (its ingest_time) to seeing it.
    after_commit: dict[str, list[float]] = {mode: [] for mode in FOLLOWERS}
    last_visible = 0.0

    def saw(mode: str, page: list[msgspec.Raw]) -> None:
        nonlocal last_visible
        now = time.time()
        last_visible = max(last_visible, now)
        for raw in page:
            row = _decode(raw)
            seen[mode].append(now - row.publish_time.timestamp())
            after_commit[mode].append(now - row.ingest_time.timestamp())

    async def polling(http: httpx.AsyncClient, since: str) -> None:
        async for page in follow(http, since=since, idle=0.05, wait=0):
            saw("polling every 50 ms", page)

    async def long_poll(http: httpx.AsyncClient, since: str) -> None:
        async for page in follow(http, since=since):
            saw("long-poll (wait=30)", page)

    async def streaming(http: httpx.AsyncClient, since: str) -> None:
        token: str | None = None
        while True:  # each stream ends after a while, saying where to resume
            params = {"page_token": token} if token else {"since": since}
            headers = {"Accept": "text/event-stream"}
            try:
                async with http.stream("GET", "/v1/records", params=params, headers=headers) as sse:
                    event: dict[str, str] = {}
                    async for line in sse.aiter_lines():
                        if line:
                            field, _, value = line.partition(": ")
                            event[field] = value
                            continue
                        if event.get("event") == "page":
                            saw("server-sent events", _PAGE(event["data"]).records)
                        token = event.get("id", token)
                        event = {}
            except httpx.HTTPError as exc:  # as EventSource does: reconnect, from the last id
                print(f"stream of pages broke ({exc!r}); resuming", file=sys.stderr)

    # The serving tier's exporter, from the service's own metrics as it runs.
    export_lags: list[float] = []

    async def watch_export(http: httpx.AsyncClient) -> None:
        while True:
            metrics = scrape((await http.get("/metrics")).text)
            lags = [value for _, value in metrics.get("recordline_export_lag_seconds", [])]
            if lags:
                export_lags.append(max(lags))
            await asyncio.sleep(0.5)  # a sample of a gauge every half second

    trace_publishes()
    client = publisher_client(emulator_host=emulator.host)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        exported_before = sum(
            value
            for _, value in scrape((await http.get("/metrics")).text).get(
                "recordline_export_rows_total", []
            )
        )
        watching = asyncio.create_task(watch_export(http))
        # The follower is at the tail before the first publish: this measures
        # publish to visible, not a first page over the whole retention.
        since = rfc3339(datetime.now(UTC))
        (await http.get("/v1/records", params={"since": since})).raise_for_status()
        followers = [
            asyncio.create_task(follower(http, since))
            for follower in (polling, long_poll, streaming)
        ]
        started = time.time()
        published = await asyncio.to_thread(
            publish, client, topics, generated_records(count), rate=args.rate
        )
        deadline = time.monotonic() + 120
        while min(map(len, seen.values())) < published.acknowledged and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # a glance at the followers' counts
        for following in followers:
            following.cancel()
        watching.cancel()
        ended = time.time()
        metrics = scrape((await http.get("/metrics")).text)
    client.stop()
    # What a push waits for: its group commit (Spanner's alone with a serving tier).
    append_p99 = bucket_percentile(
        metrics.get("recordline_append_duration_seconds_bucket", []), 0.99
    )
    exported = sum(value for _, value in metrics.get("recordline_export_rows_total", []))
    export_rate = (exported - exported_before) / max(ended - started, 1e-9)
    export_lags.sort()

    stored = max(map(len, seen.values()))
    store_row = [
        f"{args.lanes}",
        f"{published.acknowledged:,}",
        f"{published.rate:,.0f}/s",
        f"{stored / max(last_visible - started, 1e-9):,.0f}/s",
        f"≤ {append_p99 * 1000:,.0f} ms",
        f"{export_rate:,.0f}/s" if exported else "-",
        f"{percentile(export_lags, 0.99):,.1f} s" if export_lags else "-",
    ]
    return store_row, {
        mode: Seen(sorted(v), sorted(after_commit[mode]), published.acknowledged)
        for mode, v in seen.items()
    }


class Seen(msgspec.Struct, frozen=True):
    """What one follower saw: each record's publish-to-visible seconds, in order."""

    latencies: list[float]
    after_commit: list[float]
    acknowledged: int

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 0.99) if self.latencies else float("inf")

    def row(self) -> list[str]:
        if not self.latencies:
            return ["0", "-", "-", "-", "-", "0.00%"]
        within = sum(1 for v in self.latencies if v <= SLO_SECONDS) / max(self.acknowledged, 1)
        return [
            f"{len(self.latencies):,}",
            f"{percentile(self.latencies, 0.5) * 1000:,.0f} ms",
            f"{self.p99 * 1000:,.0f} ms",
            f"{self.latencies[-1] * 1000:,.0f} ms",
            f"{percentile(self.after_commit, 0.99) * 1000:,.0f} ms",
            f"{within:.2%}",
        ]


BIGQUERY = ("recordline-bench", "records")  # project, dataset the fakes serve
STORES = ("duckdb", "bigquery", "serving")


@contextlib.contextmanager
def bigquery_fakes(tmp: Path) -> Iterator[dict[str, str]]:
    """The BigQuery fakes in a process of their own: the service's settings for them."""
    project, dataset = BIGQUERY
    log = tmp / "bigquery.log"
    with BigQueryStandIn(project, dataset, log_path=log, extra=("--latency-ms", "10")) as fakes:
        yield fakes.settings


@contextlib.contextmanager
def spanner(tmp: Path) -> Iterator[dict[str, str]]:
    """Google's Spanner emulator with the service's database: the settings for it."""
    with SpannerEmulator(find_spanner_emulator(), log_path=tmp / "spanner.log") as emulator:
        database = service_database(
            emulator,
            project=BIGQUERY[0],
            instance="serving",
            database="recordline",
            window=QuerySettings().dedupe_window_seconds,
        )
        # The service exports too: its own metrics say how fast and how far behind.
        yield {
            "RECORDLINE_SERVING": database,
            "SPANNER_EMULATOR_HOST": emulator.host,
            "RECORDLINE_EXPORT_IN_SERVICE": "true",
        }


def store_settings(name: str, tmp: Path, stack: contextlib.ExitStack) -> dict[str, str]:
    if name == "duckdb":
        return {"RECORDLINE_STORE": f"duckdb://{tmp / 'bench.duckdb'}"}
    settings = stack.enter_context(bigquery_fakes(tmp))
    if name == "serving":
        settings |= stack.enter_context(spanner(tmp))
    return settings


def measure(
    launcher: Path, name: str, args: argparse.Namespace
) -> tuple[list[str], dict[str, Seen]]:
    """One run on store `name`: its row, and what each follower saw."""
    token = secrets.token_urlsafe(24)
    port = free_port()
    with (
        tempfile.TemporaryDirectory() as tmp_name,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(tmp_name)
        env = {
            "RECORDLINE_PUSH_TOKEN": token,
            "RECORDLINE_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
            **store_settings(name, tmp, stack),
        }
        emulator = stack.enter_context(Emulator(launcher, log_path=tmp / "emulator.log"))
        service = stack.enter_context(server([*SERVE, "--port", str(port)], port, env=env))
        row, seen = asyncio.run(run(emulator, service.url, token, args))
    return [name, *row], seen


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench e2e", description=__doc__)
    parser.add_argument("--rate", type=float, default=500, help="messages per second (500)")
    parser.add_argument("--seconds", type=float, default=20, help="how long to publish (20)")
    parser.add_argument(
        "--lanes", type=int, default=8, help="topics, each with a push subscription (8)"
    )
    parser.add_argument(
        "--stores",
        default=",".join(STORES),
        help=f"comma-separated, run in turn ({','.join(STORES)})",
    )
    args = parser.parse_args(argv)
    stores = [name.strip() for name in args.stores.split(",") if name.strip()]
    unknown = sorted(set(stores) - set(STORES))
    if unknown:
        parser.error(f"--stores: unknown {', '.join(unknown)}; choose from {', '.join(STORES)}")
    try:
        launcher = find_emulator()
        if "serving" in stores:
            find_spanner_emulator()
    except EmulatorNotFound as exc:
        print(exc, file=sys.stderr)
        return 2

    results = {name: measure(launcher, name, args) for name in stores}
    baseline = results["bigquery"][1][POLLING].p99 if "bigquery" in results else None
    print(
        f"\nend to end through the Pub/Sub emulator: {args.rate:g} messages/s for "
        f"{args.seconds:g} s, {args.lanes} lanes, one `recordline serve` per store\n"
    )
    header = ["store", "follower", "records", "p50", "p99", "max", "commit to seen p99"]
    header += [f"within {SLO_SECONDS:g} s"]
    header += ["p99 / polling", "p99 / bigquery polling"]
    rows = []
    for name, (_, seen) in results.items():
        polled = seen[POLLING].p99
        for mode, one in seen.items():
            rows.append(
                [
                    name,
                    mode,
                    *one.row(),
                    f"{one.p99 / polled:.3f}",
                    f"{one.p99 / baseline:.3f}" if baseline else "-",
                ]
            )
    print(table([header, *rows]))
    header = ["store", "lanes", "published", "publish rate", "stored rate", "append p99"]
    header += ["exported", "export lag p99"]
    print()
    print(table([header, *(row for row, _ in results.values())]))
    print(
        "\np50/p99/max: publish to visible to each follower, the three reading side by "
        "side. commit to seen: from the row's commit (its ingest_time) to the follower "
        "seeing it, the follower's own part; the rest is Pub/Sub's delivery and the "
        "push's group commit. append p99: a group commit's duration, what a push "
        "waits for (the bound of its histogram bucket). exported, export lag p99: the "
        "serving tier's exporter, rows/s into BigQuery and its watermark's lag behind "
        "now, sampled every 0.5 s."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
