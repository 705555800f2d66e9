"""Typed columns on BigQuery alone: the table patched with its ETag, rows written once
the Storage Write API takes the new schema (the fake learns it late, as BigQuery
does), every value in its typed column or in `projection_errors`, and always in
`data`; queried back through the real `bigquery.Client`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from google.api_core.exceptions import InvalidArgument
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery
from google.cloud.bigquery_storage_v1 import types
from google.protobuf import descriptor_pb2

from app.cli import typed_columns_file
from app.records import Record
from app.store.bigquery.store import BigQueryStore
from app.typed.mapping import MAX_FIELDS, avro_fields
from app.typed.revisions import Revisions
from tests.bigquery.conftest import BASE_TIME, DATASET, PROJECT
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.typed.stored import avro_stored

RECORDS = f"projects/{PROJECT}/datasets/{DATASET}/tables/records"
RECORDS_JSON = (
    Path(__file__).resolve().parents[2] / "infra/terraform/modules/system/schemas/records.json"
)
TABLE = f"`{PROJECT}.{DATASET}.records`"


def order(*more: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "record",
        "name": "Order",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "amount", "type": "long"},
            *more,
        ],
    }


NOTE = {"name": "note", "type": ["null", "string"], "default": None}
EVERY_TYPE = order(
    {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "day", "type": {"type": "int", "logicalType": "date"}},
    {
        "name": "price",
        "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2},
    },
    {"name": "ratio", "type": "double"},
    {"name": "paid", "type": "boolean"},
    {"name": "blob", "type": "bytes"},
    {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
    {
        "name": "lines",
        "type": {
            "type": "array",
            "items": {
                "type": "record",
                "name": "Line",
                "fields": [{"name": "sku", "type": "string"}, {"name": "qty", "type": "int"}],
            },
        },
    },
    {"name": "tags", "type": {"type": "map", "values": "long"}},
)


def revision(revisions: Revisions, name: str, schema: dict[str, Any]) -> str:
    full = f"projects/{PROJECT}/schemas/orders@{name}"
    revisions.learn(full, avro_fields(schema))
    return full


def stored(schema: dict[str, Any], datum: dict[str, Any], message_id: str, rev: str) -> Record:
    data = json.dumps(avro_stored(schema, datum))
    return Record(
        message_id=message_id,
        publish_time=BASE_TIME,
        ingest_time=BASE_TIME + int(message_id.removeprefix("m")),
        id=datum["id"],
        data=data,
        schema=rev,
    )


@pytest.fixture
def table(write_fake: FakeBigQueryWrite) -> None:
    """`records` with the columns Terraform creates it with."""
    write_fake.define(RECORDS, json.loads(RECORDS_JSON.read_text()))


@pytest.fixture
def open_store(make_store: Callable[..., Any], table: None) -> Callable[[Revisions], Any]:
    async def make(revisions: Revisions) -> BigQueryStore:
        store: BigQueryStore = await make_store(revisions=revisions, write_deadline_seconds=6.0)
        return store

    return make


async def widening(open_store: Callable[[Revisions], Any]) -> tuple[BigQueryStore, str]:
    """A store whose table holds revision r1's fields; the name of r2, which adds `note`."""
    revisions = Revisions()
    r1 = revision(revisions, "r1", order())
    r2 = revision(revisions, "r2", order(NOTE))
    store = await open_store(revisions)
    await store.append([stored(order(), {"id": "o-1", "amount": 1}, "m1", r1)])
    return store, r2


async def query(jobs_fake: FakeBigQueryJobs, sql: str) -> list[tuple[Any, ...]]:
    """Rows of `sql` as an analyst's `bigquery.Client` gets them."""

    def run() -> list[tuple[Any, ...]]:
        client = bigquery.Client(
            project=PROJECT,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": jobs_fake.endpoint},
        )
        try:
            return [tuple(row.values()) for row in client.query_and_wait(sql)]
        finally:
            client.close()  # type: ignore[no-untyped-call]

    return await asyncio.to_thread(run)


