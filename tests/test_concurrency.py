"""Many pushes at once, with Pub/Sub's duplicates, through a real HTTP server."""

from __future__ import annotations

import asyncio
import random

import pytest

from app.asgi import create_app
from app.store.duckdb.store import DuckDBStore
from tests import rawhttp
from tests.conftest import envelope, served, settings
from tests.fakes import FaultyStore


@pytest.mark.slow
async def test_thousand_concurrent_pushes_with_duplicates_each_visible_once() -> None:
    store = FaultyStore(DuckDBStore(":memory:"))
    app = create_app(settings(), store=store)
    unique = 800
    deliveries = [f"c{n:04d}" for n in range(unique)]
    deliveries += random.sample(deliveries, 200)  # redeliveries of the same messages
    random.shuffle(deliveries)
    async with served(app) as client:
        port = client.base_url.port
        assert port is not None

        async def push(message_id: str) -> int:
            body = envelope({"id": message_id, "data": {"n": message_id}}, message_id=message_id)
            return await rawhttp.send("127.0.0.1", port, rawhttp.request("/pubsub/push", body))

        # Every delivery on its own connection, all in flight at once.
        statuses = await asyncio.gather(*(push(m) for m in deliveries))
        assert statuses == [204] * len(deliveries)

        seen: list[str] = []
        token = None
        while True:
            params = {"limit": 1000} | ({"page_token": token} if token else {})
            page = (await client.get("/v1/records", params=params)).json()
            seen += [r["message_id"] for r in page["records"]]
            token = page["next_page_token"]
            if not page["records"]:
                break
    assert sorted(seen) == sorted(set(deliveries))
    # Group commit: far fewer appends than requests.
    assert len(store.appends) < len(deliveries) / 4, store.appends
