"""The same round trip against real BigQuery.

Needs GOOGLE_CLOUD_PROJECT, application default credentials, and the tables
Terraform creates in RECORDLINE_LIVE_DATASET (default `recordline`). Rows are
written with unique message ids and left in place: the tables are partitioned
and expire by policy, not by this test.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

from app.records import Record, Rejection
from app.settings import Settings, StoreSettings
from app.store import PageQuery
from app.store.open import open_bigquery
from tests.bigquery.conftest import record

pytestmark = pytest.mark.live


def _live_project() -> str:
    project = os.environ.get("GOOGLE_CLOUD_PROJECT", "")
    if not project:
        pytest.skip("GOOGLE_CLOUD_PROJECT is not set")
    try:
        import google.auth

        google.auth.default()
    except Exception as exc:
        pytest.skip(f"no Google credentials: {exc}")
    return project


async def test_round_trip_on_bigquery() -> None:
    project = _live_project()
    dataset = os.environ.get("RECORDLINE_LIVE_DATASET", "recordline")
    settings = Settings(
        store=StoreSettings(url=f"bigquery://{project}/{dataset}", settle_seconds=0)
    )
    store = open_bigquery(settings)
    await store.start()
    try:
        await store.check()
        now = time.time_ns() // 1000
        run = uuid.uuid4().hex
        rows = [record(f"{run}-{i}", now + i, id=f"{run}-r") for i in range(3)]
        rejection = Rejection(
            message_id=f"{run}-x", publish_time=now, ingest_time=now, data=b"\xff", reason="bad"
        )
        assert await store.append([*rows, rejection]) == [None] * 4
        # The same rows again, as a redelivery would store them.
        await store.append(rows)

        page = await store.page(
            Record,
            PageQuery(after_time=now - 1, after_message_id="", before_time=now + 10, limit=10),
        )
        assert [r.message_id for r in page if r.message_id.startswith(run)] == [
            r.message_id for r in rows
        ]
        latest = await store.latest(f"{run}-r")
        assert latest is not None
        assert latest.message_id.startswith(run)
        status = await store.message(f"{run}-x")
        assert status is not None
        assert status.status == "rejected"
    finally:
        await store.close()
