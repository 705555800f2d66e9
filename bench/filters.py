"""What a filter costs a page: a 100-row `since` page an hour back, unfiltered and under
filters keeping about 90%, 10% and 1% of the rows (~1 KiB orders), on DuckDB and BigQuery.

    python3 dev.py bench query --filters [--rows 6000] [--rates 10,100]

DuckDB: the rows its scan passed to the filter, as EXPLAIN ANALYZE counts them. BigQuery:
bytes billed by the jobs.query fake's model (tests/bigquery/billing.py), each stored row
standing for rows of a stream at each rate, against the unfiltered page's SQL over the
very ranges the filtered page read. Ratios are to the unfiltered page of the same run.
Design: docs/stores.md#what-a-filter-costs
"""

from __future__ import annotations

import asyncio
import bisect
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import msgspec

from app.query.service import PAGE_BYTES
from app.records import TABLES, Record, columns
from app.store import Page, PageQuery
from app.store.bigquery.sql import page_sql
from app.store.duckdb.sql import BOUNDED_PAGE_SQL, filtered
from app.store.duckdb.store import DuckDBStore
from app.store.filters import AttributeIs, RowFilter
from bench.bqcost import BLOCK_ROWS, DATASET, PROJECT, RECORDS, markdown, size, started_store
from bench.storage import record_data
from bench.typedcost import RECORDS_JSON
from tests.bigquery.billing import BillingModel
from tests.bigquery.fake_jobs import LAYOUTS, FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.bigquery.stream import NOW, SECOND

HOUR = 3600 * SECOND
SINCE = NOW - HOUR  # the rows span the two hours before NOW
LIMIT = 100
REGIONS = ("eu-west", "eu-north", "us-east", "us-west", "ap", "sa", "af", "me", "oc", "cn")
# Keeping about 90%, 10% and 1% of the orders, then 10% by an attribute, both ways.
WHERES = (
    "NOT data.status IN ('refunded', 'return')",
    "data.amount > 4150",
    "data.shipping.country = 'GB' AND data.amount > 4400",
)
FILTERS: dict[str, RowFilter | None] = {
    "unfiltered": None,
    **{f"where= {text}": RowFilter(where=text) for text in WHERES},
    "attribute=region:eu-west": RowFilter(attributes=(AttributeIs("region", "eu-west"),)),
    "where= attributes.region = 'eu-west'": RowFilter(where="attributes.region = 'eu-west'"),
}
UNFILTERED = page_sql(RECORDS)  # the page's SQL without a filter, as the store sends it


def records(count: int) -> list[Record]:
    """`count` orders in ingest order over the two hours before NOW, seeded."""
    rng, step = random.Random(7), 2 * HOUR // count
    found = []
    for n in range(count):
        ingest = NOW - 2 * HOUR + n * step
        found.append(
            Record(
                message_id=str(10**16 + n),
                publish_time=ingest - rng.randrange(50_000, 2_000_000),
                ingest_time=ingest,
                id=f"order-{n:09}",
                timestamp=ingest - rng.randrange(60 * SECOND),
                data=record_data(rng),
                attributes=json.dumps({"origin": "checkout", "region": rng.choice(REGIONS)}),
                subscription="projects/recordline-prod/subscriptions/orders-push",
                delivery_attempt=1,
                trace_id=f"{rng.getrandbits(128):032x}",
            )
        )
    return found


def query(keep: RowFilter | None, limit: int = LIMIT) -> PageQuery:
    """The page a reader asks for (`since`, `limit`, the API's byte budget)."""
    return PageQuery(
        after_time=SINCE, after_message_id="", before_time=NOW + 1, limit=limit,
        max_bytes=PAGE_BYTES, filter=keep,
    )  # fmt: skip


def spanned(keys: list[tuple[int, str]], page: Page[Any]) -> int:
    """Rows between the page's cursor and where the next page resumes: those it covered."""
    end = (page.after_time, page.after_message_id)
    return bisect.bisect_right(keys, end) - bisect.bisect_right(keys, (SINCE, ""))


def checked(path: Path, keep: RowFilter | None) -> int:
    """Rows DuckDB's scan passed on to the page's filter and Top-N (EXPLAIN ANALYZE)."""
    sql, params = BOUNDED_PAGE_SQL[Record], dict[str, Any]()
    if keep is not None:
        _, sql, params = filtered(Record, keep, ())
    bounds = {"after_time": SINCE, "after_message_id": "", "before_time": NOW + 1, "limit": LIMIT}
    with duckdb.connect(str(path), read_only=True) as con:
        explain = f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}"
        ((_, plan),) = con.execute(explain, params | bounds).fetchall()
    scans, nodes = [], json.loads(plan)["operator"]
    while nodes:
        node = nodes.pop()
        nodes += node.get("children", [])
        scans += [node["intermediate_rows"]] if node["type"] == "TABLE_SCAN" else []
    return int(max(scans))


