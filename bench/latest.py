"""records_latest against the serving tier's GET /v1/records/{id}, on 10,000 ids.

    python3 dev.py bench latest [--ids 10000]

Stores 1 to 4 versions of each of `ids` records in the serving tier (Google's Spanner
emulator), exports them to the BigQuery fakes with the service's own exporter, then
asks for every id both the serving tier's look-up (what GET /v1/records/{id} answers)
and records_latest's body, as Terraform renders it, over what BigQuery holds: prints how
many ids were compared, how many answers differ (the target is none), the versions
stored, and what the function's call bills (by the jobs fake's billing model).
tests/spanner/test_records_latest.py makes it on 60 ids, through GET /v1/records/{id}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from app.errors import StoreUnavailable
from app.records import MAX_MICROS, TABLES, Record, Rejection, columns
from app.store.tiered.store import TieredStore
from tests.bigquery.billing import BillingModel
from tests.bigquery.conftest import DATASET, PROJECT
from tests.bigquery.fake_jobs import LAYOUTS, FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.bigquery.test_records_latest import by_id, latest_body
from tests.bigquery.test_records_unique import callable_sql, query
from tests.spanner.emulator import SpannerEmulator, find_emulator
from tests.spanner.exporting import drain, exporter, settle_clock, tiered_store
from tests.spanner.test_records_latest import versions

BATCH = 500
LOOKUPS_AT_ONCE = 8


async def looked_up(store: TieredStore, record_id: str) -> Record | None:
    """The serving tier's answer, asked again, as a client asks after a 503, while the
    emulator (one transaction at a time, on a loaded machine) does not answer in time."""
    for _ in range(4):
        try:
            return await store.latest(record_id)
        except StoreUnavailable:
            await asyncio.sleep(1)
    return await store.latest(record_id)


async def compare(ids: int, emulator: SpannerEmulator) -> int:
    write = FakeBigQueryWrite()
    await write.start()
    # The billing model's clock stands still: it lays the table out again each time
    # its second changes, which over 25,000 rows is most of a look-up's time.
    now = time.time()
    kinds = {t: {c.name: c.kind for c in columns(r)} for t, r in TABLES.items()}
    billing = BillingModel(layouts=LAYOUTS, kinds=kinds, clock=lambda: now)
    jobs = FakeBigQueryJobs(write, project=PROJECT, dataset=DATASET, billing=billing)
    jobs.start()
    store = tiered_store(
        emulator.database(), emulator.host, write, jobs.endpoint, timeout_seconds=30.0, export=False
    )
    await store.start()
    try:
        rows: list[Record | Rejection] = list(versions(ids))
        started = time.perf_counter()
        for start in range(0, len(rows), BATCH):
            await store.append(rows[start : start + BATCH])
        await settle_clock()
        one = exporter(store)
        await drain(one)
        # A long export ends in several drains: step until BigQuery holds every version.
        deadline = time.monotonic() + 600
        while len(write.rows("records")) < len(rows):
            if time.monotonic() > deadline:
                print(f"the export stopped at {len(write.rows('records')):,} rows")
                return 1
            await settle_clock()
            await drain(one)
        stored = time.perf_counter() - started
        print(f"stored and exported {len(rows):,} versions ({stored:.0f} s)", flush=True)
        answer = query(jobs, callable_sql(latest_body(), "u.*"), 0, MAX_MICROS)
        (call,) = jobs.queries[-1:]
        found = by_id(answer)
        differ: list[str] = []
        started = time.perf_counter()
        names = [f"order-{i:05}" for i in range(ids)]
        for start in range(0, ids, LOOKUPS_AT_ONCE):
            if start and not start % 1000:
                print(
                    f"  {start:,} ids looked up ({time.perf_counter() - started:.0f} s)", flush=True
                )
            chunk = names[start : start + LOOKUPS_AT_ONCE]
            answered = await asyncio.gather(*(looked_up(store, n) for n in chunk))
            for name, record in zip(chunk, answered, strict=True):
                if record is None or found.get(name) != (
                    record.message_id,
                    json.loads(record.data),
                ):
                    differ.append(name)
        looked = time.perf_counter() - started
        extra = set(found) - set(names)
        print(f"ids: {ids:,}; versions stored and exported: {len(rows):,} ({stored:.0f} s)")
        print(
            f"records_latest rows: {len(found):,}; ids it has that were never stored: {len(extra)}"
        )
        print(f"look-ups through the serving tier: {ids:,} ({looked:.0f} s)")
        billed = call.bill.bytes_billed if call.bill is not None else 0
        print(f"records_latest over everything: {billed:,} bytes billed (the 10 MiB minimum here)")
        print(f"answers that differ: {len(differ)}" + (f" (first: {differ[:5]})" if differ else ""))
        return 0 if not differ and not extra and len(found) == ids else 1
    finally:
        await store.close()
        jobs.stop()
        await write.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench latest")
    parser.add_argument("--ids", type=int, default=10_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        emulator = SpannerEmulator(find_emulator(), Path(tmp) / "spanner.log")
        try:
            return asyncio.run(compare(args.ids, emulator))
        finally:
            emulator.stop()