def typed_columns(write_fake: FakeBigQueryWrite) -> dict[str, Any]:
    (fields,) = [f for f in write_fake.schemas[RECORDS].fields if f["name"] == "fields"]
    return {f["name"]: f for f in fields["fields"]}


async def test_every_type_lands_in_its_typed_column(
    open_store: Callable[[Revisions], Any],
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
) -> None:
    revisions = Revisions()
    rev = revision(revisions, "r1", EVERY_TYPE)
    store = await open_store(revisions)
    datum = {
        "id": "o-1",
        "amount": 2**40,
        "at": 1_714_219_200_123_456,
        "day": 19_840,
        "price": b"\x30\x39",  # 12345 unscaled: 123.45
        "ratio": 0.25,
        "paid": True,
        "blob": b"\x00\xff",
        "status": "PAID",
        "lines": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 3}],
        "tags": {"x": 1},
    }
    assert await store.append([stored(EVERY_TYPE, datum, "m1", rev)]) == [None]

    columns = typed_columns(write_fake)
    assert columns["price"]["type"] == "NUMERIC"
    assert columns["lines"]["mode"] == "REPEATED"
    (row,) = await query(
        jobs_fake,
        "SELECT fields.amount, UNIX_MICROS(fields.at), CAST(fields.day AS STRING), "
        "CAST(fields.price AS STRING), fields.ratio, fields.paid, "
        "fields.status, fields.lines[OFFSET(1)].qty, fields.tags[OFFSET(0)].value, "
        f"ARRAY_LENGTH(projection_errors), JSON_VALUE(data, '$.id') FROM {TABLE}",
    )
    amount, at, day, price, ratio, paid, status, qty, tag, errors, raw_id = row
    assert amount == 2**40
    assert at == 1_714_219_200_123_456
    assert day == "2024-04-27"
    assert price.rstrip("0") == "123.45"
    assert (ratio, paid, status, qty, tag, errors, raw_id) == (0.25, True, "PAID", 3, 1, 0, "o-1")
    (stored_row,) = write_fake.rows("records")
    assert stored_row["fields"]["blob"] == b"\x00\xff"


@pytest.mark.slow
async def test_a_new_revision_is_written_once_the_write_path_takes_its_columns(
    open_store: Callable[[Revisions], Any],
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
) -> None:
    store, r2 = await widening(open_store)
    # The Storage Write API learns the next schema change a second late.
    write_fake.schema_lag = 1.0
    started = time.monotonic()
    note = {"id": "o-2", "amount": 2, "note": "gift"}
    assert await store.append([stored(order(NOTE), note, "m2", r2)]) == [None]
    waited = time.monotonic() - started

    rows = await query(
        jobs_fake,
        f"SELECT id, fields.note, ARRAY_LENGTH(projection_errors) FROM {TABLE} ORDER BY id",
    )
    assert rows == [("o-1", None, 0), ("o-2", "gift", 0)]
    # It waited for the write path, and no longer than the wait allows.
    assert 1.0 <= waited < 4.5
    assert len(write_fake.rows("records")) == 2  # nothing refused, nothing written twice


@pytest.mark.slow
async def test_rows_outwaiting_the_write_path_say_what_it_could_not_take(
    open_store: Callable[[Revisions], Any],
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
) -> None:
    store, r2 = await widening(open_store)
    write_fake.schema_lag = 600.0  # minutes, as BigQuery may take
    note = {"id": "o-2", "amount": 2, "note": "gift"}
    assert await store.append([stored(order(NOTE), note, "m2", r2)]) == [None]

    # The column exists at once (queryable, NULL here); the value is in the
    # errors and in `data`, never silently gone.
    rows = await query(
        jobs_fake,
        "SELECT fields.note, e.field, e.reason, e.revision, JSON_VALUE(data, '$.note') "
        f"FROM {TABLE}, UNNEST(projection_errors) AS e",
    )
    assert rows == [(None, "note", "no typed field of this name in the table", r2, "gift")]


