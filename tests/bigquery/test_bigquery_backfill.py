"""`recordline typed backfill` on BigQuery: stored records projected again, in place.

Through the real `bigquery.Client` and `BigQueryWriteAsyncClient` against the
fakes: the staging table is made with `tables.insert`, written through the
Storage Write API, merged with one DML `UPDATE … FROM` (which the jobs fake
runs on every matching row at once, and bills as BigQuery bills DML on a
partitioned table), then dropped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest

from app.cli import main
from app.records import Record
from app.store.bigquery.backfill import BackfillError
from app.store.bigquery.store import BigQueryStore
from app.typed.revisions import Revisions
from tests.bigquery.conftest import BASE_TIME, DATASET, PROJECT
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.bigquery.test_bigquery_typed import (
    NOTE,
    RECORDS,
    RECORDS_JSON,
    TABLE,
    order,
    query,
    revision,
    stored,
)

DAY = 86_400_000_000
# An Avro record schema a JSON topic's system declares.
DECLARED = json.dumps(
    {
        "type": "record",
        "name": "Payment",
        "fields": [
            {"name": "amount", "type": "long"},
            {"name": "note", "type": ["null", "string"], "default": None},
        ],
    }
)


@pytest.fixture(autouse=True)
def table(write_fake: FakeBigQueryWrite) -> None:
    """`records` with the columns Terraform creates it with."""
    write_fake.define(RECORDS, json.loads(RECORDS_JSON.read_text()))


def payment(message_id: str, ingest_time: int, data: dict[str, Any]) -> Record:
    """A record of a JSON topic: no revision of its own."""
    return Record(
        message_id=message_id,
        publish_time=BASE_TIME,
        ingest_time=ingest_time,
        id=message_id,
        data=json.dumps(data),
    )


def rfc3339(micros: int) -> str:
    moment = dt.datetime.fromtimestamp(micros / 1_000_000, tz=dt.UTC)
    return moment.isoformat().replace("+00:00", "Z")


@pytest.mark.slow
async def test_records_stored_before_a_schema_was_declared_get_their_typed_columns(
    make_store: Callable[..., Any],
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Stored with no schema: JSON alone, on two days; m1 delivered twice.
    store: BigQueryStore = await make_store(revisions=Revisions())
    day2 = BASE_TIME + DAY
    assert (
        await store.append(
            [
                payment("m1", BASE_TIME + 1, {"amount": 5, "note": "first"}),
                payment("m2", BASE_TIME + 2, {"amount": "many"}),
                payment("m1", BASE_TIME + 3, {"amount": 5, "note": "first"}),
                payment("m3", day2, {"amount": 7}),
            ]
        )
        == [None] * 4
    )
    await store.close()
    before = await query(jobs_fake, f"SELECT COUNT(*) FROM {TABLE}")
    # What reading every column of the first day, and of both days, bills now.
    whole_day = jobs_fake.bill(
        f"SELECT * FROM {TABLE} WHERE ingest_time >= TIMESTAMP_MICROS(@a) "
        "AND ingest_time < TIMESTAMP_MICROS(@b)",
        {"a": BASE_TIME, "b": day2},
    )
    both_days = jobs_fake.bill(f"SELECT * FROM {TABLE}", {})

    # The system declares its schema; the first day is backfilled, as an operator
    # runs it, while nothing stops the service.
    monkeypatch.setenv("RECORDLINE_STORE", f"bigquery://{PROJECT}/{DATASET}")
    monkeypatch.setenv("RECORDLINE_BIGQUERY_WRITE_ENDPOINT", write_fake.address)
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", jobs_fake.endpoint)
    monkeypatch.setenv("RECORDLINE_JSON_TOPIC_SCHEMA", DECLARED)
    argv = ["typed", "backfill", "--since", rfc3339(BASE_TIME), "--until", rfc3339(day2)]
    # On BigQuery a run says who runs it and why (the service's own table changes).
    assert await asyncio.to_thread(main, argv) == 2
    argv += ["--reason", "the first day, before the schema was declared"]
    argv += ["--operator", "ada@example.com"]
    assert await asyncio.to_thread(main, argv) == 0

    rows = await query(
        jobs_fake,
        "SELECT message_id, fields.amount, fields.note, "
        "ARRAY_TO_STRING(ARRAY(SELECT e.field FROM UNNEST(projection_errors) AS e), ',') "
        f"FROM {TABLE} ORDER BY ingest_time",
    )
    assert rows == [
        ("m1", 5, "first", ""),
        # A value that does not fit its column: NULL there, and said why.
        ("m2", None, None, "amount"),
        ("m1", 5, "first", ""),  # every copy of a message
        ("m3", None, None, ""),  # the second day was not asked for
    ]
    # Nothing was added: one row per delivery, as before; the staging table is gone.
    assert await query(jobs_fake, f"SELECT COUNT(*) FROM {TABLE}") == before
    assert jobs_fake.created == {}
    assert len(jobs_fake.dropped) == 1
    assert jobs_fake.dropped[0].startswith("records_backfill_")

    # Billed as DML on a partitioned table: what the UPDATE read, plus every
    # column of the one partition it changed, which is what a full read of that
    # day bills; the second day's partition is not billed.
    (update,) = [q for q in jobs_fake.queries if q.sql.startswith("UPDATE")]
    assert update.bill is not None
    reads = dict(update.bill.scans)
    assert reads["records"] >= whole_day.bytes_processed
    assert reads["records"] < both_days.bytes_processed


@pytest.mark.slow
async def test_values_the_write_path_could_not_take_are_filled_in(
    make_store: Callable[..., Any],
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
) -> None:
    """The issue's promise for BigQuery alone: rows written without a new revision's
    columns (the Storage Write API learning them for minutes) are backfilled."""
    revisions = Revisions()
    r1 = revision(revisions, "r1", order())
    r2 = revision(revisions, "r2", order(NOTE))
    store: BigQueryStore = await make_store(revisions=revisions, write_deadline_seconds=1.0)
    await store.append([stored(order(), {"id": "o-1", "amount": 1}, "m1", r1)])
    write_fake.schema_lag = 3600.0
    note = {"id": "o-2", "amount": 2, "note": "gift"}
    assert await store.append([stored(order(NOTE), note, "m2", r2)]) == [None]
    errors = f"SELECT id, fields.note, ARRAY_LENGTH(projection_errors) FROM {TABLE} ORDER BY id"
    assert await query(jobs_fake, errors) == [("o-1", None, 0), ("o-2", None, 1)]

    done = await store.backfill(0, BASE_TIME + DAY, statement_seconds=60.0)

    assert (done.projected, done.updated, done.unknown) == (2, 2, 0)
    assert done.bytes_billed >= 2 * 10 * 2**20  # two statements, each at least the minimum
    assert await query(jobs_fake, errors) == [("o-1", None, 0), ("o-2", "gift", 0)]
    # A second run finds the same values: nothing changes, nothing doubles.
    again = await store.backfill(0, BASE_TIME + DAY, statement_seconds=60.0)
    assert (again.projected, again.updated) == (2, 2)
    assert await query(jobs_fake, errors) == [("o-1", None, 0), ("o-2", "gift", 0)]
    assert len(write_fake.rows("records")) == 2


@pytest.mark.slow
async def test_unknown_revisions_are_left_alone_and_a_refused_run_changes_nothing(
    make_store: Callable[..., Any],
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
) -> None:
    revisions = Revisions()
    r1 = revision(revisions, "r1", order())
    store: BigQueryStore = await make_store(revisions=revisions)
    await store.append([stored(order(), {"id": "o-1", "amount": 1}, "m1", r1)])
    # A revision this process cannot learn (a deleted schema): its typed values,
    # written when it was known, must not become NULLs.
    gone = f"projects/{PROJECT}/schemas/orders@gone"
    revisions.learn(gone, revisions.fields(r1) or ())
    await store.append([stored(order(), {"id": "o-2", "amount": 2}, "m2", gone)])
    fresh = Revisions()
    fresh.learn(r1, revisions.fields(r1) or ())
    rows = f"SELECT id, fields.amount FROM {TABLE} ORDER BY id"
    assert await query(jobs_fake, rows) == [("o-1", 1), ("o-2", 2)]
    backfilling: BigQueryStore = await make_store(revisions=fresh)

    done = await backfilling.backfill(0, BASE_TIME + DAY, statement_seconds=60.0)
    assert (done.projected, done.unknown) == (1, 1)
    assert await query(jobs_fake, rows) == [("o-1", 1), ("o-2", 2)]

    # Over its byte cap, BigQuery refuses the statement: nothing changed, nothing left.
    before = write_fake.rows("records")
    with pytest.raises(BackfillError, match="bytes billed"):
        await backfilling.backfill(
            0, BASE_TIME + DAY, statement_seconds=60.0, max_bytes_billed=11 * 2**20
        )
    assert write_fake.rows("records") == before
    assert jobs_fake.created == {}


async def test_a_layouts_copy_of_a_typed_field_follows_it_in_a_backfill(
    make_store: Callable[..., Any],
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `records` clustered by a copy of fields.amount (docs/layouts.md): rows stored
    # before the schema was declared have neither; the backfill sets both, together.
    from tests.bigquery.billing import Layout
    from tests.bigquery.test_layouts import copy

    write_fake.define(
        RECORDS, [*json.loads(RECORDS_JSON.read_text()), copy("amount", "fields.amount", "INT64")]
    )
    jobs_fake.billing.layouts["records"] = Layout(
        partition="ingest_time", clustering=("ingest_time", "amount")
    )
    store: BigQueryStore = await make_store(revisions=Revisions())
    day2 = BASE_TIME + DAY
    await store.append(
        [
            payment("m1", BASE_TIME + 1, {"amount": 5}),
            payment("m2", BASE_TIME + 2, {"amount": "many"}),
        ]
    )
    await store.close()
    assert await query(jobs_fake, f"SELECT COUNT(*) FROM {TABLE} WHERE amount IS NULL") == [(2,)]
    monkeypatch.setenv("RECORDLINE_STORE", f"bigquery://{PROJECT}/{DATASET}")
    monkeypatch.setenv("RECORDLINE_BIGQUERY_WRITE_ENDPOINT", write_fake.address)
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", jobs_fake.endpoint)
    monkeypatch.setenv("RECORDLINE_JSON_TOPIC_SCHEMA", DECLARED)
    argv = ["typed", "backfill", "--since", rfc3339(BASE_TIME), "--until", rfc3339(day2)]
    argv += ["--reason", "the amount, before the schema was declared", "--operator", "ada@x"]
    assert await asyncio.to_thread(main, argv) == 0
    rows = await query(
        jobs_fake, f"SELECT message_id, fields.amount, amount FROM {TABLE} ORDER BY message_id"
    )
    assert rows == [("m1", 5, 5), ("m2", None, None)]
