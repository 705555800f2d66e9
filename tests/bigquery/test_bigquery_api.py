"""The whole service on the BigQuery store: push in over HTTP, read back, with
the real Google clients talking to the fakes.

The app is served by uvicorn in the test's event loop (`served`): Litestar's
test clients run the app on a loop in another thread, and a grpc.aio channel
there cannot reach the fake serving on this one.
"""

from __future__ import annotations

import time

import grpc
import pytest

from app.asgi import create_app
from app.query.page_token import PageToken, PageTokens
from app.settings import Settings
from tests.bigquery.conftest import DATASET, PROJECT
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.fake_storage_write import Abort, FakeBigQueryWrite
from tests.conftest import envelope, long_polling, served, unsettled

RECORD = {"id": "1", "timestamp": "2024-04-27T12:00:00Z", "data": "Ejemplo de datos"}


@pytest.fixture
def bigquery_settings(write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs) -> Settings:
    # Configured as an operator would: the store URL, the insecure write
    # endpoint, and the library's emulator variable for queries.
    return unsettled(
        Settings.load(
            {
                "BIGQUERY_EMULATOR_HOST": jobs_fake.endpoint,
                "RECORDLINE_STORE": f"bigquery://{PROJECT}/{DATASET}",
                "RECORDLINE_BIGQUERY_WRITE_ENDPOINT": write_fake.address,
            }
        )
    )


@pytest.mark.slow
async def test_push_then_read_through_the_api(
    bigquery_settings: Settings, write_fake: FakeBigQueryWrite
) -> None:
    # The first batch's answer is lost after it was stored: the redelivered
    # copy must stay invisible through the API.
    write_fake.inject("records", Abort(grpc.StatusCode.UNAVAILABLE, commit=True))
    async with served(create_app(bigquery_settings)) as client:
        pushed = await client.post("/pubsub/push", json=envelope(RECORD, message_id="m-1"))
        assert pushed.status_code == 204
        again = await client.post("/pubsub/push", json=envelope(RECORD, message_id="m-1"))
        assert again.status_code == 204
        bad = await client.post(
            "/pubsub/push", json=envelope(None, message_id="m-2", raw_data=b"not json")
        )
        assert bad.status_code == 204

        record = (await client.get("/v1/records/1")).json()
        assert record["message_id"] == "m-1"
        assert record["data"] == "Ejemplo de datos"
        assert record["timestamp"] == "2024-04-27T12:00:00Z"

        page = (await client.get("/v1/records", params={"since": "2024-01-01T00:00:00Z"})).json()
        assert [r["message_id"] for r in page["records"]] == ["m-1"]

        rejected = (await client.get("/v1/messages/m-2")).json()
        assert rejected["status"] == "rejected"
        assert (await client.get("/readyz")).status_code == 200

    assert [r["message_id"] for r in write_fake.rows("records")].count("m-1") == 3
    assert [r["data"] for r in write_fake.rows("rejected")] == [b"not json"]


@pytest.mark.slow
async def test_a_permanent_write_error_answers_503_and_fails_readiness(
    bigquery_settings: Settings, write_fake: FakeBigQueryWrite
) -> None:
    write_fake.inject("records", Abort(grpc.StatusCode.PERMISSION_DENIED))
    async with served(create_app(bigquery_settings)) as client:
        response = await client.post("/pubsub/push", json=envelope(RECORD, message_id="m-1"))
        assert response.status_code == 503
        assert "Retry-After" in response.headers
        assert (await client.get("/readyz")).status_code == 503


@pytest.mark.slow
async def test_reads_older_than_the_retention_answer_410_before_any_query(
    write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs
) -> None:
    # BigQuery drops expired partitions (Terraform sets the expiration from the
    # same variable): a page reaching into them would be silently incomplete.
    settings = unsettled(
        Settings.load(
            {
                "BIGQUERY_EMULATOR_HOST": jobs_fake.endpoint,
                "RECORDLINE_STORE": f"bigquery://{PROJECT}/{DATASET}",
                "RECORDLINE_BIGQUERY_WRITE_ENDPOINT": write_fake.address,
                "RECORDLINE_RETENTION_DAYS": "30",
            }
        )
    )
    tokens = PageTokens(settings.query.page_token_secret)
    day = 86_400 * 1_000_000
    now = time.time_ns() // 1000
    async with served(create_app(settings)) as client:
        pushed = await client.post("/pubsub/push", json=envelope(RECORD, message_id="m-1"))
        assert pushed.status_code == 204
        sent = len(jobs_fake.queries)
        for params in (
            {"since": "2024-01-01T00:00:00Z"},
            {"until": "2024-01-01T00:00:00Z"},
            {"page_token": tokens.encode(PageToken(now - 31 * day, "m-0"))},
        ):
            answer = await client.get("/v1/records", params=params)
            assert answer.status_code == 410, params
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert answer.json()["retention_days"] == 30
        assert len(jobs_fake.queries) == sent
        # Within the retention, and unbounded, the row is there.
        recent = tokens.encode(PageToken(now - 29 * day, "m-0"))
        for params in ({"page_token": recent}, {}):
            page = (await client.get("/v1/records", params=params)).json()
            assert [r["message_id"] for r in page["records"]] == ["m-1"], params


@pytest.mark.slow
async def test_a_durable_streams_client_follows_bigquery_alone(
    write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs
) -> None:
    """The streams on BigQuery alone: the Python client from PyPI catches up, follows a
    push by long-poll, and resumes from its offset, every record once."""
    import asyncio

    from durable_streams import astream

    settings = unsettled(
        Settings.load(
            {
                "BIGQUERY_EMULATOR_HOST": jobs_fake.endpoint,
                "RECORDLINE_STORE": f"bigquery://{PROJECT}/{DATASET}",
                "RECORDLINE_BIGQUERY_WRITE_ENDPOINT": write_fake.address,
            }
        )
    )
    settings = long_polling(settings, 5)
    async with served(create_app(settings)) as client:
        url = f"{client.base_url}/v1/streams/records"
        for n in range(3):
            pushed = await client.post("/pubsub/push", json=envelope(RECORD, message_id=f"m-{n}"))
            assert pushed.status_code == 204
        async with astream(url, offset="-1", live=False) as res:
            first = [row["message_id"] for row in await res.read_json()]
            offset = res.offset
        assert first == ["m-0", "m-1", "m-2"]

        async def follow() -> list[str]:
            async with astream(url, offset=offset, live="long-poll") as res:
                async for event in res.iter_events():
                    if event.data:
                        return [row["message_id"] for row in event.data]
            return []

        following = asyncio.create_task(follow())
        await asyncio.sleep(0.2)  # the follower is waiting when the push comes
        await client.post("/pubsub/push", json=envelope(RECORD, message_id="m-3"))
        assert await asyncio.wait_for(following, 20) == ["m-3"]
