"""records_latest behind the serving tier: records with several versions each, stored in
Spanner and exported to BigQuery by the service's own exporter; for every id, the
function over what BigQuery holds answers what GET /v1/records/{id} answers (the tiered
store's `latest`, which that route calls). `python3 dev.py bench latest` runs the same
comparison over 10,000 ids."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from app.records import MAX_MICROS, Record, Rejection
from app.store.tiered.store import TieredStore
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.test_records_latest import by_id, latest_body
from tests.bigquery.test_records_unique import callable_sql, query
from tests.spanner.exporting import drain, exporter, settle_clock
from tests.spanner.test_serving import record

pytestmark = pytest.mark.emulator

DAY = 86_400_000_000


def versions(ids: int, *, seed: int = 5) -> list[Record]:
    """1 to 4 versions of each of `ids` records: event times out of order, some missing
    or tied, a later one published first now and then."""
    rng = random.Random(seed)
    rows: list[Record] = []
    for i in range(ids):
        for v in range(rng.randint(1, 4)):
            base = record(f"m-{i}-{v}", id=f"order-{i:05}")
            event = rng.choice([None, base.ingest_time - rng.randrange(3) * DAY])
            rows.append(
                Record(
                    message_id=base.message_id,
                    publish_time=base.publish_time - rng.randrange(5_000_000),
                    ingest_time=base.ingest_time,
                    id=base.id,
                    timestamp=event,
                    data=json.dumps({"version": v}),
                )
            )
    rng.shuffle(rows)
    return rows


async def latest_everywhere(store: TieredStore, jobs: FakeBigQueryJobs, ids: int) -> int:
    """Compare, for every id, the serving tier's look-up with the function over BigQuery;
    the number of ids compared."""
    found = by_id(query(jobs, callable_sql(latest_body(), "u.*"), 0, MAX_MICROS))
    assert len(found) == ids
    for i in range(ids):
        answered = await store.latest(f"order-{i:05}")
        assert answered is not None
        assert found[answered.id] == (answered.message_id, json.loads(answered.data)), answered.id
    return ids


async def test_the_function_over_bigquery_answers_as_the_serving_tier_for_every_id(
    make_tiered: Callable[..., Any], jobs_fake: FakeBigQueryJobs
) -> None:
    store: TieredStore = await make_tiered()
    ids = 80
    rows: list[Record | Rejection] = list(versions(ids))
    for start in range(0, len(rows), 50):
        await store.append(rows[start : start + 50])
    await settle_clock()
    await drain(exporter(store))
    assert await latest_everywhere(store, jobs_fake, ids) == ids
