"""A system's layout of `records` on BigQuery alone: the copies a layout declares are
written in every row (an attribute's, a typed field's), events of any time land in a
partition and none is lost, and the read API shows every record once whatever the
table is partitioned by."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.records import Record
from app.store.bigquery.layout import COPY_DESCRIPTION
from app.store.bigquery.store import BigQueryStore
from app.typed.mapping import avro_fields
from app.typed.revisions import Revisions
from tests.bigquery.billing import Layout
from tests.bigquery.conftest import BASE_TIME, DATASET, PROJECT
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.bigquery.test_bigquery_typed import query
from tests.typed.stored import avro_stored

RECORDS = f"projects/{PROJECT}/datasets/{DATASET}/tables/records"
RECORDS_JSON = (
    Path(__file__).resolve().parents[2] / "infra/terraform/modules/system/schemas/records.json"
)
TABLE = f"`{PROJECT}.{DATASET}.records`"
DAY = 86_400_000_000
HOUR = 3_600_000_000

ORDER = {
    "type": "record",
    "name": "Order",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "placed_on", "type": {"type": "int", "logicalType": "date"}},
        {
            "name": "customer",
            "type": {
                "type": "record",
                "name": "C",
                "fields": [
                    {"name": "id", "type": "long"},
                ],
            },
        },
    ],
}


def copy(name: str, source: str, kind: str) -> dict[str, Any]:
    """A copy as Terraform creates it (modules/system/bigquery.tf)."""
    return {
        "name": name,
        "type": kind,
        "mode": "NULLABLE",
        "description": f"{COPY_DESCRIPTION}{source}",
    }


def define(write_fake: FakeBigQueryWrite, *extra: dict[str, Any]) -> None:
    write_fake.define(RECORDS, [*json.loads(RECORDS_JSON.read_text()), *extra])


def record(message_id: str, ingest: int, **more: Any) -> Record:
    values: dict[str, Any] = {"publish_time": ingest - 1_000, "id": message_id, "data": "{}"}
    return Record(message_id=message_id, ingest_time=ingest, **{**values, **more})


async def every_record(store: BigQueryStore, *, until: int, limit: int = 2) -> list[str]:
    """Message ids of every page from the start to `until`, in order."""
    from app.store import PageQuery

    seen: list[str] = []
    after, after_id = 0, ""
    while (after, after_id) < (until, ""):
        page = await store.page(
            Record,
            PageQuery(after_time=after, after_message_id=after_id, before_time=until, limit=limit),
        )
        seen += [r.message_id for r in page.rows]
        after, after_id = page.after_time, page.after_message_id
    return seen


async def test_an_attributes_copy_is_written_in_its_records_row(
    make_store: Callable[..., Any], write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs
) -> None:
    define(write_fake, copy("customer", "attributes.customer", "STRING"))
    jobs_fake.billing.layouts["records"] = Layout(
        partition="ingest_time", clustering=("customer", "ingest_time")
    )
    store: BigQueryStore = await make_store()
    assert store.layout is not None
    assert [c.column for c in store.layout.copies] == ["customer"]
    await store.append(
        [
            record("m1", BASE_TIME, attributes='{"customer": "42", "region": "eu"}'),
            record("m2", BASE_TIME + 1, attributes='{"region": "eu"}'),
            record("m3", BASE_TIME + 2, attributes='{"customer": 7}'),
        ]
    )
    rows = {r["message_id"]: r.get("customer") for r in write_fake.rows("records")}
    # A record without the attribute, or with a value that is no string, has NULL.
    assert rows == {"m1": "42", "m2": None, "m3": None}
    found = await query(
        jobs_fake, f"SELECT message_id FROM {TABLE} WHERE customer = '42' ORDER BY message_id"
    )
    assert found == [("m1",)]


async def test_a_typed_fields_copy_partitions_records_by_its_date(
    make_store: Callable[..., Any], write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs
) -> None:
    define(
        write_fake,
        copy("placed_on", "fields.placed_on", "DATE"),
        copy("customer_id", "fields.customer.id", "INT64"),
    )
    jobs_fake.billing.layouts["records"] = Layout(
        partition="placed_on", partition_type="DATE", clustering=("customer_id",)
    )
    revisions = Revisions()
    rev = f"projects/{PROJECT}/schemas/orders@r1"
    revisions.learn(rev, avro_fields(ORDER))
    store: BigQueryStore = await make_store(revisions=revisions, write_deadline_seconds=6.0)
    assert store.layout is not None
    assert store.layout.partition == "placed_on"
    datum = {"id": "o-1", "placed_on": 19_840, "customer": {"id": 42}}
    data = json.dumps(avro_stored(ORDER, datum))
    await store.append(
        [
            record("m1", BASE_TIME, data=data, schema=rev),
            record("m2", BASE_TIME + 1),  # no schema: no typed values, copies NULL
        ]
    )
    rows = {r["message_id"]: r for r in write_fake.rows("records")}
    assert (rows["m1"]["placed_on"], rows["m1"]["customer_id"]) == (19_840, 42)
    assert rows["m2"].get("placed_on") is None
    assert rows["m2"].get("customer_id") is None
    found = await query(
        jobs_fake,
        f"SELECT message_id, fields.customer.id FROM {TABLE} "
        "WHERE placed_on = DATE '2024-04-27' AND customer_id = 42",
    )
    assert found == [("m1", 42)]


@pytest.mark.parametrize(
    "layout",
    [
        Layout(partition="ingest_time", clustering=("ingest_time",)),
        Layout(partition="timestamp", clustering=("ingest_time",)),
        Layout(partition="timestamp", clustering=("id",), granularity="MONTH"),
    ],
    ids=["ingest time", "event time", "event month, clustered by id"],
)
async def test_pages_show_every_record_once_whatever_the_partitioning(
    layout: Layout,
    make_store: Callable[..., Any],
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
) -> None:
    define(write_fake)
    jobs_fake.billing.layouts["records"] = layout
    store: BigQueryStore = await make_store()
    assert store.layout is not None
    assert store.layout.partition == layout.partition
    year_1900 = -2_208_988_800_000_000
    year_2500 = 16_725_225_600_000_000
    start = BASE_TIME - 10 * DAY
    rows = [
        # Ingested on the first day, about that day.
        record("a1", start, timestamp=start),
        record("a2", start + HOUR, timestamp=start + HOUR),
        # Nothing ingested for a day; then on day 3 events of day 7 only, far ahead of
        # any partition of ingest: partition metadata knows day 7, not day 3.
        record("b1", start + 3 * DAY, timestamp=start + 7 * DAY),
        record("b2", start + 3 * DAY + 1, timestamp=start + 7 * DAY),
        # On day 5, events of day 5, of no time at all, and out of BigQuery's years.
        record("c1", start + 5 * DAY, timestamp=start + 5 * DAY),
        record("c2", start + 5 * DAY + 1, timestamp=None),
        record("c3", start + 5 * DAY + 2, timestamp=year_1900),
        record("c4", start + 5 * DAY + 3, timestamp=year_2500),
    ]
    assert await store.append(rows) == [None] * len(rows)
    seen = await every_record(store, until=start + 9 * DAY)
    assert seen == [r.message_id for r in rows]


def test_a_copy_of_a_field_whose_name_no_proto_field_can_carry_is_found() -> None:
    # Typed values travel under their proto names (a placeholder for `prix-total`):
    # the copy finds its field there, not under the column's own name.
    from app.store.bigquery.layout import Copies, Copy
    from app.store.bigquery.proto import proto_name

    copies = Copies([Copy("total", None, ("prix-total",), "NUMERIC")])
    row = record("m1", BASE_TIME)
    assert copies.values(row, {"fields": {proto_name("prix-total"): "12.50"}}) == {"total": "12.50"}
    assert copies.values(row, {"fields": {"prix-total": "12.50"}}) == {}
    assert copies.values(row, None) == {}


async def test_records_wait_for_the_layout_and_are_never_written_without_their_copies(
    make_store: Callable[..., Any], write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs
) -> None:
    from app.errors import StoreUnavailable
    from tests.waiting import until

    define(write_fake, copy("customer", "attributes.customer", "STRING"))
    # The table cannot be read as the store starts: it starts all the same, and records
    # are refused (503 to a push, which Pub/Sub delivers again) until it is read.
    jobs_fake.get_failures.extend([(403, "accessDenied")] * 1000)
    store: BigQueryStore = await make_store()
    assert store.layout is None
    with pytest.raises(StoreUnavailable, match="layout of records"):
        await store.append([record("m1", BASE_TIME, attributes='{"customer": "42"}')])
    with pytest.raises(StoreUnavailable):
        store.layout_copies()
    # Readable again: the store's loop reads it, and records are written.
    jobs_fake.get_failures.clear()
    await until(lambda: store.layout is not None, what="the layout read again")
    assert await store.append([record("m1", BASE_TIME, attributes='{"customer": "42"}')]) == [None]
    assert [r["customer"] for r in write_fake.rows("records")] == ["42"]
    assert [c.column for c in store.layout_copies().copies] == ["customer"]