@pytest.mark.slow
async def test_two_instances_widening_at_once_keep_both_columns(
    open_store: Callable[[Revisions], Any],
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
) -> None:
    with_a = order({"name": "a", "type": ["null", "long"], "default": None})
    with_b = order({"name": "b", "type": ["null", "string"], "default": None})
    first, second = Revisions(), Revisions()
    ra, rb = revision(first, "ra", with_a), revision(second, "rb", with_b)
    one, two = await open_store(first), await open_store(second)
    rounds = 20
    outcomes = await asyncio.gather(
        *(
            store.append([stored(schema, datum, f"m{i}{n}", rev)])
            for n in range(rounds)
            for i, (store, schema, datum, rev) in enumerate(
                [
                    (one, with_a, {"id": f"a-{n}", "amount": n, "a": n}, ra),
                    (two, with_b, {"id": f"b-{n}", "amount": n, "b": str(n)}, rb),
                ],
                start=1,
            )
        )
    )
    assert all(o == [None] for o in outcomes)
    assert {"id", "amount", "a", "b"} <= typed_columns(write_fake).keys()
    rows = await query(
        jobs_fake,
        "SELECT COUNT(fields.a), COUNT(fields.b), SUM(ARRAY_LENGTH(projection_errors)) "
        f"FROM {TABLE}",
    )
    assert rows == [(rounds, rounds, 0)]


async def test_a_change_landing_between_read_and_write_is_kept(
    open_store: Callable[[Revisions], Any],
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
) -> None:
    """Another instance's patch lands after this one read the table: BigQuery refuses
    this write (its ETag is stale), and it is made again from a fresh read."""
    revisions = Revisions()
    r1 = revision(revisions, "r1", order())
    store = await open_store(revisions)
    theirs = {"name": "theirs", "type": "STRING", "mode": "NULLABLE"}
    table = write_fake.schemas[RECORDS]

    def land_theirs() -> None:
        fields = [*table.fields, {"name": "fields", "type": "RECORD", "fields": [theirs]}]
        write_fake.patch(RECORDS, fields, None)

    jobs_fake.after_get.append(land_theirs)
    await store.append([stored(order(), {"id": "o-1", "amount": 1}, "m1", r1)])

    assert list(typed_columns(write_fake)) == ["theirs", "id", "amount"]
    assert store.typed is not None
    assert store.typed.conflicts == 1
    assert len(jobs_fake.table_patches) == 2


@pytest.mark.usefixtures("table")
async def test_a_refused_patch_loses_no_row_and_waits_before_trying_again(
    make_store: Callable[..., Any],
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
) -> None:
    revisions = Revisions()
    r1 = revision(revisions, "r1", order())
    refused: list[str] = []

    class Told:
        def refused(self, table: str) -> None:
            refused.append(table)

    store = await make_store(revisions=revisions, patches=Told())
    jobs_fake.table_failures.append((403, "accessDenied"))
    outcome = await store.append([stored(order(), {"id": "o-1", "amount": 7}, "m1", r1)])
    assert outcome == [None]
    assert len(jobs_fake.table_patches) == 1
    # Within the backoff the next row does not patch again; it is stored all the same.
    assert await store.append([stored(order(), {"id": "o-2", "amount": 8}, "m2", r1)]) == [None]
    assert len(jobs_fake.table_patches) == 1
    assert store.typed is not None
    assert store.typed.failures == 1
    assert refused == [f"{PROJECT}.{DATASET}.records"]  # counted, so an operator is ticketed
    # With no typed columns in the table, the rows are what they were before them.
    rows = await query(
        jobs_fake, f"SELECT id, JSON_VALUE(data, '$.amount') FROM {TABLE} ORDER BY id"
    )
    assert rows == [("o-1", "7"), ("o-2", "8")]
    assert "fields" not in write_fake.rows("records")[0]


