"""A layout changed on a table with rows, behind the serving tier (docs/layouts.md,
"Changing a layout"): BigQuery's own steps (a new table of the new layout filled from
the old one by one INSERT … SELECT, copied into place) are stood in for on the fakes;
what Recordline does around them is run as an operator runs it. The export waits
meanwhile, rows keep arriving in Spanner; a new revision reads the new layout as it
starts, the export goes on from its progress into the new table, every row once with
its copy, and `export verify` finds Spanner and BigQuery agreeing."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from app.commands import export
from app.records import Record, Rejection
from app.settings import Settings
from app.store.open import operated
from tests.bigquery.billing import Layout
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.bigquery.test_layouts import RECORDS, copy, define
from tests.spanner.exporting import copies, drain, exporter, settle_clock
from tests.spanner.test_serving import record

pytestmark = pytest.mark.emulator

Make = Callable[..., Any]


def bought(message_id: str, customer: str) -> Record:
    return msgspec.structs.replace(
        record(message_id), attributes=json.dumps({"customer": customer})
    )


async def test_a_new_layout_is_filled_from_the_old_table_and_the_export_goes_on_into_it(
    make_tiered: Make,
    serving_settings: Callable[..., Settings],
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
) -> None:
    define(write_fake)  # today's layout: no copies
    since = time.time_ns() // 1000
    before = await make_tiered()
    rows: list[Record | Rejection] = [bought(f"m-{i}", f"c{i % 3}") for i in range(8)]
    await before.append(rows)
    await settle_clock()
    old = exporter(before)
    await drain(old)
    assert copies(write_fake, "records") == {f"m-{i}": 1 for i in range(8)}
    # The old revision stops (its lease handed back), and the export waits.
    await old.stop()
    await before.close()

    # The operator's BigQuery steps, the export waiting: records_next of the new layout
    # (partitioned by event time, clustered on ingest_time and a customer's copy),
    # filled from the old table as the documented INSERT … SELECT does
    # (JSON_VALUE(attributes, '$.customer') AS customer), then copied into place.
    held = write_fake.rows("records")
    define(write_fake, copy("customer", "attributes.customer", "STRING"))
    write_fake.tables[RECORDS] = [
        {**r, "customer": json.loads(r["attributes"]).get("customer")} for r in held
    ]
    write_fake.rows_changed += 1
    jobs_fake.billing.layouts["records"] = Layout(
        partition="timestamp", clustering=("ingest_time", "customer")
    )
    # Pushes go on meanwhile: Spanner keeps them.
    after = await make_tiered()
    more: list[Record | Rejection] = [bought(f"n-{i}", f"c{i % 2}") for i in range(5)]
    await after.append(more)

    # A new revision reads the layout as it starts; the export goes on from its progress.
    assert after.analytics.layout is not None
    assert after.analytics.layout.partition == "timestamp"
    await settle_clock()
    await drain(exporter(after, holder="b"))
    every = {f"m-{i}": 1 for i in range(8)} | {f"n-{i}": 1 for i in range(5)}
    assert copies(write_fake, "records") == every
    customers = {r["message_id"]: r["customer"] for r in write_fake.rows("records")}
    assert customers == {f"m-{i}": f"c{i % 3}" for i in range(8)} | {
        f"n-{i}": f"c{i % 2}" for i in range(5)
    }
    # `export verify`: Spanner and the new table agree, window by window.
    verify = argparse.Namespace(action="verify", since=since, window=1.0)
    assert await export.run(verify, operated(serving_settings())) == 0
