"""`recordline tables fill` (app/store/bigquery/fill.py) on the BigQuery fakes: each whole
day of `records` copied once into a system's own table, its first copies only, its typed
columns and copies right, whatever the fillers running at once, the jobs that failed or
still run, the hint lost, and, behind the serving tier, never past the export watermark.

The jobs fake holds BigQuery's rules here (tests/bigquery/fake_jobs.py): a job id is
used once (409 duplicate), a failed job keeps its id, a DML INSERT adds its rows all at
once, and `records_unique` runs as Terraform renders it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from google.cloud import bigquery

from app.errors import FillFailed
from app.records import DAY_MICROS, Record
from app.store.bigquery.fill import (
    FILL_LABEL,
    FILLED_THROUGH,
    Filler,
    FillOptions,
    copy_sql,
    fill_sql,
    job_id,
)
from app.store.bigquery.layout import COPY_DESCRIPTION, Copy, copy_of
from app.store.bigquery.queries import QueryRunner
from app.store.bigquery.schema import created_schema
from tests.bigquery.conftest import DATASET, PROJECT
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite

RECORDS = f"projects/{PROJECT}/datasets/{DATASET}/tables/records"
WATERMARKS = f"projects/{PROJECT}/datasets/{DATASET}/tables/export_watermarks"
TABLE = "records_by_customer"
TABLE_PATH = f"projects/{PROJECT}/datasets/{DATASET}/tables/{TABLE}"
SECOND = 1_000_000
HOUR = 3600 * SECOND
DAY0 = 19_840  # 2024-04-27
FIELDS = {
    "name": "fields",
    "type": "RECORD",
    "mode": "NULLABLE",
    "fields": [
        {"name": "placed_on", "type": "DATE", "mode": "NULLABLE"},
        {"name": "amount", "type": "INT64", "mode": "NULLABLE"},
    ],
}
COPIES = [
    {
        "name": "customer",
        "type": "STRING",
        "mode": "NULLABLE",
        "description": f"{COPY_DESCRIPTION}attributes.customer",
    },
    {
        "name": "placed_on",
        "type": "DATE",
        "mode": "NULLABLE",
        "description": f"{COPY_DESCRIPTION}fields.placed_on",
    },
]


def row(message_id: str, ingest: int, publish: int | None = None, **more: Any) -> dict[str, Any]:
    """A records row as the write fake stores it (TIMESTAMP µs, JSON text, DATE days)."""
    n = int(message_id.rsplit("-", 1)[-1]) if message_id[-1].isdigit() else 0
    return {
        "message_id": message_id,
        "publish_time": ingest - SECOND if publish is None else publish,
        "ingest_time": ingest,
        "id": f"id-{message_id}",
        "timestamp": ingest - HOUR,
        "data": json.dumps({"m": message_id}),
        "attributes": json.dumps({"customer": f"c{n % 3}"}),
        "subscription": "projects/p/subscriptions/records-push",
        "delivery_attempt": 1,
        "trace_id": f"{ingest:032x}",
        "schema": None,
        "fields": {"placed_on": DAY0 - n % 5, "amount": n},
        **more,
    }


def stored_rows() -> list[dict[str, Any]]:
    """Rows of three whole days and of the day not yet whole: a redelivered copy, an
    attribute that is no string, a row without its typed field."""
    rows = [
        row(f"m-{d}-{i}", (DAY0 + d) * DAY_MICROS + i * HOUR) for d in range(4) for i in range(6)
    ]
    first = rows[2]
    rows.append({**row("m-0-2", first["ingest_time"] + 5 * SECOND, publish=first["publish_time"])})
    rows.append(row("odd-0", DAY0 * DAY_MICROS + 7 * HOUR, attributes='{"customer": 42}'))
    rows.append(row("bare-0", DAY0 * DAY_MICROS + 8 * HOUR, fields=None))
    return rows


def define(write: FakeBigQueryWrite, jobs: FakeBigQueryJobs, *, widen_later: bool = False) -> None:
    """`records` with typed columns, and the table of the system's own beside it, as
    Terraform creates it (records' columns, its copies last, labelled to be filled);
    `widen_later`: made before `records` had the typed field `amount`."""
    write.define(RECORDS, [*created_schema(Record), FIELDS])
    fields = FIELDS
    if widen_later:
        fields = {**FIELDS, "fields": FIELDS["fields"][:1]}
    jobs.create_table(
        f"/bigquery/v2/projects/{PROJECT}/datasets/{DATASET}/tables",
        {
            "tableReference": {"projectId": PROJECT, "datasetId": DATASET, "tableId": TABLE},
            "schema": {"fields": [*created_schema(Record), fields, *COPIES]},
            "timePartitioning": {"type": "MONTH", "field": "timestamp"},
            "clustering": {"fields": ["customer", "ingest_time"]},
            "labels": {FILL_LABEL: "records"},
        },
    )
    for stored in stored_rows():
        write.tables[RECORDS].append(stored)


@pytest.fixture
async def make_filler(jobs_fake: FakeBigQueryJobs) -> AsyncIterator[Callable[..., Filler]]:
    runners: list[QueryRunner] = []

    def make(now: int, *, clock: Callable[[], int] | None = None, **options: Any) -> Filler:
        runner = QueryRunner(
            PROJECT, timeout=10.0, max_bytes_billed=10 << 30, endpoint=jobs_fake.endpoint
        )
        runners.append(runner)
        settings = {"call_seconds": 10.0, "wait_seconds": 10.0, **options}
        return Filler(runner, DATASET, FillOptions(**settings), clock=clock or (lambda: now))

    yield make
    for runner in runners:
        await runner.close()


async def started(filler: Filler) -> Filler:
    await filler._runner.start()
    return filler


def filled(write: FakeBigQueryWrite) -> list[dict[str, Any]]:
    return write.rows(f"projects/{PROJECT}/datasets/{DATASET}/tables/{TABLE}")


def days_of(rows: list[dict[str, Any]]) -> Counter[int]:
    return Counter(r["ingest_time"] // DAY_MICROS for r in rows)


def inserted(jobs: FakeBigQueryJobs) -> Counter[str]:
    """Jobs inserted (answered 200), by day: YYYYMMDD."""
    return Counter(name.rsplit("_", 2)[-2] for name, status in jobs.job_inserts if status == 200)


# The end of the third day, as a day is whole on BigQuery alone: its end and the settle time.
WHOLE_THREE = (DAY0 + 3) * DAY_MICROS + 16 * SECOND


async def test_each_whole_day_is_copied_once_with_its_typed_columns_and_copies(
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    make_filler: Callable[..., Filler],
) -> None:
    define(write_fake, jobs_fake, widen_later=True)
    filler = await started(make_filler(WHOLE_THREE))
    assert await filler.tables() == [TABLE]

    done = await filler.fill(TABLE)

    assert done.copied == [DAY0, DAY0 + 1, DAY0 + 2]
    assert done.left is None
    assert done.through == DAY0 + 2
    rows = filled(write_fake)
    # The three whole days' first copies; the redelivery and the fourth day are not there.
    assert days_of(rows) == {DAY0: 8, DAY0 + 1: 6, DAY0 + 2: 6}
    assert Counter(r["message_id"] for r in rows)["m-0-2"] == 1
    by_id = {r["message_id"]: r for r in rows}
    for name in ("m-0-1", "m-1-4", "m-2-5"):
        source = next(r for r in stored_rows() if r["message_id"] == name)
        n = int(name[-1])
        copied = by_id[name]
        assert {k: copied[k] for k in source} == source  # amount too: the table was widened
        assert copied["customer"] == f"c{n % 3}"
        assert copied["placed_on"] == DAY0 - n % 5
    assert by_id["odd-0"]["customer"] is None  # an attribute that is no string
    assert by_id["bare-0"]["placed_on"] is None
    assert by_id["bare-0"]["fields"] is None
    assert jobs_fake.labels[TABLE][FILLED_THROUGH] == "20240429"
    # One job a day, billed what records_unique reads of it.
    assert inserted(jobs_fake) == {"20240427": 1, "20240428": 1, "20240429": 1}
    assert done.bytes_billed >= 3 * 2 * 10 * 1_000_000

    # Run again, and again a day later with the hint lost: nothing more is copied.
    assert (await filler.fill(TABLE)).copied == []
    del jobs_fake.labels[TABLE][FILLED_THROUGH]
    again = await (await started(make_filler(WHOLE_THREE))).fill(TABLE)
    assert again.copied == []
    assert again.found == [DAY0, DAY0 + 1, DAY0 + 2]
    assert filled(write_fake) == rows
    assert sum(inserted(jobs_fake).values()) == 3


async def test_a_day_not_yet_whole_is_left_until_it_is(
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    make_filler: Callable[..., Filler],
) -> None:
    define(write_fake, jobs_fake)
    settling = (DAY0 + 3) * DAY_MICROS + 10 * SECOND
    done = await (await started(make_filler(settling))).fill(TABLE)
    assert done.through == DAY0 + 1
    assert days_of(filled(write_fake)).keys() == {DAY0, DAY0 + 1}

    later = await (await started(make_filler(WHOLE_THREE))).fill(TABLE)
    assert later.copied == [DAY0 + 2]
    assert days_of(filled(write_fake)).keys() == {DAY0, DAY0 + 1, DAY0 + 2}


async def test_a_failed_job_is_followed_by_the_next_attempt(
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    make_filler: Callable[..., Filler],
) -> None:
    define(write_fake, jobs_fake)
    jobs_fake.job_failures.append(("backendError", "Backend error. Job aborted."))
    jobs_fake.job_failures.append(("backendError", "Backend error. Job aborted."))
    filler = await started(make_filler(WHOLE_THREE))

    done = await filler.fill(TABLE)

    # The first day's attempts 0 and 1 failed (two a run); the run stops there.
    assert done.copied == []
    assert done.left is not None
    assert "2 jobs failed" in done.left
    assert filled(write_fake) == []
    again = await filler.fill(TABLE)
    assert again.copied == [DAY0, DAY0 + 1, DAY0 + 2]
    assert job_id(DATASET, TABLE, DAY0, 2) in jobs_fake.jobs
    assert days_of(filled(write_fake)) == {DAY0: 8, DAY0 + 1: 6, DAY0 + 2: 6}


async def test_a_day_another_account_filled_is_told_by_the_tables_rows(
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    make_filler: Callable[..., Filler],
) -> None:
    """A backfill run by a person takes the days' job ids, and the fill account, which
    reads its own jobs alone, is refused them (403): a day whose rows the table holds is
    copied (its one job committed whole); one it holds none of is left, saying why, never
    copied again under the next attempt while that job may still run."""
    define(write_fake, jobs_fake)
    jobs_fake.job_failures.append(("backendError", "Backend error. Job aborted."))
    person = await (await started(make_filler(WHOLE_THREE))).fill(TABLE)
    # The first day's attempt 0 failed, its attempt 1 copied it.
    assert person.copied == [DAY0, DAY0 + 1, DAY0 + 2]
    jobs_fake.foreign_jobs |= set(jobs_fake.jobs)
    del jobs_fake.labels[TABLE][FILLED_THROUGH]

    done = await (await started(make_filler(WHOLE_THREE))).fill(TABLE)

    assert done.found == [DAY0, DAY0 + 1, DAY0 + 2]
    assert done.left is None
    assert days_of(filled(write_fake)) == {DAY0: 8, DAY0 + 1: 6, DAY0 + 2: 6}

    # A day of another account's job that holds no row yet (running, or failed): left.
    write_fake.tables[TABLE_PATH] = [
        r for r in filled(write_fake) if r["ingest_time"] // DAY_MICROS != DAY0 + 2
    ]
    del jobs_fake.labels[TABLE][FILLED_THROUGH]
    left = await (await started(make_filler(WHOLE_THREE))).fill(TABLE)
    assert left.found == [DAY0, DAY0 + 1]
    assert left.left is not None
    assert "another account's" in left.left
    assert days_of(filled(write_fake)) == {DAY0: 8, DAY0 + 1: 6}


async def test_two_fillers_at_once_copy_each_day_once(
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    make_filler: Callable[..., Filler],
) -> None:
    define(write_fake, jobs_fake)
    one, two = await started(make_filler(WHOLE_THREE)), await started(make_filler(WHOLE_THREE))

    done = await asyncio.gather(one.fill(TABLE), two.fill(TABLE))

    assert sorted(done[0].copied + done[1].copied) == [DAY0, DAY0 + 1, DAY0 + 2]
    assert days_of(filled(write_fake)) == {DAY0: 8, DAY0 + 1: 6, DAY0 + 2: 6}
    assert set(inserted(jobs_fake).values()) == {1}


async def test_a_job_another_filler_inserted_first_is_waited_for_not_run_again(
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    make_filler: Callable[..., Filler],
) -> None:
    """A filler killed while its job ran, or one that inserted it between this one's
    jobs.get and jobs.insert (409 duplicate): the job is found, waited for, not repeated."""
    define(write_fake, jobs_fake)
    columns = [c["name"] for c in [*created_schema(Record), FIELDS]]
    copies = [copy_of(bigquery.SchemaField.from_api_repr(c)) for c in COPIES]
    sql = fill_sql(PROJECT, DATASET, TABLE, columns, [c for c in copies if c], DAY0)
    jobs_fake.hold_jobs = True
    first = job_id(DATASET, TABLE, DAY0, 0)
    status, _ = jobs_fake.insert_job(
        f"/bigquery/v2/projects/{PROJECT}/jobs",
        {
            "jobReference": {"jobId": first},
            "configuration": {"query": {"query": sql, "useLegacySql": False}},
        },
    )
    assert status == 200
    jobs_fake.hold_jobs = False

    # The next run waits for it while it runs; it ends (here, as the run waits).
    async def finishing(_: float) -> None:
        if jobs_fake.held:
            await asyncio.to_thread(jobs_fake.finish)

    filler = await started(make_filler(WHOLE_THREE))
    filler._sleep = finishing
    done = await filler.fill(TABLE)

    assert done.found == [DAY0]
    assert done.copied == [DAY0 + 1, DAY0 + 2]
    assert Counter(n for n, s in jobs_fake.job_inserts if n == first) == {first: 1}
    # Found done: its rows are the other filler's, the day not copied twice.
    assert days_of(filled(write_fake)) == {DAY0: 8, DAY0 + 1: 6, DAY0 + 2: 6}


async def test_a_job_still_running_is_left_to_the_next_run(
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    make_filler: Callable[..., Filler],
) -> None:
    define(write_fake, jobs_fake)
    jobs_fake.hold_jobs = True
    done = await (await started(make_filler(WHOLE_THREE, wait_seconds=0.01))).fill(TABLE)
    assert done.left is not None
    assert "still running" in done.left
    assert done.through == DAY0 - 1
    jobs_fake.hold_jobs = False
    jobs_fake.finish()

    later = await (await started(make_filler(WHOLE_THREE))).fill(TABLE)

    assert later.found == [DAY0]
    assert later.copied == [DAY0 + 1, DAY0 + 2]
    assert days_of(filled(write_fake)) == {DAY0: 8, DAY0 + 1: 6, DAY0 + 2: 6}


async def test_days_older_than_the_job_history_are_told_by_the_tables_rows(
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    make_filler: Callable[..., Filler],
) -> None:
    """The hint lost and BigQuery's job history forgotten (half a year on): the days the
    table holds are not copied again; a day it lacks is."""
    define(write_fake, jobs_fake)
    await (await started(make_filler(DAY0 * DAY_MICROS + DAY_MICROS + 16 * SECOND))).fill(TABLE)
    assert days_of(filled(write_fake)).keys() == {DAY0}
    jobs_fake.jobs.clear()
    del jobs_fake.labels[TABLE][FILLED_THROUGH]

    later = await (await started(make_filler((DAY0 + 200) * DAY_MICROS))).fill(TABLE)

    assert later.found == [DAY0]
    assert DAY0 + 1 in later.copied
    assert days_of(filled(write_fake)) == {DAY0: 8, DAY0 + 1: 6, DAY0 + 2: 6, DAY0 + 3: 6}


async def test_behind_the_serving_tier_no_day_past_the_export_watermark(
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    make_filler: Callable[..., Filler],
) -> None:
    define(write_fake, jobs_fake)
    # The export appends each row once: records holds no later copy to leave out.
    write_fake.tables[RECORDS] = [r for r in write_fake.tables[RECORDS] if r != stored_rows()[-3]]
    now = (DAY0 + 5) * DAY_MICROS
    filler = await started(make_filler(now, serving=True))
    assert (await filler.fill(TABLE)).through is None  # no watermark yet: nothing is whole

    watermark = (DAY0 + 1) * DAY_MICROS + 12 * HOUR
    write_fake.tables[WATERMARKS].append(
        {"table_name": "records", "watermark": watermark, "exported_at": now}
    )
    write_fake.tables[WATERMARKS].append(
        {"table_name": "rejected", "watermark": now, "exported_at": now}
    )
    assert (await filler.fill(TABLE)).copied == [DAY0]

    write_fake.tables[WATERMARKS].append(
        {"table_name": "records", "watermark": (DAY0 + 3) * DAY_MICROS, "exported_at": now}
    )
    assert (await filler.fill(TABLE)).copied == [DAY0 + 1, DAY0 + 2]
    assert days_of(filled(write_fake)) == {DAY0: 8, DAY0 + 1: 6, DAY0 + 2: 6}
    # Each day read from its own partition of records, not through records_unique's
    # look-back over the dedupe window before it.
    fills = [q.sql for q in jobs_fake.queries if q.sql.startswith("INSERT")]
    assert len(fills) == 3
    assert not any("records_unique" in sql for sql in fills)


async def test_a_table_not_labelled_to_be_filled_is_refused(
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    make_filler: Callable[..., Filler],
) -> None:
    """`--table records` (or any table Terraform did not mark to be filled) would copy
    records into itself, every day again: refused before any job, saying why."""
    define(write_fake, jobs_fake)
    filler = await started(make_filler(WHOLE_THREE))
    before = len(write_fake.tables[RECORDS])
    jobs_fake.labels[TABLE][FILL_LABEL] = "other"
    for name in ("records", TABLE):
        with pytest.raises(FillFailed, match="not labelled recordline-fill=records"):
            await filler.fill(name)
    assert jobs_fake.job_inserts == []
    assert len(write_fake.tables[RECORDS]) == before


async def test_a_hint_past_the_last_whole_day_is_not_trusted(
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    make_filler: Callable[..., Filler],
) -> None:
    """A hint edited to a later date (or set by a run whose clock ran ahead) would stop
    every run at once, each saying the table is whole through that date: it is read as
    no hint, each day asked by its job ids, and set right."""
    define(write_fake, jobs_fake)
    jobs_fake.labels[TABLE][FILLED_THROUGH] = "25000101"

    done = await (await started(make_filler(WHOLE_THREE))).fill(TABLE)

    assert done.copied == [DAY0, DAY0 + 1, DAY0 + 2]
    assert done.through == DAY0 + 2
    assert jobs_fake.labels[TABLE][FILLED_THROUGH] == "20240429"
    assert days_of(filled(write_fake)) == {DAY0: 8, DAY0 + 1: 6, DAY0 + 2: 6}


async def test_a_scan_over_the_read_cap_is_a_table_left_saying_why(
    write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs
) -> None:
    """The scan of records' ingest_time (every day after the hint, all of them on a first
    run or once the hint is lost: at 1,000 msg/s, 0.7 GB a day) billed over the run's cap:
    FillFailed naming what raises it, not an error the command does not know (a
    traceback), so that a run by hand with more gets past it."""
    define(write_fake, jobs_fake)
    runner = QueryRunner(PROJECT, timeout=10.0, max_bytes_billed=1, endpoint=jobs_fake.endpoint)
    await runner.start()
    try:
        options = FillOptions(call_seconds=10.0, max_bytes_billed=1)
        filler = Filler(runner, DATASET, options, clock=lambda: WHOLE_THREE)
        with pytest.raises(FillFailed, match="--max-bytes-billed"):
            await filler.fill(TABLE)
    finally:
        await runner.close()
    assert jobs_fake.job_inserts == []


async def test_a_job_of_another_table_under_the_days_id_is_not_the_days_copy(
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    make_filler: Callable[..., Filler],
) -> None:
    """Job ids join the dataset and table with `_`, which both may hold: dataset `shop`
    with `records_x_records_y` and dataset `shop_records_x` with `records_y` (systems
    `shop` and `shop-records-x` of one cell, one project) name their days' jobs alike.
    A job found under the day's id that inserts into another table copied nothing here:
    the day takes its next attempt, never counted copied."""
    define(write_fake, jobs_fake)
    other = "records_other"
    jobs_fake.create_table(
        f"/bigquery/v2/projects/{PROJECT}/datasets/{DATASET}/tables",
        {
            "tableReference": {"projectId": PROJECT, "datasetId": DATASET, "tableId": other},
            "schema": {"fields": [*created_schema(Record), FIELDS]},
        },
    )
    columns = [c["name"] for c in [*created_schema(Record), FIELDS]]
    status, _ = jobs_fake.insert_job(
        f"/bigquery/v2/projects/{PROJECT}/jobs",
        {
            "jobReference": {"jobId": job_id(DATASET, TABLE, DAY0, 0)},
            "configuration": {
                "query": {
                    "query": fill_sql(PROJECT, DATASET, other, columns, [], DAY0),
                    "useLegacySql": False,
                }
            },
        },
    )
    assert status == 200

    done = await (await started(make_filler(WHOLE_THREE))).fill(TABLE)

    assert done.copied == [DAY0, DAY0 + 1, DAY0 + 2]
    assert job_id(DATASET, TABLE, DAY0, 1) in jobs_fake.jobs
    assert days_of(filled(write_fake)) == {DAY0: 8, DAY0 + 1: 6, DAY0 + 2: 6}


def parsed(*argv: str) -> argparse.Namespace:
    """`recordline tables ARGV…`'s arguments."""
    from app.commands import tables as filling

    parser = argparse.ArgumentParser()
    filling.add_arguments(parser)
    return parser.parse_args(argv)


