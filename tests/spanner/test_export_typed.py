"""Typed columns with a serving tier: Spanner keeps JSON, the exporter projects each
record onto `records.fields` as it appends it, exactly once as ever.

The exporting instance knows none of the revisions: another decoded them, so
it fetches them by name. A new revision's columns are in the table before any
of its rows is exported; its rows wait in Spanner until the Storage Write API
takes them (the fake learns a schema late, as BigQuery does), or past the
wait go without them, each value named in `projection_errors`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from app.errors import StoreUnavailable
from app.store.tiered.exporter import Exporter
from app.store.tiered.store import TieredStore
from app.store.tiered.typed import TypedExport
from app.typed.mapping import avro_fields
from app.typed.revisions import Revisions
from tests.bigquery.conftest import PROJECT
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.bigquery.test_bigquery_typed import (
    NOTE,
    RECORDS,
    RECORDS_JSON,
    TABLE,
    order,
    query,
    stored,
    typed_columns,
)
from tests.spanner.exporting import copies, drain, exporter, settle_clock

pytestmark = pytest.mark.emulator

Make = Callable[..., Any]
R1 = f"projects/{PROJECT}/schemas/orders@r1"
R2 = f"projects/{PROJECT}/schemas/orders@r2"


class SchemaApi:
    """What the exporting instance fetches revisions from; `down` refuses."""

    def __init__(self) -> None:
        # What the store looks revisions up in: one never learned is fetched here.
        self.revisions = Revisions(self.fetch)
        self.schemas = {R1: order(), R2: order(NOTE)}
        self.fetched: list[str] = []
        self.down = False

    async def fetch(self, revision: str) -> None:
        if self.down:
            raise StoreUnavailable("the Schema API answered UNAVAILABLE")
        self.fetched.append(revision)
        if revision in self.schemas:
            self.revisions.learn(revision, avro_fields(self.schemas[revision]))


@pytest.fixture
async def typed_tier(
    make_tiered: Make, write_fake: FakeBigQueryWrite
) -> tuple[TieredStore, SchemaApi]:
    write_fake.define(RECORDS, json.loads(RECORDS_JSON.read_text()))
    api = SchemaApi()
    store = await make_tiered(revisions=api.revisions)
    return store, api


def typed_exporter(store: TieredStore, api: SchemaApi, **options: Any) -> Exporter:
    assert store.analytics.typed is not None
    typed = TypedExport(store.analytics.typed, api.revisions, **options)
    return exporter(store, typed=typed)


async def export_until(one: Exporter, write_fake: FakeBigQueryWrite, count: int) -> float:
    """Step until BigQuery holds `count` records; how long it took."""
    started = time.monotonic()
    while len(write_fake.rows("records")) < count:
        assert time.monotonic() - started < 20, "the export did not finish"
        await one.step()
    return time.monotonic() - started


async def test_the_export_projects_each_record_once_and_waits_for_a_new_schema(
    typed_tier: tuple[TieredStore, SchemaApi],
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
) -> None:
    store, api = typed_tier
    await store.append(
        [
            stored(order(), {"id": "o-1", "amount": 1}, "m1", R1),
            stored(order(), {"id": "o-2", "amount": 2}, "m2", R1),
        ]
    )
    plain = stored(order(), {"id": "o-3", "amount": 3}, "m3", R1)
    await store.append([msgspec.structs.replace(plain, schema=None)])
    await settle_clock()
    one = typed_exporter(store, api)
    await drain(one)
    assert api.fetched == [R1]  # learned once, by name
    assert set(typed_columns(write_fake)) == {"id", "amount"}

    # r2 adds `note`; BigQuery's write path learns of it two seconds late.
    write_fake.schema_lag = 2.0
    await store.append([stored(order(NOTE), {"id": "o-4", "amount": 4, "note": "gift"}, "m4", R2)])
    await settle_clock()
    assert not await one.step()  # waits in Spanner: nothing refused, nothing blocked
    assert "note" in typed_columns(write_fake)  # the column is there already
    assert one.blocked == {}
    waited = await export_until(one, write_fake, 4)
    assert waited < 5

    rows = await query(
        jobs_fake,
        f"SELECT id, fields.amount, fields.note, ARRAY_LENGTH(projection_errors) "
        f"FROM {TABLE} ORDER BY id",
    )
    # A record with no schema has no typed values, and nothing to say of them.
    assert rows == [("o-1", 1, None, 0), ("o-2", 2, None, 0), ("o-3", None, None, 0),
                    ("o-4", 4, "gift", 0)]  # fmt: skip
    assert copies(write_fake, "records") == {"m1": 1, "m2": 1, "m3": 1, "m4": 1}


async def test_past_the_wait_records_go_without_the_new_field_and_say_so(
    typed_tier: tuple[TieredStore, SchemaApi],
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
) -> None:
    store, api = typed_tier
    await store.append([stored(order(), {"id": "o-1", "amount": 1}, "m1", R1)])
    await settle_clock()
    one = typed_exporter(store, api, wait_seconds=1.0)
    await drain(one)
    write_fake.schema_lag = 600.0  # minutes, as BigQuery may take
    await store.append([stored(order(NOTE), {"id": "o-2", "amount": 2, "note": "gift"}, "m2", R2)])
    await settle_clock()
    await export_until(one, write_fake, 2)

    rows = await query(
        jobs_fake,
        "SELECT id, fields.note, e.field, e.reason, e.revision, JSON_VALUE(data, '$.note') "
        f"FROM {TABLE}, UNNEST(projection_errors) AS e",
    )
    assert rows == [("o-2", None, "note", "no typed field of this name in the table", R2, "gift")]
    assert copies(write_fake, "records") == {"m1": 1, "m2": 1}


async def test_a_revision_that_cannot_be_fetched_pauses_the_export_and_skips_nothing(
    typed_tier: tuple[TieredStore, SchemaApi],
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
) -> None:
    store, api = typed_tier
    api.down = True
    await store.append([stored(order(), {"id": "o-1", "amount": 1}, "m1", R1)])
    await settle_clock()
    assert store.analytics.typed is not None
    typed = TypedExport(store.analytics.typed, api.revisions)
    # A pause of at least half a second: long enough to be seen right after the step.
    one = exporter(store, typed=typed, retry_seconds=1.0)
    await one.step()  # records back off and are tried again, alone
    assert "records" in one.paused()
    assert "records" not in one.blocked
    assert write_fake.rows("records") == []
    progress = await one.ledger.progress("records")
    assert progress.pending is None
    assert progress.done_message_id == ""

    api.down = False
    await drain(one)
    assert await query(jobs_fake, f"SELECT id, fields.amount FROM {TABLE}") == [("o-1", 1)]


async def test_a_revision_the_schema_api_does_not_have_is_kept_in_data_and_said_so(
    typed_tier: tuple[TieredStore, SchemaApi],
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
) -> None:
    store, api = typed_tier
    gone = f"projects/{PROJECT}/schemas/orders@deleted"
    await store.append([stored(order(), {"id": "o-0", "amount": 0}, "m0", R1)])
    await store.append([stored(order(), {"id": "o-1", "amount": 1}, "m1", gone)])
    await settle_clock()
    await drain(typed_exporter(store, api))
    rows = await query(
        jobs_fake,
        f"SELECT id, e.field, e.reason, e.revision, JSON_VALUE(data, '$.amount') "
        f"FROM {TABLE}, UNNEST(projection_errors) AS e",
    )
    assert rows == [("o-1", "$", "the revision's fields are unknown here", gone, "1")]


async def test_the_export_writes_a_typed_fields_copy_with_each_record_once(
    make_tiered: Make, write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs
) -> None:
    # `records` partitioned by a copy of a typed field (docs/layouts.md): the exporter
    # writes each record's copy from its projection, in the same row, exactly once.
    from tests.bigquery.billing import Layout
    from tests.bigquery.test_layouts import copy

    write_fake.define(
        RECORDS,
        [*json.loads(RECORDS_JSON.read_text()), copy("amount_copy", "fields.amount", "INT64")],
    )
    jobs_fake.billing.layouts["records"] = Layout(
        partition="ingest_time", clustering=("ingest_time", "amount_copy")
    )
    api = SchemaApi()
    store = await make_tiered(revisions=api.revisions)
    assert store.analytics.copies
    await store.append(
        [stored(order(), {"id": f"o-{i}", "amount": i}, f"m{i}", R1) for i in range(1, 5)]
    )
    plain = stored(order(), {"id": "o-9", "amount": 9}, "m9", R1)
    await store.append([msgspec.structs.replace(plain, schema=None)])
    await settle_clock()
    await drain(typed_exporter(store, api, copies=store.analytics.layout_copies))
    assert copies(write_fake, "records") == {f"m{i}": 1 for i in (1, 2, 3, 4, 9)}
    held = {r["message_id"]: r.get("amount_copy") for r in write_fake.rows("records")}
    # A record without a schema has no typed values, and its copy is NULL.
    assert held == {"m1": 1, "m2": 2, "m3": 3, "m4": 4, "m9": None}
    found = await query(jobs_fake, f"SELECT message_id FROM {TABLE} WHERE amount_copy = 3")
    assert found == [("m3",)]
