"""What a one-field query costs on BigQuery: a typed column against JSON_VALUE over `data`.

    python3 dev.py bench typedcost [--rate 100] [--days 30] [--payload-bytes 1024]
                                   [--stored-per-day 1440]

An analyst sums one field over a month of records, either way:

    SELECT SUM(CAST(JSON_VALUE(data, '$.amount') AS NUMERIC)) FROM records
    WHERE ingest_time >= @month_start AND ingest_time < @month_end   -- reads `data`
    SELECT SUM(fields.amount) FROM records
    WHERE ingest_time >= @month_start AND ingest_time < @month_end   -- reads one leaf

Both run through the real `bigquery.Client` against the jobs.query fake
(`tests/bigquery/fake_jobs.py`), which runs them on DuckDB and bills them by
`tests/bigquery/billing.py` (its docstring states the model: BigQuery's data
type sizes, only the referenced columns and RECORD leaves, partition pruning,
whole MiB per table with a 10 MiB minimum).

The table is `records` as Terraform creates it (`projection_errors` among its
columns) plus the typed column the service adds (`fields`), holding a month-shaped stream
(`tests/bigquery/stream.py`: publish times, trace context, 0.1% redeliveries)
whose payloads are `--payload-bytes` of JSON (an order with an `amount` and a
padded note), each projected onto its Avro schema's fields by the real code
(`app.store.bigquery.typed`), as the store writes them. Scaled down: the
table stores `--stored-per-day` rows a day, each standing for
`rate * 86,400 / stored-per-day` rows (the billing model's row weight).

Prints, for each query, the bytes processed as the client's result reports
them (`total_bytes_processed`) and the bytes billed as the `jobs.query`
response carries them (`totalBytesBilled`, read off the wire: the client's
result does not keep it), with dollars; then the ratio typed / JSON (goal ≤ 0.1).
"""

from __future__ import annotations

import argparse
import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from app.records import TABLES, columns
from app.store.bigquery.typed import (
    ERRORS,
    FIELDS,
    column_of,
    error_values,
    proto_values,
)
from app.typed.mapping import Field, Type, avro_fields
from app.typed.projection import project_stored
from tests.bigquery.billing import DOLLARS_PER_TIB, MIB, BillingModel
from tests.bigquery.fake_jobs import LAYOUTS, FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.bigquery.stream import DAY, NOW, SECOND, make_stream

SCHEMA = {
    "type": "record",
    "name": "Order",
    "fields": [
        {"name": "order_id", "type": "string"},
        {
            "name": "amount",
            "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2},
        },
        {"name": "note", "type": "string"},
    ],
}
PROJECT, DATASET = "bench-project", "recordline"
TABLE = f"projects/{PROJECT}/datasets/{DATASET}/tables/records"
REVISION = f"projects/{PROJECT}/schemas/orders@r1"
RECORDS_JSON = (
    Path(__file__).resolve().parents[1] / "infra/terraform/modules/system/schemas/records.json"
)
BLOCK_ROWS = 100_000
_WHERE = "ingest_time >= TIMESTAMP_MICROS(@start) AND ingest_time < TIMESTAMP_MICROS(@end)"
QUERIES = {
    "JSON_VALUE(data, '$.amount')": (
        "SELECT SUM(CAST(JSON_VALUE(data, '$.amount') AS NUMERIC)) AS total "
        f"FROM `{PROJECT}.{DATASET}.records` WHERE {_WHERE}"
    ),
    "fields.amount": (
        f"SELECT SUM(fields.amount) AS total FROM `{PROJECT}.{DATASET}.records` WHERE {_WHERE}"
    ),
}


def payload(n: int, size: int) -> str:
    """One order's JSON, padded to `size` bytes, as the service stores it in `data`."""
    order = {"order_id": f"o-{n:09d}", "amount": f"{n % 100_000}.{n % 100:02d}", "note": ""}
    pad = size - len(json.dumps(order, separators=(",", ":")))
    order["note"] = "x" * max(0, pad)
    return json.dumps(order, separators=(",", ":"))


def table_schema(fields: tuple[Field, ...]) -> list[dict[str, Any]]:
    """`records` as Terraform creates it (`projection_errors` included), and the typed
    column the store adds (`fields`)."""
    own: list[dict[str, Any]] = json.loads(RECORDS_JSON.read_text())
    typed = column_of(Field(name=FIELDS, type=Type.RECORD, fields=fields))
    return [*own, typed.to_api_repr()]