def test_arguments_no_run_can_use_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 2, at once, before BigQuery is asked (its endpoint here answers nobody)."""
    from app.commands import tables as filling
    from app.settings import Settings

    settings = Settings.load(
        {
            "RECORDLINE_STORE": f"bigquery://{PROJECT}/{DATASET}",
            "BIGQUERY_EMULATOR_HOST": "http://127.0.0.1:9",
        }
    )
    for more in (
        ["--wait=nan"],
        ["--wait=inf"],
        ["--wait=-1"],
        ["--max-bytes-billed=0"],
        ["--table=records_x`; DROP TABLE records; --"],
        ["--table=records_by.customer"],
    ):
        args = parsed("fill", f"--table={TABLE}", *more)
        assert filling.run(args, settings) == filling.EXIT_USAGE, more
        assert "recordline tables fill: " in capsys.readouterr().err


async def test_bigquery_refusing_or_not_answering_ends_in_a_documented_exit(
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """tables.list not answering: exit 4, one line; a day's jobs.insert refused before
    BigQuery kept the job: exit 1 naming the day and BigQuery's answer. Never a
    traceback (an exception the command does not know)."""
    from app.commands import tables as filling
    from app.settings import Settings

    define(write_fake, jobs_fake)
    settings = Settings.load(
        {
            "RECORDLINE_STORE": f"bigquery://{PROJECT}/{DATASET}",
            "BIGQUERY_EMULATOR_HOST": jobs_fake.endpoint,
        }
    )
    args = parsed("fill")
    jobs_fake.list_failures.append((403, "accessDenied"))
    assert await filling._fill(args, settings) == filling.EXIT_UNAVAILABLE
    assert "BigQuery unavailable" in capsys.readouterr().err

    jobs_fake.insert_refusals.append((400, "invalid"))
    assert await filling._fill(args, settings) == filling.EXIT_LEFT
    said = capsys.readouterr().err
    assert f"{DATASET}.{TABLE}: left 2024-04-27: jobs.insert " in said
    assert "injected refusal" in said
    assert "Traceback" not in said


@pytest.mark.parametrize(
    ("copy", "why"),
    [
        # After SQL's unquoting the path is $."a"."b": member b of member a, another value.
        (Copy("c", 'a"."b', (), "STRING"), "attribute"),
        (Copy("c", "a\\b", (), "STRING"), "attribute"),
        # A newline no quoted SQL string holds: every day's job refused, for ever.
        (Copy("c", "a\nb", (), "STRING"), "attribute"),
        # A description edited by hand: out of the quoted name, into the statement.
        (Copy("c", None, ("placed_on`, (SELECT 1) AS `x",), "DATE"), "field"),
    ],
)
def test_a_copy_no_statement_can_name_is_refused_before_any_job(copy: Copy, why: str) -> None:
    with pytest.raises(FillFailed, match=f"copies {why}"):
        fill_sql(PROJECT, DATASET, TABLE, ["message_id"], [copy], DAY0)


def test_an_attributes_key_with_quotes_and_dots_is_read_as_one_member() -> None:
    import sqlglot

    key = "it's.a \u00e9 key"
    sql = copy_sql(Copy("c", key, (), "STRING"))
    # The JSONPaths as BigQuery reads its quoted strings (backslash escapes undone).
    tokens = sqlglot.Dialect.get_or_raise("bigquery").tokenize(sql)
    paths = {t.text for t in tokens if t.token_type.name == "STRING" and t.text.startswith("$")}
    assert paths == {f'$."{key}"'}
