"""What a month of rows weighs in BigQuery: billed logically, and compressed.

    python3 dev.py bench storage [--rows 100000]

`records` rows as the service writes them (app/records.py: ids, times, attributes, the
subscription, a trace id, and `data`, order-like JSON of about 1 KiB with values as
varied as real ones: random ids, amounts, quantities and words; a repeated filler would
compress far better than data does), seeded, so every run writes the same rows:

- **Logical bytes**: what BigQuery's logical storage bills, column by column
  (https://cloud.google.com/bigquery/pricing#data_size_calculation: a STRING 2 bytes and
  its UTF-8, a TIMESTAMP or an INT64 8, a JSON its UTF-8 text, a NULL nothing).
- **Compressed bytes**: the same rows as a Parquet file compressed with zstd (DuckDB), a
  stand-in for what BigQuery's physical storage bills: BigQuery's own columnar format
  and its shredding of JSON columns are not available here, and compress as well or
  better; the ratio is a conservative estimate of BigQuery's, not BigQuery's.

The ratio is what infra/fleet_cost.py's PHYSICAL_RATIO must not exceed (a test runs
this at a small size and holds it to that).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

import duckdb
import pyarrow as pa

from bench.harness import table

WORDS = [
    "order", "shipped", "paid", "refunded", "pending", "cart", "item", "customer", "region",
    "express", "standard", "gift", "return", "warehouse", "priority", "discount",
]  # fmt: skip
CURRENCIES = ["EUR", "USD", "GBP"]
# `records`' columns as the service writes them (times in microseconds).
COLUMNS = (
    ("message_id", pa.string()),
    ("publish_time", pa.int64()),
    ("ingest_time", pa.int64()),
    ("id", pa.string()),
    ("timestamp", pa.int64()),
    ("data", pa.string()),
    ("attributes", pa.string()),
    ("subscription", pa.string()),
    ("delivery_attempt", pa.int64()),
    ("trace_id", pa.string()),
    ("schema", pa.string()),
)


def record_data(rng: random.Random) -> str:
    """An order of about 1 KiB of JSON, every value drawn afresh."""
    items = [
        {
            "sku": f"sku-{rng.getrandbits(24):06x}",
            "name": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4))),
            "qty": rng.randint(1, 5),
            "price": round(rng.uniform(1, 200), 2),
        }
        for _ in range(rng.randint(8, 12))
    ]
    order = {
        "customer": f"c-{rng.getrandbits(32):08x}",
        "amount": round(sum(i["qty"] * i["price"] for i in items), 2),  # type: ignore[operator]
        "currency": rng.choice(CURRENCIES),
        "status": rng.choice(WORDS),
        "items": items,
        "shipping": {
            "postcode": f"{rng.randrange(10**5):05d}",
            "country": rng.choice(["BE", "NL", "DE", "FR", "GB", "US"]),
            "method": rng.choice(WORDS),
        },
        "note": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))),
    }
    return json.dumps(order, separators=(",", ":"))


def rows(count: int, seed: int = 7) -> list[tuple[object, ...]]:
    """`count` rows of `records`, in ingest order, as the service writes them."""
    rng = random.Random(seed)
    start = 1_782_000_000_000_000
    out: list[tuple[object, ...]] = []
    for n in range(count):
        ingest = start + n * 100_000  # ten a second
        out.append(
            (
                str(10**16 + rng.getrandbits(40)),
                ingest - rng.randrange(50_000, 2_000_000),
                ingest,
                f"order-{rng.getrandbits(48):012x}",
                ingest - rng.randrange(0, 60_000_000),
                record_data(rng),
                '{"origin":"checkout"}',
                "projects/recordline-prod/subscriptions/orders-push",
                1,
                f"{rng.getrandbits(128):032x}",
                None,
            )
        )
    return out


def logical_bytes(found: list[tuple[object, ...]]) -> int:
    """BigQuery's logical size of these rows (its data size calculation)."""
    total = 0
    for row in found:
        for value in row:
            if value is None:
                continue
            if isinstance(value, int):
                total += 8
            else:
                total += 2 + len(str(value).encode())
    # `data` and `attributes` are JSON: their UTF-8 text, without a STRING's 2 bytes.
    return total - 4 * len(found)


def compressed_bytes(found: list[tuple[object, ...]]) -> int:
    """The rows as a Parquet file compressed with zstd, by DuckDB: its size."""
    columns = list(zip(*found, strict=True))
    arrow = pa.table(
        {
            name: pa.array(values, type=kind)
            for (name, kind), values in zip(COLUMNS, columns, strict=True)
        }
    )
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "records.parquet"
        with duckdb.connect() as db:
            db.register("found", arrow)
            db.execute(
                f"COPY found TO '{path}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 122880)"
            )
        return path.stat().st_size


def measure(count: int) -> dict[str, float]:
    found = rows(count)
    logical = logical_bytes(found)
    compressed = compressed_bytes(found)
    data = sum(len(str(r[5]).encode()) for r in found) / count
    return {
        "rows": count,
        "data_bytes": round(data, 1),
        "logical_bytes_a_row": round(logical / count, 1),
        "compressed_bytes_a_row": round(compressed / count, 1),
        "ratio": round(logical / compressed, 2),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench storage", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args(argv)
    found = measure(args.rows)
    print(
        table(
            [
                [
                    "rows",
                    "data a row",
                    "logical a row",
                    "zstd Parquet a row",
                    "logical / compressed",
                ],
                [
                    f"{found['rows']:,}",
                    f"{found['data_bytes']:,.0f} B",
                    f"{found['logical_bytes_a_row']:,.0f} B",
                    f"{found['compressed_bytes_a_row']:,.0f} B",
                    f"{found['ratio']:.2f}",
                ],
            ]
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
