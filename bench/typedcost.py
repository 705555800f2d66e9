"""What a one-field query costs on BigQuery: a typed column against JSON_VALUE over `data`.

    python3 dev.py bench typedcost [--rate 100] [--days 30] [--payload-bytes 1024]

An analyst sums one field over a month of records, either way:

    SELECT SUM(CAST(JSON_VALUE(data, '$.amount') AS NUMERIC)) FROM records
    WHERE ingest_time >= @month_start                      -- JSON: reads `data`
    SELECT SUM(fields.amount) FROM records
    WHERE ingest_time >= @month_start                      -- typed: reads one leaf

Payloads of `--payload-bytes` JSON (an order with an `amount` and a padded
note) are decoded and projected by the real mapping (app.typed) onto their
Avro schema's fields, and each row's bytes are sized by the billing model of
`tests/bigquery/billing.py` (`value_size`, `billed`: BigQuery's data type
sizes, whole MiB per table, 10 MiB minimum). Not through the jobs.query fake:
its tables have no RECORD columns yet, so the two queries' referenced columns
are sized here, with one assumption of this model stated: BigQuery stores a
RECORD's fields as columns of their own (Dremel's columnar nesting) and bills
only the leaves a query references, so `fields.amount` is 16 bytes a row
(NUMERIC's documented size), not the whole RECORD.

Prints bytes billed and dollars for each query, and the ratio (goal: typed ≤ 1/10).
"""

from __future__ import annotations

import argparse
import json

import msgspec

from app.records import Kind
from app.typed.mapping import Type, avro_fields
from app.typed.projection import project
from tests.bigquery.billing import DOLLARS_PER_TIB, MIB, billed, value_size

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
# https://cloud.google.com/bigquery/pricing#data_type_sizes: NUMERIC 16 bytes,
# BIGNUMERIC 32, FLOAT64 and INT64 8.
_TYPED_SIZES = {Type.NUMERIC: 16, Type.BIGNUMERIC: 32, Type.FLOAT64: 8, Type.INT64: 8}
_SAMPLES = 1000


def payload(n: int, size: int) -> str:
    """One order's JSON, padded to `size` bytes, as the service stores it in `data`."""
    order = {"order_id": f"o-{n:09d}", "amount": f"{n % 100_000}.{n % 100:02d}", "note": ""}
    pad = size - len(json.dumps(order, separators=(",", ":")))
    order["note"] = "x" * max(0, pad)
    return json.dumps(order, separators=(",", ":"))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench typedcost", description=__doc__)
    parser.add_argument("--rate", type=int, default=100, help="messages a second")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--payload-bytes", type=int, default=1024)
    args = parser.parse_args(argv)
    rows = args.rate * 86_400 * args.days
    fields = avro_fields(SCHEMA)
    amount = next(f for f in fields if f.name == "amount")
    # Sizes of a sample of rows, the typed value projected by the real code.
    json_bytes = typed_bytes = 0
    for n in range(_SAMPLES):
        data = payload(n, args.payload_bytes)
        projection = project(msgspec.json.decode(data), fields, "bench@1")
        assert projection.errors == [], projection.errors
        stamp = value_size(Kind.TIMESTAMP, 0)  # ingest_time, the month's filter
        json_bytes += value_size(Kind.JSON, data) + stamp
        typed = 0 if projection.values["amount"] is None else _TYPED_SIZES[amount.type]
        typed_bytes += typed + stamp
    scale = rows / _SAMPLES
    bills = {
        "JSON_VALUE(data, '$.amount')": billed({"records": round(json_bytes * scale)}),
        f"fields.amount ({amount.type})": billed({"records": round(typed_bytes * scale)}),
    }
    print(
        f"one-field query over {args.days} days at {args.rate} msg/s "
        f"({rows:,} rows of {args.payload_bytes}-byte payloads), on demand at "
        f"${DOLLARS_PER_TIB}/TiB:"
    )
    for name, bill in bills.items():
        dollars = bill / (1 << 40) * DOLLARS_PER_TIB
        print(f"  {name:<32} {bill / MIB:>12,.0f} MiB  ${dollars:,.4f}")
    json_bill, typed_bill = bills.values()
    ratio = typed_bill / json_bill
    print(f"  typed / JSON: {ratio:.3f} (goal ≤ 0.100: {'met' if ratio <= 0.1 else 'NOT met'})")
    return 0
