"""What reads cost on BigQuery, billed by the jobs.query fake's model on the
layout Terraform declares: a read's bytes follow its answer, not the table."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from app.asgi import create_app
from app.query.page_token import PageTokens
from app.query.select import selection_of
from app.query.service import RECORDS, Reader, RecordView
from app.records import TABLES, Record, columns, moment
from app.settings import QuerySettings, Settings
from app.store import PageQuery
from app.store.bigquery.store import BigQueryStore
from app.store.filters import AttributeIs, RowFilter
from tests.bigquery.billing import MIB, BillingModel
from tests.bigquery.conftest import DATASET, PROJECT
from tests.bigquery.fake_jobs import LAYOUTS, FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.bigquery.stream import DAY, NOW, SECOND, Stream, make_stream
from tests.conftest import envelope, served, unsettled
from tests.test_select import project

Factory = Callable[..., Any]
KINDS = {t: {c.name: c.kind for c in columns(r)} for t, r in TABLES.items()}
TABLE_PATH = f"projects/{PROJECT}/datasets/{DATASET}/tables"
VIEW_FIELDS = [f.name for f in msgspec.structs.fields(RecordView)]


def load(
    write: FakeBigQueryWrite,
    jobs: FakeBigQueryJobs,
    stream: Stream,
    *,
    block_rows: int,
    now: int = NOW,
) -> None:
    """Hand the fakes a stream of 100 msg/s, billed as the rows it stands for."""
    write.tables.clear()
    write.tables[f"{TABLE_PATH}/records"] = stream.records
    write.tables[f"{TABLE_PATH}/rejected"] = stream.rejections
    jobs.billing = BillingModel(
        layouts=LAYOUTS,
        kinds=KINDS,
        block_rows=block_rows,
        row_weight=stream.weight,
        clock=lambda: now / SECOND,
    )


def operator_settings(
    write: FakeBigQueryWrite,
    jobs: FakeBigQueryJobs,
    **extra: str,
) -> Settings:
    """The BigQuery store on the fakes, configured as an operator would, its rows served
    at once (`unsettled`)."""
    return unsettled(
        Settings.load(
            {
                "BIGQUERY_EMULATOR_HOST": jobs.endpoint,
                "RECORDLINE_STORE": f"bigquery://{PROJECT}/{DATASET}",
                "RECORDLINE_BIGQUERY_WRITE_ENDPOINT": write.address,
                **extra,
            }
        )
    )


def billed_by(jobs: FakeBigQueryJobs, since: int) -> list[int]:
    return [q.bill.bytes_billed for q in jobs.queries[since:] if q.bill is not None]


async def tail_poll(store: BigQueryStore, jobs: FakeBigQueryJobs) -> int:
    horizon = NOW - 15 * SECOND
    before = len(jobs.queries)
    await store.page(
        Record,
        PageQuery(
            after_time=horizon - 5 * SECOND, after_message_id="", before_time=horizon, limit=1000
        ),
    )
    return sum(billed_by(jobs, before))


@pytest.mark.slow
async def test_a_tail_poll_bills_the_same_at_1_and_30_days(
    store: BigQueryStore, write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs
) -> None:
    cost = {}
    for days in (1, 30):
        load(write_fake, jobs_fake, make_stream(100, days, stored_per_day=288), block_rows=100_000)
        cost[days] = await tail_poll(store, jobs_fake)
    # The 30 minutes of rows still in write-optimized storage, whatever the
    # table holds: ~180,000 rows of ~480 bytes.
    assert cost[30] <= 1.5 * cost[1]
    assert cost[1] < 100 * MIB


@pytest.mark.slow
async def test_lookups_read_only_the_blocks_that_hold_the_key(
    store: BigQueryStore, write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs
) -> None:
    stream = make_stream(100, 30, stored_per_day=288)
    # Blocks of 30,000 rows (~14 MB), every row settled: what is left is the
    # blocks the search indexes cannot rule out.
    load(write_fake, jobs_fake, stream, block_rows=30_000, now=NOW + DAY)
    known = stream.day_old()
    rejected = stream.rejections[0]["message_id"]
    before = len(jobs_fake.queries)
    latest = await store.latest(known["id"])
    stored = await store.message(known["message_id"])
    refused = await store.message(rejected)
    assert await store.message("12345678901234567") is None
    assert latest is not None
    assert latest.message_id == known["message_id"]
    assert stored is not None
    assert stored.status == "stored"
    assert refused is not None
    assert refused.status == "rejected"
    bills = billed_by(jobs_fake, before)
    # latest, stored, (stored, rejected) and (stored, rejected): each query
    # near the 10 MiB minimum, against ~110 GiB that 30 days of these rows hold.
    assert len(bills) == 6
    assert all(bill <= 2 * 10 * MIB for bill in bills), bills


@pytest.mark.slow
async def test_every_query_is_capped_and_a_read_over_the_cap_answers_503(
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
) -> None:
    settings = operator_settings(
        write_fake, jobs_fake, RECORDLINE_QUERY_MAX_BYTES_BILLED=str(64 * MIB)
    )
    record = {"id": "1", "timestamp": "2024-04-27T12:00:00Z", "data": "Ejemplo de datos"}
    async with served(create_app(settings)) as client:
        assert (await client.post("/pubsub/push", json=envelope(record))).status_code == 204
        cheap = await client.get("/v1/records/1")
        assert cheap.status_code == 200
        # Each stored row now stands for ten million: every read is over the cap.
        jobs_fake.billing = BillingModel(layouts=LAYOUTS, kinds=KINDS, row_weight=10_000_000)
        costly = await client.get("/v1/records", params={"since": "2024-01-01T00:00:00Z"})
        assert costly.status_code == 503
        assert "Retry-After" in costly.headers
        problem = costly.json()
        assert problem["title"] == "Read over its cost cap"
        assert "RECORDLINE_QUERY_MAX_BYTES_BILLED" in problem["detail"]
        # Nothing else changed: the refusal ran nothing, pushes are stored,
        # and the service stays ready.
        refused = jobs_fake.queries[-1]
        assert refused.body["maximumBytesBilled"] == str(64 * MIB)
        assert (await client.post("/pubsub/push", json=envelope(record))).status_code == 204
        assert (await client.get("/readyz")).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert all(q.body["maximumBytesBilled"] == str(64 * MIB) for q in jobs_fake.queries if q.params)
    # The lookup's bytes billed, by route: the 10 MiB minimum of one query.
    route = 'route="/v1/records/\\{record_id\\}"'
    found = re.search(
        rf"^recordline_query_bytes_billed_bytes_total\{{[^}}]*{route}[^}}]*\}} (\S+)$",
        metrics,
        re.M,
    )
    assert found is not None, metrics
    assert float(found[1]) == 10 * MIB


async def test_bytes_billed_are_on_the_query_span(make_store: Factory) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from app.telemetry import record_query

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # The store reports each query to the observer it is given: telemetry's.
    store: BigQueryStore = await make_store(query=QuerySettings(), observer=record_query)
    with provider.get_tracer("test").start_as_current_span("recordline.store.latest"):
        assert await store.latest("missing") is None
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["gcp.bigquery.total_bytes_billed"] == 10 * MIB
    assert span.attributes["gcp.bigquery.total_bytes_processed"] == 0
    assert str(span.attributes["gcp.bigquery.job.id"]).startswith("fake-")


@pytest.mark.slow
async def test_bad_reads_get_a_problem_document_and_never_a_runaway_query(
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
) -> None:
    from app.records import MAX_ID_LENGTH

    settings = operator_settings(write_fake, jobs_fake)
    async with served(create_app(settings)) as client:
        longest = "x" * MAX_ID_LENGTH
        for path in (f"/v1/records/{longest}", f"/v1/messages/{longest}"):
            assert (await client.get(path)).status_code == 404
        sent = len(jobs_fake.queries)
        for path, params in (
            (f"/v1/records/{longest}y", {}),
            ("/v1/records", {"limit": "1000000"}),
            ("/v1/records", {"since": "yesterday"}),
            ("/v1/records", {"page_token": "x" * 100}),
        ):
            answer = await client.get(path, params=params)
            assert answer.status_code == 400, (path, params)
            assert answer.headers["content-type"].startswith("application/problem+json")
        # Refused before any query ran.
        assert len(jobs_fake.queries) == sent


@pytest.mark.slow
async def test_a_replay_batch_is_one_query_of_two_columns(
    store: BigQueryStore, write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs
) -> None:
    stream = make_stream(100, 30, stored_per_day=288)
    load(write_fake, jobs_fake, stream, block_rows=30_000, now=NOW + DAY)
    ids = stream.replay_batch()
    before = len(jobs_fake.queries)
    seen = await store.seen(ids)
    batch = billed_by(jobs_fake, before)
    assert seen == {
        **{r["message_id"]: "rejected" for r in stream.rejections[:20]},
        **{m: "stored" for m in ids[:60]},
    }
    assert len(batch) == 1

    before = len(jobs_fake.queries)
    for message_id in ids:
        await store.message(message_id)
    one_by_one = billed_by(jobs_fake, before)
    # What a replay cost when it asked for each message: one or two queries of
    # every column each, each at least the 10 MiB minimum.
    assert len(one_by_one) == 60 + 2 * 40
    assert sum(batch) * 20 < sum(one_by_one), (sum(batch), sum(one_by_one))


@pytest.mark.slow
async def test_listing_rejections_is_billed_by_its_own_route(
    write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs
) -> None:
    settings = operator_settings(write_fake, jobs_fake)
    async with served(create_app(settings)) as client:
        bad = envelope(None, raw_data=b"not json")
        assert (await client.post("/pubsub/push", json=bad)).status_code == 204
        before = len(jobs_fake.queries)
        listed = await client.get("/v1/rejections", params={"since": "2024-04-27T00:00:00Z"})
        assert [r["message_id"] for r in listed.json()["rejections"]] == ["m-1"]
        billed = sum(q.bill.bytes_billed for q in jobs_fake.queries[before:] if q.bill)
        metrics = (await client.get("/metrics")).text
    found = re.search(
        r'^recordline_query_bytes_billed_bytes_total\{[^}]*route="/v1/rejections"[^}]*\} (\S+)$',
        metrics,
        re.M,
    )
    assert found is not None, metrics
    assert float(found[1]) == billed >= 10 * MIB


async def billed_page(
    reader: Reader, jobs: FakeBigQueryJobs, text: str | None, **asked: Any
) -> tuple[dict[str, Any], int, list[str]]:
    """A page from a day back as the API answers it (projected by `text`, its read told
    of the fields shown), what its queries billed, and the page queries' SQL."""
    selection = None if text is None else selection_of(text, VIEW_FIELDS)
    before = len(jobs.queries)
    page = await reader.page(
        RECORDS,
        since=moment(NOW - DAY),
        until=None,
        limit=50,
        page_token=None,
        fields=None if selection is None else selection.fields,
        **asked,
    )
    answer = page if selection is None else selection.page(page)
    sent = jobs.queries[before:]
    pages = [q.sql for q in sent if "previous_copy" in q.sql]
    return json.loads(msgspec.json.encode(answer)), sum(billed_by(jobs, before)), pages


