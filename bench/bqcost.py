"""What a read costs on BigQuery: bytes billed per call, today's SQL against the design.

    python3 dev.py bench bqcost [--rates 100,1000] [--days 1,7,30] [--repeat 3]
    python3 dev.py bench bqcost --layouts [--rate 10] [--days 30]

Fills the Storage Write fake with one stream (a ~430-byte stored row, as the
ingest bench publishes, 0.1% redelivered copies and 0.1% rejections) at each
rate for 1, 7 and 30 days, scaled down: each stored row stands for `weight`
rows, printed. Every call goes through the real `bigquery.Client` to the
jobs.query fake, which bills it by `tests/bigquery/billing.py` (its docstring
states the model: BigQuery's documented rules, plus block size and 30 minutes
of write-optimized storage as assumptions). The design is measured on the
layout Terraform declares (clustered on ingest_time, search indexes on id and
message_id); the SQL the store ran before, on the layout it had then
(clustered on id, message_id; no index), in the same run.

Prints bytes billed and dollars per call, p50/p95 latency against the fake
(a fake: the ratios mean something, the milliseconds little), the dollars a
follower polling every 5 s costs a day, what the look-up behind a replay batch
of 100 messages bills (one query, against one or two per message), what a page
of 1,000 records a day back bills projected (`select=id,timestamp`, its query
told of the fields shown) against the same page without it, and the targets:
- a tail poll and a lookup at 30 days within 1.5x of the same at 1 day;
- lookups within 2x of the 10 MiB minimum at 30 days of 1,000 msg/s;
- one follower at 100 msg/s <= $5 a day.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from app.query.service import shown_of
from app.records import TABLES, Record, columns
from app.settings import QuerySettings, StoreSettings
from app.store import PageQuery
from app.store.bigquery.sql import latest_sql, rejected_sql, select_list, stored_sql
from app.store.bigquery.store import END_OF_TIME as END
from app.store.bigquery.store import BigQueryStore
from app.store.open import bigquery_options
from tests.bigquery.billing import DOLLARS_PER_TIB, MIB, BillingModel, Layout
from tests.bigquery.fake_jobs import LAYOUTS, FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.bigquery.stream import DAY, NOW, SECOND, Stream, make_stream

PROJECT, DATASET = "bench-project", "records"
RECORDS = f"`{PROJECT}.{DATASET}.records`"
REJECTED = f"`{PROJECT}.{DATASET}.rejected`"
SETTLE = 15 * SECOND
POLLS_A_DAY = 86_400 // 5
BLOCK_ROWS = 100_000

# The layout the tables had before: clustered on (id, message_id), no index.
BEFORE_LAYOUTS = {
    "records": Layout(partition="ingest_time", clustering=("id", "message_id")),
    "rejected": Layout(partition="ingest_time", clustering=("message_id",)),
}


def before_page_sql(records: str) -> str:
    """The page the store ran before: an anti-join over the dedupe window."""
    return f"""
SELECT {select_list(Record, "r")}
FROM {records} AS r
WHERE r.ingest_time >= TIMESTAMP_MICROS(@after_time)
  AND r.ingest_time < TIMESTAMP_MICROS(@before_time)
  AND (r.ingest_time > TIMESTAMP_MICROS(@after_time) OR r.message_id > @after_message_id)
  AND NOT EXISTS (
    SELECT 1
    FROM {records} AS e
    WHERE e.message_id = r.message_id
      AND e.ingest_time >= TIMESTAMP_MICROS(@window_start)
      AND e.ingest_time < TIMESTAMP_MICROS(@before_time)
      AND e.ingest_time < r.ingest_time
  )
