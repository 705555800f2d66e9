"""A filter on a typed field, on the stores that have typed columns (DuckDB, BigQuery
alone): equal as the field's type, walked page by page, and refused with a 400 naming
`field` where it names no field, a field of a type no equality reads, or a value not
of the field's type."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.errors import BadParameter
from app.query.service import shown_of
from app.records import Record
from app.settings import QuerySettings, StoreSettings
from app.store import PageQuery, Store
from app.store.bigquery.store import BigQueryStore
from app.store.duckdb.store import DuckDBStore
from app.store.filters import FieldIs, RowFilter
from app.store.open import bigquery_options
from app.typed.mapping import avro_fields
from app.typed.revisions import Revisions
from tests.bigquery.conftest import DATASET, PROJECT
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.bigquery.test_bigquery_typed import RECORDS
from tests.typed.stored import avro_stored

SCHEMA = {
    "type": "record",
    "name": "Order",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "amount", "type": "long"},
        {"name": "paid", "type": "boolean"},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {
            "name": "price",
            "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2},
        },
        {"name": "ratio", "type": "double"},
        {
            "name": "customer",
            "type": {
                "type": "record",
                "name": "Customer",
                "fields": [{"name": "email", "type": "string"}],
            },
        },
        {"name": "tags", "type": {"type": "array", "items": "string"}},
    ],
}
REVISION = "projects/p/schemas/orders@r1"
BASE = 1_714_219_200_000_000
RECORDS_JSON = (
    Path(__file__).resolve().parents[2] / "infra/terraform/modules/system/schemas/records.json"
)


def order(n: int) -> Record:
    datum = {
        "id": f"o-{n}",
        "amount": n % 4,
        "paid": n % 2 == 0,
        "day": 19_840 + n % 3,  # 2024-04-27 and the two days after
        "price": (1000 + n % 2).to_bytes(2, "big"),  # 10.00 or 10.01
        "ratio": 0.5,
        "customer": {"email": f"c{n % 3}@example.com"},
        "tags": ["a"],
    }
    return Record(
        message_id=f"m{n:02}",
        publish_time=BASE + n,
        ingest_time=BASE + 1_000 + n,
        id=datum["id"],
        data=json.dumps(avro_stored(SCHEMA, datum)),
        schema=REVISION,
    )


@pytest.fixture(params=["duckdb", "bigquery"])
async def store(
    request: pytest.FixtureRequest, write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs
) -> AsyncIterator[Store]:
    revisions = Revisions()
    revisions.learn(REVISION, avro_fields(SCHEMA))
    opened: Store
    if request.param == "duckdb":
        opened = DuckDBStore(":memory:", revisions=revisions)
    else:
        write_fake.define(RECORDS, json.loads(RECORDS_JSON.read_text()))
        store_settings = StoreSettings(
            bigquery_write_endpoint=write_fake.address,
            settle_seconds=0.0,
            write_deadline_seconds=6.0,
        )
        opened = BigQueryStore(
            PROJECT,
            DATASET,
            options=bigquery_options(store_settings, QuerySettings()),
            query_endpoint=jobs_fake.endpoint,
            revisions=revisions,
        )
    await opened.start()
    yield opened
    await opened.close()


# What a page of `select=id` asks a store to show: no `data` or `attributes`, which a
# store may leave unread, the typed field it checks read all the same.
ID_ALONE = shown_of(("id",))


async def kept(store: Store, keep: RowFilter, limit: int, shown: tuple[str, ...] = ()) -> list[str]:
    seen: list[str] = []
    after = (0, "")
    while after != (BASE + 10**9, ""):
        query = PageQuery(
            after_time=after[0],
            after_message_id=after[1],
            before_time=BASE + 10**9,
            limit=limit,
            filter=keep,
            shown=shown,
        )
        page = await store.page(Record, query)
        seen += [r.message_id for r in page.rows]
        after = (page.after_time, page.after_message_id)
    return seen


def where(path: str, value: str) -> RowFilter:
    return RowFilter(fields=(FieldIs(tuple(path.split(".")), value),))


@pytest.mark.slow
async def test_a_typed_field_keeps_the_rows_whose_value_equals_it(store: Store) -> None:
    rows = [order(n) for n in range(12)]
    assert list(await store.append(rows)) == [None] * 12
    await store.barrier()
    expected = {
        ("amount", "2"): [n for n in range(12) if n % 4 == 2],
        ("amount", "-7"): [],
        ("paid", "true"): [n for n in range(12) if n % 2 == 0],
        ("day", "2024-04-28"): [n for n in range(12) if n % 3 == 1],
        ("price", "10.01"): [n for n in range(12) if n % 2 == 1],
        ("price", "10.010"): [n for n in range(12) if n % 2 == 1],
        ("customer.email", "c2@example.com"): [n for n in range(12) if n % 3 == 2],
        ("id", "o-5"): [5],
    }
    for (path, value), numbers in expected.items():
        for limit, shown in ((2, ()), (100, ()), (2, ID_ALONE)):
            found = await kept(store, where(path, value), limit, shown)
            assert found == [f"m{n:02}" for n in numbers], (path, value, limit, shown)
    both = RowFilter(fields=(FieldIs(("amount",), "1"), FieldIs(("paid",), "false")))
    assert await kept(store, both, 3) == ["m01", "m05", "m09"]


@pytest.mark.parametrize(
    ("path", "value", "says"),
    [
        ("nothing", "1", "no typed field 'nothing'"),
        ("customer.phone", "1", "no typed field 'customer.phone'"),
        ("amount.more", "1", "no typed field 'amount.more'"),
        ("customer", "x", "'customer' is RECORD"),
        ("ratio", "0.5", "'ratio' is FLOAT64"),
        ("tags", "a", "'tags' is repeated"),
        ("amount", "1.5", "'amount' is INT64: '1.5' is not one"),
        ("amount", "99999999999999999999", "'amount' is INT64"),
        ("paid", "yes", "'paid' is BOOL"),
        ("day", "2024-02-30", "'day' is DATE"),
        ("price", "1e3", "'price' is NUMERIC"),
        ("price", "0.0000000001", "'price' is NUMERIC"),
    ],
)
async def test_a_typed_field_filter_that_cannot_be_read_is_refused_naming_why(
    store: Store, path: str, value: str, says: str
) -> None:
    await store.append([order(0)])
    await store.barrier()
    with pytest.raises(BadParameter) as refused:
        await kept(store, where(path, value), 10)
    assert refused.value.extra["parameter"] == "field"
    assert says in refused.value.detail
