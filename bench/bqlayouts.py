"""What an analyst's question and the read API's calls bill on each layout of `records`.

    python3 dev.py bench bqcost --layouts [--rate 10] [--days 30]

A month of rows at 10 messages a second (each stored row standing for `weight`, as
`bench bqcost` scales them), each record with a `customer` attribute (one of 5,000) and
one event in 50 up to three days late, laid out as a system may choose
(infra/terraform/layouts.tf, docs/layouts.md). Every query is billed by the jobs.query
fake's model (`tests/bigquery/billing.py`: BigQuery's documented rules, blocks of
100,000 rows, 30 minutes write-optimized): the analyst's three questions sent to the
fake's jobs.query as a client sends them (run on DuckDB as well as billed), the read
API's calls through the store itself and the real `bigquery.Client`; and for each, the
blocks and partitions of `records` it read, which say why it bills what it bills.
Beside them, what the same questions bill on a Pub/Sub BigQuery subscription's table
(`data` and `attributes` as JSON, partitioned by publish_time by day), by the model alone.

Targets: an event-time day and a customer's rows each bill at most 1/20 of the same
question on today's layout (ingest_time by day, clustered on ingest_time); the read
API's calls bill no more than on today's. Printed: each against today's layout measured
in the same run; the least that the day's ratio times the customer's can be on any one
table (`floor`: a block holds rows of few days or of few customers, never of few of
both), which says whether one table can meet both; and what meets all three, `records`
as today beside two tables of the analyst's own, with what filling them reads.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.records import TABLES, columns
from app.store.bigquery.fill import fill_sql as filled_sql
from app.store.bigquery.layout import COPY_DESCRIPTION, Copy
from bench.bqcost import (
    BLOCK_ROWS,
    DATASET,
    PROJECT,
    Measured,
    calls,
    markdown,
    measure,
    size,
    started_store,
)
from infra.fleet_cost import BIGQUERY_ACTIVE_GIB_MONTH, PHYSICAL_RATIO
from tests.bigquery.billing import DOLLARS_PER_TIB, BillingModel, Layout, Reach
from tests.bigquery.fake_jobs import LAYOUTS, FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.bigquery.stream import DAY, NOW, SECOND, Stream, make_stream
from tests.bigquery.test_records_latest import latest_body
from tests.bigquery.test_records_unique import callable_sql

ROOT = Path(__file__).resolve().parents[1]
RECORDS = f"`{PROJECT}.{DATASET}.records`"
CUSTOMERS = 5_000
LATE_EVERY = 50
SEARCH = LAYOUTS["records"].search_index
# The table the tests' rendering of records_latest names (tests/bigquery/conftest.py).
TESTS_RECORDS = "`fake-project.recordline.records`"


@dataclass(frozen=True)
class Shape:
    """A layout of `records`, as a system declares it, and whether it has the copy."""

    name: str
    terraform: str
    layout: Layout
    copy: bool = False


SHAPES = (
    Shape(
        "today",
        "(none: ingest_time by DAY, clustered on ingest_time)",
        Layout(partition="ingest_time", clustering=("ingest_time",), search_index=SEARCH),
    ),
    Shape(
        "event time",
        'partition = "timestamp", clustering = ["ingest_time"]',
        Layout(partition="timestamp", clustering=("ingest_time",), search_index=SEARCH),
    ),
    Shape(
        "customer",
        'partition = "timestamp", granularity = "MONTH", clustering = ["customer", "ingest_time"], '
        'columns = { customer = "attributes.customer" }, pages_read_whole_partitions = true',
        Layout(
            partition="timestamp",
            granularity="MONTH",
            clustering=("customer", "ingest_time"),
            search_index=SEARCH,
        ),
        copy=True,
    ),
    Shape(
        "customer by ingest day",
        'clustering = ["customer", "ingest_time"], columns = { customer = "attributes.customer" }, '
        "pages_read_whole_partitions = true",
        Layout(
            partition="ingest_time", clustering=("customer", "ingest_time"), search_index=SEARCH
        ),
        copy=True,
    ),
    Shape(
        "event day by customer",
        'partition = "timestamp", clustering = ["customer", "ingest_time"], '
        'columns = { customer = "attributes.customer" }, pages_read_whole_partitions = true',
        Layout(partition="timestamp", clustering=("customer", "ingest_time"), search_index=SEARCH),
        copy=True,
    ),
)
EVENT_DAY = "what happened on a day, by event time"
CUSTOMER = "everything for one customer"


def customer_of(shape: Shape) -> str:
    """The customer of a row as a query on the shape reads it: its copy, or the
    attribute inside `attributes`."""
    return "r.customer" if shape.copy else "JSON_VALUE(r.attributes, '$.customer')"


def questions(shape: Shape, day: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """The analyst's three questions on `records`, as each is best asked of the shape."""
    return {
        EVENT_DAY: (
            f"SELECT r.id, r.`timestamp`, r.data FROM {RECORDS} AS r "
            "WHERE r.`timestamp` >= TIMESTAMP_MICROS(@day) "
            "AND r.`timestamp` < TIMESTAMP_MICROS(@next_day)",
            {"day": day, "next_day": day + DAY},
        ),
        CUSTOMER: (
            f"SELECT r.id, r.`timestamp`, r.data FROM {RECORDS} AS r "
            f"WHERE {customer_of(shape)} = @customer",
            {"customer": "c42"},
        ),
        "the current state of each record (records_latest, the month)": (
            callable_sql(latest_body().replace(TESTS_RECORDS, RECORDS), "u.id, u.data"),
            {"since": NOW - 31 * DAY, "until": NOW},
        ),
    }


