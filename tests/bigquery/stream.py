"""A Pub/Sub stream as BigQuery would hold it, scaled down for the billing model.

Rows are what the Storage Write fake stores (TIMESTAMP as µs, JSON as text):
the ~430-byte row the ingest bench publishes, with a publisher's trace
context in its attributes, 0.1% redelivered copies (stored again 2 s later)
and 0.1% rejections. Each stored row stands for `weight` rows of a stream
at `rate` messages a second, so a month of it fits in tens of thousands.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bench.harness import DATA

SECOND = 1_000_000
DAY = 86_400 * SECOND
# The end of the data: "now" for the billing model's write-optimized rows.
NOW = 1_779_000_000 * SECOND


@dataclass
class Stream:
    rate: int
    days: int
    weight: int
    records: list[dict[str, Any]]
    rejections: list[dict[str, Any]]

    def day_old(self) -> dict[str, Any]:
        """A record stored a day ago: past write-optimized storage."""
        target = NOW - DAY
        return min(self.records, key=lambda r: abs(r["ingest_time"] - target))

    def replay_batch(self) -> list[str]:
        """A full replay request's message ids: 60 records from across the
        table, 20 rejections, 20 never seen (dead letters)."""
        records = self.records[:: max(1, len(self.records) // 60)][:60]
        ids = [r["message_id"] for r in records + self.rejections[:20]]
        return ids + [f"9{n:016d}" for n in range(100 - len(ids))]


def make_stream(
    rate: int, days: int, *, stored_per_day: int, customers: int = 0, late_every: int = 0
) -> Stream:
    """`customers`: each record carries a `customer` attribute (and, as a layout's copy
    of it, a `customer` column), one of that many, spread evenly; `late_every`: every
    so many records is an event up to three days older than its ingest (0: none)."""
    weight = rate * 86_400 // stored_per_day
    step = weight * SECOND // rate
    data = json.dumps(DATA)
    records: list[dict[str, Any]] = []
    rejections: list[dict[str, Any]] = []
    start = NOW - days * DAY
    for n in range(days * stored_per_day):
        ingest = start + n * step
        row = {
            "message_id": f"{17_000_000_000_000_000 + n}",
            "publish_time": ingest - 80_000,
            "ingest_time": ingest,
            "attributes": json.dumps({"googclient_traceparent": f"00-{n:032x}-{n:016x}-01"}),
            "subscription": "projects/recordline-prod/subscriptions/records-push",
            "delivery_attempt": 1,
            "trace_id": f"{n:032x}",
            "schema": None,
        }
        if n % 1000 == 999:
            rejections.append(
                {**row, "data": b"{not json", "reason": "payload is not JSON: invalid character"}
            )
            continue
        event = ingest - 900_000
        if late_every and n % late_every == late_every // 2:
            event = ingest - (1 + n % 3) * DAY + 3_600 * SECOND
        record = {**row, "id": f"order-{n:09}", "timestamp": event, "data": data}
        if customers:
            customer = f"c{(n * 7_919) % customers}"
            attributes = {**json.loads(row["attributes"]), "customer": customer}
            record = {**record, "attributes": json.dumps(attributes), "customer": customer}
        records.append(record)
        if n % 1000 == 500:  # a redelivery, stored again 2 s later
            records.append({**record, "ingest_time": ingest + 2 * SECOND})
    records.sort(key=lambda r: r["ingest_time"])
    return Stream(rate, days, weight, records, rejections)