async def test_a_release_s_new_column_is_added_by_the_service(
    open_store: Callable[[Revisions], Any], write_fake: FakeBigQueryWrite
) -> None:
    """After creating `records`, Terraform leaves its schema alone (the service adds
    typed columns it would otherwise drop): the service adds a column of its own
    that the table lacks, NULLABLE, when it starts."""
    columns = json.loads(RECORDS_JSON.read_text())
    new = ("trace_id", "projection_errors")
    write_fake.define(RECORDS, [c for c in columns if c["name"] not in new])
    await open_store(Revisions())
    added = [c for c in write_fake.schemas[RECORDS].fields if c["name"] in new]
    assert [(c["name"], c["type"], c["mode"]) for c in added] == [
        ("trace_id", "STRING", "NULLABLE"),
        # A table made before typed columns gets the column they start with.
        ("projection_errors", "RECORD", "REPEATED"),
    ]


async def test_a_declared_schema_s_columns_are_there_before_its_first_record(
    open_store: Callable[[Revisions], Any],
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
) -> None:
    """A JSON topic's declared schema is known when the service starts: its columns
    are queryable at once, before any record arrives."""
    revisions = Revisions()
    revisions.declare(json.dumps(order(NOTE)))
    await open_store(revisions)
    assert set(typed_columns(write_fake)) == {"id", "amount", "note"}
    assert await query(jobs_fake, f"SELECT fields.note FROM {TABLE}") == []


async def test_a_table_terraform_created_with_a_schema_s_columns_takes_its_rows_unpatched(
    open_store: Callable[[Revisions], Any],
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    tmp_path: Path,
) -> None:
    """`records` as Terraform creates it for a system with a schema: records.json and the
    `fields` column `recordline schema typed` generated from the schema file. The
    revision's first row is written typed at once, with no patch and no wait: the
    service's merge of that revision is the table's own."""
    source = tmp_path / "orders.avsc"
    source.write_text(json.dumps(EVERY_TYPE))
    column = json.loads(typed_columns_file(source, "AVRO"))["column"]
    write_fake.define(RECORDS, [*json.loads(RECORDS_JSON.read_text()), column])
    write_fake.schema_lag = 600.0  # a patch now would keep its row from its typed values
    revisions = Revisions()
    rev = revision(revisions, "r1", EVERY_TYPE)
    store = await open_store(revisions)
    datum = {"id": "o-1", "amount": 7, "at": 0, "day": 0, "price": b"\x01", "ratio": 0.5}
    datum |= {"paid": False, "blob": b"", "status": "NEW", "lines": [], "tags": {}}
    assert await store.append([stored(EVERY_TYPE, datum, "m1", rev)]) == [None]

    assert jobs_fake.table_patches == []
    assert write_fake.schemas[RECORDS].fields[-1] == column
    rows = await query(
        jobs_fake,
        f"SELECT fields.amount, fields.status, ARRAY_LENGTH(projection_errors) FROM {TABLE}",
    )
    assert rows == [(7, "NEW", 0)]


# Names BigQuery's flexible column names allow and no proto field can have,
# nested too, beside one that looks like the placeholder such a name travels under.
FLEXIBLE = order(
    {"name": "café", "type": "string"},
    {"name": "_x636166c3a9_", "type": "string"},
    {
        "name": "détail",
        "type": {
            "type": "record",
            "name": "Detail",
            "fields": [{"name": "prix-total", "type": "long"}, {"name": "日付", "type": "string"}],
        },
    },
)