SUBSCRIPTION = f"`{PROJECT}.{DATASET}.subscription`"
SUBSCRIPTION_KINDS = {
    "subscription_name": "STRING",
    "message_id": "STRING",
    "publish_time": "TIMESTAMP",
    "data": "JSON",
    "attributes": "JSON",
}
SUBSCRIPTION_QUESTIONS = {
    "what happened on a day, by event time": (
        f"SELECT s.data FROM {SUBSCRIPTION} AS s "
        "WHERE TIMESTAMP(JSON_VALUE(s.data, '$.timestamp')) >= TIMESTAMP_MICROS(@day) "
        "AND TIMESTAMP(JSON_VALUE(s.data, '$.timestamp')) < TIMESTAMP_MICROS(@next_day)"
    ),
    "everything for one customer": (
        f"SELECT s.data FROM {SUBSCRIPTION} AS s "
        "WHERE JSON_VALUE(s.attributes, '$.customer') = @customer"
    ),
    "the current state of each record (records_latest, the month)": (
        f"SELECT s.data FROM {SUBSCRIPTION} AS s "
        "WHERE s.publish_time >= TIMESTAMP_MICROS(@since) "
        "QUALIFY ROW_NUMBER() OVER (PARTITION BY JSON_VALUE(s.data, '$.id') "
        "ORDER BY JSON_VALUE(s.data, '$.timestamp') DESC, s.publish_time DESC) = 1"
    ),
}


def subscription_rows(stream: Stream) -> list[dict[str, Any]]:
    """The stream as a BigQuery subscription with write_metadata stores it: the payload
    as published (id, timestamp and data in one JSON), and the attributes."""
    out = []
    for r in stream.records:
        stamp = r["timestamp"] // SECOND
        payload = {"id": r["id"], "timestamp": stamp, "data": json.loads(r["data"])}
        out.append(
            {
                "subscription_name": "projects/p/subscriptions/records-bq",
                "message_id": r["message_id"],
                "publish_time": r["publish_time"],
                "data": json.dumps(payload),
                "attributes": r["attributes"],
            }
        )
    return out