@pytest.mark.slow
@pytest.mark.parametrize(
    ("keep", "leaves"),
    [
        (None, ("data", "attributes")),
        # A filter reads what it checks, whatever the page shows: the attributes here.
        (RowFilter(attributes=(AttributeIs("googclient_traceparent", "x"),)), ("data",)),
        (RowFilter(where="data.amount > 0"), ("attributes",)),
    ],
    ids=["unfiltered", "attribute=", "where= on data"],
)
async def test_a_projection_bills_less_than_the_same_page_without_it(
    store: BigQueryStore,
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    keep: RowFilter | None,
    leaves: tuple[str, ...],
) -> None:
    # Two days of 100 msg/s, each stored row standing for 3,000: a page a day back scans
    # settled blocks, billed by the columns its query names.
    load(write_fake, jobs_fake, make_stream(100, 2, stored_per_day=2_880), block_rows=100_000)
    reader = Reader(
        store, pending_horizon=lambda: 2**62, tokens=PageTokens("s"), clock=lambda: NOW * 1000
    )
    whole, whole_bill, whole_sql = await billed_page(reader, jobs_fake, None, filter=keep)
    assert whole["records"] or keep is not None
    for text in ("id", "id,timestamp"):
        shown, bill, sql = await billed_page(reader, jobs_fake, text, filter=keep)
        # The same rows, each the projection of the row read whole, behind the same token.
        entries = [(name, ()) for name in text.split(",")]
        assert shown["records"] == [project(r, entries) for r in whole["records"]]
        assert shown["next_page_token"] == whole["next_page_token"]
        # The page's queries name no column the page leaves out, and bill less.
        assert sql
        assert whole_sql
        for column in leaves:
            assert all(f"`{column}`" not in q for q in sql), (column, sql)
            assert all(f"`{column}`" in q for q in whole_sql)
        assert bill < whole_bill, (bill, whole_bill)
        if keep is None:
            # `data` and `attributes` are most of a row: about a third of it is left.
            assert bill < whole_bill / 2, (bill, whole_bill)


