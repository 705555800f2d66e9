"""What an analyst's question and the read API's calls bill on each layout of `records`.

    python3 dev.py bench bqcost --layouts [--rate 10] [--days 30]

A month of rows at 10 messages a second (each stored row standing for `weight`, as
`bench bqcost` scales them), each record with a `customer` attribute (one of 5,000) and
one event in 50 up to three days late, laid out as a system may choose
(infra/terraform/layouts.tf, docs/layouts.md). Every query is billed by the jobs.query
fake's model (`tests/bigquery/billing.py`: BigQuery's documented rules, blocks of
100,000 rows, 30 minutes write-optimized): the analyst's three questions sent to the
fake's jobs.query as a client sends them (run on DuckDB as well as billed), the read
API's calls through the store itself and the real `bigquery.Client`.
Beside them, what the same questions bill on a Pub/Sub BigQuery subscription's table
(`data` and `attributes` as JSON, partitioned by publish_time by day), by the model alone.

Targets: an event-time day and a customer's rows each bill at most 1/20 of the same
question on today's layout (ingest_time by day, clustered on ingest_time), on the layout
shaped for it; the read API's calls bill no more on a layout than on today's.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.records import TABLES, columns
from app.store.bigquery.layout import COPY_DESCRIPTION
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
from tests.bigquery.billing import DOLLARS_PER_TIB, BillingModel, Layout
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
)


def questions(shape: Shape, day: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """The analyst's three questions on `records`, as each is best asked of the shape."""
    customer = (
        "r.customer = @customer"
        if shape.copy
        else ("JSON_VALUE(r.attributes, '$.customer') = @customer")
    )
    return {
        "what happened on a day, by event time": (
            f"SELECT r.id, r.`timestamp`, r.data FROM {RECORDS} AS r "
            "WHERE r.`timestamp` >= TIMESTAMP_MICROS(@day) "
            "AND r.`timestamp` < TIMESTAMP_MICROS(@next_day)",
            {"day": day, "next_day": day + DAY},
        ),
        "everything for one customer": (
            f"SELECT r.id, r.`timestamp`, r.data FROM {RECORDS} AS r WHERE {customer}",
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


def run_query(jobs: FakeBigQueryJobs, sql: str, params: dict[str, Any]) -> int:
    """Bytes billed for `sql` on the fake, run through its jobs.query as a client's."""
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
    return int(answer["totalBytesBilled"])


async def measure_shape(
    shape: Shape, stream: Stream, write: FakeBigQueryWrite, day: int
) -> tuple[dict[str, int], dict[str, Measured]]:
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
        asked = {name: run_query(jobs, sql, p) for name, (sql, p) in questions(shape, day).items()}
        api = {name: await measure(jobs, call, 1) for name, call in calls(stream, store).items()}
    finally:
        await store.close()
        jobs.stop()
    return asked, api


async def measure_all(rate: int, days: int) -> tuple[Stream, dict[str, Any], dict[str, int]]:
    stream = make_stream(
        rate, days, stored_per_day=1_728, customers=CUSTOMERS, late_every=LATE_EVERY
    )
    write = FakeBigQueryWrite()
    await write.start()
    base = f"projects/{PROJECT}/datasets/{DATASET}/tables"
    write.tables[f"{base}/records"] = stream.records
    write.tables[f"{base}/rejected"] = stream.rejections
    day = (NOW - 10 * DAY) // DAY * DAY
    found: dict[str, Any] = {}
    try:
        for shape in SHAPES:
            found[shape.name] = await measure_shape(shape, stream, write, day)
    finally:
        await write.stop()
    return stream, found, subscription_bills(stream, day)


def dollars(n: int) -> str:
    return f"${n / (1 << 40) * DOLLARS_PER_TIB:.4f}"


def main(rate: int, days: int) -> int:
    stream, found, subscription = asyncio.run(measure_all(rate, days))
    print(
        f"model: blocks of {BLOCK_ROWS:,} rows, the last 30 min write-optimized, "
        f"${DOLLARS_PER_TIB}/TiB on demand, 10 MiB minimum per table; "
        f"{days} days at {rate} msg/s, each stored row standing for {stream.weight:,}; "
        f"{CUSTOMERS:,} customers, one event in {LATE_EVERY} up to three days late"
    )
    today_asked, today_api = found["today"]
    print("\n## the analyst's questions, bytes billed\n")
    header = ["question", *(s.name for s in SHAPES), "BigQuery subscription's table"]
    rows = [
        [
            q,
            *(f"{size(found[s.name][0][q])} ({dollars(found[s.name][0][q])})" for s in SHAPES),
            f"{size(subscription[q])} ({dollars(subscription[q])})",
        ]
        for q in today_asked
    ]
    print(markdown(header, rows))
    print("\nlayouts, as a system's entry declares them (layout = { ... }):\n")
    for shape in SHAPES:
        print(f"- {shape.name}: {shape.terraform}")
    print("\n## the read API's calls, bytes billed (ratio to today's layout)\n")
    rows = []
    for call in today_api:
        cells = [call]
        for shape in SHAPES:
            spent = found[shape.name][1][call].billed
            cells.append(f"{size(spent)} ({spent / today_api[call].billed:.2f}x)")
        rows.append(cells)
    print(markdown(["call", *(s.name for s in SHAPES)], rows))

    verdicts = []
    event_day = "what happened on a day, by event time"
    customer = "everything for one customer"
    for question, shape in (
        (event_day, "event time"),
        (customer, "customer"),
        (customer, "customer by ingest day"),
    ):
        ratio = found[shape][0][question] / today_asked[question]
        verdicts.append((f"{question} on {shape} / today", f"1/{1 / ratio:,.1f}", ratio <= 1 / 20))
    for shape in SHAPES[1:]:
        worst = max((found[shape.name][1][c].billed / today_api[c].billed, c) for c in today_api)
        verdicts.append(
            (
                f"read API on {shape.name}: its dearest call / today's",
                f"{worst[0]:.2f}x ({worst[1]})",
                worst[0] <= 1.0,
            )
        )
    print("\n## targets\n")
    print(
        markdown(
            ["target", "measured", "met"], [[n, v, "yes" if ok else "NO"] for n, v, ok in verdicts]
        )
    )
    return 0
