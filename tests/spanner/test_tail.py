"""The tail cache on its own: a reader that the test holds and releases."""

from __future__ import annotations

import asyncio

from app.records import Record
from app.store import PageQuery
from app.store.spanner.tail import TailCache


def record(message_id: str, ingest_time: int) -> Record:
    return Record(message_id=message_id, publish_time=ingest_time, ingest_time=ingest_time, id="r")


async def test_a_client_reads_its_own_commit_even_when_a_refresh_was_already_running() -> None:
    committed: list[Record] = []
    gate = asyncio.Event()

    async def read(since: int, before: int, limit: int) -> list[Record] | None:
        await gate.wait()
        found = [r for r in committed if since <= r.ingest_time < before]
        return found if len(found) <= limit else None

    cache = TailCache(read, refresh_seconds=3600)
    gate.set()
    await cache.refresh(1_000)  # the cache starts at t = 1,000, warmed with nothing
    gate.clear()
    # A follower's refresh up to 2,000 is under way when a commit lands at 2,500.
    follower = asyncio.create_task(cache.refresh(2_000))
    await asyncio.sleep(0)
    committed.append(record("m-1", 2_500))
    query = PageQuery(after_time=1_000, after_message_id="", before_time=3_000, limit=10)
    own = asyncio.create_task(cache.page(query, 3_000, past=2_500))
    await asyncio.sleep(0)
    gate.set()
    await follower
    page = await own
    # The page the committing client reads holds its record, and claims no
    # more than was read.
    assert [r.message_id for r in page.rows] == ["m-1"]
    assert page.complete_until == 3_000