async def on_duckdb(rows: list[Record], path: Path) -> dict[str, tuple[Page[Any], float]]:
    """Each page, and its median wall time over 5 reads."""
    store = DuckDBStore(str(path))
    await store.start()
    found = {}
    try:
        for at in range(0, len(rows), 1000):
            await store.append(rows[at : at + 1000])
        await store.barrier()
        for name, keep in FILTERS.items():
            took = []
            for _ in range(5):
                started = time.perf_counter()
                page = await store.page(Record, query(keep))
                took.append((time.perf_counter() - started) * 1000)
            found[name] = (page, statistics.median(took))
    finally:
        await store.close()
    return found


async def on_bigquery(rows: list[Record], weight: int) -> dict[str, tuple[int, int, int, int]]:
    """Each page's rows, queries, bytes billed, and what the unfiltered SQL bills over
    the same ranges (each page query's parameters, its filter's left unused)."""
    write = FakeBigQueryWrite()
    await write.start()
    tables = f"projects/{PROJECT}/datasets/{DATASET}/tables"
    write.define(f"{tables}/records", json.loads(RECORDS_JSON.read_text()))  # as Terraform makes it
    write.tables[f"{tables}/records"] = [
        {k: v for k, v in msgspec.structs.asdict(r).items() if k != "received"} for r in rows
    ]
    write.tables[f"{tables}/rejected"] = []
    model = BillingModel(
        layouts=LAYOUTS,
        kinds={t: {c.name: c.kind for c in columns(r)} for t, r in TABLES.items()},
        block_rows=BLOCK_ROWS,
        row_weight=weight,
        clock=lambda: NOW / SECOND,
    )
    jobs = FakeBigQueryJobs(write, project=PROJECT, dataset=DATASET, billing=model)
    jobs.start()
    store = await started_store(write.address, jobs.endpoint)
    found = {}
    try:
        for name, keep in FILTERS.items():
            before = len(jobs.queries)
            page = await store.page(Record, query(keep, limit=-(-LIMIT // weight)))
            sent = jobs.queries[before:]
            billed = sum(q.bill.bytes_billed for q in sent if q.bill is not None)
            # The same queries with the page's scan unfiltered (the others have no filter).
            plain = sum(
                jobs.bill(UNFILTERED if "previous_copy" in q.sql else q.sql, q.params).bytes_billed
                for q in sent
            )
            found[name] = (len(page.rows) * weight, len(sent), billed, plain)
    finally:
        await store.close()
        jobs.stop()
        await write.stop()
    return found


def duckdb_table(rows: list[Record]) -> list[list[str]]:
    keys = [(r.ingest_time, r.message_id) for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "filters.duckdb"
        pages = asyncio.run(on_duckdb(rows, path))
        read = {name: checked(path, keep) for name, keep in FILTERS.items()}
    (base, base_ms), base_read = pages["unfiltered"], read["unfiltered"]
    found = []
    for (name, keep), (page, ms) in zip(FILTERS.items(), pages.values(), strict=True):
        keeps = sum(map(keep.matches, rows)) / len(rows) if keep else 1
        span, base_span = spanned(keys, page), spanned(keys, base)
        found.append([name, f"{keeps:.1%}", str(len(page.rows)), f"{span:,}"])
        found[-1] += [f"{span / base_span:.1f}x", f"{read[name]:,}"]
        found[-1] += [f"{read[name] / base_read:.2f}x", f"{ms:.1f}", f"{ms / base_ms:.1f}x"]
    return found


def bigquery_table(costs: dict[str, tuple[int, int, int, int]]) -> list[list[str]]:
    base_rows, _, base, _ = costs["unfiltered"]
    found = []
    for name, (returned, queries, billed, plain) in costs.items():
        found.append([name, str(returned), str(queries), size(billed), f"{billed / base:.2f}x"])
        found[-1] += [size(plain), f"{billed / plain:.2f}x"]
        # Bytes billed per row returned, and against the unfiltered page's.
        per_row = billed / returned if returned else None
        found[-1] += ["no rows", ""] if per_row is None else [size(round(per_row))]
        found[-1] += [] if per_row is None else [f"{per_row * base_rows / base:.1f}x"]
    return found


def main(count: int, rates: list[int]) -> int:
    rows = records(count)
    after = sum(r.ingest_time >= SINCE for r in rows)  # the cursor (SINCE, "") is before them
    print(f"## DuckDB: {count:,} rows over two hours, {after:,} after `since`, limit {LIMIT}\n")
    head = ["page", "keeps", "rows", "rows spanned", "spanned / unfiltered", "rows read"]
    print(markdown([*head, "read / unfiltered", "ms", "ms / unfiltered"], duckdb_table(rows)))
    same = True
    for rate in rates:
        weight = max(1, round(rate * 7200 / count))
        costs = asyncio.run(on_bigquery(rows, weight))
        same = same and all(billed == plain for *_, billed, plain in costs.values())
        print(f"\n## BigQuery at {weight * count / 7200:g} msg/s: each stored row stands ", end="")
        print(f"for {weight}, limit {-(-LIMIT // weight)} stored rows\n")
        head = ["page", "rows", "queries", "billed", "billed / unfiltered"]
        head += ["same ranges unfiltered", "billed / same ranges", "per row returned"]
        print(markdown([*head, "per row / unfiltered"], bigquery_table(costs)))
    print(
        f"\nevery filtered page billed what its ranges bill unfiltered: {'yes' if same else 'NO'}"
    )
    return 0 if same else 1
