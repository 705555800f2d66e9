"""records_latest behind the serving tier: records with several versions each, stored in
Spanner and exported to BigQuery by the service's own exporter; for every id, the
function over what BigQuery holds answers what GET /v1/records/{id} answers (the tiered
store's `latest`, through the route). `python3 dev.py bench latest` runs the same comparison
over 10,000 ids, through the store's `latest`."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from app.asgi import create_app
from app.records import MAX_MICROS, Record, Rejection
from app.settings import Settings
from app.store.tiered.store import TieredStore
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.test_records_latest import by_id, latest_body
from tests.bigquery.test_records_unique import callable_sql, query
from tests.conftest import served
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


async def test_the_function_over_bigquery_answers_as_the_serving_tier_for_every_id(
    make_tiered: Callable[..., Any],
    jobs_fake: FakeBigQueryJobs,
    serving_settings: Callable[..., Settings],
) -> None:
    store: TieredStore = await make_tiered()
    ids = 60
    rows: list[Record | Rejection] = list(versions(ids))
    for start in range(0, len(rows), 50):
        await store.append(rows[start : start + 50])
    await settle_clock()
    await drain(exporter(store))
    found = by_id(query(jobs_fake, callable_sql(latest_body(), "u.*"), 0, MAX_MICROS))
    assert len(found) == ids
    # Each id through the route itself: GET /v1/records/{id} of the app on that store.
    async with served(create_app(serving_settings(), store=store)) as client:
        for i in range(ids):
            answer = await client.get(f"/v1/records/order-{i:05}")
            assert answer.status_code == 200
            body = answer.json()
            assert found[body["id"]] == (body["message_id"], body["data"]), body["id"]
