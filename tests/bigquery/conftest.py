from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from app.records import Record
from app.settings import QuerySettings, StoreSettings
from app.store import PageQuery, QueryObserver
from app.store.bigquery.store import BigQueryStore
from app.store.bigquery.typed import PatchObserver
from app.store.open import bigquery_options
from app.typed.revisions import Revisions
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite

PROJECT = "fake-project"
DATASET = "recordline"


@pytest.fixture
async def make_store(
    write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs
) -> AsyncIterator[Callable[..., Any]]:
    """Started stores wired to the fakes; settings may be overridden per test."""
    opened: list[BigQueryStore] = []

    async def make(
        query: QuerySettings | None = None,
        observer: QueryObserver | None = None,
        revisions: Revisions | None = None,
        patches: PatchObserver | None = None,
        **overrides: Any,
    ) -> BigQueryStore:
        settings = {
            "bigquery_write_endpoint": write_fake.address,
            "settle_seconds": 0.0,
            "write_deadline_seconds": 5.0,
            **overrides,
        }
        store = BigQueryStore(
            PROJECT,
            DATASET,
            options=bigquery_options(StoreSettings(**settings), query or QuerySettings()),
            query_endpoint=jobs_fake.endpoint,
            observer=observer,
            revisions=revisions,
            patches=patches,
        )
        await store.start()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def store(make_store: Callable[..., Any]) -> BigQueryStore:
    started: BigQueryStore = await make_store()
    return started


@pytest.fixture
async def write_client(write_fake: FakeBigQueryWrite) -> AsyncIterator[Any]:
    """The real async client, over an insecure channel to the fake."""
    import grpc
    from google.cloud.bigquery_storage_v1.services.big_query_write import (
        BigQueryWriteAsyncClient,
    )
    from google.cloud.bigquery_storage_v1.services.big_query_write.transports import (
        BigQueryWriteGrpcAsyncIOTransport,
    )

    channel = grpc.aio.insecure_channel(write_fake.address)
    client = BigQueryWriteAsyncClient(transport=BigQueryWriteGrpcAsyncIOTransport(channel=channel))
    yield client
    await client.transport.close()


BASE_TIME = 1_714_219_200_000_000  # 2024-04-27T12:00:00Z in microseconds


def record(message_id: str, ingest_time: int, **fields: Any) -> Record:
    values: dict[str, Any] = {
        "publish_time": ingest_time - 1_000,
        "id": message_id,
        "data": '"Ejemplo de datos"',
        **fields,
    }
    return Record(message_id=message_id, ingest_time=ingest_time, **values)


def page_query(after_time: int = 0, after_message_id: str = "", *, limit: int = 100) -> PageQuery:
    return PageQuery(
        after_time=after_time,
        after_message_id=after_message_id,
        before_time=BASE_TIME + 3_600_000_000,
        limit=limit,
    )


async def walk(store: BigQueryStore, *, limit: int) -> list[Record]:
    """Follow pages from the start, as a consumer following page tokens does."""
    seen: list[Record] = []
    after_time, after_message_id = 0, ""
    end = BASE_TIME + 3_600_000_000
    while (after_time, after_message_id) < (end, ""):
        page = await store.page(Record, page_query(after_time, after_message_id, limit=limit))
        seen.extend(page.rows)
        after_time, after_message_id = page.after_time, page.after_message_id
    return seen