@pytest.mark.slow
async def test_a_projected_page_ends_on_its_own_bytes_and_resumes_after_its_last_row(
    store: BigQueryStore, write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs
) -> None:
    # Pages of 20 rows, or 7 KiB of them: whole rows (about 630 bytes as counted) end on
    # their bytes, rows of `id` alone on `limit`. Both walks meet every row once, in order.
    load(write_fake, jobs_fake, make_stream(100, 1, stored_per_day=2_880), block_rows=100_000)
    reader = Reader(
        store,
        pending_horizon=lambda: 2**62,
        tokens=PageTokens("s"),
        clock=lambda: NOW * 1000,
        page_bytes=7 * 1024,
    )
    selection = selection_of("id,message_id", VIEW_FIELDS)
    assert selection is not None
    walks: dict[str, list[list[dict[str, Any]]]] = {}
    for name, fields in (("whole", None), ("projected", selection.fields)):
        token, pages = None, []
        for _ in range(50):
            page = await reader.page(
                RECORDS,
                since=None if token else moment(NOW - 3600 * SECOND),
                until=None if token else moment(NOW - 1800 * SECOND),
                limit=20,
                page_token=token,
                fields=fields,
            )
            pages.append([selection.row(view) for view in page.records])
            token = page.next_page_token
            if token is None:
                break
        walks[name] = pages
    rows = {name: [r for page in pages for r in page] for name, pages in walks.items()}
    assert rows["projected"] == rows["whole"]
    assert len(rows["whole"]) == len({r["message_id"] for r in rows["whole"]}) == 60
    assert max(map(len, walks["whole"])) < 20 == max(map(len, walks["projected"]))
    assert len(walks["projected"]) < len(walks["whole"])