QUALIFY ROW_NUMBER() OVER (
  PARTITION BY r.message_id ORDER BY r.publish_time, r.trace_id, r.subscription
) = 1
ORDER BY r.ingest_time, r.message_id
LIMIT @limit
""".strip()


@dataclass
class Measured:
    billed: int
    millis: list[float]
    queries: int = 0

    @property
    def dollars(self) -> float:
        return self.billed / (1 << 40) * DOLLARS_PER_TIB


async def measure(
    jobs: FakeBigQueryJobs, call: Callable[[], Awaitable[Any]], repeat: int
) -> Measured:
    """Bytes billed by one call (every query it made), and its latency per repeat."""
    billed = queries = 0
    millis = []
    for i in range(repeat):
        before = len(jobs.queries)
        started = time.perf_counter()
        await call()
        millis.append((time.perf_counter() - started) * 1000)
        spent = sum(q.bill.bytes_billed for q in jobs.queries[before:] if q.bill is not None)
        if i == 0:
            billed, queries = spent, len(jobs.queries) - before
    return Measured(billed, millis, queries)


class Before:
    """The SQL the store ran before, sent through the same client."""

    def __init__(self, endpoint: str) -> None:
        self.client = bigquery.Client(
            project=PROJECT,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": endpoint},
            default_job_creation_mode="JOB_CREATION_OPTIONAL",
        )

    async def query(self, sql: str, **params: int | str) -> list[Any]:
        config = bigquery.QueryJobConfig(
            query_parameters=[
                bigquery.ScalarQueryParameter(k, "INT64" if isinstance(v, int) else "STRING", v)
                for k, v in params.items()
            ]
        )
        return await asyncio.to_thread(
            lambda: list(self.client.query_and_wait(sql, job_config=config))
        )

    async def page(self, after: int, before: int, limit: int) -> list[Any]:
        window = int(QuerySettings().dedupe_window_seconds * SECOND)
        return await self.query(
            before_page_sql(RECORDS),
            after_time=after,
            after_message_id="",
            before_time=before,
            window_start=after - window,
            limit=limit,
        )

    async def message(self, message_id: str) -> None:
        if not await self.query(
            stored_sql(RECORDS), message_id=message_id, not_before=0, before=END
        ):
            await self.query(
                rejected_sql(REJECTED), message_id=message_id, not_before=0, before=END
            )


def calls(stream: Stream, store: BigQueryStore | Before) -> dict[str, Callable[[], Awaitable[Any]]]:
    horizon = NOW - SETTLE
    rejected = stream.rejections[len(stream.rejections) // 2]["message_id"]

    def page(after: int, real_limit: int) -> Callable[[], Awaitable[Any]]:
        # A page asks for `limit` stored rows; here each stands for `weight`,
        # so the limit is scaled alike: the store then widens its scan where
        # it would at full density, and pays for the same blocks (a LIMIT
        # never changes what a query is billed).
        limit = max(1, -(-real_limit // stream.weight))
        if isinstance(store, Before):
            return lambda: store.page(after, horizon, limit)
        query = PageQuery(after_time=after, after_message_id="", before_time=horizon, limit=limit)
        return lambda: store.page(Record, query)

    def message(message_id: str) -> Callable[[], Awaitable[Any]]:
        return lambda: store.message(message_id)

    day_old = stream.day_old()
    record_id = day_old["id"]
    if isinstance(store, Before):

        async def latest() -> None:
            await store.query(latest_sql(RECORDS), id=record_id, not_before=0, before=END)
    else:

        async def latest() -> None:
            await store.latest(record_id)

    return {
        TAIL: page(horizon - 5 * SECOND, 1000),
        "page 1 day back (limit 100)": page(NOW - DAY, 100),
        "page 30 days back (limit 100)": page(NOW - 30 * DAY + 3600 * SECOND, 100),
        "/v1/records/{id}": latest,
        "/v1/messages/{id} stored": message(day_old["message_id"]),
        "/v1/messages/{id} rejected": message(rejected),
        "/v1/messages/{id} never seen": message("12345678901234567"),
    }


# A projection whose page reads neither `data` nor `attributes`, as the reader asks it.
PROJECTION = "id,timestamp"


async def projected_page(
    store: BigQueryStore, jobs: FakeBigQueryJobs, stream: Stream
) -> dict[str, Measured]:
    """A page of 1,000 records a day back (its limit scaled as `calls` scales it), without
    a projection and with PROJECTION's: the same rows, each query billed."""
    limit = max(1, -(-1000 // stream.weight))
    asked = PageQuery(
        after_time=NOW - DAY, after_message_id="", before_time=NOW - SETTLE, limit=limit
    )
    projected = msgspec.structs.replace(asked, shown=shown_of(PROJECTION.split(",")))
    found: dict[str, Measured] = {}
    rows = {}
    for name, query in (("without", asked), ("projected", projected)):
        found[name] = await measure(jobs, lambda q=query: store.page(Record, q), 1)
        page = await store.page(Record, query)
        rows[name] = [(r.message_id, r.id, r.timestamp) for r in page.rows]
    if rows["projected"] != rows["without"]:
        raise AssertionError("a projected page holds other rows than the page without it")
    return found


async def replay_lookups(
    store: BigQueryStore, jobs: FakeBigQueryJobs, stream: Stream
) -> dict[str, Measured]:
    """A /v1/replay batch's look-up: one query for all, against one or two a message."""
    replayed = stream.replay_batch()

    async def one_by_one() -> None:
        for message_id in replayed:
            await store.message(message_id)

    return {
        "one by one": await measure(jobs, one_by_one, 1),
        "batched": await measure(jobs, lambda: store.seen(replayed), 1),
    }


async def started_store(write_address: str, query_endpoint: str) -> BigQueryStore:
    """The store as deployed, but with no cost cap: the bench measures what it would bill."""
    store = BigQueryStore(
        PROJECT,
        DATASET,
        options=bigquery_options(
            StoreSettings(bigquery_write_endpoint=write_address, settle_seconds=15),
            QuerySettings(max_bytes_billed=1 << 50),
        ),
        query_endpoint=query_endpoint,
    )
    await store.start()
    return store


async def run_rate(rate: int, days_list: list[int], repeat: int) -> dict[tuple[str, int], Any]:
    write = FakeBigQueryWrite()
    await write.start()
    kinds = {t: {c.name: c.kind for c in columns(r)} for t, r in TABLES.items()}
    results: dict[tuple[str, int], Any] = {}
    try:
        for days in days_list:
            stream = make_stream(rate, days, stored_per_day=1_728)
            write.tables.clear()
            base = f"projects/{PROJECT}/datasets/{DATASET}/tables"
            write.tables[f"{base}/records"] = stream.records
            write.tables[f"{base}/rejected"] = stream.rejections
            fakes = {}
            # "settled" bills the design as if no row were write-optimized:
            # what the design costs once BigQuery has clustered recent rows,
            # so the table shows how much of a call is that floor.
            for name, layouts, recent in (
                ("design", LAYOUTS, 1800.0),
                ("settled", LAYOUTS, 0.0),
                ("before", BEFORE_LAYOUTS, 1800.0),
            ):
                model = BillingModel(
                    layouts=layouts,
                    kinds=kinds,
                    block_rows=BLOCK_ROWS,
                    row_weight=stream.weight,
                    write_optimized_seconds=recent,
                    clock=lambda: NOW / SECOND,
                )
                fakes[name] = FakeBigQueryJobs(
                    write, project=PROJECT, dataset=DATASET, billing=model
                )
                fakes[name].start()
            store = await started_store(write.address, fakes["design"].endpoint)
            settled = await started_store(write.address, fakes["settled"].endpoint)
            try:
                before = Before(fakes["before"].endpoint)
                for (kind, target), jobs in (
                    (("design", store), fakes["design"]),
                    (("settled", settled), fakes["settled"]),
                    (("before", before), fakes["before"]),
                ):
                    for call, fn in calls(stream, target).items():
                        results[(f"{kind}|{call}", days)] = await measure(jobs, fn, repeat)
                results[("weight", days)] = stream.weight
                for how, found in (await replay_lookups(store, fakes["design"], stream)).items():
                    results[(f"replay|{how}", days)] = found
                for how, found in (await projected_page(store, fakes["design"], stream)).items():
                    results[(f"projection|{how}", days)] = found
            finally:
                await store.close()
                await settled.close()
                for fake in fakes.values():
                    fake.stop()
    finally:
        await write.stop()
    return results


TAIL = "tail poll (5 s of rows, limit 1000)"


def billed(results: dict[tuple[str, int], Any], call: str, days: int) -> int:
    found: Measured = results[(f"design|{call}", days)]
    return found.billed


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, ready for the README."""
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def size(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", MIB)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,} B"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench bqcost")
    parser.add_argument("--rates", default="100,1000")
    parser.add_argument("--days", default="1,7,30")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--layouts",
        action="store_true",
        help="bill the analyst's questions and the read API's calls on each layout of "
        "records, a month at 10 msg/s (bench/bqlayouts.py)",
    )
    parser.add_argument("--rate", type=int, default=10, help="with --layouts: msg/s")
    args = parser.parse_args(argv)
    if args.layouts:
        from bench import bqlayouts

        return bqlayouts.main(args.rate, int(args.days.split(",")[-1]))
    rates = [int(r) for r in args.rates.split(",")]
    days_list = [int(d) for d in args.days.split(",")]
    print(
        f"model: blocks of {BLOCK_ROWS:,} rows, the last 30 min write-optimized, "
        f"${DOLLARS_PER_TIB}/TiB on demand, 10 MiB minimum per table"
    )
    verdicts = []
    for rate in rates:
        results = asyncio.run(run_rate(rate, days_list, args.repeat))
        weights = ", ".join(f"{d} d: 1:{results[('weight', d)]:,}" for d in days_list)
        print(f"\n## {rate} msg/s (scale: each stored row stands for {weights} rows)\n")
        rows = []
        names = [key[0].split("|", 1)[1] for key in results if key[0].startswith("design|")]
        for call in dict.fromkeys(names):
            for days in days_list:
                new = results[(f"design|{call}", days)]
                old = results[(f"before|{call}", days)]
                calm = results[(f"settled|{call}", days)]
                rows.append(
                    [
                        call,
                        f"{days} d",
                        size(old.billed),
                        f"${old.dollars:.4f}",
                        size(new.billed),
                        f"${new.dollars:.5f}",
                        f"{old.billed / new.billed:,.0f}x",
                        size(calm.billed),
                        f"{statistics.median(new.millis):.0f}",
                        f"{statistics.quantiles(new.millis, n=20)[-1]:.0f}"
                        if len(new.millis) > 1
                        else f"{new.millis[0]:.0f}",
                    ]
                )
        print(
            markdown(
                [
                    "call",
                    "data",
                    "before: billed",
                    "before: $",
                    "design: billed",
                    "design: $",
                    "before/design",
                    "design, no write-optimized rows",
                    "p50 ms",
                    "p95 ms",
                ],
                rows,
            )
        )
        last = days_list[-1]
        tail = results[("design|tail poll (5 s of rows, limit 1000)", last)]
        tail_before = results[("before|tail poll (5 s of rows, limit 1000)", last)]
        print(
            f"\none follower polling every 5 s, {last} days of data: "
            f"before ${tail_before.dollars * POLLS_A_DAY:,.2f}/day, "
            f"design ${tail.dollars * POLLS_A_DAY:,.2f}/day"
        )
        print(f"\nthe look-up of a /v1/replay batch (100 messages), {last} days of data:")
        print(
            markdown(
                ["look-up", "queries", "billed", "$"],
                [
                    [how, str(found.queries), size(found.billed), f"${found.dollars:.4f}"]
                    for how in ("one by one", "batched")
                    for found in [results[(f"replay|{how}", last)]]
                ],
            )
        )
        one_by_one = results[("replay|one by one", last)].billed
        print(
            f"one by one / batched: {one_by_one / results[('replay|batched', last)].billed:,.0f}x"
        )
        print(
            f"\na page of 1,000 records a day back, `select={PROJECTION}` against the same "
            "page without it (the same rows):"
        )
        lines = []
        for days in days_list:
            without = results[("projection|without", days)]
            projected = results[("projection|projected", days)]
            lines.append(
                [
                    f"{days} d",
                    size(without.billed),
                    size(projected.billed),
                    f"{projected.billed / without.billed:.2f}",
                ]
            )
        print(
            markdown(
                ["data", "without: billed", f"select={PROJECTION}: billed", "projected / without"],
                lines,
            )
        )
        first = days_list[0]
        for call in (TAIL, "/v1/records/{id}", "/v1/messages/{id} stored"):
            grew = billed(results, call, last) / billed(results, call, first)
            verdicts.append(
                (f"{rate} msg/s {call}: {last} d / {first} d", f"{grew:.2f}", grew <= 1.5)
            )
        if rate == 1000:
            for call in (
                "/v1/records/{id}",
                "/v1/messages/{id} stored",
                "/v1/messages/{id} never seen",
            ):
                over = billed(results, call, last) / (10 * MIB)
                name = f"{call} at {last} d of 1,000 msg/s / 10 MiB"
                verdicts.append((name, f"{over:.1f}", over <= 2))
        if rate == 100:
            per_day = tail.dollars * POLLS_A_DAY
            verdicts.append(("follower-day at 100 msg/s", f"${per_day:.2f}", per_day <= 5))
    print("\n## targets\n")
    print(
        markdown(
            ["target", "measured", "met"],
            [[n, v, "yes" if ok else "NO"] for n, v, ok in verdicts],
        )
    )
    return 0