def month(
    rate: int, days: int, stored_per_day: int, size: int, fields: tuple[Field, ...]
) -> tuple[list[dict[str, Any]], int]:
    """A month-shaped stream's stored rows with typed columns, and each row's weight."""
    stream = make_stream(rate, days, stored_per_day=stored_per_day)
    rows = []
    for n, record in enumerate(stream.records):
        data = payload(n, size)
        projection = project_stored(data, fields, REVISION)
        assert projection.errors == [], projection.errors
        rows.append(
            {
                **record,
                "data": data,
                "schema": REVISION,
                FIELDS: proto_values(projection.values, fields),
                ERRORS: error_values(projection.errors),
            }
        )
    return rows, stream.weight


class Measured:
    def __init__(self, processed: int, billed: int, total: Decimal, seconds: float) -> None:
        self.processed, self.billed, self.total, self.seconds = processed, billed, total, seconds

    @property
    def dollars(self) -> float:
        return self.billed / (1 << 40) * DOLLARS_PER_TIB


def run(client: bigquery.Client, jobs: FakeBigQueryJobs, sql: str, days: int) -> Measured:
    config = bigquery.QueryJobConfig(
        query_parameters=[
            bigquery.ScalarQueryParameter("start", "INT64", NOW - days * DAY),
            bigquery.ScalarQueryParameter("end", "INT64", NOW + SECOND),
        ]
    )
    started = time.perf_counter()
    rows = client.query_and_wait(sql, job_config=config)
    (total,) = [Decimal(str(row["total"])) for row in rows]
    seconds = time.perf_counter() - started
    processed = rows.total_bytes_processed
    # Billed as the fake answered it (`totalBytesBilled`): the client's fast path
    # keeps only the bytes processed, so it is read from the fake's own record.
    bill = jobs.queries[-1].bill
    assert processed is not None
    assert bill is not None
    assert bill.bytes_processed == processed, (bill, processed)
    return Measured(processed, bill.bytes_billed, total, seconds)


def measure(
    rate: int, days: int, stored_per_day: int, size: int
) -> tuple[int, dict[str, Measured]]:
    fields = avro_fields(SCHEMA)
    rows, weight = month(rate, days, stored_per_day, size, fields)
    write = FakeBigQueryWrite()  # holds the table; nothing is appended through it
    write.define(TABLE, table_schema(fields))
    write.tables[TABLE] = rows
    model = BillingModel(
        layouts=LAYOUTS,
        kinds={t: {c.name: c.kind for c in columns(r)} for t, r in TABLES.items()},
        block_rows=BLOCK_ROWS,
        row_weight=weight,
        clock=lambda: NOW / SECOND,
    )
    jobs = FakeBigQueryJobs(write, project=PROJECT, dataset=DATASET, billing=model)
    jobs.start()
    client = bigquery.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": jobs.endpoint},
        default_job_creation_mode="JOB_CREATION_OPTIONAL",
    )
    try:
        found = {name: run(client, jobs, sql, days) for name, sql in QUERIES.items()}
    finally:
        client.close()  # type: ignore[no-untyped-call]
        jobs.stop()
    # Both queries summed the same amounts.
    json_total, typed_total = (m.total for m in found.values())
    assert json_total == typed_total, (json_total, typed_total)
    return weight, found


def size(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", MIB)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:,} B"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="bench typedcost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rate", type=int, default=100, help="messages a second")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--payload-bytes", type=int, default=1024)
    parser.add_argument(
        "--stored-per-day",
        type=int,
        default=1440,
        help="rows stored a day; each stands for rate * 86,400 / this many",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    weight, found = measure(args.rate, args.days, args.stored_per_day, args.payload_bytes)
    rows = args.rate * 86_400 * args.days
    print(
        f"one-field query over {args.days} days at {args.rate} msg/s ({rows:,} rows of "
        f"{args.payload_bytes}-byte payloads), through bigquery.Client to the jobs.query fake;\n"
        f"scale: {args.stored_per_day:,} rows stored a day, each standing for {weight:,} rows; "
        f"on demand at ${DOLLARS_PER_TIB}/TiB:"
    )
    print(f"  {'query':<30} {'processed':>12} {'billed':>12} {'billed, bytes':>19} {'$':>9}")
    for name, m in found.items():
        print(
            f"  {name:<30} {size(m.processed):>12} {size(m.billed):>12} "
            f"{m.billed:>19,} {m.dollars:>9,.4f}"
        )
    json_m, typed_m = found.values()
    ratio = typed_m.billed / json_m.billed
    print(
        f"  typed / JSON billed: {ratio:.3f} "
        f"(goal ≤ 0.100: {'met' if ratio <= 0.1 else 'NOT met'}); "
        f"both summed {typed_m.total.normalize():,} over the stored rows; "
        f"{time.perf_counter() - started:.1f} s"
    )
    return 0