async def test_a_column_name_no_proto_field_can_have_is_written_through_column_name(
    open_store: Callable[[Revisions], Any], write_fake: FakeBigQueryWrite
) -> None:
    revisions = Revisions()
    r1 = revision(revisions, "r1", order())
    r2 = revision(revisions, "r2", FLEXIBLE)
    store = await open_store(revisions)
    assert await store.append([stored(order(), {"id": "o-1", "amount": 1}, "m1", r1)]) == [None]
    datum = {
        "id": "o-2",
        "amount": 2,
        "café": "noir",
        "_x636166c3a9_": "bait",
        "détail": {"prix-total": 7, "日付": "lundi"},
    }
    assert await store.append([stored(FLEXIBLE, datum, "m2", r2)]) == [None]
    # Rows of the earlier revision go on being written beside them.
    assert await store.append([stored(order(), {"id": "o-3", "amount": 3}, "m3", r1)]) == [None]

    columns = typed_columns(write_fake)
    assert {"café", "_x636166c3a9_", "détail"} <= columns.keys()
    assert [f["name"] for f in columns["détail"]["fields"]] == ["prix-total", "日付"]
    rows = {r["id"]: r for r in write_fake.rows("records")}
    assert set(rows) == {"o-1", "o-2", "o-3"}
    fields = rows["o-2"]["fields"]
    assert (fields["café"], fields["_x636166c3a9_"]) == ("noir", "bait")
    assert fields["détail"] == {"prix-total": 7, "日付": "lundi"}
    assert rows["o-2"]["projection_errors"] == []
    assert write_fake.invalid_schemas == []


async def test_the_fake_refuses_a_writer_schema_field_name_that_is_no_proto_identifier(
    write_fake: FakeBigQueryWrite, write_client: Any
) -> None:
    """As BigQuery does: without the annotation (the test above), such a name is refused."""
    descriptor = descriptor_pb2.DescriptorProto(name="Row")
    descriptor.field.add(name="café", number=1, type=9, label=1)
    stream = f"{RECORDS}/streams/_default"
    request = types.AppendRowsRequest(
        write_stream=stream,
        proto_rows=types.AppendRowsRequest.ProtoData(
            writer_schema=types.ProtoSchema(proto_descriptor=descriptor),
            rows=types.ProtoRows(serialized_rows=[b"\n\x01x"]),
        ),
    )

    async def requests() -> AsyncIterator[Any]:
        yield request

    routing = [("x-goog-request-params", f"write_stream={stream}")]
    with pytest.raises(
        InvalidArgument, match=r'BqMessage\.proto: .*"café" is not a valid identifier'
    ):
        async for _ in await write_client.append_rows(requests(), metadata=routing):
            pass
    assert write_fake.rows("records") == []
    assert len(write_fake.invalid_schemas) == 1


@pytest.mark.slow
async def test_a_revision_that_would_take_the_table_past_the_cap_has_no_typed_columns(
    open_store: Callable[[Revisions], Any], write_fake: FakeBigQueryWrite
) -> None:
    """Each revision within the cap, the two together past it: the second's records
    are written with no typed columns, their projection error naming the cap."""
    half = MAX_FIELDS // 2 + 1

    def wide(prefix: str) -> dict[str, Any]:
        return order(*({"name": f"{prefix}{i}", "type": "long"} for i in range(half)))

    revisions = Revisions()
    first = revision(revisions, "r1", wide("a"))
    second = revision(revisions, "r2", wide("b"))
    store = await open_store(revisions)
    datum = {"id": "o-1", "amount": 1, **{f"a{i}": i for i in range(half)}}
    assert await store.append([stored(wide("a"), datum, "m1", first)]) == [None]
    datum = {"id": "o-2", "amount": 2, **{f"b{i}": i for i in range(half)}}
    assert await store.append([stored(wide("b"), datum, "m2", second)]) == [None]

    assert len(typed_columns(write_fake)) == 2 + half
    rows = {r["id"]: r for r in write_fake.rows("records")}
    assert rows["o-1"]["projection_errors"] == []
    (error,) = rows["o-2"]["projection_errors"]
    assert (error["field"], error["revision"]) == ("$", second)
    assert error["reason"].startswith("no typed columns: with this revision's fields the table")
    assert "more than the 9,984 it may have" in error["reason"]
