"""records_latest(since, until), the table function Terraform gives analysts: each record
id's newest version, as GET /v1/records/{id} answers it. Its body, as Terraform renders
it, runs on the BigQuery fakes (as records_unique's does: its arguments bound as query
parameters) against many ids with several versions each, and answers what the store's
own look-up answers for every id; with a delete marker, an id whose newest version
carries it is left out. (Behind the serving tier: tests/spanner/test_records_latest.py.)
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest

from app.records import Record, columns
from tests.bigquery.billing import MIB, BillingModel, Layout
from tests.bigquery.conftest import DATASET, PROJECT
from tests.bigquery.fake_jobs import LAYOUTS, FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.bigquery.stream import DAY, NOW, SECOND
from tests.bigquery.test_records_unique import callable_sql, query, rendered_routine

RECORDS = f"projects/{PROJECT}/datasets/{DATASET}/tables/records"
HOUR = 3600 * SECOND
SINCE = NOW - 10 * DAY
UNTIL = NOW


@cache
def latest_body(delete_marker: tuple[str, str] | None = None) -> str:
    """The routine's definition_body as Terraform renders it in PROJECT.DATASET, for a
    system with this delete marker (field, value)."""
    marker = (
        "null"
        if delete_marker is None
        else json.dumps(dict(zip(("field", "value"), delete_marker, strict=True)))
    )
    return rendered_routine("records_latest", variables={"delete_marker": marker})


def versions(ids: int, *, seed: int = 7) -> list[dict[str, Any]]:
    """Rows of `ids` record ids with 1 to 5 versions each, as the write fake stores them:
    event times out of order, some missing, some tied (so publish time, ingest time and
    message id decide), later copies of a message redelivered, a `deleted` payload now
    and then."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    n = 0
    for i in range(ids):
        record_id = f"order-{i:06}"
        for _ in range(rng.randint(1, 5)):
            n += 1
            ingest = SINCE + rng.randrange(9 * DAY)
            event = rng.choice([None, ingest - rng.randrange(DAY), SINCE + DAY * rng.randrange(3)])
            publish = ingest - rng.choice([80_000, 80_000, 2 * SECOND])
            state = rng.choice(["open", "paid", "shipped", "deleted"])
            row = {
                "message_id": f"{17_000_000_000_000_000 + n}",
                "publish_time": publish,
                "ingest_time": ingest,
                "id": record_id,
                "timestamp": event,
                "data": json.dumps({"state": state, "n": n}),
                "attributes": "{}",
                "subscription": "projects/p/subscriptions/records-push",
                "delivery_attempt": 1,
                "trace_id": f"{n:032x}",
                "schema": None,
            }
            rows.append(row)
            if rng.random() < 0.1:
                # Redelivered: a later copy of the same message, never a version.
                rows.append({**row, "ingest_time": ingest + 2 * SECOND, "trace_id": f"{n:031x}f"})
    rows.sort(key=lambda r: (r["ingest_time"], r["message_id"]))
    return rows


def by_id(answer: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """The function's rows: each id's message id and payload."""
    names = [f["name"] for f in answer["schema"]["fields"]]
    found = {}
    for row in answer.get("rows", []):
        values = dict(zip(names, (c["v"] for c in row["f"]), strict=True))
        found[values["id"]] = (values["message_id"], json.loads(values["data"]))
    return found


@pytest.mark.slow
async def test_it_answers_each_id_as_the_look_up_does(
    write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs, make_store: Callable[..., Any]
) -> None:
    ids = 300
    write_fake.tables[RECORDS] = versions(ids)
    answer = query(jobs_fake, callable_sql(latest_body(), "u.*"), SINCE, UNTIL)
    found = by_id(answer)
    assert len(found) == ids
    store = await make_store()
    for i in range(ids):
        record = await store.latest(f"order-{i:06}")
        assert record is not None
        assert found[record.id] == (record.message_id, json.loads(record.data)), record.id


@pytest.mark.slow
async def test_an_id_whose_newest_version_is_a_delete_marker_is_left_out(
    write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs, make_store: Callable[..., Any]
) -> None:
    ids = 200
    write_fake.tables[RECORDS] = versions(ids, seed=11)
    kept = by_id(
        query(jobs_fake, callable_sql(latest_body(("state", "deleted")), "u.*"), SINCE, UNTIL)
    )
    store = await make_store()
    deleted = 0
    for i in range(ids):
        record = await store.latest(f"order-{i:06}")
        assert record is not None
        if json.loads(record.data)["state"] == "deleted":
            deleted += 1
            assert record.id not in kept
        else:
            assert kept[record.id] == (record.message_id, json.loads(record.data))
    assert 0 < deleted < ids
    assert len(kept) == ids - deleted


def test_a_call_bills_the_ranges_partitions_and_the_columns_it_ranks_by() -> None:
    # A month of rows, 2,000 ids; a call over its last week, every row settled.
    rows = versions(2_000, seed=3)
    write = FakeBigQueryWrite()
    write.tables[RECORDS] = rows
    kinds = {c.name: c.kind for c in columns(Record)}

    def bill(layout: Layout, select: str) -> int:
        jobs = FakeBigQueryJobs(
            write,
            project=PROJECT,
            dataset=DATASET,
            billing=BillingModel(
                layouts={**LAYOUTS, "records": layout},
                kinds={"records": kinds},
                row_weight=1_000,
                clock=lambda: (NOW + DAY) / SECOND,
            ),
        )
        query(jobs, callable_sql(latest_body(), select), NOW - 3 * DAY, NOW)
        (received,) = jobs.queries
        assert received.bill is not None
        return received.bill.bytes_processed

    ranked = [
        "message_id",
        "ingest_time",
        "publish_time",
        "trace_id",
        "subscription",
        "id",
        "timestamp",
    ]
    from tests.bigquery.billing import value_size

    def size(keep: Callable[[dict[str, Any]], bool], names: list[str]) -> int:
        return 1_000 * sum(value_size(kinds[c], r[c]) for r in rows if keep(r) for c in names)

    def days(r: dict[str, Any]) -> bool:
        return (NOW - 3 * DAY) // DAY * DAY <= r["ingest_time"] < NOW // DAY * DAY + DAY

    narrow = bill(Layout(partition="ingest_time", clustering=("ingest_time",)), "u.id, u.data")
    # The ranking's columns and data, of the range's partitions alone.
    assert narrow <= size(days, [*ranked, "data"])
    assert narrow >= size(lambda r: NOW - 3 * DAY <= r["ingest_time"] < NOW, [*ranked, "data"])
    # Partitioned by the event's own time, clustered on ingest_time first: the range's
    # blocks of every partition, no more than twice as much here.
    by_event = bill(Layout(partition="timestamp", clustering=("ingest_time",)), "u.id, u.data")
    assert by_event <= 2 * narrow
    assert size(lambda r: True, [*ranked, "data"]) > 2 * MIB