@pytest.mark.slow
@pytest.mark.parametrize("parameter", ["select", "columns"])
async def test_an_export_of_some_fields_bills_less_than_the_same_export_whole(
    write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs, parameter: str
) -> None:
    # Half an hour of settled rows exported as JSON Lines, whole and as two fields: each
    # page of the second reads neither `data` nor `attributes`.
    load(write_fake, jobs_fake, make_stream(100, 1, stored_per_day=2_880), block_rows=100_000)
    bounds = {
        "since": moment(NOW - 3600 * SECOND).isoformat(),
        "until": moment(NOW - 1800 * SECOND).isoformat(),
        "format": "jsonl",
    }
    async with served(create_app(operator_settings(write_fake, jobs_fake))) as client:
        before = len(jobs_fake.queries)
        whole = await client.get("/v1/export/records", params=bounds)
        whole_bill = sum(billed_by(jobs_fake, before))
        before = len(jobs_fake.queries)
        chosen = await client.get(
            "/v1/export/records", params=bounds | {parameter: "id,ingest_time"}
        )
        bill = sum(billed_by(jobs_fake, before))
    assert whole.status_code == chosen.status_code == 200
    rows = [json.loads(line) for line in whole.text.splitlines()]
    assert len(rows) == 60
    assert [json.loads(line) for line in chosen.text.splitlines()] == [
        {"id": r["id"], "ingest_time": r["ingest_time"]} for r in rows
    ]
    assert bill < whole_bill / 2, (bill, whole_bill)


async def test_the_access_record_and_dead_letters_are_billed_by_their_own_routes(
    write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs
) -> None:
    """An operator's reads of the access record and of dead letters are queries billed
    as a page's: counted in recordline.query.bytes_billed under their own routes."""
    settings = operator_settings(write_fake, jobs_fake)
    billed: dict[str, int] = {}
    async with served(create_app(settings)) as client:
        for path in ("/v1/access", "/v1/dead-letters"):
            before = len(jobs_fake.queries)
            assert (await client.get(path)).status_code == 200, path
            billed[path] = sum(q.bill.bytes_billed for q in jobs_fake.queries[before:] if q.bill)
        metrics = (await client.get("/metrics")).text
    for path, bytes_billed in billed.items():
        found = re.search(
            rf'^recordline_query_bytes_billed_bytes_total\{{[^}}]*route="{path}"[^}}]*\}} (\S+)$',
            metrics,
            re.M,
        )
        assert found is not None, (path, metrics)
        assert float(found[1]) == bytes_billed >= 10 * MIB