def subscription_bills(stream: Stream, day: int) -> dict[str, int]:
    from app.records import Kind

    kinds = {"subscription": {c: Kind(k) for c, k in SUBSCRIPTION_KINDS.items()}}
    model = BillingModel(
        layouts={"subscription": Layout(partition="publish_time")},
        kinds=kinds,
        block_rows=BLOCK_ROWS,
        row_weight=stream.weight,
        clock=lambda: NOW / SECOND,
    )
    rows = subscription_rows(stream)
    schema = {PROJECT: {DATASET: {"subscription": SUBSCRIPTION_KINDS}}}
    params = {"day": day, "next_day": day + DAY, "customer": "c42", "since": NOW - 31 * DAY}
    return {
        name: model.bill(sql, params, lambda _: rows, schema).bytes_billed
        for name, sql in SUBSCRIPTION_QUESTIONS.items()
    }


def run_query(jobs: FakeBigQueryJobs, sql: str, params: dict[str, Any]) -> tuple[int, Reach]:
    """Bytes billed for `sql` on the fake, run through its jobs.query as a client's, and
    what it read of `records`."""
    status, answer = jobs.handle(
        f"/bigquery/v2/projects/{PROJECT}/queries",
        {
            "query": sql,
            "useLegacySql": False,
            "parameterMode": "NAMED",
            "queryParameters": [
                {
                    "name": n,
                    "parameterType": {"type": "INT64" if isinstance(v, int) else "STRING"},
                    "parameterValue": {"value": str(v)},
                }
                for n, v in params.items()
            ],
        },
    )
    assert status == 200, answer
    (reach,) = records_reaches(jobs, len(jobs.queries) - 1)
    return int(answer["totalBytesBilled"]), reach


def records_reaches(jobs: FakeBigQueryJobs, since: int) -> list[Reach]:
    """What the queries the fake received from the `since`th on read of `records`."""
    return [
        reach
        for query in jobs.queries[since:]
        if query.bill is not None
        for reach in query.bill.reaches
        if reach.table == "records"
    ]


@dataclass
class Found:
    """One layout's bills: the analyst's questions, and the read API's calls."""

    asked: dict[str, int]
    # What each question read of `records`.
    reached: dict[str, Reach]
    api: dict[str, Measured]
    # What each call's queries read of `records`, one reach a query.
    api_reached: dict[str, list[Reach]]
    # The customer's question with nothing pruned: its columns over every row.
    customer_unpruned: int
    # The rows of each block `records` is stored in on this layout.
    block_sizes: list[int]
    # Bytes read by filling a table of the analyst's own from this one, a day of
    # ingest_time at a time (one query a day), over the month.
    fill: int = 0
    fill_queries: int = 0
    # The same behind a serving tier: each day's partition alone (the export wrote no copy).
    fill_serving: int = 0


def fill_select(names: list[str], day: int, *, unique: bool) -> str:
    """What `recordline tables fill` runs to copy `day` (µs, a day's start) into a table
    of the analyst's own holding the customer's copy: its INSERT's SELECT, on BigQuery
    alone through `records_unique` (first copies only: the dedupe window before the day
    is read too), behind a serving tier from the day's partition alone (`unique` False)."""
    copy = Copy(column="customer", attribute="customer", field=(), type="STRING")
    insert = filled_sql(
        PROJECT, DATASET, "records_by_customer", names, [copy], day // DAY, unique=unique
    )
    return insert.split("\n", 1)[1]


async def measure_shape(shape: Shape, stream: Stream, write: FakeBigQueryWrite, day: int) -> Found:
    """The analyst's questions and the read API's calls on one layout."""
    base = f"projects/{PROJECT}/datasets/{DATASET}/tables"
    fields = json.loads((ROOT / "infra/terraform/modules/system/schemas/records.json").read_text())
    if shape.copy:
        fields.append(
            {
                "name": "customer",
                "type": "STRING",
                "mode": "NULLABLE",
                "description": f"{COPY_DESCRIPTION}attributes.customer",
            }
        )
    write.define(f"{base}/records", fields)
    kinds = {t: {c.name: c.kind for c in columns(r)} for t, r in TABLES.items()}
    model = BillingModel(
        layouts={**LAYOUTS, "records": shape.layout},
        kinds=kinds,
        block_rows=BLOCK_ROWS,
        row_weight=stream.weight,
        clock=lambda: NOW / SECOND,
    )
    jobs = FakeBigQueryJobs(write, project=PROJECT, dataset=DATASET, billing=model)
    jobs.start()
    store = await started_store(write.address, jobs.endpoint)
    try:
        asked, reached = {}, {}
        for name, (sql, params) in questions(shape, day).items():
            asked[name], reached[name] = run_query(jobs, sql, params)
        api, api_reached = {}, {}
        for name, call in calls(stream, store).items():
            since = len(jobs.queries)
            api[name] = await measure(jobs, call, 1)
            api_reached[name] = records_reaches(jobs, since)
        unpruned = (
            f"SELECT r.id, r.`timestamp`, r.data, {customer_of(shape)} AS customer "
            f"FROM {RECORDS} AS r"
        )
        found = Found(
            asked,
            reached,
            api,
            api_reached,
            customer_unpruned=jobs.bill(unpruned, {}).bytes_billed,
            block_sizes=model.block_sizes("records", stream.records),
        )
        if shape.name == "today":
            first = stream.records[0]["ingest_time"] // DAY * DAY
            names = [f["name"] for f in fields]
            for start in range(first, NOW // DAY * DAY, DAY):  # whole days
                bill = jobs.bill(jobs.inlined(fill_select(names, start, unique=True)), {})
                found.fill += bill.bytes_billed
                found.fill_queries += 1
                found.fill_serving += jobs.bill(
                    fill_select(names, start, unique=False), {}
                ).bytes_billed
    finally:
        await store.close()
        jobs.stop()
    return found


async def measure_all(rate: int, days: int) -> tuple[Stream, dict[str, Found], dict[str, int]]:
    stream = make_stream(
        rate, days, stored_per_day=1_728, customers=CUSTOMERS, late_every=LATE_EVERY
    )
    write = FakeBigQueryWrite()
    await write.start()
    base = f"projects/{PROJECT}/datasets/{DATASET}/tables"
    write.tables[f"{base}/records"] = stream.records
    write.tables[f"{base}/rejected"] = stream.rejections
    day = (NOW - 10 * DAY) // DAY * DAY
    found: dict[str, Found] = {}
    try:
        for shape in SHAPES:
            found[shape.name] = await measure_shape(shape, stream, write, day)
    finally:
        await write.stop()
    return stream, found, subscription_bills(stream, day)


def dollars(n: int) -> str:
    return f"${n / (1 << 40) * DOLLARS_PER_TIB:.4f}"


def ratio(n: int, today: int) -> float:
    """`n` as a share of today's `today`."""
    return n / today


def share(r: float) -> str:
    """A share as 1/N."""
    return f"1/{1 / r:,.1f}"


@dataclass(frozen=True)
class Floor:
    """The least an event-time day's ratio to today's bill times a customer's can be on
    a table stored in blocks of these sizes, whatever its rows are sorted by.

    Every customer has about the same rows each day, `per_pair`. A block of n rows
    holding rows of s days and t customers then has s*t >= n / per_pair: it spans
    either several days or hundreds of customers. A day's question reads every block
    holding the day, a customer's every block holding the customer. Over every day and
    every customer, by Cauchy-Schwarz over the blocks, (sum of s*n) * (sum of t*n) >=
    (sum of n*sqrt(s*t))^2 >= (sum of n^1.5)^2 / per_pair: the share of the rows a day
    reads times the share a customer's rows read is, on average, at least
    (sum of n^1.5)^2 / rows^3, one block's share of the table where every block is full.
    A customer's question reads, of each row, `customer_bytes` as much as on today's
    layout (the copy, against the attributes it is read from there); a day's question
    the same columns on every layout."""

    sizes: tuple[int, ...]
    per_pair: float
    customer_bytes: float

    @property
    def rows(self) -> int:
        return sum(self.sizes)

    @property
    def least(self) -> float:
        """The least product of the two ratios to today's."""
        spread = sum(n**1.5 for n in self.sizes) ** 2 / self.rows**3
        return self.customer_bytes * spread


def floor_of(stream: Stream, found: Found, today: Found) -> Floor:
    return Floor(
        sizes=tuple(found.block_sizes),
        per_pair=stream.rate * 86_400 / CUSTOMERS,
        customer_bytes=found.customer_unpruned / today.asked[CUSTOMER],
    )


def reach_cell(reaches: list[Reach]) -> str:
    """Blocks (and partitions) of `records` a question or call read, summed over its
    queries."""
    if not reaches:
        return "none"
    blocks = sum(r.blocks for r in reaches)
    partitions = sum(r.partitions for r in reaches)
    return f"{blocks} of {reaches[0].of_blocks} ({partitions} of {reaches[0].of_partitions})"


def both(found: Found, today: Found) -> tuple[float, float]:
    """An event-time day's and a customer's ratio to today's on one layout."""
    return (
        ratio(found.asked[EVENT_DAY], today.asked[EVENT_DAY]),
        ratio(found.asked[CUSTOMER], today.asked[CUSTOMER]),
    )


def verdicts(stream: Stream, found: dict[str, Found]) -> list[tuple[str, str, bool]]:
    """Each target, what was measured, and whether it is met."""
    today = found["today"]
    out = []
    for question, shape in (
        (EVENT_DAY, "event time"),
        (EVENT_DAY, "event day by customer"),
        (CUSTOMER, "customer"),
        (CUSTOMER, "customer by ingest day"),
        (CUSTOMER, "event day by customer"),
    ):
        r = ratio(found[shape].asked[question], today.asked[question])
        out.append((f"{question} on {shape} / today", share(r), r <= 1 / 20))
    for shape in SHAPES[1:]:
        worst = max((found[shape.name].api[c].billed / today.api[c].billed, c) for c in today.api)
        out.append(
            (
                f"read API on {shape.name}: its dearest call / today's",
                f"{worst[0]:.2f}x ({worst[1]})",
                worst[0] <= 1.0,
            )
        )
    # One table for both: the layout whose worse ratio is the least.
    best = min(found, key=lambda name: max(both(found[name], today)))
    day, customer = both(found[best], today)
    least = min(floor_of(stream, f, today).least for f in found.values())
    out.append(
        (
            "both questions on one table, each at most 1/20 (their product at most 1/400)",
            f"{best}: {share(day)} and {share(customer)}; no layout's blocks let the "
            f"product under {share(least)}",
            day <= 1 / 20 and customer <= 1 / 20,
        )
    )
    day = ratio(found["event time"].asked[EVENT_DAY], today.asked[EVENT_DAY])
    customer = ratio(found["customer"].asked[CUSTOMER], today.asked[CUSTOMER])
    out.append(
        (
            "records as today, beside tables of the analyst's own laid out as event time "
            "and as customer: the day, a customer, the read API",
            f"{share(day)}, {share(customer)}, 1.00x",
            day <= 1 / 20 and customer <= 1 / 20,
        )
    )
    return out


def main(rate: int, days: int) -> int:
    stream, found, subscription = asyncio.run(measure_all(rate, days))
    print(
        f"model: blocks of {BLOCK_ROWS:,} rows, the last 30 min write-optimized, "
        f"${DOLLARS_PER_TIB}/TiB on demand, 10 MiB minimum per table; "
        f"{days} days at {rate} msg/s, each stored row standing for {stream.weight:,}; "
        f"{CUSTOMERS:,} customers, one event in {LATE_EVERY} up to three days late"
    )
    today = found["today"]
    print("\n## the analyst's questions, bytes billed (ratio to today's layout)\n")
    header = ["question", *(s.name for s in SHAPES), "BigQuery subscription's table"]
    rows = [
        [
            q,
            *(
                f"{size(found[s.name].asked[q])} ({dollars(found[s.name].asked[q])}, "
                f"{share(ratio(found[s.name].asked[q], today.asked[q]))})"
                for s in SHAPES
            ),
            f"{size(subscription[q])} ({dollars(subscription[q])})",
        ]
        for q in today.asked
    ]
    print(markdown(header, rows))
    print("\nlayouts, as a system's entry declares them (layout = { ... }):\n")
    for shape in SHAPES:
        print(f"- {shape.name}: {shape.terraform}")
    print("\n## the read API's calls, bytes billed (ratio to today's layout)\n")
    rows = []
    for call in today.api:
        cells = [call]
        for shape in SHAPES:
            spent = found[shape.name].api[call].billed
            cells.append(f"{size(spent)} ({spent / today.api[call].billed:.2f}x)")
        rows.append(cells)
    print(markdown(["call", *(s.name for s in SHAPES)], rows))

    print("\n## blocks of records read (partitions read), of those it holds\n")
    rows = [[q, *(reach_cell([found[s.name].reached[q]]) for s in SHAPES)] for q in today.asked]
    rows += [
        [c, *(reach_cell(found[s.name].api_reached[c]) for s in SHAPES)]
        for c in today.api
        if c.startswith(("tail", "page"))
    ]
    print(markdown(["question or call", *(s.name for s in SHAPES)], rows))

    floors = {s.name: floor_of(stream, found[s.name], today) for s in SHAPES}
    first = floors["today"]
    print("\n## one table for both questions: the floor\n")
    print(
        f"{first.rows / 1e6:,.1f} million rows in blocks of at most {BLOCK_ROWS:,}; a customer "
        f"has {first.per_pair:,.0f} rows a day, so a block of n rows holding rows of s days "
        f"and t customers has s x t >= n/{first.per_pair:,.0f} ({BLOCK_ROWS / first.per_pair:,.0f} "
        f"for a full block): on any table, a day's share of it times a customer's is at "
        f"least about one block's share (class Floor says how it is computed from each "
        f"block's rows)\n"
    )
    rows = []
    for shape in SHAPES:
        day, customer = both(found[shape.name], today)
        floor = floors[shape.name]
        rows.append(
            [
                shape.name,
                share(day),
                share(customer),
                share(day * customer),
                f"{len(floor.sizes)} ({sum(1 for n in floor.sizes if n < BLOCK_ROWS)} short)",
                f"{floor.customer_bytes:.2f}",
                share(floor.least),
            ]
        )
    print(
        markdown(
            [
                "layout",
                "day / today",
                "customer / today",
                "product",
                "blocks",
                "a customer's bytes a row / today's",
                "floor of the product (1/20 for both is 1/400)",
            ],
            rows,
        )
    )

    fill, direct = today.fill, today.fill_serving
    # What a table holds again: a month of rows, every column (what the direct read reads).
    held = direct / PHYSICAL_RATIO / (1 << 30) * BIGQUERY_ACTIVE_GIB_MONTH
    print("\n## records as today, beside tables of the analyst's own\n")
    print(
        f"the read API reads records on today's layout: what it bills today (1.00x). "
        f"One table laid out as event day by customer answers a day at "
        f"{share(both(found['event day by customer'], today)[0])} and a customer at "
        f"{share(both(found['event day by customer'], today)[1])}; two, laid out as event "
        f"time and as customer, a day at {share(both(found['event time'], today)[0])} "
        f"({size(found['event time'].asked[EVENT_DAY])}) and a customer at "
        f"{share(both(found['customer'], today)[1])} "
        f"({size(found['customer'].asked[CUSTOMER])}). `recordline tables fill` fills one "
        f"from records a day of ingest_time at a time, {today.fill_queries} queries over the "
        f"month: on BigQuery alone, through records_unique (the dedupe window before each day "
        f"read too), {size(fill)} ({dollars(fill)}); behind a serving tier, each day's "
        f"partition alone, {size(direct)} ({dollars(direct)}). Each holds the month's rows "
        f"again, about "
        f"${held:.2f} a month at ${BIGQUERY_ACTIVE_GIB_MONTH}/GiB-month, {PHYSICAL_RATIO}x "
        f"compressed"
    )

    print("\n## targets\n")
    print(
        markdown(
            ["target", "measured", "met"],
            [[n, v, "yes" if ok else "NO"] for n, v, ok in verdicts(stream, found)],
        )
    )
    return 0
